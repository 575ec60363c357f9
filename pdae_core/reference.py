"""One shared 2-D map (UMAP) of a dataset's cells, fitted once and kept on disk.

:class:`ReferenceEmbedding` fits a UMAP on the top principal components of a *capped,
stratified* subsample of the cells (every condition keeps up to the same number of cells, so a
large control population does not crowd out the perturbations), then places **every** cell of
the dataset in that map at the distance-weighted mean position of its ``k`` nearest sampled
cells in PCA space (the idea of scanpy's ``ingest``). New cells (predictions) are placed the
same way in milliseconds.

Fitting costs seconds to a minute (plus numba compilation in a fresh process), so
:func:`cached_reference` keeps fitted maps on disk: a safetensors file of arrays and a JSON file
of names and settings (no pickle), found again by a fingerprint of the dataset (its cells,
genes, conditions and a sample of its values). A map only depends on the dataset's expression,
not on any model, so every model of a dataset shares it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from .data.registry import condition_column, expression_matrix
from .errors import DataError

__all__ = ["ReferenceEmbedding", "cached_reference", "default_cache_dir", "fingerprint", "stratified_sample",
           "umap_2d", "pca"]

FORMAT = 1
_ARRAYS = "reference.safetensors"
_META = "reference.json"
_CHUNK = 4096  # cells placed at a time (bounds the distance matrix)


def stratified_sample(conditions: Sequence[str], max_cells: int | None, seed: int = 0) -> np.ndarray:
    """Sorted positions of ``max_cells`` cells (all when there are fewer): every condition keeps
    ``min(n_c, cap)`` of its ``n_c`` cells, with the largest ``cap`` that fits (small conditions
    whole, large ones capped alike; the few places left go to large ones at random), drawn at
    random with ``seed``."""
    conds = np.asarray([str(c) for c in conditions], dtype=object)
    n = len(conds)
    if max_cells is None or n <= max_cells:
        return np.arange(n)
    names, inverse, counts = np.unique(conds, return_inverse=True, return_counts=True)
    lo, hi = 0, int(counts.max())
    while lo < hi:  # the largest cap with sum(min(n_c, cap)) <= max_cells
        mid = (lo + hi + 1) // 2
        if np.minimum(counts, mid).sum() <= max_cells:
            lo = mid
        else:
            hi = mid - 1
    cap = lo
    rng = np.random.default_rng(seed)
    quota = np.minimum(counts, cap)
    left = max_cells - int(quota.sum())  # fewer than the conditions above the cap: one more each, at random
    above = np.flatnonzero(counts > cap)
    quota[rng.choice(above, size=min(left, len(above)), replace=False)] += 1
    keep = [rng.choice(np.flatnonzero(inverse == g), size=int(q), replace=False) for g, q in enumerate(quota)]
    return np.sort(np.concatenate(keep))


def pca(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores (n, k), components (k, d), mean (d,), explained variance ratio (k,)."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(0)
    Xc = X - mean
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    k_eff = min(k, vt.shape[0])
    comps = np.zeros((k, X.shape[1]))
    comps[:k_eff] = vt[:k_eff]
    total = float((s**2).sum()) or 1.0
    ratio = np.zeros(k)
    ratio[:k_eff] = s[:k_eff] ** 2 / total
    return (Xc @ comps.T).astype(np.float32), comps, mean, ratio


def _umap(n_obs: int, seed: int, n_neighbors: int = 15) -> Any:
    try:
        import umap  # noqa: PLC0415  (slow import: only when an embedding is fitted)
    except ImportError as e:  # pragma: no cover - umap-learn is a dependency
        raise ImportError("UMAP embeddings need the umap-learn package: pip install umap-learn") from e
    return umap.UMAP(
        n_components=2, n_neighbors=max(2, min(n_neighbors, n_obs - 1)), min_dist=0.3,
        n_epochs=200, random_state=seed, n_jobs=1,
    )


def umap_2d(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D UMAP of the rows of ``X`` (fixed seed; PCA for fewer than 4 rows)."""
    X = np.asarray(X, dtype=np.float32)
    if len(X) < 4:
        return pca(X, 2)[0]
    return np.asarray(_umap(len(X), seed).fit_transform(X), dtype=np.float32)


def fingerprint(adata: ad.AnnData, perturbation_key: str, layer: str | None = None, rows: int = 2000) -> str:
    """SHA-256 of what a map depends on: cell and gene names, the conditions, the layer and the
    values of up to ``rows`` cells spread over the dataset (first 24 hex digits)."""
    h = hashlib.sha256()
    for part in (list(map(str, adata.obs_names)), list(map(str, adata.var_names)),
                 list(condition_column(adata, perturbation_key)), [str(layer)]):
        h.update(json.dumps(part).encode())
    pick = np.unique(np.linspace(0, adata.n_obs - 1, min(rows, adata.n_obs)).astype(int))
    h.update(np.ascontiguousarray(expression_matrix(adata[pick], layer), dtype=np.float32).tobytes())
    return h.hexdigest()[:24]


class ReferenceEmbedding:
    """UMAP of a stratified sample of up to ``max_cells`` cells on the top ``n_pcs`` principal
    components of their expression, every other cell placed in it (see the module docstring).

    Attributes: ``coords`` (n_sample, 2), ``obs_names`` and ``conditions`` of the sampled cells
    (drawn as the map's background), ``all_names`` and ``all_coords`` of every cell of the
    dataset, ``layer``, ``fingerprint``.
    """

    def __init__(self, adata: ad.AnnData, perturbation_key: str, layer: str | None = None, n_pcs: int = 30,
                 max_cells: int = 4000, seed: int = 0, k: int = 10) -> None:
        conds = condition_column(adata, perturbation_key)
        idx = stratified_sample(conds, max_cells, seed)
        sub = adata[idx]
        X = expression_matrix(sub, layer)
        self.layer = layer
        self.k = int(k)
        n_comp = max(2, min(n_pcs, X.shape[0] - 1, X.shape[1]))
        self._scores, self._components, self._mean, _ = pca(X, n_comp)
        self.coords = umap_2d(self._scores, seed)
        self.obs_names = np.asarray(sub.obs_names, dtype=str)
        self.conditions = np.asarray(conds, dtype=object)[idx]
        self.fingerprint = fingerprint(adata, perturbation_key, layer)
        self.all_names = np.asarray(adata.obs_names, dtype=str)
        self.all_coords = np.empty((adata.n_obs, 2), dtype=np.float32)
        pos = pd.Index(self.all_names).get_indexer(self.obs_names)
        rest = np.setdiff1d(np.arange(adata.n_obs), pos)
        self.all_coords[pos] = self.coords
        for lo in range(0, len(rest), _CHUNK):
            part = rest[lo:lo + _CHUNK]
            self.all_coords[part] = self.transform(expression_matrix(adata[part], layer))
        self._index = pd.Index(self.all_names)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Place expression rows (same genes, same order) in the map."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self._mean):
            raise DataError(f"Expected cells x {len(self._mean)} genes, got shape {X.shape}.")
        out = np.empty((len(X), 2), dtype=np.float32)
        k = min(self.k, len(self.coords))
        ref_t, ref_sq, mean_scores = self._reference_tensors()
        for lo in range(0, len(X), _CHUNK):
            S = torch.from_numpy((X[lo:lo + _CHUNK] @ self._components.T - mean_scores).astype(np.float32))
            # |r|^2 - 2 s.r in one pass: the squared distance less the row's own |s|^2, which does not change
            # which sampled cells are nearest; added back to the k kept (float32 is plenty)
            part, nn = torch.topk(torch.addmm(ref_sq, S, ref_t, alpha=-2.0), k, dim=1, largest=False, sorted=False)
            dist2 = (part + (S**2).sum(1, keepdim=True)).clamp_min_(0.0)
            w = 1.0 / (dist2.double().sqrt().numpy() + 1e-6)
            w /= w.sum(1, keepdims=True)
            out[lo:lo + _CHUNK] = np.einsum("nk,nkd->nd", w, self.coords[nn.numpy()])
        return out

    def _reference_tensors(self) -> tuple[Any, Any, np.ndarray]:
        """The sampled cells' scores transposed (pcs, n_sample) and their squared norms, float32, and
        the mean's scores: computed once per map, used by every :meth:`transform`."""
        if getattr(self, "_ref", None) is None:
            ref = torch.from_numpy(np.ascontiguousarray(self._scores, dtype=np.float32))
            self._ref = (ref.T.contiguous(), (ref**2).sum(1), self._mean @ self._components.T)
        return self._ref

    def coords_of(self, names: Sequence[str]) -> np.ndarray:
        """Coordinates of dataset cells by obs name (names not in the dataset are left out)."""
        pos = self._index.get_indexer(list(map(str, names)))
        return self.all_coords[pos[pos >= 0]]

    # ---- on disk ------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the map to ``folder`` (created; files written to a temporary name, then renamed)."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"coords": self.coords, "all_coords": self.all_coords, "scores": self._scores,
                  "components": self._components, "mean": self._mean}
        tmp = folder / f".{_ARRAYS}.tmp"
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        meta = {"format": FORMAT, "fingerprint": self.fingerprint, "layer": self.layer, "k": self.k,
                "arrays_sha256": digest, "obs_names": self.obs_names.tolist(),
                "conditions": [str(c) for c in self.conditions], "all_names": self.all_names.tolist()}
        tmp_meta = folder / f".{_META}.tmp"
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp, folder / _ARRAYS)
        os.replace(tmp_meta, folder / _META)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ReferenceEmbedding:
        """Read a map written by :meth:`save`; a DataError if it is missing, of another format,
        or its arrays do not match the digest recorded with them."""
        from safetensors.numpy import load

        folder = Path(folder)
        try:
            meta = json.loads((folder / _META).read_text())
            raw = (folder / _ARRAYS).read_bytes()
        except (OSError, ValueError) as e:
            raise DataError(f"{folder}: no readable reference map ({e}).") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"{folder}: reference map of an unknown format.")
        if hashlib.sha256(raw).hexdigest() != meta.get("arrays_sha256"):
            raise DataError(f"{folder}: {_ARRAYS} does not match the digest in {_META} (modified or truncated).")
        a = load(raw)
        self = cls.__new__(cls)
        self.layer, self.k, self.fingerprint = meta["layer"], int(meta["k"]), str(meta["fingerprint"])
        self.coords, self.all_coords = a["coords"], a["all_coords"]
        self._scores, self._components, self._mean = a["scores"], a["components"], a["mean"]
        self.obs_names = np.asarray(meta["obs_names"], dtype=str)
        self.conditions = np.asarray(meta["conditions"], dtype=object)
        self.all_names = np.asarray(meta["all_names"], dtype=str)
        n, m = len(self.obs_names), len(self.all_names)
        if self.coords.shape != (n, 2) or self.all_coords.shape != (m, 2) or len(self.conditions) != n or \
                self._scores.shape[0] != n or self._components.shape[1] != self._mean.shape[0]:
            raise DataError(f"{folder}: the reference map's arrays and names do not agree.")
        self._index = pd.Index(self.all_names)
        return self


def default_cache_dir() -> Path:
    """``$PDAE_CACHE_DIR/embeddings``, else ``$XDG_CACHE_HOME/pdae/embeddings``, else ``~/.cache/pdae/embeddings``."""
    if os.environ.get("PDAE_CACHE_DIR"):
        return Path(os.environ["PDAE_CACHE_DIR"]) / "embeddings"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pdae" / "embeddings"


def cached_reference(adata: ad.AnnData, perturbation_key: str, layer: str | None = None,
                     search: Sequence[str | Path] = (), cache_dir: str | Path | None = None,
                     **kwargs: Any) -> ReferenceEmbedding:
    """The dataset's map from ``search`` folders (e.g. one shipped with a demo), then from
    ``cache_dir`` (default :func:`default_cache_dir`), by fingerprint; else fitted (``kwargs``
    go to :class:`ReferenceEmbedding`) and saved in ``cache_dir/<fingerprint>``. A cache that
    cannot be written (read-only disk) only costs the refit next time."""
    fp = fingerprint(adata, perturbation_key, layer)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for folder in [*map(Path, search), cache]:
        cand = folder / fp
        if (cand / _META).is_file():
            try:
                ref = ReferenceEmbedding.load(cand)
            except DataError:
                continue
            if ref.fingerprint == fp:
                return ref
    ref = ReferenceEmbedding(adata, perturbation_key, layer=layer, **kwargs)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{fp}.", dir=_ensure(cache)))
        ref.save(tmp)
        try:
            os.replace(tmp, cache / fp)  # atomic; another process may have won the race
        except OSError:
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    except OSError:
        pass
    return ref


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
