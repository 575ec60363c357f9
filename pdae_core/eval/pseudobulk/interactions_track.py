"""Interaction benchmark on per-condition profiles (issue 15 item 4, pseudobulk part):
do the models predict *how* a double departs from the sum of its parts?

:func:`run_interaction_benchmark` deals the doubles whose two singles are measured into
``k`` folds per seed (:func:`.profiles.double_folds`); every model is fitted to the
other profiles and predicts the held-out doubles. For each held-out double the
interaction figures of the predicted change ``dAB`` and of the observed one are
computed with the *observed* singles ``dA``, ``dB`` in both cases
(:func:`.interaction_scores.double_figures`: Norman et al. 2019's weights ``c1``, ``c2``
of ``dAB ~ c1 dA + c2 dB``, the magnitude ``sqrt(c1^2 + c2^2)``, the normalised
residual ``||dAB - dA - dB|| / ||dA + dB||``) and the Pearson correlation over genes of
the predicted and observed non-additive part ``dAB - dA - dB``.
:func:`.interaction_scores.summarise_interactions` turns the rows into rank metrics
over doubles with bootstrap intervals.

Models (:data:`INTERACTION_MODELS`): the profile models of :data:`.models.PROFILE_MODELS`
(``additive``: constant magnitude, it cannot rank; ``scaled_additive``; ``linear``;
``pdae``: the PDAE mean form), ``heuristic`` (:class:`.interaction_models.HeuristicInteractionRegression`,
metrics regressed on single-perturbation features), ``propensity``
(:class:`.interaction_models.PropensityInteractionRegression`, log metrics regressed on which
perturbations the double holds), ``partners`` (:class:`.interaction_models.PartnerProfile`, the sum of
the singles plus the non-additive part of the measured doubles that share a perturbation), ``pair_kernel``
(:class:`.kernel_model.PairKernelInteractionRegression`, log metrics by kernel ridge regression over pairs
of singles: doubles of similar singles combine alike), ``pair_kernel_profile``
(:class:`.kernel_model.PairKernelProfile`, the sum of the singles plus the departures of the measured
doubles of similar singles, recalibrated gene by gene), ``pdae_ensemble``
(:class:`.interaction_models.PDAEEnsembleProfile`, cross-fitted members, with spread and
conformal intervals), ``pdae_stacked`` (:class:`.interaction_models.PDAEStackedRegression`, the
ensemble's out-of-fold metrics stacked with the two regressions' features, blended with the pair kernel)
and ``random`` (a
ranking at random, computed in the summary).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...errors import DataError
from ..interactions import METHODS, _gene_positions
from .interaction_models import (
    HeuristicInteractionRegression,
    PartnerProfile,
    PDAEEnsembleProfile,
    PDAEStackedRegression,
    PropensityInteractionRegression,
    single_deltas,
)
from .interaction_scores import double_figures
from .kernel_model import PairKernelInteractionRegression, PairKernelProfile
from .models import PROFILE_MODELS
from .profiles import ProfileSet, double_folds, train_conditions

__all__ = ["INTERACTION_MODELS", "DEFAULT_INTERACTION_MODELS", "run_interaction_benchmark", "gene_positions",
           "fold_cache_paths"]

#: Model names :func:`run_interaction_benchmark` knows.
INTERACTION_MODELS = ("additive", "scaled_additive", "linear", "heuristic", "propensity", "partners", "pair_kernel",
                      "pair_kernel_profile", "random", "pdae", "pdae_ensemble", "pdae_stacked")
DEFAULT_INTERACTION_MODELS = INTERACTION_MODELS
LEVELS = (0.8, 0.95)  # coverage levels of the ensemble's conformal intervals


def gene_positions(profiles: ProfileSet, genes: Any = None) -> np.ndarray:
    """Positions of ``genes`` (names, positions or a boolean mask; None: all genes), as the
    interaction metrics read them; the benchmark needs at least 3."""
    idx = _gene_positions(genes, list(profiles.genes), profiles.n_genes) % profiles.n_genes
    if idx.size < 3:
        raise DataError(f"The gene set has {idx.size} gene(s); the interaction benchmark needs at least 3.")
    return idx


def _digest(profiles: ProfileSet, genes: np.ndarray, *settings: Any) -> str:
    """Short digest of the profiles, gene set and settings (names the cached rows)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(profiles.deltas, dtype=np.float64).tobytes())
    h.update(repr((profiles.conditions, profiles.genes, genes.tolist(), settings)).encode())
    return h.hexdigest()[:16]


def _cache_key(profiles: ProfileSet, g: np.ndarray, method: str, k: int, n_members: int,
               ensemble_kw: Mapping[str, Any] | None, levels: Sequence[float]) -> str:
    return _digest(profiles, g, method, int(k), int(n_members), dict(ensemble_kw or {}), tuple(levels))


def _cache_path(cache: Path, profiles: ProfileSet, g: np.ndarray, key: str, name: str, model: Any, seed: int,
                fold: int) -> Path:
    """The cached rows of one (model, seed, fold): named by the data, the settings and the
    model's parameters (as built, before ``fit``)."""
    params = _digest(profiles, g, key, name, repr(sorted(vars(model).items())))
    return cache / f"{name}_seed{seed}_fold{fold}_{params}.csv"


def fold_cache_paths(profiles: ProfileSet, models: Sequence[str], cache_dir: str | Path, k: int = 5,
                     seeds: Sequence[int] = (0, 1, 2), n_members: int = 5, method: str = "lstsq", genes: Any = None,
                     levels: Sequence[float] = LEVELS, ensemble_kw: Mapping[str, Any] | None = None
                     ) -> dict[tuple[str, int, int], Path]:
    """Where :func:`run_interaction_benchmark` with these arguments keeps (and looks for) the
    rows of each named model, seed and fold: ``{(model, seed, fold): path}`` (``random`` has
    none). Lets a committed table's rows seed a rerun that adds a model."""
    g = gene_positions(profiles, genes)
    key = _cache_key(profiles, g, method, k, n_members, ensemble_kw, levels)
    factories = _factories(models, int(n_members), method, g, dict(ensemble_kw or {}))
    return {(name, int(seed), f): _cache_path(Path(cache_dir), profiles, g, key, name, factory(int(seed)), int(seed), f)
            for seed in seeds for f in range(len(double_folds(profiles, k=k, seed=int(seed))))
            for name, factory in factories.items() if factory is not None}


def _factories(models: Sequence[str] | Mapping[str, Callable[[int], Any]], n_members: int, method: str,
               genes: np.ndarray, ensemble_kw: Mapping[str, Any]) -> dict[str, Callable[[int], Any] | None]:
    if isinstance(models, Mapping):
        return dict(models)
    unknown = [m for m in models if m not in INTERACTION_MODELS]
    if unknown:
        raise DataError(f"Unknown model(s) {unknown}; known: {', '.join(INTERACTION_MODELS)}.")
    out: dict[str, Callable[[int], Any] | None] = {}
    for m in models:
        if m == "random":
            out[m] = None  # no fit: the summary ranks at random
        elif m == "heuristic":
            out[m] = lambda seed: HeuristicInteractionRegression(method=method, genes=genes)
        elif m == "propensity":
            out[m] = lambda seed: PropensityInteractionRegression(method=method, genes=genes)
        elif m == "partners":
            out[m] = lambda seed: PartnerProfile()
        elif m == "pair_kernel":
            out[m] = lambda seed: PairKernelInteractionRegression(method=method, genes=genes)
        elif m == "pair_kernel_profile":
            out[m] = lambda seed: PairKernelProfile()
        elif m == "pdae_stacked":
            out[m] = lambda seed: PDAEStackedRegression(method=method, genes=genes, seed=seed, n_members=n_members,
                                                        **ensemble_kw)
        elif m == "pdae_ensemble":
            out[m] = lambda seed: PDAEEnsembleProfile(n_members=n_members, seed=seed, method=method, genes=genes,
                                                      **ensemble_kw)
        else:
            out[m] = PROFILE_MODELS[m]
    return out


def _weights(weights: Sequence[np.ndarray]) -> str:
    """Convex weights per metric, e.g. ``0.4,0.6;1,0``."""
    return ";".join(",".join(f"{x:.2g}" for x in w) for w in weights)


def _selected(model: Any) -> str:
    """What a model chose on its training profiles (for the per-double table)."""
    if hasattr(model, "ensemble_"):
        return (f"{_selected(model.ensemble_)} ridge=" + ";".join(f"{a:g},{b:g}" for a, b in model.alpha_)
                + f" beta={model.beta_:g}" + ("" if model.shrink_ is None else f" shrink={model.shrink_:g}")
                + ("" if getattr(model, "kernel_", None) is None else " blend=" + _weights(model.blend_)))
    if hasattr(model, "kernel_"):
        return "kernel=" + _weights(model.kernel_.weights_)
    if hasattr(model, "gamma_") and hasattr(model, "gene_w_"):
        return f"gamma={model.gamma_:g} penalty={model.penalty_:g} shrink={model.shrink_:g}"
    if hasattr(model, "step_") and hasattr(model, "source_"):
        return f"step={model.step_} source={model.source_}"
    if hasattr(model, "best_latent_dim_"):
        return f"latent={model.best_latent_dim_} step={model.best_step_}"
    if hasattr(model, "alpha_") and isinstance(model.alpha_, float):
        return f"alpha={model.alpha_:.4f}"
    if hasattr(model, "alpha_"):
        return "ridge=" + ",".join(f"{a:g}" for a in model.alpha_)
    return ""


def _ensemble_columns(model: Any, members: np.ndarray, k: int, held: ProfileSet, train: ProfileSet,
                      g: np.ndarray, method: str, levels: Sequence[float]) -> dict[str, float]:
    """Spread, per-member figures and conformal coverage of held-out double ``k``."""
    d = held.conditions[k]
    a, b = (v[g] for v in single_deltas(train, d))
    obs = held.deltas[k][g]
    mem = members[:, k][:, g]
    figs = [double_figures(a, b, p, method, obs) for p in mem]
    mean = mem.mean(0)
    out = {"spread": float(mem.std(0, ddof=1).mean()),
           "magnitude_sd": float(np.std([f["magnitude"] for f in figs], ddof=1)),
           "residual_sd": float(np.std([f["normalised_residual"] for f in figs], ddof=1)),
           "nonadditive_pearson_sd": float(np.nanstd([f["nonadditive_pearson"] for f in figs], ddof=1)),
           "member_median_l2": float(np.median([f["error_l2"] for f in figs]))}
    if hasattr(model, "half_widths"):
        for lev in levels:
            h = model.half_widths(lev)[g]
            tag = f"{round(100 * lev)}"
            out[f"coverage_{tag}"] = float((np.abs(obs - mean) <= h).mean())
            out[f"width_{tag}"] = float(np.mean(2 * h))
    return out


def run_interaction_benchmark(
    profiles: ProfileSet,
    models: Sequence[str] | Mapping[str, Callable[[int], Any]] = DEFAULT_INTERACTION_MODELS,
    k: int = 5,
    seeds: Sequence[int] = (0, 1, 2),
    n_members: int = 5,
    method: str = "lstsq",
    genes: Any = None,
    levels: Sequence[float] = LEVELS,
    ensemble_kw: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    cache_dir: str | Path | None = None,
) -> pd.DataFrame:
    """k-fold interaction benchmark over the doubles with both singles measured.

    For each seed the folds are :func:`double_folds` ``(profiles, k, seed)``; each model
    is built with that seed and fitted to every profile outside the fold (all singles,
    the other folds' doubles). ``models``: names from :data:`INTERACTION_MODELS` or a
    mapping ``name -> factory(seed)`` (an object with ``fit(profiles)`` and
    ``predict(labels)``; with ``predict_members`` it is scored as an ensemble, with
    ``predict_metrics(train, doubles)`` its metrics replace those of its profiles; without
    ``predict`` it is a metric regression). ``method``: fit of
    ``c1``, ``c2`` (``"lstsq"`` or ``"theil_sen"``). ``genes``: the gene set of every
    figure (default all genes); models are trained on all genes. ``n_members`` and
    ``ensemble_kw``: of ``pdae_ensemble``.

    Returns one row per (model, seed, fold, held-out double): ``magnitude_obs`` /
    ``magnitude_pred``, ``residual_obs`` / ``residual_pred`` (normalised residual),
    ``c1_*``, ``c2_*``, ``nonadditive_pearson``, ``error_l2`` (``||pred - obs||``),
    ``pred_norm``, ``obs_norm``, ``fit_seconds`` (the fold's fit time) and ``selected``
    (what the model chose on its training profiles); an ensemble adds ``spread`` (mean
    over genes of the sd across members), the sd across members of the magnitude,
    residual and non-additive Pearson, ``member_median_l2`` and the conformal
    ``coverage_<level>`` / ``width_<level>``. A metric regression fills only
    ``magnitude_pred`` and ``residual_pred``. ``random`` adds no rows (see
    :func:`.interaction_scores.summarise_interactions`).

    ``cache_dir``: each finished (seed, fold, model) of a named model is saved there
    (one CSV, named by a digest of the data and settings) and reused by a later run
    with the same data and settings, so an interrupted run resumes.
    """
    if method not in METHODS:
        raise DataError(f"method must be one of {METHODS}, got {method!r}.")
    g = gene_positions(profiles, genes)
    factories = _factories(models, int(n_members), method, g, dict(ensemble_kw or {}))
    if not factories:
        raise DataError("No models to benchmark.")
    observed: dict[str, dict[str, float]] = {}
    for d in profiles.eligible_doubles():
        a, b = (v[g] for v in single_deltas(profiles, d))
        observed[d] = double_figures(a, b, profiles.deltas[profiles.index([d])[0]][g], method)
    rows = []
    named = not isinstance(models, Mapping)
    key = _cache_key(profiles, g, method, k, n_members, ensemble_kw, levels)
    cache = Path(cache_dir) if cache_dir is not None and named else None
    for seed in seeds:
        folds = double_folds(profiles, k=k, seed=int(seed))
        for f, test in enumerate(folds):
            train = profiles.subset(train_conditions(profiles, test))
            held = profiles.subset(test)
            for name, factory in factories.items():
                if factory is None:
                    continue
                model = factory(int(seed))
                path = None
                if cache is not None:
                    path = _cache_path(cache, profiles, g, key, name, model, int(seed), f)
                    if path.exists():
                        rows += pd.read_csv(path).to_dict("records")
                        continue
                t0 = time.perf_counter()
                model = model.fit(train)
                fit_s = time.perf_counter() - t0
                base = [{"model": name, "seed": int(seed), "fold": f, "double": d,
                         "magnitude_obs": observed[d]["magnitude"], "residual_obs": observed[d]["normalised_residual"],
                         "c1_obs": observed[d]["c1"], "c2_obs": observed[d]["c2"], "fit_seconds": fit_s,
                         "selected": _selected(model)} for d in test]
                if hasattr(model, "predict"):  # a profile model (a metric regression has only predict_metrics)
                    members = model.predict_members(held.labels) if hasattr(model, "predict_members") else None
                    pred = members.mean(0) if members is not None else model.predict(held.labels)
                    for j, r in enumerate(base):
                        a, b = (v[g] for v in single_deltas(train, test[j]))
                        obs, p = held.deltas[j][g], pred[j][g]
                        fig = double_figures(a, b, p, method, obs)
                        r.update({"magnitude_pred": fig["magnitude"], "residual_pred": fig["normalised_residual"],
                                  "c1_pred": fig["c1"], "c2_pred": fig["c2"],
                                  "nonadditive_pearson": fig["nonadditive_pearson"], "error_l2": fig["error_l2"],
                                  "pred_norm": float(np.linalg.norm(p)), "obs_norm": float(np.linalg.norm(obs))})
                        if members is not None and members.shape[0] > 1:
                            r.update(_ensemble_columns(model, members, j, held, train, g, method, levels))
                if hasattr(model, "predict_metrics"):  # its metrics, not those of its profiles (if any)
                    pm = model.predict_metrics(train, test)
                    for r, mag, res in zip(base, pm["magnitude"], pm["normalised_residual"]):
                        r.update({"magnitude_pred": float(mag), "residual_pred": float(res)})
                        if "c1_pred" in r:  # the weights of its profile do not give those metrics
                            r.update({"c1_pred": math.nan, "c2_pred": math.nan})
                rows += base
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    pd.DataFrame(base).to_csv(path.with_suffix(".tmp"), index=False)
                    path.with_suffix(".tmp").replace(path)
                if progress is not None:
                    last = pd.DataFrame(base)
                    na = last["nonadditive_pearson"].mean() if "nonadditive_pearson" in last else float("nan")
                    progress(f"seed {seed} fold {f + 1}/{len(folds)} {name}: {len(test)} doubles, "
                             + (f"non-additive Pearson {na:.3f}, " if np.isfinite(na) else "")
                             + f"fit {fit_s:.1f} s {_selected(model)}".rstrip())
    df = pd.DataFrame(rows)
    df.attrs.update({"method": method, "n_genes": int(g.size), "random": "random" in factories})
    return df
