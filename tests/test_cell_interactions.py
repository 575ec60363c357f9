"""The interaction benchmark at the cell level (issue 15 item 4): a finished cell-level benchmark
folder rescored by how well each model predicts the interaction of the held-out doubles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pdae_core.data.registry import setup_anndata
from pdae_core.data.synthetic import make_synthetic
from pdae_core.errors import PDAEError
from pdae_core.eval.benchmark import BenchmarkSpec, run_benchmark
from pdae_core.eval.benchmark.interactions import (
    METRIC_BASELINES,
    PROFILE_BASELINES,
    benchmark_interactions,
    cell_interaction_rows,
    metric_baseline_rows,
)
from pdae_core.eval.interactions import mean_changes
from pdae_core.eval.pseudobulk.interaction_scores import summarise_interactions


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    adata, _ = make_synthetic(n_perturbations=5, latent_dim=3, n_genes=30, hidden=16, n_doubles=8,
                              cells_per_condition=40, seed=2)
    path = tmp_path_factory.mktemp("cells") / "synth.h5ad"
    adata.write_h5ad(path)
    reg = setup_anndata(adata, "condition", "control")
    spec = BenchmarkSpec(dataset=str(path), models=["additive", "linear", "control"], seeds=[0, 1],
                         test_fraction=0.5, n_boot=5, accelerator="cpu")
    out = path.parent / "bench"
    run_benchmark(adata, reg, spec, out)
    return adata, reg, out


def test_rows_score_every_held_out_double_of_every_run(finished):
    adata, reg, out = finished
    rows = cell_interaction_rows(out, adata, reg, ["additive", "linear", "control"], [0, 1])
    per_model = rows.groupby("model")["double"].nunique()
    assert per_model.nunique() == 1 and per_model.iloc[0] >= 4  # 8 doubles, half held out per seed
    assert set(rows["fold"]) == {0, 1} and (rows["seed"] == 0).all()
    # the observed figures are the same for every model; they come from the cells
    obs = rows.pivot_table(index="double", columns="model", values="magnitude_obs")
    np.testing.assert_allclose(obs.to_numpy() - obs.to_numpy()[:, :1], 0, atol=1e-12)
    double = rows["double"].iloc[0].split(" (seed")[0]
    assert rows["n_cells"].iloc[0] == int((adata.obs["condition"] == double).sum())  # the double's observed cells
    a, b = reg.parse(double)
    d = mean_changes(adata, reg, [a, b, double]).to_numpy()
    coef, *_ = np.linalg.lstsq(np.stack([d[0], d[1]], 1), d[2], rcond=None)
    np.testing.assert_allclose(rows["magnitude_obs"].iloc[0], np.hypot(*coef), rtol=1e-6)
    # "no change" predicts a zero change: its non-additive part is -(dA + dB), the residual 1
    ctrl = rows[rows.model == "control"]
    np.testing.assert_allclose(ctrl["residual_pred"], 1.0, atol=0.05)
    summary = summarise_interactions(rows, n_boot=50, top=3, random_draws=20).set_index("model")
    assert {"additive", "linear", "control", "random"} <= set(summary.index)


def test_benchmark_folder_is_rescored_with_its_own_data(finished, tmp_path):
    adata, reg, out = finished
    rows = benchmark_interactions(out)
    direct = cell_interaction_rows(out, adata, reg, ["additive", "linear", "control"], [0, 1])
    base = rows["model"].isin(METRIC_BASELINES + PROFILE_BASELINES)
    pd.testing.assert_frame_equal(rows[~base].reset_index(drop=True)[direct.columns], direct.reset_index(drop=True))
    # the metric regressions are scored on the same (seed, held-out double) pairs
    for m in METRIC_BASELINES:  # (4 training doubles a seed: too few for the profile baseline)
        assert sorted(rows.loc[rows.model == m, "double"]) == sorted(direct.loc[direct.model == "linear", "double"])
    assert benchmark_interactions(out, metric_baselines=False)["model"].isin(METRIC_BASELINES + PROFILE_BASELINES
                                                                             ).sum() == 0
    with pytest.raises(PDAEError, match="missing"):
        cell_interaction_rows(out, adata, reg, ["pool"], [0])
    with pytest.raises(PDAEError, match="not a finished benchmark folder"):
        benchmark_interactions(tmp_path)


def test_metric_baselines_learn_from_the_training_doubles_only(finished):
    """The heuristic, propensity and pair-kernel regressions at the cell level: fitted to the doubles
    that are not held out, so the held-out doubles' cells change their observed figures and nothing else,
    while a training double's cells change the predictions."""
    adata, reg, _ = finished
    doubles = sorted(c for c in adata.obs["condition"].unique() if "+" in c)
    held = {0: doubles[:2]}
    rows = metric_baseline_rows(adata, reg, held)
    models = METRIC_BASELINES + PROFILE_BASELINES  # 6 training doubles: enough for the profile baseline
    assert sorted(rows["model"].unique()) == sorted(models) and len(rows) == 2 * len(models)
    assert (rows["train_doubles"] == len(doubles) - 2).all()
    assert rows.loc[rows.model.isin(METRIC_BASELINES), "nonadditive_pearson"].isna().all()
    prof = rows[rows.model == "pair_kernel_profile"]
    assert prof["nonadditive_pearson"].between(-1, 1).all() and (prof["error_l2"] > 0).all()
    # its figures are those of its profile: the predicted change of the double against the observed singles
    from pdae_core.eval.pseudobulk import profiles_from_anndata
    from pdae_core.eval.pseudobulk.interaction_scores import double_figures
    from pdae_core.eval.pseudobulk.kernel_model import PairKernelProfile

    names = [c for c in sorted(adata.obs["condition"].unique()) if c != "control"]
    deltas = mean_changes(adata, reg, names).to_numpy(np.float64)
    import anndata as ad

    P = profiles_from_anndata(ad.AnnData(deltas, obs=pd.DataFrame({"condition": names}, index=names),
                                         var=pd.DataFrame(index=list(reg.gene_names))), values="deltas")
    model = PairKernelProfile().fit(P.subset([c for c in names if c not in doubles[:2]]))
    a, b, ab = (deltas[names.index(c)] for c in (*reg.parse(doubles[0]), doubles[0]))
    fig = double_figures(a, b, model.predict(P.subset([doubles[0]]).labels)[0], "lstsq", obs=ab)
    got = prof.set_index("double").loc[f"{doubles[0]} (seed 0)"]
    assert got["nonadditive_pearson"] == pytest.approx(fig["nonadditive_pearson"])
    assert got["magnitude_pred"] == pytest.approx(fig["magnitude"])
    # with fewer than 5 training doubles there is no profile baseline
    assert "pair_kernel_profile" not in set(metric_baseline_rows(adata, reg, {0: doubles[:4]})["model"])
    d = mean_changes(adata, reg, [*reg.parse(doubles[0]), doubles[0]]).to_numpy()
    coef, *_ = np.linalg.lstsq(d[:2].T, d[2], rcond=None)
    np.testing.assert_allclose(rows.loc[rows.double == f"{doubles[0]} (seed 0)", "magnitude_obs"], np.hypot(*coef))

    def scaled(condition):
        other = adata.copy()
        cells = (other.obs["condition"] == condition).to_numpy()
        other.X = np.asarray(other.X, dtype=np.float64)
        other.X[cells] = other.X[cells] * 1.5 + 0.3
        return metric_baseline_rows(other, reg, held)

    moved = scaled(doubles[0])  # a held-out double: its observed figures move, no prediction does
    np.testing.assert_allclose(moved["magnitude_pred"], rows["magnitude_pred"])
    np.testing.assert_allclose(moved["residual_pred"], rows["residual_pred"])
    assert not np.allclose(moved["residual_obs"], rows["residual_obs"])
    taught = scaled(doubles[-1])  # a training double teaches the regressions
    assert not np.allclose(taught["residual_pred"], rows["residual_pred"])


def test_a_cross_fitted_ensemble_has_its_intervals_checked_on_the_held_out_doubles(tmp_path):
    from pdae_core.eval.pseudobulk.interaction_scores import uncertainty_summary

    adata, _ = make_synthetic(n_perturbations=6, latent_dim=3, n_genes=20, hidden=16, n_doubles=12,
                              cells_per_condition=30, seed=5)
    path = tmp_path / "synth.h5ad"
    adata.write_h5ad(path)
    reg = setup_anndata(adata, "condition", "control")
    small = dict(n_members=2, latent_dim=3, hidden_dims=[16], noise_dim=2, n_sources=4)
    spec = BenchmarkSpec(dataset=str(path), models=["pdae_ensemble", "additive"], seeds=[0], test_fraction=0.3,
                         n_boot=5, accelerator="cpu", model_options={"pdae_ensemble": small},
                         train={"max_epochs": 1})
    out = tmp_path / "bench"
    run_benchmark(adata, reg, spec, out)
    files = sorted(p.name for p in (out / "runs").glob("*.intervals.csv"))
    assert files == ["pdae_ensemble__seed0.intervals.csv"]  # only the calibrated model has intervals
    checked = pd.read_csv(out / "runs" / files[0])
    rows = benchmark_interactions(out)
    ens = rows[rows.model == "pdae_ensemble"].set_index("double")
    assert len(checked) == len(ens) >= 3 and rows.loc[rows.model == "additive", "spread"].isna().all()
    first = checked.iloc[0]
    got = ens.loc[f"{first['double']} (seed 0)"]
    assert got["coverage_80"] == first["gene_coverage_80"] and got["spread"] == first["spread"]
    assert got["coverage_residual_80"] == float(first["normalised_residual_covered_80"])
    # the intervals at each double's own number of cells are read apart from the plain ones
    assert got["coverage_cells_80"] == first["cells_gene_coverage_80"]
    assert got["coverage_cells_residual_80"] == float(first["cells_normalised_residual_covered_80"])
    assert got["width_cells_residual_80"] == first["cells_normalised_residual_half_width_80"]
    assert set(ens["single_effects"]) == {"observed"}  # the calibration's scoring, which the report names
    figures = set(uncertainty_summary(rows, "pdae_ensemble")["figure"])
    assert {"spread_error_spearman", "coverage_80", "coverage_95", "coverage_residual_80", "coverage_cells_80",
            "coverage_cells_magnitude_80", "coverage_cells_residual_95"} <= figures


def test_the_spread_is_also_scored_with_the_observed_cell_counts_taken_out():
    """At the cell level most of a held-out double's error is the noise of its observed mean (few
    cells); the spread cannot know it. The figure given the cell counts finds a spread that tracks
    the rest of the error, which the plain Spearman hides."""
    from pdae_core.eval.pseudobulk.interaction_scores import uncertainty_summary

    rng = np.random.default_rng(0)
    n = 80
    cells = rng.integers(4, 40, n).astype(float)
    spread = rng.uniform(0.05, 0.08, n)
    err = np.exp(3 * (spread - 0.065) / 0.015 * 0.1 + rng.normal(0, 0.05, n)) / np.sqrt(cells)
    rows = pd.DataFrame({"model": "pdae_ensemble", "seed": 0, "fold": 0, "double": [f"d{i}" for i in range(n)],
                         "spread": spread, "error_l2": err, "n_cells": cells, "pred_norm": 1.0, "obs_norm": 1.0})
    fig = uncertainty_summary(rows, n_boot=50).set_index("figure")["value"]
    assert fig["error_cells_spearman"] < -0.6
    assert fig["spread_error_spearman_given_cells"] > 0.9 > fig["spread_error_spearman"] + 0.25
    assert fig["spread_cv"] == pytest.approx(spread.std() / spread.mean())
    no_cells = uncertainty_summary(rows.drop(columns="n_cells"), n_boot=50)  # the pseudobulk track has none
    assert not {"error_cells_spearman", "spread_cv"} & set(no_cells["figure"])
