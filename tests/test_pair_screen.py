"""The pair screen (issue 15 item 3): every pair of the measured singles predicted, scored and ranked."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

import pdae_core as pc
from pdae_core.cli import main as cli_main
from pdae_core.data.synthetic import make_synthetic
from pdae_core.eval.interactions import interaction_metrics, mean_changes
from pdae_core.eval.pair_screen import SCORES, pair_metrics, rank_pairs, screen_pairs, screen_singles

SMALL = dict(latent_dim=3, hidden_dims=(16,), noise_dim=2, n_sources=4)


@pytest.fixture(scope="module")
def data():
    a, _ = make_synthetic(n_perturbations=5, latent_dim=3, n_genes=60, hidden=16, n_doubles=4,
                          cells_per_condition=30, seed=4)
    return a


@pytest.fixture(scope="module")
def doubles(data):
    return sorted(c for c in data.obs["condition"].unique() if "+" in c)


@pytest.fixture(scope="module")
def single(data, doubles):
    m = pc.PDAE.from_anndata(data, seed=0, **SMALL)
    m.fit(data, holdout=doubles[:2], max_epochs=3, batch_size=64, accelerator="cpu")
    return m


@pytest.fixture(scope="module")
def ensemble(data, doubles):
    m = pc.PDAE.from_anndata(data, seed=0, n_members=3, **SMALL)
    m.fit(data, holdout=doubles[:2], max_epochs=3, batch_size=64, accelerator="cpu")
    return m


def test_pair_metrics_agree_with_the_interaction_metrics():
    rng = np.random.default_rng(0)
    dA, dB = rng.normal(size=(2, 7, 40))
    dAB = 0.6 * dA + 1.3 * dB + 0.1 * rng.normal(size=(7, 40))
    dA[3] = 2 * dB[3]  # collinear singles: minimum-norm fit
    dB[5] = 0  # one part without effect
    m = pair_metrics(dA, dB, dAB)
    for i in range(7):
        ref = interaction_metrics(dA[i], dB[i], dAB[i], method="lstsq")
        for key in ("c1", "c2", "magnitude", "dominance", "normalised_residual"):
            np.testing.assert_allclose(m[key][i], ref[key], rtol=1e-6, atol=1e-9, err_msg=(i, key))
    np.testing.assert_allclose(m["effect"], np.linalg.norm(dAB, axis=1))
    assert m["c1"].shape == (7,)


def test_screen_covers_every_pair_and_marks_measured_and_held_out(single, data, doubles):
    singles = screen_singles(single)
    assert singles == [f"P{i}" for i in range(1, 6)]
    tab = screen_pairs(single, data, genes="all")
    assert len(tab) == 10 and tab["pair"].is_unique
    assert set(tab["pair"]) == {f"P{i}+P{j}" for i in range(1, 6) for j in range(i + 1, 6)}
    measured = set(tab.loc[tab["measured"], "pair"])
    assert measured == set(doubles)
    assert set(tab.loc[tab["held_out"], "pair"]) == set(doubles[:2])
    assert set(tab.loc[tab["in_training"], "pair"]) == set(doubles[2:])
    assert tab["magnitude_spread"].isna().all() and tab.attrs["n_members"] == 1
    assert list(tab["rank"]) == list(range(1, 11))
    assert tab["test_next"].is_monotonic_decreasing
    # the observed metrics of a measured pair come from its cells; an unmeasured pair has none
    reg = single.registry
    d = mean_changes(data, reg, ["P1", "P2", doubles[0]])
    a, b = doubles[0].split("+")
    d = mean_changes(data, reg, [a, b, doubles[0]]).to_numpy()
    ref = pair_metrics(d[0], d[1], d[2])
    row = tab.set_index("pair").loc[doubles[0]]
    np.testing.assert_allclose(row["observed_magnitude"], ref["magnitude"], rtol=1e-6)
    assert tab.loc[~tab["measured"], "observed_magnitude"].isna().all()


def test_screen_rows_are_the_members_predictions(ensemble, data):
    n_ctrl = int((data.obs["condition"] == "control").sum())
    tab = screen_pairs(ensemble, data, genes="all", seed=3, n_cells=n_ctrl).set_index("pair")
    eye = np.eye(ensemble.registry.n_perturbations, dtype=np.float32)
    src_idx = np.flatnonzero(data.obs["condition"] == "control")
    src = data[src_idx]  # fewer than n_cells: all of them, as the screen does
    ch = ensemble.member_changes_many(src, np.stack([eye[1], eye[3], eye[1] + eye[3]]), seed=3)
    # every single is measured: each network's pair is scored against the observed singles
    assert tab.attrs["single_effects"] == "observed"
    obs = mean_changes(data, ensemble.registry, ["P2", "P4"]).to_numpy()
    ref = pair_metrics(np.broadcast_to(obs[0], ch[:, 0].shape), np.broadcast_to(obs[1], ch[:, 0].shape), ch[:, 2])
    row = tab.loc["P2+P4"]
    np.testing.assert_allclose(row["magnitude"], ref["magnitude"].mean(), rtol=1e-5)
    np.testing.assert_allclose(row["magnitude_spread"], ref["magnitude"].std(ddof=1), rtol=1e-5)
    np.testing.assert_allclose(row["test_next"], row["normalised_residual"] + row["normalised_residual_spread"])
    assert (tab["normalised_residual_spread"] > 0).all()
    # against the networks' own predicted singles (their second difference)
    own = screen_pairs(ensemble, data, genes="all", seed=3, n_cells=n_ctrl, single_effects="model").set_index("pair")
    assert own.attrs["single_effects"] == "model"
    ref = pair_metrics(ch[:, 0], ch[:, 1], ch[:, 2])  # per member
    np.testing.assert_allclose(own.loc["P2+P4", "magnitude"], ref["magnitude"].mean(), rtol=1e-5)
    np.testing.assert_allclose(own.loc["P2+P4", "normalised_residual_spread"], ref["normalised_residual"].std(ddof=1),
                               rtol=1e-5)


def test_single_effects_fall_back_to_the_model_when_a_single_is_not_measured(single, data):
    from pdae_core.eval.pair_screen import pair_interaction, single_effects_mode

    few = data[data.obs["condition"] != "P3"].copy()  # P3 not measured alone in these data
    assert single_effects_mode(single, data, screen_singles(single)) == "observed"
    assert single_effects_mode(single, few, screen_singles(single)) == "model"
    assert screen_pairs(single, few).attrs["single_effects"] == "model"
    with pytest.raises(pc.DataError, match="P3 is not, in these data"):
        screen_pairs(single, few, single_effects="observed")
    with pytest.raises(pc.DataError, match="single_effects must be"):
        screen_pairs(single, data, single_effects="both")
    # one pair: scored as its row of the screen
    tab = screen_pairs(single, data).set_index("pair")
    one = pair_interaction(single, data, "P1", "P2")
    assert one.single_effects == "observed"
    assert one.predicted["normalised_residual"] == pytest.approx(tab.loc["P1+P2", "normalised_residual"], rel=1e-6)
    assert pair_interaction(single, few, "P1", "P3").single_effects == "model"


def test_chunking_and_batching_do_not_change_the_screen(ensemble, data):
    a = screen_pairs(ensemble, data, genes="all", chunk_pairs=256)
    b = screen_pairs(ensemble, data, genes="all", chunk_pairs=1)
    pd.testing.assert_frame_equal(a, b)
    src = data[data.obs["condition"] == "control"]
    labels = np.eye(ensemble.registry.n_perturbations, dtype=np.float32)[[0, 2]]
    big = ensemble.member_changes_many(src, labels, batch_size=8192)
    small = ensemble.member_changes_many(src, labels, batch_size=7)  # cells in chunks, one target at a time
    assert big.shape == (3, 2, data.n_vars)
    # cells in chunks: other noise draws, the same changes up to Monte Carlo noise
    assert np.corrcoef(small.ravel(), big.ravel())[0, 1] > 0.99
    one = ensemble.member_changes_many(src, labels[1:], batch_size=8192)
    np.testing.assert_array_equal(one[:, 0], big[:, 1])  # whatever else is asked for with it


@pytest.mark.parametrize("score", list(SCORES))
def test_every_ranking_score_sorts_its_column(ensemble, data, score):
    tab = rank_pairs(screen_pairs(ensemble, data, genes="all"), score)
    col, desc = SCORES[score]
    vals = tab[col].to_numpy()
    assert np.all(np.diff(vals) <= 1e-12) if desc else np.all(np.diff(vals) >= -1e-12)
    assert tab.attrs["score"] == score and list(tab["rank"]) == list(range(1, len(tab) + 1))


def test_screen_errors(single, data):
    with pytest.raises(pc.DataError, match="Unknown score"):
        rank_pairs(screen_pairs(single, data), "best")
    with pytest.raises(pc.DataError, match="at least two single perturbations"):
        screen_pairs(single, data, singles=["P1"])
    with pytest.raises(pc.DataError, match="not among the model's 60 genes"):
        screen_pairs(single, data, genes=["GATA1"])
    with pytest.raises(pc.DataError, match="No control cells"):
        screen_pairs(single, data[data.obs["condition"] != "control"])
    untrained = pc.PDAE.from_anndata(data, **SMALL)
    with pytest.raises(pc.DataError, match="not trained"):
        screen_pairs(untrained, data)


def test_cli_writes_the_ranked_pairs(ensemble, data, tmp_path, capsys):
    ensemble.save(tmp_path / "ens")
    cells = tmp_path / "cells.h5ad"
    data.write_h5ad(cells)
    out = tmp_path / "pairs.csv"
    assert cli_main(["interactions", str(tmp_path / "ens"), "--data", str(cells), "--out", str(out),
                     "--score", "synergy", "--genes", "all", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "10 pairs of 5 singles" in text and "an ensemble of 3 networks" in text and "Top 3 by synergy" in text
    tab = pd.read_csv(out)
    assert len(tab) == 10 and tab["magnitude"].is_monotonic_decreasing
    assert {"pair", "magnitude_spread", "test_next", "measured", "held_out", "observed_magnitude"} <= set(tab.columns)
    assert cli_main(["interactions", str(tmp_path / "ens"), "--data", str(cells), "--out", str(cells)]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli_main(["interactions", str(tmp_path / "ens"), "--data", str(cells), "--out", str(out),
                     "--genes", "some"]) == 2
    assert "--genes must be" in capsys.readouterr().err


def test_cli_writes_one_pairs_genes(ensemble, data, doubles, tmp_path, capsys):
    from pdae_core.eval.pair_screen import pair_interaction

    ensemble.save(tmp_path / "ens")
    cells = tmp_path / "cells.h5ad"
    data.write_h5ad(cells)
    out = tmp_path / "genes.csv"
    out.write_text("an older file\n")
    a, b = doubles[0].split("+")  # measured and held out
    assert cli_main(["interactions", str(tmp_path / "ens"), "--data", str(cells), "--out", str(out),
                     "--pair", f"{b}+{a}", "--genes", "all", "--top", "4"]) == 0
    text = capsys.readouterr().out
    assert "Observed (held out from training)" in text and "Predicted and observed departures agree" in text
    assert "Top 4 genes by departure" in text and f"Wrote {out}." in text
    tab = pd.read_csv(out)
    want = pair_interaction(ensemble, data, b, a, genes="all").genes_table
    assert list(tab["gene"]) == list(want["gene"]) and len(tab) == data.n_vars
    np.testing.assert_allclose(tab["departure"], want["departure"], rtol=1e-6)
    np.testing.assert_allclose(tab["departure"], tab["predicted_pair"] - tab["sum_of_parts"], atol=1e-9)
    assert {"departure_spread", "kind", "observed_departure"} <= set(tab.columns)
    for bad, msg in ((a, "--pair must name two perturbations joined by '+'"), (f"{a}+NOPE", "two different"),
                     (f"{a}+{b}+{a}", "--pair must name two")):
        out.write_text("kept\n")
        assert cli_main(["interactions", str(tmp_path / "ens"), "--data", str(cells), "--out", str(out),
                         "--pair", bad]) == 2
        assert msg in capsys.readouterr().err and out.read_text() == "kept\n"  # nothing overwritten


@pytest.mark.parametrize("effects", ["observed", "model"])
def test_the_screen_names_the_genes_each_pair_moves_most_from_the_sum(ensemble, data, effects):
    from pdae_core.eval.departure import top_departures
    from pdae_core.eval.pair_screen import pair_interaction

    tab = screen_pairs(ensemble, data, genes="all", single_effects=effects, chunk_pairs=4).set_index("pair")
    for pair in ("P1+P2", "P2+P5"):  # a measured pair and one never measured
        genes = pair_interaction(ensemble, data, *pair.split("+"), genes="all", single_effects=effects).genes_table
        assert tab.loc[pair, "top_departures"] == top_departures(genes["departure"].to_numpy()[None],
                                                                 list(genes["gene"]))[0]
        assert tab.loc[pair, "top_departures"].split(";")[0].split()[0] == genes["gene"].iloc[0]


def test_encoding_once_gives_the_cells_of_transfer(ensemble, data):
    """member_changes_many encodes the source cells once (source_state / transfer_from): the same
    numbers, bit for bit, as moving them with transfer for every target (one generator per member,
    restarted per target)."""
    import torch

    src = data[data.obs["condition"] == "control"]
    labels = np.eye(ensemble.registry.n_perturbations, dtype=np.float32)[[0, 3]]
    got = ensemble.member_changes_many(src, labels, seed=5)
    x, lab = ensemble._tensors(src)
    for k, module in enumerate(ensemble._member_modules()):
        for j, label in enumerate(labels):
            gen = torch.Generator().manual_seed((5 * 1_000_003 + k * 7_919) % 2**63)
            with torch.no_grad():
                moved = module.transfer(x, lab, torch.as_tensor(label).expand(len(x), -1), generator=gen)
            want = moved.double().mean(0) - x.double().mean(0)
            np.testing.assert_allclose(got[k, j], want.numpy(), rtol=1e-12, atol=1e-12)


def test_every_target_moves_the_cells_with_the_same_noise(single, data):
    """Common random numbers: a perturbation whose latent shift is zero changes nothing, so A and
    A plus it give the same change exactly; with noise drawn per target they differed by the decoder
    noise, and the non-additive part of every pair carried that noise."""
    import torch

    model = copy.deepcopy(single)
    with torch.no_grad():
        model.module.W.weight[:, 2] = 0.0  # P3 does nothing
    eye = np.eye(model.registry.n_perturbations, dtype=np.float32)
    src = data[data.obs["condition"] == "control"]
    ch = model.member_changes_many(src, np.stack([eye[0], eye[0] + eye[2], eye[2], 0 * eye[2]]), seed=4)
    np.testing.assert_array_equal(ch[0, 0], ch[0, 1])
    np.testing.assert_array_equal(ch[0, 2], ch[0, 3])  # P3 alone: the cells moved nowhere
    assert not np.array_equal(ch[0, 0], ch[0, 3])
    other = model.member_changes_many(src, eye[[0]], seed=5)
    assert not np.array_equal(other[0, 0], ch[0, 0])  # another seed, other noise


def test_an_ensembles_networks_share_the_moved_cells(ensemble, data):
    from pdae_core.eval.pair_screen import cells_per_network

    assert [cells_per_network(n, m) for n, m in [(512, 1), (512, 2), (512, 5), (100, 5), (1000, 5), (1, 3)]] == [
        512, 256, 128, 100, 200, 1]
    tab = screen_pairs(ensemble, data, genes="all", n_cells=600)  # 3 networks
    assert tab.attrs["n_source_cells"] == 200
    assert screen_pairs(ensemble, data, genes="all", n_cells=200).attrs["n_source_cells"] == 128
