"""How reproducible a pair screen is: the rank agreement of every pair's predicted interaction
between two seeds (other control cells, other decoder noise), for several numbers of moved cells.

A cell-level model predicts a pair's mean changes from a sample of control cells moved with
decoder noise, so its interaction metrics carry Monte Carlo noise; two seeds that rank the pairs
differently show how much. Prints, per number of moved cells, the Spearman correlation between
seeds of the magnitude and of the normalised residual over all pairs, the standard deviation of
the seed-to-seed difference, and the seconds per screen; with the singles' observed changes (the
default when the data measured them) and with the model's predicted ones.

    python benchmarks/screen_agreement.py --out benchmarks/results/screen_agreement.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch
from scipy.stats import spearmanr

import pdae_core as pc
from pdae_core.data.datasets import load_dataset
from pdae_core.eval.pair_screen import cells_per_network, screen_pairs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import emit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/norman19_devel")
    ap.add_argument("--dataset", default="norman19_devel")
    ap.add_argument("--data-dir", default=os.environ.get("PDAE_DATA_DIR"))
    ap.add_argument("--cells", default="100,128,512,1000", help="numbers of moved cells per pair, comma-separated")
    ap.add_argument("--seeds", default="0,1", help="the two seeds compared")
    ap.add_argument("--single-effects", default="observed,model",
                    help="the screen's single effects to compare, comma-separated (observed, model)")
    ap.add_argument("--note", default="", help="a line added under the header (e.g. what else ran on the machine)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    adata = load_dataset(args.dataset, data_dir=args.data_dir)
    model = pc.load_model(args.checkpoint, adata)
    s0, s1 = (int(s) for s in args.seeds.split(","))
    n_ctrl = int((adata.obs[model.registry.perturbation_key].astype(str) == model.registry.control_label).sum())
    lines = ["# Pair screen: agreement between two seeds", "",
             f"- model: `{args.checkpoint}` ({model.n_members} network(s)), dataset `{args.dataset}` ({n_ctrl:,} control "
             f"cells); seeds {s0} and {s1}; machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
             f"{torch.get_num_threads()}", *([f"- {args.note}"] if args.note else []), "",
             "| single effects | moved cells per pair | per network | pairs | Spearman, magnitude | Spearman, normalised "
             "residual | sd of the difference, magnitude | sd of the difference, residual | seconds per screen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, n in ((m, int(c)) for m in args.single_effects.split(",") for c in args.cells.split(",")):
        tabs, secs = [], []
        for seed in (s0, s1):
            t0 = time.perf_counter()
            tabs.append(screen_pairs(model, adata, n_cells=n, seed=seed, progress_bar=False,
                                     single_effects=mode).sort_values("pair"))
            secs.append(time.perf_counter() - t0)
        row = [mode, f"{n:,}", f"{cells_per_network(n, model.n_members):,}", f"{len(tabs[0]):,}"]
        for key in ("magnitude", "normalised_residual"):
            row.append(f"{spearmanr(tabs[0][key], tabs[1][key])[0]:.3f}")
        for key in ("magnitude", "normalised_residual"):
            row.append(f"{np.std(tabs[0][key].to_numpy() - tabs[1][key].to_numpy()):.4f}")
        row.append(f"{np.mean(secs):.2f}")
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
