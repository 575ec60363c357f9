"""One reader of the set-up defaults that a dataset records about itself.

Every loader of :mod:`pdae_core.data.datasets` tags its AnnData with
``uns['pdae_dataset']`` (the perturbation column, control label, covariate, ...).
The CLI, the dashboard and the benchmark read those defaults here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import anndata as ad

DATASET_KEY = "pdae_dataset"
SETUP_FIELDS = ("perturbation_key", "control_label", "covariate_key", "dose_key", "separator")
PROFILES = "lfc_vs_control"


def dataset_info(adata: ad.AnnData) -> dict[str, Any]:
    """``uns['pdae_dataset']`` as a plain dict (empty when absent or not a mapping)."""
    meta = adata.uns.get(DATASET_KEY)
    return dict(meta) if hasattr(meta, "get") and hasattr(meta, "keys") else {}


def dataset_defaults(adata: ad.AnnData) -> dict[str, str]:
    """The set-up fields recorded by the dataset (``perturbation_key``, ``control_label``,
    ``covariate_key``, ``dose_key``, ``separator``); missing or empty ones are left out,
    and so are column names that ``adata.obs`` does not have."""
    meta = dataset_info(adata)
    out: dict[str, str] = {}
    for name in SETUP_FIELDS:
        v = meta.get(name)
        if v is None or str(v) == "":
            continue
        if name.endswith("_key") and str(v) not in adata.obs.columns:
            continue
        out[name] = str(v)
    return out


def holds_profiles(adata: ad.AnnData) -> bool:
    """True for a dataset of per-perturbation log-fold-changes vs control (no cells)."""
    return dataset_info(adata).get("values") == PROFILES
