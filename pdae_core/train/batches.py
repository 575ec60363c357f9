"""Which cells each step sees: the stratified validation split and the stratified
mini-batches of an epoch (every condition present in every batch)."""

from __future__ import annotations

import numpy as np


def _group_members(groups: np.ndarray) -> list[np.ndarray]:
    """Indices of the cells of each group, groups in sorted order, cells in increasing
    order (what ``[np.flatnonzero(groups == g) for g in np.unique(groups)]`` gives, in
    O(n log n) rather than O(n x groups))."""
    groups = np.asarray(groups)
    if groups.size == 0:
        return []
    order = np.argsort(groups, kind="stable")
    return np.split(order, np.flatnonzero(groups[order][1:] != groups[order][:-1]) + 1)


def split_cells(
    groups: np.ndarray, val_fraction: float, rng: np.random.Generator, max_val: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validation split by cells, stratified by condition: each condition with at least
    4 cells gives ``round(val_fraction * n)`` (>= 1, at most ``max_val``) of them to validation."""
    train, val = [], []
    for idx in _group_members(groups):
        idx = idx[rng.permutation(len(idx))]
        n_val = max(1, int(round(val_fraction * len(idx)))) if (val_fraction > 0 and len(idx) >= 4) else 0
        if max_val is not None:
            n_val = min(n_val, max_val)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def stratified_batches(
    groups: np.ndarray, batch_size: int, cells_per_condition: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of mini-batches in which every condition present has (up to)
    ``cells_per_condition`` cells: each condition's cells are shuffled and cut into
    chunks, and the shuffled chunks are packed into batches. Every cell appears once."""
    per_group = []
    for idx in _group_members(groups):
        idx = idx[rng.permutation(len(idx))]
        per_group.append([idx[i : i + cells_per_condition] for i in range(0, len(idx), cells_per_condition)])
    # round-robin over conditions (random order each round) so that consecutive
    # chunks, and hence each batch, come from different conditions
    chunks: list[np.ndarray] = []
    for r in range(max(len(c) for c in per_group)):
        for k in rng.permutation(len(per_group)):
            if r < len(per_group[k]):
                chunks.append(per_group[k][r])
    order = range(len(chunks))
    batches, cur, n = [], [], 0
    for k in order:
        cur.append(chunks[k])
        n += len(chunks[k])
        if n >= batch_size:
            batches.append(np.concatenate(cur))
            cur, n = [], 0
    if cur:
        last = np.concatenate(cur)
        if len(last) >= 3 or not batches:
            batches.append(last)
        else:
            batches[-1] = np.concatenate([batches[-1], last])
    return batches
