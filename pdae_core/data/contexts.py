"""Contexts (cell types, cell lines, donors): the covariate column next to the
perturbation column, and hold-outs of a (perturbation, context) pair.

A *context* is the value of ``registry.covariate_key`` in a cell's ``obs``. Context
names are never parsed, so ``CD14+Mono`` is one context even though ``+`` joins
perturbations in a condition name.

A hold-out item is either a condition (all its cells leave training) or a pair: the
cells of one condition in one context. Pairs are written ``"stimulated@CD4T"`` on the
command line, or given as a tuple ``("stimulated", "CD4T")`` from Python (which also
works when a name contains ``@``). A string that is a condition name present in the
data always means that condition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np

from ..errors import DataError
from .preview import preview
from .registry import PerturbationRegistry, condition_column, label_column

#: written between a condition and a context in a hold-out pair ("stimulated@CD4T")
PAIR_SEPARATOR = "@"


@dataclass(frozen=True)
class HoldoutItem:
    """One thing held out of training: a condition, in every context or in one."""

    condition: str
    context: str | None = None

    @property
    def name(self) -> str:
        return self.condition if self.context is None else f"{self.condition}{PAIR_SEPARATOR}{self.context}"


def context_values(adata: ad.AnnData, key: str) -> np.ndarray:
    """The context column as an array of stripped strings, with clear errors."""
    return label_column(adata, key, "Context", "label them or drop them")


def context_categories(adata: ad.AnnData, key: str) -> list[str]:
    """The contexts present in ``adata`` (sorted); the first is the reference level."""
    return sorted({str(v) for v in context_values(adata, key)})


def context_onehot(adata: ad.AnnData, key: str, categories: Sequence[str], what: str = "This model",
                   drop_reference: bool = False) -> np.ndarray:
    """(n_cells, C) one-hot of each cell's context over ``categories``; with
    ``drop_reference`` the first category's column is left out (C - 1 columns), so a
    cell of the reference context has a zero block. Unknown contexts are an error."""
    vals = context_values(adata, key)
    cats = list(categories)
    lookup = {c: i for i, c in enumerate(cats)}
    idx = np.array([lookup.get(v, -1) for v in vals], dtype=np.int64)
    if (idx < 0).any():
        unknown = sorted(set(vals[idx < 0].tolist()))
        raise DataError(
            f"{key!r} value(s) {preview(unknown, 8)} are not among the {len(cats)} contexts {what} was trained on "
            f"({preview(cats, 8)}): it can only place cells in contexts it has seen."
        )
    onehot = np.zeros((len(vals), len(cats)), dtype=np.float32)
    onehot[np.arange(len(vals)), idx] = 1.0
    return onehot[:, 1:] if drop_reference else onehot


def parse_holdout(holdout: Any, adata: ad.AnnData, registry: PerturbationRegistry) -> list[HoldoutItem]:
    """Hold-out items from strings (``"A+B"``, ``"stimulated@CD4T"``) or (condition, context)
    tuples. Every item must select at least one cell; errors name what is missing."""
    conds = condition_column(adata, registry.perturbation_key)
    present = set(conds)
    key = registry.covariate_key
    ctx = context_values(adata, key) if key is not None else None
    contexts = set(ctx) if ctx is not None else set()
    if isinstance(holdout, str) or (  # one item: a name, or one (condition, context) tuple
        isinstance(holdout, tuple) and len(holdout) == 2 and all(isinstance(h, str) for h in holdout)
        and holdout[1].strip() in contexts and holdout[0].strip() in present
    ):
        holdout = [holdout]
    items: list[HoldoutItem] = []
    for raw in holdout:
        if isinstance(raw, (tuple, list)):
            if len(raw) != 2:
                raise DataError(f"Hold-out item {raw!r}: a pair is (condition, context), two names.")
            item = HoldoutItem(str(raw[0]).strip(), str(raw[1]).strip())
        else:
            text = str(raw).strip()
            item = HoldoutItem(text) if text in present else _split_pair(text, present, contexts, key)
        if item.condition not in present:
            raise DataError(f"Condition(s) {item.condition!r} have zero cells in column {registry.perturbation_key!r}.")
        if item.context is not None:
            if key is None:
                raise DataError(
                    f"Hold-out {item.name!r} names a context, but no context column is set: choose one "
                    "(covariate_key / --covariate-key, e.g. cell_type)."
                )
            if item.context not in contexts:
                raise DataError(
                    f"Context {item.context!r} has no cells in column {key!r} (contexts: {preview(sorted(contexts), 10)})."
                )
            if not np.any((conds == item.condition) & (ctx == item.context)):
                raise DataError(f"{item.condition!r} has no cells in context {item.context!r} (column {key!r}).")
        if item not in items:
            items.append(item)
    return items


def _split_pair(text: str, present: set[str], contexts: set[str], key: str | None) -> HoldoutItem:
    """``"condition@context"``: the split at an ``@`` whose left side is a condition and right
    side a context of the data (tried from the right)."""
    if PAIR_SEPARATOR in text and key is not None:
        pos = [i for i, ch in enumerate(text) if ch == PAIR_SEPARATOR]
        for i in reversed(pos):
            cond, ctx = text[:i].strip(), text[i + 1:].strip()
            if cond in present and ctx in contexts:
                return HoldoutItem(cond, ctx)
    return HoldoutItem(text)  # reported as a condition with zero cells by the caller


def training_mask(adata: ad.AnnData, registry: PerturbationRegistry, holdout: Any) -> tuple[np.ndarray, list[str]]:
    """The cells that stay in training after ``holdout`` and the hold-out items' names."""
    items = parse_holdout(holdout, adata, registry) if _non_empty(holdout) else []
    conds = condition_column(adata, registry.perturbation_key)
    keep = np.ones(adata.n_obs, dtype=bool)
    ctx = context_values(adata, registry.covariate_key) if registry.covariate_key is not None else None
    for it in items:
        sel = conds == it.condition
        if it.context is not None:
            sel &= ctx == it.context
        keep &= ~sel
    return keep, [it.name for it in items]


def _non_empty(holdout: Any) -> bool:
    if holdout is None:
        return False
    if isinstance(holdout, str):
        return bool(holdout.strip())
    return len(holdout) > 0


def group_keys(adata: ad.AnnData, registry: PerturbationRegistry) -> np.ndarray:
    """Per cell, what training treats as one distribution: its condition, or the
    (condition, context) pair ``"condition@context"`` when a context column is set."""
    conds = condition_column(adata, registry.perturbation_key)
    if registry.covariate_key is None:
        return conds
    ctx = context_values(adata, registry.covariate_key)
    return np.char.add(np.char.add(conds.astype(str), PAIR_SEPARATOR), ctx.astype(str))


def measured_pairs(adata: ad.AnnData, registry: PerturbationRegistry) -> list[list[str]]:
    """Sorted (condition, context) pairs with cells in ``adata`` (empty without a context column)."""
    if registry.covariate_key is None:
        return []
    conds = condition_column(adata, registry.perturbation_key)
    ctx = context_values(adata, registry.covariate_key)
    return [list(p) for p in sorted({(str(a), str(b)) for a, b in zip(conds, ctx)})]
