"""Combination hold-out splits, with each test combination tagged by how many of its
parts were measured alone in training (GEARS' "seen 0/1/2").

All single perturbations and the control stay in training; a fraction of the
combinations goes to test. A test combination's tag is the number of its
elementary perturbations whose single condition is in the training set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import DataError
from .registry import PerturbationRegistry, condition_column


@dataclass
class CombinationSplit:
    """One split: training and test conditions, and the seen tag of each test condition."""

    seed: int
    train: list[str]
    test: list[str]
    seen: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def seen_count(condition: str, registry: PerturbationRegistry, train_conditions: Sequence[str]) -> int:
    """How many parts of ``condition`` were measured alone among ``train_conditions``."""
    singles = {c for c in train_conditions if len(registry.parse(c)) == 1}
    return sum(1 for p in set(registry.parse(condition)) if p in singles)


def combination_splits(
    adata: ad.AnnData,
    registry: PerturbationRegistry,
    test_fraction: float = 0.3,
    seeds: Sequence[int] = (0, 1, 2),
) -> list[CombinationSplit]:
    """One :class:`CombinationSplit` per seed: ``round(test_fraction * n)`` of the ``n``
    combinations (conditions with two or more parts) are held out, at least one."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    conds = pd.unique(condition_column(adata, registry.perturbation_key))
    combos = sorted(c for c in conds if len(registry.parse(c)) >= 2)
    if not combos:
        raise DataError(
            f"No combinations (conditions written A{registry.separator}B) in column "
            f"{registry.perturbation_key!r}: a combination hold-out split needs at least one."
        )
    others = sorted(c for c in conds if len(registry.parse(c)) < 2)
    n_test = min(len(combos), max(1, int(round(test_fraction * len(combos)))))
    splits = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        test = sorted(combos[i] for i in rng.choice(len(combos), size=n_test, replace=False))
        train = others + [c for c in combos if c not in set(test)]
        seen = {c: seen_count(c, registry, train) for c in test}
        splits.append(CombinationSplit(int(seed), train, test, seen))
    return splits
