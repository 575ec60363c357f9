"""Command-line interface: ``pdae train | predict | info | datasets``.

Every user-caused error (bad file, column, target, checkpoint, hyperparameter)
is printed as ``error: <message>`` on stderr with exit code 2, never as a
traceback; Ctrl-C exits with 130 and leaves no partial checkpoint or output file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, DataError, DatasetUnavailableError, PDAEError
from ..train import distributed
from ..train.loop import Callback

if TYPE_CHECKING:
    import anndata as ad
    from tqdm import tqdm

    from ..data.registry import PerturbationRegistry, Target
    from ..models.base import PerturbationModel
    from ..train.loop import History

PROG = "pdae"
EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class _HelpFormatter(argparse.HelpFormatter):
    """Shows meaningful defaults; wraps one-paragraph descriptions, keeps multi-line ones
    (the example epilogs) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (
            "%(default)" not in help_text
            and action.option_strings
            and default not in (None, argparse.SUPPRESS, [])
            and not isinstance(default, bool)
        ):
            help_text += " (default: %(default)s)"
        return help_text


# ---------------------------------------------------------------------------------
# argument types


def _pdae_default(name: str) -> str:
    """A PDAE hyperparameter's default as shown in --help (read from PDAEConfig, never copied)."""
    from dataclasses import fields

    from ..models.pdae import PDAEConfig

    value = next(f.default for f in fields(PDAEConfig) if f.name == name)
    return ",".join(map(str, value)) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) else str(value)


def _int_at_least(lo: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _int_list(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 512,256, got {text!r}")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 512,256, got {text!r}"
        ) from None
    if min(vals) < 1:
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return vals


# ---------------------------------------------------------------------------------
# parser


TRAIN_EXAMPLES = """\
examples:
  # train on your own AnnData (log-normalised X, perturbations in obs['condition'])
  pdae train --data cells.h5ad --out ckpt/ --holdout KLF1+MAP2K6,CEBPE+KLF1

  # raw counts: normalise + log1p and keep 2000 highly variable genes first
  pdae train --data counts.h5ad --preprocess --n-top-genes 2000 --out ckpt/

  # a built-in dataset, keys taken from the dataset, on the GPU for at most 10 minutes
  pdae train --dataset norman19_devel --out ckpt/ --accelerator cuda --time-limit 600

  # other column / control label / separator, smaller model
  pdae train --data cells.h5ad --perturbation-key guide --control NT --separator _ \\
      --latent-dim 16 --hidden-dims 256,128 --epochs 50 --out ckpt/

Press Ctrl-C to abort: nothing is written (exit code 130)."""

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

INFO_EXAMPLES = """\
examples:
  pdae info ckpt/
  pdae info ckpt/ --json | python -c "import json,sys; print(json.load(sys.stdin)['holdout'])\""""

BENCHMARK_EXAMPLES = """\
examples:
  pdae benchmark --dataset norman19_devel --models pdae,additive,linear,control,pool --seeds 3 \\
      --holdout KLF1+MAP2K6,MAP2K3+SLC38A2,MAP2K3+MAP2K6,MAPK1+TGFBR2,KLF1+TGFBR2 --out bench/norman
  pdae benchmark --dataset schraivogel20 --models additive,linear,control,pool --seeds 3 --out bench/tapseq
  pdae benchmark --dataset norman19_pseudobulk --level pseudobulk --out bench/pseudobulk
  pdae benchmark --data my_pseudobulk.h5ad --level pseudobulk --control control --out bench/mine"""

DATASETS_EXAMPLES = """\
examples:
  pdae datasets
  pdae train --dataset synthetic --out ckpt/"""


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data (one of --data / --dataset)")
    src = g.add_mutually_exclusive_group(required=required)
    src.add_argument("--data", metavar="FILE.h5ad", help="an AnnData file")
    src.add_argument("--dataset", metavar="NAME", help="a built-in dataset (see `pdae datasets`)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="with --dataset: where built-in datasets are stored (default: $PDAE_DATA_DIR, else the "
                   "user cache)")
    g.add_argument(
        "--no-download", dest="download", action="store_false",
        help="with --dataset: fail instead of downloading a dataset that is not in the data directory",
    )
    g.add_argument(
        "--dataset-option", action="append", default=[], metavar="KEY=VALUE", dest="dataset_options",
        help="with --dataset: an option of the dataset's loader, e.g. source=gears (norman19_full), "
        "keep_unassigned=true (schraivogel20), n_genes=50 (synthetic); repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``pdae`` argument parser (exposed for documentation and tests)."""
    from .._version import __version__
    from ..models.catalog import MODEL_TYPES

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Predict single-cell responses to unseen perturbations and their combinations "
        "with a Perturbation Distribution Autoencoder.",
        epilog="Run `pdae COMMAND --help` for the options and examples of each command.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pdae_core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # ---- train ---------------------------------------------------------------------
    t = sub.add_parser(
        "train",
        help="train a model on an AnnData file or a built-in dataset and save a checkpoint",
        description="Train a model on every cell except those of the --holdout conditions and save "
        "it as a checkpoint directory (model.safetensors + config.json). Column names and the control "
        "label default to the dataset's uns['pdae_dataset'] when present, else 'condition' and an "
        "auto-detected control label (control, ctrl, non-targeting, NT, ...).",
        epilog=TRAIN_EXAMPLES,
        formatter_class=_HelpFormatter,
    )
    _add_data_args(t)
    t.add_argument("--out", required=True, metavar="CHECKPOINT_DIR", help="checkpoint directory to write")
    t.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    k = t.add_argument_group("how the data encodes perturbations")
    k.add_argument("--perturbation-key", metavar="KEY", help="obs column with the condition of each cell "
                   "(default: the dataset's, else 'condition')")
    k.add_argument("--control", metavar="LABEL", help="label of the control cells (default: the dataset's, "
                   "else auto-detected)")
    k.add_argument("--separator", metavar="SEP", help="joins the perturbations of a combination "
                   "(default: the dataset's, else '+')")
    k.add_argument("--dose-key", metavar="KEY", help="obs column with the dose of each cell (optional)")
    k.add_argument("--covariate-key", metavar="KEY", help="obs column with a covariate such as the cell line")
    k.add_argument("--layer", metavar="NAME", help="use adata.layers[NAME] instead of X")
    pp = t.add_argument_group("preprocessing")
    pp.add_argument("--preprocess", action="store_true",
                    help="normalise raw counts (normalize_total + log1p) with pdae_core.preprocess; recorded "
                    "in the checkpoint and re-applied by `pdae predict`")
    pp.add_argument("--n-top-genes", type=_positive_int, metavar="N",
                    help="with --preprocess: keep the N most highly variable genes")
    tr = t.add_argument_group("training")
    tr.add_argument("--holdout", action="append", default=[], metavar="A+B,C+D",
                    help="conditions to leave out of training (comma-separated; repeatable)")
    tr.add_argument("--model", default="pdae", choices=sorted(MODEL_TYPES), help="model type")
    from ..train.loop import TrainConfig

    _d = TrainConfig()
    tr.add_argument("--epochs", type=_positive_int, metavar="N", default=_d.max_epochs,
                    help="maximum number of epochs")
    tr.add_argument("--lr", type=_finite_float, metavar="LR", default=_d.lr, help="Adam learning rate")
    tr.add_argument("--batch-size", type=_positive_int, metavar="N", default=_d.batch_size,
                    help="cells per mini-batch")
    tr.add_argument("--patience", type=_positive_int, metavar="N", default=_d.patience,
                    help="stop after this many evaluations without a better validation energy distance")
    tr.add_argument("--val-fraction", type=_finite_float, metavar="F", default=_d.val_fraction,
                    help="fraction of each condition's cells used for validation")
    tr.add_argument("--seed", type=int, metavar="N", default=0, help="seed of the initial weights, batches and split")
    tr.add_argument("--accelerator", default="auto", metavar="{auto,cpu,cuda,mps}",
                    help="device: auto picks CUDA, then Apple MPS, then the CPU (also cuda:N)")
    tr.add_argument("--time-limit", type=_finite_float, metavar="SECONDS",
                    help="stop training after this many seconds (the best weights so far are saved)")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    perf = t.add_argument_group("performance and scale")
    perf.add_argument("--backed", action="store_true",
                      help="with --data: stream X from the .h5ad on disk, one mini-batch at a time, instead of "
                      "loading it (for data larger than memory; preprocess it first with `pdae preprocess`)")
    perf.add_argument("--precision", choices=["32", "bf16-mixed", "16-mixed"], default=_d.precision,
                      help="autocast precision of the networks (losses stay float32); bf16-mixed suits recent GPUs")
    perf.add_argument("--compile", action="store_true", help="torch.compile the loss computation")
    perf.add_argument("--max-steps", type=_positive_int, metavar="N", help="stop after N optimiser steps")
    h = t.add_argument_group("model hyperparameters (default: the model's own)")
    h.add_argument("--latent-dim", type=_positive_int, metavar="D", help=f"latent dimension (PDAE: {_pdae_default('latent_dim')})")
    h.add_argument("--hidden-dims", type=_int_list, metavar="512,256",
                   help=f"encoder layer sizes, mirrored by the decoder (PDAE: {_pdae_default('hidden_dims')})")
    h.add_argument("--noise-dim", type=_non_negative_int, metavar="N",
                   help=f"decoder noise dimension, 0 = deterministic (PDAE: {_pdae_default('noise_dim')})")
    h.add_argument("--grid", choices=["sampled", "full"],
                   help="score each cell against n_sources sampled cells or against every cell of the batch "
                   f"(PDAE: {_pdae_default('grid')})")
    h.add_argument("--n-sources", type=_positive_int, metavar="N", help=f"sources per cell with --grid sampled (PDAE: {_pdae_default('n_sources')})")
    h.add_argument("--source-sampling", choices=["condition", "batch"],
                   help="with --grid sampled: a cell's sources all come from one other condition of the batch, or "
                   f"from anywhere in the batch (PDAE: {_pdae_default('source_sampling')})")
    h.add_argument("--w-pert", type=_finite_float, metavar="W", help=f"weight of the perturbation energy score (PDAE: {_pdae_default('w_pert')})")
    h.add_argument("--w-rec", type=_finite_float, metavar="W", help=f"weight of the reconstruction energy score (PDAE: {_pdae_default('w_rec')})")
    h.add_argument("--w-prior", type=_finite_float, metavar="W", help=f"weight of the latent prior energy distance (PDAE: {_pdae_default('w_prior')})")
    h.add_argument("--w-l21", type=_finite_float, metavar="W", help=f"weight of the L2,1 penalty on W (PDAE: {_pdae_default('w_l21')})")
    t.set_defaults(func=cmd_train)

    # ---- preprocess ----------------------------------------------------------------
    pr = sub.add_parser(
        "preprocess",
        help="normalize_total + log1p (+ HVG selection) of a raw-count .h5ad, streamed from disk",
        description="Normalise the raw counts in X of an .h5ad to --target-sum per cell, log1p-transform "
        "them and optionally keep the --n-top-genes most highly variable genes (scanpy's seurat flavour), "
        "reading and writing row chunks so that files larger than memory work. The output is a CSR "
        ".h5ad ready for `pdae train --data OUT --backed`.",
        formatter_class=_HelpFormatter,
    )
    pr.add_argument("src", metavar="RAW.h5ad", help="input with raw counts in X")
    pr.add_argument("dst", metavar="OUT.h5ad", help="output file (must not exist unless --overwrite)")
    pr.add_argument("--target-sum", type=_finite_float, default=1e4, metavar="S", help="counts per cell after normalisation")
    pr.add_argument("--n-top-genes", type=_positive_int, metavar="N", help="keep the N most highly variable genes")
    pr.add_argument("--chunk-size", type=_positive_int, default=20000, metavar="N", help="cells per chunk read")
    pr.add_argument("--overwrite", action="store_true", help="replace OUT.h5ad if it exists")
    pr.set_defaults(func=cmd_preprocess)

    # ---- predict -------------------------------------------------------------------
    p = sub.add_parser(
        "predict",
        help="predict the cells of one or more target conditions and write them to an .h5ad",
        description="Move the source cells (default: the control cells) to each --target and write "
        "all predicted cells to one AnnData. A target is a condition name such as KLF1+MAP2K6; a "
        "perturbation may carry a dose (KLF1:0.5+MAP2K6). For each target, prints whether it lies in "
        "the span of the training labels (the extrapolation guarantee).",
        epilog=PREDICT_EXAMPLES,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory written by `pdae train`")
    _add_data_args(p)
    p.add_argument("--target", action="append", required=True, metavar="A+B",
                   help="condition to predict (repeat for several)")
    p.add_argument("--source-condition", metavar="LABEL",
                   help="condition of the cells to move (default: the model's control label)")
    p.add_argument("--n-cells", type=_positive_int, metavar="N",
                   help="predicted cells per target (default: one per source cell); fewer than the source "
                   "cells subsamples them, more draws the decoder noise several times")
    p.add_argument("--seed", type=int, metavar="N", default=0, help="seed of the subsample and the decoder noise")
    p.add_argument("--accelerator", default="cpu", metavar="{auto,cpu,cuda,mps}", help="device")
    p.add_argument("--out", required=True, metavar="PRED.h5ad", help="output file (replaced if it exists)")
    p.set_defaults(func=cmd_predict)

    # ---- info ----------------------------------------------------------------------
    i = sub.add_parser(
        "info",
        help="describe a checkpoint: model, genes, perturbations, training and preprocessing",
        description="Validate a checkpoint (file list, weights checksum) and describe it: model type, "
        "library version, genes, perturbation vocabulary, control label, separator, training and "
        "held-out conditions, training config, best validation energy distance, preprocessing.",
        epilog=INFO_EXAMPLES,
        formatter_class=_HelpFormatter,
    )
    i.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory")
    i.add_argument("--json", action="store_true", help="print one JSON object (full gene and condition lists)")
    i.set_defaults(func=cmd_info)

    # ---- benchmark -----------------------------------------------------------------
    b = sub.add_parser(
        "benchmark",
        help="compare models and baselines on held-out combinations (metrics, tables, figures)",
        description="Train each model on each split, predict every held-out combination from the control "
        "cells, and write a tidy per-condition CSV, a summary table (mean +- sd over seeds, and pooled over "
        "conditions with a bootstrap interval) and plotly figures to --out. A split holds out a fraction of "
        "the doubles (all singles and the control stay in training); each test double is tagged by how many "
        "of its parts were seen alone (seen 0/1/2). Finished (model, seed) pairs are reused when the same "
        "command is run again. --level pseudobulk runs the mean-level track on per-condition profiles "
        "(k-fold over the doubles; Pearson delta over all genes and the top-20 genes).",
        epilog=BENCHMARK_EXAMPLES,
        formatter_class=_HelpFormatter,
    )
    _add_data_args(b)
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (created; reused to resume)")
    b.add_argument("--level", choices=["auto", "cells", "pseudobulk"], default="auto",
                   help="cells: single-cell distributions; pseudobulk: one profile per condition "
                   "(auto: pseudobulk for datasets of per-condition profiles)")
    b.add_argument("--models", metavar="M1,M2", help="comma-separated models (cells: pdae, additive, linear, "
                   "control, pool and any registered model type; default pdae,additive,linear,control; "
                   "pseudobulk: additive, linear, pdae; default all three)")
    b.add_argument("--seeds", type=_positive_int, default=3, metavar="N", help="run seeds 0..N-1")
    b.add_argument("--holdout", action="append", default=[], metavar="A+B,C+D",
                   help="cells: the same held-out conditions for every seed (default: a random "
                   "--test-fraction of the doubles per seed)")
    b.add_argument("--test-fraction", type=_finite_float, default=0.3, metavar="F",
                   help="cells: fraction of the doubles held out per seed")
    b.add_argument("--folds", type=_positive_int, default=5, metavar="K", help="pseudobulk: folds over the doubles")
    b.add_argument("--n-boot", type=_non_negative_int, default=200, metavar="N",
                   help="cells: bootstrap resamples for the energy distance intervals")
    b.add_argument("--max-source-cells", type=_positive_int, default=500, metavar="N",
                   help="cells: control cells moved to each target (a seeded subsample)")
    b.add_argument("--exclude", action="append", default=[], metavar="LABEL",
                   help="cells: conditions to drop entirely (e.g. unassigned); repeatable")
    b.add_argument("--highlight", metavar="A+B", help="condition of the predicted-vs-observed delta scatter "
                   "(default: the one with the largest effect)")
    b.add_argument("--perturbation-key", metavar="KEY", help="obs column with the condition of each cell")
    b.add_argument("--control", metavar="LABEL", help="label of the control cells")
    b.add_argument("--epochs", type=_positive_int, metavar="N", help="trained models: maximum epochs")
    b.add_argument("--time-limit", type=_finite_float, metavar="SECONDS",
                   help="trained models: stop each fit after this many seconds (results then depend on speed)")
    b.add_argument("--accelerator", default="auto", metavar="{auto,cpu,cuda,mps}", help="device of trained models")
    b.add_argument("--overwrite", action="store_true",
                   help="--out holds a run with other settings: redo the pairs that changed")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    b.set_defaults(func=cmd_benchmark)

    # ---- datasets ------------------------------------------------------------------
    d = sub.add_parser(
        "datasets",
        help="list the built-in datasets",
        description="List the built-in datasets that `--dataset NAME` accepts, with their descriptions.",
        epilog=DATASETS_EXAMPLES,
        formatter_class=_HelpFormatter,
    )
    d.add_argument("--json", action="store_true", help="print a JSON object {name: description}")
    d.set_defaults(func=cmd_datasets)
    return parser


# ---------------------------------------------------------------------------------
# helpers


def _datasets_module() -> Any:
    try:
        from ..data import datasets
    except ImportError as e:
        raise PDAEError(f"built-in datasets are not available in this installation ({e}); use --data FILE.h5ad") from None
    return datasets


def _option_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low == "none":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _dataset_options(values: Sequence[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in values:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--dataset-option {item!r}: write KEY=VALUE, e.g. source=gears.")
        opts[key.strip()] = _option_value(val)
    return opts


def _check_file_flags(args: argparse.Namespace) -> None:
    """With --data FILE, the flags that only make sense for a built-in dataset are errors."""
    for flag, given in (("--data-dir", args.data_dir is not None), ("--dataset-option", bool(args.dataset_options)),
                        ("--no-download", not args.download)):
        if given:
            raise DataError(f"{flag} only applies with --dataset NAME, not with --data FILE.")


def _load_data(args: argparse.Namespace) -> tuple[ad.AnnData, str]:
    """The AnnData named by --data or --dataset, and a short description of where it came from."""
    if args.data is not None:
        _check_file_flags(args)
        from ..data.registry import read_h5ad

        return read_h5ad(args.data, backed=getattr(args, "backed", False)), args.data
    options = _dataset_options(args.dataset_options)
    ds = _datasets_module()
    known = ds.list_datasets()
    if args.dataset not in known:
        raise DataError(f"Unknown dataset {args.dataset!r}; built-in datasets: {', '.join(known)} (see `pdae datasets`).")
    try:
        adata = ds.load_dataset(args.dataset, data_dir=args.data_dir, download=args.download, **options)
    except DatasetUnavailableError as e:
        hint = " (command line: drop --no-download" if not args.download else " (command line"
        raise DatasetUnavailableError(f"{e}{hint}, or pass --data-dir DIR.)") from None
    meta = adata.uns.get("pdae_dataset")
    if hasattr(meta, "get") and meta.get("values") == "lfc_vs_control":
        raise DataError(
            f"Dataset {args.dataset!r} holds per-perturbation log-fold-changes vs control (no single cells, no "
            "control cells), which a model cannot be trained on or predict from; use it for effect-level "
            "comparisons (pdae_core.data.datasets.load_dataset) or pick a single-cell dataset (see `pdae datasets`)."
        )
    return adata, f"dataset {args.dataset}"


def _dataset_defaults(adata: ad.AnnData) -> dict[str, str | None]:
    """Keys recorded by pdae_core.data.datasets in ``uns['pdae_dataset']`` (missing ones are None)."""
    meta = adata.uns.get("pdae_dataset")
    out: dict[str, str | None] = {}
    if not hasattr(meta, "get"):
        return out
    for field in ("perturbation_key", "control_label", "covariate_key", "dose_key", "separator"):
        v = meta.get(field)
        if v is not None and str(v) != "":
            out[field] = str(v)
    return out


def _preview(items: Sequence[Any], n: int = 8) -> str:
    items = list(items)
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _check_out_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"--out {path} exists and is a file; a checkpoint is a directory.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CheckpointError(f"--out {path} already exists and is not empty; pass --overwrite to replace it.")


class TqdmProgress(Callback):
    """A :class:`pdae_core.train.loop.Callback` showing a tqdm bar over training steps,
    with the latest loss and validation energy distance in its postfix."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self.bar: tqdm | None = None
        self.val_ed: float | None = None

    def on_train_start(self, max_epochs: int, steps_per_epoch: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=max_epochs * steps_per_epoch, unit="step", desc="training", file=sys.stderr,
                        disable=self.disable, dynamic_ncols=True)

    def on_step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        if self.bar is None:
            return
        post = {"epoch": epoch, "loss": f"{losses['loss']:.4g}"}
        if self.val_ed is not None:
            post["val_ed"] = f"{self.val_ed:.4g}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def on_evaluation(self, record: dict[str, float]) -> None:
        if "val_ed" in record:
            self.val_ed = float(record["val_ed"])
            if self.bar is not None:
                self.bar.set_postfix(
                    {"epoch": int(record["epoch"]), "loss": f"{record.get('train_loss', float('nan')):.4g}",
                     "val_ed": f"{self.val_ed:.4g}"}
                )

    def on_train_end(self, history: History) -> None:
        self.close()

    def should_stop(self) -> bool:
        return False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    names = ("latent_dim", "hidden_dims", "noise_dim", "grid", "n_sources", "source_sampling", "w_pert", "w_rec",
             "w_prior", "w_l21")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _holdout(values: Sequence[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        for c in v.split(","):
            c = c.strip()
            if c and c not in out:
                out.append(c)
    return out


# ---------------------------------------------------------------------------------
# commands


def cmd_train(args: argparse.Namespace) -> int:
    from ..data.registry import (
        condition_column,
        detect_control,
        detect_x_kind,
        preprocess,
        require_conditions,
        setup_anndata,
    )
    from ..models.catalog import MODEL_TYPES
    from ..train.loop import TrainConfig, resolve_device

    # fail fast on settings, before reading data or training
    if args.n_top_genes is not None and not args.preprocess:
        raise DataError("--n-top-genes selects genes during preprocessing; add --preprocess.")
    if args.time_limit is not None and args.time_limit <= 0:
        raise ValueError("--time-limit must be > 0 seconds.")
    if args.backed and (args.data is None or args.preprocess):
        raise DataError("--backed streams an .h5ad given with --data, already log-normalised "
                        "(run `pdae preprocess RAW.h5ad OUT.h5ad` first; --preprocess needs the data in memory).")
    # under torchrun: one process per device, rank 0 prints and saves (see pdae_core.train.distributed)
    world = distributed.init_from_env()
    main_process = distributed.is_main_process()
    out = Path(args.out)
    if main_process:
        _check_out_dir(out, args.overwrite)
    device = distributed.local_device(resolve_device(args.accelerator))
    train_config = TrainConfig(
        max_epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        accelerator=args.accelerator, time_limit_s=args.time_limit, patience=args.patience,
        val_fraction=args.val_fraction, cells_per_condition=min(TrainConfig().cells_per_condition, args.batch_size),
        precision=args.precision, compile=args.compile, max_steps=args.max_steps,
    )
    say = print if main_process else (lambda *a, **k: None)
    cls = MODEL_TYPES[args.model]
    hp = _hyperparameters(args)
    try:
        cls.config_class(n_genes=1, n_perturbations=1, **hp)
    except TypeError as e:
        raise ValueError(f"{args.model}: unsupported hyperparameter ({e})") from None

    adata, source = _load_data(args)
    defaults = _dataset_defaults(adata)
    if args.perturbation_key and args.perturbation_key != defaults.get("perturbation_key"):
        # the dataset's control label and separator describe its own column, not this one
        defaults.pop("control_label", None)
        defaults.pop("separator", None)
    key = args.perturbation_key or defaults.get("perturbation_key") or "condition"
    control = args.control or defaults.get("control_label")
    separator = args.separator or defaults.get("separator") or "+"
    dose_key = args.dose_key or defaults.get("dose_key")
    covariate_key = args.covariate_key or defaults.get("covariate_key")
    layer = args.layer

    if key not in adata.obs.columns:
        raise DataError(
            f"Perturbation column {key!r} is not in obs of {source}; pass --perturbation-key "
            f"(obs columns: {_preview(list(adata.obs.columns), 20)})."
        )
    if control is None:
        try:
            control = detect_control(condition_column(adata, key))
        except DataError as e:
            raise DataError(f"{e} Pass --control LABEL.") from None
    if layer is not None and layer not in adata.layers:
        raise DataError(f"Layer {layer!r} is not in {source} (layers: {list(adata.layers.keys()) or 'none'}).")

    kind = detect_x_kind(adata, layer)
    if args.preprocess:
        prior = dict(adata.uns.get("pdae_preprocessing", {}) or {})
        adata = preprocess(adata, n_top_genes=args.n_top_genes, layer=layer, copy=True)
        steps = dict(adata.uns["pdae_preprocessing"])
        if layer is not None:
            steps["source_layer"] = layer
        if prior:
            steps["earlier"] = prior
        adata.uns["pdae_preprocessing"] = steps
        layer = None  # preprocess put the (normalised) layer into X
    elif kind == "counts":
        where = f"layer {layer!r}" if layer else "X"
        raise DataError(
            f"{where} of {source} holds raw counts (non-negative integers), but the model expects "
            "log-normalised expression. Rerun with --preprocess (normalize_total + log1p; add --n-top-genes N "
            "to keep the N most variable genes), or pass --layer with a log-normalised layer."
        )

    registry = setup_anndata(adata, key, control, separator, dose_key, covariate_key, layer)
    holdout = _holdout(args.holdout)
    if holdout:
        require_conditions(adata, registry, holdout)
    model = cls(registry, seed=args.seed, **hp)
    n_cond = len(set(condition_column(adata, key)))
    say(
        f"Data: {source}: {adata.n_obs} cells x {adata.n_vars} genes, {n_cond} conditions, "
        f"{registry.n_perturbations} perturbations; column {key!r}, control {registry.control_label!r}, "
        f"separator {separator!r}" + (f"; held out: {', '.join(holdout)}" if holdout else "")
        + ("; X streamed from disk" if args.backed else "")
    )
    say(f"Training {args.model} on {device}" + (f" x {world} processes" if world > 1 else "")
        + f" for at most {args.epochs} epochs" + (f" / {args.time_limit:g} s" if args.time_limit else "") + ".")

    progress = TqdmProgress(disable=args.quiet or not main_process)
    try:
        history = model.fit(adata, holdout=holdout, train_config=train_config, callbacks=[progress])
    except KeyboardInterrupt:
        progress.close()
        print("\ninterrupted: training aborted, no checkpoint written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        progress.close()
    if not main_process:
        distributed.shutdown()
        return EXIT_OK
    try:
        model.save(out, overwrite=True)
    except KeyboardInterrupt:
        print("\ninterrupted while saving: no checkpoint written.", file=sys.stderr)
        return EXIT_INTERRUPTED

    epochs = int(history.records[-1]["epoch"]) if history.records else 0
    if history.stopped_early:
        why = f" (early stop: no better validation ED for {train_config.patience} evaluations)"
    elif epochs < args.epochs and args.time_limit is not None:
        why = f" (time limit of {args.time_limit:g} s reached)"
    else:
        why = ""
    print(f"Done: {epochs} epochs, {history.steps} steps in {history.seconds:.1f} s on {history.device}{why}.")
    if history.best_val is not None:
        print(f"Best validation energy distance: {history.best_val:.4g} at epoch {history.best_epoch}.")
    else:
        print("Best validation energy distance: n/a (no validation cells; the final weights were saved).")
    print(f"Checkpoint saved to {out} (inspect with: {PROG} info {out}).")
    distributed.shutdown()
    return EXIT_OK


def _parse_target(text: str, registry: PerturbationRegistry) -> tuple[Target, bool]:
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


def _prepare_source(adata: ad.AnnData, model: PerturbationModel, source: str) -> ad.AnnData:
    """Apply the checkpoint's recorded preprocessing to raw counts and align the genes."""
    from ..data.registry import detect_x_kind, preprocess

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
        print(f"Using the model's {reg.n_genes} of the {len(genes)} genes of {source}.")
    reg.check_genes(adata, source)
    return adata


def _write_h5ad_atomic(adata: ad.AnnData, path: Path) -> None:
    if path.is_dir():
        raise DataError(f"--out {path} is a directory; give a file name such as pred.h5ad.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def cmd_predict(args: argparse.Namespace) -> int:
    import anndata as ad
    import numpy as np
    import pandas as pd

    from ..data.registry import condition_column
    from ..models.checkpoint import load_checkpoint

    model = load_checkpoint(args.checkpoint, accelerator=args.accelerator)
    reg = model.registry
    targets: dict[str, tuple[str, Target]] = {}  # output name -> (as written, model target)
    for text in args.target:
        tgt, has_doses = _parse_target(text, reg)
        label = reg.label_vector(tgt)  # validates every target before any work
        name = reg.condition_name(label) if has_doses else text.strip()
        targets.setdefault(name, (text, tgt))

    adata, source = _load_data(args)
    src_label = args.source_condition or reg.control_label
    conds = condition_column(adata, reg.perturbation_key)
    mask = conds == src_label
    if not mask.any():
        raise DataError(
            f"No cells of source condition {src_label!r} in column {reg.perturbation_key!r} of {source} "
            f"(conditions present: {_preview(sorted(set(conds)), 12)}); pass --source-condition."
        )
    src = _prepare_source(adata[mask].copy(), model, source)
    n_src = src.n_obs
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
            pred = pred[np.sort(rng.choice(pred.n_obs, size=args.n_cells, replace=False))].copy()
        check = model.extrapolation_check(tgt)
        name = str(pred.uns["pdae_prediction"]["target"])
        shown = text.strip() if name == text.strip() else f"{text.strip()} (as {name})"
        print(f"{shown}: {pred.n_obs} cells from {n_src} {src_label!r} cells. {check.message}")
        rows.append({
            "target": name, "in_span": bool(check.in_span), "measured_in_training": bool(check.measured_in_training),
            "residual": float(check.residual), "unseen_perturbations": ",".join(check.unseen_perturbations),
            "message": check.message,
        })
        preds.append(pred)
    out = ad.concat(preds, join="outer", merge="same") if len(preds) > 1 else preds[0]
    out.uns = {}
    out.uns["pdae_prediction"] = {
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "model_type": model.model_type,
        "source": source,
        "source_condition": src_label,
        "n_source_cells": int(n_src),
        "seed": int(args.seed),
        "targets": [r["target"] for r in rows],
        "preprocessing": json.dumps(reg.preprocessing),
    }
    out.uns["pdae_extrapolation"] = pd.DataFrame(rows).set_index("target", drop=False).rename_axis(None)
    dest = Path(args.out)
    _write_h5ad_atomic(out, dest)
    print(f"Wrote {out.n_obs} predicted cells ({len(rows)} target(s) x {out.n_vars} genes) to {dest}.")
    return EXIT_OK


def checkpoint_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Everything `pdae info` shows, as a JSON-ready dict (validates the checkpoint)."""
    from .._version import __version__
    from ..models.checkpoint import load_checkpoint, read_config

    cfg = read_config(path)
    model = load_checkpoint(path, accelerator="cpu")  # verifies the weights and their checksum
    reg = model.registry
    hist = model.history
    records = hist.records if hist else []
    return {
        "path": str(Path(path)),
        "model_type": model.model_type,
        "library_version": cfg.get("library_version"),
        "current_library_version": __version__,
        "n_genes": reg.n_genes,
        "genes": list(reg.gene_names),
        "perturbation_key": reg.perturbation_key,
        "control_label": reg.control_label,
        "separator": reg.separator,
        "dose_key": reg.dose_key,
        "covariate_key": reg.covariate_key,
        "layer": reg.layer,
        "x_kind": reg.x_kind,
        "n_perturbations": reg.n_perturbations,
        "perturbations": list(reg.perturbations),
        "train_conditions": list(model.train_conditions),
        "holdout": list(model.holdout),
        "model_config": model.config.to_dict(),
        "train_config": model.train_config.to_dict() if model.train_config else None,
        "trained": model.is_trained,
        "best_val_ed": hist.best_val if hist else None,
        "best_epoch": hist.best_epoch if hist else None,
        "epochs_run": int(records[-1]["epoch"]) if records else 0,
        "steps": hist.steps if hist else 0,
        "seconds": hist.seconds if hist else 0.0,
        "device": hist.device if hist else None,
        "stopped_early": hist.stopped_early if hist else False,
        "preprocessing": dict(reg.preprocessing),
        "weights_sha256": cfg.get("weights_sha256"),
    }


def _kv(d: dict[str, Any] | None) -> str:
    if not d:
        return "none recorded"
    return ", ".join(f"{k}={v}" for k, v in d.items())


def cmd_preprocess(args: argparse.Namespace) -> int:
    from ..data.registry import read_h5ad
    from ..data.streaming import preprocess_on_disk

    dst = Path(args.dst)
    if dst.exists() and not args.overwrite:
        raise DataError(f"{dst} exists; pass --overwrite to replace it.")
    if dst.resolve() == Path(args.src).resolve():
        raise DataError("OUT.h5ad must differ from RAW.h5ad (the input is never modified).")
    backed = read_h5ad(args.src, backed=True)  # checks the file with a clear message
    shape = backed.shape
    backed.file.close()
    t0 = time.perf_counter()
    steps = preprocess_on_disk(args.src, dst, target_sum=args.target_sum, n_top_genes=args.n_top_genes,
                               chunk_size=args.chunk_size)
    genes = args.n_top_genes if "highly_variable_genes" in steps else shape[1]
    print(f"Wrote {dst}: {shape[0]} cells x {genes} genes, normalize_total({args.target_sum:g}) + log1p"
          + (f" + {genes} highly variable genes" if "highly_variable_genes" in steps else "")
          + f" in {time.perf_counter() - t0:.1f} s.")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    s = checkpoint_summary(args.checkpoint)
    if args.json:
        print(json.dumps(s, indent=1))
        return EXIT_OK
    opt = lambda v: "-" if v is None else repr(v)  # noqa: E731
    lines = [
        f"Checkpoint:       {s['path']}",
        f"Model type:       {s['model_type']} (saved by pdae_core {s['library_version']}; this is {s['current_library_version']})",
        f"Genes:            {s['n_genes']} ({_preview(s['genes'], 5)})",
        f"Perturbations:    {s['n_perturbations']} ({_preview(s['perturbations'], 20)})",
        f"Column:           {s['perturbation_key']!r}; control {s['control_label']!r}; separator {s['separator']!r}",
        f"Dose / covariate: {opt(s['dose_key'])} / {opt(s['covariate_key'])}; layer {opt(s['layer'])}",
        f"Trained on:       {len(s['train_conditions'])} conditions ({_preview(s['train_conditions'], 12)})",
        "Held out:         " + (f"{len(s['holdout'])} conditions ({_preview(s['holdout'], 12)})" if s["holdout"] else "none"),
    ]
    if not s["trained"]:
        lines.append("Training:         not trained")
    else:
        best = f"{s['best_val_ed']:.4g} at epoch {s['best_epoch']}" if s["best_val_ed"] is not None else "n/a"
        lines.append(f"Best val ED:      {best}")
        lines.append(
            f"Training:         {s['epochs_run']} epochs, {s['steps']} steps, {s['seconds']:.1f} s on {s['device']}"
            + (" (stopped early)" if s["stopped_early"] else "")
        )
    lines += [
        f"Preprocessing:    {_kv(s['preprocessing'])}",
        f"Model config:     {_kv({k: v for k, v in s['model_config'].items() if k not in ('n_genes', 'n_perturbations')})}",
        f"Training config:  {_kv(s['train_config'])}",
    ]
    print("\n".join(lines))
    return EXIT_OK


class _BenchmarkProgress:
    """Renders the runner's progress events: a line per stage, a tqdm bar over each fit's epochs."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: tqdm | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        from ..eval.benchmark import format_event

        if event.get("stage") == "epoch":
            if self.bar is None:
                self.bar = tqdm(total=event.get("max_epochs") or None, unit="epoch", file=sys.stderr,
                                desc=f"{event.get('model')} seed {event.get('seed')}", dynamic_ncols=True, leave=False)
            self.bar.update(int(event["epoch"]) - self.bar.n)
            if event.get("val_ed") is not None:
                self.bar.set_postfix({"val_ed": f"{event['val_ed']:.4g}"}, refresh=False)
            return
        self.close()
        print(format_event(event), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _command_line(args: argparse.Namespace) -> str:
    import shlex

    return shlex.join([PROG, *getattr(args, "argv", [])])


def _stamp(path: Path, command: str) -> None:
    """Put the command that made a results file on its first line (an HTML comment)."""
    text = path.read_text()
    if text.startswith("<!-- generated by:"):
        text = text.split("\n", 1)[1]
    path.write_text(f"<!-- generated by: {command} -->\n{text}")


def _is_profiles(adata: ad.AnnData) -> bool:
    meta = adata.uns.get("pdae_dataset")
    return hasattr(meta, "get") and meta.get("values") == "lfc_vs_control"


def cmd_benchmark(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is a file; the benchmark writes a folder.")
    if args.data is not None:
        _check_file_flags(args)
        from ..data.registry import read_h5ad

        adata = read_h5ad(args.data)
        name = Path(args.data).name
    else:
        ds = _datasets_module()
        if args.dataset not in ds.list_datasets():
            raise DataError(f"Unknown dataset {args.dataset!r}; built-in datasets: {', '.join(ds.list_datasets())}.")
        adata = ds.load_dataset(args.dataset, data_dir=args.data_dir, download=args.download,
                                **_dataset_options(args.dataset_options))
        name = args.dataset
    level = args.level if args.level != "auto" else ("pseudobulk" if _is_profiles(adata) else "cells")
    progress = _BenchmarkProgress(args.quiet)
    t0 = time.perf_counter()
    try:
        if level == "pseudobulk":
            _benchmark_pseudobulk(args, adata, name, out, progress)
        else:
            _benchmark_cells(args, adata, name, out, progress)
    finally:
        progress.close()
    print(f"benchmark written to {out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print((out / "summary.md").read_text())
    return EXIT_OK


def _benchmark_cells(args: argparse.Namespace, adata: ad.AnnData, name: str, out: Path, progress: Any) -> None:
    from ..eval.benchmark import BenchmarkSpec, benchmark_dataset

    train: dict[str, Any] = {}
    if args.epochs is not None:
        train["max_epochs"] = args.epochs
    if args.time_limit is not None:
        train["time_limit_s"] = args.time_limit
    spec = BenchmarkSpec(
        models=args.models or "pdae,additive,linear,control",
        seeds=list(range(args.seeds)),
        test_fraction=args.test_fraction,
        holdout=_holdout(args.holdout) or None,
        n_boot=args.n_boot,
        train=train,
        accelerator=args.accelerator,
        max_source_cells=args.max_source_cells,
        exclude=list(args.exclude),
        perturbation_key=args.perturbation_key,
        control_label=args.control,
        dataset_options=_dataset_options(args.dataset_options),
        highlight=args.highlight,
    )
    spec.check_models()
    label = args.dataset if args.dataset is not None else args.data
    benchmark_dataset(label, spec, out, progress=progress, overwrite=args.overwrite, adata=adata)
    _stamp(out / "summary.md", _command_line(args))


def _benchmark_pseudobulk(args: argparse.Namespace, adata: ad.AnnData, name: str, out: Path, progress: Any) -> None:
    from ..eval import pseudobulk as pb

    for flag, given in (("--holdout", bool(args.holdout)), ("--exclude", bool(args.exclude)),
                        ("--highlight", args.highlight is not None), ("--epochs", args.epochs is not None),
                        ("--time-limit", args.time_limit is not None)):
        if given:
            raise DataError(f"{flag} applies to the single-cell benchmark (--level cells), not to --level pseudobulk.")
    meta = _dataset_defaults(adata)
    profiles = pb.profiles_from_anndata(
        adata,
        perturbation_key=args.perturbation_key or meta.get("perturbation_key") or "condition",
        control_label=args.control or meta.get("control_label") or "control",
        separator=meta.get("separator") or "+",
    )
    models = [m.strip() for m in (args.models or "additive,linear,pdae").split(",") if m.strip()]
    df = pb.run_pseudobulk_benchmark(
        profiles, models=models, k=args.folds, seeds=tuple(range(args.seeds)),
        progress=None if args.quiet else (lambda msg: progress({"stage": "pseudobulk", "message": msg})),
    )
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "per_condition.csv", index=False)
    summary = pb.summarise_pseudobulk(df)
    summary.to_csv(out / "summary.csv", index=False)
    header = [f"# Pseudobulk benchmark: {name}", "",
              f"- {profiles.n_conditions} "
              f"condition profiles x {profiles.n_genes} genes; models: {', '.join(models)}; seeds: "
              f"{', '.join(map(str, range(args.seeds)))}",
              f"- {args.folds}-fold split of the doubles whose singles are both present (the other doubles and all "
              "singles always train); each double is predicted once per seed by the models fitted without its fold",
              "- Pearson delta: correlation of the predicted and observed change from control, over all genes and "
              "over each double's top-20 genes by observed |change|",
              "- no noise-floor row: profiles carry no cells to split in halves, so the sampling noise of each "
              "profile cannot be estimated here (the single-cell tables have one)"]
    diffs = pb.paired_differences(df) if "additive" in models else None
    (out / "summary.md").write_text(pb.pseudobulk_markdown(summary, diffs, header) + "\n")
    _stamp(out / "summary.md", _command_line(args))


def cmd_datasets(args: argparse.Namespace) -> int:
    known = _datasets_module().list_datasets()
    if args.json:
        print(json.dumps(dict(known), indent=1))
        return EXIT_OK
    width = max((len(n) for n in known), default=0)
    for name, desc in known.items():
        print(f"{name:<{width}}  {desc}")
    print(f"\nUse with: {PROG} train --dataset NAME --out CHECKPOINT_DIR")
    return EXIT_OK


# ---------------------------------------------------------------------------------
# entry point


def _exit_code(code: object) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``pdae`` command line; returns the exit code (0 ok, 2 error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return _exit_code(e.code)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    args.argv = list(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.perf_counter() - t0:.0f} s.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `pdae info ckpt --json | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except (PDAEError, ValueError, FileNotFoundError, FloatingPointError, OSError) as e:
        print(f"error: {e}" if str(e) else f"error: {type(e).__name__}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
