"""Stacking of interaction metrics (pdae_core.eval.stacking): the single features against direct
formulas (a zero single, identical singles), exact leave-one-out residuals against refits, a known
rule recovered, jackknife half-widths at the conformal rank."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pdae_core.eval.pair_kernel import PairKernelRegression
from pdae_core.eval.stacking import (
    BlendedStacker,
    MetricStacker,
    log_metric,
    part_indicators,
    ridge_loo,
    single_features,
)


def test_single_features_match_direct_formulas_and_degenerate_singles():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), 3 * rng.normal(size=30)
    f = single_features(a[None], b[None])[0]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    lo, hi = min(na, nb), max(na, nb)
    assert f == pytest.approx([math.log(lo), math.log(hi), lo / hi, a @ b / (na * nb), math.log(np.linalg.norm(a + b))])
    np.testing.assert_allclose(single_features(b[None], a[None]), f[None])  # symmetric in A and B
    zero = single_features(np.zeros((1, 30)), b[None])[0]
    assert zero[2] == 0.0 and zero[3] == 0.0 and zero[0] < -20 and np.isfinite(zero).all()  # no effect: cosine 0
    same = single_features(a[None], a[None])[0]
    assert same[2] == pytest.approx(1.0) and same[3] == pytest.approx(1.0)
    assert same[4] == pytest.approx(math.log(2 * na))
    both = single_features(np.zeros((1, 30)), np.zeros((1, 30)))[0]
    assert both[2] == 1.0 and both[3] == 0.0 and np.isfinite(both).all()


def test_part_indicators_ignore_unknown_perturbations():
    X = part_indicators([("A", "B"), ("B", "Z")], ["A", "B", "C"])
    np.testing.assert_array_equal(X, [[1, 1, 0], [0, 1, 0]])
    assert log_metric([0.0, np.e])[1] == pytest.approx(1.0) and np.isfinite(log_metric([0.0])).all()


def test_ridge_leave_one_out_residuals_equal_refits_without_each_row():
    rng = np.random.default_rng(1)
    Z = np.column_stack([np.ones(25), rng.normal(size=(25, 4))])
    y = Z @ rng.normal(size=5) + 0.3 * rng.normal(size=25)
    P = [np.r_[0.0, np.full(4, a)] for a in (0.1, 10.0)]
    _, coef, i, r = ridge_loo(Z, y, P)
    for j in (0, 7, 24):
        keep = np.arange(25) != j
        c = np.linalg.solve(Z[keep].T @ Z[keep] + np.diag(P[i]), Z[keep].T @ y[keep])
        assert r[j] == pytest.approx(y[j] - Z[j] @ c, rel=1e-8)
    np.testing.assert_allclose(coef, np.linalg.solve(Z.T @ Z + np.diag(P[i]), Z.T @ y))


def test_stacker_recovers_a_rule_of_model_metric_and_parts_and_its_intervals():
    """log m = 0.8 * model's log m + u_part: the stacker must rank new doubles as the rule does,
    better than the model's metric alone; its half-widths are the conformal order statistics."""
    rng = np.random.default_rng(2)
    genes = [f"G{i}" for i in range(12)]
    u = dict(zip(genes, rng.normal(scale=0.6, size=12)))
    pairs = [(genes[i], genes[j]) for i in range(12) for j in range(i + 1, 12)]
    model = rng.normal(size=(len(pairs), 2))
    feats = rng.normal(size=(len(pairs), 5))
    truth = np.array([[0.8 * m[0] + u[a] + u[b], 0.5 * m[1] - u[a] - u[b]] for m, (a, b) in zip(model, pairs)])
    y = truth + 0.05 * rng.normal(size=truth.shape)
    tr = np.flatnonzero(np.arange(len(pairs)) % 3 != 0)
    te = np.flatnonzero(np.arange(len(pairs)) % 3 == 0)
    st = MetricStacker().fit(model[tr], feats[tr], [pairs[i] for i in tr], y[tr])
    pred = st.predict(model[te], feats[te], [pairs[i] for i in te])
    for t in range(2):
        assert np.corrcoef(pred[:, t], truth[te, t])[0, 1] > 0.95
        assert np.corrcoef(pred[:, t], truth[te, t])[0, 1] > np.corrcoef(model[te, t], truth[te, t])[0, 1] + 0.2
    assert st.vocabulary_ == sorted({p for i in tr for p in pairs[i]})
    np.testing.assert_allclose(st.loo_predictions(), y[tr] - st.loo_residuals_)
    n = len(tr)
    k = math.ceil((n + 1) * 0.8)
    assert st.half_width(0, 0.8) == pytest.approx(np.sort(np.abs(st.loo_residuals_[:, 0]))[k - 1])
    assert st.half_width(1, 0.999) == math.inf  # too few doubles for that level
    with pytest.raises(ValueError, match="at least 4"):
        MetricStacker().fit(model[:3], feats[:3], pairs[:3], y[:3])
    with pytest.raises(ValueError, match="one row per double"):
        MetricStacker().fit(model[:5], feats[:4], pairs[:5], y[:5])


# ---------------------------------------------------------------------------------
# in the pair screen: a cross-fitted profile ensemble's calibration record stacked with the data


def stacked_profile_model():
    """A cross-fitted profile ensemble (3 networks) on synthetic per-condition profiles with 30 doubles
    (4 held out): enough calibration doubles for the stacked estimate. Returns (model, profiles)."""
    import anndata as ad
    import pandas as pd

    from pdae_core.data.synthetic import make_synthetic
    from pdae_core.models.pdae_profile import PDAEProfileModel

    cells, _ = make_synthetic(n_perturbations=9, latent_dim=3, n_genes=30, hidden=16, n_doubles=30,
                              cells_per_condition=20, seed=3)
    conds = cells.obs["condition"].astype(str)
    means = pd.DataFrame(np.asarray(cells.X), index=conds).groupby(level=0).mean()
    data = ad.AnnData(means.to_numpy(np.float32), obs=pd.DataFrame({"condition": means.index}, index=means.index),
                      var=cells.var.copy())
    doubles = sorted(c for c in data.obs["condition"] if "+" in c)
    model = PDAEProfileModel.from_anndata(data, control_label="control", seed=0, n_members=3, cross_fit=True,
                                          latent_dim=4, hidden_dims=(16,))
    model.fit(data, holdout=doubles[:4], max_epochs=40, accelerator="cpu")
    return model, data


@pytest.fixture(scope="module")
def screened():
    from pdae_core.eval.pair_screen import screen_pairs

    model, data = stacked_profile_model()
    return model, data, screen_pairs(model, data, level=0.8)


def test_screen_stacks_the_calibration_doubles_as_a_direct_fit(screened):
    from pdae_core.eval.interactions import mean_changes
    from pdae_core.eval.pair_screen import pair_metrics
    from pdae_core.eval.stacking import MIN_DOUBLES

    model, data, tab = screened
    cal, reg = model.calibration, model.registry
    assert cal.n >= MIN_DOUBLES and tab.attrs["stacked_doubles"] == cal.n
    # the same fit by hand: out-of-fold metrics from the record, singles and observed doubles from the data
    parts = [reg.parse(d) for d in cal.doubles]
    d = mean_changes(data, reg, sorted({c for p, dd in zip(parts, cal.doubles) for c in (*p, dd)} | set(tab.a) | set(tab.b)))
    A, B, AB = (d.loc[[p[0] for p in parts]].to_numpy(), d.loc[[p[1] for p in parts]].to_numpy(),
                d.loc[cal.doubles].to_numpy())
    obs = pair_metrics(A, B, AB)
    # the ridge stacker blended with kernel regression over pairs of every measured single
    singles = sorted(set(tab.a) | set(tab.b) | {c for p in parts for c in p})
    st = BlendedStacker(kernel=PairKernelRegression()).fit(
        np.column_stack([np.log(cal.out_of_fold[m]) for m in ("magnitude", "normalised_residual")]),
        single_features(A, B), parts, np.column_stack([np.log(obs[m]) for m in ("magnitude", "normalised_residual")]),
        {c: d.loc[c].to_numpy() for c in singles}, np.log(np.linalg.norm(A + B, axis=1) + 1e-12))
    assert st.kernel_ is not None and len(st.blend_[0]) == 4
    row = tab[~tab["measured"]].iloc[0]
    fa, fb = d.loc[[row.a]].to_numpy(), d.loc[[row.b]].to_numpy()
    assert tab.attrs["single_effects"] == "observed"  # every single is measured: scored against them
    members = screen_log_metrics(model, data, row.a, row.b, fa[0], fb[0])
    want = st.predict(members[None], single_features(fa, fb), [(row.a, row.b)],
                      np.log(np.linalg.norm(fa + fb, axis=1) + 1e-12))[0]
    assert np.log(row.magnitude_stacked) == pytest.approx(want[0], rel=1e-6, abs=1e-9)
    assert np.log(row.normalised_residual_stacked) == pytest.approx(want[1], rel=1e-6, abs=1e-9)
    hw = st.half_width(1, 0.8)
    assert row.normalised_residual_stacked_hi == pytest.approx(row.normalised_residual_stacked * np.exp(hw))
    assert row.test_next_stacked == pytest.approx(row.normalised_residual_stacked + row.normalised_residual_spread)
    chk = tab.attrs["stacked_check"]["normalised_residual"]
    assert -1 <= chk["model"] <= 1 and -1 <= chk["stacked"] <= 1


def screen_log_metrics(model, data, a, b, da, db):
    """The mean over networks of each network's log metric of a + b against the observed singles
    ``da``, ``db``, as the screen computes it."""
    from pdae_core.eval.pair_screen import _screen_inputs, pair_metrics

    reg = model.registry
    source, gidx, _ = _screen_inputs(model, data, 512, "expressed", 0)
    e = np.eye(reg.n_perturbations, dtype=np.float32)
    ia, ib = reg.perturbations.index(a), reg.perturbations.index(b)
    p = model.member_changes_many(source, np.stack([e[ia], e[ib], e[ia] + e[ib]]), seed=0)[:, :, gidx]
    m = pair_metrics(np.broadcast_to(da[gidx], p[:, 0].shape), np.broadcast_to(db[gidx], p[:, 0].shape), p[:, 2])
    return np.array([np.log(m["magnitude"]).mean(), np.log(m["normalised_residual"]).mean()])


def test_ranking_by_the_stacked_estimate_and_without_one(screened):
    from pdae_core.errors import DataError
    from pdae_core.eval.pair_screen import has_stacked, rank_pairs, screen_pairs

    model, data, tab = screened
    assert has_stacked(tab)
    r = rank_pairs(tab, "least_additive", "stacked")
    assert r["normalised_residual_stacked"].is_monotonic_decreasing and r.attrs["estimate"] == "stacked"
    assert rank_pairs(tab, "buffering", "auto").attrs["estimate"] == "stacked"
    assert rank_pairs(tab, "buffering", "auto")["magnitude_stacked"].is_monotonic_increasing
    assert rank_pairs(tab, "synergy", "model")["magnitude"].is_monotonic_decreasing
    with pytest.raises(DataError, match="Unknown estimate"):
        rank_pairs(tab, "synergy", "best")
    # a calibration record without the out-of-fold metrics (older checkpoints): no stacked columns
    oof, model.calibration.out_of_fold = model.calibration.out_of_fold, None
    try:
        plain = screen_pairs(model, data)
    finally:
        model.calibration.out_of_fold = oof
    assert not has_stacked(plain) and "magnitude_lo" in plain
    assert rank_pairs(plain, "synergy", "auto").attrs["estimate"] == "model"
    with pytest.raises(DataError, match="no stacked estimate"):
        rank_pairs(plain, "synergy", "stacked")
    # the data lack most calibration doubles: too few to stack, said in words
    few = data[~data.obs["condition"].isin(model.calibration.doubles[5:])].copy()
    t = screen_pairs(model, few)
    assert not has_stacked(t) and "at least 20 are needed" in t.attrs["stacked_note"]


def test_cli_ranks_by_the_stacked_estimate_and_says_how_it_fared(screened, tmp_path, capsys):
    import pandas as pd

    from pdae_core.cli import main as cli_main

    model, data, _ = screened
    model.save(tmp_path / "ens")
    data.write_h5ad(tmp_path / "profiles.h5ad")
    out = tmp_path / "pairs.csv"
    base = ["interactions", str(tmp_path / "ens"), "--data", str(tmp_path / "profiles.h5ad"), "--out", str(out)]
    assert cli_main(base + ["--score", "least_additive"]) == 0
    text = capsys.readouterr().out
    assert "Stacked estimate from" in text and "model alone -> stacked" in text
    assert "on the stacked estimate" in text and "normalised_residual_stacked" in text
    tab = pd.read_csv(out)
    assert tab["normalised_residual_stacked"].is_monotonic_decreasing
    assert cli_main(base + ["--score", "least_additive", "--estimate", "model", "--top", "0"]) == 0
    assert "on the model's own metrics" in capsys.readouterr().out
    assert pd.read_csv(out)["normalised_residual"].is_monotonic_decreasing
    # a checkpoint without the out-of-fold metrics: refused before the screen, in words, the output kept
    before = out.read_bytes()
    plain = tmp_path / "plain"
    model.calibration.out_of_fold, oof = None, model.calibration.out_of_fold
    try:
        model.save(plain)
    finally:
        model.calibration.out_of_fold = oof
    assert cli_main(["interactions", str(plain), "--data", str(tmp_path / "profiles.h5ad"), "--out", str(out),
                     "--estimate", "stacked"]) == 2
    assert "--estimate stacked needs a cross-fitted ensemble" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_one_pair_gets_the_same_stacked_estimate_as_its_row_of_the_screen(screened):
    from pdae_core.eval.pair_screen import pair_interaction

    model, data, tab = screened
    for row in (tab[~tab["measured"]].iloc[0], tab[tab["held_out"]].iloc[0]):
        one = pair_interaction(model, data, row.a, row.b)
        assert one.stacked is not None and one.stacked["doubles"] == tab.attrs["stacked_doubles"]
        for m in ("magnitude", "normalised_residual"):
            assert one.stacked[m] == pytest.approx(row[f"{m}_stacked"], rel=1e-6)
            assert one.stacked[f"{m}_hi"] == pytest.approx(row[f"{m}_stacked_hi"], rel=1e-6)
    oof, model.calibration.out_of_fold = model.calibration.out_of_fold, None
    try:
        assert pair_interaction(model, data, row.a, row.b).stacked is None
    finally:
        model.calibration.out_of_fold = oof
