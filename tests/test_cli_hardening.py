"""Hardening of the ``pdae`` command line (issue 14): never write over an input (item 1),
escape control characters read from files (item 9), refuse oversized predictions at once
(item 11), name empty input files (item 15) and exit quietly on an early Ctrl-C (item 16)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import pytest

from pdae_core import cli
from pdae_core.cli.common import check_output_not_input, printable
from pdae_core.data.synthetic import make_synthetic
from pdae_core.errors import DataError

FAST = [
    "--epochs", "1", "--batch-size", "32", "--latent-dim", "2", "--hidden-dims", "8",
    "--noise-dim", "2", "--accelerator", "cpu", "-q",
]
ESC = "\x1b]0;owned\x07\x1b[2J"  # set the window title, clear the screen


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def tiny() -> ad.AnnData:
    adata, _ = make_synthetic(n_perturbations=3, latent_dim=2, n_genes=10, hidden=8, n_doubles=2,
                              cells_per_condition=16, seed=0)
    return adata


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cells.h5ad"
    tiny().write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, data_file: Path) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "model"
    assert cli.main(["train", "--data", str(data_file), "--out", str(out), *FAST]) == 0
    return out


@pytest.fixture(scope="module")
def empty_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("empty") / "no_cells.h5ad"
    tiny()[:0].copy().write_h5ad(path)
    return path


# ---------------------------------------------------------------------------------
# item 1: an output never replaces an input


def test_predict_refuses_out_equal_to_data(capsys, tmp_path, ckpt, data_file, monkeypatch):
    data = tmp_path / "cells.h5ad"
    data.write_bytes(data_file.read_bytes())
    before = digest(data)
    link = tmp_path / "link.h5ad"
    link.symlink_to(data)
    monkeypatch.chdir(tmp_path)
    for out in (data, "cells.h5ad", f"./sub/../{data.name}", link):
        (tmp_path / "sub").mkdir(exist_ok=True)
        rc, _, err = run(capsys, "predict", ckpt, "--data", data, "--target", "P1+P2", "--out", out)
        assert_error(rc, err, "--out", "is the input --data")
        assert digest(data) == before and link.is_symlink()
    # through the symlink as --data, too
    rc, _, err = run(capsys, "predict", ckpt, "--data", link, "--target", "P1+P2", "--out", data)
    assert_error(rc, err, "is the input --data")
    assert digest(data) == before


def test_predict_refuses_out_inside_the_checkpoint(capsys, tmp_path, ckpt, data_file):
    weights = sorted(p for p in ckpt.iterdir() if p.is_file())[0]
    before = digest(weights)
    rc, _, err = run(capsys, "predict", ckpt, "--data", data_file, "--target", "P1", "--out", weights)
    assert_error(rc, err, "lies inside the input CHECKPOINT")
    assert digest(weights) == before


def test_preprocess_refuses_the_input_through_a_symlink(capsys, tmp_path, data_file):
    link = tmp_path / "link.h5ad"
    link.symlink_to(data_file)
    before = digest(data_file)
    for flags in ([], ["--overwrite"]):
        rc, _, err = run(capsys, "preprocess", data_file, link, *flags)
        assert_error(rc, err, "OUT.h5ad", "is the input RAW.h5ad")
    assert digest(data_file) == before


def test_benchmark_refuses_out_holding_or_being_the_data(capsys, tmp_path, data_file):
    folder = tmp_path / "bench"
    folder.mkdir()
    inside = folder / "cells.h5ad"
    inside.write_bytes(data_file.read_bytes())
    rc, _, err = run(capsys, "benchmark", "--data", inside, "--out", folder, "--models", "control", "--seeds", "1")
    assert_error(rc, err, "lies inside the output --out")
    rc, _, err = run(capsys, "benchmark", "--data", inside, "--out", inside, "--models", "control", "--seeds", "1")
    assert_error(rc, err, "is the input --data")
    assert sorted(p.name for p in folder.iterdir()) == ["cells.h5ad"]


def test_check_output_not_input_follows_hard_links_and_skips_none(tmp_path):
    a = tmp_path / "a.h5ad"
    a.write_text("x")
    hard = tmp_path / "hard.h5ad"
    os.link(a, hard)
    with pytest.raises(DataError, match="is the input --data"):
        check_output_not_input(hard, {"--data": a})
    check_output_not_input(tmp_path / "b.h5ad", {"--data": a, "--other": None})
    check_output_not_input(tmp_path / "out", {"--data": a})  # a sibling folder is fine


# ---------------------------------------------------------------------------------
# item 9: control characters from files are escaped


@pytest.fixture(scope="module")
def evil_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    adata = tiny()
    adata.var_names = [f"{ESC}gene{i}" if i < 2 else f"gene{i}" for i in range(adata.n_vars)]
    cond = adata.obs["condition"].astype(str).str.replace("P1", f"P1{ESC}", regex=False)
    adata.obs["condition"] = cond.astype("category")
    root = tmp_path_factory.mktemp("evil")
    adata.write_h5ad(root / "evil.h5ad")
    out = root / "model"
    assert cli.main(["train", "--data", str(root / "evil.h5ad"), "--out", str(out), *FAST]) == 0
    return out


def test_info_escapes_control_characters_of_names(capsys, evil_ckpt):
    rc, out, err = run(capsys, "info", evil_ckpt)
    assert rc == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;owned\\x07\\x1b[2Jgene0" in out  # shown, escaped
    rc, out, _ = run(capsys, "info", evil_ckpt, "--json")
    assert rc == 0 and "\x1b" not in out and "\\u001b" in out


def test_error_line_escapes_control_characters(capsys, tmp_path):
    rc, _, err = run(capsys, "info", tmp_path / f"ckpt{ESC}\nfake line")
    assert_error(rc, err, "\\x1b]0;owned\\x07", "\\x0afake line")
    assert "\x1b" not in err and "\x07" not in err


def test_printable_escapes_c0_c1_and_bidi_only():
    assert printable("KLF1+MAP2K6 é µ 基因") == "KLF1+MAP2K6 é µ 基因"
    assert printable("a\x1b[31mb\x9bc\x7f\u202ed\r\te") == "a\\x1b[31mb\\x9bc\\x7f\\u202ed\\x0d\\x09e"
    assert printable("a\nb") == "a\\x0ab" and printable("a\nb", newlines=True) == "a\nb"


# ---------------------------------------------------------------------------------
# item 11: an oversized prediction is refused at once


def test_predict_refuses_a_huge_n_cells_at_once(ckpt, data_file, tmp_path):
    out = tmp_path / "pred.h5ad"
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "pdae_core.cli", "predict", str(ckpt), "--data", str(data_file), "--target", "P1",
         "--target", "P2", "--n-cells", "1000000000", "--out", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert "2,000,000,000 predicted cells" in res.stderr and "Traceback" not in res.stderr
    assert time.perf_counter() - t0 < 100 and not out.exists()


def test_predict_counts_all_targets_against_the_bound(capsys, ckpt, data_file, tmp_path, monkeypatch):
    from pdae_core.models import prediction

    monkeypatch.setattr(prediction, "MAX_PREDICTED_VALUES", 10 * 35)  # 35 cells x 10 genes (the library also
    # counts the draws it makes before subsampling: 2 x 16 source cells for --n-cells 20)
    out = tmp_path / "pred.h5ad"
    rc, _, err = run(capsys, "predict", ckpt, "--data", data_file, "--target", "P1", "--target", "P2",
                     "--n-cells", "20", "--out", out)
    assert_error(rc, err, "40 predicted cells")  # 20 per target is under the bound, 40 in all is not
    rc, _, err = run(capsys, "predict", ckpt, "--data", data_file, "--target", "P1", "--n-cells", "20", "--out", out)
    assert rc == 0, err


# ---------------------------------------------------------------------------------
# item 15: an empty file is named as such


@pytest.mark.parametrize("command", ["train", "predict", "benchmark", "preprocess"])
def test_empty_file_is_named(capsys, tmp_path, ckpt, empty_file, command):
    args = {
        "train": ["train", "--data", empty_file, "--out", tmp_path / "out", *FAST],
        "predict": ["predict", ckpt, "--data", empty_file, "--target", "P1", "--out", tmp_path / "p.h5ad"],
        "benchmark": ["benchmark", "--data", empty_file, "--out", tmp_path / "b", "--models", "control"],
        "preprocess": ["preprocess", empty_file, tmp_path / "p.h5ad"],
    }[command]
    rc, _, err = run(capsys, *args)
    assert_error(rc, err, str(empty_file), "is empty", "no cells")
    assert "labels present" not in err and "conditions present" not in err
    assert [p.name for p in tmp_path.iterdir()] == []


# ---------------------------------------------------------------------------------
# item 16: Ctrl-C while the command modules are being imported


HARNESS = """
import importlib.util, sys
# pdae_core as a bare package (its __init__ not run), so that the interrupt falls in the
# imports that pdae_core.cli and its main do
spec = importlib.util.find_spec("pdae_core")
sys.modules["pdae_core"] = importlib.util.module_from_spec(spec)
print("ready", flush=True)
from pdae_core.cli import main
sys.exit(main(["info", sys.argv[1], "--load"]))  # --load: builds the model, so imports torch
"""
DEMO = str(Path(__file__).resolve().parents[1] / "checkpoints" / "norman19_devel")


def test_ctrl_c_during_the_imports_of_the_cli_exits_130_quietly():
    proc = subprocess.Popen([sys.executable, "-c", HARNESS, DEMO], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)  # torch and anndata take seconds to import
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted" in err


def test_ctrl_c_early_in_the_console_script_exits_130_quietly():
    exe = Path(sys.executable).parent / "pdae"  # the console script itself, not a shell shim
    assert exe.exists(), "the `pdae` console script is not installed (pip install -e .)"
    # python has started; pdae_core.cli.main is importing torch (with Ctrl-C held back until it is done:
    # an interrupt inside torch's C++ import code would abort the process) and anndata
    for delay in (0.3, 0.8, 1.5):
        proc = subprocess.Popen([exe, "info", DEMO, "--load"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (delay, err)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err)


HOLD_BACK = """
import importlib.abc, importlib.util, os, signal, sys
spec = importlib.util.find_spec("pdae_core")  # a bare package, as above: nothing imported yet
sys.modules["pdae_core"] = importlib.util.module_from_spec(spec)
seen = {}
class CtrlCWhenImporting(importlib.abc.MetaPathFinder):  # Ctrl-C as the import of sys.argv[1] starts
    def find_spec(self, name, path, target=None):
        if name == sys.argv[1] and not seen:
            seen["sent"] = True
            os.kill(os.getpid(), signal.SIGINT)
            seen["held back"] = signal.SIGINT in signal.sigpending()
        return None
sys.meta_path.insert(0, CtrlCWhenImporting())
from pdae_core.cli.common import import_libraries
try:
    import_libraries()
except KeyboardInterrupt:
    print("interrupted", "after the imports" if seen.get("held back") else "at once", flush=True)
    sys.exit(0)
print("never interrupted", seen, flush=True)
"""


@pytest.mark.parametrize("module", ["torch", "scipy", "anndata"])
def test_ctrl_c_during_the_imports_of_the_libraries_is_held_back_until_they_are_done(module):
    """A Ctrl-C inside a Cython extension's initialisation can be swallowed (SciPy's, registering its types
    with abc: the command then ran to the end and exited 0), and one inside torch's import aborts the process;
    so it is held back until torch, SciPy and anndata are imported, then arrives as KeyboardInterrupt."""
    out = subprocess.run([sys.executable, "-c", HOLD_BACK, module], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "interrupted after the imports", (out.stdout, out.stderr)


def test_huge_model_sizes_are_refused_before_allocating(capsys, tmp_path, tiny_adata):
    """Issue 14 item 7: `--latent-dim 100000000` used to try to allocate ~100 GB."""
    import tracemalloc

    import pdae_core as pc

    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"GiB\), more than the 1,073,741,824"):
        pc.PDAE.from_anndata(tiny_adata, perturbation_key="condition", latent_dim=100_000_000)
    with pytest.raises(ValueError, match="lower latent_dim / hidden_dims"):
        pc.SCCVAE.from_anndata(tiny_adata, perturbation_key="condition", hidden_dims=(200_000, 200_000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 30 and peak < 200 * 2**20
    data = tmp_path / "tiny.h5ad"
    tiny_adata.write_h5ad(data)
    rc, _, err = run(capsys, "train", "--data", data, "--latent-dim", "100000000", "--epochs", "1", "--out",
                     tmp_path / "ck", "-q")
    assert_error(rc, err, "more than the 1,073,741,824")
    assert not (tmp_path / "ck").exists()
