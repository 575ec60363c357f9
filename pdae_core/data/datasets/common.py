"""Small helpers shared by the dataset loaders: subsets without unused categories,
categorical columns, CSV reading with clear errors, the dataset tag, option checks."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ...errors import DataError
from ..defaults import DATASET_KEY


def drop_unused_categories(adata: ad.AnnData) -> ad.AnnData:
    """Drop the unused categories of every categorical obs and var column (in place)."""
    for df in (adata.obs, adata.var):
        for col in df.columns:
            if isinstance(df[col].dtype, pd.CategoricalDtype):
                df[col] = df[col].cat.remove_unused_categories()
    return adata


def subset_cells(adata: ad.AnnData, mask: np.ndarray) -> ad.AnnData:
    """A copy of the cells where ``mask`` is true, without unused categories."""
    out = adata[np.asarray(mask, dtype=bool)].copy()
    return drop_unused_categories(out)


def tag_dataset(
    adata: ad.AnnData, name: str, perturbation_key: str, control_label: str, covariate_key: str | None,
    values: str, source: str, **extra: Any,
) -> ad.AnnData:
    """Record the dataset's set-up defaults in ``uns[DATASET_KEY]`` (read back by
    :func:`pdae_core.data.defaults.dataset_defaults`); returns ``adata``."""
    info: dict[str, Any] = {
        "name": name, "perturbation_key": perturbation_key, "control_label": control_label,
        "covariate_key": covariate_key, "values": values, "source": source,
    }
    info.update(extra)
    adata.uns[DATASET_KEY] = info
    return adata


def as_category(values: Sequence[Any] | np.ndarray | pd.Series) -> pd.Categorical:
    """``values`` as a categorical column of strings."""
    return pd.Categorical(np.asarray(values, dtype=object).astype(str))


def read_csv(path: Path, what: str, **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` with every failure turned into a DataError naming the file."""
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}") from None
    except Exception as e:  # pandas raises several types for malformed CSV
        raise DataError(f"{path} is not a readable {what} CSV: {type(e).__name__}: {e}") from e


def check_kwargs(name: str, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """Raise a DataError naming the options of dataset ``name`` that ``fn`` does not take."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p not in ("data_dir", "download")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise DataError(
            f"Dataset {name!r} does not take the option(s) {unknown}; it accepts: "
            f"{', '.join(allowed) if allowed else 'no options'}."
        )
