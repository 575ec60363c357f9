"""Worker for tests/test_distributed.py: trains a small PDAE on synthetic data, in one
process (``python tests/ddp_worker.py OUT``) or data-parallel under torchrun
(``torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py OUT``), and writes the
per-step losses and final weights of each run (rank 0) to ``OUT.json``."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from pdae_core.data.registry import setup_anndata
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.pdae import PDAEConfig, PDAEModule
from pdae_core.train import distributed
from pdae_core.train.loop import Callback, TrainConfig, train_module


class Steps(Callback):
    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []

    def on_step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        self.losses.append(losses)


def main(out: str) -> None:
    world = distributed.init_from_env("gloo")
    adata, _ = make_synthetic(n_perturbations=4, n_genes=30, n_doubles=2, cells_per_condition=45, seed=0)
    reg = setup_anndata(adata, "condition", "control")
    X, L = reg.expression(adata), reg.label_matrix(adata)
    groups = np.unique(np.asarray(adata.obs["condition"]), return_inverse=True)[1]
    result = {"world": world}
    # the sampled grid with sources from one condition (default) or from the whole batch, and the full grid
    variants = {"sampled": {"grid": "sampled"}, "sampled_batch": {"grid": "sampled", "source_sampling": "batch"},
                "full": {"grid": "full"}}
    for grid, options in variants.items():
        torch.manual_seed(0)
        module = PDAEModule(PDAEConfig(n_genes=X.shape[1], n_perturbations=L.shape[1], hidden_dims=(32,),
                                       latent_dim=4, noise_dim=4, n_sources=8, **options))
        rec = Steps()
        # batch 61 with chunks of 5 cells: odd global batches, so the two ranks' slices differ in size
        cfg = TrainConfig(max_epochs=3, batch_size=61, cells_per_condition=5, lr=3e-3, seed=1,
                          accelerator="cpu", eval_every=1)
        hist = train_module(module, X, L, groups, cfg, [rec])
        result[grid] = {
            "losses": rec.losses,
            "val": [r.get("val_ed") for r in hist.records],
            "weights": {k: v.detach().double().flatten().tolist() for k, v in module.state_dict().items()},
        }
    if distributed.is_main_process():
        with open(out, "w") as f:
            json.dump(result, f)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
