"""The ``pair_kernel_profile`` baseline: a double's departure from additivity read from the measured
doubles of similar singles. Its per-gene ridge against direct solves, its leave-one-out departures
against refits, and a known truth where each pair of groups of singles departs in its own way,
which neither the scaled sum nor the partners baseline can follow."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from test_pair_kernel import group_singles  # noqa: E402

from pdae_core.errors import DataError
from pdae_core.eval.departure import pearson_rows
from pdae_core.eval.pair_kernel import pair_kernel
from pdae_core.eval.pseudobulk import profiles_from_anndata
from pdae_core.eval.pseudobulk.interaction_models import PartnerProfile
from pdae_core.eval.pseudobulk.interactions_track import run_interaction_benchmark
from pdae_core.eval.pseudobulk.kernel_model import PairKernelProfile, choose_ridge_shrink, gene_ridge
from pdae_core.eval.pseudobulk.models import ScaledAdditiveProfile

N_GENES = 30


def _profiles(seed: int = 0, per_group: int = 4):
    """Three groups of singles (a direction each, plus noise); every double departs from the sum of
    its singles by a gene pattern of its *pair of groups* (plus a little noise)."""
    rng = np.random.default_rng(seed)
    names, group, eff = group_singles(rng, per_group, N_GENES)
    pattern = {gp: rng.normal(size=N_GENES) for gp in itertools.combinations_with_replacement(range(3), 2)}
    conds, rows, truth = list(names), [eff[n] for n in names], {}
    for a, b in itertools.combinations(names, 2):
        dep = pattern[tuple(sorted((group[a], group[b])))] + 0.1 * rng.normal(size=N_GENES)
        conds.append(f"{a}+{b}")
        rows.append(eff[a] + eff[b] + dep)
        truth[f"{a}+{b}"] = dep
    adata = ad.AnnData(X=np.vstack(rows), obs=pd.DataFrame({"condition": conds}, index=[f"r{i}" for i in range(len(conds))]),
                       var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]))
    return profiles_from_anndata(adata), truth


def test_pearson_rows_matches_corrcoef():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(5, 20))
    np.testing.assert_allclose(pearson_rows(a, b), [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])
    a[2] = 3.0
    assert np.isnan(pearson_rows(a, b)[2]) and np.isfinite(pearson_rows(a, b)[[0, 1, 3, 4]]).all()


def test_gene_ridge_against_direct_solves():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(25, 8, 2))
    N = X @ np.array([0.5, -0.2]) + rng.normal(size=(25, 8)) * np.linspace(0.1, 2.0, 8)
    c = np.linalg.lstsq(X.reshape(-1, 2), N.ravel(), rcond=None)[0]
    lam = 0.3 * np.median((X[..., 0] ** 2).sum(0))
    W = gene_ridge(X, N, 0.3)
    for g in range(8):
        Xg = X[:, g]
        direct = np.linalg.solve(Xg.T @ Xg + lam * np.eye(2), Xg.T @ N[:, g] + lam * c)
        np.testing.assert_allclose(W[g], direct, rtol=1e-10)
    # no shrinkage: each gene's own least squares; heavy shrinkage: the fit over all genes
    for g in range(8):
        np.testing.assert_allclose(gene_ridge(X, N, 0.0)[g], np.linalg.lstsq(X[:, g], N[:, g], rcond=None)[0],
                                   rtol=1e-6)
    np.testing.assert_allclose(gene_ridge(X, N, 1e9), np.broadcast_to(c, (8, 2)), atol=1e-6)
    shrink, scores = choose_ridge_shrink(X, N, (0.01, 1.0, 100.0))
    assert shrink in scores and scores[shrink] == max(scores.values()) and set(scores) == {0.01, 1.0, 100.0}


def test_leave_one_out_departures_match_refits():
    p, _ = _profiles()
    m = PairKernelProfile().fit(p)
    assert len(m.doubles_) == 66 and m.gamma_ in m.GAMMAS and m.penalty_ in m.PENALTIES
    S = m._sums(m.pairs_)
    N = p.deltas[p.index(m.doubles_)] - S
    for i in (0, 17, 65):
        keep = np.arange(len(N)) != i
        pairs = [m.pairs_[j] for j in np.flatnonzero(keep)]
        K = pair_kernel(pairs, pairs, m.emb_, m.gamma_)
        dual = np.linalg.solve(K + m.penalty_ * np.eye(len(pairs)), N[keep] - m.mean_)  # centred once, on all
        refit = m.mean_ + pair_kernel([m.pairs_[i]], pairs, m.emb_, m.gamma_) @ dual
        np.testing.assert_allclose(m.kernel_loo_[i], refit[0], rtol=1e-6, atol=1e-9)


def test_departure_of_an_unseen_pair_is_read_from_doubles_of_similar_singles():
    p, truth = _profiles()
    held = ["G0_0+G1_0", "G1_1+G2_2", "G0_1+G0_2", "G2_0+G2_3"]
    train = p.subset([c for c in p.conditions if c not in held])
    target = p.subset(held)
    S = np.stack([train.deltas[train.index([a])[0]] + train.deltas[train.index([b])[0]] for a, b in target.parts])
    obs = target.deltas - S
    kern = PairKernelProfile().fit(train)
    r = pearson_rows(kern.predict(target.labels) - S, obs)
    assert r.min() > 0.9
    for other in (PartnerProfile().fit(train), ScaledAdditiveProfile().fit(train)):
        assert r.mean() > np.nanmean(pearson_rows(other.predict(target.labels) - S, obs)) + 0.3
    # singles are their measured changes; a label of three parts is the sum of its singles
    singles = train.subset(["G0_0", "G1_1"])
    np.testing.assert_allclose(kern.predict(singles.labels), singles.deltas)
    three = singles.labels.sum(0, keepdims=True) + train.subset(["G2_2"]).labels
    np.testing.assert_allclose(kern.predict(three), train.deltas[train.index(["G0_0", "G1_1", "G2_2"])].sum(0)[None])


def test_needs_five_doubles_with_both_singles():
    p, _ = _profiles()
    few = p.subset([c for c in p.conditions if "+" not in c] + [c for c in p.conditions if "+" in c][:4])
    with pytest.raises(DataError, match=">= 5 training doubles"):
        PairKernelProfile().fit(few)


def test_in_the_interaction_benchmark():
    p, _ = _profiles()
    df = run_interaction_benchmark(p, models=["pair_kernel_profile", "partners"], k=5, seeds=(0,))
    kern, part = (df[df.model == m] for m in ("pair_kernel_profile", "partners"))
    assert len(kern) == 66 and kern["nonadditive_pearson"].mean() > 0.9
    assert kern["nonadditive_pearson"].mean() > part["nonadditive_pearson"].mean() + 0.3
    assert kern.selected.str.startswith("gamma=").all()
