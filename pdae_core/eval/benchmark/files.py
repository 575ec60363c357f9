"""The files of a benchmark results folder: their names, the columns of the
per-condition table, atomic writes and exact (round-trip) CSV reading."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

METRIC_COLUMNS = (
    "energy_distance", "energy_distance_lo", "energy_distance_hi", "energy_distance_ctrl", "noise_floor",
    "energy_distance_de", "mmd_rbf", "mean_l2", "pearson_delta", "r2_delta", "pearson_delta_de", "r2_delta_de",
    "direction_accuracy_de",
)
#: Columns of ``per_condition.csv`` (and of ``runs/<model>__seed<k>.csv``, plus ``spec_hash``).
COLUMNS = ("model", "seed", "condition", "seen", "n_obs", "n_pred", "n_ctrl", *METRIC_COLUMNS, "de_genes",
           "fit_seconds", "score_seconds", "error")
_INT_COLUMNS = ("seed", "seen", "n_obs", "n_pred", "n_ctrl")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def slug(name: str) -> str:
    """``name`` with every run of characters other than ``[A-Za-z0-9_.-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def run_path(out_dir: Path, model: str, seed: int) -> Path:
    """``runs/<model>__seed<k>.csv`` under ``out_dir``."""
    return out_dir / "runs" / f"{slug(model)}__seed{seed}.csv"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder (readers
    never see half a file), with the usual permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """A table as written here: floats round-trip exactly, only empty cells are missing."""
    return pd.read_csv(path, float_precision="round_trip", keep_default_na=False, na_values=[""],
                       dtype={"model": str, "condition": str, "de_genes": str, "error": str}, **kwargs)


def tidy(rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows as a table with exactly :data:`COLUMNS` and their dtypes."""
    df = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    for c in _INT_COLUMNS:
        df[c] = pd.to_numeric(df[c]).astype("Int64")
    for c in (*METRIC_COLUMNS, "fit_seconds", "score_seconds"):
        df[c] = pd.to_numeric(df[c]).astype(float)
    df["error"] = df["error"].fillna("").astype(str)
    df["de_genes"] = df["de_genes"].fillna("").astype(str)
    return df


def dense(x: Any) -> np.ndarray:
    """A float64 numpy matrix of an AnnData's ``X`` or of a (sparse) matrix."""
    x = x.X if isinstance(x, ad.AnnData) else x
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
