"""Metrics for predicted single-cell distributions (pure functions, no model code).

Inputs are cell matrices (cells x genes): numpy arrays, scipy sparse matrices or
AnnData objects (their ``X``). Everything is computed in float64.

Distribution metrics compare predicted cells with observed cells of one condition:

* :func:`energy_distance` (the PDAE's own criterion, Euclidean, beta = 1) with a
  bootstrap interval (:func:`bootstrap_energy_distance`), a paired comparison of two
  models (:func:`paired_bootstrap_difference`) and the split-half
  :func:`noise_floor` of the observed cells;
* :func:`mmd_rbf` (Gaussian-kernel MMD^2, median-heuristic bandwidth);
* :func:`mean_l2` (distance between the mean profiles).

Mean-effect metrics compare *changes from control* (``mean - ctrl_mean``), never
raw means: raw mean profiles of any two conditions correlate at ~0.99 because the
gene-to-gene variation of baseline expression dominates them.
:func:`pearson_delta`, :func:`r2_delta`, :func:`direction_accuracy` and
:func:`top_de_genes` work on mean vectors (or on cell matrices, which are averaged).

:func:`evaluate_condition` bundles all of them for one condition. The bootstrap
intervals are computed in :mod:`pdae_core.eval.bootstrap` (re-exported here), the
input checks and pairwise-distance sums in :mod:`pdae_core.eval.matrices`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..models import losses
from .bootstrap import bootstrap_energy_distance, paired_bootstrap_difference
from .matrices import (
    BLOCK,
    Cells,
    GeneIndex,
    as_matrix,
    centred,
    check_same_genes,
    check_var_names,
    delta_vectors,
    ed_from_sums,
    mean_vector,
    pair_sums,
)

__all__ = [
    "Cells",
    "GeneIndex",
    "energy_distance",
    "bootstrap_energy_distance",
    "paired_bootstrap_difference",
    "noise_floor",
    "median_heuristic",
    "mmd_rbf",
    "mean_l2",
    "pearson_delta",
    "r2_delta",
    "top_de_genes",
    "direction_accuracy",
    "evaluate_condition",
]


# ---------------------------------------------------------------------------------
# energy distance


def energy_distance(x: Cells, y: Cells, unbiased: bool = True, *, block_size: int = BLOCK) -> float:
    """Energy distance ``2 E||X-Y|| - E||X-X'|| - E||Y-Y'||`` between two sets of cells.

    ``unbiased=True`` is the U-statistic (within-set pairs ``i != j`` only; unbiased,
    can be slightly negative when both sets come from one distribution; a set of
    one cell contributes a within-set term of 0). ``unbiased=False`` is the
    V-statistic (``dcor.energy_distance``'s default; >= 0, 0 for identical sets).

    Computed with :func:`pdae_core.models.losses.energy_distance` in float64 on centred data;
    sets larger than ``block_size`` cells are processed in blocks of
    ``block_size x block_size`` distances, so memory stays bounded.
    """
    check_var_names(x, y)
    a, b = as_matrix(x, "x"), as_matrix(y, "y")
    check_same_genes((a, "x"), (b, "y"))
    a, b = centred(a, b)
    n, m = a.shape[0], b.shape[0]
    if max(n, m) <= block_size:
        with torch.no_grad():
            return float(losses.energy_distance(torch.from_numpy(a), torch.from_numpy(b), unbiased=unbiased))
    one_a, one_b = np.ones((1, n)), np.ones((1, m))
    sxy = pair_sums(a, b, one_a, one_b, same=False, block=block_size)
    sxx = pair_sums(a, a, one_a, one_a, same=True, block=block_size)
    syy = pair_sums(b, b, one_b, one_b, same=True, block=block_size)
    return float(ed_from_sums(sxy, sxx, syy, n, m, unbiased)[0])


def noise_floor(
    obs: Cells, n_splits: int = 20, seed: int = 0, *, unbiased: bool = True, block_size: int = 1024
) -> float:
    """Mean energy distance between two random halves of the observed cells.

    This is what a perfect model (one that samples the true distribution) would
    score against a sample of this size: no model can beat it except by chance.
    With the U-statistic (default) its expectation is exactly 0 (averaged over all
    splits it is 0 for any data), so it is ~0 and what matters is that a model's
    distance is compared with the noise of the estimate (use
    :func:`bootstrap_energy_distance`). With ``unbiased=False`` (V-statistic) it is
    ``~ 2 E||X-X'|| / (n/2)`` (about ``2 * mean pairwise distance / half size``), the
    floor of V-statistic distances between sets of half the size.
    Halves have ``n // 2`` and ``n - n // 2`` cells; needs at least 2 cells.
    """
    o = as_matrix(obs, "obs")
    n = o.shape[0]
    if n < 2:
        raise DataError(f"noise_floor needs at least 2 observed cells, got {n}.")
    if int(n_splits) < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}.")
    (o,) = centred(o)
    h = n // 2
    rng = np.random.default_rng(seed)
    w1 = np.zeros((n_splits, n))
    for r in range(n_splits):
        w1[r, rng.permutation(n)[:h]] = 1.0
    w2 = 1.0 - w1
    s12 = pair_sums(o, o, w1, w2, same=True, block=block_size)
    s11 = pair_sums(o, o, w1, w1, same=True, block=block_size)
    s22 = pair_sums(o, o, w2, w2, same=True, block=block_size)
    return float(ed_from_sums(s12, s11, s22, h, n - h, unbiased).mean())


# ---------------------------------------------------------------------------------
# MMD and mean distances


def median_heuristic(x: Cells, y: Cells | None = None, max_cells: int = 1000, seed: int = 0) -> float:
    """Median of the Euclidean distances between distinct cells of ``x`` (pooled with
    ``y`` if given), on at most ``max_cells`` cells drawn at random (``seed``). Falls
    back to the mean positive distance if the median is 0, and to 1.0 if all
    cells coincide."""
    from scipy.spatial.distance import pdist

    mats = [as_matrix(x, "x")] + ([as_matrix(y, "y")] if y is not None else [])
    if len(mats) == 2:
        check_same_genes((mats[0], "x"), (mats[1], "y"))
    pooled = np.vstack(mats)
    if pooled.shape[0] > max_cells:
        pooled = pooled[np.random.default_rng(seed).choice(pooled.shape[0], max_cells, replace=False)]
    if pooled.shape[0] < 2:
        return 1.0
    d = pdist(pooled - pooled.mean(0))
    med = float(np.median(d))
    if med > 0:
        return med
    pos = d[d > 0]
    return float(pos.mean()) if pos.size else 1.0


def mmd_rbf(
    x: Cells, y: Cells, bandwidth: float | None = None, *, unbiased: bool = True, block_size: int = BLOCK
) -> float:
    """Squared maximum mean discrepancy with the Gaussian kernel
    ``k(a, b) = exp(-||a - b||^2 / (2 bandwidth^2))``:

        MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y).

    ``bandwidth=None`` uses the median heuristic: the median Euclidean distance
    between distinct cells of the pooled sample (:func:`median_heuristic`, at most
    1000 cells). To compare several predictions of one condition, pass the same
    bandwidth to each (e.g. ``median_heuristic(obs)``), as :func:`evaluate_condition`
    does. ``unbiased=True``: U-statistic (within-set pairs ``i != j``, needs >= 2
    cells per set; can be slightly negative); ``unbiased=False``: V-statistic.
    """
    check_var_names(x, y)
    a, b = as_matrix(x, "x"), as_matrix(y, "y")
    check_same_genes((a, "x"), (b, "y"))
    n, m = a.shape[0], b.shape[0]
    if unbiased and min(n, m) < 2:
        raise DataError("The unbiased MMD needs at least 2 cells in each set; use unbiased=False.")
    sigma = median_heuristic(a, b) if bandwidth is None else float(bandwidth)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"bandwidth must be a positive number, got {bandwidth}.")
    a, b = centred(a, b)
    gamma = 1.0 / (2.0 * sigma * sigma)

    def kernel(d: torch.Tensor) -> torch.Tensor:
        return torch.exp(-gamma * (d * d - losses._EPS).clamp_min(0.0))

    one_a, one_b = np.ones((1, n)), np.ones((1, m))
    kxy = pair_sums(a, b, one_a, one_b, same=False, block=block_size, transform=kernel)[0]
    kxx = pair_sums(a, a, one_a, one_a, same=True, block=block_size, transform=kernel)[0]  # diagonal excluded
    kyy = pair_sums(b, b, one_b, one_b, same=True, block=block_size, transform=kernel)[0]
    if unbiased:
        wx, wy = kxx / (n * (n - 1)), kyy / (m * (m - 1))
    else:
        wx, wy = (kxx + n) / (n * n), (kyy + m) / (m * m)  # k(a, a) = 1
    return float(wx + wy - 2.0 * kxy / (n * m))


def mean_l2(x: Cells, y: Cells) -> float:
    """Euclidean distance between the mean profiles of two sets of cells."""
    check_var_names(x, y)
    a, b = as_matrix(x, "x"), as_matrix(y, "y")
    check_same_genes((a, "x"), (b, "y"))
    return float(np.linalg.norm(a.mean(0) - b.mean(0)))


# ---------------------------------------------------------------------------------
# mean effects (changes from control)


def pearson_delta(
    pred_mean: Cells | np.ndarray,
    obs_mean: Cells | np.ndarray,
    ctrl_mean: Cells | np.ndarray,
    genes: GeneIndex = None,
) -> float:
    """Pearson correlation, over ``genes``, between the predicted and the observed
    change from control (``pred_mean - ctrl_mean`` vs ``obs_mean - ctrl_mean``).
    NaN if either change is constant over the genes (e.g. a single gene)."""
    dp, do = delta_vectors(pred_mean, obs_mean, ctrl_mean, genes)
    dp, do = dp - dp.mean(), do - do.mean()
    den = math.sqrt(float(dp @ dp) * float(do @ do))
    return float(dp @ do) / den if den > 0 else float("nan")


def r2_delta(
    pred_mean: Cells | np.ndarray,
    obs_mean: Cells | np.ndarray,
    ctrl_mean: Cells | np.ndarray,
    genes: GeneIndex = None,
) -> float:
    """Coefficient of determination of the observed change from control by the
    predicted one, over ``genes``: ``1 - sum (d_obs - d_pred)^2 / sum (d_obs - mean d_obs)^2``
    (``sklearn.metrics.r2_score(d_obs, d_pred)``). 1 is perfect; it is not a squared
    correlation and is negative when the prediction is worse than a constant.
    NaN if the observed change is constant over the genes."""
    dp, do = delta_vectors(pred_mean, obs_mean, ctrl_mean, genes)
    ss_tot = float(((do - do.mean()) ** 2).sum())
    return 1.0 - float(((do - dp) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def top_de_genes(obs: Cells | np.ndarray, ctrl: Cells | np.ndarray, k: int = 20) -> np.ndarray:
    """Positions of the ``k`` genes with the largest ``|mean(obs) - mean(ctrl)|``, largest
    first (ties keep gene order). ``obs`` / ``ctrl``: cell matrices or mean profiles."""
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    o, c = mean_vector(obs, "obs"), mean_vector(ctrl, "ctrl")
    if o.shape != c.shape:
        raise DataError(f"obs has {o.shape[0]} genes but ctrl has {c.shape[0]}.")
    return np.argsort(-np.abs(o - c), kind="stable")[: int(k)]


def direction_accuracy(
    pred_mean: Cells | np.ndarray,
    obs_mean: Cells | np.ndarray,
    ctrl_mean: Cells | np.ndarray,
    genes: GeneIndex,
) -> float:
    """Fraction of ``genes`` (``None`` = all) whose predicted change from control has
    the sign of the observed change (``np.sign``: a change of exactly 0 matches only
    0). Meant for the top differentially expressed genes (:func:`top_de_genes`),
    where the observed sign is not noise."""
    dp, do = delta_vectors(pred_mean, obs_mean, ctrl_mean, genes)
    return float(np.mean(np.sign(dp) == np.sign(do)))


# ---------------------------------------------------------------------------------
# one condition


def evaluate_condition(
    pred: Cells,
    obs: Cells,
    ctrl: Cells,
    *,
    k_de: int = 20,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
    unbiased: bool = True,
    noise_splits: int = 20,
    mmd_bandwidth: float | None = None,
) -> dict[str, Any]:
    """Every metric for one condition: predicted, observed and control cells.

    Returns a dict with
    ``n_pred, n_obs, n_ctrl``; ``energy_distance`` (pred vs obs) and its bootstrap
    interval ``energy_distance_lo/hi`` (NaN unless ``n_boot > 0``);
    ``energy_distance_ctrl`` (control vs obs: what predicting "no change" scores);
    ``noise_floor`` (split halves of obs, NaN if ``noise_splits == 0`` or one cell);
    ``energy_distance_de`` (pred vs obs on the top DE genes only); ``mmd_rbf``
    (bandwidth ``mmd_bandwidth`` or the median heuristic on the *observed* cells, so
    that every prediction of a condition is scored with the same kernel; NaN if a
    set has one cell); ``mean_l2``; ``pearson_delta`` and ``r2_delta`` on all genes,
    and ``pearson_delta_de``, ``r2_delta_de``, ``direction_accuracy_de`` on the
    ``k_de`` top DE genes of obs vs ctrl, listed in ``de_genes`` (positions).
    """
    check_var_names(pred, obs, ctrl)
    p, o, c = as_matrix(pred, "pred"), as_matrix(obs, "obs"), as_matrix(ctrl, "ctrl")
    check_same_genes((p, "pred"), (o, "obs"), (c, "ctrl"))
    pm, om, cm = p.mean(0), o.mean(0), c.mean(0)
    de = top_de_genes(om, cm, k=k_de)
    nan = float("nan")
    out: dict[str, Any] = {"n_pred": p.shape[0], "n_obs": o.shape[0], "n_ctrl": c.shape[0]}
    if n_boot > 0:
        ed, lo, hi = bootstrap_energy_distance(p, o, n_boot=n_boot, seed=seed, ci=ci, unbiased=unbiased)
    else:
        ed, lo, hi = energy_distance(p, o, unbiased=unbiased), nan, nan
    out.update(energy_distance=ed, energy_distance_lo=lo, energy_distance_hi=hi)
    out["energy_distance_ctrl"] = energy_distance(c, o, unbiased=unbiased)
    out["noise_floor"] = (
        noise_floor(o, n_splits=noise_splits, seed=seed, unbiased=unbiased) if noise_splits > 0 and o.shape[0] > 1 else nan
    )
    out["energy_distance_de"] = energy_distance(p[:, de], o[:, de], unbiased=unbiased)
    bw = mmd_bandwidth if mmd_bandwidth is not None else median_heuristic(o)
    out["mmd_rbf"] = mmd_rbf(p, o, bandwidth=bw) if min(p.shape[0], o.shape[0]) > 1 else nan
    out["mean_l2"] = mean_l2(p, o)
    out["pearson_delta"] = pearson_delta(pm, om, cm)
    out["r2_delta"] = r2_delta(pm, om, cm)
    out["pearson_delta_de"] = pearson_delta(pm, om, cm, de)
    out["r2_delta_de"] = r2_delta(pm, om, cm, de)
    out["direction_accuracy_de"] = direction_accuracy(pm, om, cm, de)
    out["de_genes"] = [int(g) for g in de]
    return out
