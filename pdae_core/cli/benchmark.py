"""``pdae benchmark``: compare models and baselines on held-out combinations (metrics, tables,
figures), at the single-cell level or on per-condition pseudobulk profiles."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.defaults import dataset_defaults, holds_profiles
from ..errors import DataError
from .common import (
    EXIT_OK,
    PROG,
    HelpFormatter,
    add_data_args,
    add_threads_arg,
    check_file_flags,
    check_not_empty,
    check_output_not_input,
    dataset_options,
    datasets_module,
    finite_float,
    holdout_list,
    non_negative_int,
    positive_int,
    printable,
)

if TYPE_CHECKING:
    import anndata as ad
    from tqdm import tqdm

BENCHMARK_EXAMPLES = """\
examples:
  pdae benchmark --dataset norman19_devel --models pdae,additive,linear,control,pool --seeds 3 \\
      --holdout KLF1+MAP2K6,MAP2K3+SLC38A2,MAP2K3+MAP2K6,MAPK1+TGFBR2,KLF1+TGFBR2 --out bench/norman
  pdae benchmark --dataset schraivogel20 --models additive,linear,control,pool --seeds 3 --out bench/tapseq
  pdae benchmark --dataset norman19_pseudobulk --level pseudobulk --out bench/pseudobulk
  pdae benchmark --data my_pseudobulk.h5ad --level pseudobulk --control control --out bench/mine
  pdae benchmark --dataset norman19_pseudobulk --task interactions --seeds 3 --out bench/interactions
  pdae benchmark --dataset mcfaline23_devel --task context --models pdae,fcr --seeds 3 --out bench/context"""


def add_parser(sub: Any) -> None:
    """Register ``benchmark``."""
    b = sub.add_parser(
        "benchmark",
        help="compare models and baselines on held-out combinations (metrics, tables, figures)",
        description="Train each model on each split, predict every held-out combination from the control "
        "cells, and write a tidy per-condition CSV, a summary table (mean +- sd over seeds, and pooled over "
        "conditions with a bootstrap interval) and plotly figures to --out. A split holds out a fraction of "
        "the doubles (all singles and the control stay in training); each test double is tagged by how many "
        "of its parts were seen alone (seen 0/1/2). Finished (model, seed) pairs are reused when the same "
        "command is run again. --level pseudobulk runs the mean-level track on per-condition profiles "
        "(k-fold over the doubles; Pearson delta over all genes and the top-20 genes). --task interactions "
        "(pseudobulk) scores how well each model predicts the genetic interaction of every held-out double "
        "(Norman et al. 2019 magnitude, normalised non-additive residual, the non-additive part itself) against "
        "the additive, scaled additive, linear, heuristic-regression, propensity and random baselines.",
        epilog=BENCHMARK_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add_data_args(b)
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (created; reused to resume)")
    b.add_argument("--task", choices=["combinations", "interactions", "context"], default="combinations",
                   help="combinations: predict held-out combinations (Pearson delta, energy distance); "
                   "interactions (pseudobulk only): rank the held-out doubles' genetic interactions; "
                   "context: predict each perturbation in a context (cell type, line) where it was held out, "
                   "from that context's control cells, with identity preservation per model")
    b.add_argument("--covariate-key", metavar="KEY", help="--task context: obs column of the context "
                   "(default: the dataset's, e.g. cell_type)")
    b.add_argument("--context-folds", choices=["context", "pair"], default="context",
                   help="--task context: hold out every perturbation of one context at a time, or one "
                   "(perturbation, context) pair at a time")
    b.add_argument("--contexts", metavar="A,B", help="--task context: only these contexts' folds")
    b.add_argument("--level", choices=["auto", "cells", "pseudobulk"], default="auto",
                   help="cells: single-cell distributions; pseudobulk: one profile per condition "
                   "(auto: pseudobulk for datasets of per-condition profiles)")
    b.add_argument("--models", metavar="M1,M2", help="comma-separated models (cells: pdae, additive, "
                   "scaled_additive, linear, control, pool, pdae_ensemble (5 cross-fitted networks, intervals checked on "
                   "the held-out doubles) and any registered model type; default "
                   "pdae,additive,scaled_additive,linear,control; pseudobulk: additive, scaled_additive, linear, "
                   "pdae; default all four; --task interactions: additive, scaled_additive, linear, heuristic, "
                   "propensity, partners, pair_kernel, pair_kernel_profile, random, pdae, pdae_ensemble, pdae_stacked; default "
                   "all twelve)")
    b.add_argument("--seeds", type=positive_int, default=3, metavar="N", help="run seeds 0..N-1")
    b.add_argument("--holdout", action="append", default=[], metavar="A+B,C+D",
                   help="cells: the same held-out conditions for every seed (default: a random "
                   "--test-fraction of the doubles per seed)")
    b.add_argument("--test-fraction", type=finite_float, default=0.3, metavar="F",
                   help="cells: fraction of the doubles held out per seed")
    b.add_argument("--folds", type=positive_int, default=5, metavar="K", help="pseudobulk: folds over the doubles")
    b.add_argument("--n-boot", type=non_negative_int, metavar="N",
                   help="bootstrap resamples: cells, of the energy distance intervals (default 200); "
                   "--task interactions, of the intervals over doubles (default 2000)")
    b.add_argument("--members", type=positive_int, default=5, metavar="N",
                   help="--task interactions: members of pdae_ensemble (cross-fitted; at least 2)")
    b.add_argument("--fit-method", choices=["lstsq", "theil_sen"], default="lstsq",
                   help="--task interactions: fit of dAB ~ c1 dA + c2 dB behind the magnitude")
    b.add_argument("--max-source-cells", type=positive_int, default=500, metavar="N",
                   help="cells: control cells moved to each target (a seeded subsample)")
    b.add_argument("--exclude", action="append", default=[], metavar="LABEL",
                   help="cells: conditions to drop entirely (e.g. unassigned); repeatable")
    b.add_argument("--highlight", metavar="A+B", help="condition of the predicted-vs-observed delta scatter "
                   "(default: the one with the largest effect)")
    b.add_argument("--perturbation-key", metavar="KEY", help="obs column with the condition of each cell")
    b.add_argument("--control", metavar="LABEL", help="label of the control cells")
    b.add_argument("--epochs", type=positive_int, metavar="N", help="trained models: maximum epochs")
    b.add_argument("--steps", type=non_negative_int, metavar="N",
                   help="trained models: budget in optimiser steps when the epochs would take more (default 6000; "
                   "0: the epochs whatever the size)")
    b.add_argument("--time-limit", type=finite_float, metavar="SECONDS",
                   help="trained models: stop each fit after this many seconds (results then depend on speed)")
    add_threads_arg(b)
    b.add_argument("--accelerator", default="auto", metavar="{auto,cpu,cuda,mps}", help="device of trained models")
    b.add_argument("--overwrite", action="store_true",
                   help="--out holds a run with other settings: redo the pairs that changed")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    b.set_defaults(func=run)


class BenchmarkProgress:
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
        print(printable(format_event(event)), file=sys.stderr, flush=True)

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


def run(args: argparse.Namespace) -> int:
    """``pdae benchmark``."""
    out = Path(args.out)
    check_output_not_input(out, {"--data": args.data})
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is a file; the benchmark writes a folder.")
    if args.data is not None:
        check_file_flags(args)
        from ..data.registry import read_h5ad

        adata = read_h5ad(args.data)
        check_not_empty(adata.n_obs, adata.n_vars, args.data)
        name = Path(args.data).name
    else:
        ds = datasets_module()
        if args.dataset not in ds.list_datasets():
            raise DataError(f"Unknown dataset {args.dataset!r}; built-in datasets: {', '.join(ds.list_datasets())}.")
        from ..errors import DatasetUnavailableError
        from .common import unavailable_message

        try:
            adata = ds.load_dataset(args.dataset, data_dir=args.data_dir, download=args.download,
                                    **dataset_options(args.dataset_options))
        except DatasetUnavailableError as e:  # what to do, worded for the command line (as common.load_data)
            raise DatasetUnavailableError(unavailable_message(e, args.download)) from None
        check_not_empty(adata.n_obs, adata.n_vars, f"dataset {args.dataset}")
        name = args.dataset
    level = args.level if args.level != "auto" else ("pseudobulk" if holds_profiles(adata) else "cells")
    progress = BenchmarkProgress(args.quiet)
    t0 = time.perf_counter()
    if args.task == "interactions" and level != "pseudobulk":
        raise DataError("--task interactions runs on per-condition profiles (--level pseudobulk); "
                        "the single-cell interaction benchmark is not available yet.")
    if args.task != "interactions":
        for flag, given in (("--members", args.members != 5), ("--fit-method", args.fit_method != "lstsq")):
            if given:
                raise DataError(f"{flag} applies to --task interactions.")
    if args.task != "context":
        for flag, given in (("--covariate-key", args.covariate_key is not None), ("--contexts", args.contexts is not None),
                            ("--context-folds", args.context_folds != "context")):
            if given:
                raise DataError(f"{flag} applies to --task context.")
    try:
        if args.task == "context":
            from .benchmark_context import benchmark_context

            benchmark_context(args, adata, name, out, progress)
            _stamp(out / "summary.md", _command_line(args))
        elif args.task == "interactions":
            _benchmark_interactions(args, adata, name, out, progress)
        elif level == "pseudobulk":
            _benchmark_pseudobulk(args, adata, name, out, progress)
        else:
            _benchmark_cells(args, adata, name, out, progress)
    finally:
        progress.close()
    print(f"benchmark written to {out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(printable((out / "summary.md").read_text(), newlines=True))
    return EXIT_OK


def _benchmark_cells(args: argparse.Namespace, adata: ad.AnnData, name: str, out: Path, progress: Any) -> None:
    from ..eval.benchmark import BenchmarkSpec, benchmark_dataset

    train: dict[str, Any] = {}
    if args.epochs is not None:
        train["max_epochs"] = args.epochs
    if args.steps is not None:
        train["budget_steps"] = args.steps or None
    if args.time_limit is not None:
        train["time_limit_s"] = args.time_limit
    spec = BenchmarkSpec(
        models=args.models or "pdae,additive,scaled_additive,linear,control",
        seeds=list(range(args.seeds)),
        test_fraction=args.test_fraction,
        holdout=holdout_list(args.holdout) or None,
        n_boot=200 if args.n_boot is None else args.n_boot,
        train=train,
        accelerator=args.accelerator,
        max_source_cells=args.max_source_cells,
        exclude=list(args.exclude),
        perturbation_key=args.perturbation_key,
        control_label=args.control,
        dataset_options=dataset_options(args.dataset_options),
        highlight=args.highlight,
    )
    spec.check_models()
    label = args.dataset if args.dataset is not None else args.data
    benchmark_dataset(label, spec, out, progress=progress, overwrite=args.overwrite, adata=adata)
    _stamp(out / "summary.md", _command_line(args))


def _profiles(args: argparse.Namespace, adata: ad.AnnData) -> Any:
    """The ProfileSet of a pseudobulk run; refuses the single-cell-only flags."""
    from ..eval import pseudobulk as pb

    for flag, given in (("--holdout", bool(args.holdout)), ("--exclude", bool(args.exclude)),
                        ("--highlight", args.highlight is not None), ("--epochs", args.epochs is not None),
                        ("--steps", args.steps is not None),
                        ("--time-limit", args.time_limit is not None)):
        if given:
            raise DataError(f"{flag} applies to the single-cell benchmark (--level cells), not to --level pseudobulk.")
    meta = dataset_defaults(adata)
    return pb.profiles_from_anndata(
        adata,
        perturbation_key=args.perturbation_key or meta.get("perturbation_key") or "condition",
        control_label=args.control or meta.get("control_label") or "control",
        separator=meta.get("separator") or "+",
    )


def _benchmark_pseudobulk(args: argparse.Namespace, adata: ad.AnnData, name: str, out: Path, progress: Any) -> None:
    from ..eval import pseudobulk as pb

    profiles = _profiles(args, adata)
    models = [m.strip() for m in (args.models or "additive,scaled_additive,linear,pdae").split(",") if m.strip()]
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


def _benchmark_interactions(args: argparse.Namespace, adata: ad.AnnData, name: str, out: Path, progress: Any) -> None:
    from ..eval.pseudobulk import interaction_report as report
    from ..eval.pseudobulk.interactions_track import DEFAULT_INTERACTION_MODELS, run_interaction_benchmark

    profiles = _profiles(args, adata)
    models = [m.strip() for m in (args.models or ",".join(DEFAULT_INTERACTION_MODELS)).split(",") if m.strip()]
    if {"pdae_ensemble", "pdae_stacked"} & set(models) and args.members < 2:
        raise DataError("--members must be >= 2 (the ensemble is cross-fitted).")
    seeds = tuple(range(args.seeds))
    df = run_interaction_benchmark(
        profiles, models=models, k=args.folds, seeds=seeds, n_members=args.members, method=args.fit_method,
        progress=None if args.quiet else (lambda msg: progress({"stage": "interactions", "message": msg})),
        cache_dir=out / "fold_rows",
    )
    out.mkdir(parents=True, exist_ok=True)
    report.write_interaction_tables(df, out, name=name, profiles=profiles, models=models, seeds=seeds,
                                    folds=args.folds, members=args.members, method=args.fit_method,
                                    n_boot=2000 if args.n_boot is None else max(1, args.n_boot))
    _stamp(out / "summary.md", _command_line(args))
