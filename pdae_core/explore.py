"""Interactive exploration: the science behind the dashboard, with no UI code.

(Guessing the set-up columns of an unfamiliar AnnData is in :mod:`pdae_core.data.columns`.)

- :func:`summarize_dataset`: cells, genes, counts vs log-normalised, conditions
  with their cell counts, singles vs combinations, and which combinations have
  all their parts measured alone.
- :func:`what_if`: compose a weighted combination of seen perturbations, predict
  it from chosen source cells, attach the extrapolation verdict, the observed
  cells when the combination was measured, the gene-space additive baseline and a
  ranked table of changed genes.
- :func:`verdict_in_words`: the extrapolation check as a biologist reads it (technical detail apart).
- :class:`ReferenceEmbedding`: one UMAP of the dataset's cells (PCA of log1p
  expression) into which predicted cells are projected, so control, predicted and
  observed cells share one embedding.
- :func:`latent_embedding`, :func:`perturbation_projection`,
  :func:`shift_similarity`: the learned latent space and perturbation embedding.
- :func:`pair_ranking`, :func:`composed_pair`: the pair screen ranked with each pair's
  call in words and whether it was measured; which pair a what-if target is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .data.contexts import context_values
from .data.registry import (
    PerturbationRegistry,
    condition_column,
    detect_x_kind,
    expression_matrix,
)
from .errors import DataError
from .eval.pair_screen import pair_call, rank_pairs, screen_singles
from .models.base import ExtrapolationCheck, PerturbationModel
from .models.baselines import AdditiveBaseline
from .plot.style import ADDITIVE, CONTROL, OBSERVED, OTHER_CELLS, PREDICTED
from .reference import ReferenceEmbedding, pca, umap_2d

__all__ = [
    "DatasetSummary",
    "summarize_dataset",
    "fit_additive",
    "WhatIf",
    "what_if",
    "top_changed_genes",
    "ReferenceEmbedding",
    "what_if_embedding",
    "Verdict",
    "measured_alone",
    "verdict_in_words",
    "matching_condition",
    "gene_values",
    "find_gene",
    "embedding_gene_values",
    "OTHER_CELLS",
    "latent_embedding",
    "umap_2d",
    "perturbation_projection",
    "shift_similarity",
    "pair_ranking",
    "pair_status",
    "composed_pair",
]


# ---- dataset summary ------------------------------------------------------------------
@dataclass
class DatasetSummary:
    """What is in a dataset, as the Data page shows it."""

    n_cells: int
    n_genes: int
    x_kind: str  # "log1p" | "counts"
    n_perturbations: int
    conditions: pd.DataFrame  # condition, n_cells, kind, n_parts, parts_measured
    control_label: str

    @property
    def n_singles(self) -> int:
        return int((self.conditions["kind"] == "single").sum())

    @property
    def n_combinations(self) -> int:
        return int((self.conditions["kind"] == "combination").sum())

    @property
    def combinations_with_parts(self) -> list[str]:
        c = self.conditions
        return c.loc[(c["kind"] == "combination") & c["parts_measured"], "condition"].tolist()


def summarize_dataset(adata: ad.AnnData, registry: PerturbationRegistry) -> DatasetSummary:
    """Summarise ``adata`` under ``registry`` (see :class:`DatasetSummary`)."""
    counts = pd.Series(condition_column(adata, registry.perturbation_key)).value_counts()
    singles = {c for c in counts.index if len(registry.parse(c)) == 1}
    measured_alone = {registry.parse(c)[0] for c in singles}
    rows = []
    for cond, n in counts.items():
        parts = registry.parse(cond)
        kind = "control" if not parts else "single" if len(parts) == 1 else "combination"
        rows.append({
            "condition": cond,
            "n_cells": int(n),
            "kind": kind,
            "n_parts": len(parts),
            "parts_measured": bool(parts) and all(p in measured_alone for p in parts),
        })
    table = pd.DataFrame(rows, columns=["condition", "n_cells", "kind", "n_parts", "parts_measured"])
    return DatasetSummary(
        n_cells=int(adata.n_obs),
        n_genes=int(adata.n_vars),
        x_kind=detect_x_kind(adata, registry.layer),
        n_perturbations=registry.n_perturbations,
        conditions=table,
        control_label=registry.control_label,
    )


# ---- what-if --------------------------------------------------------------------------
def fit_additive(adata: ad.AnnData, model: PerturbationModel) -> AdditiveBaseline:
    """The gene-space additive baseline fitted on the same cells as ``model``
    (everything but its held-out conditions)."""
    holdout = [h for h in model.holdout if h in set(condition_column(adata, model.registry.perturbation_key))]
    return AdditiveBaseline().fit(adata, model.registry, holdout)


@dataclass
class WhatIf:
    """A composed prediction and everything shown beside it."""

    target: str
    label: np.ndarray
    check: ExtrapolationCheck
    predicted: ad.AnnData
    control: ad.AnnData
    observed: ad.AnnData | None
    additive: ad.AnnData | None
    additive_note: str | None
    top_genes: pd.DataFrame


def _measured_mask(adata: ad.AnnData, registry: PerturbationRegistry, label: np.ndarray,
                   conds: np.ndarray | None = None) -> np.ndarray:
    col = adata.obs[registry.perturbation_key]
    if registry.dose_key is None and isinstance(col.dtype, pd.CategoricalDtype) and not col.isna().any():
        codes = col.cat.codes.to_numpy()  # the few categories present, not every cell's value
        present = np.flatnonzero(np.bincount(codes, minlength=len(col.cat.categories)))
        cats = col.cat.categories
        return np.isin(codes, [i for i in present if np.allclose(registry.label_vector(str(cats[i]).strip()), label,
                                                                   atol=1e-6)])
    if conds is None:
        conds = condition_column(adata, registry.perturbation_key)
    if registry.dose_key is None:
        hits = [c for c in pd.unique(conds) if np.allclose(registry.label_vector(c), label, atol=1e-6)]
        return pd.Series(conds, copy=False).isin(hits).to_numpy()  # hashing: fast on 10^5 strings
    L = registry.label_matrix(adata)
    return np.all(np.abs(L - label[None]) < 1e-6, axis=1)


def _subsample(n: int, k: int | None, seed: int) -> np.ndarray:
    if k is None or n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def what_if(
    model: PerturbationModel,
    adata: ad.AnnData,
    weights: Mapping[str, float],
    source_condition: str | None = None,
    max_source_cells: int | None = 500,
    seed: int = 0,
    additive: AdditiveBaseline | None = None,
    n_cells: int | None = None,
    source_context: str | None = None,
) -> WhatIf:
    """Predict the combination ``{perturbation: weight}`` from the cells of
    ``source_condition`` (control by default): at most ``max_source_cells`` of them;
    with ``n_cells``, exactly that many predicted cells (each source cell decoded with
    fresh noise as often as needed; ``obs['draw']`` numbers the draws).

    ``weights`` are doses on the label vector (1 = as measured); zero weights are
    dropped. The result holds the extrapolation check, the predicted cells, the
    control cells, the observed cells when ``adata`` measured this exact label, the
    additive baseline (``additive``, fitted by :func:`fit_additive`, or ``None`` and
    a note when it cannot predict this target) and :func:`top_changed_genes`.

    With ``source_context`` (a value of the registry's context column, e.g. one cell type),
    the source, control and observed cells are those of that context only, and the
    verdict says whether the target was measured there.
    """
    reg = model.registry
    w = {str(k): float(v) for k, v in weights.items() if float(v) != 0.0}
    if not w:
        raise DataError("Choose at least one perturbation with a non-zero weight.")
    label = reg.label_vector(w)
    name = reg.condition_name(label)
    conds = condition_column(adata, reg.perturbation_key)
    src_label = reg.control_label if source_condition is None else str(source_condition)
    in_context = np.ones(adata.n_obs, dtype=bool)
    if source_context is not None:
        if reg.covariate_key is None:
            raise DataError("A source context needs a context column (covariate_key) in the data set-up.")
        in_context = context_values(adata, reg.covariate_key) == str(source_context)
        if not in_context.any():
            raise DataError(f"No cells of context {source_context!r} in column {reg.covariate_key!r}.")
    src_idx = np.flatnonzero((conds == src_label) & in_context)
    if len(src_idx) == 0:
        where = "" if source_context is None else f" in context {source_context!r}"
        raise DataError(f"No cells of source condition {src_label!r}{where} in column {reg.perturbation_key!r}.")
    source = adata[src_idx[_subsample(len(src_idx), max_source_cells, seed)]]
    if n_cells is not None and int(n_cells) < 1:
        raise DataError(f"n_cells must be >= 1, got {n_cells}.")
    draws = 1 if n_cells is None else max(1, -(-int(n_cells) // source.n_obs))
    predicted = model.predict(source, w, seed=seed, n_draws=draws)
    if n_cells is not None and predicted.n_obs > int(n_cells):
        predicted = predicted[: int(n_cells)].copy()
    ctrl_idx = np.flatnonzero((conds == reg.control_label) & in_context)
    if len(ctrl_idx) == 0:
        ctrl_idx = np.flatnonzero(conds == reg.control_label)
    control = adata[ctrl_idx[_subsample(len(ctrl_idx), max_source_cells, seed)]]
    mask = _measured_mask(adata, reg, label, conds) & in_context
    observed = adata[mask] if mask.any() else None
    add_pred, note = None, None
    if additive is not None:
        try:
            add_pred = additive.predict(source, w, seed=seed)
        except DataError as e:
            note = str(e)
    genes = list(reg.gene_names)
    table = top_changed_genes(
        reg.expression(control),
        np.asarray(predicted.X),
        None if observed is None else reg.expression(observed),
        None if add_pred is None else np.asarray(add_pred.X),
        genes,
    )
    contexts = None
    if reg.covariate_key is not None and reg.covariate_key in source.obs.columns:
        contexts = sorted(set(context_values(source, reg.covariate_key).tolist()))
    check = model.extrapolation_check(w, context=contexts)
    return WhatIf(name, label, check, predicted, control, observed, add_pred, note, table)


def top_changed_genes(
    control: np.ndarray,
    predicted: np.ndarray,
    observed: np.ndarray | None,
    additive: np.ndarray | None,
    genes: Sequence[str],
    n: int | None = None,
) -> pd.DataFrame:
    """Genes ranked by the absolute predicted change of the mean from control.

    Columns: ``gene``, ``control_mean``, ``predicted_mean``, ``predicted_delta``,
    ``observed_delta`` and ``additive_delta`` (NaN where not available), ``rank``.
    """
    c = np.asarray(control, dtype=np.float64).mean(0)
    p = np.asarray(predicted, dtype=np.float64).mean(0)
    nan = np.full_like(c, np.nan)
    o = nan if observed is None else np.asarray(observed, dtype=np.float64).mean(0) - c
    a = nan if additive is None else np.asarray(additive, dtype=np.float64).mean(0) - c
    if not (len(c) == len(p) == len(genes)):
        raise ValueError(f"control ({len(c)}), predicted ({len(p)}) and genes ({len(genes)}) differ in length.")
    df = pd.DataFrame({
        "gene": list(map(str, genes)),
        "control_mean": c,
        "predicted_mean": p,
        "predicted_delta": p - c,
        "observed_delta": o,
        "additive_delta": a,
    })
    df = df.iloc[np.argsort(-np.abs(df["predicted_delta"].to_numpy()), kind="stable")].reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df if n is None else df.head(n)


# ---- the extrapolation verdict in words -------------------------------------------------
@dataclass
class Verdict:
    """What a biologist reads first about a what-if target: ``level`` (``info``: measured and
    used in training; ``success``: composed from what was measured; ``warning``: a dose beyond
    the measured ones; ``error``: not supported), a plain ``headline`` and the technical
    ``details`` (span, rank, residual, dose ranges) for those who want them."""

    level: str
    headline: str
    details: list[str]
    parts: list[str]  # the perturbations composed (non-zero doses)

    def markdown(self, target: str) -> str:
        """The line to show: a single perturbation's headline names it (in bold); a combination's
        headline names its parts, so the target comes first, in bold, once."""
        if len(self.parts) == 1 and self.headline.startswith(self.parts[0] + " "):
            return f"**{self.parts[0]}**{self.headline[len(self.parts[0]):]}"
        return f"**{target}**: {self.headline}"


def measured_alone(model: PerturbationModel) -> list[str]:
    """Perturbations the model was trained on alone (a training label with one non-zero entry, any dose)."""
    L = np.asarray(model.train_labels)
    single = L[(np.abs(L) > 0).sum(1) == 1] if L.size else L
    hit = (np.abs(single) > 0).any(0) if single.size else np.zeros(len(model.registry.perturbations), bool)
    return [p for p, h in zip(model.registry.perturbations, hit) if h]


def _names(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _was(names: Sequence[str]) -> str:
    return "was" if len(names) == 1 else "were"


def verdict_in_words(
    check: ExtrapolationCheck, weights: Mapping[str, float], alone: Sequence[str], held_out: bool = False
) -> Verdict:
    """:class:`Verdict` of a what-if: ``check`` is the model's extrapolation check of the
    target ``{perturbation: dose}`` (``weights``), ``alone`` the perturbations measured alone
    in training (:func:`measured_alone`), ``held_out`` whether the target was measured but
    held out of training (then its observed cells are a true test)."""
    doses = {str(p): float(w) for p, w in weights.items() if float(w) != 0.0}
    parts, alone_set = list(doses), set(alone)
    not_alone = [p for p in parts if p not in alone_set and p not in check.unseen_perturbations]
    beyond = [
        f"{p} at dose {doses[p]:g} is beyond anything measured (measured doses {lo:g} to {hi:g}, control "
        "counting as 0): treat with caution."
        for p, (lo, hi) in check.training_dose_ranges.items() if p in doses
    ]
    if not check.in_span:
        level = "error"
        if check.unseen_perturbations:
            u = check.unseen_perturbations
            first = (f"{_names(u)} {_was(u)} never measured, alone or in a combination, so the model knows "
                     f"nothing about {'its effect' if len(u) == 1 else 'their effects'}: this prediction is not "
                     "supported.")
        elif not_alone:
            first = (f"{_names(not_alone)} {_was(not_alone)} never measured alone, and the measured "
                     "combinations cannot separate "
                     f"{'its effect' if len(not_alone) == 1 else 'their effects'}: this prediction is not supported.")
        else:
            first = "This combination cannot be built from the measured conditions: the prediction is not supported."
        lines = [first, *beyond]
    elif check.measured_in_training and not beyond:
        level = "info"
        at = "" if len(parts) != 1 or doses[parts[0]] == 1.0 else f" at dose {doses[parts[0]]:g}"
        what = (f"{parts[0]}{at} was measured alone" if len(parts) == 1
                else f"{_names(parts)} were measured together")
        lines = [f"{what} and used in training: the model reproduces cells it has seen, a check of its fit "
                 "rather than a prediction."]
    else:
        level = "warning" if beyond else "success"
        if not not_alone and beyond:  # the dose sentence already named the part(s) beyond
            ok = "" if len(parts) == 1 else ("Each part was measured alone, so the combination itself is one the "
                                             "model is built for.")
        elif not not_alone:
            who = (f"{parts[0]} was measured alone" if len(parts) == 1 else
                   f"Both {_names(parts)} were measured alone" if len(parts) == 2 else
                   f"{_names(parts)} were each measured alone")
            how = f"scale its effect to dose {doses[parts[0]]:g}" if len(parts) == 1 else "combine them"
            ok = f"{who}, so the model can {how}: this is the kind of prediction it is built for."
        else:
            ok = (f"{_names(not_alone)} {_was(not_alone)} never measured alone, but the combinations measured "
                  "pin down " + ("its effect" if len(not_alone) == 1 else "their effects")
                  + ", so the model can compose this target from them.")
        lines = [*beyond, ok] if ok else beyond
    if check.context_note and not check.measured_in_training:
        # measured, but not in the source cells' context: that is what the reader needs to know first
        order = ["info", "success", "warning", "error"]
        level = max(level, check.context_level, key=order.index)
        lines = [check.context_note, *beyond]
    if held_out and not check.measured_in_training:
        lines.append("It was held out during training, so the observed cells below are a true test.")
    details = [
        check.message,
        f"Relative residual of the target against the training labels: {check.residual:.2g} (0 = in their span); "
        f"rank of the training labels {check.rank_train}, {check.rank_with_target} with the target.",
    ]
    return Verdict(level, " ".join(lines), details, parts)


def matching_condition(registry: PerturbationRegistry, weights: Mapping[str, float],
                       conditions: Sequence[str]) -> str | None:
    """The first of ``conditions`` whose label vector is the composed ``{perturbation: dose}``
    (None when none is, or nothing is composed)."""
    w = {str(k): float(v) for k, v in weights.items() if float(v) != 0.0}
    if not w:
        return None
    label = registry.label_vector(w)
    for c in conditions:
        try:
            if np.allclose(registry.label_vector(c), label, atol=1e-6):
                return c
        except (DataError, ValueError, KeyError):
            continue
    return None


# ---- embeddings -----------------------------------------------------------------------
def latent_embedding(model: PerturbationModel, adata: ad.AnnData, which: str = "z_base") -> np.ndarray:
    """Per-cell latent codes: ``z_base`` (perturbation removed) or ``z`` (= z_base + W l,
    the encoded cell with its own perturbation's shift)."""
    if which not in ("z_base", "z"):
        raise ValueError(f"which must be 'z_base' or 'z', got {which!r}.")
    zb = model.latent(adata)
    if which == "z_base":
        return zb
    if not model.additive_latent:
        raise DataError(f"{model.model_type}: its perturbation embedding is not a shift of latent(), so z is undefined.")
    W = model.perturbation_embedding().to_numpy()  # (K, latent)
    return zb + model.registry.label_matrix(adata) @ W


def perturbation_projection(W: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA of the perturbation shifts (rows of ``W``): coordinates (K, 2) and the
    share of variance each axis explains."""
    scores, _, _, ratio = pca(W.to_numpy(dtype=np.float64), 2)
    return scores, ratio


def shift_similarity(W: pd.DataFrame, cluster: bool = True) -> pd.DataFrame:
    """Cosine similarity between perturbation shifts, rows/columns ordered by
    average-linkage clustering (on 1 - cosine) when ``cluster``. Zero shifts get
    similarity 0 to everything else."""
    M = W.to_numpy(dtype=np.float64)
    norms = np.linalg.norm(M, axis=1)
    U = M / np.where(norms > 0, norms, 1.0)[:, None]
    S = np.clip(U @ U.T, -1.0, 1.0)
    np.fill_diagonal(S, 1.0)
    order = np.arange(len(M))
    if cluster and len(M) > 2:
        from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
        from scipy.spatial.distance import squareform

        D = squareform(np.clip(1.0 - S, 0.0, 2.0), checks=False)
        Z = linkage(D, method="average")
        order = leaves_list(optimal_leaf_ordering(Z, D))
    names = [W.index[i] for i in order]
    return pd.DataFrame(S[np.ix_(order, order)], index=names, columns=names)




def what_if_embedding(
    reference: ReferenceEmbedding, result: WhatIf, include_additive: bool = False
) -> tuple[np.ndarray, list[str], list[str]]:
    """Coordinates, group and hover text of every point of the what-if UMAP: the
    dataset's other cells (faint), its control cells, the observed cells of the
    target (when measured), the predicted cells and optionally the additive
    baseline's cells, all in ``reference``'s embedding. Groups are named as in
    :mod:`pdae_core.plot.cells` (``control``, ``observed``, ``predicted``,
    ``additive (gene space)``) plus ``other cells``."""
    ref_names = pd.Index(reference.obs_names)
    shown = set(map(str, result.control.obs_names))
    if result.observed is not None:
        shown |= set(map(str, result.observed.obs_names))
    other = ~ref_names.isin(list(shown))
    coords = [reference.coords[other]]
    groups = [OTHER_CELLS] * int(other.sum())
    hover = [f"{c} (measured)" for c in reference.conditions[other]]

    def add(kind: str, data: ad.AnnData, text: Sequence[str], embedded: bool) -> None:
        xy = reference.coords_of(data.obs_names) if embedded else None
        if xy is None or len(xy) != data.n_obs:  # not all in the reference sample: place them
            # dataset cells from the reference's layer (as it was fitted); predictions hold it in X
            xy = reference.transform(expression_matrix(data, reference.layer) if embedded else _dense(data.X))
        coords.append(xy)
        groups.extend([kind] * data.n_obs)
        hover.extend(text)

    add(CONTROL, result.control, [f"control cell {n}" for n in result.control.obs_names], True)
    if result.observed is not None:
        add(OBSERVED, result.observed, [f"observed {result.target}: cell {n}" for n in result.observed.obs_names], True)
    add(PREDICTED, result.predicted, [f"predicted {result.target} from cell {s}" for s in _sources(result.predicted)],
        False)
    if include_additive and result.additive is not None:  # its own cells: not as many as predicted when redrawn
        add(ADDITIVE, result.additive, [f"additive {result.target} from cell {s}" for s in _sources(result.additive)],
            False)
    return np.concatenate(coords).astype(np.float32), groups, hover


def _sources(pred: ad.AnnData) -> list[str]:
    """Per predicted cell, the source cell it was decoded from (its own name when not recorded)."""
    col = pred.obs["source_cell"] if "source_cell" in pred.obs.columns else pred.obs_names
    return [str(s) for s in col]


def _dense(X: Any) -> np.ndarray:
    return np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)


def gene_values(result: WhatIf, genes: Sequence[str], registry: PerturbationRegistry) -> dict[str, np.ndarray]:
    """Expression of ``genes`` in each group of a what-if (control, predicted,
    observed and additive where present), for :func:`pdae_core.plot.cells.gene_violins`."""
    pos = pd.Index(registry.gene_names).get_indexer(list(genes))
    if (pos < 0).any():
        missing = [g for g, p in zip(genes, pos) if p < 0]
        raise DataError(f"Gene(s) {missing} are not among the model's {registry.n_genes} genes.")
    out = {CONTROL: registry.expression(result.control)[:, pos], PREDICTED: _dense(result.predicted.X)[:, pos]}
    if result.observed is not None:
        out[OBSERVED] = registry.expression(result.observed)[:, pos]
    if result.additive is not None:
        out[ADDITIVE] = _dense(result.additive.X)[:, pos]
    return out


def find_gene(registry: PerturbationRegistry, query: str) -> tuple[str | None, str]:
    """The modelled gene a user typed (exact, else case-insensitive), and a message: empty when
    found, else why not, with close names (``"GATA1 is not among the 500 genes of this
    dataset; close: GATA2"``)."""
    import difflib

    q = str(query).strip()
    names = list(registry.gene_names)
    if q in set(names):
        return q, ""
    by_lower = {g.lower(): g for g in names}
    if q.lower() in by_lower:
        return by_lower[q.lower()], ""
    close = difflib.get_close_matches(q.upper(), [g.upper() for g in names], n=3, cutoff=0.75)
    hint = f"; close: {', '.join(by_lower[c.lower()] for c in close)}" if close else ""
    return None, f"{q} is not among the {len(names):,} genes of this dataset{hint}."


def embedding_gene_values(reference: ReferenceEmbedding, adata: ad.AnnData, result: WhatIf | None,
                          groups: Sequence[str], gene: str, registry: PerturbationRegistry) -> np.ndarray:
    """One value of ``gene`` per point of :func:`what_if_embedding` (same order): the dataset's
    cells from their expression (other cells as the map drew them), predicted and additive cells
    from the prediction."""
    j = registry.gene_names.index(gene)
    g = np.asarray(groups)
    out = np.full(len(g), np.nan)
    pos = pd.Index(list(map(str, adata.obs_names)))
    other = g == OTHER_CELLS
    if other.any():
        shown: set[str] = set()
        if result is not None:
            shown = set(map(str, result.control.obs_names))
            if result.observed is not None:
                shown |= set(map(str, result.observed.obs_names))
        names = [n for n in reference.obs_names if n not in shown]
        out[other] = _column(adata, pos.get_indexer(names), j, registry)
    if result is not None:
        for kind, data in ((CONTROL, result.control), (OBSERVED, result.observed)):
            if data is not None and (g == kind).any():
                out[g == kind] = _column(adata, pos.get_indexer(list(map(str, data.obs_names))), j, registry)
        out[g == PREDICTED] = _dense(result.predicted.X)[:, j]
        if result.additive is not None and (g == ADDITIVE).any():
            out[g == ADDITIVE] = _dense(result.additive.X)[:, j]
    return out


def _column(adata: ad.AnnData, rows: np.ndarray, j: int, registry: PerturbationRegistry) -> np.ndarray:
    if len(rows) == 0:
        return np.empty(0)
    return registry.expression(adata[rows, [j]])[:, 0].astype(np.float64)


# ---- pair screen ----------------------------------------------------------------------
def pair_status(measured: bool, held_out: bool, in_training: bool) -> str:
    """Whether a pair was measured, in words: "held out" (measured, never seen in training: a true
    test), "in training", "measured" (in the data, not used by the model) or "no"."""
    return "held out" if held_out else "in training" if in_training else "measured" if measured else "no"


def pair_ranking(table: pd.DataFrame, score: str = "test_next", estimate: str = "model") -> pd.DataFrame:
    """A :func:`~pdae_core.eval.pair_screen.screen_pairs` table ranked by ``score`` (on ``estimate``,
    :func:`~pdae_core.eval.pair_screen.rank_pairs`), with each pair's interaction in a few words
    (``call``, :func:`~pdae_core.eval.pair_screen.pair_call`), whether it was measured (``status``,
    :func:`pair_status`) and the likely ranges in words (``residual_range``, ``stacked_range``, and
    ``cells_range``: what a pair measured with the screen's ``cells`` would show)."""
    out = rank_pairs(table, score, estimate)
    out["call"] = [pair_call(r.c1, r.c2, r.magnitude, r.dominance, (r.a, r.b)) for r in out.itertuples()]
    out["status"] = [pair_status(*v) for v in zip(out["measured"], out["held_out"], out["in_training"])]
    for col, lo_col, hi_col in (
            ("residual_range", "normalised_residual_lo", "normalised_residual_hi"),
            ("stacked_range", "normalised_residual_stacked_lo", "normalised_residual_stacked_hi"),
            ("cells_range", "normalised_residual_lo_cells", "normalised_residual_hi_cells")):
        if lo_col in out:  # a cross-fitted ensemble: the calibrated (or jackknife) interval, in words
            out[col] = [f"{lo:.2f} to {hi:.2f}" if np.isfinite(hi) else "too few doubles to say" if np.isfinite(lo)
                        else "" for lo, hi in zip(out[lo_col], out[hi_col])]
    return out


def composed_pair(model: PerturbationModel, weights: Mapping[str, float]) -> tuple[str, str] | None:
    """``(a, b)`` when a what-if target is a pair of two singles the model saw alone in training,
    each at dose 1 (the pairs the pair screen scores); None otherwise."""
    parts = [p for p, w in weights.items() if w != 0]
    if len(parts) != 2 or any(abs(weights[p] - 1.0) > 1e-9 for p in parts):
        return None
    singles = set(screen_singles(model))
    return (parts[0], parts[1]) if all(p in singles for p in parts) else None
