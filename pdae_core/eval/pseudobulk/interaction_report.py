"""Files of the interaction benchmark (``pdae benchmark --task interactions``):
``per_double.csv`` (:func:`.interactions_track.run_interaction_benchmark`'s rows),
``summary.csv`` (every figure in long form) and ``summary.md``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .interaction_scores import (
    RANK_METRICS,
    interaction_differences,
    interactions_markdown,
    summarise_interactions,
    uncertainty_summary,
)

__all__ = ["interaction_tables", "write_interaction_tables"]


def interaction_tables(df: pd.DataFrame, n_boot: int = 2000, random: bool = True
                       ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(summary, differences, uncertainty, long)``: the three tables of
    :mod:`.interaction_scores` and all their figures in one long table (columns
    ``table, model, baseline, figure, value, sd, lo, hi, p_above, n_doubles, n_seeds``)."""
    summary = summarise_interactions(df, n_boot=n_boot, random_draws=1000 if random else 0)
    diffs = interaction_differences(df, n_boot=n_boot)
    unc = uncertainty_summary(df, n_boot=n_boot)
    long = []
    for r in summary.to_dict("records"):
        for m in RANK_METRICS:
            long.append({"table": "summary", "model": r["model"], "baseline": "", "figure": m, "value": r[m],
                         "sd": r[f"{m}_sd"], "lo": r[f"{m}_lo"], "hi": r[f"{m}_hi"], "p_above": math.nan,
                         "n_doubles": r["n_doubles"], "n_seeds": r["n_seeds"]})
        long.append({"table": "summary", "model": r["model"], "baseline": "", "figure": "fit_seconds",
                     "value": r["fit_seconds"], "n_doubles": r["n_doubles"], "n_seeds": r["n_seeds"]})
    for r in diffs.to_dict("records"):
        for m in RANK_METRICS:
            long.append({"table": "difference", "model": r["model"], "baseline": r["baseline"], "figure": m,
                         "value": r[m], "lo": r[f"{m}_lo"], "hi": r[f"{m}_hi"], "p_above": r[f"{m}_p_above"]})
    for r in unc.to_dict("records"):
        long.append({"table": "uncertainty", "model": "pdae_ensemble", "baseline": "", "figure": r["figure"],
                     "value": r["value"], "lo": r["lo"], "hi": r["hi"]})
    cols = ["table", "model", "baseline", "figure", "value", "sd", "lo", "hi", "p_above", "n_doubles", "n_seeds"]
    long_df = pd.DataFrame(long).reindex(columns=cols)
    long_df[["n_doubles", "n_seeds"]] = long_df[["n_doubles", "n_seeds"]].astype("Int64")
    return summary, diffs, unc, long_df


def _choices(df: pd.DataFrame) -> list[str]:
    """One line per model that chose something on its training profiles: how often each choice."""
    out = []
    for name, g in df.groupby("model", sort=False):
        sel = g.groupby(["seed", "fold"])["selected"].first().fillna("")
        if (sel != "").any() and sel.str.fullmatch(r"alpha=[-+.0-9e]+").all():
            a = sel.str.slice(6).astype(float)
            out.append(f"  - {name}: alpha from {a.min():.3f} to {a.max():.3f}")
        elif (sel != "").any():
            counts = sel.value_counts()
            more = f"; {len(counts) - 4} other choice(s) ({int(counts.iloc[4:].sum())}x)" if len(counts) > 4 else ""
            out.append(f"  - {name}: " + "; ".join(f"{k} ({v}x)" for k, v in counts.iloc[:4].items()) + more)
    return out


#: The goal of issue 15 for the ensemble: (figure, threshold).
GOAL = (("spearman_magnitude", 0.75), ("spearman_residual", 0.80), ("nonadditive_pearson", 0.60))


def _goal_line(summary: pd.DataFrame, diffs: pd.DataFrame, model: str = "pdae_ensemble") -> list[str]:
    """Whether ``model`` reaches :data:`GOAL`, and beats every baseline that has the figure
    with a paired interval above 0."""
    if model not in set(summary["model"]):
        return []
    row = summary.set_index("model").loc[model]
    parts = []
    for m, thr in GOAL:
        d = diffs[(diffs["model"] == model) & diffs[m].notna()] if len(diffs) else diffs
        beaten = [str(b) for b, lo in zip(d.get("baseline", []), d.get(f"{m}_lo", [])) if lo > 0]
        rest = [str(b) for b in d.get("baseline", []) if str(b) not in beaten]
        parts.append(f"{m} {row[m]:.3f} (goal >= {thr}: {'reached' if row[m] >= thr else 'not reached'}; "
                     f"paired interval above 0 against {', '.join(beaten) or 'none'}"
                     + (f", not against {', '.join(rest)}" if rest else "") + ")")
    return [f"- goal of issue 15 for {model}: " + "; ".join(parts)]


def write_interaction_tables(df: pd.DataFrame, out: Path, *, name: str, profiles: Any, models: Sequence[str],
                             seeds: Sequence[int], folds: int, members: int, method: str, n_boot: int = 2000) -> None:
    """Write ``per_double.csv``, ``summary.csv`` and ``summary.md`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "per_double.csv", index=False, float_format="%.6g")
    summary, diffs, unc, long = interaction_tables(df, n_boot=n_boot, random="random" in models)
    order = {m: i for i, m in enumerate(models)}
    summary = summary.sort_values("model", key=lambda c: c.map(order).fillna(len(order)), kind="stable")
    summary.attrs["top"] = 10
    long.to_csv(out / "summary.csv", index=False)
    n_doubles = len(profiles.eligible_doubles())
    header = [
        f"# Interaction benchmark: {name}", "",
        f"- {profiles.n_conditions} condition profiles x {profiles.n_genes} genes; {n_doubles} doubles with both "
        f"singles measured, dealt into {folds} folds per seed (seeds {', '.join(map(str, seeds))}); each double is "
        "predicted once per seed by models fitted to every other profile (all singles, the other folds' doubles)",
        f"- for each held-out double, its interaction is computed from the predicted and from the observed change "
        f"with the observed singles dA, dB in both cases: magnitude sqrt(c1^2 + c2^2) of dAB ~ c1 dA + c2 dB "
        f"({'least squares' if method == 'lstsq' else 'Theil-Sen'}, Norman et al. 2019), normalised residual "
        "||dAB - dA - dB|| / ||dA + dB||, and the Pearson correlation over genes of the predicted and observed "
        "non-additive part dAB - dA - dB; all genes",
        "- precision@10: of the 10 doubles with the largest (synergy) or smallest (buffering) observed magnitude, "
        "the fraction among the 10 largest (smallest) predicted",
        f"- models: {', '.join(models)}",
    ]
    notes = [
        "",
        "- additive: dAB = dA + dB gives c1 = c2 = 1 for every double, so it cannot rank doubles (n/a): it "
        "ranks at random, which is the random row (expected Spearman 0, precision@10 10/n).",
        "- scaled_additive: alpha (dA + dB) with one alpha per fold (fitted on the training doubles): the same "
        "magnitude for every double of a fold, so it cannot rank either; its non-additive part, "
        "(alpha - 1)(dA + dB), is a real prediction (most doubles are sub-additive).",
        "- heuristic: ridge regression of each observed metric of the training doubles on features of the two "
        "singles (log smaller / larger norm, their ratio, cosine of dA and dB, log norm of dA + dB; penalty by "
        "leave-one-out on the training doubles); it predicts metrics, not profiles (no non-additive part).",
        "- propensity: ridge regression of the log of each observed metric of the training doubles on which "
        "perturbations the double holds (log m(A+B) = mu + u_A + u_B; penalty by leave-one-out): how each "
        "perturbation tends to combine, learnt from the other doubles it is part of; metrics only, as heuristic.",
        "- partners (PartnerProfile): dA + dB plus a (dA + dB) + b P + c G, where P is the mean non-additive part "
        "(dCD - dC - dD) of the training doubles that share a perturbation with the double and G that of every "
        "training double; a, b, c by least squares over genes and the training doubles (each leaving itself out "
        "of its own P and G): how each gene departs from additivity in the doubles of the same perturbations, "
        "without a model of the profiles.",
        "- pair_kernel (PairKernelInteractionRegression): kernel ridge regression of each log observed metric of "
        "the training doubles over pairs of singles, K(A+B, C+D) = k(A,C) k(B,D) + k(A,D) k(B,C) with k a Gaussian "
        "kernel on an embedding of each single's change (its direction; its first 10 or 20 principal components "
        "over all singles), width and penalty by leave-one-out, the three embeddings blended with convex weights "
        "fitted to their leave-one-out predictions: doubles of similar singles combine alike; metrics only.",
        "- pair_kernel_profile (PairKernelProfile): dA + dB plus w_g D + v_g (dA + dB), where D is a kernel ridge "
        "regression of the training doubles' non-additive parts (all genes at once) with the same pair kernel on "
        "the singles' directions (width and penalty by the leave-one-out Pearson of the training doubles), and "
        "w_g, v_g a per-gene ridge regression of the training doubles' observed non-additive part on their "
        "leave-one-out D and dA + dB, shrunk towards one fit over all genes (shrinkage by 5-fold cross-validation "
        "on the training doubles): the departures of doubles of similar singles, without a model of the profiles.",
        "- pdae: the PDAE mean form as in the pseudobulk benchmark (PDAEProfile: latent size 32 or 128 and "
        "step chosen by the Pearson delta of 10% of the training doubles). pdae_ensemble (PDAEEnsembleProfile): "
        f"{members} cross-fitted members (member m trained without 1/{members} of the training doubles, which it "
        "predicts); the step and the prediction source (all training profiles or the control moved) are chosen "
        "per fold by the interaction scores of those out-of-fold predictions (training doubles only); "
        "prediction = mean of the members' predicted changes; latent size 256 and 150 steps were set on the "
        "out-of-fold scores of the training doubles of the first fold of seed 0 (see its docstring).",
        "- pdae_stacked (PDAEStackedRegression): the same ensemble's out-of-fold log magnitude and log normalised "
        "residual of every training double, with the heuristic's features and the propensity's indicators, in one "
        "ridge regression of each log observed metric of the training doubles (two penalties by leave-one-out); "
        "a held-out double gets the members' mean log metrics; that regression and pair_kernel's kernel models "
        "are blended with convex weights fitted to their leave-one-out predictions of the training doubles. "
        "Its profile is dA + dB plus the ensemble's "
        "non-additive part E recalibrated gene by gene, w_g E + v_g (dA + dB): per gene a ridge regression of the "
        "training doubles' observed non-additive part on their out-of-fold E and dA + dB, shrunk towards (1, beta) "
        "(beta by the out-of-fold non-additive Pearson; the shrinkage by 5-fold cross-validation on the training "
        "doubles).",
        "- choices made on the training profiles of each fold (count over seeds x folds):",
        *_choices(df),
    ]
    notes += _goal_line(summary, diffs) + _goal_line(summary, diffs, "pdae_stacked")
    unc_notes = []
    if len(unc):
        unc_notes += [
            "",
            "- spread = mean over genes of the sd of the members' predicted changes; error = "
            "||pred - obs||; conformal intervals of each gene's change around the ensemble mean, half-width = "
            "the ceil((n+1) p)-th smallest out-of-fold absolute residual of that gene over the n training doubles "
            "(split-conformal by cross-fitting, training doubles only); coverage = fraction of held-out "
            "(double, gene) pairs inside; ensemble_minus_median_member_l2 < 0: the ensemble mean is closer to "
            "the observed change than the median member.",
        ]
    diffs = diffs[diffs[list(RANK_METRICS)].notna().any(axis=1)] if len(diffs) else diffs  # additive: see random
    text = interactions_markdown(summary, diffs, unc, header, notes, unc_notes)
    (out / "summary.md").write_text(text + "\n")
