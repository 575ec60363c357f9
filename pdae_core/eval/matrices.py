"""Shared ground of the metrics (:mod:`.metrics`, :mod:`.bootstrap`): checked cell
matrices, mean profiles and gene selections, and the blockwise weighted sums of
pairwise distances behind every energy statistic."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch

from ..errors import DataError
from ..models import losses

#: Cells x genes: a numpy array (or anything ``np.asarray`` accepts), a scipy sparse
#: matrix or an AnnData (its ``X``).
Cells = Union[np.ndarray, sp.spmatrix, ad.AnnData, Sequence[Sequence[float]]]  # noqa: UP007
#: Genes to use: integer positions or a boolean mask over genes; ``None`` = all.
GeneIndex = Union[np.ndarray, Sequence[int], Sequence[bool], None]  # noqa: UP007

BLOCK = 2048


# ---------------------------------------------------------------------------------
# input handling


def as_matrix(x: Cells, what: str = "cells") -> np.ndarray:
    """A finite 2-D float64 matrix with at least one row."""
    if isinstance(x, ad.AnnData):
        x = x.X
        if x is None:
            raise DataError(f"{what}: the AnnData has no expression matrix X.")
    if sp.issparse(x):
        x = x.toarray()
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise DataError(f"{what} must be a 2-D matrix (cells x genes); got an array of shape {a.shape}.")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise DataError(f"{what} has non-numeric dtype {a.dtype}.")
    if a.shape[0] == 0:
        raise DataError(f"{what} has no cells.")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise DataError(f"{what} contains NaN or infinite values.")
    return a


def check_var_names(*xs: Any) -> None:
    """Raise if AnnData inputs do not share their genes (order included)."""
    names = [list(map(str, x.var_names)) for x in xs if isinstance(x, ad.AnnData)]
    for other in names[1:]:
        if other != names[0]:
            raise DataError("The AnnData inputs do not have the same genes in the same order.")


def check_same_genes(*mats: tuple[np.ndarray, str]) -> None:
    g = mats[0][0].shape[1]
    for m, what in mats[1:]:
        if m.shape[1] != g:
            raise DataError(f"{mats[0][1]} has {g} genes but {what} has {m.shape[1]}.")


def centred(*mats: np.ndarray) -> list[np.ndarray]:
    """Subtract the pooled mean: distances do not change, but the ``|a|^2 + |b|^2 - 2ab``
    expansion in :func:`pdae_core.models.losses.pairwise_distances` loses far less precision."""
    n = sum(m.shape[0] for m in mats)
    c = sum(m.sum(0) for m in mats) / n
    return [m - c for m in mats]


def mean_vector(v: Cells | np.ndarray, what: str) -> np.ndarray:
    """A 1-D mean profile: 1-D input as it is, a cell matrix / AnnData averaged over cells."""
    if isinstance(v, ad.AnnData) or sp.issparse(v) or np.ndim(v) == 2:
        return as_matrix(v, what).mean(0)
    a = np.asarray(v, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise DataError(f"{what} must be a mean profile (1-D, one value per gene) or a cells x genes matrix.")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{what} contains NaN or infinite values.")
    return a


def gene_select(n_genes: int, genes: GeneIndex) -> np.ndarray:
    if genes is None:
        return np.arange(n_genes)
    g = np.asarray(genes)
    if g.dtype == bool:
        if g.shape != (n_genes,):
            raise DataError(f"A boolean gene mask must have length {n_genes}, got {g.shape}.")
        return np.flatnonzero(g)
    if g.size == 0:
        raise DataError("The gene selection is empty.")
    if not np.issubdtype(g.dtype, np.integer):
        raise DataError("genes must be integer positions or a boolean mask (map names with var_names.get_indexer).")
    g = g.reshape(-1)
    if g.min() < -n_genes or g.max() >= n_genes:
        raise DataError(f"Gene positions out of range for {n_genes} genes.")
    return g


def delta_vectors(
    pred_mean: Cells | np.ndarray, obs_mean: Cells | np.ndarray, ctrl_mean: Cells | np.ndarray, genes: GeneIndex
) -> tuple[np.ndarray, np.ndarray]:
    p = mean_vector(pred_mean, "pred_mean")
    o = mean_vector(obs_mean, "obs_mean")
    c = mean_vector(ctrl_mean, "ctrl_mean")
    if not (p.shape == o.shape == c.shape):
        raise DataError(f"Mean profiles differ in length: pred {p.shape[0]}, obs {o.shape[0]}, ctrl {c.shape[0]}.")
    idx = gene_select(p.shape[0], genes)
    return (p - c)[idx], (o - c)[idx]


# ---------------------------------------------------------------------------------
# weighted sums of pairwise distances (the engine behind every energy statistic)


@torch.no_grad()
def pair_sums(
    a: np.ndarray,
    b: np.ndarray,
    wa: np.ndarray,
    wb: np.ndarray,
    same: bool,
    block: int = BLOCK,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """``out[r] = sum_ij wa[r, i] * k(a_i, b_j) * wb[r, j]`` for every weight row ``r``,
    with ``k`` the Euclidean distance (or ``transform`` of it), in blocks of
    ``block x block`` distances. With ``same=True`` (``a`` is ``b``) the diagonal
    ``k(a_i, a_i)`` is taken as exactly 0: a cell's distance to itself."""
    A, B = torch.from_numpy(a), torch.from_numpy(b)
    WA, WB = torch.from_numpy(np.ascontiguousarray(wa)), torch.from_numpy(np.ascontiguousarray(wb))
    symmetric = same and wa is wb
    out = torch.zeros(WA.shape[0], dtype=torch.float64)
    for i in range(0, A.shape[0], block):
        for j in range(i if symmetric else 0, B.shape[0], block):
            D = losses.pairwise_distances(A[i : i + block], B[j : j + block])
            if transform is not None:
                D = transform(D)
            if same and i == j:
                D.fill_diagonal_(0.0)
            part = ((WB[:, j : j + block] @ D.T) * WA[:, i : i + block]).sum(1)
            out += 2.0 * part if (symmetric and j != i) else part
    return out.numpy()


def ed_from_sums(
    sxy: np.ndarray, sxx: np.ndarray, syy: np.ndarray, n: int, m: int, unbiased: bool
) -> np.ndarray:
    """Energy distance from the three sums of pairwise distances (diagonals excluded)."""

    def within(s: np.ndarray, k: int) -> np.ndarray:
        if unbiased:
            return s / (k * (k - 1)) if k > 1 else s * 0.0
        return s / (k * k)

    return 2.0 * sxy / (n * m) - within(sxx, n) - within(syy, m)
