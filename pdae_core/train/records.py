"""Reading a training history's records without importing torch (``pdae info`` starts fast)."""

from __future__ import annotations


def epochs_run(epoch: float) -> int | float:
    """Epochs run, from a record's ``epoch``: an integer, or a fraction (3 decimals) when a step
    budget ended part-way through an epoch."""
    e = float(epoch)
    return int(e) if e.is_integer() else round(e, 3)
