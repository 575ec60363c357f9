"""A fast command line (issue 18 part 3): ``pdae --help``, ``pdae datasets`` and ``pdae info``
import neither torch, anndata, scanpy nor streamlit (benchmarks/cli_startup.py times them);
``--help`` still lists every command; ``pdae info`` describes a checkpoint from its config when
its files and digests check out, and otherwise (or with ``--load``) loads the model as before."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pdae_core import cli
from pdae_core.cli.info import checkpoint_summary, quick_summary
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.integrity import seal

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "checkpoints" / "norman19_devel"
HEAVY = ("torch", "anndata", "scanpy", "streamlit", "pandas", "numpy")


def imported_after(*args: str) -> tuple[int, list[str], str]:
    """(exit code, heavy packages imported, stdout) of ``pdae ARGS`` in a fresh interpreter."""
    code = (
        "import contextlib, io, json, sys\n"
        "from pdae_core.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        f"    rc = main({list(args)!r})\n"
        f"print(json.dumps([rc, [m for m in {HEAVY!r} if m in sys.modules], buf.getvalue()]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rc, heavy, out = json.loads(proc.stdout.splitlines()[-1])
    return rc, heavy, out


@pytest.mark.parametrize("args", [["--help"], ["datasets"], ["datasets", "--json"], ["info", str(DEMO)],
                                  ["info", str(DEMO), "--json"], ["--version"]])
def test_light_commands_import_no_heavy_package(args):
    rc, heavy, out = imported_after(*args)
    assert rc == 0 and heavy == [], (args, heavy)
    assert out


def test_info_load_builds_the_model(capsys, monkeypatch):
    import pdae_core.models.checkpoint as checkpoint

    calls = []
    load = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda *a, **k: calls.append(a) or load(*a, **k))
    assert cli.main(["info", str(DEMO)]) == 0 and calls == []
    text = capsys.readouterr().out
    assert cli.main(["info", str(DEMO), "--load"]) == 0 and len(calls) == 1
    assert capsys.readouterr().out.splitlines()[:9] == text.splitlines()[:9]  # the same description


def test_help_lists_every_command_with_its_one_line_help(capsys):
    assert cli.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help column
    for name, help_text in cli.COMMANDS.items():
        assert f" {name} " in out and help_text in out, name
    # the one-line helps of the dispatcher are those the command modules register
    full = cli.build_parser()
    sub = next(a for a in full._actions if a.dest == "command")
    assert {c.dest: c.help for c in sub._choices_actions} == cli.COMMANDS
    assert list(sub.choices) == list(cli.COMMANDS)


def test_chosen_command_and_unknown_commands(capsys):
    assert cli.chosen_command(["info", "ckpt"]) == "info"
    assert cli.chosen_command(["--help"]) is None and cli.chosen_command([]) is None
    assert cli.chosen_command(["nope"]) is None
    assert cli.main(["nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert cli.main(["info", "--help"]) == 0
    assert "--load" in capsys.readouterr().out


def test_datasets_package_loads_its_loaders_on_first_use():
    from pdae_core.data import datasets

    assert callable(datasets.load_norman19_devel) and datasets.load_norman19_devel.__module__.endswith("perturbench")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        datasets.nope  # noqa: B018


# ---------------------------------------------------------------------------------
# pdae info: from the config, or from the loaded model


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    import pdae_core as pc

    adata, _ = make_synthetic(n_perturbations=3, latent_dim=2, n_genes=12, hidden=8, n_doubles=2,
                              cells_per_condition=20, seed=0)
    m = pc.PDAE.from_anndata(adata, seed=0, latent_dim=2, hidden_dims=(8,), noise_dim=2)
    held = sorted(c for c in adata.obs["condition"].unique() if "+" in c)[:1]
    m.fit(adata, holdout=held, max_epochs=2, batch_size=32, accelerator="cpu", progress_bar=False)
    out = tmp_path_factory.mktemp("ck") / "ck"
    m.save(out)
    return out


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit(ckpt: Path, fn, reseal: bool = True) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    fn(cfg)
    (ckpt / "config.json").write_text(json.dumps(seal(cfg) if reseal else cfg, indent=1))


def test_quick_summary_equals_the_loaded_models(fresh):
    quick = quick_summary(fresh)
    assert quick is not None
    loaded = checkpoint_summary(fresh, load=True)
    assert json.dumps(quick) == json.dumps(loaded)  # same fields, values and order
    assert checkpoint_summary(fresh) == quick


def test_demo_checkpoint_is_described_without_loading():
    quick = quick_summary(DEMO)
    loaded = checkpoint_summary(DEMO, load=True)
    assert quick is not None and list(quick) == list(loaded)
    # the config lists the fields it was saved with; a loaded model adds later fields' defaults
    for key in quick:
        if key in ("model_config", "train_config"):
            assert quick[key].items() <= loaded[key].items()
        else:
            assert quick[key] == loaded[key], key


def test_modified_or_unusual_checkpoints_go_through_the_full_load(fresh, tmp_path, capsys):
    weights = copy(fresh, tmp_path / "weights")
    with open(weights / "model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    unsealed = copy(fresh, tmp_path / "unsealed")
    edit(unsealed, lambda c: c["registry"]["gene_names"].reverse(), reseal=False)
    old = copy(fresh, tmp_path / "old")
    edit(old, lambda c: (c.pop("checkpoint_sha256"), c.__setitem__("format_version", 1)), reseal=False)
    records = copy(fresh, tmp_path / "records")
    edit(records, lambda c: c["training"]["history"].__setitem__("records", "zzz"))
    shape = copy(fresh, tmp_path / "shape")
    edit(shape, lambda c: c["model_config"].__setitem__("n_genes", 5))
    extra = copy(fresh, tmp_path / "extra")
    (extra / "model.pkl").write_bytes(b"x")
    newer = copy(fresh, tmp_path / "newer")
    edit(newer, lambda c: c.__setitem__("library_version", "99.0"))
    for ckpt in (weights, unsealed, old, records, shape, extra, newer, tmp_path / "missing"):
        assert quick_summary(ckpt) is None, ckpt.name
    # the loader's own messages, as before
    for ckpt, needle in ((weights, "model.safetensors does not match"), (unsealed, "modified after saving"),
                         (old, "cannot be verified"), (records, "history.records"), (shape, "12 / 3"),
                         (extra, "unexpected file"), (tmp_path / "missing", "Checkpoint not found")):
        capsys.readouterr()
        assert cli.main(["info", str(ckpt)]) == 2, ckpt.name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and "Traceback" not in err, (ckpt.name, err)
    assert cli.main(["info", str(newer)]) == 0
    assert "newer than the installed" in capsys.readouterr().err
    assert cli.main(["info", str(unsealed), "--trust-modified", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("modified after saving") == 1  # warned once
    assert json.loads(captured.out)["genes"][0] == "gene11"
