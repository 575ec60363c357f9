"""Benchmark runner: train models on combination hold-out splits and score every
held-out condition.

For each seed a split holds out a set of doubles (:func:`make_splits`: a random
fraction of the testable doubles, or a fixed list for every seed). Each model is
fitted on the training conditions only (held-out conditions are never used for
fitting, early stopping or any choice), predicts every held-out condition from the
same control cells, and is scored with :func:`pdae_core.eval.metrics.evaluate_condition`.
A "noise floor" row per (seed, condition) scores one random half of the observed
cells against the other half: what a perfect model would get with that many cells.

``out_dir`` layout::

    spec.json                      spec, its hash, data fingerprint, preprocessing, splits
    runs/<model>__seed<k>.csv      per-(model, seed) rows; a finished pair is reused on resume
    runs/<model>__seed<k>.deltas.csv  predicted mean change from control per condition x gene
    per_condition.csv              tidy: one row per (model, seed, held-out condition)
    summary.csv / summary.md       mean +- sd over seeds, and pooled over conditions with
                                   a bootstrap interval; overall and per seen tag
    figures/*.html                 plotly figures (pdae_core.plot.benchmark)

:func:`read_results` reads such a folder back. Modules: :mod:`.spec` (what to run,
model builders, hashes), :mod:`.run` (running and scoring), :mod:`.report` (summaries,
markdown, figures, reading results), :mod:`.files` (the folder's files).

Everything but the ``*_seconds`` columns is deterministic for a given spec and
data (PDAE only when trained without ``time_limit_s``, on the same device).
"""

from __future__ import annotations

from .files import COLUMNS, METRIC_COLUMNS
from .report import (
    SUMMARY_METRICS,
    BenchmarkResults,
    fit_times,
    has_results,
    read_results,
    results_folders,
    summarize,
    summary_markdown,
)
from .run import Progress, benchmark_dataset, format_event, make_splits, run_benchmark
from .spec import (
    MODEL_BUILDERS,
    BenchmarkSpec,
    FitRequest,
    ModelBuilder,
    available_models,
    get_builder,
    model_type_builder,
)

__all__ = [
    "COLUMNS", "METRIC_COLUMNS", "MODEL_BUILDERS", "SUMMARY_METRICS", "BenchmarkResults", "BenchmarkSpec",
    "FitRequest", "ModelBuilder", "Progress", "available_models", "benchmark_dataset", "fit_times", "format_event",
    "get_builder", "has_results", "make_splits", "model_type_builder", "read_results", "results_folders",
    "run_benchmark", "summarize", "summary_markdown",
]
