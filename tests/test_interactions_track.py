"""Interaction benchmark on per-condition profiles (issue 15 item 4): figures of a known
truth, the additive baseline's constant, an oracle's perfect ranking, folds that never
leak, the ensemble's cross-fitting and conformal half-widths, the tables and the CLI."""

from __future__ import annotations

import itertools
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pdae_core.cli import main as cli_main
from pdae_core.errors import DataError
from pdae_core.eval.pseudobulk import AdditiveProfile, ProfileSet, double_folds, profiles_from_anndata
from pdae_core.eval.pseudobulk.interaction_models import HeuristicInteractionRegression, PDAEEnsembleProfile
from pdae_core.eval.pseudobulk.interaction_report import interaction_tables
from pdae_core.eval.pseudobulk.interaction_scores import double_figures, interaction_differences, rank_metrics
from pdae_core.eval.pseudobulk.interactions_track import run_interaction_benchmark
from pdae_core.eval.pseudobulk.models import ProfileModel

N_PERT, N_GENES = 8, 30
TINY = dict(latent_dim=4, hidden_dims=(16,), steps=20, eval_every=5)


def _truth(seed: int = 0) -> tuple[list[str], np.ndarray, dict[str, tuple[float, float]]]:
    """8 singles with random deltas; every double is exactly c1 dA + c2 dB with its own c's."""
    rng = np.random.default_rng(seed)
    names = [f"P{i}" for i in range(N_PERT)]
    eff = {n: rng.normal(size=N_GENES) for n in names}
    coefs, rows, conds = {}, [eff[n] for n in names], list(names)
    for a, b in itertools.combinations(names, 2):
        c1, c2 = rng.uniform(0.2, 1.6, size=2)
        coefs[f"{a}+{b}"] = (float(c1), float(c2))
        conds.append(f"{a}+{b}")
        rows.append(c1 * eff[a] + c2 * eff[b])
    return conds, np.vstack(rows), coefs


def _adata(names: list[str], X: np.ndarray) -> ad.AnnData:
    return ad.AnnData(X=X.astype(np.float64), obs=pd.DataFrame({"condition": names}, index=[f"r{i}" for i in range(len(names))]),
                      var=pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])]))


def _log_additive() -> tuple[ProfileSet, list[str], dict[str, float]]:
    """12 singles; every double is 0.5 f_A f_B (dA + dB), one factor per perturbation (log-additive)."""
    rng = np.random.default_rng(4)
    names = [f"P{i}" for i in range(12)]
    eff = {n: rng.normal(size=N_GENES) for n in names}
    factor = {n: float(np.exp(rng.normal(0, 0.6))) for n in names}
    conds, rows = list(names), [eff[n] for n in names]
    for a, b in itertools.combinations(names, 2):
        conds.append(f"{a}+{b}")
        rows.append(0.5 * factor[a] * factor[b] * (eff[a] + eff[b]))
    return profiles_from_anndata(_adata(conds, np.vstack(rows))), conds, factor


@pytest.fixture(scope="module")
def truth() -> tuple[ProfileSet, dict[str, tuple[float, float]]]:
    names, X, coefs = _truth()
    return profiles_from_anndata(_adata(names, X)), coefs


class Oracle(ProfileModel):
    """Predicts the observed delta of any condition of ``full`` (a perfect model)."""

    name = "oracle"

    def __init__(self, full: ProfileSet) -> None:
        self.full = full

    def fit(self, profiles: ProfileSet) -> Oracle:
        return self

    def predict(self, labels: np.ndarray) -> np.ndarray:
        return np.vstack([self.full.deltas[np.flatnonzero((self.full.labels == row).all(1))[0]] for row in labels])


# ---------------------------------------------------------------------------------
# figures and metrics


def test_double_figures_match_the_known_weights(truth):
    p, coefs = truth
    d = "P2+P5"
    c1, c2 = coefs[d]
    a, b = p.deltas[p.index(["P2", "P5"])]
    f = double_figures(a, b, c1 * a + c2 * b, "lstsq", obs=a + b)
    assert f["c1"] == pytest.approx(c1) and f["c2"] == pytest.approx(c2)
    assert f["magnitude"] == pytest.approx(math.hypot(c1, c2))
    assert f["normalised_residual"] == pytest.approx(np.linalg.norm((c1 - 1) * a + (c2 - 1) * b) / np.linalg.norm(a + b))
    # an additive prediction has no non-additive part: its Pearson is undefined, not rounding noise
    assert math.isnan(double_figures(a, b, 1.0 * a + 1.0 * b, obs=c1 * a + c2 * b)["nonadditive_pearson"])
    assert f["error_l2"] == pytest.approx(np.linalg.norm(c1 * a + c2 * b - a - b))


def test_rank_metrics_of_known_rankings():
    obs = np.arange(20.0)
    r = rank_metrics(obs ** 3, obs, -obs, obs, np.full(20, 0.5), top=5)
    assert r["spearman_magnitude"][0] == pytest.approx(1.0) and r["spearman_residual"][0] == pytest.approx(-1.0)
    assert r["precision_synergy"][0] == 1.0 and r["precision_buffering"][0] == 1.0
    assert r["nonadditive_pearson"][0] == 0.5
    shifted = rank_metrics(np.roll(obs, 2), obs, obs, obs, np.zeros(20), top=5)
    assert shifted["precision_synergy"][0] == pytest.approx(0.6)  # 15..19 vs 17, 18, 19, 0, 1 -> 3 of 5
    const = rank_metrics(np.full(20, math.sqrt(2)) + 1e-15 * obs, obs, np.zeros(20), obs, np.zeros(20), top=5)
    assert all(math.isnan(const[m][0]) for m in ("spearman_magnitude", "spearman_residual", "precision_synergy"))


# ---------------------------------------------------------------------------------
# the benchmark


def test_additive_constant_and_oracle_perfect(truth):
    p, coefs = truth
    df = run_interaction_benchmark(p, models={"additive": lambda s: AdditiveProfile(), "oracle": lambda s: Oracle(p)},
                                   k=4, seeds=(0, 1))
    assert len(df) == 2 * 2 * 28 and set(df.groupby(["model", "seed"]).double.nunique()) == {28}
    add = df[df.model == "additive"]
    np.testing.assert_allclose(add.magnitude_pred, math.sqrt(2), rtol=1e-12)  # c1 = c2 = 1 for every double
    np.testing.assert_allclose(add.residual_pred, 0.0, atol=1e-12)
    assert add.nonadditive_pearson.isna().all()
    obs = df[df.model == "oracle"].set_index(["seed", "double"])
    for d, (c1, c2) in coefs.items():
        assert obs.loc[(0, d), "magnitude_obs"] == pytest.approx(math.hypot(c1, c2))
    s = interaction_tables(df, n_boot=200)[0].set_index("model")
    assert s.loc["additive", ["spearman_magnitude", "spearman_residual", "precision_synergy"]].isna().all()
    for m in ("spearman_magnitude", "spearman_residual", "nonadditive_pearson", "precision_synergy",
              "precision_buffering"):
        assert s.loc["oracle", m] == pytest.approx(1.0), m
    assert s.loc["oracle", "spearman_magnitude_lo"] == pytest.approx(1.0)
    assert abs(s.loc["random", "spearman_magnitude"]) < 0.05
    assert s.loc["random", "precision_synergy"] == pytest.approx(10 / 28, abs=0.03)  # 10 of 28 at random
    d = interaction_differences(df, candidates=("oracle",), n_boot=200).set_index("baseline")
    assert set(d.index) == {"additive", "random"} and math.isnan(d.loc["additive", "spearman_magnitude"])
    assert d.loc["random", "spearman_magnitude"] == pytest.approx(1.0, abs=0.05)
    assert d.loc["random", "spearman_magnitude_p_above"] == 1.0


def test_folds_never_leak(truth):
    """Changing a held-out double changes its observed figures only: every prediction of
    its fold (profile models, the heuristic regression, the cross-fitted ensemble's
    choice and intervals) comes from the training profiles alone."""
    p, _ = truth
    test = double_folds(p, k=4, seed=0)[0]
    target = test[0]
    q = ProfileSet(list(p.conditions), list(p.parts), list(p.perturbations), p.labels.copy(), p.deltas.copy(),
                   list(p.genes), p.separator)
    q.deltas[q.index([target])[0]] *= -3.0
    models = ["scaled_additive", "linear", "heuristic", "pdae_ensemble"]
    kw = dict(models=models, k=4, seeds=(0,), n_members=2, ensemble_kw=TINY)
    a, b = run_interaction_benchmark(p, **kw), run_interaction_benchmark(q, **kw)
    pred_cols = ["magnitude_pred", "residual_pred", "c1_pred", "c2_pred", "spread", "width_80", "width_95",
                 "selected"]
    fold0 = a.fold == 0
    pd.testing.assert_frame_equal(a.loc[fold0, pred_cols].reset_index(drop=True),
                                  b.loc[fold0, pred_cols].reset_index(drop=True))
    changed = (a.double == target) & fold0
    assert not np.allclose(a.loc[changed, "magnitude_obs"], b.loc[changed, "magnitude_obs"])
    # the same double trains the other folds: their predictions do move (the check can fail)
    lin = (a.model == "linear") & ~fold0
    assert not np.allclose(a.loc[lin, "magnitude_pred"], b.loc[lin, "magnitude_pred"])


def test_ensemble_cross_fitting_and_conformal(truth):
    p, _ = truth
    ens = PDAEEnsembleProfile(n_members=3, seed=0, **TINY).fit(p)
    doubles = p.eligible_doubles()
    assert sorted(d for g in ens.groups_ for d in g) == sorted(doubles)  # every training double once
    assert ens.residuals_.shape == (len(doubles), p.n_genes)
    assert {r["step"] for r in ens.selection_} == {5, 10, 15, 20} and ens.source_ in ("all", "control")
    dl = p.labels[N_PERT:N_PERT + 4]  # four doubles
    members = ens.predict_members(dl)
    assert members.shape == (3, 4, p.n_genes) and not np.allclose(members[0], members[1])
    np.testing.assert_allclose(ens.predict(dl), members.mean(0))
    # anchored on the observed singles: a single is its observed delta, a double the observed sum plus
    # the model's second difference f(AB) - f(A) - f(B) + f(0)
    anch = PDAEEnsembleProfile(n_members=2, seed=1, anchors=("singles",), sources=("control",), **TINY).fit(p)
    np.testing.assert_allclose(anch.predict(p.labels[:N_PERT]), p.deltas[:N_PERT], atol=1e-9)
    f = anch.members_[0].predict
    e = np.eye(N_PERT)
    i, j = 2, 5
    second = f(e[i] + e[j]) - f(e[i]) - f(e[j]) + f(np.zeros(N_PERT))
    np.testing.assert_allclose(anch.predict_members((e[i] + e[j])[None])[0, 0], p.deltas[i] + p.deltas[j] + second[0],
                               atol=1e-6)
    # half-width: the ceil((n + 1) p)-th smallest residual of each gene; inf with too few doubles
    n = len(doubles)
    np.testing.assert_allclose(ens.half_widths(0.8), np.sort(ens.residuals_, 0)[math.ceil((n + 1) * 0.8) - 1])
    assert np.isinf(ens.half_widths(1 - 0.5 / (n + 1))).all()
    # double_weight reaches every member: each trains on its doubles twice
    heavy = PDAEEnsembleProfile(n_members=3, seed=0, double_weight=2, **TINY).fit(p)
    for m, group in zip(heavy.members_, heavy.groups_):
        own = len(doubles) - len(group) + sum(1 for c in p.conditions if c.count("+") and c not in doubles)
        assert len(m.X_) == p.n_conditions - len(group) + own + 1 and m.double_weight == 2
    assert not np.allclose(heavy.predict(dl), ens.predict(dl))
    with pytest.raises(DataError, match="at least 2 per member"):
        PDAEEnsembleProfile(n_members=20, **TINY).fit(p)
    with pytest.raises(ValueError, match="n_members"):
        PDAEEnsembleProfile(n_members=1)


def test_propensity_regression_learns_how_each_perturbation_combines():
    """Doubles whose weight is the product of one factor per perturbation (log-additive): the
    propensity regression ranks held-out doubles from the other doubles of their parts, which
    the heuristic (features of the two singles' profiles) cannot see."""
    from pdae_core.eval.pseudobulk.interaction_models import PropensityInteractionRegression

    p, conds, factor = _log_additive()
    df = run_interaction_benchmark(p, models=["propensity", "heuristic"], k=5, seeds=(0,))
    s = interaction_tables(df, n_boot=50, random=False)[0].set_index("model")
    assert s.loc["propensity", "spearman_magnitude"] > 0.9 > s.loc["heuristic", "spearman_magnitude"] + 0.3
    model = PropensityInteractionRegression().fit(p.subset(conds))
    (mag,) = model.predict_metrics(p, ["P0+P1"])["magnitude"]
    assert mag == pytest.approx(0.5 * factor["P0"] * factor["P1"] * np.sqrt(2), rel=0.1)


def _signatures(seed: int = 5) -> tuple[ProfileSet, list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """10 singles; every double is dA + dB + uA + uB: each perturbation brings its own
    departure from additivity ``u`` (the same in every double it is part of)."""
    rng = np.random.default_rng(seed)
    names = [f"P{i}" for i in range(10)]
    eff = {n: rng.normal(size=N_GENES) for n in names}
    sig = {n: rng.normal(size=N_GENES) for n in names}
    conds, rows = list(names), [eff[n] for n in names]
    for a, b in itertools.combinations(names, 2):
        conds.append(f"{a}+{b}")
        rows.append(eff[a] + eff[b] + sig[a] + sig[b])
    return profiles_from_anndata(_adata(conds, np.vstack(rows))), conds, eff, sig


def test_partner_baseline_reads_the_departure_of_the_doubles_sharing_a_part():
    """Each perturbation's doubles share its own departure from additivity: the partners baseline
    recovers a held-out double's non-additive part from the other doubles of its parts, which
    the scaled additive baseline (a multiple of dA + dB) cannot."""
    from pdae_core.eval.pseudobulk.interaction_models import PartnerProfile

    p, conds, eff, sig = _signatures()
    df = run_interaction_benchmark(p, models=["partners", "scaled_additive"], k=5, seeds=(0,))
    na = df.groupby("model").nonadditive_pearson.mean()
    assert na["partners"] > 0.8 > na["scaled_additive"] + 0.5
    # by hand: fitted on every single and three doubles, the partner mean of P0+P1 leaves out
    # nothing (it is not a training double) and counts P0+P2 and P1+P2 once each
    train = [f"P{i}" for i in range(10)] + ["P0+P2", "P1+P2", "P3+P4"]
    m = PartnerProfile().fit(p.subset(train))
    nonadd = {d: p.deltas[p.index([d])[0]] - eff[d[:2]] - eff[d[3:]] for d in train[10:]}
    assert np.allclose(m.nonadditive_, np.vstack([nonadd[d] for d in train[10:]]))
    a, b, c = m.coef_
    labels = p.subset(["P0+P1", "P5+P6", "P7"]).labels
    pred = m.predict(labels)
    S = eff["P0"] + eff["P1"]
    G = np.mean(list(nonadd.values()), axis=0)
    partners = (nonadd["P0+P2"] + nonadd["P1+P2"]) / 2
    assert np.allclose(pred[0], S + a * S + b * partners + c * G)
    S = eff["P5"] + eff["P6"]  # no training double holds P5 or P6: the partner mean is the overall mean
    assert np.allclose(pred[1], S + a * S + (b + c) * G)
    assert np.allclose(pred[2], eff["P7"])  # a single is its measured delta
    # the coefficients: least squares with each training double's own partner mean and overall
    # mean leaving it out (P0+P2 and P1+P2 share P2 with each other, P3+P4 shares nothing)
    N = np.vstack([nonadd[d] for d in train[10:]])
    Ss = np.vstack([eff["P0"] + eff["P2"], eff["P1"] + eff["P2"], eff["P3"] + eff["P4"]])
    loo = np.vstack([(N.sum(0) - N[i]) / 2 for i in range(3)])
    P = np.vstack([N[1], N[0], loo[2]])
    X = np.stack([Ss.ravel(), P.ravel(), loo.ravel()], 1)
    assert np.allclose(m.coef_, np.linalg.lstsq(X, N.ravel(), rcond=None)[0])
    # fewer than 2 training doubles: the additive baseline
    one = PartnerProfile().fit(p.subset(train[:10] + ["P0+P2"]))
    assert np.allclose(one.predict(labels)[0], eff["P0"] + eff["P1"])


def test_heuristic_regression_learns_a_feature_rule():
    """Doubles whose magnitude is a function of the singles' norm ratio: the regression
    ranks held-out doubles by it from the training doubles alone."""
    rng = np.random.default_rng(3)
    names = [f"P{i}" for i in range(10)]
    eff = {n: rng.normal(size=N_GENES) * rng.uniform(0.3, 3.0) for n in names}
    conds, rows = list(names), [eff[n] for n in names]
    for a, b in itertools.combinations(names, 2):
        na, nb = np.linalg.norm(eff[a]), np.linalg.norm(eff[b])
        c = 0.3 + min(na, nb) / max(na, nb)  # both weights equal: magnitude = sqrt 2 c
        conds.append(f"{a}+{b}")
        rows.append(c * (eff[a] + eff[b]))
    p = profiles_from_anndata(_adata(conds, np.vstack(rows)))
    df = run_interaction_benchmark(p, models=["heuristic"], k=5, seeds=(0,))
    assert "c1_pred" not in df and df.magnitude_pred.notna().all()
    s = interaction_tables(df, n_boot=50, random=False)[0].set_index("model")
    assert s.loc["heuristic", "spearman_magnitude"] > 0.9
    assert math.isnan(s.loc["heuristic", "nonadditive_pearson"])
    with pytest.raises(DataError, match=">= 4 training doubles"):
        HeuristicInteractionRegression().fit(p.subset(names + conds[10:12]))


def test_errors(truth):
    p, _ = truth
    with pytest.raises(DataError, match="Unknown model"):
        run_interaction_benchmark(p, models=["gears"])
    with pytest.raises(DataError, match="method"):
        run_interaction_benchmark(p, models=["linear"], method="ols")
    with pytest.raises(DataError, match="at least 3"):
        run_interaction_benchmark(p, models=["linear"], genes=["g0", "g1"])


# ---------------------------------------------------------------------------------
# command line


def test_cli_interactions_smoke(tmp_path, capsys):
    names, X, _ = _truth(1)
    data = tmp_path / "profiles.h5ad"
    _adata(names, X).write_h5ad(data)
    out = tmp_path / "bench"
    rc = cli_main(["benchmark", "--data", str(data), "--level", "pseudobulk", "--task", "interactions", "--models",
                   "additive,scaled_additive,linear,heuristic,random", "--seeds", "2", "--folds", "4",
                   "--n-boot", "50", "--out", str(out), "-q"])
    assert rc == 0
    md = (out / "summary.md").read_text()
    assert md.splitlines()[0].startswith("<!-- generated by: pdae benchmark --data ")
    assert "--task interactions" in md.splitlines()[0] and "| random | 28 |" in md
    per = pd.read_csv(out / "per_double.csv")
    assert set(per.model) == {"additive", "scaled_additive", "linear", "heuristic"}
    assert (per.groupby(["model", "seed"]).double.nunique() == 28).all()
    long = pd.read_csv(out / "summary.csv")
    assert set(long.table) == {"summary"}  # no PDAE: no paired differences, no ensemble
    assert "additive" in set(long.loc[long.table == "summary", "model"])
    capsys.readouterr()
    rc = cli_main(["benchmark", "--data", str(data), "--level", "cells", "--task", "interactions",
                   "--out", str(tmp_path / "x"), "-q"])
    assert rc != 0 and "pseudobulk" in capsys.readouterr().err


def test_cached_folds_are_reused(truth, tmp_path):
    p, _ = truth
    kw = dict(models=["linear", "heuristic"], k=4, seeds=(0,), cache_dir=tmp_path)
    first = run_interaction_benchmark(p, **kw)
    files = sorted(tmp_path.glob("linear_seed0_fold0_*.csv"))
    assert len(files) == 1 and len(list(tmp_path.glob("*.csv"))) == 8
    marked = pd.read_csv(files[0]).assign(magnitude_pred=123.0)
    marked.to_csv(files[0], index=False)
    again = run_interaction_benchmark(p, **kw)
    assert (again.loc[(again.model == "linear") & (again.fold == 0), "magnitude_pred"] == 123.0).all()
    pd.testing.assert_frame_equal(again[again.model == "heuristic"].reset_index(drop=True),
                                  first[first.model == "heuristic"].reset_index(drop=True), check_dtype=False)
    other = run_interaction_benchmark(p, **{**kw, "method": "theil_sen"})  # other settings: not reused
    assert not (other.magnitude_pred == 123.0).any()


def test_stacked_regression_reads_the_ensembles_out_of_fold_metrics():
    """pdae_stacked: the ensemble's out-of-fold metrics of the training doubles (never its in-sample
    predictions) beside the baselines' features; on log-additive doubles it ranks held-out doubles as
    well as the propensity regression it contains; its profile adds back a share of the additive part."""
    from pdae_core.eval.departure_weights import gene_weights
    from pdae_core.eval.pseudobulk.interaction_models import PDAEStackedRegression

    p, conds, factor = _log_additive()
    model = PDAEStackedRegression(n_members=2, seed=0, **TINY).fit(p)
    ens = model.ensemble_
    doubles = ens.calibration_doubles_
    oof = model._pdae_features(p, doubles, ens.oof_[None])
    np.testing.assert_allclose(model.design_[:, 1:3] * model.sd_[:2] + model.mu_[:2], oof)
    labels = p.subset(doubles).labels
    inside = model._pdae_features(p, doubles, ens.predict_members(labels))
    assert not np.allclose(inside, oof)  # in-sample predictions would leak the training doubles' answers
    assert len(model.alpha_) == 2 and all(len(a) == 2 for a in model.alpha_)
    # its profile: the singles' sum plus the ensemble's non-additive part, recalibrated gene by gene
    assert model.beta_ in model.betas and model.shrink_ in model.gene_shrinks
    e = np.eye(len(p.perturbations))
    lab = e[0] + e[1]
    S = p.deltas[0] + p.deltas[1]
    E = ens.predict(lab[None])[0] - S
    np.testing.assert_allclose(model.predict(lab[None])[0], S + model.gene_w_ * E + model.gene_v_ * S)
    S_tr = np.vstack([p.deltas[p.index(d.split("+"))].sum(0) for d in doubles])
    na = p.deltas[p.index(doubles)] - S_tr  # from the out-of-fold predictions of the training doubles:
    w, v = gene_weights(ens.oof_ - S_tr, S_tr, na, model.beta_, model.shrink_)
    np.testing.assert_allclose(model.gene_w_, w)
    np.testing.assert_allclose(model.gene_v_, v)
    plain = PDAEStackedRegression(n_members=2, seed=0, gene_shrinks=None, **TINY).fit(p)  # the beta form
    assert plain.shrink_ is None and plain.beta_ == model.beta_
    np.testing.assert_allclose(plain.predict(lab[None])[0], ens.predict(lab[None])[0] + plain.beta_ * S)
    df = run_interaction_benchmark(p, models=["pdae_stacked"], k=4, seeds=(0,), n_members=2, ensemble_kw=TINY)
    assert df.c1_pred.isna().all() and df.nonadditive_pearson.notna().all()  # metrics regressed, profile kept
    assert df.selected.str.contains("ridge=").all() and df.selected.str.contains("beta=").all()
    assert df.selected.str.contains("shrink=").all() and df.selected.str.contains("blend=").all()
    s = interaction_tables(df, n_boot=50, random=False)[0].set_index("model")
    assert s.loc["pdae_stacked", "spearman_magnitude"] > 0.9
    # the ridge stacker blended with the pair kernel; without it, the stacker alone
    assert model.kernel_ is not None and all(w.sum() == pytest.approx(1.0) and len(w) == 4 for w in model.blend_)
    assert plain.kernel_ is not None
    alone = PDAEStackedRegression(n_members=2, seed=0, kernel=False, **TINY).fit(p)
    assert alone.kernel_ is None
    np.testing.assert_allclose(alone.stacker_.loo_residuals_, alone.stacker_.stacker_.loo_residuals_)


def test_gene_weights_and_their_shrinkage():
    """Per gene, the ridge regression of the observed non-additive part on the predicted one and
    the singles' sum: ordinary least squares per gene without shrinkage, (1, beta) with a huge one;
    cross-validation prefers little shrinkage when genes truly differ and much when they do not."""
    from pdae_core.eval.departure_weights import best_beta, choose_gene_shrink, gene_weights

    rng = np.random.default_rng(0)
    n, G = 60, 40
    E, S = rng.normal(size=(n, G)), rng.normal(size=(n, G))
    w_true = rng.uniform(-0.5, 2.0, G)  # genes differ in how far their predicted departure holds
    N = w_true * E - 0.3 * S + 0.3 * rng.normal(size=(n, G))
    w, v = gene_weights(E, S, N, 0.0, 0.0)
    for g in (0, 7, 39):
        np.testing.assert_allclose([w[g], v[g]], np.linalg.lstsq(np.c_[E[:, g], S[:, g]], N[:, g], rcond=None)[0])
    w, v = gene_weights(E, S, N, -0.25, 1e9)
    np.testing.assert_allclose(w, 1.0, atol=1e-5)
    np.testing.assert_allclose(v, -0.25, atol=1e-5)
    assert best_beta(E, S, N, (-1.0, -0.3, 0.0, 0.5)) == -0.3
    shrink, scores = choose_gene_shrink(E, S, N, (-1.0, -0.3, 0.0, 0.5))
    assert shrink == min(scores) and scores[min(scores)] > scores[max(scores)]
    same = E - 0.3 * S + 2.0 * rng.normal(size=(n, G))  # every gene alike, and noisy: shrink towards (1, beta)
    shrink, scores = choose_gene_shrink(E, S, same, (-1.0, -0.3, 0.0, 0.5))
    assert shrink > 1.0 and scores[shrink] > scores[min(scores)]
    assert gene_weights(np.zeros((5, 3)), np.zeros((5, 3)), np.ones((5, 3)), 0.2, 0.0)[1].tolist() == [0.2] * 3
