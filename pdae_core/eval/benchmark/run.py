"""Running a benchmark: prepare the data, split it per seed, fit and score every
(model, seed) pair (resuming finished ones), then write the tables and figures
(:mod:`.report`). Progress goes to a callback as dict events (:func:`format_event`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..._version import __version__
from ...data.defaults import dataset_defaults, holds_profiles
from ...data.registry import (
    PerturbationRegistry,
    condition_column,
    detect_x_kind,
    preprocess,
    read_h5ad,
    setup_anndata,
)
from ...data.splits import CombinationSplit, combination_splits, seen_count
from ...errors import DataError, PDAEError
from ...train.loop import Callback
from ..calibration import interval_check
from ..heldout import NOISE
from ..metrics import energy_distance, evaluate_condition, noise_floor
from .files import atomic_write, dense, read_csv, run_path, tidy
from .report import fit_times, header_lines, summarize, summary_markdown, write_figures
from .spec import (
    NOT_HASHED,
    BenchmarkSpec,
    FitRequest,
    data_fingerprint,
    get_builder,
    hash_spec,
    json_default,
)

Progress = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------------------------
# data and splits


def _resetup(adata: ad.AnnData, reg: PerturbationRegistry, layer: str | None) -> PerturbationRegistry:
    return setup_anndata(adata, reg.perturbation_key, reg.control_label, reg.separator, reg.dose_key,
                         reg.covariate_key, layer)


def _prepare(
    adata: ad.AnnData, registry: PerturbationRegistry, spec: BenchmarkSpec
) -> tuple[ad.AnnData, PerturbationRegistry, dict[str, Any]]:
    """Drop ``spec.exclude`` conditions; normalise + log1p raw counts (HVGs only above
    ``n_top_genes`` genes). Returns the data, its registry and what was done."""
    conds = condition_column(adata, registry.perturbation_key)
    info: dict[str, Any] = {"fingerprint": data_fingerprint(adata, registry)}
    dropped = sorted(set(spec.exclude) & set(conds))
    if registry.control_label in dropped:
        raise DataError(f"exclude lists the control label {registry.control_label!r}; the benchmark needs it.")
    changed = False
    if dropped:
        adata = adata[~np.isin(conds, dropped)].copy()
        changed = True
    info["excluded"] = {c: int((conds == c).sum()) for c in dropped}
    layer = registry.layer
    if detect_x_kind(adata, layer) == "counts":
        hvg = spec.n_top_genes if spec.n_top_genes is not None and adata.n_vars > spec.n_top_genes else None
        adata = preprocess(adata, n_top_genes=hvg, layer=layer)
        layer, changed = None, True
        info["preprocessing"] = dict(adata.uns["pdae_preprocessing"])
    else:
        info["preprocessing"] = {"input": "log1p", "previous": dict(adata.uns.get("pdae_preprocessing", {}))}
    if changed:
        registry = _resetup(adata, registry, layer)
    info["n_cells"], info["n_genes"] = int(adata.n_obs), int(adata.n_vars)
    return adata, registry, info


def make_splits(adata: ad.AnnData, registry: PerturbationRegistry, spec: BenchmarkSpec) -> list[CombinationSplit]:
    """One split per seed. Fixed ``spec.holdout``: the same test conditions every time.
    Otherwise :func:`pdae_core.data.splits.combination_splits` over the testable doubles
    (two parts, >= ``min_test_cells`` cells); every other condition trains. Seen tags
    count the parts measured alone among the training conditions."""
    conds = condition_column(adata, registry.perturbation_key)
    names, counts = np.unique(conds, return_counts=True)
    present = [str(c) for c in names]
    if spec.holdout is not None:
        missing = [c for c in spec.holdout if c not in set(present)]
        if missing:
            raise DataError(f"Held-out condition(s) {missing} have no cells in column {registry.perturbation_key!r}.")
        if registry.control_label in spec.holdout:
            raise DataError("The control condition cannot be held out: predictions start from it.")
        tests = [(s, list(spec.holdout)) for s in spec.seeds]
    else:
        n_parts = {c: len(registry.parse(c)) for c in present}
        testable = [c for c, n in zip(present, counts) if n_parts[c] == 2 and n >= spec.min_test_cells]
        if not testable:
            raise DataError(
                f"No double (A{registry.separator}B) has >= {spec.min_test_cells} cells in column "
                f"{registry.perturbation_key!r}: nothing to hold out."
            )
        keep = [c for c in present if n_parts[c] < 2] + testable
        probe = ad.AnnData(obs=pd.DataFrame({registry.perturbation_key: keep}, index=[str(i) for i in range(len(keep))]))
        tests = [(s.seed, s.test) for s in combination_splits(probe, registry, spec.test_fraction, spec.seeds)]
    out = []
    for seed, test in tests:
        train = [c for c in present if c not in set(test)]
        out.append(CombinationSplit(int(seed), train, list(test), {c: seen_count(c, registry, train) for c in test}))
    return out


# ---------------------------------------------------------------------------------
# progress


def _emit(progress: Progress | None, stage: str, message: str, **fields: Any) -> None:
    if progress is not None:
        progress({"stage": stage, "message": message, **fields})


def format_event(event: dict[str, Any]) -> str:
    """One line for a progress event (for a plain-text log)."""
    done, total = event.get("done"), event.get("total")
    head = f"[{done}/{total}] " if done is not None and total is not None else ""
    return f"{head}{event.get('message', event.get('stage', ''))}"


class _EpochProgress(Callback):
    """Forwards a trained model's evaluations as ``stage="epoch"`` events."""

    shows_progress = True  # the runner reports progress (its events, or its bar over pairs): no bar per fit

    def __init__(self, progress: Progress | None, **where: Any):
        self.progress, self.where, self.max_epochs = progress, where, 0

    def on_train_start(self, max_epochs: int, steps_per_epoch: int) -> None:
        self.max_epochs = max_epochs

    def on_evaluation(self, record: dict[str, float]) -> None:
        val = record.get("val_ed")
        msg = f"{self.where['model']} seed {self.where['seed']}: epoch {record['epoch']}/{self.max_epochs}" + (
            f", validation ED {val:.4f}" if val is not None else "")
        _emit(self.progress, "epoch", msg, epoch=int(record["epoch"]), max_epochs=self.max_epochs,
              val_ed=val, **self.where)


# ---------------------------------------------------------------------------------
# one (model, seed) pair


@dataclass
class _Context:
    adata: ad.AnnData
    registry: PerturbationRegistry
    spec: BenchmarkSpec
    spec_hash: str
    out_dir: Path
    progress: Progress | None
    total: int
    done: int = 0


def _score(pred: np.ndarray, obs: np.ndarray, src: np.ndarray, genes: list[str], n_boot: int, seed: int) -> dict:
    m = evaluate_condition(pred, obs, src, n_boot=n_boot, seed=seed)
    m["de_genes"] = ";".join(genes[g] for g in m.pop("de_genes"))
    return m


def _noise_rows(ctx: _Context, split: CombinationSplit, source: ad.AnnData, obs: dict[str, np.ndarray]) -> list[dict]:
    """Per condition: one random half of the observed cells scored as if it predicted
    the other half; ``noise_floor`` and ``energy_distance_ctrl`` are on all cells."""
    src = dense(ctx.registry.expression(source))
    rows = []
    for c in split.test:
        row = {"model": NOISE, "seed": split.seed, "condition": c, "seen": split.seen[c], "n_obs": len(obs[c])}
        t0 = time.perf_counter()
        o = obs[c]
        if len(o) < 2:
            rows.append({**row, "error": f"{len(o)} observed cell(s): a split needs at least 2"})
            continue
        perm = np.random.default_rng([split.seed, len(rows)]).permutation(len(o))
        half = len(o) // 2
        m = _score(o[perm[:half]], o[perm[half:]], src, ctx.registry.gene_names, ctx.spec.n_boot, split.seed)
        m.update(n_obs=len(o), noise_floor=noise_floor(o, seed=split.seed),
                 energy_distance_ctrl=energy_distance(src, o))
        rows.append({**row, **m, "score_seconds": time.perf_counter() - t0})
    return rows


def _model_rows(
    ctx: _Context, model: str, split: CombinationSplit, source: ad.AnnData, obs: dict[str, np.ndarray]
) -> tuple[list[dict], dict[str, np.ndarray]]:
    spec = ctx.spec
    where = {"model": model, "seed": split.seed, "done": ctx.done, "total": ctx.total}
    _emit(ctx.progress, "fit", f"fitting {model} (seed {split.seed})", **where)
    req = FitRequest(ctx.adata, ctx.registry, list(split.test), split.seed, dict(spec.model_options.get(model, {})),
                     dict(spec.train), spec.accelerator, [_EpochProgress(ctx.progress, **where)])
    t0 = time.perf_counter()
    error = ""
    try:
        predictor = get_builder(model)(req)
    except PDAEError as e:
        predictor, error = None, f"fit failed: {e}"
    fit_s = time.perf_counter() - t0
    leaked = set(getattr(predictor, "train_conditions", ())) & set(split.test)
    if leaked:
        raise PDAEError(f"{model} was trained on held-out condition(s) {sorted(leaked)}; refusing to score it.")
    _emit(ctx.progress, "predict", f"scoring {model} (seed {split.seed}) on {len(split.test)} conditions", **where)
    src = dense(ctx.registry.expression(source))
    rows, deltas = [], {}
    for c in split.test:
        row = {"model": model, "seed": split.seed, "condition": c, "seen": split.seen[c], "n_obs": len(obs[c]),
               "fit_seconds": fit_s, "error": error}
        if predictor is None:
            rows.append(row)
            continue
        t1 = time.perf_counter()
        try:
            pred = dense(predictor.predict(source, c, seed=split.seed))
        except DataError as e:
            rows.append({**row, "error": f"predict failed: {e}"})
            continue
        m = _score(pred, obs[c], src, ctx.registry.gene_names, spec.n_boot, split.seed)
        deltas[c] = pred.mean(0) - src.mean(0)
        rows.append({**row, **m, "score_seconds": time.perf_counter() - t1})
    return rows, deltas, _interval_rows(ctx, predictor, split)


def _interval_rows(ctx: _Context, predictor: Any, split: CombinationSplit) -> list[dict]:
    """A calibrated ensemble's intervals checked on the held-out doubles whose singles it saw
    (:func:`~pdae_core.eval.calibration.interval_check`); empty for any other model."""
    if getattr(predictor, "calibration", None) is None:
        return []
    present = set(condition_column(ctx.adata, ctx.registry.perturbation_key))
    seen = set(getattr(predictor, "train_conditions", ()))
    doubles = [c for c in split.test if c in present and len(ctx.registry.parse(c)) == 2
               and all(p in seen for p in ctx.registry.parse(c))]
    return interval_check(predictor, ctx.adata, doubles, seed=split.seed) if doubles else []


def _load_run(path: Path, spec_hash: str, model: str, split: CombinationSplit) -> pd.DataFrame | None:
    """A finished run of this spec, model and split, or None."""
    if not path.is_file():
        return None
    try:
        df = read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    ok = (
        "spec_hash" in df.columns and set(df["spec_hash"].astype(str)) == {spec_hash}
        and set(df["model"].astype(str)) == {model} and sorted(df["condition"].astype(str)) == sorted(split.test)
    )
    return tidy(df) if ok else None


def _run_pair(ctx: _Context, model: str, split: CombinationSplit, source: ad.AnnData,
              obs: dict[str, np.ndarray]) -> pd.DataFrame:
    path = run_path(ctx.out_dir, model, split.seed)
    done = _load_run(path, ctx.spec_hash, model, split)
    if done is not None:
        ctx.done += 1
        _emit(ctx.progress, "reuse", f"{model} seed {split.seed}: finished earlier, reused", model=model,
              seed=split.seed, done=ctx.done, total=ctx.total)
        return done
    if model == NOISE:
        rows, deltas, intervals = _noise_rows(ctx, split, source, obs), {}, []
    else:
        rows, deltas, intervals = _model_rows(ctx, model, split, source, obs)
    if deltas:
        d = pd.DataFrame.from_dict(deltas, orient="index", columns=ctx.registry.gene_names)
        atomic_write(path.with_suffix(".deltas.csv"), d.to_csv(index_label="condition"))
    if intervals:
        atomic_write(path.with_suffix(".intervals.csv"), pd.DataFrame(intervals).to_csv(index=False))
    df = tidy(rows)
    atomic_write(path, df.assign(spec_hash=ctx.spec_hash).to_csv(index=False))  # written last: marks the pair done
    ctx.done += 1
    _emit(ctx.progress, "pair_done", f"{model} seed {split.seed} done", model=model, seed=split.seed,
          done=ctx.done, total=ctx.total)
    return tidy(read_csv(path))  # as a resumed run will see it (exact float round trip)


def _source_cells(adata: ad.AnnData, registry: PerturbationRegistry, spec: BenchmarkSpec, seed: int) -> ad.AnnData:
    idx = np.flatnonzero(condition_column(adata, registry.perturbation_key) == registry.control_label)
    if spec.max_source_cells is not None and len(idx) > spec.max_source_cells:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=int(spec.max_source_cells), replace=False))
    return adata[idx].copy()


# ---------------------------------------------------------------------------------
# entry points


def run_benchmark(
    adata: ad.AnnData,
    registry: PerturbationRegistry,
    spec: BenchmarkSpec,
    out_dir: str | os.PathLike[str],
    progress: Progress | None = None,
    overwrite: bool = False,
    progress_bar: bool = True,
) -> pd.DataFrame:
    """Run (or resume) a benchmark and write its files to ``out_dir`` (module docstring).

    Finished (model, seed) pairs of the same spec are reused. If ``out_dir`` holds a
    run of a different spec (other than its models, seeds, dataset label or
    highlighted condition) this raises :class:`PDAEError`, unless ``overwrite``,
    which refits every pair whose stored run does not match. ``progress`` gets
    dict events (``stage``, ``message``, and ``model``, ``seed``, ``done``,
    ``total``, ``epoch``... where they apply). Without ``progress``, ``progress_bar`` shows a
    tqdm bar over the (model, seed) pairs (in a terminal or Jupyter). Returns the per-condition table."""
    spec.check_models()
    out = Path(out_dir)
    _emit(progress, "prepare", "preparing data")
    adata, registry, info = _prepare(adata, registry, spec)
    spec_hash = hash_spec(spec, info["fingerprint"])
    spec_file = out / "spec.json"
    if spec_file.is_file() and not overwrite:
        try:
            old = json.loads(spec_file.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("spec_hash") != spec_hash:
            prev = old.get("spec", {})
            diff = [k for k, v in spec.to_dict().items() if k not in NOT_HASHED and prev.get(k, v) != v]
            if old.get("data", {}).get("fingerprint") not in (None, info["fingerprint"]):
                diff.append("data")
            raise PDAEError(
                f"{out} holds a benchmark run with a different spec (differs in: {', '.join(diff) or 'spec'}); "
                "use another output folder, or overwrite=True (--overwrite) to redo the pairs that changed."
            )
    splits = make_splits(adata, registry, spec)
    if spec.highlight is not None and not any(spec.highlight in s.test for s in splits):
        raise PDAEError(f"highlight condition {spec.highlight!r} is not held out under any seed.")
    for s in splits:
        _emit(progress, "split", f"seed {s.seed}: {len(s.test)} held-out conditions", seed=s.seed, test=list(s.test))
    record = {"spec": spec.to_dict(), "spec_hash": spec_hash, "data": info,
              "splits": [s.to_dict() for s in splits], "pdae_core_version": __version__}
    atomic_write(spec_file, json.dumps(record, indent=2, sort_keys=True, default=json_default) + "\n")

    conds = condition_column(adata, registry.perturbation_key)
    models = [*spec.models, NOISE]
    ctx = _Context(adata, registry, spec, spec_hash, out, progress, total=len(models) * len(splits))
    frames, sources, observed = [], {}, {}
    bar = None
    if progress is None and progress_bar:  # a caller's progress events replace the bar
        from tqdm.auto import tqdm

        bar = tqdm(total=ctx.total, unit="fit", desc="benchmark", disable=None, dynamic_ncols=True)
    for split in splits:
        sources[split.seed] = _source_cells(adata, registry, spec, split.seed)
        observed[split.seed] = {c: dense(registry.expression(adata[conds == c])) for c in split.test}
        for model in models:
            if bar is not None:
                bar.set_postfix_str(f"{model} seed {split.seed}")
            frames.append(_run_pair(ctx, model, split, sources[split.seed], observed[split.seed]))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    per_condition = tidy(pd.concat(frames, ignore_index=True))
    atomic_write(out / "per_condition.csv", per_condition.to_csv(index=False))

    _emit(progress, "summary", "writing summary and figures")
    summary = summarize(per_condition)
    atomic_write(out / "summary.csv", summary.to_csv(index=False))
    n_source = {s: v.n_obs for s, v in sources.items()}
    times = fit_times(per_condition)
    atomic_write(out / "summary.md", summary_markdown(summary, header_lines(spec, info, splits, n_source, spec_hash), times))
    _emit(progress, "fit_times", "fit time per model (s, mean over seeds): " + ", ".join(
        f"{r.model} {r.mean:.1f}" for r in times.itertuples()))
    write_figures(out, per_condition, summary, spec, registry, splits, sources, observed)
    _emit(progress, "done", f"benchmark written to {out}", done=ctx.done, total=ctx.total)
    return per_condition


def benchmark_dataset(
    name_or_path: str | os.PathLike[str],
    spec: BenchmarkSpec,
    out_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    adata: ad.AnnData | None = None,
    progress_bar: bool = True,
) -> pd.DataFrame:
    """Load a named dataset (:func:`pdae_core.data.datasets.load_dataset`, with
    ``spec.dataset_options``) or an ``.h5ad`` file (perturbation column and control
    label from ``spec.perturbation_key`` / ``spec.control_label``, else the file's
    ``uns['pdae_dataset']``, else ``condition`` / auto-detected), set it up and run
    :func:`run_benchmark`. ``name_or_path`` is recorded as ``spec.dataset``; pass
    ``adata`` when it is already loaded (``name_or_path`` then only labels it). ``progress_bar``: as
    :func:`run_benchmark`."""
    from ...data.datasets import list_datasets, load_dataset

    spec.check_models()
    name = str(name_or_path)
    _emit(progress, "load", f"loading {name}")
    if adata is None:
        if name in list_datasets():
            adata = load_dataset(name, data_dir=data_dir, **spec.dataset_options)
        elif name.endswith(".h5ad") or os.path.exists(name):
            adata = read_h5ad(name)
        else:
            raise PDAEError(f"{name!r} is neither a known dataset ({', '.join(list_datasets())}) nor an .h5ad file.")
    if holds_profiles(adata):
        raise DataError(f"{name} holds log-fold-changes, not cells: the single-cell benchmark cannot use it.")
    meta = dataset_defaults(adata)
    key = spec.perturbation_key or meta.get("perturbation_key") or "condition"
    control = spec.control_label or meta.get("control_label")
    registry = setup_anndata(adata, key, control, covariate_key=meta.get("covariate_key"))
    spec = replace(spec, dataset=name)
    return run_benchmark(adata, registry, spec, out_dir, progress=progress, overwrite=overwrite,
                         progress_bar=progress_bar)
