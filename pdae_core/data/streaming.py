"""Expression matrices read by rows: in memory, sparse, or on disk (larger than memory).

Training asks a row source for the rows of one mini-batch at a time, so ``X`` never
has to be dense, or in memory, as a whole:

* :class:`DenseRows` and :class:`SparseRows` wrap an in-memory matrix (a CSR matrix
  is densified one batch at a time);
* :class:`BackedRows` reads rows of an ``.h5ad`` opened in backed mode
  (``anndata.read_h5ad(path, backed="r")``, dense or CSR ``X`` / a layer) with one
  sorted read per batch; only the batch is ever in memory.

:func:`prefetch` reads the next batches on a background thread while the current one
trains. :func:`preprocess_on_disk` is ``normalize_total + log1p`` (and optional HVG
selection, scanpy's ``seurat`` flavour) for an ``.h5ad`` that does not fit in memory:
two passes over row chunks, writing a new CSR ``.h5ad``.

Peak memory of a streamed run is the model, one batch (times the prefetch depth),
the validation cells (at most ``TrainConfig.val_max_cells`` per condition), the
cells used to initialise the model's input scaling (at most ``init_max_cells``), and
the per-cell labels and condition codes (a few bytes per cell): it does not grow with
the size of ``X``.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError


class RowSource(Protocol):
    """What training needs from an expression matrix: its shape and rows by index."""

    shape: tuple[int, int]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Dense float32 rows ``idx`` (any order, repeats allowed), in that order."""
        ...


class DenseRows:
    def __init__(self, X: np.ndarray):
        self.X = X
        self.shape = (int(X.shape[0]), int(X.shape[1]))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.X[np.asarray(idx)], dtype=np.float32)


class SparseRows:
    def __init__(self, X: sp.spmatrix):
        self.X = sp.csr_matrix(X)
        self.shape = (int(X.shape[0]), int(X.shape[1]))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.X[np.asarray(idx)].toarray().astype(np.float32, copy=False)


class BackedRows:
    """Rows of an on-disk matrix (``h5py.Dataset`` or anndata's backed CSR dataset),
    optionally restricted to ``subset`` (positions in the file; row ``i`` of this
    source is row ``subset[i]`` of the file). Reads each batch with one sorted,
    de-duplicated selection and puts the rows back in the requested order."""

    def __init__(self, X: Any, subset: np.ndarray | None = None, where: str = "X"):
        self.X = X
        self.where = where
        n_file = int(X.shape[0])
        self.subset = None if subset is None else np.asarray(subset, dtype=np.int64)
        if self.subset is not None and len(self.subset) and (self.subset.min() < 0 or self.subset.max() >= n_file):
            raise IndexError(f"subset indexes rows outside the {n_file} rows of {where}")
        self.shape = (n_file if self.subset is None else len(self.subset), int(X.shape[1]))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        file_rows = idx if self.subset is None else self.subset[idx]
        uniq, inverse = np.unique(file_rows, return_inverse=True)
        block = self.X[uniq]
        if sp.issparse(block):
            block = block.toarray()
        block = np.asarray(block, dtype=np.float32)
        if len(uniq) != len(file_rows) or not np.array_equal(uniq, file_rows):
            block = block[inverse]
        if not np.isfinite(block).all():
            bad = file_rows[~np.isfinite(block).all(1)]
            raise DataError(f"{self.where} has NaN or infinite values in row(s) {bad[:5].tolist()} of the file.")
        return block


def row_source(X: Any, subset: np.ndarray | None = None, where: str = "X") -> RowSource:
    """Wrap a dense array, a sparse matrix or a backed on-disk matrix as a :class:`RowSource`."""
    if isinstance(X, np.ndarray):
        return DenseRows(X if subset is None else X[subset])
    if sp.issparse(X):
        return SparseRows(X if subset is None else sp.csr_matrix(X)[subset])
    if hasattr(X, "shape") and hasattr(X, "__getitem__"):
        return BackedRows(X, subset, where)
    raise TypeError(f"cannot read rows from {type(X).__name__}")


class SubsetRows:
    """Rows ``idx`` of another :class:`RowSource` (row ``i`` here is row ``idx[i]`` there)."""

    def __init__(self, source: RowSource, idx: np.ndarray):
        self.source, self.idx = source, np.asarray(idx, dtype=np.int64)
        self.shape = (len(self.idx), int(source.shape[1]))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.source.rows(self.idx[np.asarray(idx, dtype=np.int64)])


def take_rows(X: np.ndarray | RowSource, idx: np.ndarray) -> np.ndarray | RowSource:
    """Rows ``idx`` of a dense array (a copy) or of a :class:`RowSource` (read on demand)."""
    return X[idx] if isinstance(X, np.ndarray) else SubsetRows(X, idx)


def prefetch(source: RowSource, batches: Iterable[np.ndarray], depth: int = 2) -> Iterator[np.ndarray]:
    """Yield ``source.rows(b)`` for each batch, reading up to ``depth`` batches ahead
    on a background thread (h5py releases the GIL while it reads). ``depth=0`` reads
    in the caller's thread. Errors in the reader are raised in the caller."""
    if depth <= 0:
        for b in batches:
            yield source.rows(b)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for b in batches:
                if stop.is_set():
                    return
                q.put(source.rows(b))
            q.put(done)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    t = threading.Thread(target=work, name="pdae-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a reader waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)


# ---------------------------------------------------------------------------------
# preprocessing without loading X


def _chunks(n: int, size: int) -> Iterator[slice]:
    for lo in range(0, n, size):
        yield slice(lo, min(n, lo + size))


def _read_rows(X: Any, sl: slice) -> sp.csr_matrix:
    block = X[sl]
    return sp.csr_matrix(block) if not sp.issparse(block) else block.tocsr()


def _seurat_hvg(mean: np.ndarray, var: np.ndarray, n_top: int, n_bins: int = 20) -> np.ndarray:
    """scanpy's ``flavor="seurat"`` highly-variable-gene ranking from per-gene mean and
    variance of the normalised (not log) expression: log dispersion, z-scored within
    20 bins of log mean; returns a boolean mask of the ``n_top`` highest."""
    norm = seurat_dispersion(mean, var, n_bins)
    finite = np.sort(norm[~np.isnan(norm)])[::-1]
    if finite.size == 0:
        return np.zeros(len(mean), dtype=bool)
    cutoff = finite[min(n_top, finite.size) - 1]
    return np.nan_to_num(norm, nan=-np.inf) >= cutoff  # ties at the cut-off are kept, as scanpy does


def seurat_dispersion(mean: np.ndarray, var: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """The normalised dispersion of :func:`_seurat_hvg` per gene (NaN where undefined)."""
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    disp = var / mean
    disp[disp == 0] = np.nan
    disp = np.log(disp)
    logmean = np.log1p(mean)
    df = pd.DataFrame({"mean": logmean, "disp": disp})
    df["bin"] = pd.cut(df["mean"], bins=n_bins)
    grouped = df.groupby("bin", observed=False)["disp"]
    bin_mean = grouped.transform("mean")
    bin_std = grouped.transform(lambda s: s.std(ddof=1))
    # single-gene bins: scanpy sets their normalised dispersion to 1 (std nan)
    one = df.groupby("bin", observed=False)["disp"].transform("count") == 1
    bin_std = bin_std.where(~one, bin_mean)
    bin_mean = bin_mean.where(~one, 0.0)
    return ((df["disp"] - bin_mean) / bin_std).to_numpy()


def preprocess_on_disk(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    target_sum: float = 1e4,
    n_top_genes: int | None = None,
    chunk_size: int = 20000,
) -> dict[str, Any]:
    """``normalize_total(target_sum) + log1p`` (and, with ``n_top_genes``, scanpy's
    ``seurat``-flavour HVG selection) of the raw counts in ``src``'s ``X``, streamed in
    row chunks into a new CSR ``.h5ad`` at ``dst``; ``obs``, ``var`` and the
    preprocessing record are copied. Memory: one chunk plus per-gene statistics.
    Returns what was done (also written to ``uns['pdae_preprocessing']``)."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("preprocess_on_disk writes a new file: dst must differ from src.")
    backed = ad.read_h5ad(src, backed="r")
    try:
        X = backed.X
        n, G = backed.shape
        # pass 1: per-gene mean and variance of the normalised counts (for the HVGs)
        s1 = np.zeros(G)
        s2 = np.zeros(G)
        for sl in _chunks(n, chunk_size):
            block = _read_rows(X, sl).astype(np.float64)
            if block.nnz and (block.data.min() < 0 or not np.all(np.mod(block.data, 1) == 0)):
                raise DataError(f"{src}: X must hold raw counts (non-negative integers) for preprocess_on_disk.")
            tot = np.asarray(block.sum(1)).ravel()
            tot[tot == 0] = 1.0
            norm = sp.diags(target_sum / tot) @ block
            s1 += np.asarray(norm.sum(0)).ravel()
            s2 += np.asarray(norm.multiply(norm).sum(0)).ravel()
        mean = s1 / n
        var = (s2 - n * mean**2) / max(n - 1, 1)
        keep = np.ones(G, dtype=bool)
        steps: dict[str, Any] = {"input": "counts", "normalize_total": float(target_sum), "log1p": True}
        if n_top_genes is not None and n_top_genes < G:
            keep = _seurat_hvg(mean, var, int(n_top_genes))
            steps["highly_variable_genes"] = int(n_top_genes)
        cols = np.flatnonzero(keep)
        var_df = backed.var.iloc[cols].copy()
        obs_df = backed.obs.copy()
        # pass 2: write log1p(normalised) of the kept genes, chunk by chunk
        tmp = dst.with_name(dst.name + ".tmp")
        with h5py.File(tmp, "w") as f:
            ad.io.write_elem(f, "obs", obs_df)
            ad.io.write_elem(f, "var", var_df)
            ad.io.write_elem(f, "uns", {"pdae_preprocessing": steps})
            first = True
            for sl in _chunks(n, chunk_size):
                block = _read_rows(X, sl).astype(np.float32)
                tot = np.asarray(block.sum(1)).ravel()
                tot[tot == 0] = 1.0
                block = (sp.diags((target_sum / tot).astype(np.float32)) @ block).tocsr()
                block.data = np.log1p(block.data)
                block = block[:, cols].tocsr()
                block.sort_indices()
                if first:
                    ad.io.write_elem(f, "X", block)  # resizable: anndata writes CSR with maxshape=(None,)
                    first = False
                else:
                    ad.io.sparse_dataset(f["X"]).append(block)
            for key in ("obsm", "varm", "layers", "obsp", "varp"):
                ad.io.write_elem(f, key, {})
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
        os.replace(tmp, dst)
    finally:
        backed.file.close()
    return steps
