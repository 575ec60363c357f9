"""Cell level: does the pair screen rank held-out doubles better when a pair's predicted change is
compared with the *observed* changes of its singles (``single_effects="observed"``, the default
when the data measured them) or with the model's predictions of them (``"model"``, its own second
difference)? On ``schraivogel20`` (raw counts, normalised and log1p as the benchmark does), per
seed: 30% of the doubles held out (``combination_splits``, as ``pdae benchmark``), one PDAE trained
for 30 epochs on the rest, and the screen run both ways; Spearman of the predicted and observed
magnitude and normalised residual over the held-out doubles measured with at least 3 cells (and
their singles). About 6 minutes per seed on one thread:

    python benchmarks/single_effects.py --seeds 0 --threads 1 --rows benchmarks/results/single_effects/rows &
    python benchmarks/single_effects.py --seeds 1,2 --threads 1 --rows benchmarks/results/single_effects/rows
    python benchmarks/single_effects.py --report --rows benchmarks/results/single_effects/rows \\
        --out benchmarks/results/single_effects.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import emit  # noqa: E402

METRICS = ("magnitude", "normalised_residual")
MODES = ("model", "observed")


def run(seeds: list[int], rows: Path, threads: int | None, data_dir: str | None, epochs: int) -> None:
    import torch

    import pdae_core as pc
    from pdae_core.data.datasets import load_dataset
    from pdae_core.data.splits import combination_splits
    from pdae_core.eval.pair_screen import screen_pairs

    if threads:
        torch.set_num_threads(threads)
    adata = pc.preprocess(load_dataset("schraivogel20", data_dir=data_dir))
    rows.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        model = pc.PDAE.from_anndata(adata, "perturbation", "control", seed=seed)
        split = combination_splits(adata, model.registry, 0.3, seeds=(seed,))[0]
        t0 = time.perf_counter()
        model.fit(adata, holdout=split.test, max_epochs=epochs, accelerator="cpu", seed=seed)
        fit_s = time.perf_counter() - t0
        out = []
        for mode in MODES:
            tab = screen_pairs(model, adata, min_cells=3, single_effects=mode, seed=seed, progress_bar=False)
            held = tab[tab["held_out"] & tab["observed_magnitude"].notna()]
            out.append(held[["pair", *METRICS, *(f"observed_{m}" for m in METRICS)]].assign(mode=mode))
        pd.concat(out).assign(seed=seed, fit_seconds=fit_s, epochs=epochs).to_csv(rows / f"seed{seed}.csv", index=False)
        print(f"seed {seed}: {len(out[0])} held-out doubles, fit {fit_s:.0f} s", flush=True)


def report(rows: Path) -> str:
    df = pd.concat([pd.read_csv(f) for f in sorted(rows.glob("seed*.csv"))], ignore_index=True)
    seeds = sorted(df.seed.unique())
    lines = ["# Pair screen at the cell level: observed or predicted single effects (schraivogel20)", "",
             "- command: the seed runs in the docstring of benchmarks/single_effects.py, then this report",
             f"- seeds {', '.join(map(str, seeds))}: one PDAE per seed ({int(df.epochs.iloc[0])} epochs, "
             f"30% of the doubles held out, fit {df.fit_seconds.mean():.0f} s on average), "
             f"{', '.join(str(int((df.seed == s).sum() / len(MODES))) for s in seeds)} held-out doubles measured with "
             ">= 3 cells (and their singles); run side by side in processes of one thread (OMP_NUM_THREADS=1)",
             "- Spearman of the predicted with the observed metric over a seed's held-out doubles", "",
             "| metric | singles | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---|---|" + "---|" * (len(seeds) + 1)]
    for m in METRICS:
        for mode in MODES:
            vals = []
            for s in seeds:
                d = df[(df.seed == s) & (df["mode"] == mode)]
                vals.append(float(spearmanr(d[m], d[f"observed_{m}"])[0]))
            words = "the model's predicted singles" if mode == "model" else "the observed singles"
            lines.append(f"| {m.replace('_', ' ')} | {words} | " + " | ".join(f"{v:.3f}" for v in vals)
                         + f" | {np.mean(vals):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rows", type=Path, required=True)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--data-dir", default=os.environ.get("PDAE_DATA_DIR"))
    args = ap.parse_args(argv)
    if not args.report:
        run([int(s) for s in args.seeds.split(",")], args.rows, args.threads, args.data_dir, args.epochs)
        return 0
    emit(report(args.rows).rstrip(), str(args.out) if args.out else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
