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

On ``norman19_pseudobulk`` this alone raised the held-out Spearman of the PDAE ensemble from
0.54 to 0.61 (magnitude) and from 0.67 to 0.78 (normalised residual). :class:`BlendedStacker`
blends it with kernel regression over pairs of singles
(:class:`~pdae_core.eval.pair_kernel.PairKernelRegression`: doubles of similar singles combine
alike) and learns the normalised residual as its numerator: 0.70 and 0.79 (``pdae benchmark
--task interactions``: the ``pdae_stacked`` row), level with the kernel regression alone (the
``pair_kernel`` baseline). The pair screen (:func:`~pdae_core.eval.pair_screen.screen_pairs`)
applies the blend to a cross-fitted ensemble's calibration record (:func:`fit_screen_stacker`,
:func:`add_stacked`);
the rest of the module is pure NumPy. Only training doubles are used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..data.registry import condition_column
from .conformal import conformal_rank
from .interactions import mean_changes, pair_metrics
from .pair_kernel import PairKernelRegression, convex_weights

__all__ = ["DEFAULT_ALPHAS", "FEATURES", "FLOOR", "METRICS", "MIN_DOUBLES", "RESIDUAL", "BlendedStacker", "MetricStacker",
           "add_stacked", "jackknife_half_width", "residual_as_numerator", "sum_norm_feature",
           "fit_screen_stacker", "log_metric", "part_indicators", "ridge_loo", "single_features"]

#: the features of a double's two singles (:func:`single_features`), in column order
FEATURES = ("log_min_norm", "log_max_norm", "norm_ratio", "cosine", "log_sum_norm")
#: ridge penalties tried (each of the two, on standardised columns)
DEFAULT_ALPHAS = tuple(10.0 ** np.arange(-2, 3.5, 0.5))
#: the interaction metrics stacked (and given intervals by a calibration)
METRICS = ("magnitude", "normalised_residual")
#: the column of the normalised residual in :data:`METRICS`
RESIDUAL = METRICS.index("normalised_residual")
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


def sum_norm_feature(features: np.ndarray) -> np.ndarray:
    """The ``log ||dA + dB||`` column of :func:`single_features`' output."""
    return np.asarray(features)[:, FEATURES.index("log_sum_norm")]


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


def jackknife_half_width(loo_residuals: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) level)``-th smallest absolute leave-one-out residual (inf when n is too small)."""
    r = np.sort(np.abs(np.asarray(loo_residuals, dtype=np.float64)))
    k = conformal_rank(len(r), level)
    return math.inf if k is None else float(r[k - 1])


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
        return jackknife_half_width(self.loo_residuals_[:, target], level)


def residual_as_numerator(log_metrics: np.ndarray, log_sum_norm: np.ndarray | None, sign: float) -> np.ndarray:
    """``log_metrics`` (n, METRICS) with ``sign * log_sum_norm`` added to the normalised residual's column:
    ``+1`` turns ``log(||dAB - dA - dB|| / ||dA + dB||)`` into ``log ||dAB - dA - dB||``, ``-1`` back."""
    out = np.array(log_metrics, dtype=np.float64, copy=True)
    if log_sum_norm is not None:
        out[:, RESIDUAL] += sign * np.asarray(log_sum_norm, dtype=np.float64)
    return out


class BlendedStacker:
    """A :class:`MetricStacker` blended with kernel regression over pairs of singles
    (:class:`~pdae_core.eval.pair_kernel.PairKernelRegression`): per metric, the stacker's and each
    kernel embedding's leave-one-out predictions of the calibration doubles are combined with
    non-negative weights summing to 1 (:func:`~pdae_core.eval.pair_kernel.convex_weights`), so the
    blend leans on whichever predicted the training doubles better.

    ``fit(model_log, features, parts, target_log, singles, log_sum_norm=None)``: the stacker's
    arguments (targets in the order of :data:`METRICS`), every measured single's mean change
    (``singles``), and ``log ||dA + dB||`` of each double. With ``log_sum_norm`` the normalised
    residual is learnt as its numerator, ``log ||dAB - dA - dB||`` (the model's own metric and the
    target both shifted), and the denominator, known exactly from the measured singles, is divided
    out of the prediction (pass it to :meth:`predict` too). After ``fit``: ``stacker_``, ``kernel_``
    (None when ``kernel`` is None), ``blend_`` (per metric, the weights of [stacker, each
    embedding]), ``loo_residuals_`` (of the blend, log scale), and the stacker's ``alpha_`` and
    ``weights_``."""

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS, kernel: PairKernelRegression | None = None) -> None:
        self.alphas, self.kernel = tuple(float(a) for a in alphas), kernel

    def fit(self, model_log: np.ndarray, features: np.ndarray, parts: Sequence[Sequence[str]],
            target_log: np.ndarray, singles: Mapping[str, np.ndarray],
            log_sum_norm: np.ndarray | None = None) -> BlendedStacker:
        Y = residual_as_numerator(np.atleast_2d(target_log), log_sum_norm, 1.0)
        st = self.stacker_ = MetricStacker(self.alphas).fit(residual_as_numerator(model_log, log_sum_norm, 1.0), features,
                                                            parts, Y)
        self.alpha_, self.weights_ = st.alpha_, st.weights_
        loo = st.loo_predictions()
        self.kernel_, self.blend_ = None, [np.ones(1) for _ in range(loo.shape[1])]
        if self.kernel is not None:
            self.kernel_ = self.kernel.fit(singles, parts, Y)
            each = self.kernel_.embedding_loo_
            self.blend_ = [convex_weights(np.column_stack([loo[:, t], each[t]]), Y[:, t]) for t in range(Y.shape[1])]
            loo = np.column_stack([np.column_stack([loo[:, t], each[t]]) @ w for t, w in enumerate(self.blend_)])
        self.loo_residuals_ = Y - loo  # the shift cancels: the same residuals on the metric's log scale
        self.target_log_ = np.atleast_2d(np.asarray(target_log, dtype=np.float64))
        return self

    def predict(self, model_log: np.ndarray, features: np.ndarray, parts: Sequence[Sequence[str]],
                log_sum_norm: np.ndarray | None = None) -> np.ndarray:
        """Predicted log metrics, (n, T)."""
        base = self.stacker_.predict(residual_as_numerator(model_log, log_sum_norm, 1.0), features, parts)
        if self.kernel_ is not None:
            each = self.kernel_.predict_each(parts)
            base = np.column_stack([np.column_stack([base[:, t], each[t]]) @ w for t, w in enumerate(self.blend_)])
        return residual_as_numerator(base, log_sum_norm, -1.0)

    def loo_predictions(self) -> np.ndarray:
        """Each calibration double's log metrics predicted without it (the blend), (n, T)."""
        return self.target_log_ - self.loo_residuals_

    def half_width(self, target: int, level: float) -> float:
        """Jackknife half-width (log scale) from the blend's leave-one-out residuals (as
        :meth:`MetricStacker.half_width`)."""
        return jackknife_half_width(self.loo_residuals_[:, target], level)


# ---------------------------------------------------------------------------------
# applied to a cross-fitted ensemble's pair screen


@dataclass
class _Stack:
    """A stacker fitted for a screen (:func:`fit_screen_stacker`): the observed change of each measured
    single on the screen's genes, how many calibration doubles taught it, and its check."""

    stacker: Any
    singles: dict[str, np.ndarray]
    n: int
    check: dict[str, dict[str, float]]

    def predict(self, model_log: np.ndarray, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Stacked metrics (not logs), (pairs, metrics); NaN where a single is not measured."""
        out = np.full((len(a), len(METRICS)), np.nan)
        ok = np.array([x in self.singles and y in self.singles for x, y in zip(a, b)], dtype=bool)
        if ok.any():
            A, B = (np.stack([self.singles[x] for x, k in zip(v, ok) if k]) for v in (a, b))
            pairs = [(x, y) for x, y, k in zip(a, b, ok) if k]
            feats = single_features(A, B)
            log = self.stacker.predict(np.asarray(model_log, dtype=np.float64)[ok], feats, pairs,
                                       sum_norm_feature(feats))
            out[ok] = np.where(np.isfinite(log), np.exp(log), np.nan)
        return out

    def half_width(self, metric: str, level: float) -> float:
        """The jackknife half-width of ``metric`` on the log scale: the interval is value x exp(-+ it)."""
        return self.stacker.half_width(METRICS.index(metric), level)


def fit_screen_stacker(model: Any, adata: ad.AnnData, gidx: np.ndarray, singles: Sequence[str],
                       min_cells: int) -> _Stack | str:
    """Fit the stacker (:mod:`pdae_core.eval.stacking`) of a cross-fitted ensemble on its calibration
    doubles measured in ``adata`` (at least ``min_cells`` cells for the double and each single): the
    out-of-fold predicted metrics of its calibration record, observed metrics and singles from
    ``adata`` on the genes ``gidx``. A string says why there is none."""
    from scipy.stats import spearmanr

    reg, cal = model.registry, getattr(model, "calibration", None)
    if cal is None or cal.out_of_fold is None:
        return ("the model is not a cross-fitted ensemble" if cal is None else
                "the checkpoint's calibration predates the out-of-fold metrics the correction needs (retrain it)")
    counts = pd.Series(condition_column(adata, reg.perturbation_key)).value_counts()
    ok = {c for c in counts.index if counts[c] >= min_cells}
    oof = np.column_stack([log_metric(cal.out_of_fold[m]) for m in METRICS])
    rows = [(i, d, *reg.parse(d)) for i, d in enumerate(cal.doubles)]
    rows = [r for r in rows if len(r) == 4 and all(c in ok for c in r[1:]) and np.isfinite(oof[r[0]]).all()]
    measured = sorted(set(singles) & ok)
    if len(rows) >= MIN_DOUBLES:
        need = sorted(set(measured) | {c for r in rows for c in r[1:]})
        delta = dict(zip(need, mean_changes(adata, reg, need).to_numpy(np.float64)[:, gidx]))
        A, B, AB = (np.stack([delta[r[k]] for r in rows]) for k in (2, 3, 1))
        obs = pair_metrics(A, B, AB)
        target = np.column_stack([log_metric(obs[m]) for m in METRICS])
        keep = np.isfinite(target).all(1)
        rows, A, B, target = [r for r, k in zip(rows, keep) if k], A[keep], B[keep], target[keep]
    if len(rows) < MIN_DOUBLES:
        return (f"{len(rows)} calibration doubles are measured in the data with both singles (at least "
                f"{MIN_DOUBLES} are needed)")
    feats = single_features(A, B)
    st = BlendedStacker(kernel=PairKernelRegression()).fit(
        oof[[r[0] for r in rows]], feats, [r[2:] for r in rows], target,
        {c: delta[c] for c in sorted(set(measured) | {c for r in rows for c in r[2:]})}, sum_norm_feature(feats))
    loo = st.loo_predictions()
    check = {m: {"model": float(spearmanr(oof[[r[0] for r in rows], t], target[:, t])[0]),
                 "stacked": float(spearmanr(loo[:, t], target[:, t])[0])} for t, m in enumerate(METRICS)}
    return _Stack(st, {s: delta[s] for s in measured}, len(rows), check)


def add_stacked(table: pd.DataFrame, model: Any, adata: ad.AnnData, gidx: np.ndarray, model_log: dict[str, np.ndarray],
                level: float, kappa: float, min_cells: int) -> dict[str, Any]:
    """Add the stacked estimate of each metric (:func:`fit_screen_stacker`) to ``table``:
    ``magnitude_stacked`` (with ``_lo`` / ``_hi``, jackknife intervals at ``level``),
    ``normalised_residual_stacked`` (same) and ``test_next_stacked``, for the pairs whose two singles
    are measured in ``adata``. Returns the table's attrs: ``stacked_doubles`` and ``stacked_check``
    (per metric, the Spearman correlation over the calibration doubles of the observed metric with
    the model's out-of-fold metric and with the stacker's leave-one-out prediction), or
    ``stacked_note`` saying why there is no stacked estimate."""
    stack = fit_screen_stacker(model, adata, gidx, sorted(set(table["a"]) | set(table["b"])), min_cells)
    if isinstance(stack, str):
        return {"stacked_note": f"no stacked estimate: {stack}"}
    pred = stack.predict(np.column_stack([model_log[m] for m in METRICS]), table["a"].tolist(), table["b"].tolist())
    for t, m in enumerate(METRICS):
        hw = stack.half_width(m, level)
        table[f"{m}_stacked"] = pred[:, t]
        table[f"{m}_stacked_lo"], table[f"{m}_stacked_hi"] = pred[:, t] * np.exp(-hw), pred[:, t] * np.exp(hw)
    table["test_next_stacked"] = table["normalised_residual_stacked"] + kappa * table["normalised_residual_spread"].fillna(0.0)
    return {"stacked_doubles": stack.n, "stacked_check": stack.check, "stacked_level": level}
