"""perturbench's devel file: the Norman 2019 and McFaline-Figueroa 2023 subsets."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from ...errors import DataError
from ..registry import read_h5ad
from .common import subset_cells, tag_dataset
from .download import RemoteFile, fetch_remote

_PERTURBENCH_COMMIT = "4dd6a03c54ef348f6be6e46e21ea7f80eb2daaa2"

DEVEL = RemoteFile(
    "perturbench_devel.h5ad",
    f"https://raw.githubusercontent.com/altoslabs/perturbench/{_PERTURBENCH_COMMIT}"
    "/src/perturbench/data/resources/devel.h5ad",
    "220998f5630c813228c8661c86dd52244b9ac87127511289af90e0d900d8429b",
)


def _load_devel_part(part: str, data_dir: Path, download: bool) -> ad.AnnData:
    """The cells of the devel file whose ``obs['dataset']`` is ``part``."""
    adata = read_h5ad(fetch_remote(DEVEL, data_dir, download))
    if "dataset" not in adata.obs.columns:
        raise DataError(f"{DEVEL.filename} has no obs['dataset'] column; is it the perturbench devel file?")
    mask = adata.obs["dataset"].astype(str).to_numpy() == part
    if not mask.any():
        raise DataError(f"{DEVEL.filename} has no cells with obs['dataset'] == {part!r}.")
    out = subset_cells(adata, mask)
    # done upstream by perturbench; recorded so that checkpoints say how X was made
    out.uns["pdae_preprocessing"] = {
        "input": "log1p", "normalize_total": 1e4, "log1p": True, "highly_variable_genes": int(out.n_vars),
        "done_by": "perturbench (upstream)",
    }
    return out


def load_norman19_devel(data_dir: Path, download: bool) -> ad.AnnData:
    """``norman19_devel``: the Norman 2019 part of the devel file."""
    adata = _load_devel_part("norman19", data_dir, download)
    return tag_dataset(adata, "norman19_devel", "condition", "control", None, "log1p",
                     f"{DEVEL.url} (obs['dataset'] == 'norman19'; Norman et al. 2019, K562 CRISPRa)")


def load_mcfaline23_devel(data_dir: Path, download: bool) -> ad.AnnData:
    """``mcfaline23_devel``: the McFaline-Figueroa 2023 part of the devel file (covariate cell_type)."""
    adata = _load_devel_part("mcfaline23", data_dir, download)
    return tag_dataset(adata, "mcfaline23_devel", "condition", "control", "cell_type", "log1p",
                     f"{DEVEL.url} (obs['dataset'] == 'mcfaline23'; McFaline-Figueroa et al. 2023, CRISPRi)")
