"""Bootstrap intervals: of the energy distance between predicted and observed cells
(:func:`bootstrap_energy_distance`), of the difference between two models scored on
the same cells (:func:`paired_bootstrap_difference`), and of a mean over clusters
of rows (:func:`cluster_bootstrap`, the benchmark's pooled intervals over conditions)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .matrices import Cells, as_matrix, centred, check_same_genes, check_var_names, pair_sums

__all__ = ["bootstrap_energy_distance", "paired_bootstrap_difference", "cluster_bootstrap"]


def _check_boot(n_boot: int, ci: float) -> None:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}.")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}.")


def _resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) multiplicities of ``n`` draws with replacement from ``n`` cells."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _tie_free_within(s: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean within-set distance of resampled sets over pairs of *distinct* cells: a cell
    drawn ``c`` times forms ``c (c - 1)`` ordered pairs with its own copies, at distance 0,
    which are left out. ``s`` holds ``c^T D c`` (diagonal 0) per row of ``counts``;
    row 0 (all ones) gives the data's U-statistic within-set mean. A replicate that
    drew a single distinct cell has no such pair and gets the data's value."""
    n_pairs = counts.sum(1) ** 2 - (counts**2).sum(1)
    out = np.full_like(s, s[0] / n_pairs[0] if n_pairs[0] > 0 else 0.0)
    ok = n_pairs > 0
    out[ok] = s[ok] / n_pairs[ok]
    return out


def _within_weight(k: int, unbiased: bool) -> float:
    """Factor from the mean distance over distinct pairs to the estimator's within-set term."""
    return 1.0 if unbiased or k == 1 else (k - 1) / k


def _percentile_interval(replicates: np.ndarray, ci: float) -> tuple[float, float]:
    alpha = 1.0 - ci
    lo, hi = np.quantile(replicates, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def _boot_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """Row 0: the data (all ones); rows 1..n_boot: bootstrap multiplicities."""
    return np.vstack([np.ones((1, n)), _resample_counts(rng, n, n_boot)])


def _energy_terms(
    a: np.ndarray, b: np.ndarray, ca: np.ndarray, cb: np.ndarray, unbiased: bool, block: int, within_b: bool = True
) -> np.ndarray:
    """Energy distance of every weighted resample (rows of ``ca``/``cb``), ties left out
    of the within-set means (:func:`_tie_free_within`). Row 0 is the data's estimate.
    ``within_b=False`` omits ``b``'s within-set term (it cancels in differences)."""
    n, m = a.shape[0], b.shape[0]
    between = pair_sums(a, b, ca, cb, same=False, block=block) / (n * m)
    wa = _tie_free_within(pair_sums(a, a, ca, ca, same=True, block=block), ca)
    out = 2.0 * between - _within_weight(n, unbiased) * wa
    if within_b:
        wb = _tie_free_within(pair_sums(b, b, cb, cb, same=True, block=block), cb)
        out = out - _within_weight(m, unbiased) * wb
    return out


def bootstrap_energy_distance(
    pred: Cells,
    obs: Cells,
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
    *,
    unbiased: bool = True,
    block_size: int = 1024,
) -> tuple[float, float, float]:
    """Energy distance between predicted and observed cells with a bootstrap interval.

    Returns ``(estimate, lo, hi)``: ``estimate`` is :func:`energy_distance` on the
    data, ``[lo, hi]`` the percentile interval at level ``ci`` of ``n_boot``
    replicates. Each replicate resamples the cells of *both* sets with replacement
    (to their original sizes) and recomputes the estimator.

    **Ties.** A cell drawn ``c`` times has ``c (c - 1)`` ordered pairs with its own
    copies, at distance 0. They are *left out* of the within-set means (each mean
    runs over the pairs of distinct cells, ``sum_{i != j} c_i c_j ||x_i - x_j|| /
    (n^2 - sum_i c_i^2)``). Two reasons: (1) the replicates are then centred
    exactly on the estimate (their bootstrap expectation is the data's
    U-statistic, because the cells are exchangeable given the multiplicities), so
    the interval needs no bias correction; counting the copies instead centres the
    replicates on the V-statistic, ``~ E||X-X'||/n + E||Y-Y'||/m`` above the
    U-statistic: in high dimension that exceeds the spread and the interval misses
    the estimate; (2) distances concentrate in high dimension, so each zero-distance
    copy pair is an outlier that inflates the replicates' spread (~1.5x in 50
    genes with 100 cells), making the interval needlessly wide. A replicate with a
    single distinct cell in a set uses the data's within-set mean. With
    ``unbiased=False`` the replicates are V-statistics built the same way (within
    means scaled by ``(n - 1) / n``), centred on the data's V-statistic.

    Checked by simulation (Gaussians, 1 and 50 dimensions, 20-200 cells): coverage
    0.88-0.99 of a nominal 0.95 away from ED = 0; near ED = 0 (degenerate
    U-statistic) the interval is conservative (too wide). ``lo`` can be negative.
    Cost: ``3 n_boot`` quadratic forms over the distance matrices, computed in
    blocks (memory ``O(n_boot x (n + m))``).
    """
    _check_boot(n_boot, ci)
    check_var_names(pred, obs)
    a, b = as_matrix(pred, "pred"), as_matrix(obs, "obs")
    check_same_genes((a, "pred"), (b, "obs"))
    a, b = centred(a, b)
    rng = np.random.default_rng(seed)
    ca = _boot_counts(rng, a.shape[0], n_boot)
    cb = _boot_counts(rng, b.shape[0], n_boot)
    stat = _energy_terms(a, b, ca, cb, unbiased, block_size)
    lo, hi = _percentile_interval(stat[1:], ci)
    return float(stat[0]), lo, hi


def paired_bootstrap_difference(
    pred_a: Cells,
    pred_b: Cells,
    obs: Cells,
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
    *,
    unbiased: bool = True,
    paired_predictions: bool = False,
    block_size: int = 1024,
) -> tuple[float, float, float]:
    """``ED(pred_a, obs) - ED(pred_b, obs)`` with a paired bootstrap interval.

    Returns ``(diff, lo, hi)``. Every replicate resamples the observed cells once and
    scores both models against the *same* resampled cells (the noise of the
    observed sample, common to both, largely cancels; the observed cells'
    within-set term cancels exactly), and resamples each model's predictions with
    replacement. With ``paired_predictions=True`` (both models moved the same
    source cells, row for row) the two predictions share their resampling indices
    too. Ties and the percentile interval are as in
    :func:`bootstrap_energy_distance`. ``lo > 0``: model A is significantly worse
    (farther from the observed cells) than B at level ``ci``; ``hi < 0``:
    significantly better.
    """
    _check_boot(n_boot, ci)
    check_var_names(pred_a, pred_b, obs)
    a, b, o = as_matrix(pred_a, "pred_a"), as_matrix(pred_b, "pred_b"), as_matrix(obs, "obs")
    check_same_genes((a, "pred_a"), (b, "pred_b"), (o, "obs"))
    a, b, o = centred(a, b, o)
    if paired_predictions and a.shape[0] != b.shape[0]:
        raise DataError(
            f"paired_predictions needs as many cells in pred_a as in pred_b ({a.shape[0]} != {b.shape[0]})."
        )
    rng = np.random.default_rng(seed)
    co = _boot_counts(rng, o.shape[0], n_boot)
    ca = _boot_counts(rng, a.shape[0], n_boot)
    cb = ca if paired_predictions else _boot_counts(rng, b.shape[0], n_boot)
    stat = _energy_terms(a, o, ca, co, unbiased, block_size, within_b=False) - _energy_terms(
        b, o, cb, co, unbiased, block_size, within_b=False
    )
    lo, hi = _percentile_interval(stat[1:], ci)
    return float(stat[0]), lo, hi


def cluster_bootstrap(values: np.ndarray, clusters: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling clusters (conditions) with replacement."""
    names, inv = np.unique(clusters, return_inverse=True)
    sums = np.bincount(inv, weights=values, minlength=len(names))
    cnts = np.bincount(inv, minlength=len(names)).astype(float)
    idx = np.random.default_rng(seed).integers(0, len(names), size=(n_boot, len(names)))
    means = sums[idx].sum(1) / cnts[idx].sum(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)
