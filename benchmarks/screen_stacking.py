"""Does the pair screen's stacked estimate rank unmeasured pairs better than the model alone?
Checked on held-out doubles of norman19_pseudobulk through the product path: for each fold of
the 126 doubles with both singles (the interaction benchmark's folds: ``double_folds``, 5 folds,
seed S), ``pdae_profile`` is trained as ``pdae train --level pseudobulk --ensemble 5 --cross-fit``
would train it, with the fold held out, and ``screen_pairs`` scores every pair; the held-out
doubles' rows are then compared with their observed metrics (the screen's ``observed_*``):

* Spearman of the observed magnitude and normalised residual with the model's own metric scored
  against the model's predicted singles (``single_effects="model"``) and against the observed ones
  (``magnitude``, ...), and with the stacked estimate (``magnitude_stacked``, ...), over all
  held-out doubles of a seed; 95% bootstrap intervals over doubles, and the paired difference;
* coverage of the intervals at the screen's level (80%): the conformal ones of the model's metric
  (``*_lo`` / ``_hi``) and the jackknife ones of the stacked estimate.

Only training doubles reach the stacker (the checkpoint's calibration record). One fold takes
about 3.5 minutes on one thread; run folds side by side with ``--threads 1``:

    python benchmarks/screen_stacking.py --seed 0 --folds 0,1,2 --threads 1 --rows benchmarks/results/screen_stacking/rows &
    python benchmarks/screen_stacking.py --seed 0 --folds 3,4 --threads 1 --rows benchmarks/results/screen_stacking/rows
    python benchmarks/screen_stacking.py --report --rows benchmarks/results/screen_stacking/rows \\
        --out benchmarks/results/screen_stacking.md
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


def run_folds(seed: int, folds: list[int], rows: Path, threads: int | None, data_dir: str | None,
              epochs: int | None = None) -> None:
    import torch

    from pdae_core.data.datasets import load_dataset
    from pdae_core.eval.pair_screen import screen_pairs
    from pdae_core.eval.pseudobulk import double_folds, profiles_from_anndata
    from pdae_core.models.pdae_profile import PDAEProfileModel, with_control_row

    if threads:
        torch.set_num_threads(threads)
    raw = load_dataset("norman19_pseudobulk", data_dir=data_dir)
    prof = with_control_row(raw)
    dealt = double_folds(profiles_from_anndata(prof), k=5, seed=seed)
    rows.mkdir(parents=True, exist_ok=True)
    for f in folds:
        t0 = time.perf_counter()
        model = PDAEProfileModel.from_anndata(prof, control_label="control", seed=seed, n_members=5, cross_fit=True)
        model.fit(prof, holdout=dealt[f], accelerator="cpu", **({"max_epochs": epochs} if epochs else {}))
        fit_s = time.perf_counter() - t0
        tab = screen_pairs(model, prof, seed=seed, level=0.8, progress_bar=False)
        own = screen_pairs(model, prof, seed=seed, level=0.8, progress_bar=False, single_effects="model")
        own = own.set_index("pair")[list(METRICS)].add_suffix("_model_singles")
        held = tab[tab["held_out"]].join(own, on="pair")
        held.insert(0, "seed", seed)
        held.insert(1, "fold", f)
        held["fit_seconds"], held["screen_seconds"] = fit_s, tab.attrs["seconds"]
        held["stacked_doubles"] = tab.attrs.get("stacked_doubles", 0)
        for m in METRICS:
            c = tab.attrs.get("stacked_check", {}).get(m, {})
            held[f"{m}_check_model"], held[f"{m}_check_stacked"] = c.get("model", np.nan), c.get("stacked", np.nan)
        held.to_csv(rows / f"seed{seed}_fold{f}.csv", index=False)
        print(f"seed {seed} fold {f}: {len(held)} held-out doubles, fit {fit_s:.0f} s, screen "
              f"{tab.attrs['seconds']:.1f} s", flush=True)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a, b)[0])


def _figures(per_seed: dict[int, pd.DataFrame], names: list[str] | None) -> np.ndarray:
    """Mean over seeds of the Spearman correlation of each prediction column with the observed one
    (the first column), over the doubles ``names`` (all when None; repeats count), and the
    difference of the last two."""
    out = []
    for d in per_seed.values():
        sub = d if names is None else d.reindex([n for n in names if n in d.index])
        o = sub.iloc[:, 0].to_numpy()
        out.append([_spearman(sub.iloc[:, k].to_numpy(), o) for k in (1, 2, 3)])
    f = np.mean(out, axis=0)
    return np.r_[f, f[2] - f[1]]


def _key(pair: str) -> str:
    return "+".join(sorted(p.strip() for p in pair.split("+")))


def _baseline_lines(df: pd.DataFrame, base: pd.DataFrame, path: Path, pairs: list[str],
                    draws: list[np.ndarray]) -> list[str]:
    """The baselines of the interaction benchmark on the same held-out doubles (same folds and seeds:
    ``double_folds``), against the screen's stacked estimate, paired."""
    df = df.assign(key=df.pair.map(_key))
    base = base.assign(key=base.double.map(_key))
    models = [m for m in ("linear", "heuristic", "propensity", "pair_kernel", "pdae_ensemble", "pdae_stacked")
              if m in set(base.model)]
    lines = ["", f"The interaction benchmark's rows on the same held-out doubles (`{path}`: same folds and seeds), "
             "against the screen's stacked estimate (paired: the same resampled doubles, 500 draws):", "",
             "| model | Spearman magnitude | Spearman normalised residual | screen stacked - model, magnitude | "
             "screen stacked - model, residual |", "|---|---|---|---|---|"]
    keys = [_key(p) for p in pairs]
    for model in models:
        cells = {}
        for m, bcol in (("magnitude", "magnitude"), ("normalised_residual", "residual")):
            per_seed = {}
            for s in sorted(df.seed.unique()):
                d = df[df.seed == s].set_index("key")
                b = base[(base.model == model) & (base.seed == s)].set_index("key")
                j = d[[f"observed_{m}", f"{m}_stacked"]].join(b[[f"{bcol}_pred"]], how="inner").dropna()
                per_seed[s] = j[[f"observed_{m}", f"{bcol}_pred", f"{bcol}_pred", f"{m}_stacked"]]  # _figures' columns
            est = _figures(per_seed, None)
            boots = np.asarray([_figures(per_seed, [keys[i] for i in idx]) for idx in draws[:500]])
            ci = np.nanpercentile(boots, [2.5, 97.5], axis=0)
            cells[m] = (f"{est[1]:.3f} [{ci[0, 1]:.3f}, {ci[1, 1]:.3f}]",
                        f"{est[3]:+.3f} [{ci[0, 3]:+.3f}, {ci[1, 3]:+.3f}]")
        lines.append(f"| {model} | {cells['magnitude'][0]} | {cells['normalised_residual'][0]} | "
                     f"{cells['magnitude'][1]} | {cells['normalised_residual'][1]} |")
    return lines


def report(rows: Path, n_boot: int = 2000, baselines: Path | None = None) -> str:
    files = sorted(rows.glob("seed*_fold*.csv"))
    if not files:
        raise SystemExit(f"no per-fold rows in {rows}")
    df = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    seeds = sorted(df.seed.unique())
    lines = ["# Pair screen: the stacked estimate on held-out doubles (norman19_pseudobulk)", "",
             "- command: see the docstring of benchmarks/screen_stacking.py (folds run side by side in two processes "
             "of one thread each, OMP_NUM_THREADS=1)",
             f"- {len(df)} held-out double predictions: seeds {', '.join(map(str, seeds))}, folds per seed "
             + ", ".join(f"{s}: {df[df.seed == s].fold.nunique()}" for s in seeds)
             + f"; a fold's model: pdae_profile, 5 cross-fitted networks, {df.stacked_doubles.min()}-"
             f"{df.stacked_doubles.max()} calibration doubles reach the stacker",
             f"- time per fold (one thread): fit {df.groupby(['seed', 'fold']).fit_seconds.first().mean():.0f} s, "
             f"screen of 5,356 pairs {df.groupby(['seed', 'fold']).screen_seconds.first().mean():.1f} s",
             "- Spearman over all held-out doubles of a seed, mean over seeds; [95% bootstrap interval: the doubles "
             f"resampled ({n_boot} times), the same draw for every seed and every column]", "",
             "| metric | model alone, its own singles | model alone | stacked | stacked - model (paired) | on the "
             "calibration doubles, model -> stacked (LOO) |",
             "|---|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    pairs = sorted(df.pair.unique())
    draws = [rng.integers(0, len(pairs), len(pairs)) for _ in range(n_boot)]
    for m in METRICS:
        cols = (f"{m}_model_singles", m, f"{m}_stacked")
        per_seed = {}  # seed -> (observed, the three predictions), indexed by pair
        for s in seeds:
            d = df[df.seed == s].set_index("pair")
            d = d[d[[*cols, f"observed_{m}"]].notna().all(1)]
            per_seed[s] = d[[f"observed_{m}", *cols]]
        est = _figures(per_seed, None)
        boots = np.asarray([_figures(per_seed, [pairs[i] for i in idx]) for idx in draws])
        ci = np.nanpercentile(boots, [2.5, 97.5], axis=0)
        chk = df.groupby(["seed", "fold"])[[f"{m}_check_model", f"{m}_check_stacked"]].first().mean()
        cell = [f"{est[k]:.3f} [{ci[0, k]:.3f}, {ci[1, k]:.3f}]" for k in range(3)]
        lines.append(f"| {m.replace('_', ' ')} | {' | '.join(cell)} | {est[3]:+.3f} [{ci[0, 3]:+.3f}, "
                     f"{ci[1, 3]:+.3f}] | {chk.iloc[0]:.3f} -> {chk.iloc[1]:.3f} |")
    if baselines is not None and baselines.is_file():
        lines += _baseline_lines(df, pd.read_csv(baselines), baselines, pairs, draws)
    lines += ["", "Coverage of the 80% intervals on the held-out doubles (all seeds):", "",
              "| metric | conformal interval of the model's metric | jackknife interval of the stacked estimate |",
              "|---|---|---|"]
    for m in METRICS:
        o = df[f"observed_{m}"]
        cov_m = ((o >= df[f"{m}_lo"]) & (o <= df[f"{m}_hi"]))[o.notna()].mean()
        cov_s = ((o >= df[f"{m}_stacked_lo"]) & (o <= df[f"{m}_stacked_hi"]))[o.notna()].mean()
        width_m = (df[f"{m}_hi"] - df[f"{m}_lo"]).median()
        width_s = (df[f"{m}_stacked_hi"] - df[f"{m}_stacked_lo"]).median()
        lines.append(f"| {m.replace('_', ' ')} | {cov_m:.1%} (median width {width_m:.3f}) | {cov_s:.1%} "
                     f"(median width {width_s:.3f}) |")
    lines += ["", "*Model alone, its own singles*: the pair's predicted change against the model's predicted singles "
              "(`--single-effects model`, the model's second difference); *model alone*: against the observed singles "
              "(the default when the data measured them); *stacked*: the corrected estimate (`--estimate stacked`). "
              "The last column of the first table is what `pdae interactions` prints for a screen: the same "
              "comparison on the model's own calibration doubles (out of fold), available without held-out data."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="training steps (default: the model type's, 150)")
    ap.add_argument("--rows", type=Path, required=True, help="folder of the per-fold held-out rows")
    ap.add_argument("--report", action="store_true", help="summarise the rows instead of running folds")
    ap.add_argument("--baselines", type=Path,
                    default=Path("benchmarks/results/norman19_pseudobulk_interactions/per_double.csv"),
                    help="per_double.csv of `pdae benchmark --task interactions` on the same data and seeds")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--data-dir", default=os.environ.get("PDAE_DATA_DIR"))
    args = ap.parse_args(argv)
    if not args.report:
        run_folds(args.seed, [int(f) for f in args.folds.split(",")], args.rows, args.threads, args.data_dir, args.epochs)
        return 0
    emit(report(args.rows, baselines=args.baselines).rstrip(), str(args.out) if args.out else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
