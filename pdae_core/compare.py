"""Several predictors of one what-if target, side by side: the science behind the comparison
views of the dashboard's Compose page, with no UI code.

- :func:`fit_baseline`: the additive or scaled additive baseline fitted on the same cells as a
  model (everything but its held-out conditions).
- :func:`change_correlation`, :func:`change_agreement`: how well a predicted change from control
  follows the observed one, gene by gene (Pearson r), from vectors or from a what-if's gene table;
  :func:`agreement_sentence` says it in words.
- :func:`compare_predictors`, :func:`compare_what_if`: predict one target with several
  predictors (models, checkpoints, baselines) from the same source cells and score each
  against the observed cells when the target was measured: energy distance between the cell
  populations and Pearson r of the change from control per gene.
  :class:`Comparison` holds the predictions, their changes per gene and a summary table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .data.registry import PerturbationRegistry, condition_column
from .errors import DataError, PDAEError
from .eval.metrics import energy_distance
from .explore import WhatIf
from .models.baselines import AdditiveBaseline, Baseline, ScaledAdditiveBaseline

__all__ = [
    "BASELINES",
    "COMPARISON_LABELS",
    "fit_baseline",
    "about",
    "change_correlation",
    "change_agreement",
    "agreement_sentence",
    "source_cells",
    "ModelPrediction",
    "Comparison",
    "compare_predictors",
    "compare_what_if",
]

#: The gene-space baselines offered beside the models: kind -> (name shown, class).
BASELINES: dict[str, tuple[str, type[Baseline]]] = {
    "additive": ("additive baseline", AdditiveBaseline),
    "scaled_additive": ("scaled additive baseline", ScaledAdditiveBaseline),
}

#: Readable headers of :meth:`Comparison.table`.
COMPARISON_LABELS: dict[str, str] = {
    "model": "Model",
    "energy_distance": "Energy distance to observed (lower is closer)",
    "pearson_delta": "Correlation of change with observed (r)",
    "seen_in_training": "Saw this target in training",
    "top_genes": "Top predicted changes (vs control)",
    "n_cells": "Predicted cells",
    "note": "Note",
}


def fit_baseline(kind: str, adata: ad.AnnData, model: Any) -> Baseline:
    """The baseline ``kind`` (a key of :data:`BASELINES`) fitted on the cells ``model`` was
    trained on: every cell of ``adata`` except those of its held-out conditions present in it."""
    if kind not in BASELINES:
        raise ValueError(f"Unknown baseline {kind!r}; choose one of {list(BASELINES)}.")
    reg = model.registry
    present = set(condition_column(adata, reg.perturbation_key))
    holdout = [h for h in model.holdout if h in present]
    return BASELINES[kind][1]().fit(adata, reg, holdout)


def change_correlation(predicted_delta: Any, observed_delta: Any) -> float:
    """Pearson r, over the genes where both are finite, of a predicted and an observed change
    from control (one value per gene each). NaN when fewer than two such genes remain or either
    change is constant over them."""
    p = np.asarray(predicted_delta, dtype=np.float64).reshape(-1)
    o = np.asarray(observed_delta, dtype=np.float64).reshape(-1)
    if p.shape != o.shape:
        raise ValueError(f"predicted ({p.shape[0]}) and observed ({o.shape[0]}) changes differ in length.")
    ok = np.isfinite(p) & np.isfinite(o)
    if ok.sum() < 2:
        return float("nan")
    p, o = p[ok] - p[ok].mean(), o[ok] - o[ok].mean()
    den = math.sqrt(float(p @ p) * float(o @ o))
    return float(p @ o) / den if den > 0 else float("nan")


def change_agreement(table: pd.DataFrame) -> dict[str, float]:
    """Pearson r of the predicted (``predicted_delta``) and additive (``additive_delta``) changes
    with the observed one (``observed_delta``), from a what-if's gene table
    (:func:`pdae_core.explore.top_changed_genes`); NaN where a column is missing or all NaN."""
    if "observed_delta" not in table.columns:
        return {"predicted_delta": float("nan"), "additive_delta": float("nan")}
    obs = table["observed_delta"].to_numpy(dtype=np.float64)
    return {c: change_correlation(table[c].to_numpy(dtype=np.float64), obs) if c in table.columns else float("nan")
            for c in ("predicted_delta", "additive_delta")}


def agreement_sentence(r_model: float, r_additive: float, n_genes: int) -> str:
    """The correlations of :func:`change_agreement` in plain words, e.g. "Over the 500 genes the
    model's changes follow the observed ones with r = 0.83, the additive baseline's with r = 0.75:
    the model is closer here." (r = 1: the same pattern of changes; 0: unrelated.)"""
    def r(v: float) -> str:
        return f"r = {v:.2f}" if np.isfinite(v) else "no defined r (a constant change)"

    line = f"Over the {n_genes:,} genes the model's changes follow the observed ones with {r(r_model)}"
    if not np.isfinite(r_additive):
        return line + " (1 = the same pattern of changes, 0 = unrelated; no additive baseline for this target)."
    line += f", the additive baseline's with {r(r_additive)}"
    if np.isfinite(r_model) and abs(r_model - r_additive) >= 0.005:
        who = "the model" if r_model > r_additive else "the additive baseline"
        return line + f": {who} follows the observed pattern more closely here (1 = the same pattern, 0 = unrelated)."
    return line + " (1 = the same pattern of changes, 0 = unrelated)."


def source_cells(result: WhatIf, adata: ad.AnnData) -> ad.AnnData:
    """The source cells a what-if predicted from (each once, in the order of its first draw)."""
    names = list(dict.fromkeys(map(str, result.predicted.obs["source_cell"])))
    pos = pd.Index(list(map(str, adata.obs_names))).get_indexer(names)
    if (pos < 0).any():
        raise DataError("The what-if's source cells are not all in this dataset.")
    return adata[pos]


@dataclass
class ModelPrediction:
    """One predictor's prediction of the target: its cells (None, with a ``note``, when it could
    not predict it), the mean change from control per gene (in the comparison's gene order), the
    energy distance to the observed cells and the Pearson r of the changes (NaN when not measured),
    and whether the predictor saw the target in training (None when it cannot tell)."""

    name: str
    cells: ad.AnnData | None
    delta: np.ndarray | None
    energy_distance: float = float("nan")
    pearson_delta: float = float("nan")
    seen_in_training: bool | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.cells is not None


@dataclass
class Comparison:
    """Several predictions of one target from the same source cells (see :func:`compare_predictors`)."""

    target: str
    genes: list[str]
    predictions: list[ModelPrediction]
    observed_delta: np.ndarray | None  # observed mean minus control mean, per gene; None when not measured
    control_energy: float = float("nan")  # energy distance of the control cells to the observed ("no change")
    max_cells: int | None = None

    @property
    def measured(self) -> bool:
        return self.observed_delta is not None

    def deltas(self) -> dict[str, np.ndarray]:
        """``{name: change from control per gene}`` of the predictors that predicted the target."""
        return {p.name: p.delta for p in self.predictions if p.delta is not None}

    def correlations(self) -> dict[str, float]:
        return {p.name: p.pearson_delta for p in self.predictions if p.delta is not None}

    def top_genes(self, delta: np.ndarray, n: int = 5) -> str:
        """The ``n`` genes of largest absolute change, with their signed changes."""
        order = np.argsort(-np.abs(delta), kind="stable")[:n]
        return ", ".join(f"{self.genes[i]} {delta[i]:+.2f}" for i in order)

    def table(self, n_genes: int = 5) -> pd.DataFrame:
        """One row per predictor: ``model``, ``energy_distance`` and ``pearson_delta`` (only when the
        target was measured), ``seen_in_training`` ("yes" / "no" / "–"), ``top_genes``, ``n_cells``
        and ``note`` (only when some predictor has one: why it could not predict the target, or
        :func:`about` it). Headers for people:
        :data:`COMPARISON_LABELS`."""
        rows = []
        for p in self.predictions:
            row: dict[str, Any] = {"model": p.name}
            if self.measured:
                row["energy_distance"] = p.energy_distance
                row["pearson_delta"] = p.pearson_delta
            row["seen_in_training"] = {True: "yes", False: "no", None: "–"}[p.seen_in_training]
            row["top_genes"] = self.top_genes(p.delta, n_genes) if p.delta is not None else "–"
            row["n_cells"] = p.cells.n_obs if p.cells is not None else 0
            if any(q.note for q in self.predictions):
                row["note"] = p.note or ""
            rows.append(row)
        return pd.DataFrame(rows)

    def closest(self) -> ModelPrediction | None:
        """The prediction with the smallest energy distance to the observed cells (None when the
        target was not measured or none could be scored)."""
        scored = [p for p in self.predictions if np.isfinite(p.energy_distance)]
        return min(scored, key=lambda p: p.energy_distance) if scored else None

    def summary(self) -> str:
        """The comparison in one or two plain sentences."""
        ok = [p for p in self.predictions if p.ok]
        if not ok:
            return f"None of the chosen models can predict {self.target}."
        if not self.measured:
            return (f"{self.target} was not measured in this dataset, so there is nothing to score the "
                    f"{len(ok)} predictions against: compare how they differ from each other.")
        best = self.closest()
        if best is None:
            return f"No prediction of {self.target} could be scored."
        line = (f"Closest to the observed cells of {self.target}: {best.name} (energy distance "
                f"{best.energy_distance:.3g}).")
        if np.isfinite(self.control_energy):
            beat = [p.name for p in ok if np.isfinite(p.energy_distance) and p.energy_distance < self.control_energy]
            line += (f" Unchanged control cells are at {self.control_energy:.3g}; "
                     + (f"{len(beat)} of {len(ok)} predictions are closer than that." if beat else
                        "no prediction is closer than that."))
        return line


def _subsample_rows(X: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    if k is None or len(X) <= k:
        return X
    return X[np.sort(np.random.default_rng(seed).choice(len(X), size=k, replace=False))]


def _seen(predictor: Any, label: np.ndarray) -> bool | None:
    L = getattr(predictor, "train_labels", None)
    if L is None:
        return None
    L = np.asarray(L, dtype=np.float64)
    if L.ndim != 2 or L.shape[1] != len(label):
        return None
    return bool(np.any(np.all(np.abs(L - label[None]) < 1e-6, axis=1)))


def _aligned(cells: ad.AnnData, genes: Sequence[str]) -> tuple[ad.AnnData, np.ndarray]:
    """The predicted cells with their genes in the comparison's order, and their expression."""
    pos = pd.Index(list(map(str, cells.var_names))).get_indexer(list(genes))
    if (pos < 0).any():
        raise DataError("It predicts other genes than this dataset's.")
    if not np.array_equal(pos, np.arange(cells.n_vars)):
        cells = cells[:, pos].copy()
    X = cells.X.toarray() if hasattr(cells.X, "toarray") else np.asarray(cells.X)
    return cells, np.asarray(X, dtype=np.float64)


def compare_predictors(
    predictors: Mapping[str, Any],
    source: ad.AnnData,
    weights: Mapping[str, float],
    control: ad.AnnData,
    observed: ad.AnnData | None,
    registry: PerturbationRegistry,
    n_cells: int | None = None,
    seed: int = 0,
    max_cells: int | None = 500,
    precomputed: Mapping[str, ad.AnnData | None] | None = None,
) -> Comparison:
    """Predict the target ``{perturbation: dose}`` with each of ``predictors`` (``{name: model or
    baseline}``, anything with ``registry`` and ``predict(source, target, seed=, n_draws=)``) from
    the same ``source`` cells, and score each against the ``observed`` cells when given.

    Models draw ``n_cells`` cells (each source cell decoded as often as needed, as in
    :func:`pdae_core.explore.what_if`); baselines, which are deterministic, predict each source
    cell once. ``precomputed`` gives predictions already made (e.g. the what-if's own), used as
    they are. A predictor that cannot predict the target (an unknown perturbation, a part never
    measured alone for a baseline, other genes) gets a note instead of cells.

    Changes from control are mean of the predicted (observed) cells minus the mean of ``control``,
    in ``registry``'s gene order; the energy distance compares at most ``max_cells`` cells of each
    population (random, seeded), on the expression of ``registry``'s genes. Predicted cells are kept
    with their genes in that order.
    """
    w = {str(k): float(v) for k, v in weights.items() if float(v) != 0.0}
    if not w:
        raise DataError("Choose at least one perturbation with a non-zero weight.")
    genes = list(registry.gene_names)
    target = registry.condition_name(registry.label_vector(w))
    ctrl = registry.expression(control).astype(np.float64)
    c_mean = ctrl.mean(0)
    obs = None if observed is None or observed.n_obs == 0 else registry.expression(observed).astype(np.float64)
    obs_delta = None if obs is None else obs.mean(0) - c_mean
    obs_sample = None if obs is None else _subsample_rows(obs, max_cells, seed + 1)
    done = dict(precomputed or {})
    out: list[ModelPrediction] = []
    for name, predictor in predictors.items():
        try:
            label = np.asarray(predictor.registry.label_vector(w), dtype=np.float64)
            seen = _seen(predictor, label)
            cells = done.get(name)
            if cells is None:
                draws = 1
                if n_cells is not None and not isinstance(predictor, Baseline):
                    draws = max(1, -(-int(n_cells) // source.n_obs))
                cells = predictor.predict(source, w, seed=seed, n_draws=draws)
                if n_cells is not None and cells.n_obs > int(n_cells):
                    cells = cells[: int(n_cells)].copy()
            cells, X = _aligned(cells, genes)
        except (PDAEError, KeyError, ValueError) as e:
            out.append(ModelPrediction(name, None, None, note=_reason(e)))
            continue
        delta = X.mean(0) - c_mean
        pred = ModelPrediction(name, cells, delta, seen_in_training=seen, note=about(predictor))
        if obs_sample is not None and obs_delta is not None:
            pred.energy_distance = energy_distance(_subsample_rows(X, max_cells, seed), obs_sample)
            pred.pearson_delta = change_correlation(delta, obs_delta)
        out.append(pred)
    control_energy = float("nan")
    if obs_sample is not None:
        control_energy = energy_distance(_subsample_rows(ctrl, max_cells, seed + 2), obs_sample)
    return Comparison(target, genes, out, obs_delta, control_energy, max_cells)


def about(predictor: Any) -> str | None:
    """What to know about a predictor beside its numbers: for the scaled additive baseline, the scale
    it fitted (or that it had no combination to fit it on, and so equals the additive baseline)."""
    if not isinstance(predictor, ScaledAdditiveBaseline) or not predictor.is_fitted:
        return None
    used = list(getattr(predictor, "alpha_conditions_", []))
    if not used:
        return ("No combination in its training data to fit its scale on, so it equals the additive baseline "
                "(scale 1).")
    return (f"Combinations scaled by {float(predictor.alpha_):.2f}, fitted on {len(used)} measured "
            f"combination{'s' if len(used) != 1 else ''} of its training data.")


def _reason(e: Exception) -> str:
    """Why a predictor could not predict the target, as its error says it (a KeyError's text is quoted)."""
    text = str(e).strip().strip("'\"").strip()
    return text[0].upper() + text[1:] if text else f"It cannot predict this target ({type(e).__name__})."


def compare_what_if(
    predictors: Mapping[str, Any],
    result: WhatIf,
    adata: ad.AnnData,
    weights: Mapping[str, float],
    registry: PerturbationRegistry,
    n_cells: int | None = None,
    seed: int = 0,
    max_cells: int | None = 500,
    precomputed: Mapping[str, ad.AnnData | None] | None = None,
) -> Comparison:
    """:func:`compare_predictors` from the source, control and observed cells of a what-if
    (:func:`pdae_core.explore.what_if`), so every predictor starts from the cells the page shows."""
    return compare_predictors(predictors, source_cells(result, adata), weights, result.control, result.observed,
                              registry, n_cells=n_cells, seed=seed, max_cells=max_cells, precomputed=precomputed)
