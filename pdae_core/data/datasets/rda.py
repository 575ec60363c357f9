"""A reader of sceptredata's R data file (an R list of Matrix-package sparse matrices
and data frames), through the optional pure-Python package ``rdata``."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...errors import DataError

__all__ = ["RMatrix", "read_lowmoi_rda", "to_rmatrix"]


@dataclass
class RMatrix:
    """A matrix read from R (scipy sparse or numpy) with its row and column names."""

    matrix: Any
    rownames: list[str] | None
    colnames: list[str] | None


def _names(v: Any) -> list[str] | None:
    if v is None:
        return None
    return [str(x) for x in np.asarray(v).ravel()]


def _rsparse_constructor(kind: str) -> Callable[[Any, Mapping[str, Any]], RMatrix]:
    def build(obj: Any, attrs: Mapping[str, Any]) -> RMatrix:
        return _sparse_from_slots(kind, attrs)

    return build


def _sparse_from_slots(kind: str, slots: Mapping[str, Any]) -> RMatrix:
    """A Matrix-package sparse matrix (dgC/dgR/dgT, or pattern/logical) from its slots."""
    shape = tuple(int(d) for d in np.asarray(slots["Dim"]).ravel())
    nnz_src = slots.get("i") if kind != "R" else slots.get("j")
    x = slots.get("x")
    data = (np.ones(len(np.asarray(nnz_src)), dtype=np.float32) if x is None
            else np.asarray(x, dtype=np.float32))
    if kind == "C":
        m: Any = sp.csc_matrix((data, np.asarray(slots["i"]), np.asarray(slots["p"])), shape=shape)
    elif kind == "R":
        m = sp.csr_matrix((data, np.asarray(slots["j"]), np.asarray(slots["p"])), shape=shape)
    else:
        m = sp.coo_matrix((data, (np.asarray(slots["i"]), np.asarray(slots["j"]))), shape=shape)
    dimnames = slots.get("Dimnames") or [None, None]
    return RMatrix(m, _names(dimnames[0]), _names(dimnames[1]) if len(dimnames) > 1 else None)


def to_rmatrix(obj: Any, what: str) -> RMatrix:
    """Matrix + dimnames from whatever an R reader produced."""
    if isinstance(obj, RMatrix):
        return obj
    if isinstance(obj, pd.DataFrame):
        return RMatrix(obj.to_numpy(), _names(obj.index), _names(obj.columns))
    if sp.issparse(obj) or isinstance(obj, np.ndarray):
        return RMatrix(obj, None, None)
    slots = vars(obj) if hasattr(obj, "__dict__") else obj
    if isinstance(slots, Mapping) and "Dim" in slots:
        cls = [str(c) for c in np.asarray(slots.get("class", ["dgCMatrix"])).ravel()]
        kind = "R" if any(c.endswith("RMatrix") for c in cls) else "T" if any(c.endswith("TMatrix") for c in cls) else "C"
        return _sparse_from_slots(kind, slots)
    if hasattr(obj, "values") and hasattr(obj, "coords") and hasattr(obj, "dims"):  # xarray.DataArray
        dims = list(obj.dims)
        rows = obj.coords[dims[0]].values if dims[0] in obj.coords else None
        cols = obj.coords[dims[1]].values if len(dims) > 1 and dims[1] in obj.coords else None
        return RMatrix(np.asarray(obj.values), _names(rows), _names(cols))
    raise DataError(f"{what} is a {type(obj).__name__}, not a matrix this loader can read.")


def read_lowmoi_rda(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The R list ``lowmoi_example_data`` of sceptredata's ``data/lowmoi_example_data.rda``.

    Needs the optional package ``rdata`` (pure Python: ``pip install rdata``).
    ``pyreadr`` cannot be used: it skips R lists and S4 objects such as the
    ``dgCMatrix`` sparse matrices this file holds. Sparse matrices come back as
    ``RMatrix`` (scipy matrix + row/column names), data frames as pandas.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"R data file not found: {p}")
    try:
        import rdata
    except ImportError:
        raise DataError(
            f"Reading {p} needs the optional package 'rdata': run `pip install rdata`. "
            "(pyreadr cannot read it: lowmoi_example_data is an R list of sparse dgCMatrix objects, "
            "which pyreadr skips.)"
        ) from None
    constructors = dict(rdata.conversion.DEFAULT_CLASS_MAP)
    for cls in ("dgCMatrix", "lgCMatrix", "ngCMatrix"):
        constructors[cls] = _rsparse_constructor("C")
    for cls in ("dgRMatrix", "lgRMatrix", "ngRMatrix"):
        constructors[cls] = _rsparse_constructor("R")
    for cls in ("dgTMatrix", "lgTMatrix", "ngTMatrix"):
        constructors[cls] = _rsparse_constructor("T")
    try:
        objects = rdata.read_rda(p, constructor_dict=constructors)
    except Exception as e:
        raise DataError(f"{p} is not a readable R data file: {type(e).__name__}: {e}") from e
    objects = {str(k): v for k, v in objects.items()}
    data = objects.get("lowmoi_example_data")
    if data is None:
        if len(objects) == 1:
            data = next(iter(objects.values()))
        else:
            raise DataError(f"{p} has no object 'lowmoi_example_data' (objects: {sorted(objects)}).")
    if not isinstance(data, Mapping):
        raise DataError(f"lowmoi_example_data in {p} is a {type(data).__name__}, expected an R list.")
    return {str(k): v for k, v in data.items()}
