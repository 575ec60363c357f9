"""The gene-by-gene recalibration of a predicted departure from the sum of the parts
(:mod:`pdae_core.eval.departure_weights`): its fit on out-of-fold departures with a known truth,
its ranges, its record in a checkpoint, and its use in a cross-fitted ensemble's gene view and
pair screen."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

import pdae_core as pc
from pdae_core import CheckpointError
from pdae_core.data.synthetic import make_synthetic
from pdae_core.errors import DataError
from pdae_core.eval.departure import gene_departures, pearson_rows, top_departures
from pdae_core.eval.departure_weights import (
    MIN_DOUBLES,
    DepartureWeights,
    cross_fitted_departures,
    fit_departure_weights,
    gene_weights,
)
from pdae_core.models.integrity import seal

LEVELS = (0.8, 0.95)


def _truth(n: int, seed: int, n_genes: int = 60):
    """Doubles whose networks' departure ``E`` holds on the first half of the genes and is noise on
    the rest, where the observed departure follows the sum of the singles instead."""
    rng = np.random.default_rng(seed)
    E, S = rng.normal(size=(n, n_genes)), rng.normal(size=(n, n_genes))
    w = np.r_[np.ones(n_genes // 2), np.zeros(n_genes - n_genes // 2)]
    v = np.r_[np.zeros(n_genes // 2), np.full(n_genes - n_genes // 2, -0.6)]
    return E, S, w * E + v * S + 0.3 * rng.normal(size=(n, n_genes)), w, v


def test_the_weights_find_the_genes_where_the_networks_hold_and_their_ranges_cover():
    E, S, N, w_true, v_true = _truth(80, 0)
    dw = fit_departure_weights(E, S, N, LEVELS)
    assert dw is not None and dw.n_doubles == 80
    assert dw.pearson > dw.pearson_networks + 0.1  # cross-validated, training doubles only
    np.testing.assert_allclose(dw.weight, w_true, atol=0.25)
    np.testing.assert_allclose(dw.sum_weight, v_true, atol=0.25)
    w, v = gene_weights(E, S, N, dw.beta, dw.shrink)
    np.testing.assert_array_equal(dw.weight, w)
    np.testing.assert_array_equal(dw.sum_weight, v)
    # new doubles from the same truth: the recalibrated departure agrees better, and its ranges cover
    E2, S2, N2, _, _ = _truth(400, 1)
    rec = dw.apply(E2, S2)
    assert np.nanmean(pearson_rows(rec, N2)) > np.nanmean(pearson_rows(E2, N2)) + 0.1
    for lv in LEVELS:
        covered = np.mean(np.abs(rec - N2) <= dw.half_width(lv))
        assert abs(covered - lv) < 0.06, (lv, covered)
    # the ranges are the conformal quantiles of the cross-validated errors
    err = np.sort(np.abs(cross_fitted_departures(E, S, N, dw.shrink) - N), axis=0)
    np.testing.assert_array_equal(dw.half_width(0.8), err[int(np.ceil(81 * 0.8)) - 1])


def test_too_few_doubles_or_nothing_to_gain_keeps_the_networks_departure():
    E, S, N, _, _ = _truth(MIN_DOUBLES - 1, 2)
    assert fit_departure_weights(E, S, N, LEVELS) is None
    E, S, _, _, _ = _truth(30, 3)
    assert fit_departure_weights(E, S, E.copy(), LEVELS) is None  # the networks were exactly right


def test_ranges_at_a_number_of_cells_separate_sampling_noise():
    E, S, N, _, _ = _truth(60, 4, n_genes=20)
    noise_var, cells = np.full(20, 2.0), np.full(60, 50)
    dw = fit_departure_weights(E, S, N, LEVELS, noise_var, cells)
    few, many, exact = (dw.half_width(0.8, noise_var, n) for n in (3, 500, np.inf))
    assert (few > many).all() and (many > exact).all()
    np.testing.assert_allclose(exact, dw.scores[0.8] * np.sqrt(dw.model_var))
    np.testing.assert_array_equal(dw.half_width(0.8), dw.half_widths[0.8])  # without a number of cells
    with pytest.raises(DataError, match="levels"):
        dw.half_width(0.5)


def test_the_record_round_trips_and_a_bad_one_is_refused():
    E, S, N, _, _ = _truth(40, 5, n_genes=12)
    dw = fit_departure_weights(E, S, N, LEVELS, np.ones(12), np.full(40, 20))
    back = DepartureWeights.from_dict(json.loads(json.dumps(dw.to_dict())), 12, DataError)
    for k in ("weight", "sum_weight", "model_var"):
        np.testing.assert_array_equal(getattr(back, k), getattr(dw, k))
    np.testing.assert_array_equal(back.half_widths[0.95], dw.half_widths[0.95])
    assert (back.beta, back.shrink, back.n_doubles, back.pearson) == (dw.beta, dw.shrink, 40, dw.pearson)

    def refused(edit, match):
        d = json.loads(json.dumps(dw.to_dict()))
        edit(d)
        with pytest.raises(DataError, match=match):
            DepartureWeights.from_dict(d, 12, DataError)

    refused(lambda d: d["weight"].pop(), "list of 12 numbers")
    refused(lambda d: d["sum_weight"].__setitem__(0, None), "list of 12 numbers")
    refused(lambda d: d["weight"].__setitem__(0, True), "list of 12 numbers")
    refused(lambda d: d.__setitem__("n_doubles", 3), "at least")
    refused(lambda d: d.pop("model_var"), "both model_var and scores")
    refused(lambda d: d.__setitem__("beta", "0.1"), "finite number")
    refused(lambda d: d["half_widths"]["0.8"].__setitem__(0, -1.0), "non-negative")


def test_gene_departures_show_the_recalibrated_departure_and_keep_the_networks():
    rng = np.random.default_rng(6)
    ch = rng.normal(size=(4, 3, 5))
    w, v = rng.uniform(0, 2, 5), rng.uniform(-1, 0, 5)
    t = gene_departures(ch, list("ABCDE"), weights=(w, v)).set_index("gene").loc[list("ABCDE")]
    mean = ch.mean(0)
    own = mean[2] - mean[0] - mean[1]
    np.testing.assert_allclose(t["network_departure"], own)
    np.testing.assert_allclose(t["network_pair"], mean[2])
    np.testing.assert_allclose(t["departure"], w * own + v * (mean[0] + mean[1]))
    np.testing.assert_allclose(t["predicted_pair"], t["sum_of_parts"] + t["departure"])
    per = w * (ch[:, 2] - ch[:, 0] - ch[:, 1]) + v * (ch[:, 0] + ch[:, 1])
    np.testing.assert_allclose(t["departure_spread"], per.std(0, ddof=1))
    with pytest.raises(ValueError, match="one value per gene"):
        gene_departures(ch, list("ABCDE"), weights=(w[:4], v))


@pytest.fixture(scope="module")
def data():
    a, _ = make_synthetic(n_perturbations=7, latent_dim=3, n_genes=24, hidden=16, n_doubles=18,
                          cells_per_condition=25, seed=5)
    return a


@pytest.fixture(scope="module")
def ensemble(data):
    ens = pc.PDAE.from_anndata(data, seed=1, n_members=3, cross_fit=True, latent_dim=3, hidden_dims=(16,),
                               noise_dim=2, n_sources=4)
    ens.fit(data, holdout=["P1+P2"], max_epochs=2, batch_size=64, accelerator="cpu")
    if ens.calibration.departure is None:
        pytest.fail("the fixture's ensemble should gain from recalibrating its departures")
    return ens


def test_a_cross_fitted_ensemble_recalibrates_its_gene_view(data, ensemble):
    from pdae_core.eval.pair_screen import _screen_inputs, pair_interaction, screen_pairs

    cal = ensemble.calibration
    dep = cal.departure
    assert cal.single_effects == "observed" and dep.n_doubles == cal.n >= MIN_DOUBLES
    assert dep.pearson > dep.pearson_networks
    _, gidx, _ = _screen_inputs(ensemble, data, 64, "all", 0)
    for pair in (("P1", "P2"), ("P2", "P6")):  # held out and measured; never measured
        t = pair_interaction(ensemble, data, *pair, n_cells=64, genes="all").genes_table
        t = t.set_index("gene").loc[ensemble.registry.gene_names]
        np.testing.assert_allclose(t["departure"], dep.weight * t["network_departure"]
                                   + dep.sum_weight * t["sum_of_parts"], atol=1e-9)
        half = t["departure_hi"] - t["departure"]
        if pair == ("P1", "P2"):  # measured with 25 cells: the range its cells allow
            np.testing.assert_allclose(half, dep.half_width(0.8, cal.cell_noise.noise_var, 25), rtol=1e-9)
        else:
            np.testing.assert_allclose(half, dep.half_width(0.8), rtol=1e-9)
    # the networks' own singles: no recalibration (it was learnt against the observed ones)
    own = pair_interaction(ensemble, data, "P1", "P2", n_cells=64, single_effects="model").genes_table
    assert "network_departure" not in own and "departure_lo" not in own
    # the pair screen's top genes are the recalibrated ones
    screen = screen_pairs(ensemble, data, n_cells=64, genes="all", progress_bar=False).set_index("pair")
    t = pair_interaction(ensemble, data, "P2", "P6", n_cells=64, genes="all").genes_table
    want = top_departures(t.set_index("gene").loc[[ensemble.registry.gene_names[i] for i in gidx], "departure"]
                          .to_numpy()[None], [ensemble.registry.gene_names[i] for i in gidx])[0]
    assert screen.loc["P2+P6", "top_departures"] == want


def test_the_recalibration_travels_in_the_sealed_checkpoint(ensemble, tmp_path):
    ensemble.save(tmp_path / "ens")
    back = pc.load_model(tmp_path / "ens").calibration.departure
    np.testing.assert_array_equal(back.weight, ensemble.calibration.departure.weight)
    np.testing.assert_array_equal(back.half_width(0.9), ensemble.calibration.departure.half_width(0.9))

    d = tmp_path / "edited"
    shutil.copytree(tmp_path / "ens", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["ensemble"]["calibration"]["departure_weights"]["weight"][0] = 9.0
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError):  # changed without resealing: the integrity check refuses it
        pc.load_model(d)
    cfg["ensemble"]["calibration"]["departure_weights"]["weight"].pop()
    (d / "config.json").write_text(json.dumps(seal(cfg)))
    with pytest.raises((CheckpointError, DataError), match="departure_weights.weight"):
        pc.load_model(d)
    cfg = json.loads((tmp_path / "ens" / "config.json").read_text())
    cfg["ensemble"]["calibration"].pop("departure_weights")  # a record written before it was kept
    (d / "config.json").write_text(json.dumps(seal(cfg)))
    assert pc.load_model(d).calibration.departure is None



def test_pdae_interactions_pair_writes_and_says_the_reweighted_departure(data, ensemble, tmp_path, capsys):
    from pdae_core.cli import main as cli_main
    from pdae_core.eval.departure import recalibration_in_words
    from pdae_core.eval.pair_screen import pair_interaction

    ensemble.save(tmp_path / "ens")
    data.write_h5ad(tmp_path / "cells.h5ad")
    out = tmp_path / "genes.csv"
    assert cli_main(["interactions", str(tmp_path / "ens"), "--data", str(tmp_path / "cells.h5ad"), "--pair", "P2+P6",
                     "--n-cells", "64", "--genes", "all", "--out", str(out)]) == 0
    res = pair_interaction(ensemble, data, "P2", "P6", n_cells=64, genes="all")
    assert recalibration_in_words(res.recalibration) in " ".join(capsys.readouterr().out.split())
    written = pd.read_csv(out)
    assert {"departure", "network_departure", "network_pair", "departure_lo"} <= set(written.columns)
    np.testing.assert_allclose(written["departure"], res.genes_table["departure"], rtol=1e-5, atol=1e-7)
