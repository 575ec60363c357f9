"""The gene cap: with thousands of genes, train on the most variable ones, chosen on the training
cells only (held-out cells never decide which genes the model sees).

Ranking: scanpy's ``flavor="seurat"`` dispersion (log of variance over mean of the normalised,
not logged, expression, z-scored within 20 bins of mean expression), from per-gene sums read in
row chunks, so a large or on-disk ``X`` is never densified whole.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ..errors import DataError
from .registry import PerturbationRegistry
from .streaming import _seurat_hvg, seurat_dispersion

#: genes above which ``pdae train`` keeps only the most variable ones (GEARS and CPA train
#: Perturb-seq models on about 5,000 highly variable genes)
DEFAULT_MAX_GENES = 5000


def _normalised(block: Any, x_kind: str) -> sp.csr_matrix:
    block = sp.csr_matrix(block, dtype=np.float64)
    if x_kind == "log1p":  # back to normalised expression, as scanpy's seurat flavour does
        block.data = np.expm1(block.data)
    return block


def variable_genes(
    adata: ad.AnnData, n_top: int, cells: np.ndarray | None = None, layer: str | None = None,
    x_kind: str = "log1p", chunk_size: int = 10_000, exact: bool = False,
) -> np.ndarray:
    """Boolean mask over ``adata.var`` of the ``n_top`` most variable genes, computed on the rows
    where ``cells`` is True (default: all). Ties at the cut-off are kept, as scanpy does, unless
    ``exact``: then exactly ``n_top`` (the first in ``var`` order among ties)."""
    X = adata.layers[layer] if layer is not None else adata.X
    rows = np.arange(adata.n_obs) if cells is None else np.flatnonzero(np.asarray(cells, dtype=bool))
    if len(rows) < 2:
        raise DataError(f"Choosing the most variable genes needs at least 2 training cells, got {len(rows)}.")
    s1 = np.zeros(adata.n_vars)
    s2 = np.zeros(adata.n_vars)
    for lo in range(0, len(rows), chunk_size):
        block = _normalised(X[rows[lo: lo + chunk_size]], x_kind)
        s1 += np.asarray(block.sum(0)).ravel()
        s2 += np.asarray(block.multiply(block).sum(0)).ravel()
    n = len(rows)
    mean = s1 / n
    var = np.maximum((s2 - n * mean**2) / (n - 1), 0.0)
    if not exact:
        return _seurat_hvg(mean, var, int(n_top))
    score = np.nan_to_num(seurat_dispersion(mean, var), nan=-np.inf)
    mask = np.zeros(adata.n_vars, dtype=bool)
    mask[np.argsort(-score, kind="stable")[: int(n_top)]] = True
    return mask


def cap_genes(
    adata: ad.AnnData, registry: PerturbationRegistry, max_genes: int = DEFAULT_MAX_GENES,
    cells: np.ndarray | None = None,
) -> tuple[ad.AnnData, PerturbationRegistry, str | None]:
    """``adata`` and ``registry`` restricted to the ``max_genes`` most variable genes of the
    ``cells`` (the training cells) when ``adata`` has more genes, and a sentence saying so;
    unchanged (and None) otherwise. ``max_genes`` 0 or None: no cap. The registry records the cap
    in ``preprocessing['gene_cap']``. An on-disk (backed) ``adata`` is not capped: its columns
    cannot be subset without reading the whole file (the sentence then says how to cap it)."""
    if not max_genes or adata.n_vars <= max_genes:
        return adata, registry, None
    if adata.isbacked:
        return adata, registry, (
            f"The data has {adata.n_vars:,} genes and is streamed from disk, so it is trained on all of them; to "
            f"keep the {max_genes:,} most variable, write a smaller file first (`pdae preprocess --n-top-genes "
            f"{max_genes}`)."
        )
    keep = variable_genes(adata, max_genes, cells, registry.layer, registry.x_kind, exact=True)
    genes = adata.var_names[keep]
    capped = adata[:, keep].copy()
    record = {"kept": int(keep.sum()), "of": int(adata.n_vars), "ranking": "seurat dispersion",
              "chosen_on": "training cells" if cells is not None else "all cells"}
    reg = replace(registry, gene_names=[str(g) for g in genes],
                  preprocessing={**registry.preprocessing, "gene_cap": record})
    where = "training cells (held-out cells excluded)" if cells is not None else "cells"
    message = (
        f"The data has {adata.n_vars:,} genes: training on the {record['kept']:,} most variable, chosen on the "
        f"{where}, so that training stays affordable. Predictions cover these genes; --max-genes sets the number "
        "(0 keeps every gene)."
    )
    return capped, reg, message
