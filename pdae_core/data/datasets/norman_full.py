"""The full Norman 2019 single-cell data (K562 CRISPRa), from scPerturb's or GEARS'
public files. No sha256 is pinned for those (they were never available to check
here), so only their size and readability are checked."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ...errors import DataError, DatasetUnavailableError
from ..registry import read_h5ad
from .common import drop_unused_categories, subset_cells, tag_dataset
from .download import CHUNK, RemoteFile, fetch_remote

# scPerturb (Peidli et al. 2024), Zenodo; md5 reported by third parties: c870e6967d91c017d9da827bab183cd6.
NORMAN_SCPERTURB = RemoteFile(
    "NormanWeissman2019_filtered.h5ad",
    "https://zenodo.org/records/13350497/files/NormanWeissman2019_filtered.h5ad?download=1",
    None,
    "scPerturb's Norman 2019 (~111k cells, raw counts, ~700 MB)",
)
# GEARS (Roohani et al. 2024), Harvard Dataverse: norman.zip holding norman/perturb_processed.h5ad.
NORMAN_GEARS_ZIP = RemoteFile(
    "norman.zip", "https://dataverse.harvard.edu/api/access/datafile/6154020", None,
    "GEARS' Norman 2019 archive (~170 MB zip, ~2.2 GB unpacked)",
)
NORMAN_GEARS_H5AD = "norman/perturb_processed.h5ad"


def _convert_labels(raw: Sequence[str] | np.ndarray, sep: str) -> list[str]:
    """Source labels (``A<sep>B``, control parts ``ctrl``/``control``) -> ``A+B`` / ``control``.

    The source's order of the parts is kept (so names match other files derived from
    the same source); a combination that appears in both orders is merged under its
    sorted name.
    """
    raw = np.asarray(raw, dtype=object).astype(str)
    uniq = pd.unique(raw)
    parts = {
        u: tuple(dict.fromkeys(
            p.strip() for p in u.split(sep) if p.strip() and p.strip().lower() not in ("ctrl", "control")
        ))
        for u in uniq
    }
    orders: dict[frozenset[str], set[tuple[str, ...]]] = {}
    for t in parts.values():
        orders.setdefault(frozenset(t), set()).add(t)

    def name(t: tuple[str, ...]) -> str:
        if not t:
            return "control"
        return "+".join(sorted(t) if len(orders[frozenset(t)]) > 1 else t)

    mapping = {u: name(t) for u, t in parts.items()}
    return [mapping[v] for v in raw]


def _finish_norman(adata: ad.AnnData, conds: list[str], what: str) -> ad.AnnData:
    adata.obs["condition"] = pd.Categorical(conds)
    adata.obs["n_perturbations"] = np.array(
        [0 if c == "control" else c.count("+") + 1 for c in conds], dtype=np.int64
    )
    if "control" not in set(conds):
        raise DataError(f"{what} has no control cells after conversion; is it the Norman 2019 file?")
    return drop_unused_categories(adata)


def norman19_from_scperturb(adata: ad.AnnData, perturbation_key: str = "perturbation") -> ad.AnnData:
    """scPerturb's ``NormanWeissman2019_filtered`` in this project's conventions (in place, returned).

    scPerturb writes combinations with ``_`` (``KLF1_MAP2K6``) and control as ``control``;
    ``obs['condition']`` gets ``A`` / ``A+B`` / ``control`` (see :func:`_convert_labels`). Cells with no
    perturbation label are dropped. X stays as scPerturb ships it (raw counts).
    """
    if perturbation_key not in adata.obs.columns:
        raise DataError(
            f"scPerturb file has no obs[{perturbation_key!r}] column (columns: {list(adata.obs.columns)[:20]})."
        )
    col = adata.obs[perturbation_key]
    keep = ~col.isna().to_numpy()
    if not keep.all():
        adata = subset_cells(adata, keep)
        col = adata.obs[perturbation_key]
    conds = _convert_labels(col.astype(str).to_numpy(), "_")
    return _finish_norman(adata, conds, "The scPerturb Norman file")


def norman19_from_gears(adata: ad.AnnData, condition_key: str = "condition") -> ad.AnnData:
    """GEARS' ``norman/perturb_processed.h5ad`` in this project's conventions (in place, returned).

    GEARS writes ``ctrl``, ``KLF1+ctrl`` and ``KLF1+MAP2K6``; ``obs['condition']``
    becomes ``control`` / ``KLF1`` / ``KLF1+MAP2K6`` (source order kept) and the original
    is kept in ``obs['condition_gears']``. Gene symbols (``var['gene_name']``) become
    the var names. X stays as GEARS ships it (log-normalised).
    """
    if condition_key not in adata.obs.columns:
        raise DataError(f"GEARS file has no obs[{condition_key!r}] column (columns: {list(adata.obs.columns)[:20]}).")
    col = adata.obs[condition_key]
    keep = ~col.isna().to_numpy()
    if not keep.all():
        adata = subset_cells(adata, keep)
        col = adata.obs[condition_key]
    raw = col.astype(str).to_numpy()
    adata.obs["condition_gears"] = pd.Categorical(raw)
    if "gene_name" in adata.var.columns:
        adata.var["gene_id"] = adata.var_names.astype(str)
        adata.var_names = pd.Index(adata.var["gene_name"].astype(str).to_numpy())
        adata.var_names_make_unique()
    conds = _convert_labels(raw, "+")
    return _finish_norman(adata, conds, "The GEARS Norman file")


def _extract_gears_h5ad(zip_path: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = [n for n in zf.namelist() if n.endswith("perturb_processed.h5ad")]
            if not names:
                raise DataError(f"{zip_path} has no perturb_processed.h5ad inside; is it GEARS' norman.zip?")
            member = NORMAN_GEARS_H5AD if NORMAN_GEARS_H5AD in names else names[0]
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as out, zf.open(member) as src:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                os.replace(tmp_name, dest)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
    except zipfile.BadZipFile as e:
        raise DataError(f"{zip_path} is not a valid zip archive ({e}); delete it to download it again.") from e


def load_norman19_full(data_dir: Path, download: bool, source: str = "auto") -> ad.AnnData:
    """``norman19_full``: scPerturb's file (raw counts) or GEARS' (``source='gears'``, log-normalised)."""
    if source not in ("auto", "scperturb", "gears"):
        raise DataError(f"source must be 'auto', 'scperturb' or 'gears', got {source!r}.")
    scp_path = data_dir / NORMAN_SCPERTURB.filename
    gears_path = data_dir / NORMAN_GEARS_H5AD
    if source == "auto":
        if scp_path.is_file():
            source = "scperturb"
        elif gears_path.is_file():
            source = "gears"
        elif not download:
            raise DatasetUnavailableError(
                f"norman19_full needs {scp_path} (scPerturb, {NORMAN_SCPERTURB.url}) or {gears_path} "
                f"(GEARS: unpack {NORMAN_GEARS_ZIP.url}), and download=False."
            )
        else:
            source = "scperturb"
    if source == "scperturb":
        adata = norman19_from_scperturb(read_h5ad(fetch_remote(NORMAN_SCPERTURB, data_dir, download)))
        return tag_dataset(adata, "norman19_full", "condition", "control", None, "counts",
                         f"scPerturb {NORMAN_SCPERTURB.url} (saved as {NORMAN_SCPERTURB.filename}); "
                         "Norman et al. 2019, K562 CRISPRa", original_key="perturbation")
    if not gears_path.is_file():
        zip_path = fetch_remote(NORMAN_GEARS_ZIP, data_dir, download)
        _extract_gears_h5ad(zip_path, gears_path)
    adata = norman19_from_gears(read_h5ad(gears_path))
    return tag_dataset(adata, "norman19_full", "condition", "control", None, "log1p",
                     f"GEARS {NORMAN_GEARS_ZIP.url} ({NORMAN_GEARS_H5AD}); Norman et al. 2019, K562 CRISPRa",
                     original_key="condition_gears")
