"""Adding a model touches only ``pdae_core/models/`` and its test (CONTRIBUTING.md).

A toy fifth model is written here as a new module would be (a config declared with
``hp``, a ``PerturbationModule``, a ``PerturbationModel`` registered with
``@register_model``) and nothing else is changed: the command line, checkpoints, the
benchmark and the dashboard's model builder must all find it by its name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

import pdae_core as pc
from pdae_core import cli
from pdae_core.eval.benchmark import available_models
from pdae_core.models.base import PerturbationModel
from pdae_core.models.catalog import MODEL_TYPES, build_model, register_model
from pdae_core.models.checkpoint import read_config
from pdae_core.models.hparams import ModelConfig, hp
from pdae_core.models.module import PerturbationModule
from pdae_core.models.nn import mlp

SYNTHETIC = ["--dataset", "synthetic"] + [
    arg for opt in ("n_perturbations=3", "n_genes=10", "hidden=8", "latent_dim=2", "n_doubles=1",
                    "cells_per_condition=16", "noise_sd=0.1") for arg in ("--dataset-option", opt)
]


@dataclass
class ToyConfig(ModelConfig):
    n_genes: int
    n_perturbations: int
    width: int = hp(8, "hidden units of the encoder and decoder")
    shrink: float = hp(0.5, "weight of the latent penalty")

    def __post_init__(self) -> None:
        self._raise_failed([(self.width >= 1, "width must be >= 1"), (self.shrink >= 0, "shrink must be >= 0")])


class ToyModule(PerturbationModule):
    """An autoencoder with a 2-d latent space and additive latent shifts."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.enc = mlp([config.n_genes, config.width, 2])
        self.dec = mlp([2, config.width, config.n_genes])
        self.W = torch.nn.Linear(config.n_perturbations, 2, bias=False)

    def embed(self, x, labels):
        return self.enc(x) - self.W(labels)

    def transfer(self, x, labels, target, generator=None):
        return self.dec(self.embed(x, labels) + self.W(target))

    def loss(self, x, labels, shard=None):
        z = self.embed(x, labels)
        rec = ((self.dec(z + self.W(labels)) - x) ** 2).mean()
        return {"loss": rec + self.config.shrink * (z**2).mean(), "rec": rec}

    @property
    def perturbation_matrix(self):
        return self.W.weight


@pytest.fixture()
def toy():
    assert "toy" not in MODEL_TYPES

    @register_model
    class Toy(PerturbationModel):
        """A toy model, registered as a new module would register itself."""

        model_type = "toy"
        config_class = ToyConfig
        module_class = ToyModule

    yield Toy
    del MODEL_TYPES["toy"]


def test_the_command_line_trains_and_describes_a_new_model(toy, tmp_path, capsys):
    assert cli.main(["train", "--model", "toy", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--width" in help_text and "hidden units of the encoder and decoder" in help_text
    assert "--shrink" in help_text and "--w-pert" not in help_text

    out = tmp_path / "toy_ck"
    rc = cli.main(["train", *SYNTHETIC, "--model", "toy", "--width", "5", "--epochs", "2", "--batch-size", "32",
                   "--accelerator", "cpu", "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    cfg = read_config(out)
    assert cfg["model_type"] == "toy" and cfg["model_config"]["width"] == 5 and cfg["model_config"]["shrink"] == 0.5
    model = pc.load_model(out)
    assert isinstance(model, toy) and model.is_trained
    assert cli.main(["info", str(out)]) == 0
    assert "toy" in capsys.readouterr().out


def test_the_benchmark_and_the_dashboard_builder_find_a_new_model(toy, tiny_adata):
    assert "toy" in available_models()
    reg = pc.setup_anndata(tiny_adata, "condition")
    model = build_model("toy", reg, seed=1, width=4, latent_dim=3)  # latent_dim is another model's: dropped
    assert isinstance(model, toy) and model.config.width == 4
    model.fit(tiny_adata, holdout=["P1+P2"] if "P1+P2" in set(tiny_adata.obs.condition) else (), max_epochs=1)
    ctrl = tiny_adata[tiny_adata.obs.condition == "control"]
    pred = pc.predict(model, ctrl, "P1")
    assert pred.n_obs == ctrl.n_obs and np.isfinite(pred.X).all()
    assert list(pred.obs["source_cell"]) == list(ctrl.obs_names)


def test_the_benchmark_runs_a_new_model(toy, tmp_path, capsys):
    out = tmp_path / "bench"
    rc = cli.main(["benchmark", *SYNTHETIC, "--models", "toy,additive", "--seeds", "1", "--epochs", "2",
                   "--n-boot", "10", "--accelerator", "cpu", "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    from pdae_core.eval.benchmark import read_results

    per_condition = read_results(out).per_condition
    assert {"toy", "additive"} <= set(per_condition["model"])
    assert np.isfinite(per_condition.loc[per_condition["model"] == "toy", "energy_distance"]).all()
