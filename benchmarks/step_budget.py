"""Default training budget at 10,000, 50,000 and 200,000 cells: the same quality, flat wall time.

One generative model (``make_synthetic``, seed 0: 8 perturbations, every single, 12 doubles, ``--genes``
genes), sampled at each size (cells spread evenly over the 21 conditions); the first 4 doubles are held
out. PDAE is trained with the library defaults (``TrainConfig()``: 150 epochs or a 6,000-step budget,
whichever is fewer; early stopping) for each ``--seeds``. Each held-out double is predicted from the same
1,000 fresh control cells and scored against the same 1,000 fresh cells of the true double (both drawn
from the generative model, not from the training file), so the score is comparable across sizes:
energy distance, unbiased, mean over the 4 doubles. Next to it: the noise floor (two fresh samples of the
true double), "no change" (the control cells) and the gene-space additive baseline (fit on that size's
training cells).

    python benchmarks/step_budget.py --out benchmarks/results/step_budget.md
    python benchmarks/step_budget.py --quick      # smoke run: 2,100 and 4,200 cells, 60 steps

Run it alone (or with OMP_NUM_THREADS=1 next to other work, and say so): wall times are the point.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
import torch
from _report import cpu_model, emit

from pdae_core import PDAE, TrainConfig, setup_anndata
from pdae_core.data.synthetic import make_synthetic
from pdae_core.eval.metrics import energy_distance
from pdae_core.models.baselines import AdditiveBaseline


def cells_anndata(X: np.ndarray, condition: str, genes: pd.Index) -> ad.AnnData:
    obs = pd.DataFrame({"condition": [condition] * len(X)}, index=[f"{condition}_{i}" for i in range(len(X))])
    return ad.AnnData(X=X.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--eval-cells", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2,100 and 4,200 cells, 60 steps, one seed")
    ap.add_argument("--out", help="write the report here")
    args = ap.parse_args()
    train: dict = {}
    if args.quick:
        args.cells, args.genes, args.seeds, args.eval_cells = [2_100, 4_200], 50, [0], 200
        train = {"budget_steps": 60, "max_epochs": 10}
    defaults = TrainConfig(**train)
    rows, base_rows = [], []
    for n in args.cells:
        per = n // 21
        adata, truth = make_synthetic(n_genes=args.genes, cells_per_condition=per, seed=0)
        genes = adata.var_names
        doubles = [c for c in adata.obs["condition"].cat.categories if "+" in c]
        holdout = doubles[:4]
        source = cells_anndata(truth.sample("control", args.eval_cells, seed=777), "control", genes)
        observed = {d: truth.sample(d, args.eval_cells, seed=1000 + k) for k, d in enumerate(holdout)}
        reg = setup_anndata(adata, "condition", "control")
        if not base_rows:  # the same for every size: fresh cells only
            for k, d in enumerate(holdout):
                other = truth.sample(d, args.eval_cells, seed=5000 + k)
                base_rows.append({"double": d, "noise floor": energy_distance(other, observed[d]),
                                  "no change": energy_distance(source.X, observed[d])})
        additive = AdditiveBaseline().fit(adata, reg, holdout)
        add_ed = np.mean([energy_distance(additive.predict(source, d).X, observed[d]) for d in holdout])
        for seed in args.seeds:
            model = PDAE(reg, seed=seed)
            t0 = time.perf_counter()
            hist = model.fit(adata, holdout=holdout, seed=seed, accelerator="cpu", progress_bar=False, **train)
            wall = time.perf_counter() - t0
            ed = np.mean([energy_distance(model.predict(source, d, seed=seed).X, observed[d]) for d in holdout])
            rows.append({"cells": adata.n_obs, "seed": seed, "steps": hist.steps,
                         "epochs": hist.records[-1]["epoch"] if hist.records else 0,
                         "early stop": hist.stopped_early, "wall s": wall, "pdae ED": ed, "additive ED": add_ed,
                         "best val ED": hist.best_val})
            print(rows[-1], file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)
    base = pd.DataFrame(base_rows)
    lines = [
        "# Default training budget at growing numbers of cells",
        "",
        f"Machine: {cpu_model()}, os.cpu_count() = {os.cpu_count()}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} thread(s) (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); "
        f"Python {sys.version.split()[0]}.",
        "",
        f"Synthetic data (one generative model, {args.genes} genes, 21 conditions), 4 doubles held out; PDAE with the "
        f"library defaults (at most {defaults.max_epochs} epochs or {defaults.budget_steps} steps, whichever is "
        f"fewer, early stopping on validation). Held-out ED: mean over the 4 doubles of the energy distance between "
        f"{args.eval_cells} predicted cells (from fresh control cells) and {args.eval_cells} fresh cells of the true "
        "double; lower is better. Wall time: `fit` (validation included).",
        "",
        "| cells | seed | steps | epochs | early stop | wall s | held-out ED, PDAE | additive | best val ED |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['cells']:,} | {r['seed']} | {r['steps']} | {r['epochs']:g} | {'yes' if r['early stop'] else 'no'} "
                     f"| {r['wall s']:.0f} | {r['pdae ED']:.4f} | {r['additive ED']:.4f} | {r['best val ED']:.4f} |")
    summary = df.groupby("cells").agg(ed=("pdae ED", "mean"), sd=("pdae ED", "std"), wall=("wall s", "mean"))
    lines += ["", "Per size, mean over seeds (sd across seeds):", "",
              "| cells | held-out ED, PDAE | wall s |", "|---|---|---|"]
    for n, r in summary.iterrows():
        sd = "" if np.isnan(r["sd"]) else f" ({r['sd']:.4f})"
        lines.append(f"| {n:,} | {r['ed']:.4f}{sd} | {r['wall']:.0f} |")
    lines += ["", f"References (the same at every size): noise floor {base['noise floor'].mean():.4f}, "
              f"no change {base['no change'].mean():.4f} (means over the 4 held-out doubles)."]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
