"""The interaction benchmark at the cell level: how well each model of a finished cell-level
benchmark (:func:`~pdae_core.eval.benchmark.run_benchmark`) predicts the genetic interaction
of every held-out double, scored as the pseudobulk track scores it
(:mod:`pdae_core.eval.pseudobulk.interaction_scores`).

Each (model, seed) run of the benchmark keeps the predicted mean change of every held-out
condition (``runs/<model>__seed<k>.deltas.csv``: mean of the predicted cells minus the mean of
the source control cells). For every held-out double ``A+B`` whose singles were measured, the
observed changes ``dA``, ``dB``, ``dAB`` are the means of their cells minus the mean of all
control cells; the prediction's interaction figures (magnitude, normalised residual) are
computed with the *observed* singles, and its non-additive part ``dAB - dA - dB`` is correlated
with the observed one. Held-out doubles differ between seeds (a random hold-out per seed),
so each (seed, double) is one scored double: the rank metrics and their bootstrap intervals
pool them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ...data.registry import PerturbationRegistry, condition_column
from ...errors import PDAEError
from ..interactions import mean_changes
from ..pseudobulk.interaction_scores import double_figures
from .files import run_path

__all__ = ["METRIC_BASELINES", "PROFILE_BASELINES", "benchmark_interactions", "cell_interaction_rows", "metric_baseline_rows"]

#: regressions of the interaction metrics on the training doubles, scored beside a cell-level benchmark's models
METRIC_BASELINES = ("heuristic", "propensity", "pair_kernel")
#: profile baselines fitted to the same training doubles' mean changes (they also have a non-additive Pearson)
PROFILE_BASELINES = ("pair_kernel_profile",)
#: a training double (and each of its singles) needs this many cells to teach the metric baselines
MIN_TRAIN_CELLS = 3


def cell_interaction_rows(out_dir: str | os.PathLike[str], adata: ad.AnnData, registry: PerturbationRegistry,
                          models: Sequence[str], seeds: Sequence[int], method: str = "lstsq") -> pd.DataFrame:
    """One row per (model, seed, held-out double with both singles measured): the predicted and
    observed magnitude and normalised residual and the non-additive Pearson (and ``n_cells``, the
    double's observed cells), in the columns of
    :func:`~pdae_core.eval.pseudobulk.interaction_scores.summarise_interactions` (``double`` is
    ``"A+B (seed k)"``, ``fold`` the seed, ``seed`` 0: the (seed, double) pairs are pooled)."""
    out_dir = Path(out_dir)
    conds = set(condition_column(adata, registry.perturbation_key))
    rows = []
    observed: dict[str, np.ndarray] = {}
    for model in models:
        for seed in seeds:
            path = run_path(out_dir, model, seed).with_suffix(".deltas.csv")
            if not path.is_file():
                raise PDAEError(f"{path} is missing: run the benchmark with --models {model} and seed {seed} first.")
            pred = pd.read_csv(path, index_col="condition")
            if list(pred.columns) != list(registry.gene_names):
                raise PDAEError(f"{path}: its genes are not the dataset's.")
            intervals = _intervals(path.with_name(path.name.replace(".deltas.csv", ".intervals.csv")))
            fit = pd.read_csv(run_path(out_dir, model, seed))
            fit_seconds = float(fit["fit_seconds"].iloc[0]) if "fit_seconds" in fit and len(fit) else float("nan")
            n_cells = dict(zip(fit["condition"].astype(str), fit["n_obs"])) if "n_obs" in fit else {}
            for double in pred.index:
                parts = registry.parse(double)
                if len(parts) != 2 or not all(p in conds for p in parts) or double not in conds:
                    continue
                need = [c for c in (*parts, double) if c not in observed]
                if need:
                    observed.update(zip(need, mean_changes(adata, registry, need).to_numpy()))
                dA, dB, dAB = observed[parts[0]], observed[parts[1]], observed[double]
                p = double_figures(dA, dB, pred.loc[double].to_numpy(np.float64), method, obs=dAB)
                o = double_figures(dA, dB, dAB, method)
                rows.append({"model": model, "seed": 0, "fold": int(seed), "double": f"{double} (seed {seed})",
                             "magnitude_pred": p["magnitude"], "magnitude_obs": o["magnitude"],
                             "residual_pred": p["normalised_residual"], "residual_obs": o["normalised_residual"],
                             "nonadditive_pearson": p["nonadditive_pearson"], "error_l2": p["error_l2"],
                             "fit_seconds": fit_seconds, "n_cells": n_cells.get(double, np.nan),
                             **intervals.get(double, {}),
                             **({"pred_norm": float(np.linalg.norm(pred.loc[double])),
                                 "obs_norm": float(np.linalg.norm(dAB))} if double in intervals else {})})
    if not rows:
        raise PDAEError(f"No held-out double of {out_dir} has both its singles measured: nothing to score.")
    return pd.DataFrame(rows)


def metric_baseline_rows(adata: ad.AnnData, registry: PerturbationRegistry, held_out: dict[int, Sequence[str]],
                         method: str = "lstsq", min_cells: int = MIN_TRAIN_CELLS) -> pd.DataFrame:
    """The metric regressions of the pseudobulk interaction track (:data:`METRIC_BASELINES`:
    :class:`~pdae_core.eval.pseudobulk.interaction_models.HeuristicInteractionRegression`,
    :class:`~pdae_core.eval.pseudobulk.interaction_models.PropensityInteractionRegression`,
    :class:`~pdae_core.eval.pseudobulk.kernel_model.PairKernelInteractionRegression`) at the cell level:
    for each seed, fitted to the observed mean changes of every single and of the doubles *not* held out
    in that seed (each with at least ``min_cells`` cells, as its singles), they predict the magnitude and
    normalised residual of that seed's held-out doubles (``held_out[seed]``), in
    :func:`cell_interaction_rows`' columns (no profile, so no non-additive Pearson). The profile
    baselines (:data:`PROFILE_BASELINES`:
    :class:`~pdae_core.eval.pseudobulk.kernel_model.PairKernelProfile`, with 5 or more such training
    doubles) are fitted to the same mean changes and scored from their predicted profiles, as
    :func:`cell_interaction_rows` scores a model's (with ``error_l2`` and the non-additive Pearson)."""
    from ..pseudobulk import profiles_from_anndata
    from ..pseudobulk.interaction_models import (
        HeuristicInteractionRegression,
        PropensityInteractionRegression,
    )
    from ..pseudobulk.kernel_model import PairKernelInteractionRegression, PairKernelProfile

    counts = pd.Series(condition_column(adata, registry.perturbation_key)).value_counts()
    conds = [c for c in counts.index if c != registry.control_label]
    parts = {c: registry.parse(c) for c in conds}
    singles = [c for c in conds if len(parts[c]) == 1 and counts[c] >= min_cells]
    doubles = [c for c in conds if len(parts[c]) == 2 and all(p in singles for p in parts[c])]
    delta = dict(zip(singles + doubles, mean_changes(adata, registry, singles + doubles).to_numpy(np.float64)))
    rows = []
    for seed, held in held_out.items():
        held = [d for d in held if d in delta]
        out = set(held)
        train = [d for d in doubles if d not in out and counts[d] >= min_cells]
        observed = [double_figures(delta[parts[d][0]], delta[parts[d][1]], delta[d], method) for d in held]
        names = sorted(singles) + train + held
        X = np.stack([delta[c] for c in names])
        prof = profiles_from_anndata(ad.AnnData(X, obs=pd.DataFrame({"condition": names}, index=names),
                                                var=pd.DataFrame(index=list(registry.gene_names))),
                                     separator=registry.separator, values="deltas")
        fit_on = prof.subset(sorted(singles) + train)
        preds = {name: cls(method=method).fit(fit_on).predict_metrics(fit_on, held) for name, cls in zip(
            METRIC_BASELINES, (HeuristicInteractionRegression, PropensityInteractionRegression,
                               PairKernelInteractionRegression))}
        if len(fit_on.eligible_doubles()) >= 5:
            prof_pred = PairKernelProfile().fit(fit_on).predict(prof.subset(held).labels)
            figs = [double_figures(delta[parts[d][0]], delta[parts[d][1]], prof_pred[j], method, obs=delta[d])
                    for j, d in enumerate(held)]
            preds["pair_kernel_profile"] = {
                "magnitude": [f["magnitude"] for f in figs], "normalised_residual": [f["normalised_residual"] for f in figs],
                "nonadditive_pearson": [f["nonadditive_pearson"] for f in figs], "error_l2": [f["error_l2"] for f in figs]}
        for name, pred in preds.items():
            for j, (d, o) in enumerate(zip(held, observed)):
                rows.append({"model": name, "seed": 0, "fold": int(seed), "double": f"{d} (seed {seed})",
                             "magnitude_pred": float(pred["magnitude"][j]), "magnitude_obs": o["magnitude"],
                             "residual_pred": float(pred["normalised_residual"][j]),
                             "residual_obs": o["normalised_residual"],
                             "nonadditive_pearson": float(pred.get("nonadditive_pearson", [np.nan] * len(held))[j]),
                             **({"error_l2": float(pred["error_l2"][j])} if "error_l2" in pred else {}),
                             "n_cells": int(counts[d]), "train_doubles": len(train)})
    return pd.DataFrame(rows)


def _intervals(path: Path) -> dict[str, dict[str, Any]]:
    """Per held-out double, a calibrated ensemble's uncertainty figures from the benchmark's
    ``.intervals.csv`` (:func:`~pdae_core.eval.calibration.interval_check`), named as
    :func:`~pdae_core.eval.pseudobulk.interaction_scores.uncertainty_summary` reads them:
    ``spread``, ``coverage_<level>`` (genes inside their interval), ``coverage_magnitude_<level>``
    and ``coverage_residual_<level>`` (1 when the observed metric is inside), ``width_residual_<level>``,
    the same for the intervals at the double's number of cells (``coverage_cells_<level>``,
    ``coverage_cells_magnitude_<level>``, ``coverage_cells_residual_<level>``, ``width_cells_residual_<level>``)
    and ``single_effects`` (the singles those metrics were scored against: ``observed`` or ``model``).
    Empty when the file is absent (any other model)."""
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    out = {}
    for r in df.to_dict("records"):
        row: dict[str, Any] = {"spread": float(r["spread"]),  # files from before the column: the model's singles
                               "single_effects": str(r.get("single_effects", "model"))}
        for col, v in r.items():
            cells = col.startswith("cells_")  # the intervals at the double's number of cells
            base, tag = (col[len("cells_"):], "cells_") if cells else (col, "")
            level = base.rsplit("_", 1)[-1]
            if base.startswith("gene_coverage_"):
                row[f"coverage_{tag}{level}"] = float(v)
            elif base.startswith(("magnitude_covered_", "normalised_residual_covered_")):
                metric = "magnitude" if base.startswith("magnitude") else "residual"
                row[f"coverage_{tag}{metric}_{level}"] = float(bool(v))
            elif base.startswith("normalised_residual_half_width_"):
                row[f"width_{tag}residual_{level}"] = float(v)
        out[str(r["double"])] = row
    return out


def benchmark_interactions(out_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None,
                           method: str = "lstsq", metric_baselines: bool = True) -> pd.DataFrame:
    """:func:`cell_interaction_rows` of every model and seed of a finished benchmark folder
    (``spec.json`` and ``runs/``), its dataset loaded and prepared as the benchmark did it, and (with
    ``metric_baselines``) :func:`metric_baseline_rows` on the same held-out doubles."""
    import json

    from ...data.datasets import list_datasets, load_dataset
    from ...data.defaults import dataset_defaults
    from ...data.registry import read_h5ad, setup_anndata
    from .run import _prepare
    from .spec import BenchmarkSpec

    out_dir = Path(out_dir)
    try:
        saved = json.loads((out_dir / "spec.json").read_text())
        spec = BenchmarkSpec.from_dict(saved["spec"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PDAEError(f"{out_dir} is not a finished benchmark folder (spec.json: {e}).") from None
    name = str(spec.dataset)
    adata = load_dataset(name, data_dir=data_dir, **spec.dataset_options) if name in list_datasets() else read_h5ad(name)
    meta = dataset_defaults(adata)
    registry = setup_anndata(adata, spec.perturbation_key or meta.get("perturbation_key") or "condition",
                             spec.control_label or meta.get("control_label"), covariate_key=meta.get("covariate_key"))
    adata, registry, _ = _prepare(adata, registry, spec)
    models = [m for m in spec.models if run_path(out_dir, m, spec.seeds[0]).with_suffix(".deltas.csv").is_file()]
    rows = cell_interaction_rows(out_dir, adata, registry, models, spec.seeds, method)
    if not metric_baselines:
        return rows
    held = {int(s): pd.read_csv(run_path(out_dir, models[0], s).with_suffix(".deltas.csv"), usecols=["condition"])
            ["condition"].astype(str).tolist() for s in spec.seeds}
    scored = {d.rsplit(" (seed", 1)[0] for d in rows["double"]}
    return pd.concat([rows, metric_baseline_rows(adata, registry, {s: [d for d in h if d in scored]
                                                                   for s, h in held.items()}, method)],
                     ignore_index=True)
