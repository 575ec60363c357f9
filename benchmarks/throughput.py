"""Training throughput of PDAE (sampled and full grid) and each peer model.

For each gene count, one synthetic dataset (``make_synthetic``: control, 8 singles
and 12 doubles, ``--cells-per-condition`` cells each). Every model is built with its
library defaults and trained through the shared loop (``model.fit``, batch 128,
default validation split). A callback times each optimiser step with
``time.perf_counter()`` (the time between consecutive ``on_step`` calls; the first
step from ``on_train_start``, so it includes the input scaling and is always a
warm-up step when ``--warmup`` >= 1). The ``--warmup`` first steps are dropped;
``eval_every`` and ``max_epochs`` are set so that no validation runs inside the
timed window. Reported per (genes, model): median seconds per step, cells per
second (batch size / median step), seconds per epoch (steps per epoch of this
dataset's training cells x median step). ``pdae-bf16`` and ``pdae-compile`` are the
default PDAE with ``precision="bf16-mixed"`` or ``compile=True`` (on a CPU, whether
they help at all is what this measures).

    python benchmarks/throughput.py --out benchmarks/results/throughput.md
    python benchmarks/throughput.py --quick   # smoke test: 100 genes, 5 steps

A script, never a test: timings depend on the machine (named in the report's header).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch
from _report import cpu_model, emit

import pdae_core
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.catalog import MODEL_TYPES
from pdae_core.train.loop import Callback, TrainConfig, resolve_device, split_cells

# benchmark name -> (registered model type, hyperparameters beyond the defaults, TrainConfig options)
MODELS: dict[str, tuple[str, dict, dict]] = {
    "pdae": ("pdae", {"grid": "sampled"}, {}),
    "pdae-all-genes": ("pdae", {"grid": "sampled", "gene_sample": 0}, {}),  # every gene scored each step
    "pdae-full": ("pdae", {"grid": "full"}, {}),
    "pdae-bf16": ("pdae", {"grid": "sampled"}, {"precision": "bf16-mixed"}),
    "pdae-compile": ("pdae", {"grid": "sampled"}, {"compile": True}),
    "samsvae": ("samsvae", {}, {}),
    "sccvae": ("sccvae", {}, {}),
    "fcr": ("fcr", {}, {}),
}


class StepTimer(Callback):
    """Wall time of every optimiser step, and the loop's steps per epoch."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.times: list[float] = []
        self.steps_per_epoch = 0
        self.evaluations = 0
        self._last = 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_start(self, max_epochs: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self._last = self._now()

    def on_step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        now = self._now()
        self.times.append(now - self._last)
        self._last = now

    def on_evaluation(self, record: dict[str, float]) -> None:
        self.evaluations += 1  # only the one after the last step is expected


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def time_model(name: str, adata, args: argparse.Namespace, cuda: bool) -> dict:
    model_type, hyper, train_opts = MODELS[name]
    model = MODEL_TYPES[model_type].from_anndata(adata, "condition", "control", seed=args.seed, **hyper)
    timer = StepTimer(cuda)
    n_steps = args.warmup + args.steps
    model.fit(
        adata, max_steps=n_steps, max_epochs=10**6, eval_every=10**6, accelerator=args.accelerator,
        seed=args.seed, callbacks=[timer], **train_opts,
    )
    if len(timer.times) != n_steps:
        raise RuntimeError(f"{name}: {len(timer.times)} steps ran, {n_steps} expected")
    if timer.evaluations > 1:
        raise RuntimeError(
            f"{name}: {timer.evaluations} validations ran; only one, after the last step, was expected"
        )
    timed = np.asarray(timer.times[args.warmup:])
    med = float(np.median(timed))
    return {
        "model": name,
        "s_step": med,
        "min_step": float(timed.min()),
        "max_step": float(timed.max()),
        "cells_s": args.batch_size / med,
        "s_epoch": timer.steps_per_epoch * med,
        "steps_per_epoch": timer.steps_per_epoch,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=30, help="timed optimiser steps per model")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    ap.add_argument("--cells-per-condition", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--accelerator", default="cpu", help="cpu, cuda or cuda:N (as TrainConfig.accelerator)")
    ap.add_argument("--out", default=None, help="also write the markdown report here")
    ap.add_argument("--quick", action="store_true", help="smoke test: 100 genes, 5 + 2 warm-up steps")
    args = ap.parse_args()
    if args.quick:
        args.genes, args.steps, args.warmup = [100], 5, 2
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    device = resolve_device(args.accelerator)
    cuda = device.type == "cuda"
    defaults = TrainConfig()
    args.batch_size = defaults.batch_size

    rows = []
    n_cells = n_train = n_conditions = 0
    for n_genes in args.genes:
        adata, _ = make_synthetic(
            n_genes=n_genes, cells_per_condition=args.cells_per_condition, seed=args.seed
        )
        groups = np.unique(adata.obs["condition"].astype(str).to_numpy(), return_inverse=True)[1]
        rng = np.random.default_rng(0)  # the split's sizes do not depend on the draw
        train_idx, _ = split_cells(groups, defaults.val_fraction, rng, defaults.val_max_cells)
        n_cells, n_train, n_conditions = adata.n_obs, len(train_idx), int(groups.max()) + 1
        for name in args.models:
            row = time_model(name, adata, args, cuda)
            row["genes"] = n_genes
            row["cells"] = adata.n_obs
            rows.append(row)
            print(
                f"{n_genes} genes, {name}: {row['s_step'] * 1e3:.1f} ms/step, {row['cells_s']:.0f} cells/s, "
                f"{row['s_epoch']:.2f} s/epoch", file=sys.stderr, flush=True,
            )

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [
        f"Machine: {platform.platform()}; CPU {cpu_model()}; os.cpu_count() {os.cpu_count()}; "
        f"torch.get_num_threads() {torch.get_num_threads()}; torch {torch.__version__}; "
        f"pdae_core {pdae_core.__version__}; device {device_name(device)}.",
        "",
        f"Command: `{command}`",
        "",
        f"Data: make_synthetic (seed {args.seed}), {n_conditions} conditions x "
        f"{args.cells_per_condition} cells = {n_cells} cells, of which {n_train} train "
        f"(validation fraction {defaults.val_fraction}); "
        f"batch {args.batch_size}; library defaults otherwise. Median of {args.steps} timed optimiser steps "
        f"after {args.warmup} warm-up steps; cells/s = batch size / median step; "
        "s/epoch = steps per epoch x median step.",
        "",
        "| genes | model | cells | steps / epoch | s / step (median) | s / step (min - max) | cells / s "
        "| s / epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['genes']} | {r['model']} | {r['cells']} | {r['steps_per_epoch']} | {r['s_step']:.4f} | "
            f"{r['min_step']:.4f} - {r['max_step']:.4f} | {r['cells_s']:.0f} | {r['s_epoch']:.2f} |"
        )
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
