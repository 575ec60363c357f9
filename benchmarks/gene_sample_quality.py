"""Does scoring a random subset of the genes per step cost quality? PDAE trained with the energy
scores on every gene (``gene_sample=0``) and on a fresh random 2,000 per step (the default), same
data, seed and step budget, scored on every gene.

Data: ``make_synthetic`` (seed 0, ``--genes`` genes, 300 cells per condition, 21 conditions), the
first 4 doubles held out; each held-out double predicted from 1,000 fresh control cells and scored
against 1,000 fresh cells of the true double (energy distance, unbiased, mean over the 4 doubles),
as in ``benchmarks/step_budget.py``.

    python benchmarks/gene_sample_quality.py --out benchmarks/results/gene_sample_quality.md
    python benchmarks/gene_sample_quality.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from _report import cpu_model, emit
from step_budget import cells_anndata

from pdae_core import PDAE, setup_anndata
from pdae_core.data.synthetic import make_synthetic
from pdae_core.eval.metrics import energy_distance
from pdae_core.models.baselines import AdditiveBaseline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 300 genes (sample 100), 30 steps")
    ap.add_argument("--out")
    args = ap.parse_args()
    sample = 2000
    if args.quick:
        args.genes, args.steps, sample = 300, 30, 100
    adata, truth = make_synthetic(n_genes=args.genes, cells_per_condition=300, seed=0)
    doubles = [c for c in adata.obs["condition"].cat.categories if "+" in c][:4]
    source = cells_anndata(truth.sample("control", 1000, seed=777), "control", adata.var_names)
    observed = {d: truth.sample(d, 1000, seed=1000 + k) for k, d in enumerate(doubles)}
    floor = np.mean([energy_distance(truth.sample(d, 1000, seed=5000 + k), observed[d]) for k, d in enumerate(doubles)])
    reg = setup_anndata(adata, "condition", "control")
    additive = AdditiveBaseline().fit(adata, reg, doubles)
    add = np.mean([energy_distance(additive.predict(source, d).X, observed[d]) for d in doubles])
    rows = []
    for gs in (0, sample):
        model = PDAE(reg, seed=args.seed, gene_sample=gs)
        t0 = time.perf_counter()
        hist = model.fit(adata, holdout=doubles, seed=args.seed, budget_steps=args.steps, accelerator="cpu",
                         progress_bar=False)
        wall = time.perf_counter() - t0
        ed = np.mean([energy_distance(model.predict(source, d, seed=0).X, observed[d]) for d in doubles])
        rows.append((gs, hist.steps, wall, ed, hist.best_val))
        print(rows[-1], file=sys.stderr, flush=True)
    lines = [
        "# Scoring every gene or a random subset per step",
        "",
        f"Machine: {cpu_model()}, os.cpu_count() = {os.cpu_count()}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} thread(s) (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}).",
        "",
        f"Synthetic data, {args.genes:,} genes, {adata.n_obs:,} cells, 4 doubles held out; PDAE defaults except "
        f"`gene_sample`, {args.steps} steps (`budget_steps`), seed {args.seed}. Held-out ED on every gene "
        "(lower is better).",
        "",
        "| genes scored per step | steps | wall s | held-out ED | best val ED |",
        "|---|---|---|---|---|",
    ]
    for gs, steps, wall, ed, val in rows:
        lines.append(f"| {'all' if gs == 0 else f'{gs:,} (random)'} | {steps} | {wall:.0f} | {ed:.4f} | {val:.4f} |")
    lines += ["", f"References: additive {add:.4f}, noise floor {floor:.4f}."]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
