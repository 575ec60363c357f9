"""Should the PDAE ensemble's training weight the doubles more than the singles?

On ``norman19_pseudobulk`` a mean-form PDAE trains on about 105 single profiles and 100
double profiles, each row counting once. ``PDAEProfile(double_weight=w)`` enters each double
``w`` times (its loss counts ``w`` times, and it is drawn as a source ``w`` times as often).
This check fits the interaction benchmark's ``pdae_ensemble`` (5 cross-fitted members, the
folds of ``pdae benchmark --dataset norman19_pseudobulk --task interactions``, seeds 0-2) with
each weight and reports, on the held-out doubles:

* the ensemble's own Spearman of magnitude and normalised residual (its mean prediction);
* ``pdae_stacked``'s (the stacker blended with the pair kernel, fed that ensemble's metrics);
* the Pearson of the non-additive part, the ensemble's own and ``pdae_stacked``'s per-gene
  profile (``w_g E + v_g S``);

and, as a choice could be made without the held-out doubles, the same on the training doubles
from the ensemble's out-of-fold predictions. Paired intervals against weight 1 on the doubles
both weights scored. Weight 1 is exactly ``benchmarks/kernel_departure.py``'s fit. One fold takes
about 2 minutes (weight 1), 3 (weight 3) or 6 (weight 6) on one thread; run seeds side by side::

    python benchmarks/double_weight.py --weight 1 --seed 0 --threads 1 &
    python benchmarks/double_weight.py --weight 3 --seed 0 --threads 1
    ...  (seeds 0, 1, 2 for weights 1 and 3; seeds 0 and 1 for weight 6)
    python benchmarks/double_weight.py --report --out benchmarks/results/double_weight.md
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernel_departure import score as kernel_score  # noqa: E402
from nonadditive_mix import _boot, _profiles, fold_cli, run_seed  # noqa: E402

ROWS = "benchmarks/results/double_weight/rows"


def _training_criteria(rows: Path, data_dir: str | None) -> pd.DataFrame:
    """Per fold, from the ensemble's out-of-fold predictions of its training doubles: the mean
    non-additive Pearson and the Spearman of magnitude and normalised residual."""
    from pdae_core.eval.departure import pearson_rows
    from pdae_core.eval.pseudobulk.interaction_models import single_deltas
    from pdae_core.eval.pseudobulk.interaction_scores import double_figures
    from pdae_core.eval.pseudobulk.profiles import train_conditions

    P = _profiles(data_dir)
    out = []
    for path in sorted(rows.glob("seed*_fold*.npz")):
        z = np.load(path)
        test, cal = [str(d) for d in z["test"]], [str(d) for d in z["calibration"]]
        train = P.subset(train_conditions(P, test))
        obs = train.deltas[train.index(cal)]
        S = np.vstack([np.add(*single_deltas(train, d)) for d in cal])
        figs = [(double_figures(*single_deltas(train, d), obs[j], "lstsq"),
                 double_figures(*single_deltas(train, d), z["oof"][j], "lstsq")) for j, d in enumerate(cal)]
        out.append({"file": path.stem, "na": float(np.nanmean(pearson_rows(z["oof"] - S, obs - S))),
                    **{m: spearmanr([o[k] for o, _ in figs], [p[k] for _, p in figs])[0]
                       for m, k in (("magnitude", "magnitude"), ("residual", "normalised_residual"))}})
    return pd.DataFrame(out)


def _ensemble_metrics(rows: Path, data_dir: str | None) -> pd.DataFrame:
    """The ensemble's own magnitude and normalised residual of each held-out double."""
    from pdae_core.eval.pseudobulk.interaction_models import single_deltas
    from pdae_core.eval.pseudobulk.interaction_scores import double_figures
    from pdae_core.eval.pseudobulk.profiles import train_conditions

    P = _profiles(data_dir)
    out = []
    for path in sorted(rows.glob("seed*_fold*.npz")):
        z = np.load(path)
        test = [str(d) for d in z["test"]]
        train = P.subset(train_conditions(P, test))
        mean = z["members"].mean(0)
        for j, d in enumerate(test):
            f = double_figures(*single_deltas(train, d), mean[j], "lstsq")
            out.append({"seed": int(path.stem.split("_")[0].removeprefix("seed")), "double": d,
                        "magnitude_ensemble": f["magnitude"], "residual_ensemble": f["normalised_residual"]})
    return pd.DataFrame(out)


def score(root: Path, data_dir: str | None) -> dict[int, tuple[pd.DataFrame, pd.DataFrame]]:
    """Per weight (``root/w<W>``): the held-out rows and the training criteria per fold."""
    out = {}
    for d in sorted(root.glob("w*"), key=lambda p: int(p.name[1:])):
        held = kernel_score(d, data_dir).merge(_ensemble_metrics(d, data_dir), on=["seed", "double"])
        out[int(d.name[1:])] = (held, _training_criteria(d, data_dir))
    return out


FIGURES = (("Spearman magnitude, ensemble", "magnitude", "ensemble"),
           ("Spearman residual, ensemble", "residual", "ensemble"),
           ("Spearman magnitude, pdae_stacked", "magnitude", "stacked"),
           ("Spearman residual, pdae_stacked", "residual", "stacked"),
           ("non-additive Pearson, ensemble", "na", "ensemble"),
           ("non-additive Pearson, pdae_stacked's profile", "na", "per_gene"))


def _figure(metric: str, col: str, suffix: str = ""):
    """frame -> the figure over its rows (columns of weight 1 carry ``suffix`` in a merged frame)."""
    if metric == "na":
        return lambda g: g[f"na_{col}{suffix}"].mean()
    return lambda g: spearmanr(g[f"{metric}_obs{suffix}"], g[f"{metric}_{col}{suffix}"])[0]


def _cell(v: tuple[float, float, float], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(v[0])} [{f.format(v[1])}, {f.format(v[2])}]"


def report(scored: dict[int, tuple[pd.DataFrame, pd.DataFrame]]) -> str:
    lines = ["# Weighting the doubles in the PDAE ensemble's training (norman19_pseudobulk)", "",
             "The interaction benchmark's folds; per weight, its seeds; mean over seeds, [95% bootstrap interval "
             "over doubles]. Command: the docstring of `benchmarks/double_weight.py` (processes of one thread, "
             "two side by side, OMP_NUM_THREADS=1).", ""]
    weights = sorted(scored)
    lines += ["| held-out doubles | " + " | ".join(f"weight {w} (seeds {', '.join(map(str, sorted(scored[w][0].seed.unique())))})"
                                                  for w in weights) + " |",
              "|---|" + "---|" * len(weights)]
    for name, metric, col in FIGURES:
        lines.append(f"| {name} | " + " | ".join(_cell(_boot(scored[w][0], _figure(metric, col))) for w in weights) + " |")
    lines += ["", "| training doubles, out of fold (mean over folds) | " + " | ".join(f"weight {w}" for w in weights) + " |",
              "|---|" + "---|" * len(weights)]
    for name, k in (("Spearman magnitude", "magnitude"), ("Spearman residual", "residual"), ("non-additive Pearson", "na")):
        lines.append(f"| {name} | " + " | ".join(f"{scored[w][1][k].mean():.3f}" for w in weights) + " |")
    if 1 in scored:
        lines += ["", "Paired against weight 1 (the same seeds and doubles, the same resampled doubles):", "",
                  "| difference | " + " | ".join(f"weight {w} - 1" for w in weights if w != 1) + " |",
                  "|---|" + "---|" * (len(weights) - 1)]
        for name, metric, col in FIGURES:
            cells = []
            for w in (w for w in weights if w != 1):
                m = scored[w][0].merge(scored[1][0], on=["seed", "double"], suffixes=("", "_base"))
                f, f_base = _figure(metric, col), _figure(metric, col, "_base")
                cells.append(_cell(_boot(m, lambda g, f=f, f_base=f_base: f(g) - f_base(g)), True))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fit(seed: int, folds: list[int], rows: Path, threads: int | None, data_dir: str | None, weight: int) -> None:
    run_seed(seed, folds, rows / f"w{weight}", threads, data_dir, full=False, double_weight=weight)


def main() -> None:
    fold_cli(__doc__, _fit, score, report, ROWS,
             {"--weight": dict(type=int, default=3, help="the doubles' weight; its folds go to ROWS/w<weight>")})


if __name__ == "__main__":
    main()
