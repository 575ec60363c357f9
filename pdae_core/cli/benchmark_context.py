"""``pdae benchmark --task context``: each perturbation predicted in a context (cell type,
cell line) where it was held out (see :mod:`pdae_core.eval.benchmark.context`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..data.defaults import dataset_defaults
from ..errors import DataError

DEFAULT_MODELS = "pdae,fcr,pdae_no_context"


def benchmark_context(args: argparse.Namespace, adata: Any, name: str, out: Path, progress: Any) -> None:
    """Run the context benchmark and write ``per_pair.csv``, ``summary.csv`` and ``summary.md`` to ``out``."""
    from ..data.registry import setup_anndata
    from ..eval.benchmark.context import EXTRA_MODELS, run_context_benchmark, summarise_context
    from ..eval.benchmark.spec import available_models
    from .common import holdout_list

    if args.holdout or args.exclude or args.highlight is not None:
        raise DataError("--holdout, --exclude and --highlight apply to --task combinations; --task context holds "
                        "out (perturbation, context) pairs itself (--contexts, --context-folds).")
    meta = dataset_defaults(adata)
    key = args.covariate_key or meta.get("covariate_key")
    if key is None:
        raise DataError("--task context needs a context column: pass --covariate-key KEY (e.g. cell_type).")
    registry = setup_anndata(adata, args.perturbation_key or meta.get("perturbation_key") or "condition",
                             args.control or meta.get("control_label"), covariate_key=key)
    models = [m.strip() for m in (args.models or DEFAULT_MODELS).split(",") if m.strip()]
    known = set(available_models()) | set(EXTRA_MODELS)
    unknown = [m for m in models if m not in known]
    if unknown:
        raise DataError(f"Unknown model(s) {unknown}; --task context takes {', '.join(sorted(known))}.")
    train: dict[str, Any] = {"progress_bar": False}
    if args.epochs is not None:
        train["max_epochs"] = args.epochs
    if args.steps is not None:
        train["budget_steps"] = args.steps or None
    if args.time_limit is not None:
        train["time_limit_s"] = args.time_limit
    say = None if args.quiet else (lambda msg: progress({"stage": "context", "message": msg}))
    rows = run_context_benchmark(
        adata, registry, models=models, seeds=tuple(range(args.seeds)), folds=args.context_folds,
        contexts=holdout_list([args.contexts]) if args.contexts else None, train=train,
        n_boot=200 if args.n_boot is None else args.n_boot, accelerator=args.accelerator, progress=say,
    )
    out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / "per_pair.csv", index=False)
    summary = summarise_context(rows)
    summary.to_csv(out / "summary.csv", index=False)
    text = context_markdown(summary, name, key, models, args.seeds, args.context_folds, rows)
    (out / "summary.md").write_text(text + "\n")


def per_pair_markdown(rows: Any) -> str:
    """Per held-out pair: each model's energy distance (mean over seeds), the best in bold."""
    import numpy as np

    df = rows[rows["condition"] != "identity"]
    table = df.groupby(["pair", "model"])["energy_distance"].mean().unstack()
    order = [m for m in ("noise_floor", "no_change", "context_shift", "pooled_shift", "linear") if m in table]
    table = table[order + sorted(c for c in table.columns if c not in order)]
    lines = ["| pair | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
    for pair, r in table.iterrows():
        best = r.drop("noise_floor", errors="ignore").idxmin() if r.drop("noise_floor", errors="ignore").notna().any() else None
        cells = [("**%.3f**" if c == best else "%.3f") % v if np.isfinite(v) else "–" for c, v in r.items()]
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def context_markdown(summary: Any, name: str, key: str, models: list[str], seeds: int, folds: str,
                     rows: Any = None) -> str:
    """The summary table (and, with ``rows``, the per-pair table) as markdown, with what each column means."""
    fold_words = ("every perturbation of one context held out at a time" if folds == "context"
                  else "one (perturbation, context) pair held out at a time")
    lines = [
        f"# Context benchmark: {name}", "",
        f"- context column {key!r}; {fold_words}; models: {', '.join(models)}; seeds 0..{seeds - 1}",
        "- each held-out pair is predicted from its context's control cells; energy distance (ED, lower is better) "
        "to the observed cells, mean over pairs and seeds, 95% interval from a bootstrap over pairs; "
        "`beats_X`: pairs where the model's ED is below X's",
        "- identity: control predicted from one half of a context's control cells, ED to the other half; "
        "`identity_floor` is what returning the source cells unchanged scores", "",
        "| model | pairs | ED | 95% interval | MMD | Pearson delta | beats no change | beats context shift "
        "| identity ED | identity floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    def f(v: Any) -> str:
        try:
            return "–" if v != v else f"{float(v):.3f}"
        except (TypeError, ValueError):
            return "–" if v is None else str(v)
    for r in summary.to_dict("records"):
        lines.append(
            f"| {r['model']} | {r['pairs']} | {f(r['energy_distance'])} | [{f(r['ed_lo'])}, {f(r['ed_hi'])}] | "
            f"{f(r['mmd_rbf'])} | {f(r['pearson_delta'])} | {f(r.get('beats_no_change'))} | "
            f"{f(r.get('beats_context_shift'))} | {f(r['identity_ed'])} | {f(r['identity_floor'])} |"
        )
    if rows is not None:
        lines += ["", "## Per held-out pair", "",
                  "Energy distance to the observed cells, mean over seeds; the lowest (noise floor aside) in bold.", "",
                  per_pair_markdown(rows)]
    return "\n".join(lines)
