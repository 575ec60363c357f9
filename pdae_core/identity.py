"""Contexts on the dashboard: was a target held out in this context, does a model ignore the
context column, and does it keep its source cells' context (identity preservation)?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np

from .data.contexts import PAIR_SEPARATOR, context_values
from .data.registry import PerturbationRegistry, condition_column
from .errors import DataError
from .explore import _subsample


@dataclass
class IdentityCheck:
    """Does a model keep its source cells' context? The source condition predicted from one half of
    a context's source cells, scored (energy distance) against the other half (``distance``), next
    to the two real halves (``floor``) and to the same condition's cells of the other contexts
    (``distance_other``)."""

    context: str
    condition: str
    distance: float
    floor: float
    distance_other: float
    n_cells: int

    @property
    def preserved(self) -> bool:
        """Closer to its own context than halfway to the other contexts."""
        return self.distance - self.floor < 0.5 * (self.distance_other - self.floor)

    def in_words(self, key: str) -> str:
        word = key.replace("_", " ")
        head = (f"Predicted cells keep their {word}: " if self.preserved else
                f"**This model does not keep the {word}**: ")
        return (head + f"asked to predict {self.condition} from {self.context} cells, it gives cells at energy "
                f"distance {self.distance:.3f} from other {self.context} {self.condition} cells (two halves of "
                f"the real cells: {self.floor:.3f}) and {self.distance_other:.3f} from the {self.condition} cells "
                f"of the other {word}s.")


def identity_check(model: Any, adata: ad.AnnData, context: str, condition: str | None = None,
                   max_cells: int = 400, seed: int = 0) -> IdentityCheck:
    """:class:`IdentityCheck` of ``model`` on the cells of ``condition`` (control by default) in
    ``context`` (at most ``max_cells`` of them)."""
    from .eval.metrics import energy_distance

    reg = model.registry
    if reg.covariate_key is None:
        raise DataError("The identity check needs a context column (covariate_key).")
    cond = reg.control_label if condition is None else str(condition)
    conds = condition_column(adata, reg.perturbation_key)
    ctx = context_values(adata, reg.covariate_key)
    own = np.flatnonzero((conds == cond) & (ctx == str(context)))
    other = np.flatnonzero((conds == cond) & (ctx != str(context)))
    if len(own) < 4 or len(other) < 2:
        raise DataError(f"The identity check needs at least 4 {cond} cells in {context!r} and 2 in other contexts.")
    own = own[_subsample(len(own), max_cells, seed)]
    other = other[_subsample(len(other), max_cells, seed)]
    perm = np.random.default_rng(seed).permutation(len(own))
    a, b = own[perm[: len(own) // 2]], own[perm[len(own) // 2:]]
    pred = np.asarray(model.predict(adata[a], cond, seed=seed).X, dtype=np.float64)
    X = lambda idx: reg.expression(adata[idx]).astype(np.float64)  # noqa: E731
    return IdentityCheck(str(context), cond, energy_distance(pred, X(b)), energy_distance(X(a), X(b)),
                         energy_distance(pred, X(other)), len(own))


def held_out_here(model: Any, target: str, context: str | None = None) -> bool:
    """Whether ``target`` was held out of training: everywhere, or (with ``context``) in that
    context (a hold-out written ``target@context``)."""
    holdout = set(getattr(model, "holdout", []))
    return target in holdout or (context is not None and f"{target}{PAIR_SEPARATOR}{context}" in holdout)


def context_warning(model: Any, registry: PerturbationRegistry) -> str | None:
    """A plain sentence when ``registry`` has a context column that ``model`` ignores (None otherwise):
    such a model cannot keep the source cells' cell type or line."""
    key = registry.covariate_key
    if key is None or getattr(model, "uses_context", False):
        return None
    return (f"This model does not use the {key!r} column: predicted cells are not tied to their source's "
            f"{key.replace('_', ' ')}, so they may look like a mix of all of them.")
