"""Full B x B grid versus the sampled grid of the PDAE perturbation loss.

Three variants: the full grid; the sampled grid with 16 sources per target drawn
from the whole batch (``source_sampling="batch"``, an unbiased estimate of the full
grid); and the default sampled grid, whose sources all come from one other
condition of the batch (8 per target with the default stratified batches).

On the real Norman slice (norman19_devel, 500 genes, the five doubles with both
singles held out), batch 128: (1) seconds per training step of each variant;
(2) both trained for the same wall time with the same seed, then the validation
energy distance (held-out cells of the training conditions: what model choice
may use) and, for information only, the mean energy distance on the five
held-out doubles predicted from control cells.

    python benchmarks/grid_vs_sampled.py [--seconds 240] [--out benchmarks/results/grid_vs_sampled.md]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from _report import emit

from pdae_core import PDAE, setup_anndata
from pdae_core.data.datasets import load_dataset
from pdae_core.eval.metrics import energy_distance
from pdae_core.train.batches import stratified_batches

HOLDOUT = ["KLF1+MAP2K6", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2", "KLF1+TGFBR2"]


def step_time(model: PDAE, X: torch.Tensor, L: torch.Tensor, groups: np.ndarray, n: int = 20) -> float:
    """Median seconds per optimiser step on the training loop's stratified batches (8 cells per condition)."""
    opt = torch.optim.Adam(model.module.parameters(), lr=1e-4)
    batches = stratified_batches(groups, 128, 8, np.random.default_rng(0))
    times = []
    for i in range(n + 3):
        idx = torch.as_tensor(batches[i % len(batches)])
        t = time.perf_counter()
        out = model.module.loss(X[idx], L[idx])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seconds", type=float, default=240.0, help="wall time given to each variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    adata = load_dataset("norman19_devel", data_dir=args.data_dir)
    reg = setup_anndata(adata, "condition", "control")
    train = adata[~adata.obs["condition"].isin(HOLDOUT)]
    X = torch.as_tensor(reg.expression(train))
    L = torch.as_tensor(reg.label_matrix(train))
    groups = np.unique(np.asarray(train.obs["condition"]), return_inverse=True)[1]
    ctrl = adata[adata.obs["condition"] == "control"]
    variants = {
        "full": ({"grid": "full"}, "128 x 127"),
        "sampled, sources from the batch": ({"grid": "sampled", "source_sampling": "batch"}, "128 x 16"),
        "sampled, sources from one condition (default)": ({}, "128 x 8"),
    }
    rows = []
    for grid, (options, _passes) in variants.items():
        per_step = step_time(PDAE(reg, seed=args.seed, **options), X, L, groups)
        model = PDAE(reg, seed=args.seed, **options)
        hist = model.fit(adata, holdout=HOLDOUT, seed=args.seed, time_limit_s=args.seconds, accelerator="cpu")
        heldout = np.mean([
            energy_distance(model.predict(ctrl, c).X, reg.expression(adata[adata.obs["condition"] == c]))
            for c in HOLDOUT
        ])
        rows.append((grid, per_step, hist.steps, hist.seconds, hist.best_val, heldout))
        print(f"{grid}: {per_step:.3f} s/step, {hist.steps} steps in {hist.seconds:.0f} s, "
              f"best val ED {hist.best_val:.4f}, held-out doubles mean ED {heldout:.4f}", flush=True)
    lines = [
        f"Batch 128, 500 genes, {torch.get_num_threads()} CPU thread(s), {platform.machine()}; "
        f"each variant trained for {args.seconds:.0f} s (seed {args.seed}, library defaults otherwise).",
        "",
        "| grid | decoder passes / step | s / step | steps in budget | best validation ED | held-out doubles, mean ED |",
        "|---|---|---|---|---|---|",
    ]
    for grid, per_step, steps, _secs, val, held in rows:
        passes = variants[grid][1]
        lines.append(f"| {grid} | {passes} | {per_step:.3f} | {steps} | {val:.4f} | {held:.4f} |")
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
