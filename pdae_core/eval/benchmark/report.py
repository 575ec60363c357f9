"""What a benchmark writes and how to read it back: the summary tables
(:func:`summarize`), their markdown (:func:`summary_markdown`), fit times, figures,
and :func:`read_results`, which loads a results folder (also one of the pseudobulk
track) for the dashboard."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ...data.registry import PerturbationRegistry
from ...data.splits import CombinationSplit
from ..bootstrap import cluster_bootstrap
from ..heldout import NOISE
from .files import atomic_write, dense, read_csv, run_path, slug
from .spec import BenchmarkSpec

#: Metrics of the summary tables (columns of ``per_condition.csv``).
SUMMARY_METRICS = ("energy_distance", "mmd_rbf", "pearson_delta", "pearson_delta_de", "direction_accuracy_de")


# ---------------------------------------------------------------------------------
# summaries


def _sections(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    out = [("all", df)]
    for tag in sorted(df["seen"].dropna().unique(), reverse=True):
        out.append((f"seen {int(tag)}", df[(df["seen"] == tag).fillna(False).to_numpy(bool)]))
    return out


def summarize(
    per_condition: pd.DataFrame, metrics: Sequence[str] = SUMMARY_METRICS, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Long summary table: per section (``all``, ``seen 2``, ...), model and metric,

    * ``view="seeds"``: ``value`` = mean over seeds of each seed's mean over its
      held-out conditions, ``spread`` = their sd (NaN with one seed);
    * ``view="pooled"``: ``value`` = mean over all (seed, condition) rows, ``[lo, hi]``
      = 95% bootstrap interval resampling conditions (a condition held out under
      several seeds counts as one cluster).

    ``n`` counts the scored (seed, condition) rows; rows with an error (a model that
    could not predict a condition) and NaN values are left out."""
    rows = []
    models = list(dict.fromkeys(per_condition["model"]))
    for section, sub in _sections(per_condition):
        for model in models:
            g = sub[sub["model"] == model]
            g = g[g["error"].fillna("").astype(str) == ""] if "error" in g.columns else g
            for metric in metrics:
                v = g[["seed", "condition", metric]].dropna()
                base = {"section": section, "model": model, "metric": metric, "n": len(v),
                        "n_seeds": int(v["seed"].nunique())}
                per_seed = v.groupby("seed")[metric].mean()
                rows.append({**base, "view": "seeds", "value": per_seed.mean() if len(v) else np.nan,
                             "spread": per_seed.std(ddof=1) if len(per_seed) > 1 else np.nan,
                             "lo": np.nan, "hi": np.nan})
                lo, hi = (cluster_bootstrap(v[metric].to_numpy(float), v["condition"].astype(str).to_numpy(),
                                             n_boot, seed) if len(v) else (np.nan, np.nan))
                rows.append({**base, "view": "pooled", "value": v[metric].mean() if len(v) else np.nan,
                             "spread": np.nan, "lo": lo, "hi": hi})
    cols = ["section", "view", "model", "metric", "value", "spread", "lo", "hi", "n", "n_seeds"]
    return pd.DataFrame(rows)[cols]


_SHORT = {"energy_distance": "energy distance", "mmd_rbf": "MMD", "pearson_delta": "Pearson delta",
          "pearson_delta_de": "Pearson delta (top 20 DE)", "direction_accuracy_de": "direction acc. (top 20 DE)"}
_BETTER = {"energy_distance": "lower", "mmd_rbf": "lower", "energy_distance_de": "lower", "mean_l2": "lower"}


def _fmt(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def fit_times(per_condition: pd.DataFrame) -> pd.DataFrame:
    """Seconds each model took to fit, per seed: mean, sd and max over seeds (one fit
    per (model, seed); the noise floor has none)."""
    df = per_condition[per_condition["model"] != NOISE]
    per_seed = df.groupby(["model", "seed"], sort=False)["fit_seconds"].first().reset_index()
    g = per_seed.groupby("model", sort=False)["fit_seconds"]
    return pd.DataFrame({"mean": g.mean(), "sd": g.std(), "max": g.max(), "n_seeds": g.size()}).reset_index()


def fit_times_markdown(times: pd.DataFrame) -> list[str]:
    lines = ["", "## Fit time per model", "", "Seconds per fit (one per seed; on the machine and threads of the run "
             "that produced it; resumed runs keep their original times):", "",
             "| model | mean s | sd | max s | seeds |", "|---|---|---|---|---|"]
    for r in times.itertuples():
        sd = f"{r.sd:.1f}" if np.isfinite(r.sd) else ""
        lines.append(f"| {r.model} | {r.mean:.1f} | {sd} | {r.max:.1f} | {r.n_seeds} |")
    return lines


def summary_markdown(summary: pd.DataFrame, header: Sequence[str] = (), times: pd.DataFrame | None = None) -> str:
    """The summary as markdown (numbers rounded to 3 decimals): per section, one table
    of mean +- sd over seeds and one pooled over conditions with its interval; then
    the fit time per model when ``times`` (:func:`fit_times`) is given."""
    metrics = list(dict.fromkeys(summary["metric"]))
    models = list(dict.fromkeys(summary["model"]))
    names = [f"{_SHORT.get(m, m.replace('_', ' '))} ({_BETTER.get(m, 'higher')} better)" for m in metrics]
    lines = list(header)
    titles = {"all": "All held-out conditions"}
    sections = list(dict.fromkeys(summary["section"]))
    if len(sections) == 2:  # a single seen tag: its tables would repeat the overall ones
        lines += ["", f"Every held-out condition is {sections[1]}, so the tables below are also the {sections[1]} ones."]
        sections = sections[:1]
    for section in sections:
        k = section.split()[-1]
        lines += ["", f"## {titles.get(section, f'Seen {k} ({k} of the parts measured alone in training)')}"]
        for view in ("seeds", "pooled"):
            sub = summary[(summary["section"] == section) & (summary["view"] == view)]
            if view == "seeds":
                lines += ["", "Mean +- sd over seeds of each seed's mean over its held-out conditions "
                          "(n: scored condition x seed pairs):"]
            else:
                lines += ["", "Pooled over held-out conditions: mean [95% bootstrap interval over conditions]:"]
            lines += ["", "| model | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
            counts = set()
            for model in models:
                r = sub[sub["model"] == model].set_index("metric")
                if r.empty:
                    continue
                n = int(r["n"].max())
                counts.add(n)
                cells = []
                for m in metrics:
                    x = r.loc[m]
                    if view == "seeds":
                        cells.append(_fmt(x["value"]) + (f" +- {_fmt(x['spread'])}" if np.isfinite(x["spread"]) else ""))
                    else:
                        cells.append(_fmt(x["value"]) + (f" [{_fmt(x['lo'])}, {_fmt(x['hi'])}]"
                                                         if np.isfinite(x["value"]) else ""))
                lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
            if len(counts) > 1:
                lines += ["", "Models with a smaller n could not predict some conditions (see `error` in "
                          "per_condition.csv), so their means are over fewer conditions."]
    lines += ["", "n/a: undefined, e.g. the Pearson correlation of 'control' (no change), whose predicted change "
              "from control is zero."]
    if times is not None and len(times):
        lines += fit_times_markdown(times)
    return "\n".join(lines) + "\n"


def header_lines(spec: BenchmarkSpec, info: dict[str, Any], splits: list[CombinationSplit], n_source: dict[int, int],
                 spec_hash: str) -> list[str]:
    """The lines above the tables of ``summary.md``: data, models, split, sources, spec hash."""
    prep = info["preprocessing"]
    prep_s = ("normalize_total({normalize_total:g}) + log1p".format(**prep) if prep.get("log1p") else "none (log1p input)")
    if "highly_variable_genes" in prep:
        prep_s += f" + {prep['highly_variable_genes']} HVGs"
    if spec.holdout is not None:
        split_s = f"fixed hold-out for every seed: {', '.join(spec.holdout)}"
    else:
        split_s = (f"random combination hold-out, {spec.test_fraction:g} of the doubles with >= "
                   f"{spec.min_test_cells} cells per seed")
    lines = [
        f"# Benchmark: {spec.dataset or 'dataset'}",
        "",
        f"- data: {info['n_cells']} cells x {info['n_genes']} genes; preprocessing: {prep_s}"
        + (f"; excluded: {', '.join(f'{c} ({n} cells)' for c, n in info['excluded'].items())}" if info["excluded"] else ""),
        f"- models: {', '.join(spec.models)}; seeds: {', '.join(map(str, spec.seeds))}",
        f"- split: {split_s}",
        f"- predictions start from the control cells ({', '.join(sorted(set(map(str, n_source.values()))))} "
        f"per seed); energy distances are unbiased (95% bootstrap intervals over cells, {spec.n_boot} replicates, "
        "in per_condition.csv); noise floor: one random half of the observed cells vs the other half",
    ]
    for s in splits:
        tags = pd.Series(list(s.seen.values())).value_counts().sort_index(ascending=False)
        lines.append(f"- seed {s.seed}: {len(s.test)} held-out conditions ("
                     + ", ".join(f"seen {int(t)}: {int(n)}" for t, n in tags.items()) + ")")
    if spec.train:
        lines.append(f"- training overrides: {json.dumps(spec.train, sort_keys=True)}")
    if spec.model_options:
        lines.append(f"- model options: {json.dumps(spec.model_options, sort_keys=True)}")
    lines.append(f"- spec hash: {spec_hash}")
    return lines


# ---------------------------------------------------------------------------------
# figures


def write_figures(out_dir: Path, per_condition: pd.DataFrame, summary: pd.DataFrame, spec: BenchmarkSpec,
                  registry: PerturbationRegistry, splits: list[CombinationSplit], sources: dict[int, ad.AnnData],
                  obs: dict[int, dict]) -> list[str]:
    """Write the figures (:mod:`pdae_core.plot.benchmark`) to ``out_dir/figures``; returns their paths
    relative to ``out_dir``. The delta scatter shows ``spec.highlight`` (default: the held-out
    condition of the first seed farthest from control)."""
    from ...plot import benchmark as figures

    figs = {
        "condition_bars_energy_distance": figures.condition_bars(per_condition, "energy_distance"),
        "condition_bars_pearson_delta_de": figures.condition_bars(per_condition, "pearson_delta_de"),
        "summary_energy_distance": figures.summary_bars(summary, "energy_distance", view="pooled"),
    }
    noise = per_condition[(per_condition["model"] == NOISE) & (per_condition["seed"] == splits[0].seed)]
    cond, split = spec.highlight, None
    if cond is None and noise["energy_distance_ctrl"].notna().any():
        cond = str(noise.loc[noise["energy_distance_ctrl"].idxmax(), "condition"])
    if cond is not None:
        split = next((s for s in splits if cond in s.test), None)
    if split is not None:
        preds = {}
        for m in spec.models:
            p = run_path(out_dir, m, split.seed).with_suffix(".deltas.csv")
            if p.is_file():
                d = read_csv(p, index_col=0)
                if cond in d.index:
                    preds[m] = d.loc[cond].to_numpy(float)
        if preds:
            o = obs[split.seed][cond].mean(0) - dense(registry.expression(sources[split.seed])).mean(0)
            de = per_condition[(per_condition["condition"] == cond) & (per_condition["seed"] == split.seed)
                               & (per_condition["de_genes"] != "")]["de_genes"]
            top = de.iloc[0].split(";")[:10] if len(de) else None
            figs[f"delta_scatter_{slug(cond)}"] = figures.delta_scatter(
                preds, o, registry.gene_names, title=f"Change from control, {cond} (seed {split.seed})",
                highlight=top)
    for stale in (out_dir / "figures").glob("delta_scatter_*.html"):
        stale.unlink()
    written = []
    for name, fig in figs.items():
        path = out_dir / "figures" / f"{name}.html"
        atomic_write(path, fig.to_html(include_plotlyjs="cdn", full_html=True))
        written.append(str(path.relative_to(out_dir)))
    return written


# ---------------------------------------------------------------------------------
# reading a results folder


@dataclass(frozen=True)
class BenchmarkResults:
    """The files of a results folder as read by :func:`read_results`; ``None`` (or empty)
    for a file that is not there.

    ``per_condition`` / ``summary``: ``per_condition.csv`` / ``summary.csv``;
    ``summary_md``: ``summary.md`` as written; ``figures``: ``figures/*.html`` by name
    (file stem); ``spec``: ``spec.json`` (spec, spec hash, data, splits; the
    single-cell track only)."""

    folder: Path
    per_condition: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None
    summary_md: str | None = None
    figures: dict[str, Path] = field(default_factory=dict)
    spec: dict[str, Any] | None = None

    @property
    def track(self) -> str | None:
        """``"cells"`` (the single-cell benchmark: energy distances per condition),
        ``"pseudobulk"`` (one row per double and fold) or None (no or another table)."""
        df = self.per_condition
        if df is None:
            return None
        if "energy_distance" in df.columns:
            return "cells"
        return "pseudobulk" if "fold" in df.columns else None

    @property
    def summary_text(self) -> str | None:
        """``summary.md`` without its HTML comment lines (the generated-by stamp), for display."""
        if self.summary_md is None:
            return None
        return "\n".join(ln for ln in self.summary_md.splitlines() if not ln.startswith("<!--"))

    def metrics(self, candidates: Iterable[str]) -> list[str]:
        """The ``candidates`` (in their order) that are columns of ``per_condition`` with
        at least one value."""
        df = self.per_condition
        if df is None:
            return []
        return [m for m in candidates if m in df.columns and df[m].notna().any()]

    def mean_per_model(self, metric: str) -> pd.DataFrame:
        """Mean of ``metric`` per model over the rows of ``per_condition`` (the held-out
        doubles of the pseudobulk track), in the order the models appear."""
        if self.per_condition is None:
            raise ValueError(f"{self.folder} has no per_condition.csv.")
        g = self.per_condition.groupby("model", sort=False)[metric]
        return g.mean().rename("mean over doubles").to_frame()


def has_results(folder: str | Path) -> bool:
    """True if ``folder`` holds a benchmark summary (``summary.md``)."""
    return (Path(folder) / "summary.md").is_file()


def results_folders(root: str | Path) -> list[Path]:
    """The results folders directly under ``root`` (those with a ``summary.md``), sorted."""
    root = Path(root)
    return sorted(p.parent for p in root.glob("*/summary.md")) if root.is_dir() else []


def read_results(out_dir: str | Path) -> BenchmarkResults:
    """Read a benchmark results folder (the single-cell or the pseudobulk track):
    ``per_condition.csv``, ``summary.csv``, ``summary.md``, ``figures/*.html`` and
    ``spec.json``, each where present (an unreadable ``summary.csv`` or ``spec.json``
    counts as absent). Tables are read as the runner writes them (floats exact, only
    empty cells missing). A missing folder gives empty results."""
    folder = Path(out_dir)
    per_condition = folder / "per_condition.csv"
    summary_md = folder / "summary.md"
    return BenchmarkResults(
        folder=folder,
        per_condition=read_csv(per_condition) if per_condition.is_file() else None,
        summary=_optional(folder / "summary.csv", read_csv),
        summary_md=summary_md.read_text() if summary_md.is_file() else None,
        figures={p.stem: p for p in sorted((folder / "figures").glob("*.html"))},
        spec=_optional(folder / "spec.json", lambda p: json.loads(p.read_text())),
    )


def _optional(path: Path, read: Callable[[Path], Any]) -> Any:
    """``read(path)``; None if the file is absent or unreadable (the tables shown need
    only ``per_condition.csv`` and ``summary.md``)."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except (OSError, ValueError):
        return None
