"""How much do the interaction figures depend on the genes they are computed over?

The interaction benchmark on ``norman19_pseudobulk`` computes every metric over all 2,000 genes of
the file. Norman et al. used the genes expressed in control; this file has no control profile, so
the nearest data-driven choice is the genes the perturbations move. This check restricts every
profile, observed metric, fit and choice to the ``N`` genes with the largest root mean square change
over the measured *singles* (singles are in every training fold, doubles play no part in the choice,
so the gene set leaks nothing of the held-out doubles) and scores, on the held-out doubles of the
benchmark's folds (5 folds of the 126 doubles with both singles, seeds 0-2):

* the Spearman of magnitude and normalised residual of the heuristic regression, the pair kernel,
  the PDAE ensemble's own metrics and ``pdae_stacked`` (the stacker blended with the pair kernel);
* the Pearson of the non-additive part of scaled additive, the pair kernel profile, the ensemble and
  ``pdae_stacked``'s per-gene profile;
* paired differences with bootstrap intervals over doubles;
* how reliably the observed metrics rank the doubles (:func:`split_half`): the Spearman, over the 126
  doubles, of each metric computed on one random half of the genes against the other half (50 splits).
  Noise independent across genes lowers it; a value near 1 says the ranking goals are not capped by
  measurement noise of that kind.

Every figure on all genes equals the benchmark's row. The folds' ensembles are those of
``benchmarks/kernel_departure.py`` and of ``benchmarks/double_weight.py --weight 1`` (the same fit;
about 2 minutes a fold on one thread): point ``--rows`` at either, or fit here::

    python benchmarks/gene_sets.py --seed 0 --threads 1 &
    python benchmarks/gene_sets.py --seed 1 --threads 1
    python benchmarks/gene_sets.py --seed 2 --threads 1
    python benchmarks/gene_sets.py --report --out benchmarks/results/gene_sets.md

The report itself takes about 30 s per gene set plus the bootstrap.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from double_weight import _cell, _figure  # noqa: E402
from kernel_departure import score as kernel_score  # noqa: E402
from nonadditive_mix import _boot, _profiles, fold_cli, run_seed  # noqa: E402

ROWS = "benchmarks/results/gene_sets/rows"
#: gene set sizes (the file has 2,000 genes: the first is all of them)
SIZES = (2000, 1000, 500, 200, 100)
RANKERS = (("heuristic", "heuristic regression"), ("pair_kernel", "pair kernel"),
           ("pdae_ensemble", "PDAE ensemble"), ("stacked", "PDAE stacked"))
SHAPES = (("scaled_additive", "scaled additive"), ("kernel_S_gene", "pair kernel profile"),
          ("ensemble", "PDAE ensemble"), ("per_gene", "PDAE stacked profile"))
GOALS = {"magnitude": 0.75, "residual": 0.80, "na": 0.60}


def responsive_genes(singles: np.ndarray, n: int) -> np.ndarray:
    """Positions (sorted) of the ``n`` genes with the largest root mean square over the rows of
    ``singles`` (the singles' changes from control); ties broken by position."""
    singles = np.asarray(singles, dtype=np.float64)
    if singles.ndim != 2 or not 1 <= n <= singles.shape[1]:
        raise ValueError(f"Need a (singles, genes) matrix and 1 <= n <= genes; got {singles.shape} and n={n}.")
    rms = np.sqrt(np.mean(singles**2, axis=0))
    return np.sort(np.argsort(-rms, kind="stable")[:n])


def score(rows: Path, data_dir: str | None) -> dict:
    """Per gene set size, the held-out rows of :func:`kernel_departure.score` on those genes; under
    ``"split_half"``, :func:`split_half` of all the genes."""
    P = _profiles(data_dir)
    singles = P.deltas[[i for i, p in enumerate(P.parts) if len(p) == 1]]
    scored = {n: kernel_score(rows, data_dir, genes=None if n >= P.n_genes else responsive_genes(singles, n))
              for n in SIZES if n <= P.n_genes}
    scored["split_half"] = split_half(P)
    return scored


def split_half(P, n_splits: int = 50, seed: int = 0) -> dict[str, float]:
    """Mean over ``n_splits`` random halvings of the genes of the Spearman, over the doubles with both
    singles, between a metric's observed values on one half and on the other."""
    from pdae_core.eval.pseudobulk.interaction_models import single_deltas
    from pdae_core.eval.pseudobulk.interaction_scores import double_figures

    doubles = P.eligible_doubles()
    parts = [(*single_deltas(P, d), P.deltas[P.index([d])[0]]) for d in doubles]
    rng = np.random.default_rng(seed)
    out = {"magnitude": [], "residual": []}
    for _ in range(n_splits):
        perm = rng.permutation(P.n_genes)
        halves = [[double_figures(a[h], b[h], ab[h]) for a, b, ab in parts] for h in np.array_split(perm, 2)]
        for m, k in (("magnitude", "magnitude"), ("residual", "normalised_residual")):
            out[m].append(spearmanr([f[k] for f in halves[0]], [f[k] for f in halves[1]])[0])
    return {m: float(np.mean(v)) for m, v in out.items()}


def _diff(metric: str, a: str, b: str):
    fa, fb = _figure(metric, a), _figure(metric, b)
    return lambda g: fa(g) - fb(g)


def report(scored: dict) -> str:
    scored = dict(scored)
    half = scored.pop("split_half", None)
    any_df = next(iter(scored.values()))
    lines = ["# The interaction figures on the genes the singles move most (norman19_pseudobulk)", "",
             f"The interaction benchmark's folds, {any_df['seed'].nunique()} seed(s), {any_df.groupby('seed').size().min()} "
             "held-out doubles each; every profile, metric and fit restricted to the N genes with the largest root mean "
             "square change over the measured singles. Mean over seeds, [95% bootstrap interval over doubles]. "
             "Command: the docstring of `benchmarks/gene_sets.py`.", ""]
    for title, metric, models in (("Spearman of magnitude", "magnitude", RANKERS),
                                  ("Spearman of normalised residual", "residual", RANKERS),
                                  ("Pearson of the non-additive part", "na", SHAPES)):
        lines += [f"{title} (goal {GOALS[metric]:.2f}):", "",
                  "| genes | " + " | ".join(name for _, name in models) + " |", "|---|" + "---|" * len(models)]
        for n, df in scored.items():
            lines.append(f"| {n} | " + " | ".join(_cell(_boot(df, _figure(metric, col))) for col, _ in models) + " |")
        lines.append("")
    pairs = (("magnitude", "stacked", "pair_kernel"), ("residual", "stacked", "pair_kernel"),
             ("magnitude", "stacked", "heuristic"), ("residual", "stacked", "heuristic"),
             ("na", "per_gene", "kernel_S_gene"), ("na", "per_gene", "scaled_additive"))
    lines += ["Paired differences (the same resampled doubles):", "",
              "| genes | " + " | ".join(f"{m}: {a} - {b}" for m, a, b in pairs) + " |", "|---|" + "---|" * len(pairs)]
    for n, df in scored.items():
        lines.append(f"| {n} | " + " | ".join(_cell(_boot(df, _diff(m, a, b)), True) for m, a, b in pairs) + " |")
    if half is not None:
        lines += ["", "Reliability of the observed ranking (all genes): Spearman between the metrics on two random halves "
                  f"of the genes, mean of 50 splits: magnitude {half['magnitude']:.3f}, normalised residual "
                  f"{half['residual']:.3f}."]
    return "\n".join(lines)


def main() -> None:
    fold_cli(__doc__, partial(run_seed, full=False), score, report, ROWS)


if __name__ == "__main__":
    main()
