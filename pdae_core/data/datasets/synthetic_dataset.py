"""The synthetic dataset: cells drawn from the PDAE generative model with known truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad

from ..synthetic import make_synthetic
from .common import check_kwargs, tag_dataset


def load_synthetic(data_dir: Path, download: bool, **kwargs: Any) -> ad.AnnData:
    """``synthetic``: :func:`pdae_core.data.synthetic.make_synthetic` with ``kwargs`` (no files)."""
    check_kwargs("synthetic", make_synthetic, kwargs)
    adata = make_synthetic(**kwargs)[0]
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
    return tag_dataset(adata, "synthetic", "condition", "control", None, "synthetic",
                     f"pdae_core.data.synthetic.make_synthetic({args})")
