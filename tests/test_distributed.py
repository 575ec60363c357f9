"""Data-parallel training with torch.distributed: 2 CPU processes (gloo, launched by
torchrun) against 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pdae_core.train.distributed import Shard, split_sizes

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}


def _run(cmd: list[str], timeout: int = 300) -> None:
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def _torchrun(n: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict]:
    d = tmp_path_factory.mktemp("ddp")
    _run([sys.executable, str(HERE / "ddp_worker.py"), str(d / "one.json")])
    _run(_torchrun(2, str(HERE / "ddp_worker.py"), str(d / "two.json")))
    return json.loads((d / "one.json").read_text()), json.loads((d / "two.json").read_text())


@pytest.mark.parametrize("grid", ["sampled", "sampled_batch", "full"])
def test_two_gloo_processes_follow_the_single_process_trajectory(runs, grid):
    one, two = runs
    assert one["world"] == 1 and two["world"] == 2
    a, b = one[grid], two[grid]
    assert len(a["losses"]) == len(b["losses"]) > 10
    for key in ("loss", "pert", "rec", "prior", "l21"):
        x = np.array([s[key] for s in a["losses"]])
        y = np.array([s[key] for s in b["losses"]])
        # same global batch, same draws: equal up to float32 summation order
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5, err_msg=f"{grid}: {key} trajectory")
    np.testing.assert_allclose(b["val"], a["val"], rtol=1e-5)
    for name, w in a["weights"].items():
        np.testing.assert_allclose(b["weights"][name], w, atol=1e-5, err_msg=name)
    assert a["losses"][-1]["loss"] < a["losses"][0]["loss"]  # it trained


def test_split_sizes_and_shard_offsets():
    assert split_sizes(61, 2) == (31, 30)
    assert split_sizes(5, 3) == (2, 2, 1)
    sh = Shard(split_sizes(61, 2), rank=1)
    assert (sh.offset, sh.local_size, sh.global_size, sh.world_size) == (31, 30, 61, 2)


def test_sharded_loss_of_one_rank_is_the_plain_loss():
    """A one-rank shard must give exactly the unsharded loss (no rescaling slips in)."""
    from pdae_core.models.pdae import PDAEConfig, PDAEModule

    torch.manual_seed(0)
    m = PDAEModule(PDAEConfig(n_genes=12, n_perturbations=3, hidden_dims=(16,), latent_dim=4))
    x, lab = torch.rand(9, 12), torch.randint(0, 2, (9, 3)).float()

    class OneRank(Shard):
        def gather(self, t):
            return t

    torch.manual_seed(1)
    plain = m.loss(x, lab)
    torch.manual_seed(1)
    sharded = m.loss(x, lab, OneRank((9,), 0))
    for k in plain:
        torch.testing.assert_close(sharded[k], plain[k], rtol=1e-6, atol=1e-6)


def test_cli_train_under_torchrun_saves_one_checkpoint(tmp_path):
    from pdae_core import load_model
    from pdae_core.data.synthetic import make_synthetic

    adata, _ = make_synthetic(n_perturbations=3, n_genes=20, n_doubles=1, cells_per_condition=30, seed=2)
    adata.write_h5ad(tmp_path / "d.h5ad")
    _run(_torchrun(2, "-m", "pdae_core.cli", "train", "--data", str(tmp_path / "d.h5ad"), "--out",
                   str(tmp_path / "ckpt"), "--epochs", "2", "--hidden-dims", "16", "--latent-dim", "3",
                   "--accelerator", "cpu", "-q"))
    model = load_model(tmp_path / "ckpt")
    assert model.is_trained and model.history.steps > 0
    pred = model.predict(adata[adata.obs["condition"] == "control"], "P1+P2")
    assert pred.n_obs == 30 and np.isfinite(pred.X).all()
