"""Kang et al. 2018: PBMCs of 8 lupus patients, control vs interferon-beta stimulated,
with 7-8 annotated cell types: the multi-context dataset ``kang18``.

Two public copies are read:

* pertpy's (``pertpy.data.kang_2018()``; figshare file 34464122, the same file that
  scverse tutorials save as ``kang_counts_25k.h5ad``): ~24.7k cells x ~15.7k genes, raw
  counts; ``obs['label']`` is ``ctrl`` / ``stim``, ``obs['cell_type']`` holds names such
  as ``CD14+ Monocytes``, ``obs['replicate']`` the patient.
* scGen's training file ``train_kang.h5ad`` (its tutorials' Google Drive file; the
  counts copy ``kang_count.h5ad`` used by pmVAE has the same columns): log-normalised,
  6,998 genes; ``obs['condition']`` is ``control`` / ``stimulated``, ``obs['cell_type']``
  holds names such as ``CD14+Mono``.

Either becomes ``obs['perturbation']`` = ``control`` / ``IFNB`` (the original column is
kept) with ``obs['cell_type']`` as the covariate. Cell-type names are kept verbatim:
the ``+`` in ``CD14+Mono`` is part of a context name, never a combination.

No sha256 is pinned for these files (they were never available to check here), so
only their size (when the server sends one) and readability are checked; a download
that is not an HDF5 file (a web page sent instead of the file) is discarded.
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ...errors import DataError, DatasetUnavailableError
from ..registry import detect_x_kind, read_h5ad
from .common import as_category, subset_cells, tag_dataset
from .download import RemoteFile, default_data_dir, fetch_remote, is_present

__all__ = ["KANG_PERTPY", "KANG_SCGEN", "STIM_LABEL", "kang18_from_adata", "load_kang18"]

# pertpy.data.kang_2018() saves this figshare file as kang_2018.h5ad.
KANG_PERTPY = RemoteFile(
    "kang_2018.h5ad", "https://figshare.com/ndownloader/files/34464122", None,
    "pertpy's Kang 2018 (24,673 cells x 15,706 genes as documented by the source, raw counts)",
)
# scGen's tutorials read it with scanpy's backup_url set to this address.
KANG_SCGEN = RemoteFile(
    "train_kang.h5ad", "https://drive.google.com/uc?id=1r87vhoLLq6PXAYdmyyd89zG90eJOFYLk", None,
    "scGen's Kang 2018 training file (6,998 genes, log-normalised)",
)
#: Other names the same layouts are saved under (read when present, never downloaded).
ALIASES = {"pertpy": ("kang_counts_25k.h5ad",), "scgen": ("kang_count.h5ad",)}
_REMOTE = {"pertpy": KANG_PERTPY, "scgen": KANG_SCGEN}

#: The perturbation name given to the stimulated cells.
STIM_LABEL = "IFNB"
CONTROL_LABEL = "control"
CELL_TYPE_KEY = "cell_type"
PERTURBATION_KEY = "perturbation"
# condition column of each layout, in the order they are looked for
_CONDITION_KEYS = (("label", "pertpy"), ("condition", "scgen"))
_CONTROL_NAMES = {"ctrl", "control", "unstimulated"}
_STIM_NAMES = {"stim", "stimulated", "ifnb", "ifn-b", "ifn-beta", "ifnb1"}


def _condition_key(adata: ad.AnnData, what: str) -> tuple[str, str]:
    """The condition column of ``adata`` and its layout (``pertpy`` / ``scgen``)."""
    cols = list(map(str, adata.obs.columns))
    for key, layout in _CONDITION_KEYS:
        if key in cols:
            if CELL_TYPE_KEY not in cols:
                raise DataError(f"{what} has no obs['{CELL_TYPE_KEY}'] column (columns: {cols[:20]}).")
            return key, layout
    raise DataError(
        f"{what} has no condition column: expected obs['label'] (pertpy's layout) or obs['condition'] "
        f"(scGen's layout); columns: {cols[:20]}."
    )


def kang18_from_adata(adata: ad.AnnData, what: str = "The Kang 2018 AnnData") -> ad.AnnData:
    """pertpy's or scGen's Kang 2018 AnnData in this project's conventions (in place, returned;
    a copy when cells are dropped).

    The condition column (``label`` in pertpy's layout, ``condition`` in scGen's) is kept
    and mapped to ``obs['perturbation']``: ``control`` for ``ctrl``/``control`` and
    :data:`STIM_LABEL` for ``stim``/``stimulated``; ``obs['cell_type']`` becomes a
    categorical of the names as written. Cells missing either label are dropped.
    ``what`` names the file in error messages.
    """
    cond_key, _ = _condition_key(adata, what)
    keep = ~(adata.obs[cond_key].isna().to_numpy() | adata.obs[CELL_TYPE_KEY].isna().to_numpy())
    if not keep.all():
        adata = subset_cells(adata, keep)
    raw = adata.obs[cond_key].astype(str).to_numpy()
    mapping: dict[str, str] = {}
    unknown: list[str] = []
    for u in pd.unique(raw):
        low = str(u).strip().lower()
        if low in _CONTROL_NAMES:
            mapping[u] = CONTROL_LABEL
        elif low in _STIM_NAMES:
            mapping[u] = STIM_LABEL
        else:
            unknown.append(str(u))
    if unknown:
        raise DataError(
            f"{what} has obs['{cond_key}'] labels {sorted(unknown)[:8]} that are neither control "
            "(ctrl/control) nor IFN-beta stimulated (stim/stimulated)."
        )
    pert = np.array([mapping[v] for v in raw], dtype=object)
    for label, word in ((CONTROL_LABEL, "control"), (STIM_LABEL, "stimulated")):
        if label not in set(pert):
            raise DataError(f"{what} has no {word} cells in obs['{cond_key}'].")
    adata.obs[PERTURBATION_KEY] = pd.Categorical(pert, categories=[CONTROL_LABEL, STIM_LABEL])
    adata.obs[CELL_TYPE_KEY] = as_category(adata.obs[CELL_TYPE_KEY].astype(str).to_numpy())
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()
    return adata


def _local_file(data_dir: Path, source: str) -> Path | None:
    """The file of ``source`` already in ``data_dir`` (its own name first, then aliases)."""
    rf = _REMOTE[source]
    if is_present(data_dir, rf):
        return data_dir / rf.filename
    for name in ALIASES[source]:
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def _missing_message(data_dir: Path, sources: tuple[str, ...]) -> str:
    wanted = " or ".join(f"{_REMOTE[s].filename} ({_REMOTE[s].url})" for s in sources)
    which = "it" if len(sources) == 1 else "one of them"
    return (f"kang18 needs {wanted} in the data directory {data_dir}, and download=False: save {which} "
            "there, or call again with download=True.")


def _fetch(data_dir: Path, source: str, download: bool) -> Path:
    """The local HDF5 file of ``source``, downloaded when missing; one-sentence errors."""
    import h5py

    rf = _REMOTE[source]
    local = _local_file(data_dir, source)
    if local is not None:
        if not h5py.is_hdf5(local):
            raise DataError(
                f"{local} is not an HDF5 (.h5ad) file, perhaps a web page saved in its place: delete it, "
                f"or replace it with the file from {rf.url}."
            )
        return local
    if not download:
        raise DatasetUnavailableError(_missing_message(data_dir, (source,)))
    try:
        path = fetch_remote(rf, data_dir, True)
    except DatasetUnavailableError as e:
        cause = e.__cause__
        why = f"{type(cause).__name__}: {cause}" if cause is not None else str(e).split(". ")[0]
        raise DatasetUnavailableError(
            f"Could not download {rf.filename} into the data directory {data_dir} from {rf.url} ({why}); "
            "download it with a browser and save it there under that name."
        ) from e
    if not h5py.is_hdf5(path):
        path.unlink(missing_ok=True)  # downloaded just now: nothing of the user's is lost
        raise DatasetUnavailableError(
            f"The server at {rf.url} did not send an .h5ad file (a web page instead, as figshare and Google "
            f"Drive may answer scripted downloads), so it was discarded: download {rf.filename} with a "
            f"browser and save it in the data directory {data_dir}."
        )
    return path


def load_kang18(
    data_dir: str | os.PathLike[str] | None = None, download: bool = True, source: str = "auto",
) -> ad.AnnData:
    """``kang18``: Kang et al. 2018 PBMCs, control vs IFN-beta, covariate ``cell_type``.

    ``source='auto'`` reads pertpy's file (``kang_2018.h5ad`` or ``kang_counts_25k.h5ad``)
    when it is in the data directory, else scGen's (``train_kang.h5ad`` or
    ``kang_count.h5ad``), else downloads pertpy's; ``'pertpy'`` / ``'scgen'`` pick one.
    Values (raw counts or log1p) are detected, not assumed.
    """
    if source not in ("auto", "pertpy", "scgen"):
        raise DataError(f"source must be 'auto', 'pertpy' or 'scgen', got {source!r}.")
    root = default_data_dir(data_dir)
    if source == "auto":
        if _local_file(root, "pertpy") is not None:
            source = "pertpy"
        elif _local_file(root, "scgen") is not None:
            source = "scgen"
        elif not download:
            raise DatasetUnavailableError(_missing_message(root, ("pertpy", "scgen")))
        else:
            source = "pertpy"
    path = _fetch(root, source, bool(download))
    adata = read_h5ad(path)
    n_cells = adata.n_obs
    cond_key, layout = _condition_key(adata, str(path))
    adata = kang18_from_adata(adata, what=str(path))
    try:
        values = detect_x_kind(adata)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    who = "scGen" if source == "scgen" else "pertpy"
    if values == "log1p":
        adata.uns["pdae_preprocessing"] = {"input": "log1p", "log1p": True, "done_by": f"{who} (upstream)"}
    rf = _REMOTE[source]
    where = (f"{who} {rf.url} (saved as {path.name})" if path.name == rf.filename
             else f"{path.name} ({who}'s layout; {who}'s copy: {rf.url})")
    return tag_dataset(
        adata, "kang18", PERTURBATION_KEY, CONTROL_LABEL, CELL_TYPE_KEY, values,
        f"{where}; Kang et al. 2018, PBMC control vs IFN-beta",
        original_key=cond_key, layout=layout, file=path.name, n_dropped=int(n_cells - adata.n_obs),
    )
