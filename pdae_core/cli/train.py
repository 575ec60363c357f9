"""``pdae train``: train a model on an AnnData file or a built-in dataset and save a checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.defaults import dataset_defaults
from ..errors import CheckpointError, DataError
from ..train import distributed
from .common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    PROG,
    HelpFormatter,
    TqdmProgress,
    add_data_args,
    add_threads_arg,
    check_output_not_input,
    finite_float,
    holdout_list,
    load_data,
    non_negative_int,
    positive_int,
    preview,
)
from .model_flags import add_model_flags, hyperparameters

DEFAULT_MODEL = "pdae"
PROFILE_MODEL = "pdae_profile"  # the model type of --level pseudobulk

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

  # another model type; `pdae train --model samsvae --help` lists its hyperparameters
  pdae train --data cells.h5ad --model samsvae --latent-dim 8 --out ckpt/

Press Ctrl-C to abort: nothing is written (exit code 130)."""


class _QuietParser(argparse.ArgumentParser):
    """An argument parser that raises instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def selected_model(argv: Sequence[str]) -> str:
    """The --model of a ``train`` command line (read before the full parser is built, whose
    hyperparameter flags depend on it); the default model when absent, unknown or not ``train``."""
    from ..models.catalog import MODEL_TYPES

    argv = list(argv)
    if not argv or argv[0] != "train":
        return DEFAULT_MODEL
    pre = _QuietParser(add_help=False)
    pre.add_argument("--model", default=None)
    pre.add_argument("--level", default="cells")
    try:
        known, _ = pre.parse_known_args(argv[1:])
    except ValueError:
        return DEFAULT_MODEL
    if known.model is None:
        return PROFILE_MODEL if known.level == "pseudobulk" else DEFAULT_MODEL
    return known.model if known.model in MODEL_TYPES else DEFAULT_MODEL


def add_parser(sub: Any, model: str = DEFAULT_MODEL) -> None:
    """Register ``train`` with the hyperparameter flags of ``model``."""
    from ..data.genes import DEFAULT_MAX_GENES
    from ..models.catalog import MODEL_TYPES
    from ..train.loop import TrainConfig

    t = sub.add_parser(
        "train",
        help="train a model on an AnnData file or a built-in dataset and save a checkpoint",
        description="Train a model on every cell except those of the --holdout conditions and save "
        "it as a checkpoint directory (model.safetensors + config.json). Column names and the control "
        "label default to the dataset's uns['pdae_dataset'] when present, else 'condition' and an "
        "auto-detected control label (control, ctrl, non-targeting, NT, ...). The model hyperparameter "
        "flags are those of the selected --model.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add_data_args(t)
    t.add_argument("--out", required=True, metavar="CHECKPOINT_DIR", help="checkpoint directory to write")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoint in --out (a README.md there is kept; a folder with other "
                   "files is always refused)")
    k = t.add_argument_group("how the data encodes perturbations")
    k.add_argument("--perturbation-key", metavar="KEY", help="obs column with the condition of each cell "
                   "(default: the dataset's, else 'condition')")
    k.add_argument("--control", metavar="LABEL", help="label of the control cells (default: the dataset's, "
                   "else auto-detected)")
    k.add_argument("--separator", metavar="SEP", help="joins the perturbations of a combination "
                   "(default: the dataset's, else '+')")
    k.add_argument("--dose-key", metavar="KEY", help="obs column with the dose of each cell (optional)")
    k.add_argument("--covariate-key", metavar="KEY", help="obs column with the context of each cell (cell type, "
                   "cell line): PDAE and FCR learn one shift per context; context names may contain '+'")
    k.add_argument("--atomic-label", action="append", default=[], metavar="NAME",
                   help="a perturbation name that contains the separator but is one perturbation "
                   "(e.g. IFNB+TNF given as one treatment); repeatable")
    k.add_argument("--layer", metavar="NAME", help="use adata.layers[NAME] instead of X")
    pp = t.add_argument_group("preprocessing")
    pp.add_argument("--preprocess", action="store_true",
                    help="normalise raw counts (normalize_total + log1p) with pdae_core.preprocess; recorded "
                    "in the checkpoint and re-applied by `pdae predict`")
    pp.add_argument("--n-top-genes", type=positive_int, metavar="N",
                    help="with --preprocess: keep the N most highly variable genes")
    tr = t.add_argument_group("training")
    tr.add_argument("--holdout", action="append", default=[], metavar="A+B,C+D",
                    help="conditions to leave out of training (comma-separated; repeatable); with --covariate-key, "
                    "CONDITION@CONTEXT leaves out one condition in one context only (e.g. stimulated@CD4T)")
    tr.add_argument("--model", default=model, choices=sorted(MODEL_TYPES), help="model type")
    tr.add_argument("--level", choices=["cells", "pseudobulk"], default="cells",
                    help="cells: single cells; pseudobulk: one profile (or table of changes from control) per "
                    f"condition, trained with the {PROFILE_MODEL} model type and its full-batch defaults")
    _d = TrainConfig(**MODEL_TYPES[model].train_defaults)
    tr.add_argument("--epochs", type=positive_int, metavar="N", default=_d.max_epochs,
                    help="maximum number of epochs")
    tr.add_argument("--steps", type=non_negative_int, metavar="N", default=_d.budget_steps or 0,
                    help="training budget in optimiser steps: when --epochs would take more steps (large data), "
                    "training takes N steps and the learning-rate schedule spans them, so time does not grow with "
                    "the number of cells; 0: --epochs whatever the size")
    tr.add_argument("--max-genes", type=non_negative_int, metavar="N", default=DEFAULT_MAX_GENES,
                    help="with more genes than this, train on the N most variable, chosen on the training cells "
                    "only (0: every gene)")
    tr.add_argument("--lr", type=finite_float, metavar="LR", default=_d.lr, help="Adam learning rate")
    tr.add_argument("--batch-size", type=positive_int, metavar="N", default=_d.batch_size,
                    help="cells per mini-batch")
    tr.add_argument("--patience", type=positive_int, metavar="N", default=_d.patience,
                    help="stop after this many evaluations without a better validation energy distance")
    tr.add_argument("--val-fraction", type=finite_float, metavar="F", default=_d.val_fraction,
                    help="fraction of each condition's cells used for validation")
    tr.add_argument("--seed", type=int, metavar="N", default=0, help="seed of the initial weights, batches and split")
    tr.add_argument("--ensemble", type=positive_int, metavar="N", default=1,
                    help="train N networks with seeds SEED..SEED+N-1 and save them as one checkpoint: predictions "
                    "pool their cells and report the spread of the change across them (default 1: one network)")
    tr.add_argument("--cross-fit", action="store_true",
                    help="with --ensemble N: leave a different 1/N of the training doubles out of each network and "
                    "calibrate split-conformal intervals (per-gene change, interaction metrics) on them")
    tr.add_argument("--accelerator", default="auto", metavar="{auto,cpu,cuda,mps}",
                    help="device: auto picks CUDA, then Apple MPS, then the CPU (also cuda:N)")
    tr.add_argument("--time-limit", type=finite_float, metavar="SECONDS",
                    help="stop training after this many seconds (the best weights so far are saved)")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    perf = t.add_argument_group("performance and scale")
    perf.add_argument("--backed", action="store_true",
                      help="with --data: stream X from the .h5ad on disk, one mini-batch at a time, instead of "
                      "loading it (for data larger than memory; preprocess it first with `pdae preprocess`)")
    perf.add_argument("--precision", choices=["32", "bf16-mixed", "16-mixed"], default=_d.precision,
                      help="autocast precision of the networks (losses stay float32); bf16-mixed suits recent GPUs")
    add_threads_arg(perf)
    perf.add_argument("--compile", action="store_true", help="torch.compile the loss computation")
    perf.add_argument("--max-steps", type=positive_int, metavar="N", help="stop after N optimiser steps")
    add_model_flags(t, model)
    t.set_defaults(func=run)


def _check_settings(args: argparse.Namespace) -> None:
    """Fail fast on settings, before reading data or training."""
    for flag in ("perturbation_key", "control", "separator", "dose_key", "covariate_key", "layer"):
        value = getattr(args, flag)
        if value is not None and not (value if flag == "separator" else value.strip()):
            name = "--" + flag.replace("_", "-")
            raise DataError(f"{name} is empty: give a value, or leave {name} out to use the default.")
    if args.n_top_genes is not None and not args.preprocess:
        raise DataError("--n-top-genes selects genes during preprocessing; add --preprocess.")
    if args.time_limit is not None and args.time_limit <= 0:
        raise ValueError("--time-limit must be > 0 seconds.")
    if args.backed and (args.data is None or args.preprocess):
        raise DataError("--backed streams an .h5ad given with --data, already log-normalised "
                        "(run `pdae preprocess RAW.h5ad OUT.h5ad` first; --preprocess needs the data in memory).")


def _prepare_data(args: argparse.Namespace) -> tuple[Any, Any, str, str]:
    """Load the data, resolve its keys (flags, else the dataset's recorded defaults) and
    preprocess it; returns (adata, registry, source description, perturbation column)."""
    from ..data.columns import detect_control
    from ..data.registry import condition_column, detect_x_kind, preprocess, setup_anndata

    adata, source = load_data(args, profiles_ok=args.level == "pseudobulk")
    defaults = dataset_defaults(adata)
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
            f"(obs columns: {preview(list(adata.obs.columns), 20)})."
        )
    from ..data.registry import is_change_table

    if is_change_table(adata) and args.level != "pseudobulk":
        raise DataError(
            f"{source} holds changes from control (one profile per condition), not single cells: train the "
            "profile model on it with --level pseudobulk."
        )
    if args.level == "pseudobulk":  # a table of changes from control gets its zero control row
        from ..models.pdae_profile import with_control_row

        n = adata.n_obs
        adata = with_control_row(adata, key, control or "control")
        if adata.n_obs > n:
            control = control or "control"
            print(f"{source} holds changes from control: added a control row of zeros ({control!r}).")
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
    registry = setup_anndata(adata, key, control, separator, dose_key, covariate_key, layer,
                             atomic_labels=getattr(args, "atomic_label", []))
    return adata, registry, source, key


def _check_holdout(holdout: list[str], registry: Any) -> None:
    control = registry.control_label
    if control in holdout:
        raise DataError(
            f"--holdout {control}: the control condition ({control!r}) cannot be held out: every model learns "
            "and predicts perturbations relative to the control cells. Hold out perturbed conditions only."
        )


def run(args: argparse.Namespace) -> int:
    """``pdae train``."""
    from ..models.checkpoint import check_output_dir, clean_leftovers
    from ..models.output_lock import output_lock

    _check_settings(args)
    # under torchrun: one process per device, rank 0 prints and saves (see pdae_core.train.distributed)
    world = distributed.init_from_env()
    out = Path(args.out)
    if not distributed.is_main_process():
        return _train(args, out, world, main_process=False)
    # before reading data or training: the output must be writable and hold nothing but a checkpoint,
    # and it stays locked for the whole run, so that a second `pdae train --out SAME` is refused at once
    check_output_not_input(out, {"--data": args.data})
    check_output_dir(out, args.overwrite, flag="--overwrite")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"Cannot create the folder {out.parent} for --out: {e.strerror or e}.") from None
    with output_lock(out, f"--out {out}"):
        clean_leftovers(out, locked=True)  # may put back a checkpoint whose save was killed midway
        check_output_dir(out, args.overwrite, flag="--overwrite")
        return _train(args, out, world, main_process=True)


def _train(args: argparse.Namespace, out: Path, world: int, main_process: bool) -> int:
    from ..data.contexts import parse_holdout
    from ..data.registry import condition_column
    from ..models.catalog import MAX_MEMBERS, MODEL_TYPES, build_model
    from ..train.loop import TrainConfig, resolve_device

    device = distributed.local_device(resolve_device(args.accelerator))
    defaults = MODEL_TYPES[args.model].train_defaults  # e.g. full batches for profiles
    train_config = TrainConfig(**{
        **defaults,
        "max_epochs": args.epochs, "budget_steps": args.steps or None, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
        "accelerator": args.accelerator, "time_limit_s": args.time_limit, "patience": args.patience,
        "val_fraction": args.val_fraction,
        "cells_per_condition": min(defaults.get("cells_per_condition", TrainConfig().cells_per_condition),
                                   args.batch_size),
        "precision": args.precision, "compile": args.compile, "max_steps": args.max_steps, "threads": args.threads,
    })
    say = print if main_process else (lambda *a, **k: None)
    cls = MODEL_TYPES[args.model]
    if args.level == "pseudobulk" and not cls.accepts_changes:
        raise ValueError(f"--level pseudobulk trains the {PROFILE_MODEL} model type, not {args.model!r}.")
    hp = hyperparameters(args)
    try:
        cls.config_class(n_genes=1, n_perturbations=1, **hp)
    except TypeError as e:
        raise ValueError(f"{args.model}: unsupported hyperparameter ({e})") from None
    if args.ensemble > MAX_MEMBERS:
        raise ValueError(f"--ensemble {args.ensemble}: an ensemble has at most {MAX_MEMBERS} networks.")
    if args.cross_fit and args.ensemble < 2:
        raise ValueError("--cross-fit needs --ensemble N with N >= 2 (each network leaves out 1/N of the doubles).")

    adata, registry, source, key = _prepare_data(args)
    holdout = holdout_list(args.holdout)
    _check_holdout(holdout, registry)
    if holdout:
        holdout = [it.name for it in parse_holdout(holdout, adata, registry)]  # checks every item has cells
    if args.level == "cells" and args.max_genes and adata.n_vars > args.max_genes:
        from ..data.contexts import training_mask
        from ..data.genes import cap_genes

        adata, registry, note = cap_genes(adata, registry, args.max_genes, training_mask(adata, registry, holdout)[0])
        say(note)
    if args.ensemble > 1:
        model = build_model(args.model, registry, seed=args.seed, n_members=args.ensemble,
                            **({"cross_fit": True} if args.cross_fit else {}), **hp)
    else:
        model = cls(registry, seed=args.seed, **hp)
    n_cond = len(set(condition_column(adata, key)))
    say(
        f"Data: {source}: {adata.n_obs} cells x {adata.n_vars} genes, {n_cond} conditions, "
        f"{registry.n_perturbations} perturbations; column {key!r}, control {registry.control_label!r}, "
        f"separator {registry.separator!r}" + (f"; held out: {', '.join(holdout)}" if holdout else "")
        + ("; X streamed from disk" if args.backed else "")
    )
    say(f"Training {args.model}" + (f" (an ensemble of {args.ensemble} networks, one after the other)"
                                     if args.ensemble > 1 else "") + f" on {device}"
        + (f" ({args.threads_used} thread{'s' * (args.threads_used != 1)})"
           if device.type == "cpu" and getattr(args, "threads_used", None) else "")
        + (f" x {world} processes" if world > 1 else "")
        + f" for at most {args.epochs} epochs" + (f" or {args.steps} steps, whichever is fewer" if args.steps else "")
        + (f" / {args.time_limit:g} s" if args.time_limit else "") + ".")

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
        model.save(out, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print("\ninterrupted while saving: no checkpoint written.", file=sys.stderr)
        return EXIT_INTERRUPTED

    epochs = history.records[-1]["epoch"] if history.records else 0
    if history.stopped_early:
        why = f" (early stop: no better validation ED for {train_config.patience} evaluations)"
    elif epochs < args.epochs and args.time_limit is not None and history.seconds >= args.time_limit:
        why = f" (time limit of {args.time_limit:g} s reached)"
    else:
        why = ""
    print(f"Done: {epochs:g} epochs, {history.steps} steps in {history.seconds:.1f} s on {history.device}{why}.")
    cal = getattr(model, "calibration", None)
    if cal is not None:
        print(f"Intervals calibrated on {cal.n} training doubles, each left out of one network"
              + ("" if cal.n >= 19 else " (too few for 95% intervals: they are infinite)") + ".")
    if history.best_val is not None and args.ensemble > 1:
        print(f"Best validation energy distance, mean over the {args.ensemble} networks: {history.best_val:.4g}.")
    elif history.best_val is not None:
        print(f"Best validation energy distance: {history.best_val:.4g} at epoch {history.best_epoch:g}.")
    else:
        print("Best validation energy distance: n/a (no validation cells; the final weights were saved).")
    print(f"Checkpoint saved to {out} (inspect with: {PROG} info {out}).")
    distributed.shutdown()
    return EXIT_OK
