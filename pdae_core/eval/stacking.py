"""Stacking: a model's predicted interaction metrics corrected by what the measured doubles teach.

A cross-fitted model predicts each of its training doubles out of fold (by the network that
did not train on it). Those predictions, compared with the observed doubles, say how the
model's metrics relate to the truth on this screen. :class:`MetricStacker` fits, for each
metric (``magnitude``, ``normalised_residual``), a ridge regression of the log observed
metric of the calibration doubles on

* the model's own log metrics of the double (both, out of fold),
* features of its two measured singles (:func:`single_features`: log of the smaller and of
  the larger norm of ``dA`` and ``dB``, their ratio, the cosine of ``dA`` and ``dB``, the log
  norm of ``dA + dB``), standardised,
* one indicator per perturbation seen in a calibration double (:func:`part_indicators`):
  how that perturbation tends to combine (a gene whose doubles are mostly buffered),

with an intercept and two penalties (one for the dense columns, one for the indicators),
chosen among ``alphas`` by exact leave-one-out error. A new pair gets the model's metrics
(the mean over networks of each network's log metric), its singles' features and its
indicators. The leave-one-out residuals give jackknife intervals (:meth:`MetricStacker.half_width`,
on the log scale, so the interval is multiplicative).

On ``norman19_pseudobulk`` this raised the held-out Spearman of the PDAE ensemble from
0.54 to 0.61 (magnitude) and from 0.67 to 0.78 (normalised residual), above every
baseline (``pdae benchmark --task interactions``: the ``pdae_stacked`` row, which uses this
class). The pair screen (:func:`~pdae_core.eval.pair_screen.screen_pairs`) applies it to a
cross-fitted ensemble's calibration record. Pure NumPy; only training doubles are used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .conformal import conformal_rank

__all__ = ["DEFAULT_ALPHAS", "FEATURES", "FLOOR", "METRICS", "MIN_DOUBLES", "MetricStacker", "log_metric",
           "part_indicators", "ridge_loo", "single_features"]

#: the features of a double's two singles (:func:`single_features`), in column order
FEATURES = ("log_min_norm", "log_max_norm", "norm_ratio", "cosine", "log_sum_norm")
#: ridge penalties tried (each of the two, on standardised columns)
DEFAULT_ALPHAS = tuple(10.0 ** np.arange(-2, 3.5, 0.5))
#: the interaction metrics stacked (and given intervals by a calibration)
METRICS = ("magnitude", "normalised_residual")
#: the pair screen stacks only with at least this many calibration doubles (measured, with measured singles)
MIN_DOUBLES = 20
#: metrics are floored here before the log (a metric of 0 is an exactly additive or null double)
FLOOR = 1e-6
_TINY = 1e-12


def log_metric(values: np.ndarray) -> np.ndarray:
    """``log(max(values, FLOOR))`` (NaN stays NaN)."""
    return np.log(np.clip(np.asarray(values, dtype=np.float64), FLOOR, None))


def single_features(dA: np.ndarray, dB: np.ndarray) -> np.ndarray:
    """Features of pairs of singles, symmetric in A and B: ``dA``, ``dB`` (n, genes) give (n, 5),
    the columns of :data:`FEATURES` (cosine 0 and ratio 1 when a single has no effect)."""
    dA, dB = np.atleast_2d(np.asarray(dA, dtype=np.float64)), np.atleast_2d(np.asarray(dB, dtype=np.float64))
    na, nb = np.linalg.norm(dA, axis=1), np.linalg.norm(dB, axis=1)
    lo, hi = np.minimum(na, nb), np.maximum(na, nb)
    both = (na > 0) & (nb > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both, np.einsum("ij,ij->i", dA, dB) / np.where(both, na * nb, 1.0), 0.0)
        ratio = np.where(hi > 0, lo / np.where(hi > 0, hi, 1.0), 1.0)
    return np.column_stack([np.log(lo + _TINY), np.log(hi + _TINY), ratio, cos,
                            np.log(np.linalg.norm(dA + dB, axis=1) + _TINY)])


def part_indicators(parts: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> np.ndarray:
    """One row per double, one column per perturbation of ``vocabulary``: 1 where the double holds
    it (perturbations outside the vocabulary are ignored)."""
    pos = {p: i for i, p in enumerate(vocabulary)}
    X = np.zeros((len(parts), len(pos)))
    for r, ps in enumerate(parts):
        for p in ps:
            if p in pos:
                X[r, pos[p]] = 1.0
    return X


def ridge_loo(Z: np.ndarray, y: np.ndarray, penalties: Sequence[np.ndarray]) -> tuple[float, np.ndarray, int, np.ndarray]:
    """Ridge fits of ``y`` on ``Z`` with each diagonal penalty of ``penalties``; the one with the
    smallest exact leave-one-out error: (mean squared error, coefficients, position, leave-one-out
    residuals)."""
    best = None
    for i, P in enumerate(penalties):
        A = np.linalg.solve(Z.T @ Z + np.diag(P), Z.T)
        H = np.einsum("ij,ji->i", Z, A)  # leverages
        coef = A @ y
        r = (y - Z @ coef) / np.clip(1.0 - H, 1e-9, None)
        loo = float(np.mean(r**2))
        if best is None or loo < best[0]:
            best = (loo, coef, i, r)
    return best


class MetricStacker:
    """Ridge stacking of log interaction metrics (module docstring).

    ``fit(model_log, features, parts, target_log)``: ``model_log`` (n, k), the model's log metrics
    of the n calibration doubles (out of fold); ``features`` (n, f), e.g. :func:`single_features`;
    ``parts``, each double's perturbations; ``target_log`` (n, T), the log observed metrics.
    After it: ``vocabulary_``, ``mu_`` / ``sd_`` (scaling of the dense columns), ``coef_`` (T
    vectors), ``alpha_`` ((dense, indicator) penalty per target), ``loo_residuals_`` (n, T) and
    ``weights_`` (the coefficients of the model's own metrics, standardised, per target)."""

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS) -> None:
        self.alphas = tuple(float(a) for a in alphas)

    def design(self, model_log: np.ndarray, features: np.ndarray, parts: Sequence[Sequence[str]]) -> np.ndarray:
        """Intercept, standardised dense columns (model metrics, then features), indicators."""
        dense = np.column_stack([np.asarray(model_log, dtype=np.float64), np.asarray(features, dtype=np.float64)])
        return np.column_stack([np.ones(len(dense)), (dense - self.mu_) / self.sd_,
                                part_indicators(parts, self.vocabulary_)])

    def fit(self, model_log: np.ndarray, features: np.ndarray, parts: Sequence[Sequence[str]],
            target_log: np.ndarray) -> MetricStacker:
        model_log, Y = np.atleast_2d(np.asarray(model_log, dtype=np.float64)), np.asarray(target_log, dtype=np.float64)
        Y = Y[:, None] if Y.ndim == 1 else Y
        if not (len(model_log) == len(features) == len(parts) == len(Y)):
            raise ValueError("model_log, features, parts and target_log need one row per double each.")
        if len(Y) < 4 or not (np.isfinite(model_log).all() and np.isfinite(features).all() and np.isfinite(Y).all()):
            raise ValueError("Stacking needs at least 4 doubles with finite metrics and features.")
        dense = np.column_stack([model_log, np.asarray(features, dtype=np.float64)])
        self.mu_, self.sd_ = dense.mean(0), dense.std(0)
        self.sd_[self.sd_ == 0] = 1.0
        self.vocabulary_ = sorted({p for ps in parts for p in ps})
        self.n_model_ = model_log.shape[1]
        Z = self.design(model_log, features, parts)
        n_dense = dense.shape[1]
        penalties = [np.r_[0.0, np.full(n_dense, a), np.full(Z.shape[1] - 1 - n_dense, b)]
                     for a in self.alphas for b in self.alphas]
        self.coef_, self.alpha_, self.weights_, loo = [], [], [], []
        for t in range(Y.shape[1]):
            _, coef, i, r = ridge_loo(Z, Y[:, t], penalties)
            self.coef_.append(coef)
            self.alpha_.append((self.alphas[i // len(self.alphas)], self.alphas[i % len(self.alphas)]))
            self.weights_.append(coef[1: 1 + self.n_model_].tolist())
            loo.append(r)
        self.loo_residuals_ = np.column_stack(loo)
        self.target_log_ = Y
        return self

    def predict(self, model_log: np.ndarray, features: np.ndarray, parts: Sequence[Sequence[str]]) -> np.ndarray:
        """Predicted log metrics, (n, T)."""
        Z = self.design(model_log, features, parts)
        return np.column_stack([Z @ c for c in self.coef_])

    def loo_predictions(self) -> np.ndarray:
        """Each calibration double's log metrics predicted by the fit without it, (n, T)."""
        return self.target_log_ - self.loo_residuals_

    def half_width(self, target: int, level: float) -> float:
        """Jackknife half-width (log scale) of target ``target`` at ``level``: the
        ``ceil((n + 1) level)``-th smallest absolute leave-one-out residual (inf when n is too small)."""
        r = np.sort(np.abs(self.loo_residuals_[:, target]))
        k = conformal_rank(len(r), level)
        return math.inf if k is None else float(r[k - 1])
