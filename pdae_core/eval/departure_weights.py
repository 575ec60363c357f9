"""Gene-by-gene recalibration of a predicted departure from the sum of the parts.

A network predicts, for a pair ``A+B``, a departure ``E = dAB - dA - dB`` per gene. Where it has
been right on some genes and wrong on others, the observed departures of doubles it did not train
on say which: per gene ``g``, a ridge regression of the observed departure ``N_g`` on the predicted
one ``E_g`` and the sum of the singles ``S_g = dA_g + dB_g`` over those doubles gives the weights
of the recalibrated departure ``w_g E_g + v_g S_g`` (:func:`gene_weights`), shrunk towards
``(1, beta)``, one ``beta`` for every gene (:func:`best_beta`), with the shrinkage chosen by
cross-validation over the doubles (:func:`choose_gene_shrink`).

The interaction benchmark's ``pdae_stacked`` profile is this step on the cross-fitted ensemble's
out-of-fold predictions (non-additive Pearson 0.587 against the ensemble's 0.563 on
norman19_pseudobulk, docs/benchmarks.md). A cross-fitted ensemble of the product keeps the same
step in its calibration (:class:`DepartureWeights`, fitted by :func:`fit_departure_weights` from
the calibration doubles' out-of-fold departures), and the gene view of a pair
(:func:`~pdae_core.eval.departure.gene_departures`, ``pdae interactions --pair``, Compose) and the
pair screen's ``top_departures`` show the recalibrated departure with ranges from the
cross-validated errors. The step is kept only when its cross-validated agreement with the observed
departures beats the networks' own (training doubles only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from .cell_noise import gene_scores_fit, half_width_at_cells
from .conformal import conformal_rank, record_floats, record_levels
from .departure import pearson_rows

__all__ = ["BETAS", "GENE_SHRINKS", "MIN_DOUBLES", "DepartureWeights", "best_beta", "choose_gene_shrink",
           "cross_fitted_departures", "fit_departure_weights", "gene_weights"]

#: Shrinkages of :func:`gene_weights`, times the median over genes of ``sum_c E_cg^2``.
GENE_SHRINKS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: The uniform weights ``beta`` of the sum that :func:`best_beta` chooses from.
BETAS = tuple(float(b) for b in np.round(np.arange(-1.0, 1.0001, 0.05), 2))
#: A calibration needs this many doubles to recalibrate departures (5-fold cross-validation).
MIN_DOUBLES = 10
N_FOLDS = 5


def best_beta(E: np.ndarray, S: np.ndarray, N: np.ndarray, betas: Sequence[float] = BETAS) -> float:
    """The ``beta`` of ``betas`` with the best mean Pearson over genes of ``E + beta S`` with ``N``
    (doubles x genes: a predicted non-additive part, the singles' sums, the observed part)."""
    scores = [float(np.nanmean(pearson_rows(E + b * S, N))) for b in betas]
    return float(betas[int(np.nanargmax(scores))]) if np.isfinite(scores).any() else 0.0


def gene_weights(E: np.ndarray, S: np.ndarray, N: np.ndarray, beta: float, shrink: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per gene ``g``, the ridge regression of ``N_g`` on ``(E_g, S_g)`` over the doubles (rows),
    shrunk towards ``(1, beta)`` with penalty ``shrink`` times the median over genes of
    ``sum E_g^2``: the weights ``w``, ``v`` of the recalibrated part ``w E + v S``. A gene whose
    predicted departure has matched the observed one keeps its weight; one where it has not counts
    less."""
    a11, a12, a22 = (E * E).sum(0), (E * S).sum(0), (S * S).sum(0)
    lam = float(shrink) * float(np.median(a11))
    r1, r2 = (E * N).sum(0) + lam, (S * N).sum(0) + lam * beta
    det = (a11 + lam) * (a22 + lam) - a12 ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        w, v = ((a22 + lam) * r1 - a12 * r2) / det, ((a11 + lam) * r2 - a12 * r1) / det
    ok = det > 0  # a gene with no signal at all keeps (1, beta)
    return np.where(ok, w, 1.0), np.where(ok, v, beta)


def _folds(E: np.ndarray, S: np.ndarray, N: np.ndarray, betas: Sequence[float], genes: Any, n_folds: int,
           seed: int) -> list[tuple[np.ndarray, float]]:
    """Each cross-validation fold's training rows (a mask) and its ``beta`` (chosen on them)."""
    g = slice(None) if genes is None else genes
    out = []
    for grp in np.array_split(np.random.default_rng(seed).permutation(len(E)), n_folds):
        m = np.ones(len(E), dtype=bool)
        m[grp] = False
        out.append((m, best_beta(E[m][:, g], S[m][:, g], N[m][:, g], betas)))
    return out


def cross_fitted_departures(E: np.ndarray, S: np.ndarray, N: np.ndarray, shrink: float,
                            betas: Sequence[float] = BETAS, genes: Any = None, n_folds: int = N_FOLDS,
                            seed: int = 0, folds: list | None = None) -> np.ndarray:
    """Each row's recalibrated departure from weights fitted without it (``n_folds``-fold
    cross-validation over the rows, ``beta`` chosen again on each fold's training rows)."""
    out = np.empty_like(np.asarray(E, dtype=np.float64))
    for m, beta in folds if folds is not None else _folds(E, S, N, betas, genes, n_folds, seed):
        w, v = gene_weights(E[m], S[m], N[m], beta, shrink)
        out[~m] = w * E[~m] + v * S[~m]
    return out


def choose_gene_shrink(E: np.ndarray, S: np.ndarray, N: np.ndarray, betas: Sequence[float] = BETAS,
                       shrinks: Sequence[float] = GENE_SHRINKS, genes: Any = None, n_folds: int = N_FOLDS,
                       seed: int = 0) -> tuple[float, dict[float, float]]:
    """The shrinkage of :func:`gene_weights` by ``n_folds``-fold cross-validation over the doubles
    (rows; ``beta`` chosen again on each fold's training rows, by :func:`best_beta`): the mean
    Pearson over ``genes`` of each left-out double's recalibrated part with its observed part."""
    g = slice(None) if genes is None else genes
    folds = _folds(E, S, N, betas, genes, n_folds, seed)
    scores = {float(sh): float(np.nanmean(pearson_rows(
        cross_fitted_departures(E, S, N, sh, folds=folds)[:, g], N[:, g]))) for sh in shrinks}
    return max(scores, key=scores.get), scores


@dataclass
class DepartureWeights:
    """The recalibration of a cross-fitted ensemble's departures, kept in its calibration record.

    ``weight`` (``w``) and ``sum_weight`` (``v``): per gene, the recalibrated departure is
    ``w E + v S``; ``beta`` and ``shrink``: what the weights were shrunk towards, and how hard;
    ``half_widths[level]``: per gene, the split-conformal half-width from the calibration doubles'
    cross-validated errors; ``model_var`` and ``scores[level]``: the same errors with the doubles'
    sampling noise taken apart (as :class:`~pdae_core.eval.cell_noise.CellNoise` does for the change),
    None without a noise model; ``pearson`` / ``pearson_networks``: the cross-validated mean Pearson
    of the recalibrated / the networks' own departure with the observed one over the calibration
    doubles (``n_doubles``)."""

    weight: np.ndarray
    sum_weight: np.ndarray
    beta: float
    shrink: float
    half_widths: dict[float, np.ndarray]
    n_doubles: int
    pearson: float
    pearson_networks: float
    model_var: np.ndarray | None = None
    scores: dict[float, np.ndarray] | None = None

    def apply(self, departure: np.ndarray, total: np.ndarray, genes: Any = None) -> np.ndarray:
        """The recalibrated departure ``w departure + v total`` (``genes``: the columns, an index)."""
        g = slice(None) if genes is None else genes
        return self.weight[g] * np.asarray(departure) + self.sum_weight[g] * np.asarray(total)

    def half_width(self, level: float, noise_var: np.ndarray | None = None, n_cells: float | None = None,
                   genes: Any = None) -> np.ndarray:
        """Per gene, the half-width of the recalibrated departure's range at ``level``; with a
        ``noise_var`` (per gene, of single cells) and ``n_cells``, for a pair measured with that many."""
        g = slice(None) if genes is None else genes
        lv = next((k for k in self.half_widths if abs(k - float(level)) < 1e-9), None)
        if lv is None:
            raise DataError(f"Departure ranges are kept at levels {sorted(self.half_widths)}; got {level!r}.")
        if noise_var is None or n_cells is None or self.scores is None or self.model_var is None:
            return self.half_widths[lv][g]
        return half_width_at_cells(self.scores[lv][g], self.model_var[g], np.asarray(noise_var)[g], n_cells)

    def to_dict(self) -> dict[str, Any]:
        def num(v: np.ndarray) -> list[float | None]:
            return [float(x) if np.isfinite(x) else None for x in np.asarray(v, dtype=np.float64)]

        out: dict[str, Any] = {
            "weight": num(self.weight), "sum_weight": num(self.sum_weight), "beta": float(self.beta),
            "shrink": float(self.shrink), "n_doubles": int(self.n_doubles), "pearson": float(self.pearson),
            "pearson_networks": float(self.pearson_networks),
            "half_widths": {f"{lv:g}": num(hw) for lv, hw in sorted(self.half_widths.items())},
        }
        if self.model_var is not None and self.scores is not None:
            out["model_var"] = num(self.model_var)
            out["scores"] = {f"{lv:g}": num(s) for lv, s in sorted(self.scores.items())}
        return out

    @classmethod
    def from_dict(cls, d: Any, n_genes: int, bad: Callable[[str], Exception]) -> DepartureWeights:
        """Read :meth:`to_dict`'s output, checking every field (``bad(<what is wrong>)`` raises)."""
        if not isinstance(d, dict):
            raise bad("departure_weights must be an object")

        def signed(key: str) -> np.ndarray:
            v = d.get(key)
            if (not isinstance(v, list) or len(v) != n_genes
                    or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v)):
                raise bad(f"departure_weights.{key} must be a list of {n_genes} numbers")
            a = np.asarray(v, dtype=np.float64)
            if not np.isfinite(a).all():
                raise bad(f"departure_weights.{key} must be finite")
            return a

        def number(key: str) -> float:
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise bad(f"departure_weights.{key} must be a finite number")
            return float(v)

        n = d.get("n_doubles")
        if type(n) is not int or n < MIN_DOUBLES:
            raise bad(f"departure_weights.n_doubles must be an integer of at least {MIN_DOUBLES}")
        hw = record_levels(d.get("half_widths"), "departure_weights.half_widths", n_genes, bad)
        mv, sc = d.get("model_var"), d.get("scores")
        if (mv is None) != (sc is None):
            raise bad("departure_weights needs both model_var and scores, or neither")
        if mv is not None:
            mv = record_floats(mv, "departure_weights.model_var", n_genes, bad)
            sc = record_levels(sc, "departure_weights.scores", n_genes, bad)
            if set(sc) != set(hw):
                raise bad("departure_weights.scores must have the levels of half_widths")
        if number("shrink") < 0:
            raise bad("departure_weights.shrink must be non-negative")
        return cls(weight=signed("weight"), sum_weight=signed("sum_weight"), beta=number("beta"),
                   shrink=number("shrink"), half_widths=hw, n_doubles=n, pearson=number("pearson"),
                   pearson_networks=number("pearson_networks"), model_var=mv, scores=sc)


def fit_departure_weights(E: np.ndarray, S: np.ndarray, N: np.ndarray, levels: Sequence[float],
                          noise_var: np.ndarray | None = None, cells: np.ndarray | None = None,
                          seed: int = 0) -> DepartureWeights | None:
    """The :class:`DepartureWeights` of out-of-fold predicted departures ``E``, singles' sums ``S``
    and observed departures ``N`` (calibration doubles x genes), or None when there are fewer than
    :data:`MIN_DOUBLES` doubles or the recalibration does not beat the networks' own departures in
    cross-validation. With the doubles' ``cells`` and the pooled per-gene cell variance
    ``noise_var`` the ranges also come at any number of cells."""
    E, S, N = (np.asarray(x, dtype=np.float64) for x in (E, S, N))
    if len(E) < MIN_DOUBLES:
        return None
    shrink, scores = choose_gene_shrink(E, S, N, seed=seed)
    raw = float(np.nanmean(pearson_rows(E, N)))
    if not scores[shrink] > raw + 1e-9:  # no better than the networks (beyond rounding): keep theirs
        return None
    beta = best_beta(E, S, N)
    w, v = gene_weights(E, S, N, beta, shrink)
    errors = cross_fitted_departures(E, S, N, shrink, seed=seed) - N
    ranked = np.sort(np.abs(errors), axis=0)
    half = {}
    for lv in levels:
        k = conformal_rank(len(ranked), lv)
        half[float(lv)] = np.full(E.shape[1], np.inf) if k is None else ranked[k - 1]
    mv = sc = None
    if noise_var is not None and cells is not None:
        mv, sc = gene_scores_fit(errors, np.asarray(noise_var, dtype=np.float64)[None]
                                 / np.asarray(cells, dtype=np.float64)[:, None], levels)
    return DepartureWeights(weight=w, sum_weight=v, beta=beta, shrink=shrink, half_widths=half, n_doubles=len(E),
                            pearson=float(scores[shrink]), pearson_networks=raw, model_var=mv, scores=sc)
