"""benchmarks/merge_results.py: adding a model to a committed table without refitting."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from pdae_core import setup_anndata
from pdae_core.data.synthetic import make_synthetic
from pdae_core.eval.benchmark import BenchmarkSpec, run_benchmark
from pdae_core.eval.benchmark import run as bm_run

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "merge_results.py"


def _load():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("merge_results", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _spec(models):
    return BenchmarkSpec(dataset="synthetic", models=models, seeds=[0, 1], test_fraction=0.5, n_boot=10,
                         accelerator="cpu")


def test_cells_merge_reuses_every_committed_pair(tmp_path, monkeypatch):
    mr = _load()
    adata, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=30, hidden=16, n_doubles=4,
                              cells_per_condition=40, seed=1)
    reg = setup_anndata(adata, "condition", "control")
    committed, new, into = tmp_path / "c", tmp_path / "n", tmp_path / "i"
    full = run_benchmark(adata, reg, _spec(["additive", "scaled_additive", "control"]), tmp_path / "full")
    run_benchmark(adata, reg, _spec(["additive", "control"]), committed)
    for p in committed.iterdir():  # keep only what a committed folder keeps
        if p.name not in ("per_condition.csv", "summary.csv", "summary.md"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    run_benchmark(adata, reg, _spec(["additive", "scaled_additive"]), new)
    report = mr.merge_cells(committed, new, into, 1e-9)
    assert "additive: " in report and "scaled_additive" in report
    fitted = []
    build = bm_run.get_builder
    monkeypatch.setattr(bm_run, "get_builder", lambda name: fitted.append(name) or build(name))
    merged = run_benchmark(adata, reg, _spec(["additive", "scaled_additive", "control"]), into)
    assert fitted == []  # every pair reused
    cols = [c for c in full.columns if c not in ("fit_seconds", "score_seconds")]
    pd.testing.assert_frame_equal(merged[cols], full[cols])
    # a committed row that no longer matches is refused
    df = pd.read_csv(committed / "per_condition.csv")
    df.loc[df.model == "additive", "energy_distance"] += 1e-3
    df.to_csv(committed / "per_condition.csv", index=False)
    with pytest.raises(mr.MergeError, match="additive"):
        mr.merge_cells(committed, new, into, 1e-9)


def test_interaction_rows_seed_a_rerun_that_adds_a_model(tmp_path, monkeypatch, capsys):
    """The committed rows are written under the names the committed command looks for: a rerun
    with one more model reads them back (a committed value changed by hand survives) and fits
    only the new model."""
    from pdae_core.cli import main as cli_main

    mr = _load()
    committed, into = tmp_path / "c", tmp_path / "i"
    base = ["benchmark", "--dataset", "norman19_pseudobulk", "--task", "interactions", "--seeds", "1", "-q"]
    assert cli_main([*base, "--models", "additive,linear", "--out", str(committed)]) == 0
    shutil.rmtree(committed / "fold_rows")  # a committed folder keeps only its three files
    rows = pd.read_csv(committed / "per_double.csv")
    marked = (rows["model"] == "linear") & (rows["fold"] == 2)
    rows.loc[marked, "nonadditive_pearson"] = 0.123  # what only the committed rows say
    rows.to_csv(committed / "per_double.csv", index=False)
    assert mr.main(["interactions", str(committed), "--into", str(into)]) == 0
    assert len(list((into / "fold_rows").glob("*.csv"))) == 10  # 2 models x 5 folds
    assert cli_main([*base, "--models", "additive,linear,partners", "--out", str(into)]) == 0
    again = pd.read_csv(into / "per_double.csv")
    assert (again.loc[(again["model"] == "linear") & (again["fold"] == 2), "nonadditive_pearson"] == 0.123).all()
    assert set(again["model"]) == {"additive", "linear", "partners"}
    assert len(list((into / "fold_rows").glob("partners_*.csv"))) == 5
    # --refit leaves a model out of the cache, so the rerun fits it again (its code changed)
    refit = tmp_path / "r"
    assert mr.main(["interactions", str(committed), "--into", str(refit), "--refit", "linear"]) == 0
    assert len(list((refit / "fold_rows").glob("linear_*.csv"))) == 0
    assert cli_main([*base, "--models", "additive,linear", "--out", str(refit)]) == 0
    fresh = pd.read_csv(refit / "per_double.csv")
    assert not (fresh.loc[fresh["model"] == "linear", "nonadditive_pearson"] == 0.123).any()
    assert mr.main(["interactions", str(committed), "--into", str(refit), "--refit", "nosuch"]) == 1
    assert "nosuch" in capsys.readouterr().err
    # a folder whose rows do not belong to its command is refused
    rows[rows["fold"] != 4].to_csv(committed / "per_double.csv", index=False)
    assert mr.main(["interactions", str(committed), "--into", str(tmp_path / "j")]) == 1
    assert "other (model, seed, fold)s" in capsys.readouterr().err
