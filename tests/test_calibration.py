"""Cross-fitted ensembles and their split-conformal intervals (issue 15 item 2 at the cell level,
item 3's per-pair intervals): each network leaves a group of training doubles out, the doubles'
out-of-fold errors calibrate intervals of the per-gene change and of the interaction metrics."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

import pdae_core as pc
from pdae_core import CheckpointError
from pdae_core.cli import main as cli_main
from pdae_core.data.registry import condition_column
from pdae_core.data.synthetic import make_synthetic
from pdae_core.errors import DataError
from pdae_core.eval.calibration import (
    calibration_doubles,
    conformal_rank,
    deal_doubles,
    interval_check,
)
from pdae_core.eval.interactions import mean_changes
from pdae_core.eval.pair_screen import _screen_inputs, pair_metrics, screen_pairs
from pdae_core.models import ensemble as ensemble_mod
from pdae_core.models.integrity import seal

SMALL = dict(latent_dim=3, hidden_dims=(16,), noise_dim=2, n_sources=4)
FIT = dict(holdout=["P1+P2"], max_epochs=2, batch_size=64, accelerator="cpu")


@pytest.fixture(scope="module")
def adata():
    a, _ = make_synthetic(n_perturbations=6, latent_dim=3, n_genes=24, hidden=16, n_doubles=10,
                          cells_per_condition=30, seed=4)
    if "P1+P2" not in set(a.obs["condition"]):
        pytest.fail("the fixture needs the double P1+P2")
    return a


@pytest.fixture(scope="module")
def fitted(adata):
    """A 3-network cross-fitted ensemble, with the rows each network trained on."""
    seen: list[np.ndarray] = []
    real = ensemble_mod.train_module

    def spy(module, X, labels, groups, cfg, callbacks):
        seen.append(np.unique(np.asarray(labels), axis=0))
        return real(module, X, labels, groups, cfg, callbacks)

    mp = pytest.MonkeyPatch()
    mp.setattr(ensemble_mod, "train_module", spy)
    try:
        ens = pc.PDAE.from_anndata(adata, seed=1, n_members=3, cross_fit=True, **SMALL)
        ens.fit(adata, **FIT)
    finally:
        mp.undo()
    return ens, seen


def test_conformal_rank_is_the_ceiling_and_none_when_too_few():
    assert conformal_rank(4, 0.8) == 4 and conformal_rank(3, 0.8) is None
    assert conformal_rank(19, 0.95) == 19 and conformal_rank(18, 0.95) is None
    assert conformal_rank(99, 0.9) == 90 and conformal_rank(9, 0.5) == 5
    with pytest.raises(ValueError, match="between 0 and 1"):
        conformal_rank(10, 1.0)


def test_calibration_doubles_need_both_singles_with_enough_cells(adata):
    reg = pc.setup_anndata(adata.copy(), "condition", "control")
    conds = ["control"] * 10 + ["A"] * 10 + ["B"] * 10 + ["C"] * 9 + ["A+B"] * 10 + ["A+C"] * 10 + ["B+C"] * 3 \
        + ["A+B+C"] * 10 + ["D+E"] * 10
    assert calibration_doubles(conds, reg) == ["A+B"]  # A+C: C has 9 cells; B+C: 3 cells; D+E: no singles
    assert calibration_doubles(conds, reg, min_cells=3) == ["A+B", "A+C", "B+C"]


def test_doubles_are_dealt_into_disjoint_groups_of_near_equal_size():
    doubles = [f"P{i}+Q{i}" for i in range(11)]
    groups = deal_doubles(doubles, 3, seed=7)
    assert sorted(d for g in groups for d in g) == sorted(doubles)
    assert sorted(len(g) for g in groups) == [3, 4, 4]
    assert groups == deal_doubles(list(reversed(doubles)), 3, seed=7)  # order of the input does not matter
    assert groups != deal_doubles(doubles, 3, seed=8)
    with pytest.raises(DataError, match="needs at least 5 training doubles.*the data have 2: A\\+B, C\\+D"):
        deal_doubles(["A+B", "C+D"], 5, seed=0)


def test_each_network_trains_without_its_own_group_of_doubles(adata, fitted):
    ens, seen = fitted
    reg = ens.registry
    cal = ens.calibration
    assert len(seen) == 3 and len(cal.left_out) == 3 and all(cal.left_out)
    conds = set(condition_column(adata, "condition"))
    expected = calibration_doubles(condition_column(adata, "condition")[
        condition_column(adata, "condition") != "P1+P2"], reg)
    assert cal.doubles == expected and "P1+P2" not in cal.doubles and len(cal.doubles) >= 6
    for k, labels in enumerate(seen):
        rows = {tuple(r) for r in labels}
        for j, group in enumerate(cal.left_out):
            for d in group:
                assert (tuple(reg.label_vector(d)) in rows) == (j != k), (k, d)
        assert tuple(reg.label_vector("P1+P2")) not in rows  # the hold-out stays out of every network
    assert all(s in conds for s in ("P1", "P2"))


def test_intervals_are_the_conformal_quantiles_of_out_of_fold_errors(adata, fitted):
    ens, _ = fitted
    cal, reg = ens.calibration, ens.registry
    # every network moves all 512 cells (not the screen's share): the members' per-gene spread and
    # errors are not differences between targets, so the noise of fewer cells would not cancel
    source, gidx, _ = _screen_inputs(ens, adata, 512, "expressed", 1, share=False)
    assert cal.n_source_cells == source.n_obs == 512
    obs = mean_changes(adata, reg, sorted({c for d in cal.doubles for c in (*reg.parse(d), d)}))
    gene_err, resid_err, resid_pred = [], [], {}
    for k, group in enumerate(cal.left_out):
        for d in group:
            a, b = reg.parse(d)
            p = ens.member_changes_many(source, np.stack([reg.label_vector(c) for c in (a, b, d)]), seed=1,
                                        members=[k])[0]
            o = obs.loc[[a, b, d]].to_numpy()
            gene_err.append(np.abs(p[2] - o[2]))
            pm = pair_metrics(o[0, gidx], o[1, gidx], p[2, gidx])["normalised_residual"]  # the observed singles
            om = pair_metrics(o[0, gidx], o[1, gidx], o[2, gidx])["normalised_residual"]
            resid_err.append(abs(float(pm) - float(om)))
            resid_pred[d] = float(pm)
    gene_err = np.sort(np.asarray(gene_err), axis=0)
    n = len(gene_err)
    k80 = math.ceil((n + 1) * 0.8)
    np.testing.assert_allclose(cal.gene_half_width(0.8), gene_err[k80 - 1], rtol=1e-6)
    np.testing.assert_allclose(cal.metric_errors["normalised_residual"], np.sort(resid_err), rtol=1e-6)
    assert cal.metric_half_width("normalised_residual", 0.8) == pytest.approx(np.sort(resid_err)[k80 - 1])
    assert np.isinf(cal.gene_half_width(0.95)).all() == (n < 19)
    assert math.isinf(cal.metric_half_width("magnitude", 0.999))
    # the out-of-fold predicted metric of each double, in the order of cal.doubles (what the screen stacks)
    np.testing.assert_allclose(cal.out_of_fold["normalised_residual"], [resid_pred[d] for d in cal.doubles], rtol=1e-6)
    with pytest.raises(DataError, match="levels"):
        cal.gene_half_width(0.5)


def test_prediction_and_pair_screen_carry_the_intervals(adata, fitted):
    ens, _ = fitted
    src = adata[adata.obs["condition"] == "control"]
    table = ens.predict(src, "P1+P2", seed=0).varm["change_across_networks"]
    hw = ens.calibration.gene_half_width(0.8)
    np.testing.assert_allclose(table["upper_80"] - table["mean"], hw, rtol=1e-5)
    np.testing.assert_allclose(table["mean"] - table["lower_80"], hw, rtol=1e-5)
    pairs = screen_pairs(ens, adata, n_cells=64, level=0.8, progress_bar=False)
    w = ens.calibration.metric_half_width("normalised_residual", 0.8)
    np.testing.assert_allclose(pairs["normalised_residual_hi"] - pairs["normalised_residual"], w)
    np.testing.assert_allclose(pairs["magnitude_lo"], np.maximum(
        pairs["magnitude"] - ens.calibration.metric_half_width("magnitude", 0.8), 0.0))  # cut at 0
    np.testing.assert_allclose(pairs["normalised_residual_lo"], np.maximum(pairs["normalised_residual"] - w, 0.0))
    assert pairs.attrs["interval_level"] == 0.8 and pairs.attrs["calibration_doubles"] == ens.calibration.n
    with pytest.raises(DataError, match="between 0 and 1"):
        screen_pairs(ens, adata, n_cells=64, level=1.5, progress_bar=False)
    from pdae_core.explore import pair_ranking

    ranked = pair_ranking(pairs, "least_additive")  # the dashboard's table: the range in words
    first = ranked.iloc[0]
    assert first["residual_range"] == (f"{max(first['normalised_residual'] - w, 0):.2f} to "
                                       f"{first['normalised_residual'] + w:.2f}")
    plain = pc.PDAE.from_anndata(adata, seed=1, n_members=2, **SMALL)
    plain.fit(adata, **FIT)
    assert plain.calibration is None
    plain_pairs = screen_pairs(plain, adata, n_cells=64, progress_bar=False)
    assert "cross-fitted" in screen_pairs(plain, adata, n_cells=64, cells=10, progress_bar=False).attrs["cells_note"]
    assert "normalised_residual_lo" not in plain_pairs and "residual_range" not in pair_ranking(plain_pairs)
    assert "lower_80" not in plain.predict(src, "P1+P2").varm["change_across_networks"]


def test_interval_check_scores_coverage_on_held_out_doubles(adata, fitted):
    ens, _ = fitted
    (row,) = interval_check(ens, adata, ["P1+P2"], n_cells=64)
    assert row["double"] == "P1+P2" and row["n_members"] == 3 and row["spread"] > 0 and row["error"] > 0
    assert 0 <= row["gene_coverage_80"] <= row["gene_coverage_90"] <= row["gene_coverage_95"] <= 1
    hw = row["normalised_residual_half_width_80"]
    assert row["normalised_residual_covered_80"] == (
        abs(row["normalised_residual_pred"] - row["normalised_residual_obs"]) <= hw)
    # the intervals at the double's own number of cells (the sampling-noise model of the calibration)
    noise = ens.calibration.cell_noise
    assert row["n_cells"] == int((adata.obs["condition"] == "P1+P2").sum()) == 30
    assert noise.cells.tolist() == [int((adata.obs["condition"] == d).sum()) for d in ens.calibration.doubles]
    src, _, _ = _screen_inputs(ens, adata, 64, "expressed", 0, share=False)
    lab = np.stack([ens.registry.label_vector("P1+P2")])
    mean_ab = ens.member_changes_many(src, lab, seed=0)[:, 0].mean(0)
    obs = mean_changes(adata, ens.registry, ["P1+P2"]).to_numpy()[0]
    for lv in (80, 95):
        inside = np.abs(mean_ab - obs) <= noise.gene_half_width(lv / 100, 30)
        assert row[f"cells_gene_coverage_{lv}"] == pytest.approx(inside.mean())
        # as the plain interval, infinite only where the calibration doubles are too few for the level
        assert np.isinf(row[f"cells_normalised_residual_half_width_{lv}"]) == np.isinf(
            row[f"normalised_residual_half_width_{lv}"])
    assert isinstance(row["cells_magnitude_covered_80"], bool)
    plain = pc.PDAE.from_anndata(adata, seed=1, **SMALL)
    with pytest.raises(DataError, match="no calibration"):
        interval_check(plain, adata, ["P1+P2"])


def test_a_measured_pair_gets_the_range_its_number_of_cells_allows(adata, fitted):
    from pdae_core.eval.cell_noise import expected_ranges
    from pdae_core.eval.pair_screen import pair_interaction

    ens, _ = fitted
    noise = ens.calibration.cell_noise
    res = pair_interaction(ens, adata, "P1", "P2", n_cells=64)
    at = res.at_cells
    assert at["cells"] == 30 and res.observed is not None
    for m in ("magnitude", "normalised_residual"):
        assert 0 <= at[f"{m}_lo"] <= at[f"{m}_hi"] < np.inf
        assert res.observed_within(m) == (at[f"{m}_lo"] <= res.observed[m] <= at[f"{m}_hi"])
    # the same ranges as the library's function on the members' mean change
    source, gidx, _ = _screen_inputs(ens, adata, 64, "expressed", 0)
    eye = np.eye(ens.registry.n_perturbations, dtype=np.float32)
    i, j = ens.registry.perturbations.index("P1"), ens.registry.perturbations.index("P2")
    d = ens.member_changes_many(source, np.stack([eye[i], eye[j], eye[i] + eye[j]]), seed=0)[:, :, gidx]
    d[:, :2] = mean_changes(adata, ens.registry, ["P1", "P2"]).to_numpy()[:, gidx][None]
    mean = d.mean(0)
    want = expected_ranges(noise, mean[0], mean[1], mean[2], res.predicted, gidx, 30, 0.8, 0)
    assert at == pytest.approx(want)
    # fewer cells, a wider range; an unmeasured pair has none
    few = expected_ranges(noise, mean[0], mean[1], mean[2], res.predicted, gidx, 3, 0.8, 0)
    assert few["normalised_residual_hi"] - few["normalised_residual_lo"] > want["normalised_residual_hi"] - want[
        "normalised_residual_lo"]
    unmeasured = next((a, b) for a in ens.registry.perturbations for b in ens.registry.perturbations
                      if a < b and f"{a}+{b}" not in set(adata.obs["condition"]) and f"{b}+{a}" not in
                      set(adata.obs["condition"]))
    assert pair_interaction(ens, adata, *unmeasured, n_cells=64).at_cells is None


def test_a_pairs_gene_departures_carry_the_calibrated_ranges(adata, fitted):
    from pdae_core.eval.pair_screen import pair_interaction

    ens, _ = fitted
    cal = ens.calibration
    res = pair_interaction(ens, adata, "P1", "P2", n_cells=64)
    t = res.genes_table
    source, gidx, _ = _screen_inputs(ens, adata, 64, "expressed", 0)
    names = [ens.registry.gene_names[i] for i in gidx]
    assert sorted(t["gene"]) == sorted(names)
    t = t.set_index("gene").loc[names]
    # a measured pair: the range its 30 cells allow, from the sampling-noise model
    np.testing.assert_allclose(t["departure_hi"] - t["departure"], cal.cell_noise.gene_half_width(0.8, 30)[gidx])
    delta = mean_changes(adata, ens.registry, ["P1", "P2", "P1+P2"]).to_numpy()[:, gidx]
    np.testing.assert_allclose(t["observed_departure"], delta[2] - delta[0] - delta[1])
    np.testing.assert_allclose(t["change_a"], delta[0])  # the observed singles
    assert (t["departure_spread"] > 0).all()
    # an unmeasured pair: the calibration's per-gene width; none against the model's own singles
    unmeasured = next((a, b) for a in ens.registry.perturbations for b in ens.registry.perturbations
                      if a < b and f"{a}+{b}" not in set(adata.obs["condition"]) and f"{b}+{a}" not in
                      set(adata.obs["condition"]))
    u = pair_interaction(ens, adata, *unmeasured, n_cells=64).genes_table.set_index("gene").loc[names]
    np.testing.assert_allclose(u["departure_hi"] - u["departure"], cal.gene_half_width(0.8)[gidx])
    assert "observed_departure" not in u
    own = pair_interaction(ens, adata, "P1", "P2", n_cells=64, single_effects="model").genes_table
    assert "departure_lo" not in own


def test_the_pair_screen_gives_every_pair_its_range_at_a_planned_number_of_cells(adata, fitted):
    from pdae_core.eval.pair_screen import pair_interaction

    ens, _ = fitted
    few, many = (screen_pairs(ens, adata, n_cells=64, cells=c, progress_bar=False).set_index("pair") for c in (3, 300))
    assert few.attrs["cells"] == 3 and "cells_note" not in few.attrs
    cols = [f"{m}_{e}_cells" for m in ("magnitude", "normalised_residual") for e in ("lo", "hi")]
    assert few[cols].notna().all().all() and (few["normalised_residual_lo_cells"] >= 0).all()
    width = {k: t["normalised_residual_hi_cells"] - t["normalised_residual_lo_cells"] for k, t in (("few", few),
                                                                                                   ("many", many))}
    assert (width["few"] > width["many"]).all()  # fewer cells, wider ranges
    # a measured pair at its own number of cells: the range Compose shows for it
    at = screen_pairs(ens, adata, n_cells=64, cells=30, progress_bar=False).set_index("pair").loc["P1+P2"]
    one = pair_interaction(ens, adata, "P1", "P2", n_cells=64).at_cells
    for m in ("magnitude", "normalised_residual"):
        assert at[f"{m}_lo_cells"] == pytest.approx(one[f"{m}_lo"]) and at[f"{m}_hi_cells"] == pytest.approx(one[f"{m}_hi"])
    plain = screen_pairs(ens, adata, n_cells=64, progress_bar=False)
    assert "magnitude_lo_cells" not in plain and "cells" not in plain.attrs and "cells_note" not in plain.attrs
    other = screen_pairs(ens, adata, n_cells=64, cells=10, single_effects="model", progress_bar=False)
    assert "magnitude_lo_cells" not in other and "scored the observed single effects" in other.attrs["cells_note"]
    with pytest.raises(DataError, match="at least 1"):
        screen_pairs(ens, adata, n_cells=64, cells=0, progress_bar=False)


def test_calibration_round_trips_and_a_bad_record_is_refused(adata, fitted, tmp_path, capsys):
    ens, _ = fitted
    ens.save(tmp_path / "ens")
    back = pc.load_model(tmp_path / "ens")
    assert back.cross_fit and back.calibration.left_out == ens.calibration.left_out
    for lv in (0.8, 0.9, 0.95):
        np.testing.assert_array_equal(back.calibration.gene_half_width(lv), ens.calibration.gene_half_width(lv))
    for m in ("magnitude", "normalised_residual"):
        np.testing.assert_array_equal(back.calibration.out_of_fold[m], ens.calibration.out_of_fold[m])
        np.testing.assert_array_equal(back.calibration.cell_noise.metric_scores[m],
                                      ens.calibration.cell_noise.metric_scores[m])
    np.testing.assert_array_equal(back.calibration.cell_noise.gene_half_width(0.9, 12),
                                  ens.calibration.cell_noise.gene_half_width(0.9, 12))

    def edited(name, edit):
        d = tmp_path / name
        shutil.copytree(tmp_path / "ens", d)
        cfg = json.loads((d / "config.json").read_text())
        edit(cfg["ensemble"])
        (d / "config.json").write_text(json.dumps(seal(cfg)))
        return d

    cases = {
        "short": (lambda e: e["calibration"]["gene_half_widths"]["0.8"].pop(), "of 24 numbers"),
        "negative": (lambda e: e["calibration"]["metric_errors"]["magnitude"].__setitem__(0, -1.0), "non-negative"),
        "text": (lambda e: e["calibration"]["metric_errors"]["magnitude"].__setitem__(0, "1"), "numbers or null"),
        "groups": (lambda e: e["calibration"]["left_out"].pop(), "3 lists"),
        "metric": (lambda e: e["calibration"]["metric_errors"].pop("magnitude"), "exactly magnitude"),
        "level": (lambda e: e["calibration"]["gene_half_widths"].__setitem__("1.5", []), "between 0 and 1"),
        "not_cross_fit": (lambda e: e.pop("cross_fit"), "without cross_fit"),
        "flag": (lambda e: e.__setitem__("cross_fit", "yes"), "cross_fit must be true or false"),
        "oof_short": (lambda e: e["calibration"]["out_of_fold"]["magnitude"].pop(), r"out_of_fold\['magnitude'\] must be a list of"),
        "oof_metric": (lambda e: e["calibration"]["out_of_fold"].pop("normalised_residual"), "out_of_fold must have"),
        "oof_negative": (lambda e: e["calibration"]["out_of_fold"]["magnitude"].__setitem__(0, -0.5), "non-negative"),
        "single_effects": (lambda e: e["calibration"].__setitem__("single_effects", "both"), "single_effects must be"),
        "noise_cells": (lambda e: e["calibration"]["cell_noise"]["cells"].pop(), "cells must be"),
        "noise_var": (lambda e: e["calibration"]["cell_noise"]["noise_var"].__setitem__(0, -2.0), "non-negative"),
    }
    for name, (edit, msg) in cases.items():
        with pytest.raises(CheckpointError, match=msg):
            pc.load_model(edited(name, edit))
    # a checkpoint written before the out-of-fold metrics were kept still loads (no stacked estimate)
    old = pc.load_model(edited("before_oof", lambda e: e["calibration"].pop("out_of_fold")))
    assert old.calibration.out_of_fold is None and old.calibration.n == ens.calibration.n
    # ... and one written before the sampling-noise model: plain intervals only
    before = pc.load_model(edited("before_noise", lambda e: e["calibration"].pop("cell_noise")))
    assert before.calibration.cell_noise is None
    (row,) = interval_check(before, adata, ["P1+P2"], n_cells=64)
    assert "gene_coverage_80" in row and not any(k.startswith("cells_") for k in row)
    assert ens.calibration.single_effects == back.calibration.single_effects == "observed"
    # ... and before the single effects were chosen: scored against the model's singles, so a screen
    # against the observed ones shows no intervals (they were calibrated for the other) and says why
    older = pc.load_model(edited("before_single", lambda e: e["calibration"].pop("single_effects")))
    assert older.calibration.single_effects == "model"
    noisefree = screen_pairs(before, adata, n_cells=64, cells=10, progress_bar=False)
    assert "magnitude_lo_cells" not in noisefree and "no sampling-noise model" in noisefree.attrs["cells_note"]
    tab = screen_pairs(older, adata, n_cells=64)
    assert tab.attrs["single_effects"] == "observed" and "magnitude_lo" not in tab
    assert "calibrated with the model single effects" in tab.attrs["interval_note"]
    assert "magnitude_lo" in screen_pairs(older, adata, n_cells=64, single_effects="model")
    adata.write_h5ad(tmp_path / "cells.h5ad")
    assert cli_main(["interactions", str(tmp_path / "before_single"), "--data", str(tmp_path / "cells.h5ad"),
                     "--n-cells", "64", "--out", str(tmp_path / "pairs.csv"), "--top", "0"]) == 0
    text = capsys.readouterr().out
    assert "scored against the observed singles" in text and "--single-effects model scores the pairs as" in text
    assert cli_main(["interactions", str(tmp_path / "before_single"), "--data", str(tmp_path / "cells.h5ad"),
                     "--n-cells", "64", "--out", str(tmp_path / "pairs.csv"), "--single-effects", "model"]) == 0
    text = capsys.readouterr().out
    assert "scored against the model singles" in text and "intervals at 80% calibrated on" in text


def test_cross_fitting_needs_enough_doubles_and_members(adata):
    with pytest.raises(ValueError, match="at least 2 members"):
        pc.PDAE.from_anndata(adata, n_members=1, cross_fit=True, **SMALL)
    few, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=20, hidden=16, n_doubles=2,
                            cells_per_condition=20, seed=0)
    ens = pc.PDAE.from_anndata(few, n_members=3, cross_fit=True, **SMALL)
    with pytest.raises(DataError, match="needs at least 3 training doubles"):
        ens.fit(few, max_epochs=1, accelerator="cpu")


def test_cli_trains_a_cross_fitted_ensemble_and_screens_with_intervals(adata, tmp_path, capsys):
    data = tmp_path / "cells.h5ad"
    adata.write_h5ad(data)
    out = tmp_path / "ens"
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "64",
            "--latent-dim", "3", "--hidden-dims", "16", "--noise-dim", "2", "-q", "--accelerator", "cpu"]
    assert cli_main(args + ["--cross-fit"]) == 2
    assert "--cross-fit needs --ensemble" in capsys.readouterr().err and not out.exists()
    assert cli_main(args + ["--ensemble", "2", "--cross-fit"]) == 0
    text = capsys.readouterr().out
    assert "Intervals calibrated on" in text and "too few for 95%" in text
    assert cli_main(["info", str(out)]) == 0
    n = pc.load_model(out).calibration.n
    assert f"cross-fitted: intervals calibrated on {n} training doubles" in capsys.readouterr().out
    assert cli_main(["info", str(out), "--json"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert cli_main(["info", str(out), "--json", "--load"]) == 0
    assert fast["calibration_doubles"] == json.loads(capsys.readouterr().out)["calibration_doubles"] == n > 0
    pairs = tmp_path / "pairs.csv"
    assert cli_main(["interactions", str(out), "--data", str(data), "--n-cells", "32", "--level", "0.9",
                     "--out", str(pairs)]) == 0
    text = capsys.readouterr().out
    assert "intervals at 90% calibrated on" in text and "normalised_residual_lo" in text
    import pandas as pd

    table = pd.read_csv(pairs)
    assert (table["normalised_residual_hi"] >= table["normalised_residual_lo"]).all()
    assert "normalised_residual_lo_cells" not in table
    assert cli_main(["interactions", str(out), "--data", str(data), "--n-cells", "32", "--cells", "25",
                     "--out", str(pairs)]) == 0
    assert "Ranges at 80% of what 25 cells per pair would show" in capsys.readouterr().out
    planned = pd.read_csv(pairs)
    assert (planned["normalised_residual_hi_cells"] >= planned["normalised_residual_lo_cells"]).all()
    assert cli_main(["interactions", str(out), "--data", str(data), "--cells", "0", "--out", str(pairs)]) == 2
    assert "--cells" in capsys.readouterr().err
