"""``pdae preprocess``: normalize_total + log1p (+ HVG selection) of a raw-count .h5ad, streamed from disk."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import DataError
from .common import (
    EXIT_OK,
    HelpFormatter,
    check_not_empty,
    check_output_not_input,
    finite_float,
    positive_int,
)


def add_parser(sub: Any) -> None:
    """Register ``preprocess``."""
    pr = sub.add_parser(
        "preprocess",
        help="normalize_total + log1p (+ HVG selection) of a raw-count .h5ad, streamed from disk",
        description="Normalise the raw counts in X of an .h5ad to --target-sum per cell, log1p-transform "
        "them and optionally keep the --n-top-genes most highly variable genes (scanpy's seurat flavour), "
        "reading and writing row chunks so that files larger than memory work. The output is a CSR "
        ".h5ad ready for `pdae train --data OUT --backed`.",
        formatter_class=HelpFormatter,
    )
    pr.add_argument("src", metavar="RAW.h5ad", help="input with raw counts in X")
    pr.add_argument("dst", metavar="OUT.h5ad", help="output file (must not exist unless --overwrite)")
    pr.add_argument("--target-sum", type=finite_float, default=1e4, metavar="S", help="counts per cell after normalisation")
    pr.add_argument("--n-top-genes", type=positive_int, metavar="N", help="keep the N most highly variable genes")
    pr.add_argument("--chunk-size", type=positive_int, default=20000, metavar="N", help="cells per chunk read")
    pr.add_argument("--overwrite", action="store_true", help="replace OUT.h5ad if it exists")
    pr.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``pdae preprocess``."""
    from ..data.registry import read_h5ad
    from ..data.streaming import preprocess_on_disk

    dst = Path(args.dst)
    check_output_not_input(dst, {"RAW.h5ad": args.src}, out_flag="OUT.h5ad")
    if dst.exists() and not args.overwrite:
        raise DataError(f"{dst} exists; pass --overwrite to replace it.")
    backed = read_h5ad(args.src, backed=True)  # checks the file with a clear message
    shape = backed.shape
    backed.file.close()
    check_not_empty(shape[0], shape[1], args.src)
    t0 = time.perf_counter()
    steps = preprocess_on_disk(args.src, dst, target_sum=args.target_sum, n_top_genes=args.n_top_genes,
                               chunk_size=args.chunk_size)
    genes = args.n_top_genes if "highly_variable_genes" in steps else shape[1]
    print(f"Wrote {dst}: {shape[0]} cells x {genes} genes, normalize_total({args.target_sum:g}) + log1p"
          + (f" + {genes} highly variable genes" if "highly_variable_genes" in steps else "")
          + f" in {time.perf_counter() - t0:.1f} s.")
    return EXIT_OK
