"""Do doubles of similar singles depart from additivity alike, beyond what the PDAE ensemble knows?

``pair_kernel`` predicts a double's magnitude and normalised residual from the doubles of similar
singles. This check asks the same of the whole non-additive part ``N = dAB - dA - dB`` and of the
stacked magnitude, on the folds of ``pdae benchmark --dataset norman19_pseudobulk --task
interactions`` (5 folds of the 126 doubles with both singles, seeds 0-2). Each fold fits the
benchmark's ``pdae_ensemble`` (``PDAEEnsembleProfile``, 5 cross-fitted members) and keeps its
out-of-fold predictions of the training doubles and its members' predictions of the held-out ones.
``--report`` then scores the held-out doubles (training doubles only for every choice):

* ``ensemble``: the members' mean non-additive part ``E``;
* ``per_gene``: ``pdae_stacked``'s profile, ``w_g E + v_g S`` (``S = dA + dB``; ``gene_weights``);
* ``kernel``: the kernel departure of ``PairKernelProfile`` (the ``pair_kernel_profile`` baseline):
  kernel ridge regression of the training doubles' non-additive parts (all genes at once) with the
  pair kernel ``K(A+B, C+D) = k(A,C) k(B,D) + k(A,D) k(B,C)`` on the singles' directions, width and
  penalty by the leave-one-out Pearson of the training doubles: a weighted mean of the departures
  of doubles whose singles look alike;
* ``kernel_S_gene``: that baseline's profile, per gene a ridge regression of the training doubles'
  observed part on (kernel, S), shrunk towards one least-squares fit over all genes (shrinkage by
  5-fold cross-validation on the training doubles);
* ``ens_kernel_S_gene``: the same per-gene step on (E, kernel, S), the ensemble's out-of-fold and
  the kernel's leave-one-out predictions of the training doubles;

the Pearson over genes of each with the observed part (per double, mean over seeds), and the
Spearman of magnitude and normalised residual of ``pdae_stacked``'s stacker (``BlendedStacker`` with
the pair kernel) fed the ensemble's own metrics (as the benchmark) or the metrics of the
``ens_kernel_S_gene`` profile (cross-validated on the training doubles). One fold takes about 2
minutes on one thread; run seeds side by side with ``--threads 1``::

    python benchmarks/kernel_departure.py --seed 0 --threads 1 --rows benchmarks/results/kernel_departure/rows &
    python benchmarks/kernel_departure.py --seed 1 --threads 1 --rows benchmarks/results/kernel_departure/rows
    python benchmarks/kernel_departure.py --seed 2 --threads 1 --rows benchmarks/results/kernel_departure/rows
    python benchmarks/kernel_departure.py --report --rows benchmarks/results/kernel_departure/rows \\
        --out benchmarks/results/kernel_departure.md
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nonadditive_mix import _boot, _profiles, fold_cli, run_seed  # noqa: E402

PROFILES = ("ensemble", "per_gene", "kernel", "kernel_S_gene", "ens_kernel_S_gene")
SHRINKS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _cv_gene(X: np.ndarray, N: np.ndarray, shrink: float) -> np.ndarray:
    """5-fold cross-validated predictions of ``gene_ridge`` on the training doubles."""
    from pdae_core.eval.pseudobulk.kernel_model import gene_ridge

    pred = np.zeros(N.shape)
    for grp in np.array_split(np.random.default_rng(0).permutation(len(X)), 5):
        m = np.ones(len(X), dtype=bool)
        m[grp] = False
        pred[grp] = (X[grp] * gene_ridge(X[m], N[m], shrink)).sum(-1)
    return pred


def _gene_model(X: np.ndarray, N: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene ridge (shrinkage by 5-fold CV): the test predictions and the training doubles' CV ones."""
    from pdae_core.eval.pseudobulk.kernel_model import choose_ridge_shrink, gene_ridge

    shrink, _ = choose_ridge_shrink(X, N, SHRINKS)
    return (X_test * gene_ridge(X, N, shrink)).sum(-1), _cv_gene(X, N, shrink)


def score(rows: Path, data_dir: str | None, genes: np.ndarray | None = None) -> pd.DataFrame:
    """The held-out doubles' rows (module docstring). ``genes``: positions of the genes every profile,
    metric and fit is restricted to (None: all). Besides the profiles and stackers above, each row has
    the pair kernel alone (``pair_kernel``), the heuristic regression and scaled additive's
    non-additive part, for comparison on the same genes."""
    from dataclasses import replace

    from pdae_core.eval.departure import pearson_rows
    from pdae_core.eval.departure_weights import best_beta, choose_gene_shrink, gene_weights
    from pdae_core.eval.pair_kernel import PairKernelRegression
    from pdae_core.eval.pseudobulk.interaction_models import (
        HeuristicInteractionRegression,
        PDAEStackedRegression,
        single_deltas,
    )
    from pdae_core.eval.pseudobulk.interaction_scores import double_figures
    from pdae_core.eval.pseudobulk.kernel_model import (
        PairKernelProfile,
        observed_log_metrics,
        profile_singles,
    )
    from pdae_core.eval.pseudobulk.profiles import train_conditions
    from pdae_core.eval.stacking import BlendedStacker, log_metric, residual_as_numerator, sum_norm_feature

    P = _profiles(data_dir)
    g = slice(None) if genes is None else np.asarray(genes)
    if genes is not None:
        P = replace(P, deltas=P.deltas[:, g], genes=[P.genes[i] for i in g])
    betas = PDAEStackedRegression().betas

    def log_metrics(prof, doubles, profiles):
        figs = [double_figures(*single_deltas(profiles, d), prof[j], "lstsq") for j, d in enumerate(doubles)]
        return log_metric(np.array([[f["magnitude"], f["normalised_residual"]] for f in figs]))

    out = []
    for path in sorted(rows.glob("seed*_fold*.npz")):
        z = np.load(path)
        z = {"test": z["test"], "calibration": z["calibration"], "oof": z["oof"][:, g], "members": z["members"][..., g]}
        seed, fold = (int(t.removeprefix(pre)) for t, pre in zip(path.stem.split("_"), ("seed", "fold")))
        test, cal = [str(d) for d in z["test"]], [str(d) for d in z["calibration"]]
        train = P.subset(train_conditions(P, test))
        S_tr = np.vstack([np.add(*single_deltas(train, d)) for d in cal])
        S_te = np.vstack([np.add(*single_deltas(train, d)) for d in test])
        na_tr, na_te = train.deltas[train.index(cal)] - S_tr, P.deltas[P.index(test)] - S_te
        E_tr, E_te = z["oof"] - S_tr, z["members"].mean(0) - S_te
        kern = PairKernelProfile().fit(train)
        K_tr = kern.kernel_loo_[[kern.doubles_.index(d) for d in cal]]
        K_te = kern.kernel_departures([tuple(P.parts[i]) for i in P.index(test)])
        choice = (kern.gamma_, kern.penalty_)
        beta = best_beta(E_tr, S_tr, na_tr, betas)
        w, v = gene_weights(E_tr, S_tr, na_tr, beta, choose_gene_shrink(E_tr, S_tr, na_tr, betas)[0])
        ks_te = kern.predict(P.subset(test).labels) - S_te  # pair_kernel_profile: all its training doubles
        eks_te, eks_tr = _gene_model(np.stack((E_tr, K_tr, S_tr), -1), na_tr, np.stack((E_te, K_te, S_te), -1))
        na = {"ensemble": E_te, "per_gene": w * E_te + v * S_te, "kernel": K_te, "kernel_S_gene": ks_te,
              "ens_kernel_S_gene": eks_te}
        r = {k: pearson_rows(p, na_te) for k, p in na.items()}
        # the stacker of pdae_stacked, fed the ensemble's own metrics or those of the E + kernel + S profile
        heur = HeuristicInteractionRegression()
        F_tr, F_te = heur._features(train, cal), heur._features(train, test)
        parts_tr, parts_te = [d.split("+") for d in cal], [d.split("+") for d in test]
        fed = {"stacked": (log_metrics(z["oof"], cal, train),
                           np.mean([log_metrics(m, test, train) for m in z["members"]], 0)),
               "stacked_kernel_profile": (log_metrics(S_tr + eks_tr, cal, train), log_metrics(S_te + eks_te, test, train))}
        alpha = float(np.sum(S_tr * train.deltas[train.index(cal)]) / np.sum(S_tr**2))
        r["scaled_additive"] = pearson_rows((alpha - 1.0) * S_te, na_te)
        h = heur.fit(train).predict_metrics(train, test)
        stacked = {"heuristic": log_metric(np.column_stack([h["magnitude"], h["normalised_residual"]])),
                   "pdae_ensemble": log_metrics(z["members"].mean(0), test, train)}
        for k, (m_tr, m_te) in fed.items():
            st = BlendedStacker(kernel=PairKernelRegression()).fit(
                m_tr, F_tr, parts_tr, observed_log_metrics(train, cal, "lstsq"), profile_singles(train),
                sum_norm_feature(F_tr))
            stacked[k] = st.predict(m_te, F_te, parts_te, sum_norm_feature(F_te))
            if k == "stacked":  # its kernel alone is the pair_kernel baseline (fitted on the same targets)
                stacked["pair_kernel"] = residual_as_numerator(st.kernel_.predict(parts_te), sum_norm_feature(F_te), -1.0)
        obs = observed_log_metrics(P, test, "lstsq")
        for j, d in enumerate(test):
            row = {"seed": seed, "fold": fold, "double": d, "kernel_gamma": choice[0], "kernel_penalty": choice[1],
                   "magnitude_obs": obs[j, 0], "residual_obs": obs[j, 1],
                   **{f"na_{k}": float(x[j]) for k, x in r.items()}}
            for k, p in stacked.items():
                row[f"magnitude_{k}"], row[f"residual_{k}"] = p[j, 0], p[j, 1]
            out.append(row)
    return pd.DataFrame(out)


def report(df: pd.DataFrame) -> str:
    n_seeds, n = df["seed"].nunique(), df.groupby("seed").size().min()
    lines = ["# Doubles of similar singles: the pair kernel on the whole non-additive part", "",
             f"norman19_pseudobulk, the interaction benchmark's folds: {n_seeds} seed(s), {n} held-out doubles each; "
             "mean over seeds, [95% bootstrap interval over doubles]. Command: the docstring of "
             "`benchmarks/kernel_departure.py` (two processes of one thread each, OMP_NUM_THREADS=1).", "",
             "| non-additive part | Pearson with the observed one |", "|---|---|"]
    for k in PROFILES:
        v = _boot(df, lambda g, k=k: g[f"na_{k}"].mean())
        lines.append(f"| {k} | {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}] |")
    lines += ["", "| paired difference | value |", "|---|---|"]
    for a, b in (("ens_kernel_S_gene", "per_gene"), ("kernel_S_gene", "ensemble"), ("kernel", "ensemble")):
        v = _boot(df, lambda g, a=a, b=b: (g[f"na_{a}"] - g[f"na_{b}"]).mean())
        lines.append(f"| {a} - {b} | {v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}] |")
    lines += ["", "| stacker fed | Spearman magnitude | Spearman normalised residual |", "|---|---|---|"]
    for k in ("stacked", "stacked_kernel_profile"):
        cells = []
        for m in ("magnitude", "residual"):
            v = _boot(df, lambda g, m=m, k=k: spearmanr(g[f"{m}_obs"], g[f"{m}_{k}"])[0])
            cells.append(f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    picks = df.groupby(["seed", "fold"])[["kernel_gamma", "kernel_penalty"]].first().value_counts()
    lines += ["", "Kernel width, penalty chosen on the training doubles (folds): "
              + ", ".join(f"{g:g}, {p:g} ({c})" for (g, p), c in picks.items()),
              "", "`stacked` is the benchmark's `pdae_stacked` magnitude and residual (the same rows); "
              "`stacked_kernel_profile` feeds its stacker the metrics of the `ens_kernel_S_gene` profile instead of "
              "the ensemble's own."]
    return "\n".join(lines)


def main() -> None:
    fold_cli(__doc__, partial(run_seed, full=False), score, report, "benchmarks/results/kernel_departure/rows")


if __name__ == "__main__":
    main()
