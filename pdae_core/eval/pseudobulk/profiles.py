"""Per-condition profiles for the mean-level track: :class:`ProfileSet` (changes from
control, one row per condition), :func:`profiles_from_anndata` and the k-fold split of
the doubles (:func:`double_folds`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ...data.defaults import dataset_info
from ...errors import DataError

__all__ = ["ProfileSet", "profiles_from_anndata", "double_folds", "train_conditions"]

_VALUES = ("auto", "deltas", "means")


# ---------------------------------------------------------------------------------
# data


@dataclass
class ProfileSet:
    """Per-condition changes from control.

    ``conditions[i]`` has elementary perturbations ``parts[i]`` (a tuple, in the order
    written), multi-hot label ``labels[i]`` over the sorted vocabulary
    ``perturbations`` and change from control ``deltas[i]`` (one value per gene of
    ``genes``). The control itself is not a row: its delta is 0 by definition.
    """

    conditions: list[str]
    parts: list[tuple[str, ...]]
    perturbations: list[str]
    labels: np.ndarray
    deltas: np.ndarray
    genes: list[str]
    separator: str = "+"

    @property
    def n_conditions(self) -> int:
        return len(self.conditions)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def index(self, conditions: Sequence[str]) -> np.ndarray:
        """Row positions of ``conditions`` (DataError naming any that is absent)."""
        pos = {c: i for i, c in enumerate(self.conditions)}
        missing = [c for c in conditions if c not in pos]
        if missing:
            raise DataError(f"Conditions not in the profile set: {missing[:5]}.")
        return np.array([pos[c] for c in conditions], dtype=np.int64)

    def subset(self, conditions: Sequence[str]) -> ProfileSet:
        """The rows of ``conditions``; the vocabulary and genes are kept as they are,
        so label vectors stay comparable between subsets."""
        idx = self.index(conditions)
        return ProfileSet(
            [self.conditions[i] for i in idx], [self.parts[i] for i in idx], list(self.perturbations),
            self.labels[idx], self.deltas[idx], list(self.genes), self.separator,
        )

    def singles(self) -> set[str]:
        """Perturbations measured alone."""
        return {p[0] for p in self.parts if len(p) == 1}

    def eligible_doubles(self) -> list[str]:
        """Doubles (two parts) whose two singles are both measured alone, in row order."""
        singles = self.singles()
        return [c for c, p in zip(self.conditions, self.parts) if len(p) == 2 and set(p) <= singles]


def _x_kind_tag(adata: ad.AnnData) -> str | None:
    """``uns['pdae_dataset']['values']`` as recorded by :mod:`pdae_core.data.datasets`, if any."""
    v = dataset_info(adata).get("values")
    return str(v) if v is not None else None


def _matrix(adata: ad.AnnData) -> np.ndarray:
    X = adata.X
    if X is None:
        raise DataError("The AnnData has no matrix X of profiles.")
    if sp.issparse(X):
        X = X.toarray()
    X = np.asarray(X)
    if X.ndim != 2 or not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise DataError(f"X must be a numeric conditions x genes matrix; got dtype {X.dtype}, shape {X.shape}.")
    X = X.astype(np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        rows = np.flatnonzero(bad.any(1))
        raise DataError(
            f"X contains {int(bad.sum())} NaN or infinite values (rows {list(adata.obs_names[rows[:3]])}"
            f"{' ...' if len(rows) > 3 else ''}); drop or fill those conditions first."
        )
    return X


def profiles_from_anndata(
    adata: ad.AnnData | str | os.PathLike[str],
    perturbation_key: str = "condition",
    control_label: str = "control",
    separator: str = "+",
    values: str = "auto",
) -> ProfileSet:
    """A :class:`ProfileSet` from an AnnData (or an ``.h5ad`` path) of per-condition profiles.

    One row per condition, named in ``obs[perturbation_key]``: ``control_label``, a
    single perturbation (``"A"``) or a combination (``"A+B"`` with ``separator``;
    parts equal to ``control_label`` are dropped, so ``"A+control"`` is the single A).
    ``values``:

    * ``"deltas"``: X is the change from control (e.g. log-fold-changes); a control
      row, if present, must be zero and is dropped;
    * ``"means"``: X holds raw mean profiles and a control row, which is subtracted;
    * ``"auto"`` (default): ``"means"`` if a control row is present, else
      ``"deltas"`` (the built-in ``norman19_pseudobulk``, tagged
      ``uns['pdae_dataset']['values'] == 'lfc_vs_control'``, has no control row);
      without a control row, X tagged as ``"counts"`` / ``"log1p"`` or, untagged,
      with no negative value is refused as probably means (pass ``"deltas"``).

    Raises DataError for a missing column, an unusable X (non-numeric, NaN/inf), a
    condition given twice (``"A+B"`` and ``"B+A"`` count as the same), means without a
    control row, a non-zero control row with ``values="deltas"``, or fewer than 2
    doubles.
    """
    if isinstance(adata, (str, os.PathLike)):
        from ...data.registry import read_h5ad

        adata = read_h5ad(adata)
    if not isinstance(adata, ad.AnnData):
        raise DataError(f"Expected an AnnData or a path to an .h5ad file, got {type(adata).__name__}.")
    if values not in _VALUES:
        raise DataError(f"values must be one of {_VALUES}, got {values!r}.")
    if not separator:
        raise DataError("separator must be a non-empty string.")
    if perturbation_key not in adata.obs.columns:
        raise DataError(
            f"Perturbation column {perturbation_key!r} is not in obs; available columns: "
            f"{list(adata.obs.columns)[:20]}. Pass perturbation_key=..."
        )
    col = adata.obs[perturbation_key]
    if col.isna().any():
        raise DataError(
            f"Column {perturbation_key!r} has {int(col.isna().sum())} rows with no condition name "
            f"(first: {list(adata.obs_names[col.isna().to_numpy()][:3])})."
        )
    names = col.astype(str).str.strip().tolist()
    X = _matrix(adata)

    parts: list[tuple[str, ...]] = []
    for name in names:
        ps = tuple(p.strip() for p in name.split(separator))
        if name == "" or any(p == "" for p in ps):
            raise DataError(
                f"Condition {name!r} in column {perturbation_key!r} has an empty part: write combinations "
                f"as 'A{separator}B' with separator {separator!r}."
            )
        ps = tuple(p for p in ps if p != control_label)
        if len(set(ps)) != len(ps):
            raise DataError(f"Condition {name!r} in column {perturbation_key!r} names a perturbation twice.")
        parts.append(ps)

    seen: dict[frozenset[str], str] = {}
    for name, ps in zip(names, parts):
        key = frozenset(ps)
        if key in seen:
            what = "control" if not ps else repr(name)
            raise DataError(
                f"Condition {what} appears in more than one row of column {perturbation_key!r}"
                f" ({seen[key]!r} and {name!r}): give one profile per condition (average the replicates first)."
            )
        seen[key] = name

    ctrl_rows = [i for i, ps in enumerate(parts) if not ps]
    if values == "auto" and not ctrl_rows:
        tag = _x_kind_tag(adata)
        if tag in ("counts", "log1p") or (tag is None and X.min() >= 0):
            why = f"uns['pdae_dataset']['values'] is {tag!r}" if tag else "X has no negative value"
            raise DataError(
                f"X looks like expression rather than change from control ({why}) and there is no control row "
                f"({perturbation_key!r} == {control_label!r}) to subtract: add the control's mean profile as a "
                "row, or pass values='deltas' if X really holds changes from control."
            )
    if values == "auto":
        values = "means" if ctrl_rows else "deltas"
    if values == "means":
        if not ctrl_rows:
            tag = _x_kind_tag(adata)
            hint = f" (uns['pdae_dataset']['values'] is {tag!r})" if tag else ""
            raise DataError(
                f"values='means' needs a control row ({perturbation_key!r} == {control_label!r}) to subtract, "
                f"and there is none{hint}. If X already holds changes from control, pass values='deltas'."
            )
        X = X - X[ctrl_rows[0]]
    elif ctrl_rows and np.abs(X[ctrl_rows[0]]).max() > 1e-6 * max(1.0, float(np.abs(X).max())):
        raise DataError(
            f"values='deltas' but the control row ({control_label!r}) is not zero (max |x| "
            f"{float(np.abs(X[ctrl_rows[0]]).max()):.3g}): if X holds raw means, pass values='means'."
        )

    keep = [i for i, ps in enumerate(parts) if ps]
    conditions = [names[i] for i in keep]
    parts = [parts[i] for i in keep]
    n_doubles = sum(len(p) == 2 for p in parts)
    if n_doubles < 2:
        raise DataError(
            f"Column {perturbation_key!r} has {n_doubles} double(s) (conditions written A{separator}B); the "
            "mean-level benchmark needs at least 2."
        )
    vocab = sorted({p for ps in parts for p in ps})
    pos = {p: j for j, p in enumerate(vocab)}
    labels = np.zeros((len(conditions), len(vocab)))
    for i, ps in enumerate(parts):
        labels[i, [pos[p] for p in ps]] = 1.0
    return ProfileSet(conditions, parts, vocab, labels, X[keep], [str(g) for g in adata.var_names], separator)


# ---------------------------------------------------------------------------------
# folds


def double_folds(profiles: ProfileSet, k: int = 5, seed: int = 0, require_singles: bool = True) -> list[list[str]]:
    """``k`` disjoint lists of test doubles that together cover every eligible double.

    Eligible: conditions with exactly two parts whose two singles are both in
    ``profiles`` (any two-part condition if ``require_singles`` is false). The doubles
    are shuffled with ``seed`` and dealt into folds whose sizes differ by at most one.
    A fold's training set is every other condition: all singles, the other folds'
    doubles, and doubles that lack a single (never tested, but used for training).
    """
    cands = profiles.eligible_doubles() if require_singles else [
        c for c, p in zip(profiles.conditions, profiles.parts) if len(p) == 2
    ]
    if int(k) < 2:
        raise DataError(f"k must be >= 2 folds, got {k}.")
    if len(cands) < k:
        raise DataError(
            f"{len(cands)} doubles {'with both singles measured ' if require_singles else ''}can be tested, "
            f"fewer than k={k} folds."
        )
    perm = np.random.default_rng(seed).permutation(len(cands))
    return [sorted(cands[i] for i in chunk) for chunk in np.array_split(perm, int(k))]


def train_conditions(profiles: ProfileSet, test: Sequence[str]) -> list[str]:
    """Every condition of ``profiles`` not in ``test``, in row order."""
    held = set(test)
    return [c for c in profiles.conditions if c not in held]
