"""The one schema of predicted cells, shared by every model, baseline and the CLI.

A prediction is an AnnData with one row per (source cell, draw): ``obs`` holds the
perturbation column (the target's name), ``target``, ``source_cell``,
``source_condition``, ``draw`` and ``kind == "predicted"``; the row names are
``"<source cell>-><target>"`` (``"#<draw>"`` appended when there are several draws);
``var`` are the model's genes and ``uns['pdae_prediction']`` describes the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data.registry import PerturbationRegistry, condition_column, detect_x_kind
from ..errors import DataError

PREDICTION_KEY = "pdae_prediction"
EXTRAPOLATION_KEY = "pdae_extrapolation"

#: The most expression values (predicted cells x genes) one prediction may hold:
#: 2^30 float32 values, 4 GiB. Larger requests are refused before any work.
MAX_PREDICTED_VALUES = 2**30


def max_predicted_cells(n_genes: int) -> int:
    """How many cells one prediction over ``n_genes`` genes may return."""
    return max(1, MAX_PREDICTED_VALUES // max(1, int(n_genes)))


def check_prediction_size(n_cells: int, n_genes: int) -> None:
    """Refuse (``DataError``) a prediction of more than :func:`max_predicted_cells` cells."""
    limit = max_predicted_cells(n_genes)
    if int(n_cells) > limit:
        raise DataError(
            f"{int(n_cells):,} predicted cells x {int(n_genes):,} genes is more than one prediction may hold "
            f"(at most {limit:,} cells at this gene count, {MAX_PREDICTED_VALUES * 4 // 2**30} GiB); "
            "ask for fewer cells or predict in parts."
        )


def source_gene_order(registry: PerturbationRegistry, adata: ad.AnnData, what: str = "the dataset") -> np.ndarray | None:
    """Column indices that put ``adata``'s genes in the model's order: ``None`` when they
    already are, an index array when ``adata`` holds the model's genes permuted or among others
    (a model trained on the most variable genes of a file predicts from that file); a missing
    gene is a DataError naming a few of them (see ``registry.check_genes``)."""
    genes = list(map(str, adata.var_names))
    if genes == registry.gene_names:
        return None
    pos = {g: i for i, g in enumerate(genes)}
    if len(pos) == len(genes) and all(g in pos for g in registry.gene_names):  # permuted, or a superset
        return np.array([pos[g] for g in registry.gene_names], dtype=np.int64)
    registry.check_genes(adata, what)  # raises, naming the missing and extra genes
    raise DataError(f"{what} has duplicate gene names; call adata.var_names_make_unique().")


def _nonzero_head(adata: ad.AnnData, layer: str | None) -> bool:
    """Whether the first cells hold a nonzero value (all-zero cells are not raw counts)."""
    head = (adata.layers[layer] if layer is not None else adata.X)[:2000]
    return sp.csr_matrix(head).count_nonzero() > 0


def check_source_cells(
    registry: PerturbationRegistry, adata: ad.AnnData, what: str = "the source cells"
) -> np.ndarray | None:
    """Validate cells given to a trained model (``predict``, ``latent``, the baselines):
    the layer the model reads exists; its values are finite and non-negative (the checks
    and messages of :func:`~pdae_core.data.registry.detect_x_kind`) and, for a model of
    log-normalised expression, not raw counts; the genes are the model's, possibly
    permuted. Returns :func:`source_gene_order` (``None``: already in order)."""
    layer = registry.layer
    if layer is not None and layer not in adata.layers:
        raise DataError(f"The model reads layer {layer!r}, which is not in {what} (layers: {list(adata.layers.keys())}).")
    order = source_gene_order(registry, adata, what)
    if adata.n_obs == 0:
        return order
    try:
        kind = detect_x_kind(adata, layer)
    except DataError as e:
        raise DataError(f"{what}: {e}") from None
    if kind == "counts" and registry.x_kind != "counts" and _nonzero_head(adata, layer):
        target_sum = (registry.preprocessing or {}).get("normalize_total")
        how = (f"pdae_core.preprocess(adata, target_sum={target_sum}), as recorded with the model"
               if target_sum is not None else "normalize_total + log1p, as for the training data")
        raise DataError(
            f"{what} hold raw counts (non-negative integers), but the model was trained on log-normalised "
            f"expression; normalise them the same way first: {how}."
        )
    return order


def prediction_anndata(
    X: np.ndarray,
    source: ad.AnnData,
    registry: PerturbationRegistry,
    target: str,
    n_draws: int,
    info: Mapping[str, Any],
) -> ad.AnnData:
    """Predicted expression ``X`` ((n_draws * n_source) x genes, draw-major: all source
    cells of draw 0, then of draw 1, ...) as an AnnData in the prediction schema;
    ``info`` becomes ``uns['pdae_prediction']``."""
    n_draws = int(n_draws)
    X = np.asarray(X, dtype=np.float32)
    if X.shape != (n_draws * source.n_obs, registry.n_genes):
        raise ValueError(
            f"predicted matrix is {X.shape}; expected ({n_draws} draws x {source.n_obs} cells, {registry.n_genes} genes)"
        )
    src_names = np.tile(np.asarray(source.obs_names, dtype=str), n_draws)
    draw = np.repeat(np.arange(n_draws), source.n_obs)
    obs = pd.DataFrame(
        {
            registry.perturbation_key: target,
            "target": target,
            "source_cell": src_names,
            "source_condition": np.tile(condition_column(source, registry.perturbation_key), n_draws),
            "draw": draw,
            "kind": "predicted",
        }
    )
    key = registry.covariate_key
    if key is not None and key in source.obs.columns and key not in obs.columns:
        # a predicted cell stays in its source's context (cell type, line): whether the model
        # honours that is what identity preservation measures
        obs[key] = np.tile(source.obs[key].astype(str).to_numpy(), n_draws)
    obs.index = pd.Index(
        [f"{s}->{target}#{d}" if n_draws > 1 else f"{s}->{target}" for s, d in zip(src_names, draw)]
    ).astype(str)
    out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(registry.gene_names)))
    out.uns[PREDICTION_KEY] = dict(info)
    return out


def keep_rows(pred: ad.AnnData, rows: np.ndarray, chunk: int = 8192) -> ad.AnnData:
    """``pred`` restricted to ``rows`` (sorted, distinct), moving the kept rows to the front of its own
    matrix chunk by chunk instead of copying it: a prediction of 100,000 cells x 5,000 genes is 2 GB,
    and a subsample of it then costs no second copy. ``pred`` must not be used afterwards."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= pred.n_obs):
        raise ValueError("rows must be sorted, distinct and inside the prediction")
    X = pred.X
    if not isinstance(X, np.ndarray) or not X.flags.c_contiguous:
        return pred[rows].copy()
    for lo in range(0, len(rows), chunk):  # rows[j] >= j: a row is read before anything overwrites it
        part = rows[lo : lo + chunk]
        X[lo : lo + len(part)] = X[part]
    return ad.AnnData(X=X[: len(rows)], obs=pred.obs.iloc[rows].copy(), var=pred.var,
                      varm=dict(pred.varm.items()), uns=dict(pred.uns))


def combine_predictions(
    preds: Sequence[ad.AnnData], info: Mapping[str, Any], extrapolation: pd.DataFrame | None = None
) -> ad.AnnData:
    """Several targets' predictions in one AnnData (rows stacked); its ``uns`` holds only
    ``info`` (as ``pdae_prediction``) and the per-target ``extrapolation`` table."""
    if not preds:
        raise ValueError("no predictions to combine")
    if len(preds) > 1:
        out = ad.concat(list(preds), join="outer", merge="same")
    else:  # one target: the same matrix (no copy of cells x genes), new annotations
        p = preds[0]
        out = ad.AnnData(X=p.X, obs=p.obs.copy(), var=p.var.copy(), varm={k: v.copy() for k, v in p.varm.items()})
    out.uns = {PREDICTION_KEY: dict(info)}
    if extrapolation is not None:
        out.uns[EXTRAPOLATION_KEY] = extrapolation
    return out
