"""The split-conformal quantile rank, shared by the calibrated intervals
(:mod:`pdae_core.eval.calibration`) and the jackknife intervals of the stacked estimate
(:mod:`pdae_core.eval.stacking`)."""

from __future__ import annotations

import math

__all__ = ["conformal_rank"]


def conformal_rank(n: int, level: float) -> int | None:
    """The rank (1-based) of the split-conformal quantile at ``level`` among ``n`` calibration
    errors: ``ceil((n + 1) level)``; None when it exceeds ``n`` (the interval is infinite)."""
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be between 0 and 1 (exclusive), got {level!r}.")
    k = math.ceil((int(n) + 1) * float(level) - 1e-9)
    return k if 1 <= k <= n else None
