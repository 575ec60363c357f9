"""The split-conformal quantile rank, shared by the calibrated intervals
(:mod:`pdae_core.eval.calibration`, :mod:`pdae_core.eval.cell_noise`) and the jackknife intervals
of the stacked estimate (:mod:`pdae_core.eval.stacking`), and the checks of the interval records
a checkpoint holds."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["conformal_rank", "record_floats", "record_levels"]


def conformal_rank(n: int, level: float) -> int | None:
    """The rank (1-based) of the split-conformal quantile at ``level`` among ``n`` calibration
    errors: ``ceil((n + 1) level)``; None when it exceeds ``n`` (the interval is infinite)."""
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be between 0 and 1 (exclusive), got {level!r}.")
    k = math.ceil((int(n) + 1) * float(level) - 1e-9)
    return k if 1 <= k <= n else None


def record_floats(v: Any, what: str, length: int | None, bad: Callable[[str], Exception]) -> np.ndarray:
    """A JSON list of non-negative numbers (``null`` for an infinite one) as an array, ``length``
    long when given; anything else raises ``bad(<what is wrong>)``. Reads the interval records of
    a checkpoint (:mod:`pdae_core.eval.calibration`, :mod:`pdae_core.eval.cell_noise`)."""
    if not isinstance(v, list) or (length is not None and len(v) != length):
        raise bad(f"{what} must be a list" + (f" of {length} numbers" if length is not None else ""))
    if any(x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))) for x in v):
        raise bad(f"{what} must hold numbers or null")
    a = np.array([np.inf if x is None else float(x) for x in v], dtype=np.float64)
    if np.isnan(a).any() or (a < 0).any():
        raise bad(f"{what} must be non-negative")
    return a


def record_levels(d: Any, what: str, length: int, bad: Callable[[str], Exception]) -> dict[float, np.ndarray]:
    """A non-empty JSON object from level (a number between 0 and 1, as text) to ``length``
    numbers (:func:`record_floats`), as ``{level: array}``."""
    if not isinstance(d, dict) or not d:
        raise bad(f"{what} must be a non-empty object")
    out: dict[float, np.ndarray] = {}
    for k, v in d.items():
        try:
            lv = float(k)
        except ValueError:
            raise bad(f"level {k!r} is not a number") from None
        if not 0 < lv < 1:
            raise bad(f"level {k!r} is not between 0 and 1")
        out[lv] = record_floats(v, f"{what}[{k!r}]", length, bad)
    return out
