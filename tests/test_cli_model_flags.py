"""``pdae train`` hyperparameter flags generated from the selected model's config dataclass."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pdae_core import cli
from pdae_core.cli import model_flags, train
from pdae_core.models.catalog import MODEL_TYPES
from pdae_core.models.checkpoint import read_config
from pdae_core.models.hparams import DATA_FIELDS, field_choices
from pdae_core.models.samsvae import SAMSVAEConfig

SYNTHETIC = ["--dataset", "synthetic"] + [
    arg for opt in ("n_perturbations=3", "n_genes=10", "hidden=8", "latent_dim=2", "n_doubles=1",
                    "cells_per_condition=16", "noise_sd=0.1") for arg in ("--dataset-option", opt)
]
FAST = ["--epochs", "1", "--batch-size", "32", "--accelerator", "cpu", "-q"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_the_selected_models_hyperparameters(capsys):
    rc, stdout, _ = run(capsys, "train", "--model", "samsvae", "--help")
    assert rc == 0
    assert "samsvae hyperparameters" in stdout
    for flag in ("--mask-prior", "--likelihood {gaussian,nb}", "--no-correlated", "--latent-dim"):
        assert flag in stdout, flag
    assert "entry (default: 0.01)" in " ".join(stdout.split())  # mask_prior's default, from SAMSVAEConfig
    for pdae_only in ("--w-pert", "--source-sampling", "--noise-dim"):
        assert pdae_only not in stdout, pdae_only

    rc, stdout, _ = run(capsys, "train", "--help")  # the default model: PDAE
    assert rc == 0
    assert "pdae hyperparameters" in stdout
    assert "--source-sampling {condition,batch}" in stdout and "--w-pert W" in stdout
    assert "--mask-prior" not in stdout


@pytest.mark.parametrize("model", sorted(MODEL_TYPES))
def test_every_config_field_has_a_flag(model):
    cls = MODEL_TYPES[model].config_class
    expected = [f.name for f in dataclasses.fields(cls) if f.name not in DATA_FIELDS]
    assert [f.field for f in model_flags.model_flags(model)] == expected
    parser = cli.build_parser(model)
    args = parser.parse_args(["train", "--data", "x.h5ad", "--out", "o", "--model", model])
    assert model_flags.hyperparameters(args) == {}  # nothing given: the config's own defaults apply


def test_flag_types_follow_the_field_types():
    parse = lambda model, *a: model_flags.hyperparameters(  # noqa: E731
        cli.build_parser(model).parse_args(["train", "--data", "x.h5ad", "--out", "o", "--model", model, *a])
    )
    assert parse("samsvae", "--no-correlated", "--hidden-dims", "8,4", "--mask-prior", "0.2", "--latent-dim", "5") == {
        "correlated": False, "hidden_dims": (8, 4), "mask_prior": 0.2, "latent_dim": 5,
    }
    assert parse("sccvae", "--mmd-scales", "1,2.5", "--mmd-bandwidth", "none", "--graph", "none") == {
        "mmd_scales": (1.0, 2.5), "mmd_bandwidth": None, "graph": "none",
    }
    assert parse("fcr", "--independence-pairs", "x_t,t_tx", "--clip-output") == {
        "independence_pairs": ("x_t", "t_tx"), "clip_output": True,
    }
    assert parse("pdae", "--grid", "full", "--w-rec", "0.5") == {"grid": "full", "w_rec": 0.5}
    # choices are the ones the config declares on its field (and checks in __post_init__)
    assert field_choices(SAMSVAEConfig)["mask_posterior"] == ("straight_through", "relaxed")
    flags = {f.field: f for f in model_flags.model_flags("samsvae")}
    assert flags["mask_posterior"].choices == ("straight_through", "relaxed")
    assert flags["temperature"].choices is None


@pytest.mark.parametrize("model", sorted(MODEL_TYPES))
def test_help_texts_are_the_ones_the_config_declares(capsys, model):
    cls = MODEL_TYPES[model].config_class
    rc, stdout, _ = run(capsys, "train", "--model", model, "--help")
    assert rc == 0
    text = " ".join(stdout.split())
    for f in dataclasses.fields(cls):
        if f.name in DATA_FIELDS:
            continue
        flag = next(fl for fl in model_flags.model_flags(model) if fl.field == f.name)
        assert flag.help == f.metadata["help"], f.name
        assert f.metadata["help"] in text, f.name


def test_help_text_source_is_metadata_not_the_class_source(monkeypatch, capsys):
    """A declared help text reaches --help even when the class source cannot be read."""
    import inspect

    def no_source(obj):
        raise OSError("no source")

    monkeypatch.setattr(inspect, "getsource", no_source)
    rc, stdout, _ = run(capsys, "train", "--model", "sccvae", "--help")
    assert rc == 0
    text = " ".join(stdout.split())
    assert "weight of the MMD between moved and observed cells (default: 10)" in text
    assert "--likelihood {gaussian,censored}" in stdout


def test_selected_model_is_read_before_the_parser_is_built():
    assert train.selected_model(["train", "--data", "d.h5ad", "--model", "samsvae"]) == "samsvae"
    assert train.selected_model(["train", "--model=sccvae", "--out", "o"]) == "sccvae"
    assert train.selected_model(["train", "--out", "o"]) == "pdae"
    assert train.selected_model(["train", "--model", "nope"]) == "pdae"  # the full parser rejects it
    assert train.selected_model(["train", "--model"]) == "pdae"
    assert train.selected_model(["benchmark", "--model", "samsvae"]) == "pdae"
    assert train.selected_model([]) == "pdae"


def test_samsvae_hyperparameters_reach_the_checkpoint(capsys, tmp_path):
    out = tmp_path / "ck"
    rc, stdout, err = run(capsys, "train", *SYNTHETIC, "--out", out, "--model", "samsvae", *FAST,
                          "--mask-prior", "0.05", "--latent-dim", "3", "--hidden-dims", "16", "--no-correlated")
    assert rc == 0, err
    assert "Training samsvae" in stdout
    cfg = read_config(out)
    assert cfg["model_type"] == "samsvae"
    mc = cfg["model_config"]
    assert (mc["mask_prior"], mc["latent_dim"], mc["hidden_dims"], mc["correlated"]) == (0.05, 3, [16], False)
    defaults = SAMSVAEConfig(n_genes=1, n_perturbations=1)
    assert mc["temperature"] == defaults.temperature and mc["likelihood"] == defaults.likelihood


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--likelihood", "poisson"], ["--likelihood", "invalid choice", "'poisson'"]),
        (["--mask-prior", "abc"], ["--mask-prior", "expected a number"]),
        (["--mask-prior", "2"], ["error: SAMSVAEConfig: mask_prior must be in (0, 1)"]),
        (["--latent-dim", "0"], ["--latent-dim", "expected a positive integer"]),
        (["--w-pert", "1"], ["unrecognized arguments: --w-pert"]),  # a PDAE flag
    ],
)
def test_bad_hyperparameters_are_clear_errors(capsys, tmp_path, extra, needles):
    out = tmp_path / "ck"
    rc, _, err = run(capsys, "train", *SYNTHETIC, "--out", out, "--model", "samsvae", *FAST, *extra)
    assert rc == 2, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()


def test_python_dash_m_runs_the_cli():
    ok = subprocess.run([sys.executable, "-m", "pdae_core.cli", "--version"], capture_output=True, text=True,
                        timeout=120, cwd=Path(__file__).parent)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("pdae_core ")
