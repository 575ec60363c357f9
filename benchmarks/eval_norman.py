"""PDAE on the real Norman 2019 slice: the five held-out doubles versus baselines.

Loads the bundled checkpoint `checkpoints/norman19_devel` (trained with those five
doubles held out; see docs/benchmarks.md for the command that reproduces it) or, with
`--train`, trains a fresh PDAE with library defaults. Each held-out double is
predicted from the control cells and compared with its observed cells: energy
distance (unbiased, 95% bootstrap interval over cells) of PDAE, the gene-space
additive baseline, the linear baseline and "no change", the noise floor, and the
paired bootstrap difference PDAE - additive (an interval above 0 means PDAE is
significantly worse).

    python benchmarks/eval_norman.py [--data-dir ../shared/data] [--out benchmarks/results/norman19_devel_pdae.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _report import emit

from pdae_core import PDAE, load_model, setup_anndata
from pdae_core.data.datasets import load_dataset
from pdae_core.eval.heldout import gap_closed, heldout_comparison, markdown_table
from pdae_core.models.baselines import AdditiveBaseline, LinearBaseline, NoChange

HOLDOUT = ["KLF1+MAP2K6", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2", "KLF1+TGFBR2"]
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "norman19_devel"))
    ap.add_argument("--train", action="store_true", help="train a fresh PDAE instead of loading the checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    adata = load_dataset("norman19_devel", data_dir=args.data_dir)
    reg = setup_anndata(adata, "condition", "control")
    if args.train:
        model = PDAE(reg, seed=args.seed)
        t0 = time.perf_counter()
        model.fit(adata, holdout=HOLDOUT, seed=args.seed)
        origin = f"trained here in {time.perf_counter() - t0:.0f} s (seed {args.seed})"
    else:
        model = load_model(args.checkpoint, adata=adata)
        if sorted(model.holdout) != sorted(HOLDOUT):
            raise SystemExit(f"{args.checkpoint} was trained with holdout {model.holdout}, expected {HOLDOUT}")
        origin = f"checkpoint {Path(args.checkpoint).relative_to(REPO) if Path(args.checkpoint).is_absolute() else args.checkpoint}"
    preds = {
        "pdae": model,
        "additive": AdditiveBaseline().fit(adata, reg, HOLDOUT),
        "linear": LinearBaseline().fit(adata, reg, HOLDOUT),
        "no change": NoChange().fit(adata, reg, HOLDOUT),
    }
    table = heldout_comparison(adata, reg, preds, HOLDOUT, reference="additive", n_boot=args.n_boot, seed=args.seed)
    gap = gap_closed(table, "pdae")
    pd_rows = table[table.method == "pdae"].set_index("condition")
    worse = [c for c in HOLDOUT if pd_rows.loc[c, "diff_lo"] > 0]
    better = [c for c in HOLDOUT if pd_rows.loc[c, "diff_hi"] < 0]
    lines = [
        f"norman19_devel, five held-out doubles predicted from the {int((adata.obs['condition'] == 'control').sum())} "
        f"control cells; PDAE from {origin}.",
        "",
        "Energy distance to the observed cells (unbiased; 95% bootstrap interval over cells, "
        f"{args.n_boot} replicates; lower is better). Last column: PDAE - additive, paired bootstrap:",
        "",
        markdown_table(table, reference="additive"),
        "",
        "Share of the gap between 'no change' and the noise floor that PDAE leaves open: "
        + ", ".join(f"{c} {gap[c]:.3f}" for c in HOLDOUT) + ".",
        "",
        f"PDAE significantly worse than additive on {len(worse)}/5 ({', '.join(worse) or 'none'}), "
        f"significantly better on {len(better)}/5 ({', '.join(better) or 'none'}).",
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
