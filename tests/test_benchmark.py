"""The benchmark runner (pdae_core.eval.benchmark) and its figures (pdae_core.plot.benchmark)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from pdae_core import PDAEError, setup_anndata
from pdae_core.data.defaults import DATASET_KEY
from pdae_core.data.splits import seen_count
from pdae_core.data.synthetic import make_synthetic
from pdae_core.errors import DataError
from pdae_core.eval import benchmark as bm
from pdae_core.eval.benchmark import BenchmarkSpec, benchmark_dataset, read_results, run_benchmark
from pdae_core.eval.benchmark import run as bm_run
from pdae_core.models.catalog import MODEL_TYPES
from pdae_core.plot.benchmark import condition_bars, delta_scatter, summary_bars

NOISE = "noise floor"
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
TINY_PDAE = {"max_epochs": 1, "max_steps": 3}


@pytest.fixture(scope="module")
def synth():
    adata, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=30, hidden=16, n_doubles=4,
                              cells_per_condition=40, seed=1)
    return adata, setup_anndata(adata, "condition", "control")


def _spec(**kw) -> BenchmarkSpec:
    base = {"dataset": "synthetic", "models": ["additive", "control"], "seeds": [0, 1], "test_fraction": 0.5,
            "n_boot": 10, "accelerator": "cpu"}
    return BenchmarkSpec(**{**base, **kw})


@pytest.fixture()
def fits(monkeypatch):
    """Wrap every builder the runner gets (baselines and catalogue model types alike):
    records (model, seed, holdout, training conditions) of each fit."""
    log: list[tuple[str, int, list[str], list[str]]] = []
    get_builder = bm.get_builder

    def counting(name):
        build = get_builder(name)

        def counted(req):
            model = build(req)
            log.append((name, req.seed, list(req.holdout), list(model.train_conditions)))
            return model

        return counted

    monkeypatch.setattr(bm_run, "get_builder", counting)
    return log


def test_tidy_table_one_row_per_model_seed_condition(synth, tmp_path, fits):
    adata, reg = synth
    events = []
    spec = _spec(models=["pdae", "additive", "control"], train=TINY_PDAE)
    df = run_benchmark(adata, reg, spec, tmp_path, progress=events.append)
    record = json.loads((tmp_path / "spec.json").read_text())
    splits = {s["seed"]: s for s in record["splits"]}
    assert sorted(splits) == [0, 1]
    n_expected = sum(len(s["test"]) for s in splits.values()) * (len(spec.models) + 1)
    assert len(df) == n_expected
    assert not df.duplicated(["model", "seed", "condition"]).any()
    for seed, s in splits.items():
        assert len(s["test"]) == 2 and all("+" in c for c in s["test"])  # half of the 4 doubles
        rows = df[df.seed == seed]
        for model in [*spec.models, NOISE]:
            assert sorted(rows[rows.model == model].condition) == sorted(s["test"])
        for c in s["test"]:
            tags = set(rows[rows.condition == c].seen)
            assert tags == {seen_count(c, reg, s["train"])} == {s["seen"][c]}
    # a held-out condition is never a training condition of the model scored on it
    assert len(fits) == len(spec.models) * 2
    for _model, seed, holdout, train in fits:
        assert sorted(holdout) == sorted(splits[seed]["test"])
        assert not set(holdout) & set(train)
    # the written table is the returned one; metrics are filled in
    written = pd.read_csv(tmp_path / "per_condition.csv")
    assert list(written.columns) == list(bm.COLUMNS) and len(written) == len(df)
    assert df["energy_distance"].notna().all() and (df["error"] == "").all()
    assert (df[df.model != NOISE]["n_pred"] == 40).all()  # every control cell is a source
    # progress: structured events, PDAE epochs included
    stages = [e["stage"] for e in events]
    assert {"fit", "epoch", "pair_done", "done"} <= set(stages)
    assert events[-1]["done"] == events[-1]["total"] == 2 * (len(spec.models) + 1)
    for name in ("summary.md", "summary.csv", "figures/condition_bars_energy_distance.html"):
        assert (tmp_path / name).is_file()
    assert list(tmp_path.glob("figures/delta_scatter_*.html"))


def test_metrics_tell_good_from_bad_on_synthetic(synth, tmp_path):
    adata, reg = synth
    doubles = sorted(c for c in adata.obs.condition.unique() if "+" in c)
    spec = _spec(models=["additive", "control"], seeds=[0], holdout=doubles, n_boot=50)
    df = run_benchmark(adata, reg, spec, tmp_path).set_index(["model", "condition"])
    for c in doubles:
        noise, ctrl, add = (df.loc[(m, c)] for m in (NOISE, "control", "additive"))
        assert ctrl.energy_distance_lo > noise.energy_distance + 0.5  # "no change" is far from the truth
        assert add.energy_distance < ctrl.energy_distance  # additive is closer
        assert add.pearson_delta > 0.5 and np.isnan(ctrl.pearson_delta)
        assert abs(noise.noise_floor) < 0.5
    summary = pd.read_csv(tmp_path / "summary.csv")
    ed = summary[(summary.view == "seeds") & (summary.metric == "energy_distance") & (summary.section == "all")]
    ed = ed.set_index("model")["value"]
    assert ed[NOISE] < ed["additive"] < ed["control"]


def test_resume_reuses_finished_pairs(synth, tmp_path, fits):
    adata, reg = synth
    spec = _spec()
    first = run_benchmark(adata, reg, spec, tmp_path)
    csv1 = (tmp_path / "per_condition.csv").read_bytes()
    md1 = (tmp_path / "summary.md").read_bytes()
    assert len(fits) == 4
    events = []
    second = run_benchmark(adata, reg, spec, tmp_path, progress=events.append)
    assert len(fits) == 4  # nothing refitted
    assert sum(e["stage"] == "reuse" for e in events) == 6  # 2 models + noise floor, 2 seeds
    assert (tmp_path / "per_condition.csv").read_bytes() == csv1
    assert (tmp_path / "summary.md").read_bytes() == md1
    pd.testing.assert_frame_equal(first, second)
    # adding a model fits only that model; a lost run file is redone
    (tmp_path / "runs" / "control__seed1.csv").unlink()
    run_benchmark(adata, reg, _spec(models=["additive", "control", "linear"]), tmp_path)
    assert sorted((m, s) for m, s, _, _ in fits[4:]) == [("control", 1), ("linear", 0), ("linear", 1)]


def test_changed_spec_in_same_out_dir_raises(synth, tmp_path, fits):
    adata, reg = synth
    run_benchmark(adata, reg, _spec(), tmp_path)
    with pytest.raises(PDAEError, match="different spec.*n_boot"):
        run_benchmark(adata, reg, _spec(n_boot=20), tmp_path)
    with pytest.raises(PDAEError, match="different spec.*data"):
        run_benchmark(adata[5:].copy(), reg, _spec(), tmp_path)
    n = len(fits)
    run_benchmark(adata, reg, _spec(n_boot=20), tmp_path, overwrite=True)
    assert len(fits) == n + 4  # every pair redone under the new spec


def test_same_seeds_give_byte_identical_summaries(synth, tmp_path):
    adata, reg = synth
    spec = _spec(models=["additive", "linear", "pool"])
    a = run_benchmark(adata, reg, spec, tmp_path / "a")
    b = run_benchmark(adata, reg, spec, tmp_path / "b")
    for name in ("summary.md", "summary.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    timing = ["fit_seconds", "score_seconds"]
    pd.testing.assert_frame_equal(a.drop(columns=timing), b.drop(columns=timing))
    md = (tmp_path / "a" / "summary.md").read_text()
    assert "| noise floor |" in md and "+-" in md and "[" in md  # both views, noise floor row
    assert re.findall(r"\d\.\d+", md) and not re.findall(r"\d\.\d{4}", md)  # rounded to 3 decimals


def test_counts_are_preprocessed_and_only_testable_doubles_are_held_out(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {"control": 60, "A": 30, "B": 30, "C": 30, "A+B": 12, "A+C": 12, "B+C": 2, "A+B+C": 5, "unassigned": 7}
    conds = np.concatenate([[c] * n for c, n in sizes.items()])
    X = rng.poisson(3.0, size=(len(conds), 20)).astype(np.float32)
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"perturbation": conds}, index=[f"c{i}" for i in range(len(conds))]),
                       var=pd.DataFrame(index=[f"g{i}" for i in range(20)]))
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    spec = BenchmarkSpec(models=["control", "additive"], seeds=[0, 1, 2], test_fraction=0.5, n_boot=5,
                         exclude=["unassigned"], perturbation_key="perturbation", accelerator="cpu")
    df = benchmark_dataset(str(path), spec, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "spec.json").read_text())
    assert record["data"]["preprocessing"]["log1p"] is True
    assert "highly_variable_genes" not in record["data"]["preprocessing"]  # 20 genes: no HVG selection
    assert record["data"]["excluded"] == {"unassigned": 7}
    assert record["spec"]["dataset"] == str(path)
    assert set(df.condition) <= {"A+B", "A+C"}  # B+C has 2 cells (< min_test_cells), A+B+C is a triple
    for s in record["splits"]:
        assert "A+B+C" in s["train"] and "B+C" in s["train"] and "unassigned" not in s["train"]


def test_figures_return_plotly_figures(synth, tmp_path):
    adata, reg = synth
    df = run_benchmark(adata, reg, _spec(models=["additive", "linear", "control"]), tmp_path)
    fig = condition_bars(df, "energy_distance")
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["additive", "linear", "control", NOISE]
    assert all(t.type == "bar" for t in fig.data)
    assert set(fig.data[0].x) == set(df.condition)
    summary = pd.read_csv(tmp_path / "summary.csv")
    for view in ("seeds", "pooled"):
        assert len(summary_bars(summary, "pearson_delta", view=view).data) == 4
    genes = reg.gene_names
    obs = np.linspace(-1, 1, len(genes))
    fig = delta_scatter({"a": obs * 0.9, "b": obs * 0.1}, obs, genes, title="t", highlight=genes[:3])
    assert [t.name for t in fig.data] == ["a", "b", "y = x"]
    assert [a.text for a in fig.layout.annotations] == genes[:3]
    assert len(delta_scatter(obs, obs, genes, n_labels=5).layout.annotations) == 5
    with pytest.raises(ValueError, match="Lengths differ"):
        delta_scatter(obs[:3], obs, genes)


def test_bad_model_name_lists_valid_ones(synth, tmp_path):
    adata, reg = synth
    with pytest.raises(PDAEError, match="valid models: .*additive.*control.*linear.*pdae.*pool"):
        run_benchmark(adata, reg, _spec(models=["additive", "gears"]), tmp_path)
    assert not (tmp_path / "spec.json").exists()
    with pytest.raises(PDAEError, match="noise floor"):
        _spec(models=["noise floor"])
    with pytest.raises(PDAEError, match="reserved"):
        _spec(train={"seed": 3})
    spec = _spec(models=["pdae", "pool"], train=TINY_PDAE, holdout=["P1+P2"])
    assert BenchmarkSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_norman19_devel_fixed_holdout(data_dir, tmp_path):
    spec = BenchmarkSpec(models=["additive", "control"], seeds=[0], holdout=["KLF1+MAP2K6", "KLF1+TGFBR2"],
                         n_boot=20, accelerator="cpu")
    df = benchmark_dataset("norman19_devel", spec, tmp_path, data_dir=data_dir).set_index(["model", "condition"])
    for c in spec.holdout:
        assert df.loc[("additive", c), "seen"] == 2
        assert df.loc[("additive", c), "energy_distance"] < 0.1 < df.loc[("control", c), "energy_distance"]


def test_model_types_are_built_from_the_catalogue(synth, monkeypatch):
    adata, reg = synth
    assert bm.available_models() == ["additive", "control", "fcr", "linear", "oracle", "pdae", "pdae_ensemble",
                                     "pdae_profile", "pool",
                                     "samsvae", "scaled_additive", "sccvae"]
    assert not set(bm.MODEL_BUILDERS) & set(MODEL_TYPES)  # no model type is registered by hand

    class Dummy:
        model_type = "dummy"

        def __init__(self, registry, seed=0, **options):
            self.registry, self.seed, self.options = registry, seed, options

        def fit(self, adata, holdout=None, callbacks=None, seed=0, accelerator="auto", **train):
            self.fitted = (list(holdout), seed, accelerator, train, len(callbacks))
            return self

    monkeypatch.setitem(MODEL_TYPES, "dummy", Dummy)
    assert "dummy" in bm.available_models()
    BenchmarkSpec(models=["dummy", "additive"]).check_models()
    req = bm.FitRequest(adata, reg, ["P1+P2"], 3, {"width": 8}, {"max_epochs": 2}, "cpu", [object()])
    model = bm.get_builder("dummy")(req)
    assert isinstance(model, Dummy) and model.registry is reg and model.seed == 3 and model.options == {"width": 8}
    assert model.fitted == (["P1+P2"], 3, "cpu", {"max_epochs": 2}, 1)
    with pytest.raises(PDAEError, match="valid models: .*dummy"):
        bm.get_builder("gears")


def test_read_results_reads_a_run_back(synth, tmp_path):
    adata, reg = synth
    spec = _spec(models=["additive", "control"], seeds=[0])
    df = run_benchmark(adata, reg, spec, tmp_path)
    res = read_results(tmp_path)
    assert res.folder == tmp_path and res.track == "cells"
    assert list(res.per_condition.columns) == list(bm.COLUMNS) and len(res.per_condition) == len(df)
    for col in ("energy_distance", "pearson_delta", "n_obs"):
        np.testing.assert_array_equal(res.per_condition[col].to_numpy(float), df[col].to_numpy(float))
    assert list(res.per_condition["model"]) == list(df["model"])
    pd.testing.assert_frame_equal(res.summary, pd.read_csv(tmp_path / "summary.csv", float_precision="round_trip"))
    assert res.summary_md == (tmp_path / "summary.md").read_text()
    assert res.spec["spec"]["models"] == ["additive", "control"] and res.spec["spec_hash"]
    assert "condition_bars_energy_distance" in res.figures and all(p.is_file() for p in res.figures.values())
    assert res.metrics(["pearson_delta", "not_a_metric", "energy_distance"]) == ["pearson_delta", "energy_distance"]
    assert bm.has_results(tmp_path) and not bm.has_results(tmp_path / "runs")
    (tmp_path / "spec.json").write_text("{not json")
    assert read_results(tmp_path).spec is None  # unreadable: as if absent
    assert bm.results_folders(tmp_path.parent) == [p.parent for p in sorted(tmp_path.parent.glob("*/summary.md"))]


def test_read_results_of_the_pseudobulk_track_and_of_a_missing_folder(tmp_path):
    res = read_results(RESULTS / "norman19_pseudobulk")
    assert res.track == "pseudobulk" and res.spec is None and res.figures == {}
    assert res.summary_md.startswith("<!-- generated by:") and "<!--" not in res.summary_text
    assert res.summary_text.startswith("# Pseudobulk benchmark")
    mean = res.mean_per_model("pearson_delta")
    assert list(mean.index) == ["additive", "scaled_additive", "linear", "pdae"]
    assert list(mean.columns) == ["mean over doubles"]
    assert mean.loc["additive", "mean over doubles"] == pytest.approx(
        res.per_condition.loc[res.per_condition.model == "additive", "pearson_delta"].mean())
    assert RESULTS / "norman19_pseudobulk" in bm.results_folders(RESULTS)
    empty = read_results(tmp_path / "nothing")
    assert empty.per_condition is None and empty.summary is None and empty.summary_text is None
    assert empty.track is None and empty.metrics(["energy_distance"]) == [] and empty.figures == {}


def test_benchmark_dataset_takes_keys_from_the_dataset_defaults(synth, tmp_path):
    adata, _ = synth
    data = adata.copy()
    data.obs = data.obs.rename(columns={"condition": "guide"})
    data.obs["guide"] = data.obs["guide"].astype(str).replace({"control": "NT"})
    data.uns[DATASET_KEY] = {"perturbation_key": "guide", "control_label": "NT", "covariate_key": "absent"}
    spec = _spec(models=["additive"], seeds=[0])
    df = benchmark_dataset("custom", spec, tmp_path / "a", adata=data)
    record = json.loads((tmp_path / "a" / "spec.json").read_text())
    assert record["spec"]["dataset"] == "custom" and len(df) and (df["error"] == "").all()
    assert "NT" in record["splits"][0]["train"]
    data.uns[DATASET_KEY] = {"values": "lfc_vs_control"}
    with pytest.raises(DataError, match="log-fold-changes, not cells"):
        benchmark_dataset("profiles", spec, tmp_path / "b", adata=data)
