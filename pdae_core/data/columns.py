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

from collections.abc import Sequence
from dataclasses import dataclass, field

import anndata as ad
import pandas as pd

from ..errors import DataError
from .preview import preview

__all__ = [
    "CONTROL_CANDIDATES",
    "CONTROL_GUIDE_TARGETS",
    "ColumnGuess",
    "control_candidates",
    "detect_control",
    "guess_columns",
    "is_control_guide_target",
    "is_control_label",
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

_PERT_HINTS = ("condition", "perturbation", "perturbations", "gene", "target", "target_gene", "guide", "guide_identity")
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
    """Best guesses for an AnnData's set-up, and the alternatives to offer."""

    perturbation_key: str | None
    control_label: str | None
    covariate_key: str | None
    perturbation_candidates: list[str] = field(default_factory=list)
    covariate_candidates: list[str] = field(default_factory=list)


def _label_columns(adata: ad.AnnData) -> list[str]:
    out = []
    for col in adata.obs.columns:
        s = adata.obs[col]
        if isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object or pd.api.types.is_string_dtype(s):
            n = s.nunique(dropna=True)
            if 1 <= n <= max(2, adata.n_obs):
                out.append(str(col))
    return out


def guess_columns(adata: ad.AnnData, separator: str = "+") -> ColumnGuess:
    """Rank the obs columns that could hold perturbations and pick the best one,
    its control label and a covariate (cell type / line) column with 2-50 values."""
    cols = _label_columns(adata)
    scored = []
    for col in cols:
        values = pd.unique(adata.obs[col].astype(str))
        n = len(values)
        if n < 2:
            continue
        score = 0.0
        score += 4.0 if any(is_control_label(v) for v in values) else 0.0
        score += 1.0 if any(separator in v for v in values) else 0.0
        score += 2.0 if col.lower() in _PERT_HINTS else 0.0
        score -= 3.0 if n > adata.n_obs / 2 else 0.0  # per-cell ids, barcodes
        scored.append((score, col))
    scored.sort(key=lambda t: -t[0])
    pert_candidates = [c for _, c in scored]
    pert = pert_candidates[0] if pert_candidates else None
    control = None
    if pert is not None:
        cands = control_candidates(adata, pert)
        control = cands[0] if cands and is_control_label(cands[0]) else None
    cov_candidates = [
        c for c in cols if c != pert and 2 <= adata.obs[c].nunique() <= 50
    ]
    cov_candidates.sort(key=lambda c: (c.lower() not in _COV_HINTS, c))
    cov = cov_candidates[0] if cov_candidates and cov_candidates[0].lower() in _COV_HINTS else None
    return ColumnGuess(pert, control, cov, pert_candidates, cov_candidates)


def control_candidates(adata: ad.AnnData, key: str) -> list[str]:
    """Labels of column ``key``: control-like names first, then by cell count."""
    if key not in adata.obs.columns:
        raise DataError(f"Column {key!r} is not in obs (columns: {list(adata.obs.columns)[:20]}).")
    counts = pd.Series(adata.obs[key].astype(str)).value_counts()
    return sorted(counts.index, key=lambda v: (not is_control_label(v), -counts[v], v))
