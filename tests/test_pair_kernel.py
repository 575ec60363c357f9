"""Kernel regression over pairs of singles (``pair_kernel``) and its blend with the stacker:
the kernel against its formula, exact leave-one-out against refits, the convex weights, and a
known truth where doubles of similar singles combine alike, which neither the heuristic nor the
propensity baseline can learn."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pdae_core.eval.pair_kernel import (
    PairKernelRegression,
    _krr_loo,
    convex_weights,
    pair_kernel,
    single_embeddings,
)
from pdae_core.eval.pseudobulk import profiles_from_anndata
from pdae_core.eval.pseudobulk.interaction_report import interaction_tables
from pdae_core.eval.pseudobulk.interactions_track import run_interaction_benchmark
from pdae_core.eval.pseudobulk.kernel_model import PairKernelInteractionRegression, observed_log_metrics
from pdae_core.eval.stacking import BlendedStacker, MetricStacker

N_GENES = 40
#: how the doubles of two groups of singles combine (a factor on dA + dB)
GROUP_FACTOR = {(0, 0): 0.5, (1, 1): 0.5, (2, 2): 0.5, (0, 1): 1.5, (0, 2): 0.7, (1, 2): 1.0}


def group_singles(rng: np.random.Generator, per_group: int, n_genes: int):
    """Three groups of ``per_group`` singles named ``G<group>_<i>``: each a group's direction
    (orthogonal, equal norms) times a random size, plus noise. Returns names, group, changes."""
    base = np.linalg.qr(rng.normal(size=(n_genes, 3)))[0].T * np.sqrt(n_genes)
    names, group, eff = [], {}, {}
    for g in range(3):
        for i in range(per_group):
            n = f"G{g}_{i}"
            names.append(n)
            group[n] = g
            eff[n] = base[g] * rng.uniform(0.7, 1.4) + 0.3 * rng.normal(size=n_genes)
    return names, group, eff


def _grouped(seed: int = 0, per_group: int = 4):
    """Three groups of singles (a shared direction each, plus noise); every double is
    f(group A, group B) (dA + dB): how it combines depends on the *pair* of groups, so neither one
    factor per perturbation (propensity) nor the singles' norms and cosine (heuristic: every
    cross-group pair is near orthogonal) can tell (0, 1) from (0, 2)."""
    names, group, eff = group_singles(np.random.default_rng(seed), per_group, N_GENES)
    conds, rows = list(names), [eff[n] for n in names]
    for a, b in itertools.combinations(names, 2):
        f = GROUP_FACTOR[tuple(sorted((group[a], group[b])))]
        conds.append(f"{a}+{b}")
        rows.append(f * (eff[a] + eff[b]))
    X = np.vstack(rows)
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"condition": conds}, index=[f"r{i}" for i in range(len(conds))]),
                       var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]))
    return profiles_from_anndata(adata), eff, group


def test_embeddings_and_kernel_formula():
    rng = np.random.default_rng(1)
    singles = {f"S{i}": rng.normal(size=12) for i in range(6)}
    singles["zero"] = np.zeros(12)
    cos = single_embeddings(singles, "cos")
    assert all(np.linalg.norm(cos[n]) == pytest.approx(1.0) for n in singles if n != "zero")
    assert np.all(cos["zero"] == 0)
    pca = single_embeddings(singles, "pca3")
    assert len(pca["S0"]) == 3
    assert np.mean([np.sum(v**2) for v in pca.values()]) == pytest.approx(1.0)
    assert len(single_embeddings(singles, "pca50")["S0"]) == len(singles) - 1  # at most n - 1 components
    with pytest.raises(ValueError, match="Unknown embedding"):
        single_embeddings(singles, "umap")
    pairs = [("S0", "S1"), ("S2", "S3"), ("S1", "zero")]
    K = pair_kernel(pairs, pairs, cos, 0.7)

    def k(s, t):
        return np.exp(-0.7 * np.sum((cos[s] - cos[t]) ** 2))

    direct = np.array([[k(a, c) * k(b, d) + k(a, d) * k(b, c) for c, d in pairs] for a, b in pairs])
    np.testing.assert_allclose(K, direct)
    # symmetric in the order of a pair's singles, and positive semi-definite
    np.testing.assert_allclose(pair_kernel([("S1", "S0")], pairs, cos, 0.7), K[:1])
    assert np.linalg.eigvalsh(K).min() > -1e-10


def test_exact_leave_one_out_matches_refits():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(15, 3))
    K = np.exp(-0.5 * ((X[:, None] - X[None]) ** 2).sum(-1))
    y = rng.normal(size=15)
    _, _, lam, loo = _krr_loo(K, y, [0.3])
    for i in range(15):
        m = np.arange(15) != i
        alpha = np.linalg.solve(K[np.ix_(m, m)] + lam * np.eye(14), y[m])
        assert loo[i] == pytest.approx(K[i, m] @ alpha)


def test_convex_weights_recover_a_mix():
    rng = np.random.default_rng(3)
    P = rng.normal(size=(200, 3))
    y = P @ np.array([0.7, 0.3, 0.0])
    w = convex_weights(P, y)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    np.testing.assert_allclose(w, [0.7, 0.3, 0.0], atol=1e-3)
    w = convex_weights(P, -P[:, 0])  # the best unconstrained weight is negative: clipped to the simplex
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)


def test_pair_kernel_learns_that_doubles_of_similar_singles_combine_alike():
    p, _, group = _grouped()
    df = run_interaction_benchmark(p, models=["pair_kernel", "propensity", "heuristic"], k=5, seeds=(0,))
    s = interaction_tables(df, n_boot=50, random=False)[0].set_index("model")
    assert s.loc["pair_kernel", "spearman_magnitude"] > 0.8
    assert s.loc["pair_kernel", "spearman_magnitude"] > max(s.loc["propensity", "spearman_magnitude"],
                                                            s.loc["heuristic", "spearman_magnitude"]) + 0.2
    assert df[df.model == "pair_kernel"].selected.str.startswith("kernel=").all()
    # an unseen pair of groups' factor is read from the doubles of other singles of the same groups
    train = p.subset([c for c in p.conditions if c != "G0_0+G1_0"])
    model = PairKernelInteractionRegression().fit(train)
    (mag,) = model.predict_metrics(train, ["G0_0+G1_0"])["magnitude"]
    (truth,) = np.exp(observed_log_metrics(p, ["G0_0+G1_0"], "lstsq")[:, 0])
    assert mag == pytest.approx(truth, rel=0.15)
    with pytest.raises(ValueError, match="without a measured change"):
        model.kernel_.predict([("G0_0", "unknown")])


def test_blend_leans_on_the_kernel_where_the_stacker_knows_nothing():
    p, eff, group = _grouped(seed=4)
    doubles = p.eligible_doubles()
    y = observed_log_metrics(p, doubles, "lstsq")
    pairs = [d.split("+") for d in doubles]
    rng = np.random.default_rng(0)
    model_log = rng.normal(size=(len(doubles), 2))  # a model whose metrics say nothing
    feats = rng.normal(size=(len(doubles), 3))
    singles = {n: eff[n] for n in eff}
    plain = BlendedStacker().fit(model_log, feats, pairs, y, singles)
    ref = MetricStacker().fit(model_log, feats, pairs, y)
    np.testing.assert_allclose(plain.predict(model_log, feats, pairs), ref.predict(model_log, feats, pairs))
    np.testing.assert_allclose(plain.loo_residuals_, ref.loo_residuals_)
    blend = BlendedStacker(kernel=PairKernelRegression()).fit(model_log, feats, pairs, y, singles)
    assert all(w[0] < 0.5 and w.sum() == pytest.approx(1.0) for w in blend.blend_)  # the stacker gets little weight
    assert np.mean(blend.loo_residuals_[:, 0] ** 2) < 0.5 * np.mean(ref.loo_residuals_[:, 0] ** 2)
    pred = blend.predict(model_log[:3], feats[:3], pairs[:3])
    each = blend.kernel_.predict_each(pairs[:3])
    base = ref.predict(model_log[:3], feats[:3], pairs[:3])
    np.testing.assert_allclose(pred[:, 0], np.column_stack([base[:, 0], each[0]]) @ blend.blend_[0])
    assert blend.half_width(0, 0.8) < ref.half_width(0, 0.8)


def test_blend_learns_the_residual_as_its_numerator():
    """With ``log ||dA + dB||`` given, the normalised residual is fitted as ``log ||dAB - dA - dB||``
    (model metric and target shifted alike) and the known denominator is divided out again."""
    p, eff, _ = _grouped(seed=6)
    doubles = p.eligible_doubles()
    y = observed_log_metrics(p, doubles, "lstsq")
    pairs = [d.split("+") for d in doubles]
    lsn = np.log([np.linalg.norm(eff[a] + eff[b]) for a, b in pairs])
    rng = np.random.default_rng(1)
    model_log, feats = y + rng.normal(0, 0.3, size=y.shape), rng.normal(size=(len(doubles), 2))
    singles = dict(eff)
    st = BlendedStacker(kernel=PairKernelRegression()).fit(model_log, feats, pairs, y, singles, lsn)
    shifted = y.copy()
    shifted[:, 1] += lsn
    m2 = model_log.copy()
    m2[:, 1] += lsn
    ref = BlendedStacker(kernel=PairKernelRegression()).fit(m2, feats, pairs, shifted, singles)
    np.testing.assert_allclose(st.loo_residuals_, ref.loo_residuals_)
    np.testing.assert_allclose(st.loo_predictions(), y - ref.loo_residuals_)
    want = ref.predict(m2[:4], feats[:4], pairs[:4])
    want[:, 1] -= lsn[:4]
    np.testing.assert_allclose(st.predict(model_log[:4], feats[:4], pairs[:4], lsn[:4]), want)
