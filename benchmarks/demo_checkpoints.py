"""The two bundled demo checkpoints on the five doubles they never saw: one PDAE network
(``checkpoints/norman19_devel``) and an ensemble of 5 (``checkpoints/norman19_devel_ensemble``),
both trained on the Norman 2019 slice without those doubles (commands in docs/benchmarks.md,
"The demo checkpoint").

Per held-out double, from all control cells (seed 0): the energy distance (ED) of the predicted
cells to the observed ones (for the ensemble, its pooled cells: each from a random network),
Pearson of the predicted and observed mean change from control over all genes, and the ensemble's
spread (root mean square over genes of the networks' standard deviation of the predicted change)
beside its error (root mean square over genes of its mean change minus the observed one); "no
change" (the control cells themselves) for scale.

A second table scores where each double departs from the sum of its parts, as Compose shows it
(``pair_interaction(...).genes_table``: the pair screen's 512 moved cells, its gene set, the observed
singles): Pearson over genes of the predicted and observed departure ``dAB - dA - dB``, beside the
best any uniform scaling of the sum could reach (``|Pearson(dA + dB, observed departure)|``) and, for
the ensemble, the share of genes whose observed departure lies within one spread across networks.
Prediction only: a few seconds.

    python benchmarks/demo_checkpoints.py --out benchmarks/results/demo_checkpoints.md
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = {"one network": "norman19_devel", "ensemble of 5": "norman19_devel_ensemble"}
HOLDOUT = ["KLF1+MAP2K6", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2", "KLF1+TGFBR2"]


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("PDAE_DATA_DIR"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import pdae_core as pc
    from pdae_core.data.datasets import load_dataset
    from pdae_core.eval.metrics import energy_distance

    adata = load_dataset("norman19_devel", data_dir=args.data_dir)
    models = {k: pc.load_model(ROOT / "checkpoints" / v) for k, v in CHECKPOINTS.items()}
    for k, m in models.items():  # the doubles must be unseen by both
        seen = set(m.train_conditions or [])
        if seen & set(HOLDOUT):
            raise SystemExit(f"{CHECKPOINTS[k]} trained on {sorted(seen & set(HOLDOUT))}: not a held-out check.")
    held = HOLDOUT
    ctrl = adata[adata.obs["condition"] == "control"]
    ctrl_x = dense(ctrl.X)
    lines = ["# The bundled demo checkpoints on their five held-out doubles", "",
             "norman19_devel, predicted from all control cells (seed 0); ED: energy distance to the observed cells "
             "(lower is better); Pearson: predicted vs observed mean change over all genes.", "",
             "| double | cells | ED one network | ED ensemble of 5 | ED no change | Pearson one network | "
             "Pearson ensemble | ensemble spread | ensemble error |", "|---|---|---|---|---|---|---|---|---|"]
    eds = {k: [] for k in models}
    spreads, errors = [], []
    for d in held:
        obs = dense(adata[adata.obs["condition"] == d].X)
        delta = obs.mean(0) - ctrl_x.mean(0)
        row = {}
        for k, m in models.items():
            pred = dense(m.predict(ctrl, d, seed=0).X)
            eds[k].append(energy_distance(pred, obs))
            row[k] = (eds[k][-1], float(np.corrcoef(pred.mean(0) - ctrl_x.mean(0), delta)[0, 1]))
        changes = models["ensemble of 5"].member_changes(ctrl, d, seed=0)
        spreads.append(float(np.sqrt((changes.std(0, ddof=1) ** 2).mean())))
        errors.append(float(np.sqrt(((changes.mean(0) - delta) ** 2).mean())))
        lines.append(f"| {d} | {len(obs)} | {row['one network'][0]:.4f} | {row['ensemble of 5'][0]:.4f} | "
                     f"{energy_distance(ctrl_x, obs):.4f} | {row['one network'][1]:.3f} | {row['ensemble of 5'][1]:.3f} | "
                     f"{spreads[-1]:.4f} | {errors[-1]:.4f} |")
    one, ens = np.array(eds["one network"]), np.array(eds["ensemble of 5"])
    lines += ["", f"- mean ED: one network {one.mean():.4f}, ensemble of 5 {ens.mean():.4f}; the ensemble is lower on "
              f"{int((ens < one).sum())} of {len(held)} doubles"]
    lines += departure_lines(models, adata, held)
    emit("\n".join(lines), args.out)


def departure_lines(models: dict, adata, held: list[str]) -> list[str]:
    """The second table: each held-out double's departure from the sum of its parts, predicted
    against observed (as Compose shows it)."""
    from pdae_core.eval.departure import departure_agreement
    from pdae_core.eval.pair_screen import pair_interaction

    lines = ["", "Where each double departs from the sum of its parts (Compose's gene view: 512 moved cells, "
             "expressed genes, the observed singles):", "",
             "| double | genes | Pearson one network | Pearson ensemble | best uniform scaling of the sum | "
             "ensemble: observed within one spread |", "|---|---|---|---|---|---|"]
    r = {k: [] for k in models}
    bound = []
    for d in held:
        a, b = d.split("+")
        tabs = {k: pair_interaction(m, adata, a, b).genes_table for k, m in models.items()}
        agree = {k: departure_agreement(t) for k, t in tabs.items()}
        for k in models:
            r[k].append(agree[k]["pearson"])
        bound.append(agree["one network"]["scaling"])
        t = tabs["ensemble of 5"]
        within = float(np.mean(np.abs(t["observed_departure"] - t["departure"]) <= t["departure_spread"]))
        lines.append(f"| {d} | {int(agree['one network']['genes'])} | {r['one network'][-1]:.3f} | "
                     f"{r['ensemble of 5'][-1]:.3f} | {bound[-1]:.3f} | {within:.0%} |")
    lines += ["", f"- mean Pearson of the departure: one network {np.mean(r['one network']):.3f}, ensemble of 5 "
              f"{np.mean(r['ensemble of 5']):.3f}, best uniform scaling {np.mean(bound):.3f} (an upper bound: its "
              "sign and size would have to be known in advance)"]
    return lines


if __name__ == "__main__":
    main()
