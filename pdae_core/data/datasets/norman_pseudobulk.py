"""Norman 2019 pseudobulk: per-perturbation log-fold-changes vs control (no cells)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ...errors import DataError
from .common import tag_dataset
from .download import RemoteFile, fetch_remote

_REACHABILITY_COMMIT = "9b7a2b195e5e573c9b8a465cce9e9786e033aaf8"

PSEUDOBULK = RemoteFile(
    "norman2019_pseudobulk.npz",
    f"https://raw.githubusercontent.com/MasalaKimchi/cell-state-reachability/{_REACHABILITY_COMMIT}"
    "/notebooks/cache/norman_effect_bundle.npz",
    "8979d2ff3ea4e110f0e48f6342d0766c90036fe9876b9de53c93a8a401ec6f12",
)

_PSEUDOBULK_KEYS = ("lfc_s", "lfc_d", "sing_labels", "doub_labels", "genes_hvg", "comp_ok")


def load_norman19_pseudobulk(data_dir: Path, download: bool) -> ad.AnnData:
    """``norman19_pseudobulk``: one row of log-fold-changes vs control per perturbation."""
    path = fetch_remote(PSEUDOBULK, data_dir, download)
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
    return tag_dataset(
        adata, "norman19_pseudobulk", "condition", "control", None, "lfc_vs_control",
        f"{PSEUDOBULK.url} (saved as {PSEUDOBULK.filename}); Norman et al. 2019 pseudobulk "
        "log-fold-change vs control (CPM + log1p), top 2,000 HVGs",
        note="One row per perturbation, X = change from control (negative values, no control row): "
             "compare effects directly; setup_anndata does not accept it as expression.",
    )
