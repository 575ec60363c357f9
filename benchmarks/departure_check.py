"""Where a held-out double departs from the sum of its parts, gene by gene, through the product
path (Compose's gene view, ``pdae interactions --pair``) on norman19_pseudobulk.

For each fold of the 126 doubles with both singles (the interaction benchmark's folds:
``double_folds``, 5 folds, seed S), ``pdae_profile`` is trained as ``pdae train --level pseudobulk
--ensemble 5 --cross-fit`` would train it, with the fold held out (as ``screen_stacking.py``), and
every held-out double gets ``pair_interaction(...).genes_table`` (all 2,000 genes, the observed
singles, 80% ranges). Per double it records:

* ``pearson``: Pearson over genes of the predicted and observed departure ``dAB - dA - dB`` (the
  interaction benchmark's non-additive Pearson), the departure as the gene view shows it:
  recalibrated gene by gene on the fold's training doubles when the calibration kept that step
  (``recalibrated``; :mod:`pdae_core.eval.departure_weights`); ``pearson_networks``: the same for
  the networks' own departure;
* ``scaled``: the same for the scaled additive baseline, ``alpha (dA + dB)`` with one ``alpha``
  fitted on the fold's training doubles (its departure is ``(alpha - 1)(dA + dB)``), and
  ``scaling_bound``, the most any uniform scaling could reach (``|Pearson(dA + dB, observed
  departure)|``);
* (``--report``) ``kernel``: the same for the ``pair_kernel_profile`` baseline, fitted to the fold's
  training profiles;
* ``covered``: the share of genes whose observed departure lies in its calibrated 80% range, and
  ``half_width``, the median half-width; ``within_spread``: the share within one spread across
  the networks (what an uncalibrated ensemble would show);
* the same Pearson over the 20 genes with the largest predicted departure (``pearson_top20``), and
  how many of those 20 have the observed departure's sign (``sign_top20``).

``--report`` summarises the rows: mean over seeds of the per-seed mean, 95% bootstrap intervals
over doubles, paired differences. One fold takes about 3.5 minutes on one thread; run seeds side
by side with ``--threads 1``:

    python benchmarks/departure_check.py --seed 0 --threads 1 --rows benchmarks/results/departure_check/rows &
    python benchmarks/departure_check.py --seed 1 --threads 1 --rows benchmarks/results/departure_check/rows
    python benchmarks/departure_check.py --seed 2 --threads 1 --rows benchmarks/results/departure_check/rows
    python benchmarks/departure_check.py --report --rows benchmarks/results/departure_check/rows \\
        --out benchmarks/results/departure_check.md
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


def run_folds(seed: int, folds: list[int], rows: Path, threads: int | None, data_dir: str | None) -> None:
    import torch

    from pdae_core.data.datasets import load_dataset
    from pdae_core.eval.departure import departure_agreement, pearson_over_genes
    from pdae_core.eval.pair_screen import pair_interaction
    from pdae_core.eval.pseudobulk import double_folds, profiles_from_anndata
    from pdae_core.eval.pseudobulk.models import ScaledAdditiveProfile
    from pdae_core.eval.pseudobulk.profiles import train_conditions
    from pdae_core.models.pdae_profile import PDAEProfileModel, with_control_row

    if threads:
        torch.set_num_threads(threads)
    prof = with_control_row(load_dataset("norman19_pseudobulk", data_dir=data_dir))
    profiles = profiles_from_anndata(prof)
    dealt = double_folds(profiles, k=5, seed=seed)
    rows.mkdir(parents=True, exist_ok=True)
    for f in folds:
        t0 = time.perf_counter()
        model = PDAEProfileModel.from_anndata(prof, control_label="control", seed=seed, n_members=5, cross_fit=True)
        model.fit(prof, holdout=dealt[f], accelerator="cpu")
        fit_s = time.perf_counter() - t0
        # the scaled additive baseline's one scale, fitted on the fold's training profiles
        alpha = ScaledAdditiveProfile().fit(profiles.subset(train_conditions(profiles, dealt[f]))).alpha_
        out = []
        for d in dealt[f]:
            a, b = d.split("+")
            t = pair_interaction(model, prof, a, b, genes="all", seed=seed, level=LEVEL).genes_table
            agree = departure_agreement(t)
            obs = t["observed_departure"].to_numpy()
            top = t.head(20)
            own = t["network_departure"].to_numpy() if "network_departure" in t else t["departure"].to_numpy()
            out.append({
                "seed": seed, "fold": f, "double": d, "genes": len(t), "pearson": agree["pearson"],
                "pearson_networks": pearson_over_genes(own, obs), "recalibrated": "network_departure" in t,
                "scaled": pearson_over_genes((alpha - 1.0) * t["sum_of_parts"].to_numpy(), obs), "alpha": alpha,
                "scaling_bound": agree["scaling"], "covered": agree["covered"],
                "half_width": float(np.median(t["departure_hi"] - t["departure"])),
                "within_spread": float(np.mean(np.abs(obs - t["departure"]) <= t["departure_spread"])),
                "pearson_top20": pearson_over_genes(top["departure"].to_numpy(), top["observed_departure"].to_numpy()),
                "sign_top20": int((np.sign(top["departure"]) == np.sign(top["observed_departure"])).sum()),
                "fit_seconds": fit_s,
            })
        pd.DataFrame(out).to_csv(rows / f"seed{seed}_fold{f}.csv", index=False)
        print(f"seed {seed} fold {f}: {len(out)} held-out doubles, fit {fit_s:.0f} s, "
              f"{time.perf_counter() - t0 - fit_s:.0f} s for their genes", flush=True)


def _boot(df: pd.DataFrame, cols: list[str], n_boot: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Per column, the 95% bootstrap interval of the mean over seeds of the per-seed mean
    (doubles resampled within each seed)."""
    rng = np.random.default_rng(seed)
    groups = [g for _, g in df.groupby("seed")]
    reps = {c: np.empty(n_boot) for c in cols}
    for i in range(n_boot):
        picks = [g.iloc[rng.integers(0, len(g), len(g))] for g in groups]
        for c in cols:
            reps[c][i] = np.mean([p[c].mean() for p in picks])
    return {c: (float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))) for c, r in reps.items()}


def kernel_pearsons(df: pd.DataFrame, data_dir: str | None) -> np.ndarray:
    """Per row, the departure Pearson of the ``pair_kernel_profile`` baseline (``PairKernelProfile``:
    the departures of the measured doubles of similar singles, recalibrated gene by gene), fitted to
    the fold's training profiles (the fold's held-out doubles are the rows' doubles)."""
    from pdae_core.data.datasets import load_dataset
    from pdae_core.eval.departure import pearson_rows
    from pdae_core.eval.pseudobulk import profiles_from_anndata
    from pdae_core.eval.pseudobulk.interaction_models import single_deltas
    from pdae_core.eval.pseudobulk.kernel_model import PairKernelProfile
    from pdae_core.eval.pseudobulk.profiles import train_conditions

    P = profiles_from_anndata(load_dataset("norman19_pseudobulk", data_dir=data_dir))
    out = np.full(len(df), np.nan)
    for _, g in df.groupby(["seed", "fold"]):
        held = g["double"].astype(str).tolist()
        train = P.subset(train_conditions(P, held))
        S = np.stack([np.add(*single_deltas(train, d)) for d in held])
        pred = PairKernelProfile().fit(train).predict(P.subset(held).labels)
        out[df.index.get_indexer(g.index)] = pearson_rows(pred - S, P.deltas[P.index(held)] - S)
    return out


def report(rows: Path, n_boot: int = 2000, data_dir: str | None = None) -> str:
    files = sorted(rows.glob("seed*_fold*.csv"))
    if not files:
        raise SystemExit(f"no per-fold rows in {rows}")
    df = pd.concat([pd.read_csv(p) for p in files], ignore_index=True)
    df["kernel"] = kernel_pearsons(df, data_dir)
    df["pearson_minus_scaled"] = df["pearson"] - df["scaled"]
    df["pearson_minus_kernel"] = df["pearson"] - df["kernel"]
    df["pearson_minus_bound"] = df["pearson"] - df["scaling_bound"]
    if "pearson_networks" not in df:  # rows written before the gene-by-gene recalibration
        df["pearson_networks"], df["recalibrated"] = df["pearson"], False
    df["pearson_minus_networks"] = df["pearson"] - df["pearson_networks"]
    df["networks_minus_kernel"] = df["pearson_networks"] - df["kernel"]
    cols = ["pearson", "pearson_networks", "scaled", "kernel", "scaling_bound", "pearson_minus_networks",
            "pearson_minus_scaled", "pearson_minus_kernel", "networks_minus_kernel", "pearson_minus_bound", "covered",
            "within_spread", "half_width", "pearson_top20", "sign_top20"]
    mean = {c: float(df.groupby("seed")[c].mean().mean()) for c in cols}
    ci = _boot(df, cols, n_boot)
    def fmt(c: str, p: int = 3) -> str:
        sign = "+" if "_minus_" in c else ""
        return f"{mean[c]:{sign}.{p}f} [{ci[c][0]:{sign}.{p}f}, {ci[c][1]:{sign}.{p}f}]"

    seeds = sorted(df["seed"].unique())
    lines = [
        "# Where held-out doubles depart from the sum of their parts: the product's gene view", "",
        f"norman19_pseudobulk, `pdae_profile` trained as `pdae train --level pseudobulk --ensemble 5 --cross-fit` with "
        f"each fold of the 126 doubles held out (the interaction benchmark's folds), seeds {', '.join(map(str, seeds))}: "
        f"{len(df)} (seed, double) rows; `pair_interaction(...).genes_table` over all {int(df['genes'].iloc[0])} genes "
        "against the observed singles. Mean over seeds of the per-seed mean, [95% bootstrap interval over doubles].", "",
        "| figure | value |", "|---|---|",
        f"| Pearson of predicted and observed departure, per double (the ensemble, as the gene view shows it) | "
        f"{fmt('pearson')} |",
        f"| the same for the networks' own departure (before the gene-by-gene recalibration) | {fmt('pearson_networks')} |",
        f"| the same for scaled additive, alpha fitted on the training doubles | {fmt('scaled')} |",
        f"| the same for the pair kernel profile baseline (the departures of measured doubles of similar singles; no model "
        f"of the profiles) | {fmt('kernel')} |",
        f"| the most any uniform scaling of the sum could reach (an upper bound) | {fmt('scaling_bound')} |",
        f"| paired: ensemble minus its networks' own departure | {fmt('pearson_minus_networks')} |",
        f"| paired: ensemble minus scaled additive | {fmt('pearson_minus_scaled')} |",
        f"| paired: ensemble minus the pair kernel profile | {fmt('pearson_minus_kernel')} |",
        f"| paired: the networks' own departure minus the pair kernel profile | {fmt('networks_minus_kernel')} |",
        f"| paired: ensemble minus the bound | {fmt('pearson_minus_bound')} |",
        f"| genes whose observed departure lies in its 80% range | {fmt('covered')} |",
        f"| median half-width of that range | {fmt('half_width')} |",
        f"| genes within one spread across the networks | {fmt('within_spread')} |",
        f"| Pearson over the 20 genes with the largest predicted departure | {fmt('pearson_top20')} |",
        f"| of those 20, how many depart in the observed direction | {fmt('sign_top20', 1)} |",
        "",
        f"- The ensemble is above the uniform-scaling bound on {int((df['pearson'] > df['scaling_bound']).sum())} of "
        f"{len(df)} rows; above scaled additive on {int((df['pearson'] > df['scaled']).sum())}; above the pair kernel "
        f"profile on {int((df['pearson'] > df['kernel']).sum())}.",
        f"- The gene view recalibrated the departure on {int(df.groupby(['seed', 'fold'])['recalibrated'].first().sum())} "
        f"of {df.groupby(['seed', 'fold']).ngroups} folds (kept when it beat the networks' own departures in "
        "cross-validation over the fold's training doubles).",
        f"- alpha per fold: {df.groupby(['seed', 'fold'])['alpha'].first().min():.3f} to "
        f"{df.groupby(['seed', 'fold'])['alpha'].first().max():.3f}; fit {df.groupby(['seed', 'fold'])['fit_seconds'].first().mean():.0f} s "
        "a fold on average.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-dir", default=os.environ.get("PDAE_DATA_DIR"))
    ap.add_argument("--rows", type=Path, required=True, help="folder of the per-fold held-out rows")
    ap.add_argument("--report", action="store_true", help="summarise the rows instead of running folds")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.report:
        emit(report(args.rows, data_dir=args.data_dir).rstrip(), str(args.out) if args.out else None)
    else:
        run_folds(args.seed, [int(f) for f in args.folds.split(",")], args.rows, args.threads, args.data_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
