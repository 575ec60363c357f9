"""What a control label looks like, and guesses of an AnnData's set-up columns.

The one place that knows which labels mean "unperturbed":

- :data:`CONTROL_CANDIDATES`: control labels of a perturbation column, in order of
  preference (:func:`detect_control`, :func:`is_control_label`);
- :data:`CONTROL_GUIDE_TARGETS`: gRNA targets that make a guide a control
  (non-targeting) guide when a dataset is built from guide assignments
  (:func:`is_control_guide_target`).

:func:`guess_columns` ranks the obs columns that could hold perturbations and picks
the perturbation column, its control label and a covariate column;
:func:`control_candidates` orders the labels of a column control-like first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import anndata as ad
import pandas as pd

from ..errors import DataError
from .preview import preview

__all__ = [
    "CONTROL_CANDIDATES",
    "CONTROL_GUIDE_TARGETS",
    "PERTURBATION_NAME_HINTS",
    "ColumnGuess",
    "control_candidates",
    "detect_control",
    "guess_columns",
    "is_control_guide_target",
    "is_control_label",
    "is_numeric_column",
    "perturbation_like_name",
]

#: Control labels of a perturbation column, in order of preference.
CONTROL_CANDIDATES: tuple[str, ...] = (
    "control", "ctrl", "non-targeting", "non_targeting", "nontargeting", "NT", "unperturbed",
)
_CONTROL_LOWER = frozenset(c.lower() for c in CONTROL_CANDIDATES)

#: gRNA targets (lower case) that mark a guide as a control guide.
CONTROL_GUIDE_TARGETS: frozenset[str] = frozenset(
    {"non-targeting", "non_targeting", "nontargeting", "nt", "control", "ctrl", "safe-targeting"}
)

#: Words of an obs column name that suggest perturbation labels (matched against the
#: whole name and against its words, e.g. "perturbation_raw", "gRNAs", "target_gene").
PERTURBATION_NAME_HINTS: frozenset[str] = frozenset({
    "condition", "conditions", "perturbation", "perturbations", "perturb", "pert", "gene", "target", "targets",
    "target_gene", "guide", "guides", "guide_identity", "sgrna", "sgrnas", "grna", "grnas", "treatment", "drug",
    "compound", "knockdown", "knockout",
})
_COV_HINTS = ("cell_type", "celltype", "cell_line", "cellline", "cell_line_name", "covariate", "cell_type_name", "tissue")


def is_control_label(label: object) -> bool:
    """True when ``label`` (stripped, any case) is one of :data:`CONTROL_CANDIDATES`."""
    return str(label).strip().lower() in _CONTROL_LOWER


def is_control_guide_target(target: str) -> bool:
    """True when a gRNA's target (any case) is one of :data:`CONTROL_GUIDE_TARGETS`."""
    return target.lower() in CONTROL_GUIDE_TARGETS


def detect_control(conditions: Sequence[str], key: str | None = None) -> str:
    """The control label of a perturbation column: the first of :data:`CONTROL_CANDIDATES`
    present (exactly, else in another case); a DataError listing the labels when none is."""
    present = set(conditions)
    lower = {c.lower(): c for c in present}
    for cand in CONTROL_CANDIDATES:
        if cand in present:
            return cand
        if cand.lower() in lower:
            return lower[cand.lower()]
    column = "the perturbation column" if key is None else f"perturbation column {key!r}"
    raise DataError(
        f"Could not find control cells in {column}: none of the labels "
        f"{list(CONTROL_CANDIDATES)} is in it; pass control_label=... "
        f"(labels present: {preview(sorted(present), 12)})."
    )


# ---- column guesses ------------------------------------------------------------------
@dataclass
class ColumnGuess:
    """Best guesses for an AnnData's set-up, and the alternatives to offer.

    ``perturbation_key`` is None when no column qualifies (see :func:`guess_columns`);
    ``reason`` then says why, in words for the user. ``perturbation_candidates`` are the
    text columns with two or more values, qualifying ones first (numeric columns are
    never among them); ``numeric_columns`` lists the columns left out for being numeric."""

    perturbation_key: str | None
    control_label: str | None
    covariate_key: str | None
    perturbation_candidates: list[str] = field(default_factory=list)
    covariate_candidates: list[str] = field(default_factory=list)
    reason: str | None = None
    numeric_columns: list[str] = field(default_factory=list)


def is_numeric_column(s: pd.Series) -> bool:
    """True for numbers and booleans (counts, fractions, flags): never perturbation labels."""
    return pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype)


def perturbation_like_name(name: object) -> bool:
    """True when an obs column's name (any case), or one of its words, is one of
    :data:`PERTURBATION_NAME_HINTS` ("condition", "perturbation_raw", "gRNAs", "target_gene")."""
    low = str(name).strip().lower()
    if low in PERTURBATION_NAME_HINTS:
        return True
    words = [w for w in re.split(r"[^0-9a-z]+", low) if w]
    return any(w in PERTURBATION_NAME_HINTS for w in words)


def _label_columns(adata: ad.AnnData) -> list[str]:
    out = []
    for col in adata.obs.columns:
        s = adata.obs[col]
        if _is_numeric_obs(s) or not (
            isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object or pd.api.types.is_string_dtype(s)
        ):
            continue
        n = s.nunique(dropna=True)
        if 1 <= n <= max(2, adata.n_obs):
            out.append(str(col))
    return out


def _is_numeric_obs(s: pd.Series) -> bool:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return is_numeric_column(pd.Series(s.cat.categories))  # categories that are numbers
    return is_numeric_column(s)


def _numeric_columns(adata: ad.AnnData) -> list[str]:
    return [str(c) for c in adata.obs.columns if _is_numeric_obs(adata.obs[c])]


def _why_none(candidates: Sequence[str], numeric: Sequence[str], adata: ad.AnnData) -> str:
    controls = ", ".join(CONTROL_CANDIDATES[:4])
    parts = [
        "No column of this dataset looks like perturbation labels: none has a control label "
        f"({controls}, ...) or a perturbation-like name (condition, perturbation, target, guide, ...)."
    ]
    if numeric:
        parts.append(f"Numeric columns ({preview(list(numeric), 6)}) are never perturbation labels.")
    if candidates:
        shown = [f"{c} ({adata.obs[c].nunique()} values)" for c in candidates]
        parts.append(f"Text columns that could be: {preview(shown, 6)}.")
    else:
        parts.append("No text column has two or more values.")
    return " ".join(parts)


def guess_columns(adata: ad.AnnData, separator: str = "+") -> ColumnGuess:
    """Rank the obs columns that could hold perturbations and pick the best one, its
    control label and a covariate (cell type / line) column with 2-50 values.

    Only text columns (strings, categories of strings) with two or more values are
    candidates: numeric columns (counts, fractions, numeric codes) never are. A candidate
    *qualifies* when one of its labels is a control label (:func:`is_control_label`) or its
    name is perturbation-like (:func:`perturbation_like_name`); the best qualifying column
    is picked, ranked by: a control label, then a perturbation-like name, then ``A+B``
    combinations, with per-cell ids (more values than half the cells) last. When none
    qualifies nothing is picked (``perturbation_key`` None) and ``reason`` says why: a
    column such as ``batch`` with labels ``b1, b2`` is not taken for perturbations."""
    cols = _label_columns(adata)
    scored = []
    for col in cols:
        values = pd.unique(adata.obs[col].astype(str))
        n = len(values)
        if n < 2:
            continue
        has_control = any(is_control_label(v) for v in values)
        named = perturbation_like_name(col)
        score = 0.0
        score += 4.0 if has_control else 0.0
        score += 1.0 if any(separator in v for v in values) else 0.0
        score += 2.0 if named else 0.0
        score -= 3.0 if n > adata.n_obs / 2 else 0.0  # per-cell ids, barcodes
        scored.append((not (has_control or named), -score, col))
    scored.sort(key=lambda t: t[:2])  # qualifying first, then by score; ties keep the obs order
    pert_candidates = [c for _, _, c in scored]
    pert = scored[0][2] if scored and not scored[0][0] else None
    control = None
    if pert is not None:
        cands = control_candidates(adata, pert)
        control = cands[0] if cands and is_control_label(cands[0]) else None
    cov_candidates = [
        c for c in cols if c != pert and 2 <= adata.obs[c].nunique() <= 50
    ]
    cov_candidates.sort(key=lambda c: (c.lower() not in _COV_HINTS, c))
    cov = cov_candidates[0] if cov_candidates and cov_candidates[0].lower() in _COV_HINTS else None
    numeric = _numeric_columns(adata)
    reason = None if pert is not None else _why_none(pert_candidates, numeric, adata)
    return ColumnGuess(pert, control, cov, pert_candidates, cov_candidates, reason, numeric)


def control_candidates(adata: ad.AnnData, key: str) -> list[str]:
    """Labels of column ``key``: control-like names first, then by cell count."""
    if key not in adata.obs.columns:
        raise DataError(f"Column {key!r} is not in obs (columns: {list(adata.obs.columns)[:20]}).")
    counts = pd.Series(adata.obs[key].astype(str)).value_counts()
    return sorted(counts.index, key=lambda v: (not is_control_label(v), -counts[v], v))
