"""Intervals for what an experiment with ``n`` cells would observe.

A double's observed mean change is the mean of its cells, so it scatters around the true change
by ``sigma_g^2 / n`` per gene: a double measured with 5 cells is much noisier than one measured
with 500. Plain split-conformal intervals (:mod:`pdae_core.eval.calibration`) learn one width from
the calibration doubles (each with at least 10 cells), and so under-cover doubles measured with
fewer cells than those (on ``schraivogel20``, 71% of genes inside the 80% interval over all
held-out doubles, 83% over those with at least 10 cells; the intervals below: 82.5% over all,
``docs/benchmarks.md``).

:class:`CellNoise` separates the two sources of error. From the calibration doubles it keeps

* ``noise_var``: per gene, the variance of single cells within a double, pooled over the
  calibration doubles (:func:`cell_counts_and_variance`);
* ``gene_model_var``: per gene, the model's own error variance ``tau_g^2``, the mean squared
  out-of-fold error minus the mean sampling variance ``sigma_g^2 / n_d`` of the observed doubles
  (:func:`model_variance`, floored);
* ``gene_scores``: per level and gene, the split-conformal quantile of the studentised errors
  ``|pred - obs| / sqrt(tau_g^2 + sigma_g^2 / n_d)``;

so that the interval of the mean change a double measured with ``n`` cells would show is
``pred +- q_g sqrt(tau_g^2 + sigma_g^2 / n)`` (:meth:`CellNoise.gene_half_width`). For the
interaction metrics the sampling noise is not additive: noise in ``dAB`` inflates the
normalised residual of a few-cell double. :func:`metric_noise` simulates it (the predicted
change plus Gaussian noise of variance ``sigma_g^2 / n``, ``draws`` times): the metric's shift and
spread at ``n`` cells. The studentised metric errors ``|obs - pred - shift| / sqrt(tau_m^2 +
spread^2)`` of the calibration doubles give the metric intervals
(:meth:`CellNoise.metric_interval`). As ``n`` grows the intervals shrink to the model's own error.
Only training doubles are used; a held-out double contributes its number of cells, which an
experimenter chooses before measuring. The noise is taken as independent between genes, and
``tau`` is estimated from the same calibration doubles as the quantiles (not split off), which
leans slightly optimistic when there are few of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np

from ..data.registry import PerturbationRegistry, condition_column, expression_matrix
from .conformal import conformal_rank, record_floats, record_levels
from .interactions import pair_metrics
from .stacking import METRICS

__all__ = ["DRAWS", "CellNoise", "cell_counts_and_variance", "expected_ranges", "gene_scores_fit", "half_width_at_cells",
           "metric_noise", "model_variance", "studentised"]

#: noisy draws per double when simulating an interaction metric at ``n`` cells
DRAWS = 200
#: the model variance is floored at this fraction of the mean sampling variance (so a score never divides by 0)
_FLOOR = 1e-3
_TINY = 1e-12


def cell_counts_and_variance(adata: ad.AnnData, registry: PerturbationRegistry,
                             conditions: Sequence[str], variance: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """The number of cells of each condition (``B+A`` counts as ``A+B``) and, per gene, the variance
    of single cells within a condition pooled over ``conditions`` (weights ``n - 1``; None when no
    condition has two cells, or without ``variance``: the counts alone read no expression). Uses
    ``registry.layer``."""
    col = condition_column(adata, registry.perturbation_key)
    key_of = {c: frozenset(registry.parse(c)) for c in np.unique(col)}
    counts, ss, dof = [], np.zeros(adata.n_vars), 0
    for cond in conditions:
        want = frozenset(registry.parse(cond))
        mask = np.isin(col, [c for c, key in key_of.items() if key == want])
        n = int(mask.sum())
        counts.append(n)
        if variance and n >= 2:
            X = np.asarray(expression_matrix(adata[mask], registry.layer), dtype=np.float64)
            ss += ((X - X.mean(0)) ** 2).sum(0)
            dof += n - 1
    return np.asarray(counts, dtype=np.int64), (ss / dof if dof else None)


def model_variance(errors: np.ndarray, sampling_var: np.ndarray) -> np.ndarray:
    """The model's own error variance from signed errors ``errors`` (n, ...) whose observed side
    has sampling variance ``sampling_var`` (n, ...): ``mean(errors^2) - mean(sampling_var)`` along
    axis 0, floored at a small fraction of the mean sampling variance."""
    e2, v = np.mean(np.asarray(errors, dtype=np.float64) ** 2, axis=0), np.mean(sampling_var, axis=0)
    return np.maximum(e2 - v, _FLOOR * v + _TINY)


def studentised(errors: np.ndarray, sampling_var: np.ndarray, model_var: np.ndarray) -> np.ndarray:
    """``|errors| / sqrt(model_var + sampling_var)`` (broadcast)."""
    return np.abs(errors) / np.sqrt(np.asarray(model_var) + np.asarray(sampling_var))


def gene_scores_fit(errors: np.ndarray, sampling_var: np.ndarray, levels: Sequence[float]
                    ) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """From signed per-gene errors ``errors`` (n, genes) of doubles whose observed side has sampling
    variance ``sampling_var`` (n, genes): the model's variance per gene (:func:`model_variance`) and,
    per level, the split-conformal quantile of the studentised errors (inf when n is too small).
    The half-width at ``n`` cells is then ``q sqrt(model_var + noise_var / n)``."""
    tau = model_variance(errors, sampling_var)
    scores = np.sort(studentised(errors, sampling_var, tau), axis=0)
    out = {}
    for lv in levels:
        k = conformal_rank(len(scores), lv)
        out[float(lv)] = np.full(scores.shape[1], np.inf) if k is None else scores[k - 1]
    return tau, out


def half_width_at_cells(q: np.ndarray, model_var: np.ndarray, noise_var: np.ndarray, n_cells: float) -> np.ndarray:
    """``q sqrt(model_var + noise_var / n_cells)``: the half-width of what a double measured with
    ``n_cells`` cells would show (``inf`` cells: the true value, no sampling noise)."""
    samp = 0.0 if not np.isfinite(n_cells) else np.asarray(noise_var) / max(float(n_cells), 1.0)
    return np.asarray(q) * np.sqrt(np.asarray(model_var) + samp)


def metric_noise(dA: np.ndarray, dB: np.ndarray, dAB: np.ndarray, noise_var: np.ndarray, n_cells: float,
                 rng: np.random.Generator, draws: int = DRAWS) -> dict[str, tuple[float, float]]:
    """Per metric of :data:`~pdae_core.eval.stacking.METRICS`, ``(shift, spread)``: the mean change
    and the standard deviation of the metric of (``dA``, ``dB``, ``dAB + noise``) when ``dAB`` is
    observed as the mean of ``n_cells`` cells (noise of variance ``noise_var / n_cells`` per gene)
    instead of exactly. ``n_cells`` may be ``inf`` (no noise: (0, 0))."""
    if not np.isfinite(n_cells):
        return {m: (0.0, 0.0) for m in METRICS}
    sd = np.sqrt(np.asarray(noise_var, dtype=np.float64) / max(float(n_cells), 1.0))
    noisy = np.asarray(dAB, dtype=np.float64)[None] + rng.standard_normal((draws, len(sd))) * sd
    exact = pair_metrics(dA, dB, dAB)
    sim = pair_metrics(np.broadcast_to(dA, noisy.shape), np.broadcast_to(dB, noisy.shape), noisy)
    out = {}
    for m in METRICS:
        v = np.asarray(sim[m], dtype=np.float64)
        v = v[np.isfinite(v)]
        out[m] = (float(v.mean() - exact[m]), float(v.std(ddof=1))) if len(v) > 1 and np.isfinite(exact[m]) \
            else (0.0, 0.0)
    return out


@dataclass
class CellNoise:
    """The sampling-noise model of a calibration (module docstring): ``noise_var`` and
    ``gene_model_var`` per gene, ``gene_scores[level]`` per gene (conformal quantile of the
    studentised errors), ``metric_model_var`` and ``metric_scores`` (sorted studentised errors) per
    metric, and the calibration doubles' numbers of cells (``cells``)."""

    noise_var: np.ndarray
    gene_model_var: np.ndarray
    gene_scores: dict[float, np.ndarray]
    metric_model_var: dict[str, float]
    metric_scores: dict[str, np.ndarray]
    cells: np.ndarray

    @classmethod
    def fit(cls, gene_errors: np.ndarray, metric_errors: Mapping[str, np.ndarray],
            metric_spread: Mapping[str, np.ndarray], cells: np.ndarray, noise_var: np.ndarray,
            levels: Sequence[float]) -> CellNoise:
        """From the calibration doubles: signed per-gene errors ``gene_errors`` (n, genes, prediction
        minus observation), per metric the signed errors after the simulated shift (``obs - pred -
        shift``) and the simulated spread (:func:`metric_noise`), the doubles' cells and the pooled
        per-gene cell variance."""
        cells = np.asarray(cells, dtype=np.float64)
        tau, gene_scores = gene_scores_fit(gene_errors, np.asarray(noise_var, dtype=np.float64)[None] / cells[:, None],
                                           levels)
        m_var, m_scores = {}, {}
        for m in METRICS:
            e, s2 = np.asarray(metric_errors[m], dtype=np.float64), np.asarray(metric_spread[m], dtype=np.float64) ** 2
            ok = np.isfinite(e) & np.isfinite(s2)
            m_var[m] = float(model_variance(e[ok], s2[ok])) if ok.any() else np.inf
            sc = np.full(len(e), np.inf)  # a metric that could not be measured counts as a miss
            sc[ok] = studentised(e[ok], s2[ok], m_var[m])
            m_scores[m] = np.sort(sc)
        return cls(np.asarray(noise_var, dtype=np.float64), tau, gene_scores, m_var, m_scores, cells.astype(np.int64))

    def gene_half_width(self, level: float, n_cells: float) -> np.ndarray:
        """Per gene, the half-width of the interval of the mean change a double measured with
        ``n_cells`` cells would show (``inf`` cells: the true mean change)."""
        return half_width_at_cells(self._gene_q(level), self.gene_model_var, self.noise_var, n_cells)

    def metric_interval(self, metric: str, pred: float, shift: float, spread: float, level: float) -> tuple[float, float]:
        """The interval of ``metric`` a double would show, from the predicted value and the simulated
        ``shift`` and ``spread`` at its number of cells (:func:`metric_noise`), cut at 0."""
        k = conformal_rank(len(self.metric_scores[metric]), level)
        q = np.inf if k is None else float(self.metric_scores[metric][k - 1])
        centre, half = pred + shift, q * np.sqrt(self.metric_model_var[metric] + spread**2)
        return max(centre - half, 0.0), centre + half

    def _gene_q(self, level: float) -> np.ndarray:
        for lv, q in self.gene_scores.items():
            if abs(lv - float(level)) < 1e-9:
                return q
        raise ValueError(f"Cell-noise intervals are kept at levels {sorted(self.gene_scores)}; got {level!r}.")

    # ---- JSON ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def num(v: Any) -> list[float | None]:
            return [float(x) if np.isfinite(x) else None for x in np.atleast_1d(np.asarray(v, dtype=np.float64))]

        return {"noise_var": num(self.noise_var), "gene_model_var": num(self.gene_model_var),
                "gene_scores": {f"{lv:g}": num(q) for lv, q in sorted(self.gene_scores.items())},
                "metric_model_var": {m: num(v)[0] for m, v in self.metric_model_var.items()},
                "metric_scores": {m: num(v) for m, v in self.metric_scores.items()},
                "cells": [int(c) for c in self.cells]}

    @classmethod
    def from_dict(cls, d: Any, n_genes: int, n_doubles: int, bad: Callable[[str], Exception]) -> CellNoise:
        """Read :meth:`to_dict`'s output, checking every field (``bad(what)`` builds the error)."""

        def floats(v: Any, what: str, length: int | None) -> np.ndarray:
            return record_floats(v, f"cell_noise {what}", length, bad)

        if not isinstance(d, dict):
            raise bad("cell_noise is not an object")
        noise, tau = floats(d.get("noise_var"), "noise_var", n_genes), floats(d.get("gene_model_var"), "gene_model_var", n_genes)
        if not (np.isfinite(noise).all() and np.isfinite(tau).all() and (tau > 0).all()):
            raise bad("cell_noise variances must be finite, the model's positive")
        scores = record_levels(d.get("gene_scores"), "cell_noise gene_scores", n_genes, bad)
        mv, ms = d.get("metric_model_var"), d.get("metric_scores")
        if not (isinstance(mv, dict) and isinstance(ms, dict) and set(mv) == set(METRICS) == set(ms)):
            raise bad(f"cell_noise metric_model_var and metric_scores must have exactly {', '.join(METRICS)}")
        m_var = {m: float(floats([mv[m]], f"metric_model_var[{m!r}]", 1)[0]) for m in METRICS}
        m_scores = {m: np.sort(floats(ms[m], f"metric_scores[{m!r}]", n_doubles)) for m in METRICS}
        cells = d.get("cells")
        if (not isinstance(cells, list) or len(cells) != n_doubles
                or not all(type(c) is int and c >= 1 for c in cells)):
            raise bad(f"cell_noise cells must be {n_doubles} positive integers")
        return cls(noise, tau, scores, m_var, m_scores, np.asarray(cells, dtype=np.int64))


def expected_ranges(noise: CellNoise, dA: np.ndarray, dB: np.ndarray, dAB: np.ndarray, predicted: Mapping[str, float],
                    genes: np.ndarray, n_cells: float, level: float, seed: int = 0) -> dict[str, float]:
    """Per metric of :data:`~pdae_core.eval.stacking.METRICS`, the range (``<metric>_lo`` /
    ``<metric>_hi``) a double measured with ``n_cells`` cells would show at ``level``: the
    ``predicted`` metric moved by the noise of ``n_cells`` cells around the predicted change
    (``dA``, ``dB``, ``dAB`` on the gene positions ``genes``; :func:`metric_noise`, seeded) and
    widened by the calibration's studentised errors (:meth:`CellNoise.metric_interval`)."""
    shift = metric_noise(dA, dB, dAB, noise.noise_var[np.asarray(genes)], n_cells, np.random.default_rng(seed))
    out: dict[str, float] = {"cells": float(n_cells)}
    for m in METRICS:
        out[f"{m}_lo"], out[f"{m}_hi"] = noise.metric_interval(m, float(predicted[m]), *shift[m], level)
    return out
