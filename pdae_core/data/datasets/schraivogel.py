"""Schraivogel 2020 TAP-seq (K562 CRISPRi): the project's converted file, or built from
crispat's public example data (expression counts, gRNA counts, guide assignments)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...errors import DataError, DatasetUnavailableError
from ..columns import is_control_guide_target
from ..registry import read_h5ad
from .common import as_category, read_csv, subset_cells, tag_dataset
from .download import RemoteFile, fetch_remote, is_present

# The data README gives this commit abbreviated; GitHub resolves abbreviated
# commit hashes in github.com/<owner>/<repo>/raw/<ref>/<path> addresses.
_CRISPAT_REF = "a9372b9c"

# Converted by the project (no public copy of the converted file): rebuilt from the originals below.
SCHRAIVOGEL_CONVERTED = RemoteFile(
    "schraivogel2020_tapseq.h5ad", None,
    "5dbb5d4835c8b693bc274d0bb4cf5d68c1698abfc2abb929dd00db50bab46327",
)
_CRISPAT_RAW = f"https://github.com/velten-group/crispat/raw/{_CRISPAT_REF}/example_data"
CRISPAT_EXPRESSION = RemoteFile(
    "crispat_schraivogel_gene_expression_counts.csv",
    f"{_CRISPAT_RAW}/Schraivogel/gene_expression_counts.csv", None,
    "cells x genes UMI counts (first column: cell barcode)",
)
CRISPAT_GRNA_COUNTS = RemoteFile(
    "crispat_schraivogel_gRNA_counts.h5ad", f"{_CRISPAT_RAW}/Schraivogel/gRNA_counts.h5ad", None,
    "cells x gRNAs UMI counts (AnnData, obs['batch'])",
)
CRISPAT_ASSIGNMENTS = RemoteFile(
    "crispat_schraivogel_assignments_t5.csv",
    f"{_CRISPAT_RAW}/guide_assignments/UMI/assignments_t5.csv", None,
    "crispat UMI-threshold (t=5) guide assignments: columns cell, gRNA, UMI_counts",
)

_CRISPAT_PREFIX = "CROPseq_dCas9_DS_"


def _crispat_guide_target(guide: str) -> str | None:
    """Target of a crispat/Schraivogel gRNA name; None for a non-targeting guide.

    ``CROPseq_dCas9_DS_CCNE2_+_95907328.23-P1P2`` -> ``CCNE2``, ``..._GATA1-A`` -> ``GATA1``,
    ``..._non-targeting_00017`` -> None.
    """
    name = guide[len(_CRISPAT_PREFIX):] if guide.startswith(_CRISPAT_PREFIX) else guide
    token = name.split("_")[0]
    if is_control_guide_target(token):
        return None
    return re.sub(r"-[A-Z]$", "", token)


def _crispat_condition(guides: Sequence[str]) -> tuple[str, int]:
    """(perturbation label, number of targets) of a cell from its assigned guides."""
    if len(guides) == 0:
        return "unassigned", 0
    targets = sorted({t for t in (_crispat_guide_target(g) for g in guides) if t is not None})
    if not targets:
        return "control", 0
    return "+".join(targets), len(targets)


def build_schraivogel20(
    expression_csv: str | os.PathLike[str],
    assignments_csv: str | os.PathLike[str],
    grna_counts_h5ad: str | os.PathLike[str] | None = None,
) -> ad.AnnData:
    """The Schraivogel 2020 TAP-seq AnnData from crispat's public example files.

    ``expression_csv``: crispat ``example_data/Schraivogel/gene_expression_counts.csv``
    (one row per cell, first column the cell barcode, then one column per gene).
    ``assignments_csv``: ``guide_assignments/UMI/assignments_t5.csv`` (columns ``cell``,
    ``gRNA``). ``grna_counts_h5ad`` (optional): ``Schraivogel/gRNA_counts.h5ad``, cells x
    gRNAs; gives ``obsm['grna_counts']`` and ``obs['batch']``.

    ``obs['perturbation']`` is ``control`` for cells whose assigned guides are all
    non-targeting, the sorted targets joined by ``+`` otherwise, and ``unassigned``
    for cells with no assigned guide (keep or drop them downstream);
    ``obs['gRNAs']`` lists the assigned guides (``;``-separated) and
    ``obs['n_targets']`` counts the distinct targets. ``X`` holds the raw counts.
    """
    expr_path, asg_path = Path(expression_csv), Path(assignments_csv)
    expr = read_csv(expr_path, "gene expression counts", index_col=0)
    if expr.shape[0] == 0 or expr.shape[1] == 0:
        raise DataError(f"{expr_path} has no cells or no genes ({expr.shape[0]} rows x {expr.shape[1]} columns).")
    bad = [c for c in expr.columns if not pd.api.types.is_numeric_dtype(expr[c])]
    if bad:
        raise DataError(
            f"{expr_path}: columns {bad[:5]} are not numeric; expected one row per cell "
            "(cell barcode first) and one count column per gene."
        )
    cells = pd.Index(expr.index.astype(str), name=None)
    if cells.duplicated().any():
        raise DataError(f"{expr_path} repeats cell barcodes ({list(cells[cells.duplicated()][:3])}).")
    genes = expr.columns.astype(str)
    X = sp.csr_matrix(expr.to_numpy(dtype=np.float32))

    asg = read_csv(asg_path, "guide assignment")
    missing = [c for c in ("cell", "gRNA") if c not in asg.columns]
    if missing:
        raise DataError(f"{asg_path} lacks the column(s) {missing}; columns found: {list(asg.columns)}.")
    asg = asg.dropna(subset=["cell", "gRNA"])
    by_cell: dict[str, list[str]] = {}
    for cell, guide in zip(asg["cell"].astype(str), asg["gRNA"].astype(str)):
        by_cell.setdefault(cell, []).append(guide)
    guides_per_cell = [sorted(set(by_cell.get(c, ()))) for c in cells]
    labels = [_crispat_condition(g) for g in guides_per_cell]
    unknown_cells = len(set(by_cell) - set(cells))

    obs = pd.DataFrame(index=pd.Index(cells))
    grna_names: list[str]
    grna_counts = None
    if grna_counts_h5ad is not None:
        g = read_h5ad(grna_counts_h5ad)
        grna_names = [str(v) for v in g.var_names]
        pos = pd.Index(g.obs_names.astype(str)).get_indexer(cells)
        if (pos < 0).all():
            raise DataError(
                f"{grna_counts_h5ad} shares no cell barcodes with {expr_path} "
                f"(e.g. {list(g.obs_names[:2])} vs {list(cells[:2])})."
            )
        G = sp.csr_matrix(g.X, dtype=np.float32)
        rows = np.where(pos >= 0, pos, 0)
        grna_counts = sp.csr_matrix(sp.diags((pos >= 0).astype(np.float32)) @ G[rows])
        grna_counts.eliminate_zeros()
        if "batch" in g.obs.columns:
            batch = g.obs["batch"].astype(str).to_numpy()[rows]
            batch = np.where(pos >= 0, batch, "unknown")
            obs["batch"] = as_category(batch)
    else:
        grna_names = sorted(set(asg["gRNA"].astype(str)))
    obs["gRNAs"] = as_category([";".join(g) for g in guides_per_cell])
    obs["perturbation"] = as_category([lab for lab, _ in labels])
    obs["n_targets"] = np.array([n for _, n in labels], dtype=np.int64)

    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    if grna_counts is not None:
        adata.obsm["grna_counts"] = grna_counts
    adata.uns["grna_names"] = np.asarray(grna_names, dtype=str)
    adata.uns["source"] = (
        f"velten-group/crispat {_CRISPAT_REF}: built by pdae_core.data.datasets.build_schraivogel20 from "
        f"{expr_path.name} + {asg_path.name}"
        + (f" + {Path(grna_counts_h5ad).name}" if grna_counts_h5ad is not None else "")
        + f"; {unknown_cells} assigned cells absent from the expression table were ignored"
    )
    return adata


def load_schraivogel20(data_dir: Path, download: bool, keep_unassigned: bool = False) -> ad.AnnData:
    """``schraivogel20``: the converted file, else built from crispat's originals."""
    if is_present(data_dir, SCHRAIVOGEL_CONVERTED):
        adata = read_h5ad(fetch_remote(SCHRAIVOGEL_CONVERTED, data_dir, False))
        how = f"{SCHRAIVOGEL_CONVERTED.filename} (converted by the project)"
    else:
        originals = (CRISPAT_EXPRESSION, CRISPAT_ASSIGNMENTS, CRISPAT_GRNA_COUNTS)
        if not download and not all(is_present(data_dir, rf) for rf in originals[:2]):
            raise DatasetUnavailableError(
                f"schraivogel20 needs {SCHRAIVOGEL_CONVERTED.filename} or crispat's public files in "
                f"{data_dir}, and download=False. Save "
                + ", ".join(f"{rf.url} as {rf.filename}" for rf in originals)
                + " (the last is optional), or call again with download=True."
            )
        expr = fetch_remote(CRISPAT_EXPRESSION, data_dir, download)
        asg = fetch_remote(CRISPAT_ASSIGNMENTS, data_dir, download)
        grna = (fetch_remote(CRISPAT_GRNA_COUNTS, data_dir, download)
                if download or is_present(data_dir, CRISPAT_GRNA_COUNTS) else None)
        adata = build_schraivogel20(expr, asg, grna)
        how = "built from crispat's public example files"
    if "perturbation" not in adata.obs.columns:
        raise DataError("The Schraivogel AnnData has no obs['perturbation'] column.")
    if not keep_unassigned:
        adata = subset_cells(adata, adata.obs["perturbation"].astype(str).to_numpy() != "unassigned")
    return tag_dataset(
        adata, "schraivogel20", "perturbation", "control", None, "counts",
        f"Schraivogel et al. 2020 TAP-seq (K562 CRISPRi), {how}; originals: velten-group/crispat "
        f"{_CRISPAT_REF} example_data/Schraivogel/gene_expression_counts.csv + gRNA_counts.h5ad + "
        "guide_assignments/UMI/assignments_t5.csv",
        unassigned_dropped=not keep_unassigned,
    )
