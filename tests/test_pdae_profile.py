"""The profile model type (issue 15 item 3): the PDAE mean form on per-condition profiles or a table
of changes from control trains, saves, loads, predicts and gets the pair screen like the others."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pdae_core as pc
from pdae_core.cli import main as cli_main
from pdae_core.data.synthetic import make_synthetic
from pdae_core.eval.pair_screen import pair_interaction, screen_pairs
from pdae_core.models.catalog import MODEL_TYPES
from pdae_core.models.pdae_profile import PROFILE_TRAIN_DEFAULTS, PDAEProfileModel, with_control_row

SMALL = dict(latent_dim=4, hidden_dims=(16,))


@pytest.fixture(scope="module")
def changes():
    """Synthetic screen as a table of changes from control: one row per perturbed condition, no control row."""
    cells, _ = make_synthetic(n_perturbations=5, latent_dim=3, n_genes=40, hidden=16, n_doubles=6,
                              cells_per_condition=30, seed=5)
    conds = cells.obs["condition"].astype(str)
    means = pd.DataFrame(np.asarray(cells.X), index=conds).groupby(level=0).mean()
    delta = means.drop(index="control") - means.loc["control"]
    out = ad.AnnData(delta.to_numpy(np.float32), obs=pd.DataFrame({"condition": delta.index}, index=delta.index),
                     var=cells.var.copy())
    out.uns["pdae_dataset"] = {"values": "lfc_vs_control", "perturbation_key": "condition", "control_label": "control"}
    return out


def test_registered_with_the_mean_form_defaults():
    assert MODEL_TYPES["pdae_profile"] is PDAEProfileModel
    cfg = PDAEProfileModel.config_class(n_genes=3, n_perturbations=2)
    assert (cfg.noise_dim, cfg.softplus_output, cfg.source_sampling) == (0, False, "batch")
    # the benchmark ensemble's settings (PDAEEnsembleProfile): 150 full-batch steps, latent 256, one hidden layer of 256
    from pdae_core.eval.pseudobulk.interaction_models import PDAEEnsembleProfile

    bench = PDAEEnsembleProfile().member_kw
    assert PROFILE_TRAIN_DEFAULTS["full_batch"] and PROFILE_TRAIN_DEFAULTS["max_epochs"] == bench["steps"] == 150
    assert (cfg.latent_dim, tuple(cfg.hidden_dims)) == (bench["latent_dim"], bench["hidden_dims"]) == (256, (256,))
    assert (PROFILE_TRAIN_DEFAULTS["lr"], PROFILE_TRAIN_DEFAULTS["ema_decay"]) == (bench["lr"], bench["ema_decay"])


def test_with_control_row_adds_a_zero_control_to_change_tables_only(changes):
    full = with_control_row(changes)
    assert full.n_obs == changes.n_obs + 1 and full.obs["condition"].iloc[-1] == "control"
    assert np.all(full.X[-1] == 0) and full.uns["pdae_dataset"]["values"] == "lfc_vs_control"
    assert with_control_row(full) is full  # already has one
    plain = changes.copy()
    plain.uns = {}
    assert with_control_row(plain) is plain  # not tagged as changes: left alone


def test_single_cell_models_refuse_a_change_table(changes):
    data = with_control_row(changes)
    assert pc.setup_anndata(data, "condition", "control").x_kind == "change"
    model = pc.PDAE.from_anndata(data, control_label="control", latent_dim=3)
    with pytest.raises(pc.DataError, match="changes from control.*--level pseudobulk"):
        model.fit(data, max_epochs=1)


def test_trains_saves_loads_predicts_and_screens(changes, tmp_path):
    data = with_control_row(changes)
    model = PDAEProfileModel.from_anndata(data, control_label="control", seed=0, **SMALL)
    held = "P1+P2" if "P1+P2" in set(data.obs["condition"]) else sorted(c for c in data.obs["condition"] if "+" in c)[0]
    model.fit(data, holdout=[held], max_epochs=60, accelerator="cpu")
    assert model.history.steps == 60 and model.train_config.full_batch  # one full batch per step
    assert model.train_config.ema_decay == PROFILE_TRAIN_DEFAULTS["ema_decay"]
    ctrl = data[data.obs["condition"] == "control"]
    change = model.member_changes(ctrl, held)[0]
    pred = model.predict(ctrl, held)
    np.testing.assert_allclose(pred.X[0], change, atol=1e-5)  # the control row is zero: prediction = change
    observed = np.asarray(data[data.obs["condition"] == held].X).ravel()
    assert np.corrcoef(change, observed)[0, 1] > 0.5  # learned something about the held-out double
    model.save(tmp_path / "ckpt")
    back = pc.load_model(tmp_path / "ckpt")
    assert type(back) is PDAEProfileModel and back.registry.x_kind == "change"
    np.testing.assert_array_equal(back.member_changes(ctrl, held), model.member_changes(ctrl, held))
    tab = screen_pairs(back, data)
    assert len(tab) == 10 and tab.attrs["genes"].startswith("all")
    assert set(tab.loc[tab["held_out"], "pair"]) == {held}
    # one row per condition: every measured pair gets its observed metrics (not "fewer than 10 cells")
    measured = tab[tab["measured"]]
    assert len(measured) >= 2 and measured["observed_magnitude"].notna().all()
    row = measured[measured["pair"] == held].iloc[0] if held in set(measured["pair"]) else measured.iloc[0]
    d = {c: np.asarray(data[data.obs["condition"] == c].X, dtype=np.float64).ravel() for c in (row.a, row.b)}
    name = row.pair if row.pair in set(data.obs["condition"]) else f"{row.b}+{row.a}"
    d["ab"] = np.asarray(data[data.obs["condition"] == name].X, dtype=np.float64).ravel()
    s = d[row.a] + d[row.b]
    assert row.observed_normalised_residual == pytest.approx(np.linalg.norm(d["ab"] - s) / np.linalg.norm(s), rel=1e-4)
    one = pair_interaction(back, data, row.a, row.b)
    assert one.observed is not None and one.observed["magnitude"] == pytest.approx(row.observed_magnitude, rel=1e-6)


def test_cli_trains_the_profile_model_and_screens_its_pairs(changes, tmp_path, capsys):
    table = tmp_path / "changes.h5ad"
    changes.write_h5ad(table)
    out = tmp_path / "pb"
    assert cli_main(["train", "--data", str(table), "--out", str(out), "--epochs", "20", "-q"]) == 2
    assert "--level pseudobulk" in capsys.readouterr().err  # a single-cell model refuses changes
    assert cli_main(["train", "--level", "pseudobulk", "--model", "sccvae", "--data", str(table),
                     "--out", str(out), "-q"]) == 2
    assert "trains the pdae_profile model type" in capsys.readouterr().err
    assert cli_main(["train", "--level", "pseudobulk", "--data", str(table), "--out", str(out), "--epochs", "20",
                     "--latent-dim", "4", "--hidden-dims", "16", "-q"]) == 0
    text = capsys.readouterr().out
    assert "added a control row of zeros" in text and "Training pdae_profile" in text
    assert pc.load_model(out).model_type == "pdae_profile"
    pairs = tmp_path / "pairs.csv"
    assert cli_main(["interactions", str(out), "--data", str(table), "--out", str(pairs), "--top", "0"]) == 0
    assert len(pd.read_csv(pairs)) == 10
