"""Contexts (cell types / lines): hold-out of (perturbation, context) pairs, PDAE with a
context shift, identity preservation, the verdict naming the context, the context benchmark."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pdae_core import cli
from pdae_core.data.contexts import HoldoutItem, context_onehot, group_keys, parse_holdout, training_mask
from pdae_core.data.registry import setup_anndata
from pdae_core.errors import DataError
from pdae_core.eval.benchmark.context import (
    baseline_shifts,
    context_folds,
    run_context_benchmark,
    summarise_context,
)
from pdae_core.eval.metrics import energy_distance
from pdae_core.explore import verdict_in_words, what_if
from pdae_core.identity import context_warning, identity_check
from pdae_core.models.baselines import AdditiveBaseline, PoolBaseline
from pdae_core.models.pdae import PDAE
from pdae_core.models.samsvae import SAMSVAE

CONTEXTS = ("A172", "CD14+Mono", "T98G")
FAST = {"max_steps": 400, "progress_bar": False, "val_fraction": 0.1, "seed": 0, "accelerator": "cpu"}


def context_data(n: int = 50, genes: int = 12, seed: int = 0) -> ad.AnnData:
    """Three contexts with very different baselines; 'stim' adds the same change in each, 'KO' another."""
    rng = np.random.default_rng(seed)
    base = {c: rng.uniform(0.5, 3.0, genes) for c in CONTEXTS}
    effect = {"control": np.zeros(genes), "stim": np.r_[np.full(3, 1.5), np.zeros(genes - 3)],
              "KO": np.r_[np.zeros(genes - 3), np.full(3, -0.4)]}
    X, conds, ctx = [], [], []
    for c in CONTEXTS:
        for cond, eff in effect.items():
            X.append(np.clip(base[c] + eff + rng.normal(0, 0.15, (n, genes)), 0, None))
            conds += [cond] * n
            ctx += [c] * n
    a = ad.AnnData(np.vstack(X).astype(np.float32), obs=pd.DataFrame({"condition": conds, "cell_type": ctx}))
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    a.var_names = [f"g{i}" for i in range(genes)]
    return a


@pytest.fixture(scope="module")
def data():
    a = context_data()
    return a, setup_anndata(a, "condition", "control", covariate_key="cell_type")


@pytest.fixture(scope="module")
def trained(data):
    a, reg = data
    model = PDAE(reg, seed=0)
    model.fit(a, holdout=["stim@CD14+Mono"], **FAST)
    return model


def test_parse_holdout_pairs_conditions_and_plus_in_context_names(data):
    a, reg = data
    assert parse_holdout(["stim@CD14+Mono"], a, reg) == [HoldoutItem("stim", "CD14+Mono")]
    assert parse_holdout([("stim", "T98G")], a, reg) == [HoldoutItem("stim", "T98G")]
    assert parse_holdout("KO", a, reg) == [HoldoutItem("KO")]
    assert reg.perturbations == ["KO", "stim"]  # context names are never parsed as combinations
    with pytest.raises(DataError, match="have zero cells"):
        parse_holdout(["stim@U87MG"], a, reg)
    with pytest.raises(DataError, match="Context 'U87MG' has no cells"):
        parse_holdout([("stim", "U87MG")], a, reg)
    keep, names = training_mask(a, reg, ["stim@CD14+Mono"])
    assert names == ["stim@CD14+Mono"]
    gone = a.obs[~keep]
    assert set(gone["condition"]) == {"stim"} and set(gone["cell_type"]) == {"CD14+Mono"} and len(gone) == 50
    no_ctx = setup_anndata(a, "condition", "control")
    with pytest.raises(DataError, match="no context column is set"):
        parse_holdout([("stim", "T98G")], a, no_ctx)


def test_group_keys_and_onehot(data):
    a, reg = data
    keys = group_keys(a, reg)
    assert len(set(keys)) == 9
    oh = context_onehot(a, "cell_type", sorted(CONTEXTS), drop_reference=True)
    assert oh.shape == (a.n_obs, 2) and oh[a.obs.cell_type.to_numpy() == "A172"].sum() == 0
    with pytest.raises(DataError, match="not among the 2 contexts"):
        context_onehot(a, "cell_type", ["A172", "T98G"])


def test_pdae_learns_a_shift_per_context_and_keeps_the_source_context(data, trained):
    a, reg = data
    model = trained
    assert model.config.context_categories == sorted(CONTEXTS)
    assert model.module.W.weight.shape[1] == reg.n_perturbations + 2
    assert ["stim", "CD14+Mono"] not in model.train_pairs and ["stim", "T98G"] in model.train_pairs
    assert list(model.context_embedding().index) == sorted(CONTEXTS)
    src = a[(a.obs.condition == "control").to_numpy() & (a.obs.cell_type == "CD14+Mono").to_numpy()]
    pred = model.predict(src, "stim")
    assert set(pred.obs["cell_type"]) == {"CD14+Mono"}
    obs = a[(a.obs.condition == "stim").to_numpy() & (a.obs.cell_type == "CD14+Mono").to_numpy()].X
    others = a[(a.obs.condition == "stim").to_numpy() & (a.obs.cell_type != "CD14+Mono").to_numpy()].X
    # the held-out pair is predicted in its own context, not as the mixture of the other contexts' cells
    assert energy_distance(pred.X, obs) < 0.5 * energy_distance(pred.X, others)
    check = pred.uns["pdae_prediction"]["extrapolation"]
    assert check["measured_in_context"] is False and check["in_span"] is True
    assert "never in CD14+Mono" in check["context_note"] and check["context_level"] == "success"


def test_identity_predicting_the_source_condition_returns_cells_like_the_sources(data, trained):
    a, _ = data
    is_ctrl = (a.obs.condition == "control").to_numpy()
    for c in CONTEXTS:
        src = a[is_ctrl & (a.obs.cell_type == c).to_numpy()]
        pred = trained.predict(src, "control").X
        other = a[is_ctrl & (a.obs.cell_type != c).to_numpy()].X
        assert energy_distance(pred, src.X) < 0.25 * energy_distance(pred, other), c


def test_verdict_names_the_context(data, trained):
    a, reg = data
    res = what_if(trained, a, {"stim": 1.0}, source_context="CD14+Mono")
    assert res.observed is not None and res.observed.n_obs == 50  # the held-out pair's own cells
    v = verdict_in_words(res.check, {"stim": 1.0}, ["stim", "KO"], held_out=True)
    assert v.headline.startswith("stim was measured in training (in A172 and T98G), but never in CD14+Mono")
    assert v.level == "success"
    res2 = what_if(trained, a, {"stim": 1.0}, source_context="T98G")
    assert res2.check.measured_in_training and res2.check.measured_in_context
    assert context_warning(trained, reg) is None


def test_a_model_that_ignores_the_context_says_so(data):
    a, reg = data
    model = SAMSVAE(reg, seed=0)
    with pytest.warns(UserWarning, match="does not use the context column 'cell_type'"):
        model.fit(a, holdout=["stim@CD14+Mono"], max_steps=3, progress_bar=False, accelerator="cpu")
    check = model.extrapolation_check("stim", context="CD14+Mono")
    assert check.context_level == "warning" and "does not use the 'cell_type' column" in check.context_note
    assert "not tied to their source" in context_warning(model, reg)


def test_checkpoint_keeps_contexts_and_pairs(data, trained, tmp_path):
    a, _ = data
    trained.save(tmp_path / "ck")
    back = PDAE.load(tmp_path / "ck")
    assert back.config.context_categories == trained.config.context_categories
    assert back.train_pairs == trained.train_pairs
    src = a[(a.obs.condition == "control").to_numpy() & (a.obs.cell_type == "T98G").to_numpy()]
    np.testing.assert_allclose(back.predict(src, "stim", seed=3).X, trained.predict(src, "stim", seed=3).X, atol=1e-5)


def test_decoder_context_option_trains_and_predicts(data):
    a, reg = data
    model = PDAE(reg, seed=0, decoder_context=True)
    model.fit(a, holdout=["stim@T98G"], max_steps=5, progress_bar=False, accelerator="cpu")
    assert model.module.decoder_context_dim == 2
    src = a[(a.obs.condition == "control").to_numpy() & (a.obs.cell_type == "T98G").to_numpy()]
    assert model.predict(src, "stim").n_obs == src.n_obs


def test_context_baselines_and_benchmark(data):
    a, reg = data
    folds = context_folds(a, reg)
    assert [f for f, _ in folds] == sorted(CONTEXTS) and len(folds[0][1]) == 2
    items = [HoldoutItem("stim", "T98G")]
    keep, _ = training_mask(a, reg, [("stim", "T98G")])
    shifts = baseline_shifts(a, reg, keep, items)
    true = np.r_[np.full(3, 1.5), np.zeros(9)]
    assert np.abs(shifts["context_shift"]["stim@T98G"] - true).max() < 0.1
    assert np.abs(shifts["linear"]["stim@T98G"] - true).max() < 0.15
    rows = run_context_benchmark(a, reg, models=(), seeds=(0,), folds="pair", contexts=["T98G"], n_boot=0)
    s = summarise_context(rows).set_index("model")
    assert s.loc["context_shift", "energy_distance"] < s.loc["no_change", "energy_distance"]
    assert set(rows.loc[rows.condition == "identity", "model"]) == {"noise_floor"}


def test_cli_train_and_benchmark_with_a_context_pair(tmp_path):
    a = context_data(n=30)
    path = tmp_path / "cells.h5ad"
    a.write_h5ad(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = cli.main(["train", "--data", str(path), "--covariate-key", "cell_type", "--holdout", "stim@CD14+Mono",
                       "--out", str(tmp_path / "ck"), "--max-steps", "3", "-q", "--accelerator", "cpu"])
    assert rc == 0
    back = PDAE.load(tmp_path / "ck")
    assert back.holdout == ["stim@CD14+Mono"] and ["stim", "CD14+Mono"] not in back.train_pairs
    rc = cli.main(["benchmark", "--data", str(path), "--task", "context", "--covariate-key", "cell_type",
                   "--models", "pdae", "--seeds", "1", "--contexts", "T98G", "--epochs", "1", "--n-boot", "0",
                   "--out", str(tmp_path / "bench"), "-q", "--accelerator", "cpu"])
    assert rc == 0
    text = (tmp_path / "bench" / "summary.md").read_text()
    assert "| pdae |" in text and "| context_shift |" in text and "identity" in text


def test_a_perturbation_name_containing_the_separator(tmp_path):
    a = context_data(n=10)
    a.obs["condition"] = a.obs["condition"].replace({"stim": "IFNB+TNF"})
    a.obs.loc[a.obs_names[-10:], "condition"] = "IFNB+TNF+KO"
    plain = setup_anndata(a, "condition", "control", covariate_key="cell_type")
    assert plain.perturbations == ["IFNB", "KO", "TNF"]  # without being told, '+' joins perturbations
    reg = setup_anndata(a, "condition", "control", covariate_key="cell_type", atomic_labels=["IFNB+TNF"])
    assert reg.perturbations == ["IFNB+TNF", "KO"]
    assert reg.parse("IFNB+TNF+KO") == ["IFNB+TNF", "KO"] and reg.parse("KO+IFNB+TNF") == ["KO", "IFNB+TNF"]
    np.testing.assert_array_equal(reg.label_vector("IFNB+TNF+KO"), [1, 1])
    assert reg.condition_name(np.array([1.0, 0.0])) == "IFNB+TNF"
    path = tmp_path / "cells.h5ad"
    a.write_h5ad(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = cli.main(["train", "--data", str(path), "--atomic-label", "IFNB+TNF", "--holdout", "IFNB+TNF+KO",
                       "--out", str(tmp_path / "ck"), "--max-steps", "3", "-q", "--accelerator", "cpu"])
    assert rc == 0
    back = PDAE.load(tmp_path / "ck")
    assert back.registry.perturbations == ["IFNB+TNF", "KO"] and back.holdout == ["IFNB+TNF+KO"]
    assert back.extrapolation_check("IFNB+TNF+KO").in_span


def test_a_tuple_of_two_conditions_is_two_conditions_not_a_pair(data):
    a, reg = data
    assert parse_holdout(("stim", "KO"), a, reg) == [HoldoutItem("stim"), HoldoutItem("KO")]
    assert parse_holdout(("stim", "T98G"), a, reg) == [HoldoutItem("stim", "T98G")]


def test_identity_check_tells_a_context_model_from_one_that_ignores_it(data, trained):
    a, reg = data
    kept = identity_check(trained, a, "T98G")
    assert kept.preserved and kept.distance < 0.25 * kept.distance_other
    assert "keep their cell type" in kept.in_words("cell_type")
    blind = PoolBaseline().fit(a, reg)  # cells of the target condition drawn from every context
    lost = identity_check(blind, a, "T98G")
    assert not lost.preserved and "does not keep the cell type" in lost.in_words("cell_type")


def test_cli_predict_from_one_context_names_it(data, trained, tmp_path, capsys):
    a, _ = data
    trained.save(tmp_path / "ck")
    path = tmp_path / "cells.h5ad"
    a.write_h5ad(path)
    rc = cli.main(["predict", str(tmp_path / "ck"), "--data", str(path), "--target", "stim",
                   "--source-context", "CD14+Mono", "--out", str(tmp_path / "pred.h5ad")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "stim: 50 cells from 50 'control' cells" in out and "never in CD14+Mono" in out
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert set(pred.obs["cell_type"]) == {"CD14+Mono"}
    rc = cli.main(["predict", str(tmp_path / "ck"), "--data", str(path), "--target", "stim",
                   "--source-context", "U87MG", "--out", str(tmp_path / "pred2.h5ad")])
    assert rc == 2 and "No 'control' cells in context 'U87MG'" in capsys.readouterr().err


def test_baselines_say_they_ignore_the_context(data):
    a, reg = data
    with pytest.warns(UserWarning, match="The additive baseline does not use the context column 'cell_type'"):
        AdditiveBaseline().fit(a, reg)
