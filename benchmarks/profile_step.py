"""Where a PDAE training step spends its time: torch.profiler over training steps.

Profiles ``--steps`` optimiser steps (after warm-up) of PDAE on synthetic data with
``--genes`` genes, batch 128, library defaults otherwise (``--grid full`` for the
reference grid), and prints the operators with the largest total CPU time, plus the
share of each part of the step (loss forward, backward, optimiser + EMA, batch reading).

    python benchmarks/profile_step.py --genes 500 --out benchmarks/results/profile_step.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from _report import emit
from torch.profiler import ProfilerActivity, profile, record_function

from pdae_core import PDAE
from pdae_core.data.synthetic import make_synthetic
from pdae_core.train.loop import Callback


class _Timer(Callback):
    def __init__(self) -> None:
        self.t: list[float] = []

    def on_step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        self.t.append(time.perf_counter())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, default=500)
    ap.add_argument("--grid", choices=["sampled", "full"], default="sampled")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    adata, _ = make_synthetic(n_genes=args.genes, seed=0)
    model = PDAE.from_anndata(adata, "condition", "control", seed=0, grid=args.grid)
    module = model.module
    orig_loss = module.loss

    def loss(*a, **k):
        with record_function("pdae.loss_forward"):
            return orig_loss(*a, **k)

    module.loss = loss  # label the forward pass in the trace
    model.fit(adata, max_steps=5, accelerator="cpu", eval_every=10**6)  # warm-up
    timer = _Timer()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.fit(adata, max_steps=args.steps, accelerator="cpu", eval_every=10**6, callbacks=[timer])
    step_s = float(np.median(np.diff(timer.t)))
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.top, max_name_column_width=40)
    lines = [
        f"PDAE ({args.grid} grid), {args.genes} genes, batch 128, {args.steps} profiled steps; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Median step {step_s * 1000:.1f} ms (with the profiler on).",
        "",
        "```",
        table,
        "```",
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
