"""The ``pdae`` command line: train / predict / info / datasets, help texts and error handling.

Everything runs in-process through ``pdae_core.cli.main`` (output captured with
capsys), except one test that runs the installed ``pdae`` console script. Models
are tiny and train for 1-2 epochs on a synthetic dataset written to tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from pdae_core import cli
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.checkpoint import load_checkpoint, read_config

FAST = [
    "--epochs", "2", "--batch-size", "32", "--latent-dim", "3", "--hidden-dims", "16",
    "--noise-dim", "2", "--accelerator", "cpu",
]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def tiny() -> ad.AnnData:
    adata, _ = make_synthetic(n_perturbations=3, latent_dim=2, n_genes=12, hidden=8, n_doubles=2,
                              cells_per_condition=20, seed=0)
    return adata


def doubles(adata: ad.AnnData) -> list[str]:
    return sorted(c for c in adata.obs["condition"].astype(str).unique() if "+" in c)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    tiny().write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    adata = tiny()
    adata.X = np.random.default_rng(0).poisson(3.0, size=adata.shape).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "counts.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def held() -> str:
    return doubles(tiny())[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, data_file: Path, held: str) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "model"
    rc = cli.main(["train", "--data", str(data_file), "--out", str(out), "--holdout", held, "-q", *FAST])
    assert rc == 0
    return out


# ---------------------------------------------------------------------------------
# train


def test_train_writes_checkpoint_progress_and_summary(capsys, tmp_path, data_file, held):
    out = tmp_path / "ck"
    rc, stdout, stderr = run(
        capsys, "train", "--data", data_file, "--out", out, "--holdout", f"{held}, {held}", *FAST,
        "--grid", "full", "--w-rec", "0.5", "--lr", "0.002", "--seed", "3",
    )
    assert rc == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    # progress bar on stderr: steps with the loss and the validation energy distance
    assert "training" in stderr and "step" in stderr
    assert "loss=" in stderr and "val_ed=" in stderr
    # summary on stdout
    cfg = read_config(out)
    hist = cfg["training"]["history"]
    assert f"Done: 2 epochs, {hist['steps']} steps" in stdout
    assert f"{hist['best_val']:.4g} at epoch {hist['best_epoch']}" in stdout
    assert "on cpu" in stdout and str(out) in stdout
    # options reach the checkpoint
    assert cfg["training"]["holdout"] == [held]  # de-duplicated
    assert held not in cfg["training"]["train_conditions"]
    mc, tc = cfg["model_config"], cfg["training"]["train_config"]
    assert (mc["latent_dim"], mc["hidden_dims"], mc["noise_dim"], mc["grid"], mc["w_rec"]) == (3, [16], 2, "full", 0.5)
    assert (tc["max_epochs"], tc["lr"], tc["seed"], tc["batch_size"], tc["accelerator"]) == (2, 0.002, 3, 32, "cpu")
    assert cfg["init_seed"] == 3


def test_train_quiet_has_no_progress_bar(capsys, tmp_path, data_file):
    rc, stdout, stderr = run(capsys, "train", "--data", data_file, "--out", tmp_path / "ck", "-q", *FAST)
    assert rc == 0
    assert "step" not in stderr and "Done:" in stdout


def test_train_uses_keys_recorded_in_uns(capsys, tmp_path):
    adata = tiny()
    adata.obs["guide"] = adata.obs["condition"].astype(str).replace({"control": "NT"}).str.replace("+", "_")
    del adata.obs["condition"]
    adata.uns["pdae_dataset"] = {"name": "custom", "perturbation_key": "guide", "control_label": "NT",
                                 "separator": "_"}
    path = tmp_path / "custom.h5ad"
    adata.write_h5ad(path)
    rc, stdout, stderr = run(capsys, "train", "--data", path, "--out", tmp_path / "ck", "-q", *FAST)
    assert rc == 0, stderr
    reg = read_config(tmp_path / "ck")["registry"]
    assert (reg["perturbation_key"], reg["control_label"], reg["separator"]) == ("guide", "NT", "_")
    assert reg["perturbations"] == ["P1", "P2", "P3"]
    # an explicit flag wins over the recorded default
    rc, _, err = run(capsys, "train", "--data", path, "--out", tmp_path / "ck2", "--control", "ctrl", *FAST)
    assert rc == 2 and "'ctrl'" in err


def test_counts_need_preprocess_which_is_recorded_and_reapplied(capsys, tmp_path, counts_file):
    out = tmp_path / "ck"
    rc, stdout, stderr = run(capsys, "train", "--data", counts_file, "--out", out, *FAST)
    assert rc == 2
    assert stderr.startswith("error:") and "raw counts" in stderr and "--preprocess" in stderr
    assert "Traceback" not in stderr and not out.exists()

    rc, stdout, stderr = run(capsys, "train", "--data", counts_file, "--out", out, "--preprocess",
                             "--n-top-genes", "8", "-q", *FAST)
    assert rc == 0, stderr
    rc, stdout, _ = run(capsys, "info", out, "--json")
    info = json.loads(stdout)
    assert info["n_genes"] == 8
    prep = info["preprocessing"]
    assert prep["input"] == "counts" and prep["log1p"] is True
    assert prep["normalize_total"] == 1e4 and prep["highly_variable_genes"] == 8
    rc, stdout, _ = run(capsys, "info", out)
    assert "Preprocessing:    input=counts" in stdout

    # predicting from the raw file normalises it the same way and keeps the model's genes
    pred = tmp_path / "pred.h5ad"
    rc, stdout, stderr = run(capsys, "predict", out, "--data", counts_file, "--target", "P1+P2", "--out", pred)
    assert rc == 0, stderr
    assert "Applied the checkpoint's preprocessing" in stdout
    res = ad.read_h5ad(pred)
    assert list(res.var_names) == info["genes"] and res.n_obs == 20


def test_keyboard_interrupt_exits_130_and_writes_nothing(capsys, tmp_path, data_file, ckpt, monkeypatch):
    def interrupt(self, epoch, step, losses):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.TqdmProgress, "on_step", interrupt)
    out = tmp_path / "ck"
    rc, _, stderr = run(capsys, "train", "--data", data_file, "--out", out, *FAST)
    assert rc == 130 and not out.exists()
    assert "no checkpoint written" in stderr and "Traceback" not in stderr
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary directory left behind either

    # interrupting a retrain into an existing checkpoint leaves the old one intact
    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    before = read_config(copy)["weights_sha256"]
    rc, _, _ = run(capsys, "train", "--data", data_file, "--out", copy, "--overwrite", *FAST)
    assert rc == 130
    assert read_config(copy)["weights_sha256"] == before
    load_checkpoint(copy)


def test_overwrite_replaces_existing_checkpoint(capsys, tmp_path, data_file, ckpt):
    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    rc, _, err = run(capsys, "train", "--data", data_file, "--out", copy, "-q", *FAST)
    assert rc == 2 and "--overwrite" in err
    rc, _, err = run(capsys, "train", "--data", data_file, "--out", copy, "--overwrite", "-q", *FAST)
    assert rc == 0, err
    assert read_config(copy)["training"]["holdout"] == []


# ---------------------------------------------------------------------------------
# info


def test_info_text(capsys, ckpt, held):
    rc, stdout, _ = run(capsys, "info", ckpt)
    assert rc == 0
    cfg = read_config(ckpt)
    assert "Model type:       pdae (saved by pdae_core 0.1.0" in stdout
    assert "Genes:            12 (gene0, gene1, gene2, gene3, gene4, ..." in stdout
    assert "Perturbations:    3 (P1, P2, P3)" in stdout
    assert "control 'control'; separator '+'" in stdout
    assert f"Held out:         1 conditions ({held})" in stdout
    hist = cfg["training"]["history"]
    assert f"Best val ED:      {hist['best_val']:.4g} at epoch {hist['best_epoch']}" in stdout
    assert "max_epochs=2" in stdout and "latent_dim=3" in stdout
    assert "Preprocessing:    none recorded" in stdout


def test_info_json(capsys, ckpt, held):
    rc, stdout, _ = run(capsys, "info", ckpt, "--json")
    assert rc == 0
    info = json.loads(stdout)
    model = load_checkpoint(ckpt)
    assert info["model_type"] == "pdae" and info["library_version"] == "0.1.0"
    assert info["genes"] == [f"gene{i}" for i in range(12)] and info["n_genes"] == 12
    assert info["perturbations"] == ["P1", "P2", "P3"]
    assert info["control_label"] == "control" and info["separator"] == "+"
    assert info["holdout"] == [held]
    assert info["train_conditions"] == model.train_conditions and held not in info["train_conditions"]
    assert info["best_val_ed"] == pytest.approx(model.history.best_val)
    assert info["best_epoch"] == model.history.best_epoch and info["epochs_run"] == 2
    assert info["train_config"]["max_epochs"] == 2 and info["model_config"]["latent_dim"] == 3
    assert info["preprocessing"] == {}


# ---------------------------------------------------------------------------------
# predict


def test_predict_writes_targets_and_prints_verdicts(capsys, tmp_path, ckpt, data_file, held):
    out = tmp_path / "sub" / "pred.h5ad"
    targets = [held, "P1:0.5+P2", "P2"]
    args = ["predict", ckpt, "--data", data_file, "--n-cells", "30", "--seed", "1", "--out", out]
    for t in [*targets, "P2:1"]:  # P2:1 is P2 again: predicted once
        args += ["--target", t]
    rc, stdout, stderr = run(capsys, *args)
    assert rc == 0, stderr
    model = load_checkpoint(ckpt)
    dose_target = [("P1", 0.5), ("P2", 1.0)]
    for mt in [held, dose_target, "P2"]:
        assert model.extrapolation_check(mt).message in stdout
    assert "was measured in training" in stdout  # P2
    assert "in the span" in stdout  # the held-out double

    res = ad.read_h5ad(out)
    assert res.n_obs == 90 and list(res.var_names) == model.registry.gene_names
    for col in ("condition", "target", "source_cell", "source_condition", "draw", "kind"):
        assert col in res.obs.columns
    assert res.obs["target"].value_counts().to_dict() == {held: 30, "P1:0.5+P2": 30, "P2": 30}
    assert (res.obs["condition"].astype(str) == res.obs["target"].astype(str)).all()
    assert set(res.obs["source_condition"]) == {"control"}
    src = ad.read_h5ad(data_file)
    ctrl_cells = set(src.obs_names[src.obs["condition"] == "control"])
    assert set(res.obs["source_cell"]) <= ctrl_cells  # 30 > 20 control cells: two noise draws
    assert set(res.obs["draw"]) == {0, 1} and res.obs_names.is_unique
    assert np.isfinite(res.X).all() and (res.X >= 0).all()
    meta = res.uns["pdae_prediction"]
    assert list(meta["targets"]) == targets and meta["source_condition"] == "control"
    assert list(res.uns["pdae_extrapolation"]["in_span"]) == [True, True, True]


def test_predict_source_condition_subsample_and_outside_span(capsys, tmp_path, data_file):
    adata = tiny()
    with_p3 = [c for c in adata.obs["condition"].astype(str).unique() if "P3" in c.split("+")]
    ck = tmp_path / "ck"
    rc, _, err = run(capsys, "train", "--data", data_file, "--out", ck, "--holdout", ",".join(with_p3), "-q", *FAST)
    assert rc == 0, err
    out = tmp_path / "pred.h5ad"
    rc, stdout, err = run(capsys, "predict", ck, "--data", data_file, "--target", "P3", "--source-condition", "P1",
                          "--n-cells", "5", "--out", out)
    assert rc == 0, err
    assert "outside the span" in stdout and "P3" in stdout
    res = ad.read_h5ad(out)
    assert res.n_obs == 5 and set(res.obs["source_condition"]) == {"P1"}
    assert res.obs["source_cell"].is_unique
    assert list(res.uns["pdae_extrapolation"]["unseen_perturbations"]) == ["P3"]


# ---------------------------------------------------------------------------------
# built-in datasets (pdae_core.data.datasets; real files from the shared data directory)


def test_datasets_lists_every_builtin_dataset(capsys):
    from pdae_core.data.datasets import list_datasets

    known = list_datasets()
    assert {"norman19_devel", "mcfaline23_devel", "norman19_pseudobulk", "schraivogel20", "papalexi21",
            "synthetic", "norman19_full"} <= set(known)
    rc, stdout, _ = run(capsys, "datasets")
    assert rc == 0
    lines = stdout.splitlines()
    for name, desc in known.items():
        assert any(line.startswith(name + " ") and line.endswith(desc) for line in lines), name
    rc, stdout, _ = run(capsys, "datasets", "--json")
    assert rc == 0 and json.loads(stdout) == known


def test_train_and_predict_on_builtin_dataset(capsys, tmp_path, data_dir):
    ck = tmp_path / "ck"
    rc, stdout, err = run(capsys, "train", "--dataset", "norman19_devel", "--data-dir", data_dir, "--no-download",
                          "--out", ck, "--holdout", "KLF1+MAP2K6", "--epochs", "1", "-q", *FAST[2:], "--batch-size", "256")
    assert rc == 0, err
    assert "dataset norman19_devel: 3375 cells x 500 genes" in stdout
    reg = read_config(ck)["registry"]
    assert (reg["perturbation_key"], reg["control_label"]) == ("condition", "control")
    assert "KLF1" in reg["perturbations"] and "MAP2K6" in reg["perturbations"]
    pred = tmp_path / "pred.h5ad"
    rc, stdout, err = run(capsys, "predict", ck, "--dataset", "norman19_devel", "--data-dir", data_dir,
                          "--target", "KLF1+MAP2K6", "--n-cells", "40", "--out", pred)
    assert rc == 0, err
    assert "KLF1+MAP2K6: 40 cells" in stdout and "in the span" in stdout
    res = ad.read_h5ad(pred)
    assert res.n_obs == 40 and res.n_vars == 500 and set(res.obs["target"]) == {"KLF1+MAP2K6"}

    # keys come from uns['pdae_dataset']: mcfaline23 records its covariate
    rc, _, err = run(capsys, "train", "--dataset", "mcfaline23_devel", "--data-dir", data_dir, "--out",
                     tmp_path / "mc", "--epochs", "1", "-q", *FAST[2:], "--batch-size", "256")
    assert rc == 0, err
    assert read_config(tmp_path / "mc")["registry"]["covariate_key"] == "cell_type"


def test_dataset_options_reach_the_loader(capsys, tmp_path):
    opts = ["n_perturbations=3", "n_genes=10", "hidden=8", "latent_dim=2", "n_doubles=1",
            "cells_per_condition=16", "noise_sd=0.1"]
    args = ["train", "--dataset", "synthetic", "--out", tmp_path / "ck", "-q", *FAST]
    for o in opts:
        args += ["--dataset-option", o]
    rc, stdout, err = run(capsys, *args)
    assert rc == 0, err
    assert "dataset synthetic: 80 cells x 10 genes" in stdout
    assert read_config(tmp_path / "ck")["registry"]["perturbations"] == ["P1", "P2", "P3"]


# ---------------------------------------------------------------------------------
# help and errors


@pytest.mark.parametrize("command", ["train", "predict", "info", "datasets"])
def test_subcommand_help(capsys, command):
    rc, stdout, _ = run(capsys, command, "--help")
    assert rc == 0
    assert stdout.startswith(f"usage: pdae {command}")
    assert "examples:" in stdout and f"pdae {command}" in stdout.split("examples:")[1]


def test_top_level_help_and_no_command(capsys):
    rc, stdout, _ = run(capsys, "--help")
    assert rc == 0
    for command in ("train", "predict", "info", "datasets"):
        assert command in stdout
    rc, _, stderr = run(capsys)
    assert rc == 2 and "usage: pdae" in stderr
    rc, _, stderr = run(capsys, "train", "--out", "x")  # neither --data nor --dataset
    assert rc == 2 and "--data" in stderr


def _error_cases(tmp: Path, data: Path, counts: Path, ckpt: Path) -> list[tuple[list[str], list[str]]]:
    not_h5ad = tmp / "notes.h5ad"
    not_h5ad.write_text("not an AnnData")
    out = str(tmp / "out")
    pred = str(tmp / "pred.h5ad")
    return [
        (["train", "--data", str(tmp / "missing.h5ad"), "--out", out], ["File not found", "missing.h5ad"]),
        (["train", "--data", str(not_h5ad), "--out", out], ["notes.h5ad", "not an .h5ad"]),
        (["train", "--data", str(data), "--out", out, "--perturbation-key", "guide"], ["'guide'", "--perturbation-key"]),
        (["train", "--data", str(counts), "--out", out], ["raw counts", "--preprocess"]),
        (["train", "--data", str(data), "--out", out, "--n-top-genes", "5"], ["--preprocess"]),
        (["train", "--data", str(data), "--out", out, "--holdout", "P9+P1"], ["P9+P1", "zero cells"]),
        (["train", "--data", str(data), "--out", out, "--w-pert", "-1"], ["loss weights"]),
        (["train", "--data", str(data), "--out", out, "--val-fraction", "1.5"], ["val_fraction"]),
        (["train", "--data", str(data), "--out", out, "--time-limit", "0"], ["--time-limit"]),
        (["train", "--data", str(data), "--data-dir", str(tmp), "--out", out], ["--data-dir"]),
        (["info", str(tmp / "no_such_ckpt")], ["Checkpoint not found", "no_such_ckpt"]),
        (["info", str(data)], ["not a checkpoint directory"]),
        (["predict", str(tmp / "no_such_ckpt"), "--data", str(data), "--target", "P1", "--out", pred],
         ["Checkpoint not found"]),
        (["predict", str(ckpt), "--data", str(data), "--target", "P1+P9", "--out", pred],
         ["Unknown perturbation 'P9'", "P1, P2, P3"]),
        (["predict", str(ckpt), "--data", str(data), "--target", "P1:abc", "--out", pred], ["'abc'", "NAME:DOSE"]),
        (["predict", str(ckpt), "--data", str(data), "--target", "P1", "--source-condition", "zz", "--out", pred],
         ["'zz'", "--source-condition"]),
        (["predict", str(ckpt), "--data", str(tmp / "missing.h5ad"), "--target", "P1", "--out", pred],
         ["File not found"]),
        (["train", "--dataset", "no_such_dataset", "--out", out], ["'no_such_dataset'", "norman19_devel", "synthetic"]),
        (["train", "--dataset", "norman19_devel", "--data-dir", str(tmp / "empty"), "--no-download", "--out", out],
         ["perturbench_devel.h5ad", "--no-download"]),
        (["train", "--dataset", "synthetic", "--dataset-option", "n_genes", "--out", out], ["KEY=VALUE"]),
        (["train", "--dataset", "synthetic", "--dataset-option", "colour=red", "--out", out], ["colour"]),
        (["train", "--data", str(data), "--dataset-option", "n_genes=5", "--out", out], ["--dataset-option"]),
    ]


def test_errors_are_one_line_with_exit_code_2(capsys, tmp_path, data_file, counts_file, ckpt, data_dir):
    cases = _error_cases(tmp_path, data_file, counts_file, ckpt)
    cases.append((["train", "--dataset", "norman19_pseudobulk", "--data-dir", str(data_dir), "--out", str(tmp_path / "out")],
                  ["log-fold-changes"]))
    for args, needles in cases:
        extra = FAST if args[0] == "train" else []
        rc, stdout, stderr = run(capsys, *args, *extra)
        assert rc == 2, (args, stderr)
        assert stderr.startswith("error: "), (args, stderr)
        assert "Traceback" not in stderr
        for needle in needles:
            assert needle in stderr, (args, needle, stderr)
    assert not (tmp_path / "out").exists() and not (tmp_path / "pred.h5ad").exists()


def test_console_script_subprocess(ckpt, tmp_path):
    exe = shutil.which("pdae") or str(Path(sys.executable).parent / "pdae")
    assert os.path.exists(exe), "the `pdae` console script is not installed (pip install -e .)"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([exe, "info", str(ckpt), "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["model_type"] == "pdae"
    bad = subprocess.run([exe, "info", str(tmp_path / "nope")], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: Checkpoint not found") and "Traceback" not in bad.stderr
