"""The gene view's reweighted departure on cells: schraivogel20 through the product path.

``departure_check.py`` measures Compose's gene view (``pair_interaction(...).genes_table``) on the
Norman profiles. This check runs the same product path on the Schraivogel 2020 TAP-seq cells, whose
doubles have 1-25 cells each, so the observed departures that teach the reweighting
(:mod:`pdae_core.eval.departure_weights`) are noisy. For each seed it takes the cell-level
benchmark's split (``pdae benchmark --dataset schraivogel20``: 30% of the doubles with at least 4
cells held out, the rest and every single for training, normalised + log1p), trains the benchmark's
``pdae_ensemble`` (5 cross-fitted networks, 30 epochs, as ``pdae train --ensemble 5 --cross-fit``)
and, for every held-out double, records from its genes table (all 72 genes, the observed singles):

* ``pearson``: Pearson over genes of the departure the gene view shows with the observed departure
  (reweighted when the calibration kept the step: ``recalibrated``), ``pearson_networks``: the
  same for the networks' own departure, ``scaled``: for the scaled additive baseline (the
  cell-level benchmark's ``ScaledAdditiveBaseline``, ``alpha`` fitted on the training doubles);
* ``covered``: the share of genes whose observed departure lies in its 80% range at the double's
  own number of cells (``n_cells``).

Every held-out double counts (at least 4 cells, as the benchmark's rule; ``min_cells=4``). The
trained ensemble is kept in ``rows/seed<S>_model`` and reused when the seed is run again.

``--report`` pools the (seed, double) rows: means and 95% bootstrap intervals over doubles, paired
differences, and the same over the doubles with at least 10 cells. One seed takes about 18 minutes
on one thread (the five networks' training; two seeds side by side)::

    python benchmarks/departure_cells.py --seed 0 --threads 1 --rows benchmarks/results/departure_cells/rows &
    python benchmarks/departure_cells.py --seed 1 --threads 1 --rows benchmarks/results/departure_cells/rows
    python benchmarks/departure_cells.py --seed 2 --threads 1 --rows benchmarks/results/departure_cells/rows
    python benchmarks/departure_cells.py --report --rows benchmarks/results/departure_cells/rows \\
        --out benchmarks/results/departure_cells.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import emit  # noqa: E402

LEVEL = 0.8
EPOCHS = 30


def _data(data_dir: str | None):
    from pdae_core.data.datasets import load_dataset
    from pdae_core.data.defaults import dataset_defaults
    from pdae_core.data.registry import setup_anndata
    from pdae_core.eval.benchmark.run import _prepare
    from pdae_core.eval.benchmark.spec import BenchmarkSpec

    raw = load_dataset("schraivogel20", data_dir=data_dir)
    meta = dataset_defaults(raw)
    reg = setup_anndata(raw, meta.get("perturbation_key") or "condition", meta.get("control_label"))
    spec = BenchmarkSpec(dataset="schraivogel20", models=["pdae_ensemble"], seeds=[0, 1, 2],
                         train={"max_epochs": EPOCHS})
    adata, reg, _ = _prepare(raw, reg, spec)
    return adata, reg, spec


def run_seed(seed: int, rows: Path, threads: int | None, data_dir: str | None) -> None:
    import torch

    from pdae_core import load_model
    from pdae_core.eval.benchmark.run import make_splits
    from pdae_core.eval.departure import departure_agreement, pearson_over_genes
    from pdae_core.eval.pair_screen import pair_interaction
    from pdae_core.models.baselines import ScaledAdditiveBaseline
    from pdae_core.models.catalog import build_model

    if threads:
        torch.set_num_threads(threads)
    adata, reg, spec = _data(data_dir)
    rows.mkdir(parents=True, exist_ok=True)
    split = next(s for s in make_splits(adata, reg, spec) if s.seed == seed)
    t0 = time.perf_counter()
    saved = rows / f"seed{seed}_model"  # kept, so that the rows can be scored again without training
    if saved.exists():
        model, fit_s = load_model(saved), float("nan")
    else:
        model = build_model("pdae", reg, seed=seed, n_members=5, cross_fit=True)
        model.fit(adata, holdout=split.test, seed=seed, accelerator="cpu", max_epochs=EPOCHS)
        fit_s = time.perf_counter() - t0
        model.save(saved)
    # scaled additive: the cell-level benchmark's baseline, alpha fitted on the training doubles
    alpha = float(ScaledAdditiveBaseline().fit(adata, reg, split.test).alpha_)
    counts = pd.Series(np.asarray(adata.obs[reg.perturbation_key]).astype(str)).value_counts()
    cal = model.calibration
    out = []
    for d in split.test:
        a, b = reg.parse(d)
        t = pair_interaction(model, adata, a, b, genes="all", seed=seed, level=LEVEL,
                             min_cells=spec.min_test_cells).genes_table
        if "observed_departure" not in t:
            continue
        obs = t["observed_departure"].to_numpy()
        own = t["network_departure"].to_numpy() if "network_departure" in t else t["departure"].to_numpy()
        agree = departure_agreement(t)
        out.append({
            "seed": seed, "double": d, "n_cells": int(counts[d]), "pearson": agree["pearson"],
            "pearson_networks": pearson_over_genes(own, obs), "recalibrated": "network_departure" in t,
            "scaled": pearson_over_genes((alpha - 1.0) * t["sum_of_parts"].to_numpy(), obs), "alpha": alpha,
            "covered": agree["covered"], "calibration_doubles": cal.n,
            "cv_pearson": cal.departure.pearson if cal.departure is not None else np.nan,
            "cv_pearson_networks": cal.departure.pearson_networks if cal.departure is not None else np.nan,
            "fit_seconds": fit_s,
        })
    pd.DataFrame(out).to_csv(rows / f"seed{seed}.csv", index=False)
    print(f"seed {seed}: {len(out)} held-out doubles, {cal.n} calibration doubles, fit {fit_s:.0f} s", flush=True)


def _boot(df: pd.DataFrame, col: str, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``col`` over the pooled (seed, double) rows and its 95% bootstrap interval."""
    v = df[col].to_numpy(np.float64)
    v = v[np.isfinite(v)]
    rng = np.random.default_rng(seed)
    reps = [v[rng.integers(0, len(v), len(v))].mean() for _ in range(n_boot)]
    return float(v.mean()), float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975))


def report(rows: Path) -> str:
    files = sorted(rows.glob("seed*.csv"))
    if not files:
        raise SystemExit(f"no per-seed rows in {rows}")
    df = pd.concat([pd.read_csv(p) for p in files], ignore_index=True)
    df["reweighted_minus_networks"] = df["pearson"] - df["pearson_networks"]
    df["reweighted_minus_scaled"] = df["pearson"] - df["scaled"]
    df["networks_minus_scaled"] = df["pearson_networks"] - df["scaled"]
    per_seed = df.groupby("seed").first()
    lines = [
        "# The gene view's reweighted departure on cells: schraivogel20", "",
        f"The cell-level benchmark's splits (seeds {', '.join(map(str, sorted(df['seed'].unique())))}), the cross-fitted "
        f"ensemble of 5 ({EPOCHS} epochs), `pair_interaction(...).genes_table` over all 72 genes against the observed "
        f"singles: {len(df)} (seed, held-out double) rows, pooled. Mean, [95% bootstrap interval over rows]. "
        "Command: the docstring of `benchmarks/departure_cells.py` (one thread per process).", "",
        "| figure | all held-out doubles | those with >= 10 cells |", "|---|---|---|",
    ]
    big = df[df["n_cells"] >= 10]
    for col, label in (("pearson", "Pearson of the departure the gene view shows with the observed one"),
                       ("pearson_networks", "the same for the networks' own departure"),
                       ("scaled", "the same for scaled additive"),
                       ("reweighted_minus_networks", "paired: gene view minus the networks' own"),
                       ("reweighted_minus_scaled", "paired: gene view minus scaled additive"),
                       ("networks_minus_scaled", "paired: the networks' own minus scaled additive"),
                       ("covered", f"genes whose observed departure lies in its {LEVEL:.0%} range (at its cells)")):
        sign = "+" if "_minus_" in col else ""
        cells = []
        for part in (df, big):
            m, lo, hi = _boot(part, col)
            cells.append(f"{m:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "", f"- rows: {len(df)} (with >= 10 cells: {len(big)}); the departure was reweighted on "
        f"{int(per_seed['recalibrated'].sum())} of {len(per_seed)} seeds (kept when it beat the networks' own in "
        "cross-validation over the calibration doubles).",
        "- per seed: calibration doubles (>= 10 cells) "
        + ", ".join(f"{int(r.calibration_doubles)}" for r in per_seed.itertuples())
        + "; cross-validated Pearson on them, reweighted / networks' own: "
        + ", ".join(f"{r.cv_pearson:.3f} / {r.cv_pearson_networks:.3f}" for r in per_seed.itertuples())
        + f"; alpha {', '.join(f'{r.alpha:.3f}' for r in per_seed.itertuples())}"
        + f"; fit {per_seed['fit_seconds'].mean():.0f} s a seed on average.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-dir", default=os.environ.get("PDAE_DATA_DIR"))
    ap.add_argument("--rows", type=Path, required=True, help="folder of the per-seed held-out rows")
    ap.add_argument("--report", action="store_true", help="summarise the rows instead of running a seed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.report:
        emit(report(args.rows).rstrip(), str(args.out) if args.out else None)
    else:
        run_seed(args.seed, args.rows, args.threads, args.data_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
