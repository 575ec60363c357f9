"""``pdae predict``: predict the cells of one or more target conditions and write them to an .h5ad."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from .common import (
    EXIT_OK,
    HelpFormatter,
    add_data_args,
    add_threads_arg,
    check_output_not_input,
    load_data,
    positive_int,
    preview,
    printable,
    write_h5ad_atomic,
)

if TYPE_CHECKING:
    import anndata as ad

    from ..data.registry import PerturbationRegistry, Target
    from ..models.base import PerturbationModel

PREDICT_EXAMPLES = """\
examples:
  # predict two held-out combinations from the control cells
  pdae predict ckpt/ --data cells.h5ad --target KLF1+MAP2K6 --target CEBPE+KLF1 --out pred.h5ad

  # half a dose of KLF1 with MAP2K6, 500 cells, from the cells of another condition
  pdae predict ckpt/ --dataset norman19_devel --target "KLF1:0.5+MAP2K6" \\
      --source-condition CEBPE --n-cells 500 --out pred.h5ad

The output holds the predicted cells of every target (obs: the perturbation column,
target, source_cell, source_condition, draw, kind); uns['pdae_prediction'] records the
checkpoint, the seed and each target's extrapolation check. If the data holds raw
counts, the normalisation recorded in the checkpoint is applied; extra genes are dropped."""


def add_parser(sub: Any) -> None:
    """Register ``predict``."""
    p = sub.add_parser(
        "predict",
        help="predict the cells of one or more target conditions and write them to an .h5ad",
        description="Move the source cells (default: the control cells) to each --target and write "
        "all predicted cells to one AnnData. A target is a condition name such as KLF1+MAP2K6; a "
        "perturbation may carry a dose (KLF1:0.5+MAP2K6). For each target, prints whether it lies in "
        "the span of the training labels (the extrapolation guarantee).",
        epilog=PREDICT_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory written by `pdae train`")
    add_data_args(p)
    p.add_argument("--target", action="append", required=True, metavar="A+B",
                   help="condition to predict (repeat for several)")
    p.add_argument("--source-condition", metavar="LABEL",
                   help="condition of the cells to move (default: the model's control label)")
    p.add_argument("--source-context", metavar="NAME",
                   help="only source cells of this context (cell type, line) of the model's context column; the "
                   "verdict then says whether each target was measured there")
    p.add_argument("--n-cells", type=positive_int, metavar="N",
                   help="predicted cells per target (default: one per source cell); fewer than the source "
                   "cells subsamples them, more draws the decoder noise several times")
    p.add_argument("--seed", type=int, metavar="N", default=0, help="seed of the subsample and the decoder noise")
    add_threads_arg(p)
    p.add_argument("--accelerator", default="cpu", metavar="{auto,cpu,cuda,mps}", help="device")
    p.add_argument("--trust-modified", action="store_true",
                   help="load the checkpoint even if it was modified after saving (with a warning)")
    p.add_argument("--out", required=True, metavar="PRED.h5ad", help="output file (replaced if it exists)")
    p.set_defaults(func=run)


def parse_target(text: str, registry: PerturbationRegistry) -> tuple[Target, bool]:
    """A --target as the model's Target: the string itself, or (name, dose) pairs when a
    part is written NAME:DOSE. The flag says whether doses were given."""
    text = text.strip()
    if not text:
        raise DataError("Empty --target.")
    vocab = set(registry.perturbations)
    parts = registry.parse(text)
    if not any(":" in p and p not in vocab for p in parts):
        return text, False
    pairs: list[tuple[str, float]] = []
    for p in parts:
        if ":" in p and p not in vocab:
            name, _, dose_text = p.rpartition(":")
            try:
                dose = float(dose_text)
            except ValueError:
                raise DataError(
                    f"Target {text!r}: dose {dose_text!r} of {name!r} is not a number (write NAME:DOSE, e.g. KLF1:0.5)."
                ) from None
            if not math.isfinite(dose):
                raise DataError(f"Target {text!r}: dose of {name!r} is not finite.")
            pairs.append((name.strip(), dose))
        else:
            pairs.append((p, 1.0))
    return pairs, True


def prepare_source(adata: ad.AnnData, model: PerturbationModel, source: str) -> ad.AnnData:
    """Apply the checkpoint's recorded preprocessing to raw counts and align the genes."""
    from ..data.registry import detect_x_kind, preprocess
    from ..models.prediction import check_source_cells

    reg = model.registry
    prep = reg.preprocessing or {}
    layer = reg.layer
    if layer is not None and layer not in adata.layers:
        raise DataError(f"The model reads layer {layer!r}, which is not in {source} (layers: {list(adata.layers.keys())}).")
    if detect_x_kind(adata, layer) == "counts":
        if "normalize_total" not in prep:
            raise DataError(
                f"{source} holds raw counts, but the model was trained on log-normalised data without recorded "
                "preprocessing; normalise it the same way (normalize_total + log1p) first."
            )
        src_layer = prep.get("source_layer")
        if src_layer is not None and src_layer not in adata.layers:
            src_layer = None
        adata = preprocess(adata, target_sum=float(prep["normalize_total"]), layer=src_layer, copy=True)
        print(f"Applied the checkpoint's preprocessing (normalize_total {float(prep['normalize_total']):g} + log1p).")
    genes = list(map(str, adata.var_names))
    if genes != reg.gene_names and set(reg.gene_names) <= set(genes):
        adata = adata[:, reg.gene_names].copy()
        print(printable(f"Using the model's {reg.n_genes} of the {len(genes)} genes of {source}."))
    check_source_cells(reg, adata, source)  # the library's checks: genes, NaN / inf / negative values
    return adata


def run(args: argparse.Namespace) -> int:
    """``pdae predict``."""
    import numpy as np
    import pandas as pd

    from ..data.registry import condition_column
    from ..models.checkpoint import load_checkpoint
    from ..models.prediction import PREDICTION_KEY, check_prediction_size, combine_predictions, keep_rows

    check_output_not_input(args.out, {"--data": args.data, "CHECKPOINT": args.checkpoint})
    model = load_checkpoint(args.checkpoint, accelerator=args.accelerator, trust_modified=args.trust_modified)
    reg = model.registry
    targets: dict[str, tuple[str, Target]] = {}  # output name -> (as written, model target)
    for text in args.target:
        tgt, has_doses = parse_target(text, reg)
        label = reg.label_vector(tgt)  # validates every target before any work
        name = reg.condition_name(label) if has_doses else text.strip()
        targets.setdefault(name, (text, tgt))
    if args.n_cells is not None:  # all targets together, before reading any data
        check_prediction_size(args.n_cells * len(targets), reg.n_genes)

    adata, source = load_data(args)
    src_label = args.source_condition or reg.control_label
    conds = condition_column(adata, reg.perturbation_key)
    mask = conds == src_label
    if not mask.any():
        raise DataError(
            f"No cells of source condition {src_label!r} in column {reg.perturbation_key!r} of {source} "
            f"(conditions present: {preview(sorted(set(conds)), 12)}); pass --source-condition."
        )
    contexts = None
    if args.source_context is not None or (reg.covariate_key is not None and reg.covariate_key in adata.obs.columns):
        from ..data.contexts import context_values

        if reg.covariate_key is None:
            raise DataError("--source-context: this model has no context column (it was trained without --covariate-key).")
        ctx = context_values(adata, reg.covariate_key)
        if args.source_context is not None:
            mask &= ctx == args.source_context
            if not mask.any():
                raise DataError(
                    f"No {src_label!r} cells in context {args.source_context!r} (column {reg.covariate_key!r}) of "
                    f"{source} (contexts present: {preview(sorted(set(ctx)), 12)})."
                )
        contexts = sorted(set(ctx[mask].tolist()))
    src = prepare_source(adata[mask].copy(), model, source)
    n_src = src.n_obs
    check_prediction_size((args.n_cells or n_src) * len(targets), reg.n_genes)
    rng = np.random.default_rng(args.seed)
    n_draws = 1
    if args.n_cells is not None and args.n_cells < n_src:
        src = src[np.sort(rng.choice(n_src, size=args.n_cells, replace=False))].copy()
    elif args.n_cells is not None and args.n_cells > n_src:
        n_draws = math.ceil(args.n_cells / n_src)

    preds = []
    rows = []
    for text, tgt in targets.values():
        pred = model.predict(src, tgt, seed=args.seed, n_draws=n_draws)
        if args.n_cells is not None and pred.n_obs > args.n_cells:
            pred = keep_rows(pred, np.sort(rng.choice(pred.n_obs, size=args.n_cells, replace=False)))
        check = model.extrapolation_check(tgt, context=contexts)
        name = str(pred.uns[PREDICTION_KEY]["target"])
        shown = text.strip() if name == text.strip() else f"{text.strip()} (as {name})"
        print(printable(f"{shown}: {pred.n_obs} cells from {n_src} {src_label!r} cells. {check.message}"))
        rows.append({
            "target": name, "in_span": bool(check.in_span), "measured_in_training": bool(check.measured_in_training),
            "residual": float(check.residual), "unseen_perturbations": ",".join(check.unseen_perturbations),
            "message": check.message,
        })
        preds.append(pred)
    info = {
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "model_type": model.model_type,
        "source": source,
        "source_condition": src_label,
        "n_source_cells": int(n_src),
        "seed": int(args.seed),
        "targets": [r["target"] for r in rows],
        "preprocessing": json.dumps(reg.preprocessing),
    }
    extrapolation = pd.DataFrame(rows).set_index("target", drop=False).rename_axis(None)
    out = combine_predictions(preds, info, extrapolation)
    if model.n_members > 1:  # per gene and target: the change over the networks and its spread
        from ..models.base import CHANGE_KEY

        out.varm[CHANGE_KEY] = pd.concat(
            [p.varm[CHANGE_KEY].add_prefix(f"{r['target']}:") for p, r in zip(preds, rows)], axis=1)
        spread = float(np.median([p.varm[CHANGE_KEY]["spread"].median() for p in preds]))
        print(f"An ensemble of {model.n_members} networks: per-gene change and spread across them in "
              f"varm['{CHANGE_KEY}'] (median spread {spread:.3g})"
              + (", with split-conformal intervals (lower_80/upper_80, ...)" if getattr(model, "calibration", None)
                 is not None else "") + ".")
    dest = Path(args.out)
    write_h5ad_atomic(out, dest)
    print(printable(f"Wrote {out.n_obs} predicted cells ({len(rows)} target(s) x {out.n_vars} genes) to {dest}."))
    return EXIT_OK
