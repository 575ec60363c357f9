"""Held-out evaluation: score models and baselines on conditions they never saw.

Each predictor (a trained model or a fitted baseline: anything with
``predict(source, target, seed=...) -> AnnData``) moves the same source cells
(the control cells by default) to each held-out condition; the prediction is
compared with the observed cells of that condition by the unbiased energy
distance with a bootstrap interval over cells, next to the noise floor (the
distance between two random halves of the observed cells).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anndata as ad
import numpy as np
import pandas as pd

from ..data.registry import PerturbationRegistry, condition_column, require_conditions
from ..plot.style import NOISE
from .bootstrap import bootstrap_energy_distance, paired_bootstrap_difference
from .metrics import noise_floor


class Predictor(Protocol):
    def predict(self, source: ad.AnnData, target: Any, seed: int = 0) -> ad.AnnData: ...


def heldout_comparison(
    adata: ad.AnnData,
    registry: PerturbationRegistry,
    predictors: Mapping[str, Predictor],
    conditions: Sequence[str],
    source: ad.AnnData | None = None,
    reference: str | None = "additive",
    n_boot: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (condition, method) with the energy distance to the observed cells,
    its bootstrap interval, and (for methods other than ``reference``) the paired
    bootstrap difference to the reference; plus one noise-floor row per condition."""
    require_conditions(adata, registry, conditions)
    conds = condition_column(adata, registry.perturbation_key)
    if source is None:
        source = adata[conds == registry.control_label]
    rows: list[dict[str, Any]] = []
    for c in conditions:
        obs = registry.expression(adata[conds == c])
        preds = {name: np.asarray(p.predict(source, c, seed=seed).X) for name, p in predictors.items()}
        for name, pred in preds.items():
            est, lo, hi = bootstrap_energy_distance(pred, obs, n_boot=n_boot, seed=seed)
            row = {"condition": c, "method": name, "n_obs": len(obs), "n_pred": len(pred),
                   "ed": est, "ed_lo": lo, "ed_hi": hi}
            if reference is not None and reference in preds and name != reference:
                d, dlo, dhi = paired_bootstrap_difference(pred, preds[reference], obs, n_boot=n_boot, seed=seed)
                row.update({"diff_vs_ref": d, "diff_lo": dlo, "diff_hi": dhi})
            rows.append(row)
        rows.append({"condition": c, "method": NOISE, "n_obs": len(obs), "n_pred": len(obs) // 2,
                     "ed": noise_floor(obs, seed=seed)})
    return pd.DataFrame(rows)


def gap_closed(table: pd.DataFrame, method: str, no_change: str = "no change") -> pd.Series:
    """Per condition: (ED(method) - ED(noise)) / (ED(no change) - ED(noise)); 0 is perfect,
    1 is no better than predicting no change."""
    piv = table.pivot(index="condition", columns="method", values="ed")
    return (piv[method] - piv[NOISE]) / (piv[no_change] - piv[NOISE])


def markdown_table(table: pd.DataFrame, reference: str | None = "additive") -> str:
    """The comparison as a markdown table: one row per condition, one column per method
    (``ED [lo, hi]``), and the difference to the reference where present."""
    methods = [m for m in dict.fromkeys(table["method"]) if m != NOISE]
    header = ["condition", *methods, NOISE]
    diffs = [m for m in methods if m != reference and "diff_vs_ref" in table and
             table.loc[table.method == m, "diff_vs_ref"].notna().any()]
    header += [f"{m} - {reference}" for m in diffs]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c, g in table.groupby("condition", sort=False):
        by = g.set_index("method")
        cells = [str(c)]
        for m in methods:
            r = by.loc[m]
            cells.append(f"{r.ed:.3f} [{r.ed_lo:.3f}, {r.ed_hi:.3f}]")
        cells.append(f"{by.loc[NOISE].ed:.3f}")
        for m in diffs:
            r = by.loc[m]
            cells.append(f"{r.diff_vs_ref:+.3f} [{r.diff_lo:+.3f}, {r.diff_hi:+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: The trivial baselines a model is measured against in :func:`plain_summary`.
BASELINES = ("additive", "scaled_additive", "linear", "control", "no change", "pool")
_PHRASES = {
    "additive": "the additive baseline", "scaled_additive": "the scaled additive baseline",
    "linear": "the linear baseline", "control": "predicting no change", "no change": "predicting no change",
    "pool": "the pooled-cells baseline", "oracle": "the oracle",
}


def model_phrase(model: str) -> str:
    """How a sentence names a model: ``"additive"`` -> ``"the additive baseline"``, ``"pdae"`` -> ``"PDAE"``."""
    return _PHRASES.get(model, model.upper() if model.isalnum() else model)


def plain_summary(per_condition: pd.DataFrame, model: str, metric: str = "energy_distance",
                  lower_is_better: bool = True, baselines: Sequence[str] = BASELINES) -> str | None:
    """One plain sentence with the result of ``model`` against the strongest baseline present.

    ``per_condition`` is long: columns ``model``, ``condition`` and ``metric`` (a ``seed`` column
    is averaged over). The strongest baseline is the one of ``baselines`` with the best mean
    over the conditions both have; the sentence counts the conditions on which each is closer
    and ends with the means and, when the table has it, the noise floor. None when the table
    has neither the model nor a baseline."""
    df = per_condition[per_condition[metric].notna()]
    means = df.groupby(["model", "condition"], sort=False)[metric].mean().unstack("condition")
    if model not in means.index:
        return None
    mine = means.loc[model].dropna()
    others = [b for b in baselines if b in means.index and b != model]
    best, best_mean = None, None
    for b in others:
        common = mine.index.intersection(means.loc[b].dropna().index)
        if len(common) == 0:
            continue
        m = float(means.loc[b, common].mean())
        if best_mean is None or (m < best_mean if lower_is_better else m > best_mean):
            best, best_mean = b, m
    if best is None:
        return None
    conds = mine.index.intersection(means.loc[best].dropna().index)
    a, b = mine[conds].to_numpy(float), means.loc[best, conds].to_numpy(float)
    model_better = int(((a < b) if lower_is_better else (a > b)).sum())
    base_better = int(((b < a) if lower_is_better else (b > a)).sum())
    ties = len(conds) - model_better - base_better
    name, base = model_phrase(model), model_phrase(best)
    what = "held-out condition" if len(conds) == 1 else f"{len(conds)} held-out conditions"
    direction = "lower" if lower_is_better else "higher"
    from ..plot.style import metric_label  # plain names only, no plotly

    if model_better > base_better:
        head = f"On these {what}, {name} is closer to what was measured than {base} on {model_better}"
        tail = f"; {base} is closer on {base_better}" if base_better else ""
    elif base_better > model_better:
        head = f"On these {what}, {base} is closer to what was measured than {name} on {base_better}"
        tail = f"; {name} is closer on {model_better}" if model_better else ""
    else:
        head = f"On these {what}, {name} and {base} are each closer to what was measured on {model_better}"
        tail = ""
    tail += f"; {ties} tied" if ties else ""
    sentence = (f"{head}{tail} ({metric_label(metric)}, {direction} is better). "
                f"Averaged: {name} {float(a.mean()):.3g}, {base} {float(b.mean()):.3g}")
    if NOISE in means.index:
        floor = means.loc[NOISE, conds].dropna()
        if len(floor):
            f = float(floor.mean())  # an unbiased estimate: below 0 when the two halves are alike
            sentence += ", the noise floor (the best any prediction can reach) " + (
                f"{f:.3g}" if f > 0 else "about 0")
    return sentence + "."
