"""Named perturbation datasets: where each comes from, how it is fetched and checked,
and loaders that return an AnnData ready for :func:`pdae_core.data.registry.setup_anndata`.

Files live in a data directory (:func:`default_data_dir`: the ``data_dir`` argument,
else ``$PDAE_DATA_DIR``, else the user cache ``platformdirs.user_cache_dir("pdae_core")``).
A missing file is downloaded from its public source (``download=True``) into a
temporary file in that directory, checked against its pinned sha256 and only then
moved into place, so an interrupted download never leaves a half-written file under
the real name. Files already present are checked against the same hash.

Every loaded AnnData carries ``uns["pdae_dataset"]``::

    {"name", "perturbation_key", "control_label", "covariate_key" (or None),
     "values" ("counts" | "log1p" | "lfc_vs_control" | "synthetic"), "source"}

so that ``setup_anndata(adata, perturbation_key=d["perturbation_key"],
control_label=d["control_label"], covariate_key=d["covariate_key"])`` sets it up.
The pseudobulk dataset is the exception: its values are log-fold-changes (negative
values, no control row), which ``setup_anndata`` rejects by design; see
:func:`load_dataset`.

Two datasets (``schraivogel20``, ``papalexi21``) are files converted by this
project; when the converted file is absent they are rebuilt from the public
originals (:func:`build_schraivogel20`, :func:`build_papalexi21`). The full
Norman 2019 data (``norman19_full``) is read from scPerturb's or GEARS' public
files; no sha256 is pinned for those (they were never available to check here), so
only their size and readability are checked.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import re
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...errors import DataError, DatasetUnavailableError
from ..registry import read_h5ad

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
]

log = logging.getLogger(__name__)

#: Environment variable naming the data directory.
ENV_VAR = "PDAE_DATA_DIR"

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RemoteFile:
    """A file of the data directory and the public address it is downloaded from."""

    filename: str
    url: str | None
    sha256: str | None
    note: str = ""


# --------------------------------------------------------------------------------------
# sources (see ../shared/data/README.md for the files the project keeps)

_PERTURBENCH_COMMIT = "4dd6a03c54ef348f6be6e46e21ea7f80eb2daaa2"
_REACHABILITY_COMMIT = "9b7a2b195e5e573c9b8a465cce9e9786e033aaf8"
# The data README gives these two commits abbreviated; GitHub resolves abbreviated
# commit hashes in github.com/<owner>/<repo>/raw/<ref>/<path> addresses.
_CRISPAT_REF = "a9372b9c"
_SCEPTREDATA_REF = "ec722d5d"

DEVEL = RemoteFile(
    "perturbench_devel.h5ad",
    f"https://raw.githubusercontent.com/altoslabs/perturbench/{_PERTURBENCH_COMMIT}"
    "/src/perturbench/data/resources/devel.h5ad",
    "220998f5630c813228c8661c86dd52244b9ac87127511289af90e0d900d8429b",
)
PSEUDOBULK = RemoteFile(
    "norman2019_pseudobulk.npz",
    f"https://raw.githubusercontent.com/MasalaKimchi/cell-state-reachability/{_REACHABILITY_COMMIT}"
    "/notebooks/cache/norman_effect_bundle.npz",
    "8979d2ff3ea4e110f0e48f6342d0766c90036fe9876b9de53c93a8a401ec6f12",
)
# Converted by the project (no public copy of the converted file): rebuilt from the originals below.
SCHRAIVOGEL_CONVERTED = RemoteFile(
    "schraivogel2020_tapseq.h5ad", None,
    "5dbb5d4835c8b693bc274d0bb4cf5d68c1698abfc2abb929dd00db50bab46327",
)
PAPALEXI_CONVERTED = RemoteFile(
    "papalexi2021_eccite.h5ad", None,
    "308e4c14ab200bb5bbd095457df8ba8bf67d5dffa8071f7d41c43665fbd867b8",
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
SCEPTREDATA_LOWMOI = RemoteFile(
    "sceptredata_lowmoi_example_data.rda",
    f"https://github.com/Katsevich-Lab/sceptredata/raw/{_SCEPTREDATA_REF}/data/lowmoi_example_data.rda",
    None,
    "R list lowmoi_example_data (response_matrix, grna_matrix, grna_target_data_frame, extra_covariates)",
)
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


# --------------------------------------------------------------------------------------
# data directory and files


def default_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$PDAE_DATA_DIR``, else the user cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("pdae_core"))


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_args(filename: str, sha256: str | None) -> str | None:
    if not filename or Path(filename).name != filename or filename in (".", ".."):
        raise DataError(f"Dataset file name {filename!r} must be a plain file name (no directories).")
    if sha256 is None:
        return None
    sha = str(sha256).strip().lower()
    if not _SHA256_RE.match(sha):
        raise DataError(f"sha256 for {filename!r} must be 64 hexadecimal digits, got {sha256!r}.")
    return sha


def _urlopen(url: str, timeout: float = _TIMEOUT_S) -> Any:
    """Open ``url`` (http, https or file); a seam for tests."""
    req = urllib.request.Request(url, headers={"User-Agent": "pdae_core (python urllib)"})
    return urllib.request.urlopen(req, timeout=timeout)


def _manual_hint(filename: str, url: str | None, path: Path) -> str:
    where = f"Download it from {url} and save it as {path}" if url else f"Place the file at {path}"
    return (
        f"{where} (or point data_dir= / ${ENV_VAR} at a folder that has {filename})."
    )


def _download(url: str, dest: Path, sha256: str | None) -> None:
    """Download ``url`` to ``dest`` through a temporary file in the same folder."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise DatasetUnavailableError(
            f"Cannot write to the data directory {dest.parent} ({e}) to download {dest.name} from {url}. "
            f"Choose a writable folder with data_dir= or ${ENV_VAR}."
        ) from e
    tmp = Path(tmp_name)
    log.info("Downloading %s from %s", dest.name, url)
    try:
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as out, _urlopen(url) as resp:
            expected_len = None
            headers = getattr(resp, "headers", None)
            if headers is not None and headers.get("Content-Length"):
                try:
                    expected_len = int(headers.get("Content-Length"))
                except ValueError:
                    expected_len = None
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if expected_len is not None and n != expected_len:
            raise DatasetUnavailableError(
                f"Download of {dest.name} from {url} was cut short ({n} of {expected_len} bytes). "
                "Try again, or " + _manual_hint(dest.name, url, dest)
            )
        if n == 0:
            raise DatasetUnavailableError(f"Download of {dest.name} from {url} returned no data. "
                                          + _manual_hint(dest.name, url, dest))
        actual = h.hexdigest()
        if sha256 is not None and actual != sha256:
            raise DatasetUnavailableError(
                f"Downloaded {dest.name} from {url} but its sha256 is {actual}, expected {sha256}: the "
                "server sent a different or damaged file. " + _manual_hint(dest.name, url, dest)
            )
        os.replace(tmp, dest)
    except DatasetUnavailableError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as e:  # URLError, HTTPError, timeouts, OSError, bad URLs (ValueError)
        tmp.unlink(missing_ok=True)
        raise DatasetUnavailableError(
            f"Could not download {dest.name} from {url}: {type(e).__name__}: {e}. "
            + _manual_hint(dest.name, url, dest)
        ) from e
    except BaseException:  # KeyboardInterrupt: leave nothing half-written behind
        tmp.unlink(missing_ok=True)
        raise


def fetch_file(
    filename: str,
    url: str | None,
    sha256: str | None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Path:
    """Local path of ``filename`` in the data directory, downloading it from ``url`` if missing.

    A file that is present is checked against ``sha256`` (skipped when ``sha256`` is
    None); a mismatch raises :class:`DataError` naming the file and both hashes. A
    missing file is downloaded when ``download`` is true (to a temporary file in the
    same folder, hash-checked, then atomically renamed), otherwise, or when the
    download fails, :class:`DatasetUnavailableError` says where to put it by hand.
    """
    sha = _check_args(filename, sha256)
    root = default_data_dir(data_dir)
    path = root / filename
    if path.is_dir():
        raise DataError(f"{path} is a directory; expected the data file {filename}.")
    if path.exists():
        if sha is not None:
            actual = _sha256_of(path)
            if actual != sha:
                raise DataError(
                    f"{path} does not match the expected checksum: sha256 expected {sha}, found {actual}. "
                    "It is damaged, incomplete or another version; delete it"
                    + (f" to download it again from {url}" if url else "")
                    + " or replace it with the right file."
                )
        return path
    if not download:
        raise DatasetUnavailableError(
            f"{filename} is not in the data directory {root} and download=False. "
            + _manual_hint(filename, url, path)
            + (" Or call again with download=True." if url else "")
        )
    if not url:
        raise DatasetUnavailableError(f"{filename} is not in {root} and has no public download address. "
                                      + _manual_hint(filename, None, path))
    _download(url, path, sha)
    return path


def _fetch(rf: RemoteFile, data_dir: Path, download: bool) -> Path:
    return fetch_file(rf.filename, rf.url, rf.sha256, data_dir=data_dir, download=download)


# --------------------------------------------------------------------------------------
# small helpers


def _drop_unused_categories(adata: ad.AnnData) -> ad.AnnData:
    for df in (adata.obs, adata.var):
        for col in df.columns:
            if isinstance(df[col].dtype, pd.CategoricalDtype):
                df[col] = df[col].cat.remove_unused_categories()
    return adata


def _subset(adata: ad.AnnData, mask: np.ndarray) -> ad.AnnData:
    out = adata[np.asarray(mask, dtype=bool)].copy()
    return _drop_unused_categories(out)


def _tag(
    adata: ad.AnnData, name: str, perturbation_key: str, control_label: str, covariate_key: str | None,
    values: str, source: str, **extra: Any,
) -> ad.AnnData:
    info: dict[str, Any] = {
        "name": name, "perturbation_key": perturbation_key, "control_label": control_label,
        "covariate_key": covariate_key, "values": values, "source": source,
    }
    info.update(extra)
    adata.uns["pdae_dataset"] = info
    return adata


def _as_category(values: Sequence[Any] | np.ndarray | pd.Series) -> pd.Categorical:
    return pd.Categorical(np.asarray(values, dtype=object).astype(str))


def _read_csv(path: Path, what: str, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}") from None
    except Exception as e:  # pandas raises several types for malformed CSV
        raise DataError(f"{path} is not a readable {what} CSV: {type(e).__name__}: {e}") from e


def _exists(root: Path, rf: RemoteFile) -> bool:
    return (root / rf.filename).is_file()


# --------------------------------------------------------------------------------------
# perturbench devel (norman19 / mcfaline23 parts)


def _load_devel_part(part: str, data_dir: Path, download: bool) -> ad.AnnData:
    adata = read_h5ad(_fetch(DEVEL, data_dir, download))
    if "dataset" not in adata.obs.columns:
        raise DataError(f"{DEVEL.filename} has no obs['dataset'] column; is it the perturbench devel file?")
    mask = adata.obs["dataset"].astype(str).to_numpy() == part
    if not mask.any():
        raise DataError(f"{DEVEL.filename} has no cells with obs['dataset'] == {part!r}.")
    out = _subset(adata, mask)
    # done upstream by perturbench; recorded so that checkpoints say how X was made
    out.uns["pdae_preprocessing"] = {
        "input": "log1p", "normalize_total": 1e4, "log1p": True, "highly_variable_genes": int(out.n_vars),
        "done_by": "perturbench (upstream)",
    }
    return out


def _load_norman19_devel(data_dir: Path, download: bool) -> ad.AnnData:
    adata = _load_devel_part("norman19", data_dir, download)
    return _tag(adata, "norman19_devel", "condition", "control", None, "log1p",
                f"{DEVEL.url} (obs['dataset'] == 'norman19'; Norman et al. 2019, K562 CRISPRa)")


def _load_mcfaline23_devel(data_dir: Path, download: bool) -> ad.AnnData:
    adata = _load_devel_part("mcfaline23", data_dir, download)
    return _tag(adata, "mcfaline23_devel", "condition", "control", "cell_type", "log1p",
                f"{DEVEL.url} (obs['dataset'] == 'mcfaline23'; McFaline-Figueroa et al. 2023, CRISPRi)")


# --------------------------------------------------------------------------------------
# Norman 2019 pseudobulk log-fold-changes

_PSEUDOBULK_KEYS = ("lfc_s", "lfc_d", "sing_labels", "doub_labels", "genes_hvg", "comp_ok")


def _load_norman19_pseudobulk(data_dir: Path, download: bool) -> ad.AnnData:
    path = _fetch(PSEUDOBULK, data_dir, download)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz bundle: {type(e).__name__}: {e}") from e
    missing = [k for k in _PSEUDOBULK_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks the arrays {missing} (has {sorted(arrays)}).")
    lfc_s, lfc_d = arrays["lfc_s"], arrays["lfc_d"]
    singles = [str(s) for s in arrays["sing_labels"]]
    doubles = [str(s) for s in arrays["doub_labels"]]
    genes = [str(g) for g in arrays["genes_hvg"]]
    comp_ok = np.asarray(arrays["comp_ok"], dtype=bool)
    if (lfc_s.shape != (len(singles), len(genes)) or lfc_d.shape != (len(doubles), len(genes))
            or comp_ok.shape != (len(doubles),)):
        raise DataError(
            f"{path} has inconsistent shapes: lfc_s {lfc_s.shape}, lfc_d {lfc_d.shape}, "
            f"{len(singles)} single and {len(doubles)} double labels, {len(genes)} genes, comp_ok {comp_ok.shape}."
        )
    conds = singles + doubles
    if len(set(conds)) != len(conds):
        raise DataError(f"{path} repeats condition labels.")
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(conds, categories=conds),
            "n_perturbations": np.array([1] * len(singles) + [2] * len(doubles), dtype=np.int64),
            "both_singles_present": np.concatenate([np.ones(len(singles), dtype=bool), comp_ok]),
        },
        index=pd.Index(conds, name="condition_name"),
    )
    var = pd.DataFrame(index=pd.Index(genes))
    for key in ("mu_g", "sd_g", "hvg_index"):
        if key in arrays and arrays[key].shape == (len(genes),):
            var[key] = arrays[key]
    adata = ad.AnnData(X=np.concatenate([lfc_s, lfc_d]).astype(np.float32), obs=obs, var=var)
    if "Es" in arrays and "Ed" in arrays:
        z = np.concatenate([arrays["Es"], arrays["Ed"]]).astype(np.float32)
        if z.shape == adata.shape:
            adata.layers["zscore"] = z
    return _tag(
        adata, "norman19_pseudobulk", "condition", "control", None, "lfc_vs_control",
        f"{PSEUDOBULK.url} (saved as {PSEUDOBULK.filename}); Norman et al. 2019 pseudobulk "
        "log-fold-change vs control (CPM + log1p), top 2,000 HVGs",
        note="One row per perturbation, X = change from control (negative values, no control row): "
             "compare effects directly; setup_anndata does not accept it as expression.",
    )


# --------------------------------------------------------------------------------------
# Schraivogel 2020 TAP-seq (crispat example data)

_CRISPAT_PREFIX = "CROPseq_dCas9_DS_"
_CONTROL_TARGETS = {"non-targeting", "non_targeting", "nontargeting", "nt", "control", "ctrl", "safe-targeting"}


def _crispat_guide_target(guide: str) -> str | None:
    """Target of a crispat/Schraivogel gRNA name; None for a non-targeting guide.

    ``CROPseq_dCas9_DS_CCNE2_+_95907328.23-P1P2`` -> ``CCNE2``, ``..._GATA1-A`` -> ``GATA1``,
    ``..._non-targeting_00017`` -> None.
    """
    name = guide[len(_CRISPAT_PREFIX):] if guide.startswith(_CRISPAT_PREFIX) else guide
    token = name.split("_")[0]
    if token.lower() in _CONTROL_TARGETS:
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
    expr = _read_csv(expr_path, "gene expression counts", index_col=0)
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

    asg = _read_csv(asg_path, "guide assignment")
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
            obs["batch"] = _as_category(batch)
    else:
        grna_names = sorted(set(asg["gRNA"].astype(str)))
    obs["gRNAs"] = _as_category([";".join(g) for g in guides_per_cell])
    obs["perturbation"] = _as_category([lab for lab, _ in labels])
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


def _load_schraivogel20(data_dir: Path, download: bool, keep_unassigned: bool = False) -> ad.AnnData:
    if _exists(data_dir, SCHRAIVOGEL_CONVERTED):
        adata = read_h5ad(_fetch(SCHRAIVOGEL_CONVERTED, data_dir, False))
        how = f"{SCHRAIVOGEL_CONVERTED.filename} (converted by the project)"
    else:
        originals = (CRISPAT_EXPRESSION, CRISPAT_ASSIGNMENTS, CRISPAT_GRNA_COUNTS)
        if not download and not all(_exists(data_dir, rf) for rf in originals[:2]):
            raise DatasetUnavailableError(
                f"schraivogel20 needs {SCHRAIVOGEL_CONVERTED.filename} or crispat's public files in "
                f"{data_dir}, and download=False. Save "
                + ", ".join(f"{rf.url} as {rf.filename}" for rf in originals)
                + " (the last is optional), or call again with download=True."
            )
        expr = _fetch(CRISPAT_EXPRESSION, data_dir, download)
        asg = _fetch(CRISPAT_ASSIGNMENTS, data_dir, download)
        grna = (_fetch(CRISPAT_GRNA_COUNTS, data_dir, download)
                if download or _exists(data_dir, CRISPAT_GRNA_COUNTS) else None)
        adata = build_schraivogel20(expr, asg, grna)
        how = "built from crispat's public example files"
    if "perturbation" not in adata.obs.columns:
        raise DataError("The Schraivogel AnnData has no obs['perturbation'] column.")
    if not keep_unassigned:
        adata = _subset(adata, adata.obs["perturbation"].astype(str).to_numpy() != "unassigned")
    return _tag(
        adata, "schraivogel20", "perturbation", "control", None, "counts",
        f"Schraivogel et al. 2020 TAP-seq (K562 CRISPRi), {how}; originals: velten-group/crispat "
        f"{_CRISPAT_REF} example_data/Schraivogel/gene_expression_counts.csv + gRNA_counts.h5ad + "
        "guide_assignments/UMI/assignments_t5.csv",
        unassigned_dropped=not keep_unassigned,
    )


# --------------------------------------------------------------------------------------
# Papalexi 2021 ECCITE-seq (sceptredata lowmoi_example_data)


@dataclass
class _RMatrix:
    matrix: Any
    rownames: list[str] | None
    colnames: list[str] | None


def _names(v: Any) -> list[str] | None:
    if v is None:
        return None
    return [str(x) for x in np.asarray(v).ravel()]


def _rsparse_constructor(kind: str) -> Callable[[Any, Mapping[str, Any]], _RMatrix]:
    def build(obj: Any, attrs: Mapping[str, Any]) -> _RMatrix:
        return _sparse_from_slots(kind, attrs)

    return build


def _sparse_from_slots(kind: str, slots: Mapping[str, Any]) -> _RMatrix:
    """A Matrix-package sparse matrix (dgC/dgR/dgT, or pattern/logical) from its slots."""
    shape = tuple(int(d) for d in np.asarray(slots["Dim"]).ravel())
    nnz_src = slots.get("i") if kind != "R" else slots.get("j")
    x = slots.get("x")
    data = (np.ones(len(np.asarray(nnz_src)), dtype=np.float32) if x is None
            else np.asarray(x, dtype=np.float32))
    if kind == "C":
        m: Any = sp.csc_matrix((data, np.asarray(slots["i"]), np.asarray(slots["p"])), shape=shape)
    elif kind == "R":
        m = sp.csr_matrix((data, np.asarray(slots["j"]), np.asarray(slots["p"])), shape=shape)
    else:
        m = sp.coo_matrix((data, (np.asarray(slots["i"]), np.asarray(slots["j"]))), shape=shape)
    dimnames = slots.get("Dimnames") or [None, None]
    return _RMatrix(m, _names(dimnames[0]), _names(dimnames[1]) if len(dimnames) > 1 else None)


def _to_rmatrix(obj: Any, what: str) -> _RMatrix:
    """Matrix + dimnames from whatever an R reader produced."""
    if isinstance(obj, _RMatrix):
        return obj
    if isinstance(obj, pd.DataFrame):
        return _RMatrix(obj.to_numpy(), _names(obj.index), _names(obj.columns))
    if sp.issparse(obj) or isinstance(obj, np.ndarray):
        return _RMatrix(obj, None, None)
    slots = vars(obj) if hasattr(obj, "__dict__") else obj
    if isinstance(slots, Mapping) and "Dim" in slots:
        cls = [str(c) for c in np.asarray(slots.get("class", ["dgCMatrix"])).ravel()]
        kind = "R" if any(c.endswith("RMatrix") for c in cls) else "T" if any(c.endswith("TMatrix") for c in cls) else "C"
        return _sparse_from_slots(kind, slots)
    if hasattr(obj, "values") and hasattr(obj, "coords") and hasattr(obj, "dims"):  # xarray.DataArray
        dims = list(obj.dims)
        rows = obj.coords[dims[0]].values if dims[0] in obj.coords else None
        cols = obj.coords[dims[1]].values if len(dims) > 1 and dims[1] in obj.coords else None
        return _RMatrix(np.asarray(obj.values), _names(rows), _names(cols))
    raise DataError(f"{what} is a {type(obj).__name__}, not a matrix this loader can read.")


def read_lowmoi_rda(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The R list ``lowmoi_example_data`` of sceptredata's ``data/lowmoi_example_data.rda``.

    Needs the optional package ``rdata`` (pure Python: ``pip install rdata``).
    ``pyreadr`` cannot be used: it skips R lists and S4 objects such as the
    ``dgCMatrix`` sparse matrices this file holds. Sparse matrices come back as
    ``_RMatrix`` (scipy matrix + row/column names), data frames as pandas.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"R data file not found: {p}")
    try:
        import rdata
    except ImportError:
        raise DataError(
            f"Reading {p} needs the optional package 'rdata': run `pip install rdata`. "
            "(pyreadr cannot read it: lowmoi_example_data is an R list of sparse dgCMatrix objects, "
            "which pyreadr skips.)"
        ) from None
    constructors = dict(rdata.conversion.DEFAULT_CLASS_MAP)
    for cls in ("dgCMatrix", "lgCMatrix", "ngCMatrix"):
        constructors[cls] = _rsparse_constructor("C")
    for cls in ("dgRMatrix", "lgRMatrix", "ngRMatrix"):
        constructors[cls] = _rsparse_constructor("R")
    for cls in ("dgTMatrix", "lgTMatrix", "ngTMatrix"):
        constructors[cls] = _rsparse_constructor("T")
    try:
        objects = rdata.read_rda(p, constructor_dict=constructors)
    except Exception as e:
        raise DataError(f"{p} is not a readable R data file: {type(e).__name__}: {e}") from e
    objects = {str(k): v for k, v in objects.items()}
    data = objects.get("lowmoi_example_data")
    if data is None:
        if len(objects) == 1:
            data = next(iter(objects.values()))
        else:
            raise DataError(f"{p} has no object 'lowmoi_example_data' (objects: {sorted(objects)}).")
    if not isinstance(data, Mapping):
        raise DataError(f"lowmoi_example_data in {p} is a {type(data).__name__}, expected an R list.")
    return {str(k): v for k, v in data.items()}


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
    resp = _to_rmatrix(response_matrix, "response_matrix")
    grna = _to_rmatrix(grna_matrix, "grna_matrix")
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
        ["unassigned" if not t else ("control" if t.lower() in _CONTROL_TARGETS else t) for t in target],
        dtype=object,
    )
    frac = np.divide(top_umi, total, out=np.zeros_like(top_umi, dtype=np.float64), where=has)
    names = list(cell_names) if cell_names is not None else (resp.colnames or [f"cell{i}" for i in range(n)])
    if len(names) != n:
        raise DataError(f"{len(names)} cell names for {n} cells.")
    obs = pd.DataFrame(index=pd.Index([str(c) for c in names]))
    obs["grna_top"] = _as_category(top)
    obs["grna_top_umi"] = top_umi.astype(np.float64)
    obs["grna_total_umi"] = total.astype(np.float64)
    obs["grna_top_frac"] = frac
    if extra_covariates is not None:
        for col in extra_covariates.columns:
            v = extra_covariates[col].to_numpy()
            obs[str(col)] = _as_category(v) if not pd.api.types.is_numeric_dtype(extra_covariates[col]) else v
    obs["target"] = _as_category(target)
    obs["perturbation"] = _as_category(pert)
    adata = ad.AnnData(X=R, obs=obs, var=pd.DataFrame(index=pd.Index([str(g) for g in genes])))
    adata.layers["counts"] = R.copy()
    adata.obsm["grna_counts"] = G
    adata.uns["grna_names"] = np.asarray(guides, dtype=str)
    adata.uns["source"] = (
        f"Katsevich-Lab/sceptredata {_SCEPTREDATA_REF} data/lowmoi_example_data.rda; Papalexi et al. 2021 "
        "ECCITE-seq THP-1 CRISPR KO subset; guide assignment = argmax gRNA UMI "
        "(pdae_core.data.datasets.papalexi21_from_r_objects)"
    )
    return _drop_unused_categories(adata)


def build_papalexi21(rda_path: str | os.PathLike[str]) -> ad.AnnData:
    """The Papalexi 2021 AnnData from sceptredata's ``lowmoi_example_data.rda`` (needs ``rdata``)."""
    d = read_lowmoi_rda(rda_path)
    missing = [k for k in ("response_matrix", "grna_matrix", "grna_target_data_frame") if k not in d]
    if missing:
        raise DataError(f"lowmoi_example_data in {rda_path} lacks {missing} (has {sorted(d)}).")
    return papalexi21_from_r_objects(
        d["response_matrix"], d["grna_matrix"], d["grna_target_data_frame"], d.get("extra_covariates"),
    )


def _load_papalexi21(data_dir: Path, download: bool) -> ad.AnnData:
    if _exists(data_dir, PAPALEXI_CONVERTED):
        adata = read_h5ad(_fetch(PAPALEXI_CONVERTED, data_dir, False))
        how = f"{PAPALEXI_CONVERTED.filename} (converted by the project)"
    else:
        if not download and not _exists(data_dir, SCEPTREDATA_LOWMOI):
            raise DatasetUnavailableError(
                f"papalexi21 needs {PAPALEXI_CONVERTED.filename} or sceptredata's public file in {data_dir}, "
                f"and download=False. Save {SCEPTREDATA_LOWMOI.url} as {data_dir / SCEPTREDATA_LOWMOI.filename} "
                "(reading it needs `pip install rdata`), or call again with download=True."
            )
        adata = build_papalexi21(_fetch(SCEPTREDATA_LOWMOI, data_dir, download))
        how = "built from sceptredata's public lowmoi_example_data.rda"
    if "perturbation" not in adata.obs.columns:
        raise DataError("The Papalexi AnnData has no obs['perturbation'] column.")
    if (adata.obs["perturbation"].astype(str) == "unassigned").any():
        adata = _subset(adata, adata.obs["perturbation"].astype(str).to_numpy() != "unassigned")
    return _tag(
        adata, "papalexi21", "perturbation", "control", "bio_rep", "counts",
        f"Papalexi et al. 2021 ECCITE-seq (THP-1 CRISPR KO), {how}; original: Katsevich-Lab/sceptredata "
        f"{_SCEPTREDATA_REF} data/lowmoi_example_data.rda",
    )


# --------------------------------------------------------------------------------------
# full Norman 2019 (scPerturb or GEARS)


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
    return _drop_unused_categories(adata)


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
        adata = _subset(adata, keep)
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
        adata = _subset(adata, keep)
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
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                os.replace(tmp_name, dest)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
    except zipfile.BadZipFile as e:
        raise DataError(f"{zip_path} is not a valid zip archive ({e}); delete it to download it again.") from e


def _load_norman19_full(data_dir: Path, download: bool, source: str = "auto") -> ad.AnnData:
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
        adata = norman19_from_scperturb(read_h5ad(_fetch(NORMAN_SCPERTURB, data_dir, download)))
        return _tag(adata, "norman19_full", "condition", "control", None, "counts",
                    f"scPerturb {NORMAN_SCPERTURB.url} (saved as {NORMAN_SCPERTURB.filename}); "
                    "Norman et al. 2019, K562 CRISPRa", original_key="perturbation")
    if not gears_path.is_file():
        zip_path = _fetch(NORMAN_GEARS_ZIP, data_dir, download)
        _extract_gears_h5ad(zip_path, gears_path)
    adata = norman19_from_gears(read_h5ad(gears_path))
    return _tag(adata, "norman19_full", "condition", "control", None, "log1p",
                f"GEARS {NORMAN_GEARS_ZIP.url} ({NORMAN_GEARS_H5AD}); Norman et al. 2019, K562 CRISPRa",
                original_key="condition_gears")


# --------------------------------------------------------------------------------------
# synthetic


def _load_synthetic(data_dir: Path, download: bool, **kwargs: Any) -> ad.AnnData:
    from ..synthetic import make_synthetic

    _check_kwargs("synthetic", make_synthetic, kwargs)
    adata = make_synthetic(**kwargs)[0]
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
    return _tag(adata, "synthetic", "condition", "control", None, "synthetic",
                f"pdae_core.data.synthetic.make_synthetic({args})")


# --------------------------------------------------------------------------------------
# registry of named datasets


@dataclass(frozen=True)
class _Dataset:
    description: str
    loader: Callable[..., ad.AnnData]


_DATASETS: dict[str, _Dataset] = {
    "norman19_devel": _Dataset(
        "Norman 2019 K562 CRISPRa, perturbench devel subset: 3,375 cells x 500 HVGs, log-normalised, "
        "18 singles + 15 doubles + control", _load_norman19_devel),
    "mcfaline23_devel": _Dataset(
        "McFaline-Figueroa 2023 CRISPRi, perturbench devel subset: 2,586 cells x 500 HVGs in 3 glioblastoma "
        "lines (covariate cell_type), log-normalised", _load_mcfaline23_devel),
    "norman19_pseudobulk": _Dataset(
        "Norman 2019 pseudobulk: log-fold-change vs control of 104 singles + 130 doubles x 2,000 HVGs",
        _load_norman19_pseudobulk),
    "schraivogel20": _Dataset(
        "Schraivogel 2020 TAP-seq K562 CRISPRi: 21,315 assigned cells x 72 genes, raw counts, singles and "
        "combinations (keep_unassigned=True keeps 662 more)", _load_schraivogel20),
    "papalexi21": _Dataset(
        "Papalexi 2021 ECCITE-seq THP-1 CRISPR KO: 20,729 cells x 299 genes, raw counts, 25 targets, "
        "covariate bio_rep", _load_papalexi21),
    "norman19_full": _Dataset(
        "Norman 2019 K562 CRISPRa, full single-cell data from scPerturb (raw counts) or GEARS "
        "(source='gears', log-normalised); ~100k cells", _load_norman19_full),
    "synthetic": _Dataset(
        "Synthetic data from the PDAE generative model with known truth (kwargs go to make_synthetic)",
        _load_synthetic),
}


def list_datasets() -> dict[str, str]:
    """Name -> one-line description of every dataset :func:`load_dataset` knows."""
    return {name: d.description for name, d in _DATASETS.items()}


def _check_kwargs(name: str, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p not in ("data_dir", "download")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise DataError(
            f"Dataset {name!r} does not take the option(s) {unknown}; it accepts: "
            f"{', '.join(allowed) if allowed else 'no options'}."
        )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    **kwargs: Any,
) -> ad.AnnData:
    """Load a named dataset (see :func:`list_datasets`) as an AnnData.

    Files are looked up in :func:`default_data_dir` and downloaded when missing and
    ``download`` is true. ``uns['pdae_dataset']`` names the perturbation column, the
    control label and the covariate, so that::

        d = adata.uns["pdae_dataset"]
        registry = setup_anndata(adata, perturbation_key=d["perturbation_key"],
                                 control_label=d["control_label"], covariate_key=d["covariate_key"])

    ``norman19_pseudobulk`` holds log-fold-changes vs control (``values ==
    "lfc_vs_control"``): one row per perturbation, no control row and negative
    values, so it is for effect-level comparisons, not for ``setup_anndata``.

    Options: ``schraivogel20``: ``keep_unassigned=False``; ``norman19_full``:
    ``source='auto'|'scperturb'|'gears'``; ``synthetic``: any
    :func:`pdae_core.data.synthetic.make_synthetic` argument.
    """
    ds = _DATASETS.get(name)
    if ds is None:
        raise DataError(f"Unknown dataset {name!r}; known datasets: {', '.join(_DATASETS)}.")
    _check_kwargs(name, ds.loader, kwargs)
    return ds.loader(default_data_dir(data_dir), bool(download), **kwargs)
