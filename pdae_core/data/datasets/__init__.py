"""Named perturbation datasets: where each comes from, how it is fetched and checked,
and loaders that return an AnnData ready for :func:`pdae_core.data.registry.setup_anndata`.

This module is the catalogue (:func:`list_datasets`, :func:`load_dataset`); each
source has its own module: :mod:`.download` (data directory, checked downloads),
:mod:`.perturbench` (``norman19_devel``, ``mcfaline23_devel``),
:mod:`.norman_pseudobulk`, :mod:`.schraivogel`, :mod:`.papalexi` (with the R reader
:mod:`.rda`), :mod:`.norman_full`, :mod:`.kang` (``kang18``) and :mod:`.synthetic_dataset`.

Files live in a data directory (:func:`default_data_dir`: the ``data_dir`` argument,
else ``$PDAE_DATA_DIR``, else the user cache); a missing file is downloaded from its
public source and checked against its pinned sha256 (see :mod:`.download`).

Every loaded AnnData carries ``uns["pdae_dataset"]``::

    {"name", "perturbation_key", "control_label", "covariate_key" (or None),
     "values" ("counts" | "log1p" | "lfc_vs_control" | "synthetic"), "source"}

so that ``setup_anndata(adata, perturbation_key=d["perturbation_key"],
control_label=d["control_label"], covariate_key=d["covariate_key"])`` sets it up
(:func:`pdae_core.data.defaults.dataset_defaults` reads these fields back).
The pseudobulk dataset is the exception: its values are log-fold-changes (negative
values, no control row), which ``setup_anndata`` rejects by design; see
:func:`load_dataset`.

Two datasets (``schraivogel20``, ``papalexi21``) are files converted by this
project; when the converted file is absent they are rebuilt from the public
originals (:func:`build_schraivogel20`, :func:`build_papalexi21`). The full
Norman 2019 data (``norman19_full``) is read from scPerturb's or GEARS' public
files; no sha256 is pinned for those (they were never available to check here), so
only their size and readability are checked. The same holds for Kang 2018
(``kang18``, pertpy's or scGen's file): control vs IFN-beta in 7-8 PBMC cell types,
the covariate ``cell_type`` naming the contexts.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import DataError
from .download import ENV_VAR, RemoteFile, default_data_dir, fetch_file

if TYPE_CHECKING:
    import anndata as ad

# The loaders and builders live in the source modules, imported on first use (PEP 562), so that
# listing the datasets (`pdae datasets`) imports no anndata: name -> module.
_LAZY = {
    **dict.fromkeys(["kang18_from_adata", "load_kang18"], ".kang"),
    **dict.fromkeys(["load_norman19_full", "norman19_from_gears", "norman19_from_scperturb"], ".norman_full"),
    "load_norman19_pseudobulk": ".norman_pseudobulk",
    **dict.fromkeys(["build_papalexi21", "load_papalexi21", "papalexi21_from_r_objects"], ".papalexi"),
    **dict.fromkeys(["load_mcfaline23_devel", "load_norman19_devel"], ".perturbench"),
    "read_lowmoi_rda": ".rda",
    **dict.fromkeys(["build_schraivogel20", "load_schraivogel20"], ".schraivogel"),
    "load_synthetic": ".synthetic_dataset",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value

__all__ = [
    "ENV_VAR",
    "RemoteFile",
    "default_data_dir",
    "fetch_file",
    "list_datasets",
    "load_dataset",
    "build_schraivogel20",
    "build_papalexi21",
    "papalexi21_from_r_objects",
    "read_lowmoi_rda",
    "norman19_from_scperturb",
    "norman19_from_gears",
    "kang18_from_adata",
]


@dataclass(frozen=True)
class _Dataset:
    description: str
    loader_name: str  # a loader of this package, imported on first use

    @property
    def loader(self) -> Callable[..., ad.AnnData]:
        return globals()[self.loader_name] if self.loader_name in globals() else __getattr__(self.loader_name)


_DATASETS: dict[str, _Dataset] = {
    "norman19_devel": _Dataset(
        "Norman 2019 K562 CRISPRa, perturbench devel subset: 3,375 cells x 500 HVGs, log-normalised, "
        "18 singles + 15 doubles + control", "load_norman19_devel"),
    "mcfaline23_devel": _Dataset(
        "McFaline-Figueroa 2023 CRISPRi, perturbench devel subset: 2,586 cells x 500 HVGs in 3 glioblastoma "
        "lines (covariate cell_type), log-normalised", "load_mcfaline23_devel"),
    "norman19_pseudobulk": _Dataset(
        "Norman 2019 pseudobulk: log-fold-change vs control of 104 singles + 130 doubles x 2,000 HVGs",
        "load_norman19_pseudobulk"),
    "schraivogel20": _Dataset(
        "Schraivogel 2020 TAP-seq K562 CRISPRi: 21,315 assigned cells x 72 genes, raw counts, singles and "
        "combinations (keep_unassigned=True keeps 662 more)", "load_schraivogel20"),
    "papalexi21": _Dataset(
        "Papalexi 2021 ECCITE-seq THP-1 CRISPR KO: 20,729 cells x 299 genes, raw counts, 25 targets, "
        "covariate bio_rep", "load_papalexi21"),
    "norman19_full": _Dataset(
        "Norman 2019 K562 CRISPRa, full single-cell data from scPerturb (raw counts) or GEARS "
        "(source='gears', log-normalised); ~100k cells", "load_norman19_full"),
    "kang18": _Dataset(
        "Kang 2018 PBMC control vs IFN-beta in 8 cell types (covariate cell_type): pertpy's file, 24,673 cells "
        "x 15,706 genes, raw counts, as documented by the source (source='scgen': scGen's log-normalised one)",
        "load_kang18"),
    "synthetic": _Dataset(
        "Synthetic data from the PDAE generative model with known truth (kwargs go to make_synthetic)",
        "load_synthetic"),
}


def list_datasets() -> dict[str, str]:
    """Name -> one-line description of every dataset :func:`load_dataset` knows."""
    return {name: d.description for name, d in _DATASETS.items()}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    **kwargs: Any,
) -> ad.AnnData:
    """Load a named dataset (see :func:`list_datasets`) as an AnnData.

    Files are looked up in :func:`default_data_dir` and downloaded when missing and
    ``download`` is true. ``uns['pdae_dataset']`` names the perturbation column, the
    control label and the covariate; :func:`pdae_core.data.defaults.dataset_defaults`
    reads them, so that::

        registry = setup_anndata(adata, **dataset_defaults(adata))

    ``norman19_pseudobulk`` holds log-fold-changes vs control (``values ==
    "lfc_vs_control"``): one row per perturbation, no control row and negative
    values, so it is for effect-level comparisons, not for ``setup_anndata``.

    Options: ``schraivogel20``: ``keep_unassigned=False``; ``norman19_full``:
    ``source='auto'|'scperturb'|'gears'``; ``kang18``: ``source='auto'|'pertpy'|'scgen'``; ``synthetic``: any
    :func:`pdae_core.data.synthetic.make_synthetic` argument.
    """
    ds = _DATASETS.get(name)
    if ds is None:
        raise DataError(f"Unknown dataset {name!r}; known datasets: {', '.join(_DATASETS)}.")
    from .common import check_kwargs

    loader = ds.loader
    check_kwargs(name, loader, kwargs)
    return loader(default_data_dir(data_dir), bool(download), **kwargs)
