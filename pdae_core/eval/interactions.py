"""Genetic-interaction metrics of a double perturbation A+B (Norman et al. 2019,
Science 365:786, "genetic interaction manifold"); pure numpy functions.

Inputs are the mean changes from control over one gene set: ``dA``, ``dB`` (the two
singles) and ``dAB`` (the double). The double is fitted as a mix of its parts,
``dAB ~ c1 dA + c2 dB`` (no intercept; robust Theil-Sen by default, as in the paper,
or least squares), and described by:

* ``magnitude`` = sqrt(c1^2 + c2^2): how strongly the double moves genes compared with
  its parts; by the paper's convention > 1 is *synergy*, < 1 *buffering* (note that an
  exactly additive double, c1 = c2 = 1, has magnitude sqrt(2));
* ``model_fit``: distance correlation of the fitted mix with the double; low = the
  double does something neither part does (*new phenotype*, neomorphic);
* ``equality_of_contribution``: min/max of how much the double resembles A and B
  (distance correlations); 1 = both parts show equally, near 0 = one part is invisible;
* ``dominance`` = |log10(|c1| / |c2|)|: 0 = both parts weigh the same, large = one
  part dominates (*epistasis*: the double looks like that single);
* ``similarity``: distance correlation of the two singles together with the double;
  high = the double is predictable from its parts (also high for *redundant* parts);
* ``normalised_residual`` = ||dAB - dA - dB|| / ||dA + dB||: how far the double is
  from the plain sum, relative to the sum's size (0 = exactly additive).

:func:`interaction_metrics` computes them for one double, :func:`interaction_table`
for many (from a conditions x genes table of changes or a ProfileSet),
:func:`mean_changes` gets the changes from cells, :func:`expressed_genes` picks the
default gene set and :func:`describe_interaction` says it in one sentence.

Distance correlation (:func:`distance_correlation`) is the biased (V-statistic) form
of Szekely et al. 2007, as ``dcor.distance_correlation``; it is computed in blocks of
rows, so its memory is O(n * block) (a few MB) rather than O(n^2), and its time is
O(n^2): about a second per double for 5,000 genes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data.registry import PerturbationRegistry, condition_column, expression_matrix
from ..errors import DataError

if TYPE_CHECKING:
    from .pseudobulk.profiles import ProfileSet

__all__ = [
    "METRICS",
    "distance_correlation",
    "fit_coefficients",
    "interaction_metrics",
    "interaction_table",
    "interactions_from_profiles",
    "pair_metrics",
    "interactions_from_cells",
    "mean_changes",
    "expressed_genes",
    "describe_interaction",
]

#: Keys of :func:`interaction_metrics` (and columns of :func:`interaction_table`, after
#: ``single_a`` and ``single_b``).
METRICS = (
    "c1", "c2", "magnitude", "model_fit", "equality_of_contribution", "dominance", "similarity",
    "normalised_residual", "nonadditive_norm", "dcor_a", "dcor_b", "n_genes",
)
METHODS = ("theil_sen", "lstsq")
#: Default expression thresholds of :func:`expressed_genes` (mean over control cells).
THRESHOLDS = {"counts": 0.5, "log1p": 0.1}
_RANK_RTOL = 1e-10  # [dA, dB] is treated as rank-deficient below this singular-value ratio
_BLOCK_ELEMENTS = 1 << 20  # distance-matrix entries held at once by distance_correlation

Deltas = Union[pd.DataFrame, tuple[Sequence[str], np.ndarray], "ProfileSet"]  # noqa: UP007


# ---------------------------------------------------------------------------------
# input checks


def _vector(v: Any, what: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim != 1 or a.size < 2:
        raise DataError(f"{what} must be a 1-D vector of at least 2 genes; got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{what} contains {int((~np.isfinite(a)).sum())} NaN or infinite values.")
    return a


def _vectors(dA: Any, dB: Any, dAB: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b, ab = _vector(dA, "dA"), _vector(dB, "dB"), _vector(dAB, "dAB")
    if not (a.shape == b.shape == ab.shape):
        raise DataError(f"dA, dB and dAB differ in length: {a.size}, {b.size}, {ab.size} genes.")
    return a, b, ab


# ---------------------------------------------------------------------------------
# distance correlation


def _dcor_many(xs: Sequence[np.ndarray], y: np.ndarray) -> list[float]:
    """Distance correlation of each ``xs[k]`` (n or n x p) with ``y``, in one blocked pass
    over the rows (the distances of ``y`` are computed once)."""
    n = y.shape[0]
    mats = [np.asarray(x, dtype=np.float64).reshape(n, -1) for x in [y, *xs]]
    mats = [m - m.mean(0) for m in mats]  # distances unchanged, better precision
    rows = [np.zeros(n) for _ in mats]  # row sums of each distance matrix
    cross = np.zeros(len(mats))  # sum_ij a_ij b_ij with y's distances (k = 0: y with itself)
    self_sq = np.zeros(len(mats))  # sum_ij a_ij^2
    block = max(1, _BLOCK_ELEMENTS // n)
    for i in range(0, n, block):
        dists = []
        for m in mats:
            if m.shape[1] == 1:
                d = np.subtract.outer(m[i : i + block, 0], m[:, 0])
                np.abs(d, out=d)
            else:
                d = np.sqrt(sum(np.subtract.outer(m[i : i + block, c], m[:, c]) ** 2 for c in range(m.shape[1])))
            dists.append(d)
        dy = dists[0]
        for k, d in enumerate(dists):
            rows[k][i : i + block] = d.sum(1)
            cross[k] += float(np.einsum("ij,ij->", d, dy))
            self_sq[k] += float(np.einsum("ij,ij->", d, d))

    def dcov2(k: int, sum_prod: float, other: int) -> float:
        # sum_ij A_ij B_ij of the double-centred matrices from the raw sums
        s = sum_prod - 2.0 / n * float(rows[k] @ rows[other]) + rows[k].sum() * rows[other].sum() / n**2
        return max(s / n**2, 0.0)

    var_y = dcov2(0, self_sq[0], 0)
    out = []
    for k in range(1, len(mats)):
        denom = math.sqrt(dcov2(k, self_sq[k], k) * var_y)
        out.append(math.sqrt(min(max(dcov2(k, cross[k], 0) / denom, 0.0), 1.0)) if denom > 0 else 0.0)
    return out


def distance_correlation(x: Any, y: Any) -> float:
    """Distance correlation of ``x`` (n values or an n x p matrix) with ``y`` (n values):
    0 = independent, 1 = one is a similarity transform of the other; it sees any kind of
    dependence, not only linear. Defined as 0 when either is constant."""
    yv = _vector(y, "y")
    xv = np.asarray(x, dtype=np.float64)
    if xv.ndim not in (1, 2) or xv.shape[0] != yv.size:
        raise DataError(f"x must have {yv.size} rows like y; got shape {xv.shape}.")
    if not np.all(np.isfinite(xv)):
        raise DataError("x contains NaN or infinite values.")
    return _dcor_many([xv], yv)[0]


# ---------------------------------------------------------------------------------
# fitting dAB ~ c1 dA + c2 dB


def _spatial_median(P: np.ndarray, max_iter: int = 500, tol: float = 1e-12) -> np.ndarray:
    """Point minimising the summed Euclidean distance to the rows of ``P`` (Weiszfeld's
    iteration with the Vardi-Zhang step for a row that coincides with the estimate)."""
    m = np.median(P, 0)
    scale = float(np.abs(P).max()) or 1.0
    for _ in range(max_iter):
        d = np.sqrt(((P - m) ** 2).sum(1))
        at = d <= 1e-14 * scale
        if at.all():
            break
        w = 1.0 / d[~at]
        T = (w[:, None] * P[~at]).sum(0) / w.sum()
        if at.any():
            r = float(np.linalg.norm((w[:, None] * (P[~at] - m)).sum(0)))
            gamma = min(1.0, at.sum() / r) if r > 0 else 1.0
            T = (1.0 - gamma) * T + gamma * m
        done = np.linalg.norm(T - m) <= tol * (1.0 + np.linalg.norm(m))
        m = T
        if done:
            break
    return m


def _theil_sen_full(X: np.ndarray, y: np.ndarray, max_subsets: int, seed: int) -> np.ndarray:
    n = X.shape[0]
    if n * (n - 1) // 2 <= max_subsets:
        i, j = np.triu_indices(n, 1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, size=max_subsets)
        j = rng.integers(0, n - 1, size=max_subsets)
        j = j + (j >= i)
    det = X[i, 0] * X[j, 1] - X[i, 1] * X[j, 0]
    ok = np.abs(det) > 1e-12 * np.linalg.norm(X[i], axis=1) * np.linalg.norm(X[j], axis=1)
    if not ok.any():
        return np.linalg.lstsq(X, y, rcond=None)[0]
    i, j, det = i[ok], j[ok], det[ok]
    c1 = (y[i] * X[j, 1] - y[j] * X[i, 1]) / det
    c2 = (X[i, 0] * y[j] - X[j, 0] * y[i]) / det
    return _spatial_median(np.column_stack([c1, c2]))


def fit_coefficients(
    dA: Any, dB: Any, dAB: Any, method: str = "theil_sen", *, max_subsets: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """``(c1, c2)`` of ``dAB ~ c1 dA + c2 dB`` without intercept.

    ``method="theil_sen"`` (default, as Norman et al.): the exact solution through every
    pair of genes (or ``max_subsets`` random pairs drawn with ``seed``, so the result is
    deterministic), summarised by their spatial median; robust to a minority of outlier
    genes. ``method="lstsq"``: ordinary least squares.

    Degenerate singles: if ``dA`` and ``dB`` are collinear (one is zero, or ``dA == dB``),
    the weights cannot be told apart; both methods then fit the one shared direction
    (Theil-Sen: median of the gene-wise ratios) and return the minimum-norm split, so
    ``dA == dB`` gives ``c1 == c2`` and ``dA == 0`` gives ``c1 == 0``. Both singles zero
    gives ``(0, 0)``.
    """
    if method not in METHODS:
        raise DataError(f"method must be one of {METHODS}, got {method!r}.")
    a, b, y = _vectors(dA, dB, dAB)
    X = np.column_stack([a, b])
    _, s, Vt = np.linalg.svd(X, full_matrices=False)
    if s[0] == 0.0:
        return 0.0, 0.0
    if s[1] > _RANK_RTOL * s[0]:
        c = (np.linalg.lstsq(X, y, rcond=None)[0] if method == "lstsq"
             else _theil_sen_full(X, y, int(max_subsets), seed))
        return float(c[0]), float(c[1])
    # rank 1: X = u v^T with v a unit vector; fit y ~ t u and return c = t v (minimum norm)
    v = Vt[0]
    u = X @ v
    if method == "lstsq":
        t = float(u @ y / (u @ u))
    else:
        nz = np.abs(u) > 1e-12 * np.abs(u).max()
        t = float(np.median(y[nz] / u[nz]))
    return float(t * v[0]), float(t * v[1])


# ---------------------------------------------------------------------------------
# metrics of one double


def interaction_metrics(
    dA: Any, dB: Any, dAB: Any, method: str = "theil_sen", *, max_subsets: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Norman et al.'s interaction metrics of one double (keys :data:`METRICS`).

    ``dA``, ``dB``, ``dAB``: changes from control of A, B and A+B over the same genes.

    * ``c1``, ``c2``: weights of A and B in the best mix ``dAB ~ c1 dA + c2 dB``
      (:func:`fit_coefficients`);
    * ``magnitude``: sqrt(c1^2 + c2^2), the strength of the double relative to its
      parts (> 1 synergy, < 1 buffering by the paper's convention; additive = sqrt 2);
    * ``model_fit``: how well the mix explains the double (distance correlation; low =
      new phenotype);
    * ``dcor_a``, ``dcor_b``: how much the double resembles A, resp. B;
    * ``equality_of_contribution``: min/max of those two (1 = both parts show equally;
      NaN if the double resembles neither, e.g. ``dAB == 0``);
    * ``dominance``: |log10(|c1|/|c2|)| (0 = balanced; ``inf`` when exactly one weight
      is 0; NaN when both are; signs are ignored);
    * ``similarity``: distance correlation of [dA, dB] (two columns) with the double;
    * ``nonadditive_norm``: ||dAB - dA - dB||, the part of the double its sum misses;
    * ``normalised_residual``: that divided by ||dA + dB|| (0 if it is 0; ``inf`` when
      the singles cancel exactly but the double does not);
    * ``n_genes``: the number of genes used.

    Raises DataError (a ValueError) for NaN/inf, vectors of different length or fewer
    than 2 genes. Constant vectors have distance correlation 0.
    """
    a, b, y = _vectors(dA, dB, dAB)
    c1, c2 = fit_coefficients(a, b, y, method, max_subsets=max_subsets, seed=seed)
    fitted = c1 * a + c2 * b
    model_fit, dcor_a, dcor_b, similarity = _dcor_many([fitted, a, b, np.column_stack([a, b])], y)
    hi = max(dcor_a, dcor_b)
    if c1 == 0.0 and c2 == 0.0:
        dominance = math.nan
    elif c1 == 0.0 or c2 == 0.0:
        dominance = math.inf
    else:
        dominance = abs(math.log10(abs(c1) / abs(c2)))
    nonadd = float(np.linalg.norm(y - a - b))
    total = float(np.linalg.norm(a + b))
    resid = nonadd / total if total > 0 else (0.0 if nonadd == 0 else math.inf)
    return {
        "c1": c1,
        "c2": c2,
        "magnitude": math.hypot(c1, c2),
        "model_fit": model_fit,
        "equality_of_contribution": min(dcor_a, dcor_b) / hi if hi > 0 else math.nan,
        "dominance": dominance,
        "similarity": similarity,
        "normalised_residual": resid,
        "nonadditive_norm": nonadd,
        "dcor_a": dcor_a,
        "dcor_b": dcor_b,
        "n_genes": float(y.size),
    }


# ---------------------------------------------------------------------------------
# many doubles


def _parts(name: str, separator: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in str(name).split(separator))


def _gene_positions(genes: Any, names: list[str] | None, n: int) -> np.ndarray:
    if genes is None:
        return np.arange(n)
    g = np.asarray(genes)
    if g.dtype == bool:
        if g.shape != (n,):
            raise DataError(f"A boolean gene mask must have length {n}, got {g.shape}.")
        idx = np.flatnonzero(g)
    elif g.dtype.kind in "USO":
        if names is None:
            raise DataError("Gene names were given but the deltas have none: pass positions or a mask.")
        pos = {s: i for i, s in enumerate(names)}
        missing = [s for s in g.tolist() if s not in pos]
        if missing:
            raise DataError(f"{len(missing)} genes are not in the deltas (first: {missing[:5]}).")
        idx = np.array([pos[s] for s in g.tolist()], dtype=np.int64)
    elif np.issubdtype(g.dtype, np.integer):
        idx = g.reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise DataError(f"Gene positions out of range for {n} genes.")
    else:
        raise DataError("genes must be names, integer positions or a boolean mask.")
    if idx.size < 2:
        raise DataError(f"The gene set has {idx.size} gene(s); the interaction metrics need at least 2.")
    return idx


def _unpack(deltas: Deltas, separator: str) -> tuple[list[str], np.ndarray, list[str] | None, str]:
    if isinstance(deltas, pd.DataFrame):
        return [str(c) for c in deltas.index], deltas.to_numpy(np.float64), [str(g) for g in deltas.columns], separator
    if hasattr(deltas, "deltas") and hasattr(deltas, "conditions"):  # a ProfileSet
        return list(deltas.conditions), np.asarray(deltas.deltas, np.float64), list(deltas.genes), deltas.separator
    if isinstance(deltas, tuple) and len(deltas) == 2:
        names, mat = deltas
        return [str(c) for c in names], np.asarray(mat, dtype=np.float64), None, separator
    raise DataError(
        "deltas must be a DataFrame (conditions x genes), a (names, matrix) pair or a ProfileSet; "
        f"got {type(deltas).__name__}."
    )


def interaction_table(
    deltas: Deltas,
    doubles: Sequence[str] | None = None,
    separator: str = "+",
    genes: Any = None,
    method: str = "theil_sen",
    *,
    max_subsets: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`interaction_metrics` of many doubles, one row each (index ``double``; columns
    ``single_a``, ``single_b`` and :data:`METRICS`), from one table of changes.

    ``deltas``: changes from control, one row per condition: a DataFrame (index =
    condition names, columns = genes), a ``(names, matrix)`` pair or a ProfileSet (its
    own separator is used). Doubles are written ``A<separator>B``; their singles are
    the rows named ``A`` and ``B`` (``B+A`` finds the row ``A+B``). ``doubles``:
    default every two-part condition whose two singles are rows. ``genes``: names,
    positions or a boolean mask (default all genes, e.g. :func:`expressed_genes`).
    Raises DataError naming doubles that are not two-part or lack a single.
    """
    names, mat, gene_names, separator = _unpack(deltas, separator)
    if mat.ndim != 2 or mat.shape[0] != len(names):
        raise DataError(f"The deltas matrix has shape {mat.shape} for {len(names)} condition names.")
    if not separator:
        raise DataError("separator must be a non-empty string.")
    rows: dict[frozenset[str], int] = {}
    for i, name in enumerate(names):
        key = frozenset(_parts(name, separator))
        if key in rows:
            raise DataError(f"Conditions {names[rows[key]]!r} and {name!r} are the same condition; keep one row.")
        rows[key] = i
    if doubles is None:
        doubles = [n for n in names if len(set(_parts(n, separator))) == 2
                   and all(frozenset([p]) in rows for p in _parts(n, separator))]
    bad = [d for d in doubles if len(set(_parts(d, separator))) != 2]
    if bad:
        raise DataError(f"Not doubles (written A{separator}B): {bad[:5]}.")
    missing = [d for d in doubles if frozenset(_parts(d, separator)) not in rows
               or any(frozenset([p]) not in rows for p in _parts(d, separator))]
    if missing:
        raise DataError(f"Doubles without a row for themselves or one of their singles: {missing[:5]}.")
    idx = _gene_positions(genes, gene_names, mat.shape[1])
    out = []
    for d in doubles:
        pa, pb = _parts(d, separator)
        m = interaction_metrics(
            mat[rows[frozenset([pa])], idx], mat[rows[frozenset([pb])], idx], mat[rows[frozenset([pa, pb])], idx],
            method, max_subsets=max_subsets, seed=seed,
        )
        out.append({"double": d, "single_a": pa, "single_b": pb, **m})
    return pd.DataFrame(out, columns=["double", "single_a", "single_b", *METRICS]).set_index("double")


def interactions_from_profiles(
    profiles: ProfileSet, doubles: Sequence[str] | None = None, genes: Any = None, method: str = "theil_sen", **kw: Any
) -> pd.DataFrame:
    """:func:`interaction_table` of a :class:`~pdae_core.eval.pseudobulk.ProfileSet`
    (default doubles: ``profiles.eligible_doubles()``)."""
    if doubles is None:
        doubles = profiles.eligible_doubles()
    return interaction_table(profiles, doubles, genes=genes, method=method, **kw)


# ---------------------------------------------------------------------------------
# from cells


def _column_mean(x: Any, what: str) -> np.ndarray:
    if isinstance(x, ad.AnnData):
        x = x.X
    if sp.issparse(x):
        if x.shape[0] == 0:
            raise DataError(f"{what} has no cells.")
        m = np.asarray(x.mean(0), dtype=np.float64).ravel()
    else:
        a = np.asarray(x, dtype=np.float64)
        if a.ndim not in (1, 2) or a.size == 0:
            raise DataError(f"{what} must be a cells x genes matrix or a 1-D mean profile; got shape {a.shape}.")
        m = a if a.ndim == 1 else a.mean(0)
    if not np.all(np.isfinite(m)):
        raise DataError(f"{what} contains NaN or infinite values.")
    return m


def expressed_genes(control: Any, threshold: float | None = None, x_kind: str = "log1p") -> np.ndarray:
    """Positions of the genes whose mean over the control cells exceeds ``threshold``.

    ``control``: control cells (matrix, sparse matrix or AnnData) or their 1-D mean
    profile. Default threshold by ``x_kind`` (:data:`THRESHOLDS`): 0.5 for raw counts
    (Norman et al.: mean UMI > 0.5 in control cells) and 0.1 for log-normalised
    (log1p) data, a looser cut that keeps the genes a typical control cell detects.
    """
    if threshold is None:
        if x_kind not in THRESHOLDS:
            raise DataError(f"x_kind must be one of {tuple(THRESHOLDS)}, got {x_kind!r}.")
        threshold = THRESHOLDS[x_kind]
    return np.flatnonzero(_column_mean(control, "control") > float(threshold))


def _means(adata: ad.AnnData, registry: PerturbationRegistry, conditions: Sequence[str]) -> np.ndarray:
    """Mean expression (float64) of the cells of each condition; ``B+A`` matches ``A+B``."""
    col = condition_column(adata, registry.perturbation_key)
    key_of = {c: frozenset(registry.parse(c)) for c in np.unique(col)}
    out = np.empty((len(conditions), adata.n_vars))
    for k, cond in enumerate(conditions):
        want = frozenset(registry.parse(cond))
        mask = np.isin(col, [c for c, key in key_of.items() if key == want])
        if not mask.any():
            raise DataError(f"Condition {cond!r} has no cells in column {registry.perturbation_key!r}.")
        out[k] = expression_matrix(adata[mask], registry.layer).mean(0, dtype=np.float64)
    return out


_PAIR_EPS = 1e-12


def pair_metrics(dA: np.ndarray, dB: np.ndarray, dAB: np.ndarray) -> dict[str, np.ndarray]:
    """Least-squares interaction metrics of many doubles at once: ``dA``, ``dB``, ``dAB`` are
    (..., genes); returns arrays of shape (...). Collinear singles get the minimum-norm fit (as
    :func:`~pdae_core.eval.interactions.fit_coefficients`)."""
    dA, dB, dAB = (np.asarray(v, dtype=np.float64) for v in (dA, dB, dAB))
    X = np.stack([dA, dB], axis=-1)  # (..., G, 2)
    gram = np.swapaxes(X, -1, -2) @ X  # (..., 2, 2)
    rhs = np.swapaxes(X, -1, -2) @ dAB[..., None]  # (..., 2, 1)
    scale = np.maximum(np.trace(gram, axis1=-2, axis2=-1), _PAIR_EPS)[..., None, None]
    coef = (np.linalg.pinv(gram / scale, rcond=1e-10) @ (rhs / scale))[..., 0]
    c1, c2 = coef[..., 0], coef[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        dominance = np.abs(np.log10(np.abs(c1) / np.abs(c2)))
        s = np.linalg.norm(dA + dB, axis=-1)
        r = np.linalg.norm(dAB - dA - dB, axis=-1)
        resid = np.where(s > _PAIR_EPS, r / np.maximum(s, _PAIR_EPS), np.where(r > _PAIR_EPS, np.inf, 0.0))
    return {"c1": c1, "c2": c2, "magnitude": np.hypot(c1, c2), "dominance": dominance,
            "normalised_residual": resid, "nonadditive_norm": r, "effect": np.linalg.norm(dAB, axis=-1)}


def mean_changes(
    adata: ad.AnnData, registry: PerturbationRegistry, conditions: Sequence[str], control: str | None = None
) -> pd.DataFrame:
    """Mean expression of each condition's cells minus that of the control cells
    (``control``, default ``registry.control_label``): a conditions x genes DataFrame,
    ready for :func:`interaction_table`. Uses ``registry.layer``; checks the genes."""
    registry.check_genes(adata)
    ctrl = _means(adata, registry, [registry.control_label if control is None else control])[0]
    return pd.DataFrame(_means(adata, registry, list(conditions)) - ctrl, index=list(conditions),
                        columns=registry.gene_names)


def interactions_from_cells(
    adata: ad.AnnData,
    registry: PerturbationRegistry,
    doubles: Sequence[str],
    control: str | None = None,
    genes: Any = None,
    threshold: float | None = None,
    method: str = "theil_sen",
    **kw: Any,
) -> pd.DataFrame:
    """:func:`interaction_table` of ``doubles`` from single cells: mean changes of each
    double and its singles (:func:`mean_changes`), over ``genes`` (default
    :func:`expressed_genes` of the control cells with ``threshold`` and
    ``registry.x_kind``)."""
    registry.check_genes(adata)
    singles = sorted({p for d in doubles for p in registry.parse(d)})
    bad = [d for d in doubles if len(set(registry.parse(d))) != 2]
    if bad:
        raise DataError(f"Not doubles (written A{registry.separator}B): {bad[:5]}.")
    ctrl_name = registry.control_label if control is None else control
    means = _means(adata, registry, [ctrl_name, *singles, *doubles])
    if genes is None:
        genes = expressed_genes(means[0], threshold, registry.x_kind)
        if genes.size < 2:
            raise DataError(f"Only {genes.size} gene(s) pass the expression threshold in control; lower it.")
    deltas = pd.DataFrame(means[1:] - means[0], index=[*singles, *doubles], columns=registry.gene_names)
    return interaction_table(deltas, list(doubles), registry.separator, genes, method, **kw)


# ---------------------------------------------------------------------------------
# in words


def describe_interaction(
    metrics: Mapping[str, Any],
    names: tuple[str, str] | None = None,
    *,
    predicted: bool = False,
    additive_tol: float = 0.25,
    fit_min: float = 0.4,
    dominance_min: float = 0.5,
) -> str:
    """One plain sentence for :func:`interaction_metrics` output (or a row of
    :func:`interaction_table`).

    In order: *new phenotype* if ``model_fit < fit_min``; *additive* if both weights
    are within ``additive_tol`` of 1; else *synergy* (magnitude > 1) or *buffering*
    (magnitude <= 1). Then notes: one part dominates (``dominance >= dominance_min``,
    i.e. one weight >= ~3x the other) and parts pushing genes in opposite directions.
    ``names`` default to the row's ``single_a`` / ``single_b``, else "A" and "B";
    ``predicted`` prefixes "predicted ". The thresholds are rules of thumb (on Norman's
    2,000-HVG fold changes the model fit of the 126 doubles has median 0.62; 11 are below
    0.4). A low fit also arises when the double barely changes anything (noise): check
    its effect size before calling it a new phenotype.
    """
    a, b = names or (str(metrics.get("single_a", "A")), str(metrics.get("single_b", "B")))
    try:
        c1, c2 = float(metrics["c1"]), float(metrics["c2"])
        mag, fit, dom = float(metrics["magnitude"]), float(metrics["model_fit"]), float(metrics["dominance"])
    except KeyError as e:
        raise DataError(f"describe_interaction needs the keys of interaction_metrics; missing {e}.") from None
    pre = "predicted " if predicted else ""
    if not (math.isfinite(c1) and math.isfinite(c2)) or (c1 == 0 and c2 == 0):
        return f"{pre}no interaction measurable: the double is not explained by any weight of {a} and {b}."
    if fit < fit_min:
        text = (f"{pre}new phenotype: the double changes genes in a way no mix of {a} and {b} explains "
                f"(model fit {fit:.2f})")
    elif abs(c1 - 1) <= additive_tol and abs(c2 - 1) <= additive_tol:
        text = f"{pre}additive: the double is close to the sum of its parts (weights {a} {c1:.2f}, {b} {c2:.2f})"
    elif mag > 1:
        text = f"{pre}synergy: the double changes genes more than its parts predict (magnitude {mag:.2f})"
    else:
        text = f"{pre}buffering: the double changes genes less than the sum of its parts (magnitude {mag:.2f})"
    notes = []
    if dom >= dominance_min and not (abs(c1 - 1) <= additive_tol and abs(c2 - 1) <= additive_tol):
        top, low = (a, b) if abs(c1) > abs(c2) else (b, a)
        ratio = "" if math.isinf(dom) else f", weight {10 ** dom:.1f}x that of {low}"
        notes.append(f"mostly like {top}{ratio}")
    if c1 * c2 < 0:
        notes.append(f"{a} and {b} push genes in opposite directions")
    return text + ("; " + "; ".join(notes) if notes else "") + "."
