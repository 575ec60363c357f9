"""Papalexi 2021 ECCITE-seq (THP-1 CRISPR KO): the project's converted file, or built
from sceptredata's public ``lowmoi_example_data.rda``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...errors import DataError, DatasetUnavailableError
from ..columns import is_control_guide_target
from ..registry import read_h5ad
from .common import as_category, drop_unused_categories, subset_cells, tag_dataset
from .download import RemoteFile, fetch_remote, is_present
from .rda import read_lowmoi_rda, to_rmatrix

# The data README gives this commit abbreviated; GitHub resolves abbreviated
# commit hashes in github.com/<owner>/<repo>/raw/<ref>/<path> addresses.
_SCEPTREDATA_REF = "ec722d5d"

# Converted by the project (no public copy of the converted file): rebuilt from the original below.
PAPALEXI_CONVERTED = RemoteFile(
    "papalexi2021_eccite.h5ad", None,
    "308e4c14ab200bb5bbd095457df8ba8bf67d5dffa8071f7d41c43665fbd867b8",
)
SCEPTREDATA_LOWMOI = RemoteFile(
    "sceptredata_lowmoi_example_data.rda",
    f"https://github.com/Katsevich-Lab/sceptredata/raw/{_SCEPTREDATA_REF}/data/lowmoi_example_data.rda",
    None,
    "R list lowmoi_example_data (response_matrix, grna_matrix, grna_target_data_frame, extra_covariates)",
)


def papalexi21_from_r_objects(
    response_matrix: Any,
    grna_matrix: Any,
    grna_target_data_frame: pd.DataFrame,
    extra_covariates: pd.DataFrame | None = None,
    *,
    gene_names: Sequence[str] | None = None,
    grna_names: Sequence[str] | None = None,
    cell_names: Sequence[str] | None = None,
) -> ad.AnnData:
    """The Papalexi 2021 AnnData from sceptredata's ``lowmoi_example_data`` components.

    ``response_matrix`` (genes x cells) and ``grna_matrix`` (gRNAs x cells) may be scipy
    sparse or numpy matrices (names then given by ``gene_names`` / ``grna_names``),
    pandas frames (names from index/columns), or what :func:`read_lowmoi_rda` returns.
    ``grna_target_data_frame`` has columns ``grna_id`` and ``grna_target``;
    ``extra_covariates`` one row per cell (``bio_rep``).

    Each cell is assigned the gRNA with the most UMIs (``obs['grna_top']``;
    ``grna_top_frac`` is its share of the cell's gRNA UMIs); ``obs['target']`` is that
    gRNA's target and ``obs['perturbation']`` the same with non-targeting written
    ``control`` (``unassigned`` for a cell with no gRNA UMI). ``X`` and
    ``layers['counts']`` hold the raw counts; ``obsm['grna_counts']`` the gRNA UMIs.
    """
    resp = to_rmatrix(response_matrix, "response_matrix")
    grna = to_rmatrix(grna_matrix, "grna_matrix")
    genes = list(gene_names) if gene_names is not None else resp.rownames
    guides = list(grna_names) if grna_names is not None else grna.rownames
    if genes is None or guides is None:
        raise DataError("Gene and gRNA names are needed: pass gene_names= and grna_names= (row names in R).")
    R = sp.csr_matrix(sp.csr_matrix(resp.matrix, dtype=np.float32).T)
    G = sp.csr_matrix(sp.csr_matrix(grna.matrix, dtype=np.float32).T)
    if R.shape[1] != len(genes) or G.shape[1] != len(guides):
        raise DataError(
            f"Name counts do not match the matrices: {len(genes)} gene names for {R.shape[1]} rows of "
            f"response_matrix, {len(guides)} gRNA names for {G.shape[1]} rows of grna_matrix."
        )
    n = R.shape[0]
    if G.shape[0] != n:
        raise DataError(f"response_matrix has {n} cells (columns) but grna_matrix has {G.shape[0]}.")
    if extra_covariates is not None and len(extra_covariates) != n:
        raise DataError(f"extra_covariates has {len(extra_covariates)} rows but the matrices have {n} cells.")
    cols = {"grna_id", "grna_target"}
    if not isinstance(grna_target_data_frame, pd.DataFrame) or not cols <= set(grna_target_data_frame.columns):
        raise DataError("grna_target_data_frame must be a data frame with columns 'grna_id' and 'grna_target'.")
    target_of = dict(zip(grna_target_data_frame["grna_id"].astype(str),
                         grna_target_data_frame["grna_target"].astype(str)))
    unknown = [g for g in guides if g not in target_of]
    if unknown:
        raise DataError(f"gRNAs {unknown[:8]} of grna_matrix are not in grna_target_data_frame.")
    total = np.asarray(G.sum(axis=1)).ravel()
    top_idx = np.asarray(G.argmax(axis=1)).ravel()
    top_umi = np.asarray(G.max(axis=1).todense()).ravel()
    has = total > 0
    guide_arr = np.asarray(guides, dtype=object)
    top = np.where(has, guide_arr[top_idx], "")
    target = np.array([target_of[g] if g else "" for g in top], dtype=object)
    pert = np.array(
        ["unassigned" if not t else ("control" if is_control_guide_target(t) else t) for t in target],
        dtype=object,
    )
    frac = np.divide(top_umi, total, out=np.zeros_like(top_umi, dtype=np.float64), where=has)
    names = list(cell_names) if cell_names is not None else (resp.colnames or [f"cell{i}" for i in range(n)])
    if len(names) != n:
        raise DataError(f"{len(names)} cell names for {n} cells.")
    obs = pd.DataFrame(index=pd.Index([str(c) for c in names]))
    obs["grna_top"] = as_category(top)
    obs["grna_top_umi"] = top_umi.astype(np.float64)
    obs["grna_total_umi"] = total.astype(np.float64)
    obs["grna_top_frac"] = frac
    if extra_covariates is not None:
        for col in extra_covariates.columns:
            v = extra_covariates[col].to_numpy()
            obs[str(col)] = as_category(v) if not pd.api.types.is_numeric_dtype(extra_covariates[col]) else v
    obs["target"] = as_category(target)
    obs["perturbation"] = as_category(pert)
    adata = ad.AnnData(X=R, obs=obs, var=pd.DataFrame(index=pd.Index([str(g) for g in genes])))
    adata.layers["counts"] = R.copy()
    adata.obsm["grna_counts"] = G
    adata.uns["grna_names"] = np.asarray(guides, dtype=str)
    adata.uns["source"] = (
        f"Katsevich-Lab/sceptredata {_SCEPTREDATA_REF} data/lowmoi_example_data.rda; Papalexi et al. 2021 "
        "ECCITE-seq THP-1 CRISPR KO subset; guide assignment = argmax gRNA UMI "
        "(pdae_core.data.datasets.papalexi21_from_r_objects)"
    )
    return drop_unused_categories(adata)


def build_papalexi21(rda_path: str | os.PathLike[str]) -> ad.AnnData:
    """The Papalexi 2021 AnnData from sceptredata's ``lowmoi_example_data.rda`` (needs ``rdata``)."""
    d = read_lowmoi_rda(rda_path)
    missing = [k for k in ("response_matrix", "grna_matrix", "grna_target_data_frame") if k not in d]
    if missing:
        raise DataError(f"lowmoi_example_data in {rda_path} lacks {missing} (has {sorted(d)}).")
    return papalexi21_from_r_objects(
        d["response_matrix"], d["grna_matrix"], d["grna_target_data_frame"], d.get("extra_covariates"),
    )


def load_papalexi21(data_dir: Path, download: bool) -> ad.AnnData:
    """``papalexi21``: the converted file, else built from sceptredata's; unassigned cells dropped."""
    if is_present(data_dir, PAPALEXI_CONVERTED):
        adata = read_h5ad(fetch_remote(PAPALEXI_CONVERTED, data_dir, False))
        how = f"{PAPALEXI_CONVERTED.filename} (converted by the project)"
    else:
        if not download and not is_present(data_dir, SCEPTREDATA_LOWMOI):
            raise DatasetUnavailableError(
                f"papalexi21 needs {PAPALEXI_CONVERTED.filename} or sceptredata's public file in {data_dir}, "
                f"and download=False. Save {SCEPTREDATA_LOWMOI.url} as {data_dir / SCEPTREDATA_LOWMOI.filename} "
                "(reading it needs `pip install rdata`), or call again with download=True."
            )
        adata = build_papalexi21(fetch_remote(SCEPTREDATA_LOWMOI, data_dir, download))
        how = "built from sceptredata's public lowmoi_example_data.rda"
    if "perturbation" not in adata.obs.columns:
        raise DataError("The Papalexi AnnData has no obs['perturbation'] column.")
    if (adata.obs["perturbation"].astype(str) == "unassigned").any():
        adata = subset_cells(adata, adata.obs["perturbation"].astype(str).to_numpy() != "unassigned")
    return tag_dataset(
        adata, "papalexi21", "perturbation", "control", "bio_rep", "counts",
        f"Papalexi et al. 2021 ECCITE-seq (THP-1 CRISPR KO), {how}; original: Katsevich-Lab/sceptredata "
        f"{_SCEPTREDATA_REF} data/lowmoi_example_data.rda",
    )
