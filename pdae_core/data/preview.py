"""Short previews of long lists for error messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def preview(items: Sequence[Any], n: int = 8) -> str:
    """The first ``n`` items joined by commas, with the total when some are left out."""
    items = list(items)
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")
