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

Everything but the ``*_seconds`` columns is deterministic for a given spec and
data (PDAE only when trained without ``time_limit_s``, on the same device).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._version import __version__
from ..data.registry import (
    PerturbationRegistry,
    condition_column,
    detect_x_kind,
    preprocess,
    read_h5ad,
    setup_anndata,
)
from ..data.splits import CombinationSplit, combination_splits, seen_count
from ..data.synthetic import SyntheticOracle
from ..errors import DataError, PDAEError
from ..models.baselines import AdditiveBaseline, LinearBaseline, NoChange, PoolBaseline
from ..models.catalog import MODEL_TYPES
from ..models.pdae import PDAE
from ..train.loop import Callback, TrainConfig
from .heldout import NOISE, Predictor
from .metrics import energy_distance, evaluate_condition, noise_floor

__all__ = [
    "MODEL_BUILDERS", "SUMMARY_METRICS", "BenchmarkSpec", "FitRequest", "ModelBuilder", "available_models",
    "get_builder", "make_splits", "run_benchmark", "benchmark_dataset", "summarize", "summary_markdown",
    "fit_times",
    "format_event",
]

#: Metrics of the summary tables (columns of ``per_condition.csv``).
SUMMARY_METRICS = ("energy_distance", "mmd_rbf", "pearson_delta", "pearson_delta_de", "direction_accuracy_de")
METRIC_COLUMNS = (
    "energy_distance", "energy_distance_lo", "energy_distance_hi", "energy_distance_ctrl", "noise_floor",
    "energy_distance_de", "mmd_rbf", "mean_l2", "pearson_delta", "r2_delta", "pearson_delta_de", "r2_delta_de",
    "direction_accuracy_de",
)
COLUMNS = ("model", "seed", "condition", "seen", "n_obs", "n_pred", "n_ctrl", *METRIC_COLUMNS, "de_genes",
           "fit_seconds", "score_seconds", "error")
_INT_COLUMNS = ("seed", "seen", "n_obs", "n_pred", "n_ctrl")
_NOT_HASHED = ("dataset", "models", "seeds", "highlight")  # fields that do not change a (model, seed) result
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed", "accelerator"}
Progress = Callable[[dict[str, Any]], None]
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# ---------------------------------------------------------------------------------
# models


@dataclass
class FitRequest:
    """What a :data:`ModelBuilder` gets: fit on ``adata`` minus the ``holdout`` conditions."""

    adata: ad.AnnData
    registry: PerturbationRegistry
    holdout: list[str]
    seed: int
    options: dict[str, Any]  # constructor arguments (BenchmarkSpec.model_options[name])
    train: dict[str, Any]  # TrainConfig overrides (trained models only)
    accelerator: str
    callbacks: list[Callback]


#: Builds and fits a model; returns anything with ``predict(source, target, seed=...)``.
ModelBuilder = Callable[[FitRequest], Predictor]


def _baseline_builder(cls: type) -> ModelBuilder:
    def build(req: FitRequest) -> Predictor:
        return cls(**req.options).fit(req.adata, req.registry, req.holdout)

    return build


def model_type_builder(cls: type) -> ModelBuilder:
    """Builder for a :class:`~pdae_core.models.base.PerturbationModel` subclass: library
    defaults unless overridden, seeded with the split seed, trained on the training
    conditions (validation cells for early stopping come from those conditions only)."""

    def build(req: FitRequest) -> Predictor:
        model = cls(req.registry, seed=req.seed, **req.options)
        model.fit(req.adata, holdout=req.holdout, callbacks=req.callbacks, seed=req.seed,
                  accelerator=req.accelerator, **req.train)
        return model

    return build


MODEL_BUILDERS: dict[str, ModelBuilder] = {
    "pdae": model_type_builder(PDAE),
    "additive": _baseline_builder(AdditiveBaseline),
    "linear": _baseline_builder(LinearBaseline),
    "control": _baseline_builder(NoChange),
    "pool": _baseline_builder(PoolBaseline),
    # synthetic data only: fresh cells from the true generative model (the best any model can do)
    "oracle": lambda req: SyntheticOracle.from_anndata(req.adata),
}


def available_models() -> list[str]:
    """Every name :func:`get_builder` accepts: the builders and the registered model types."""
    return sorted(set(MODEL_BUILDERS) | set(MODEL_TYPES))


def get_builder(name: str) -> ModelBuilder:
    """The builder of a model name; any model type in ``pdae_core.models.catalog.MODEL_TYPES`` works too."""
    if name in MODEL_BUILDERS:
        return MODEL_BUILDERS[name]
    if name in MODEL_TYPES:
        return model_type_builder(MODEL_TYPES[name])
    raise PDAEError(f"Unknown model {name!r}; valid models: {', '.join(available_models())}.")


# ---------------------------------------------------------------------------------
# spec


@dataclass
class BenchmarkSpec:
    """What to run. JSON-serialisable (:meth:`to_dict` / :meth:`from_dict`).

    ``holdout``: the same held-out conditions for every seed (the seed then only
    changes model seeds and sampling); else ``test_fraction`` of the testable doubles
    (exactly two parts, at least ``min_test_cells`` cells; 4 makes both halves of
    the noise floor >= 2 cells) go to test per seed. Conditions of three or more
    parts and smaller doubles stay in training; ``exclude`` drops conditions entirely.
    ``train``: TrainConfig overrides for trained models (``max_epochs``,
    ``time_limit_s``, ...); ``model_options``: constructor arguments per model name.
    Sources: the control cells, at most ``max_source_cells`` (a seeded subsample,
    the same for every model). Raw counts are normalised + log1p'd, with
    ``n_top_genes`` HVGs when there are more genes than that.
    """

    dataset: str | None = None
    models: list[str] = field(default_factory=lambda: ["pdae", "additive", "linear", "control"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    test_fraction: float = 0.3
    holdout: list[str] | None = None
    n_boot: int = 200
    train: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    accelerator: str = "auto"
    max_source_cells: int | None = 500
    min_test_cells: int = 4
    exclude: list[str] = field(default_factory=list)
    n_top_genes: int | None = 2000
    perturbation_key: str | None = None
    control_label: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    highlight: str | None = None  # condition of the delta scatter (default: largest effect)

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            self.models = [m.strip() for m in self.models.split(",") if m.strip()]
        self.models = [str(m) for m in self.models]
        self.seeds = [int(s) for s in ([self.seeds] if isinstance(self.seeds, int) else self.seeds)]
        if self.holdout is not None:
            self.holdout = list(dict.fromkeys(str(h).strip() for h in self.holdout))
        self.exclude = [str(c) for c in self.exclude]
        self.train = dict(self.train)
        self.model_options = {str(k): dict(v) for k, v in self.model_options.items()}
        checks = [
            (bool(self.models), "models is empty"),
            (len(set(self.models)) == len(self.models), f"models has duplicates: {self.models}"),
            (NOISE not in self.models, f"{NOISE!r} is added by the runner; it is not a model"),
            (bool(self.seeds), "seeds is empty"),
            (len(set(self.seeds)) == len(self.seeds), f"seeds has duplicates: {self.seeds}"),
            (min(self.seeds, default=0) >= 0, f"seeds must be >= 0, got {self.seeds}"),
            (0.0 < self.test_fraction < 1.0, f"test_fraction must be in (0, 1), got {self.test_fraction}"),
            (self.holdout is None or len(self.holdout) > 0, "holdout is an empty list (use None for random splits)"),
            (int(self.n_boot) >= 0, f"n_boot must be >= 0, got {self.n_boot}"),
            (self.max_source_cells is None or int(self.max_source_cells) >= 2, "max_source_cells must be >= 2"),
            (int(self.min_test_cells) >= 1, "min_test_cells must be >= 1"),
            (self.n_top_genes is None or int(self.n_top_genes) >= 1, "n_top_genes must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise PDAEError(f"BenchmarkSpec: {msg}.")
        bad = sorted(set(self.train) - _CONFIG_FIELDS)
        if bad:
            raise PDAEError(
                f"BenchmarkSpec.train: unknown or reserved setting(s) {bad} (the seed and accelerator come from the "
                f"spec); allowed: {', '.join(sorted(_CONFIG_FIELDS))}."
            )
        try:
            json.dumps(self.to_dict())
        except (TypeError, ValueError) as e:
            raise PDAEError(f"BenchmarkSpec must be JSON-serialisable: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchmarkSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise PDAEError(f"BenchmarkSpec: unknown field(s) {unknown}.")
        return cls(**d)

    def check_models(self) -> None:
        """Raise :class:`PDAEError` (listing the valid names) for an unknown model name."""
        for m in self.models:
            get_builder(m)


def _digest(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    return o.tolist() if isinstance(o, np.ndarray) else str(o)


def _spec_hash(spec: BenchmarkSpec, fingerprint: str) -> str:
    d = {k: v for k, v in spec.to_dict().items() if k not in _NOT_HASHED}
    return _digest({"spec": d, "data": fingerprint})


def _fingerprint(adata: ad.AnnData, registry: PerturbationRegistry) -> str:
    """Identity of the data: shape, genes, every cell's condition and the sum of X."""
    X = adata.layers[registry.layer] if registry.layer else adata.X
    total = float(X.sum(dtype=np.float64)) if sp.issparse(X) else float(np.asarray(X).sum(dtype=np.float64))
    h = hashlib.sha256()
    h.update(repr((adata.shape, total)).encode())
    h.update("\n".join(map(str, adata.var_names)).encode())
    h.update("\n".join(condition_column(adata, registry.perturbation_key)).encode())
    return h.hexdigest()[:16]


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
    info: dict[str, Any] = {"fingerprint": _fingerprint(adata, registry)}
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


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _run_path(out_dir: Path, model: str, seed: int) -> Path:
    return out_dir / "runs" / f"{_slug(model)}__seed{seed}.csv"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    return pd.read_csv(path, float_precision="round_trip", keep_default_na=False, na_values=[""],
                       dtype={"model": str, "condition": str, "de_genes": str, "error": str}, **kwargs)


def _tidy(rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    for c in _INT_COLUMNS:
        df[c] = pd.to_numeric(df[c]).astype("Int64")
    for c in (*METRIC_COLUMNS, "fit_seconds", "score_seconds"):
        df[c] = pd.to_numeric(df[c]).astype(float)
    df["error"] = df["error"].fillna("").astype(str)
    df["de_genes"] = df["de_genes"].fillna("").astype(str)
    return df


def _dense(x: Any) -> np.ndarray:
    x = x.X if isinstance(x, ad.AnnData) else x
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


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
    src = _dense(ctx.registry.expression(source))
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
    src = _dense(ctx.registry.expression(source))
    rows, deltas = [], {}
    for c in split.test:
        row = {"model": model, "seed": split.seed, "condition": c, "seen": split.seen[c], "n_obs": len(obs[c]),
               "fit_seconds": fit_s, "error": error}
        if predictor is None:
            rows.append(row)
            continue
        t1 = time.perf_counter()
        try:
            pred = _dense(predictor.predict(source, c, seed=split.seed))
        except DataError as e:
            rows.append({**row, "error": f"predict failed: {e}"})
            continue
        m = _score(pred, obs[c], src, ctx.registry.gene_names, spec.n_boot, split.seed)
        deltas[c] = pred.mean(0) - src.mean(0)
        rows.append({**row, **m, "score_seconds": time.perf_counter() - t1})
    return rows, deltas


def _load_run(path: Path, spec_hash: str, model: str, split: CombinationSplit) -> pd.DataFrame | None:
    """A finished run of this spec, model and split, or None."""
    if not path.is_file():
        return None
    try:
        df = _read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    ok = (
        "spec_hash" in df.columns and set(df["spec_hash"].astype(str)) == {spec_hash}
        and set(df["model"].astype(str)) == {model} and sorted(df["condition"].astype(str)) == sorted(split.test)
    )
    return _tidy(df) if ok else None


def _run_pair(ctx: _Context, model: str, split: CombinationSplit, source: ad.AnnData,
              obs: dict[str, np.ndarray]) -> pd.DataFrame:
    path = _run_path(ctx.out_dir, model, split.seed)
    done = _load_run(path, ctx.spec_hash, model, split)
    if done is not None:
        ctx.done += 1
        _emit(ctx.progress, "reuse", f"{model} seed {split.seed}: finished earlier, reused", model=model,
              seed=split.seed, done=ctx.done, total=ctx.total)
        return done
    if model == NOISE:
        rows, deltas = _noise_rows(ctx, split, source, obs), {}
    else:
        rows, deltas = _model_rows(ctx, model, split, source, obs)
    if deltas:
        d = pd.DataFrame.from_dict(deltas, orient="index", columns=ctx.registry.gene_names)
        _atomic_write(path.with_suffix(".deltas.csv"), d.to_csv(index_label="condition"))
    df = _tidy(rows)
    _atomic_write(path, df.assign(spec_hash=ctx.spec_hash).to_csv(index=False))  # written last: marks the pair done
    ctx.done += 1
    _emit(ctx.progress, "pair_done", f"{model} seed {split.seed} done", model=model, seed=split.seed,
          done=ctx.done, total=ctx.total)
    return _tidy(_read_csv(path))  # as a resumed run will see it (exact float round trip)


def _source_cells(adata: ad.AnnData, registry: PerturbationRegistry, spec: BenchmarkSpec, seed: int) -> ad.AnnData:
    idx = np.flatnonzero(condition_column(adata, registry.perturbation_key) == registry.control_label)
    if spec.max_source_cells is not None and len(idx) > spec.max_source_cells:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=int(spec.max_source_cells), replace=False))
    return adata[idx].copy()


# ---------------------------------------------------------------------------------
# summaries


def _cluster_bootstrap(values: np.ndarray, clusters: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling clusters (conditions) with replacement."""
    names, inv = np.unique(clusters, return_inverse=True)
    sums = np.bincount(inv, weights=values, minlength=len(names))
    cnts = np.bincount(inv, minlength=len(names)).astype(float)
    idx = np.random.default_rng(seed).integers(0, len(names), size=(n_boot, len(names)))
    means = sums[idx].sum(1) / cnts[idx].sum(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


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
                lo, hi = (_cluster_bootstrap(v[metric].to_numpy(float), v["condition"].astype(str).to_numpy(),
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


def _header(spec: BenchmarkSpec, info: dict[str, Any], splits: list[CombinationSplit], n_source: dict[int, int],
            spec_hash: str) -> list[str]:
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


def _write_figures(out_dir: Path, per_condition: pd.DataFrame, summary: pd.DataFrame, ctx: _Context,
                   splits: list[CombinationSplit], sources: dict[int, ad.AnnData], obs: dict[int, dict]) -> list[str]:
    from ..plot import benchmark as figures

    figs = {
        "condition_bars_energy_distance": figures.condition_bars(per_condition, "energy_distance"),
        "condition_bars_pearson_delta_de": figures.condition_bars(per_condition, "pearson_delta_de"),
        "summary_energy_distance": figures.summary_bars(summary, "energy_distance", view="pooled"),
    }
    noise = per_condition[(per_condition["model"] == NOISE) & (per_condition["seed"] == splits[0].seed)]
    cond, split = ctx.spec.highlight, None
    if cond is None and noise["energy_distance_ctrl"].notna().any():
        cond = str(noise.loc[noise["energy_distance_ctrl"].idxmax(), "condition"])
    if cond is not None:
        split = next((s for s in splits if cond in s.test), None)
    if split is not None:
        preds = {}
        for m in ctx.spec.models:
            p = _run_path(out_dir, m, split.seed).with_suffix(".deltas.csv")
            if p.is_file():
                d = _read_csv(p, index_col=0)
                if cond in d.index:
                    preds[m] = d.loc[cond].to_numpy(float)
        if preds:
            o = obs[split.seed][cond].mean(0) - _dense(ctx.registry.expression(sources[split.seed])).mean(0)
            de = per_condition[(per_condition["condition"] == cond) & (per_condition["seed"] == split.seed)
                               & (per_condition["de_genes"] != "")]["de_genes"]
            top = de.iloc[0].split(";")[:10] if len(de) else None
            figs[f"delta_scatter_{_slug(cond)}"] = figures.delta_scatter(
                preds, o, ctx.registry.gene_names, title=f"Change from control, {cond} (seed {split.seed})",
                highlight=top)
    for stale in (out_dir / "figures").glob("delta_scatter_*.html"):
        stale.unlink()
    written = []
    for name, fig in figs.items():
        path = out_dir / "figures" / f"{name}.html"
        _atomic_write(path, fig.to_html(include_plotlyjs="cdn", full_html=True))
        written.append(str(path.relative_to(out_dir)))
    return written


# ---------------------------------------------------------------------------------
# entry points


def run_benchmark(
    adata: ad.AnnData,
    registry: PerturbationRegistry,
    spec: BenchmarkSpec,
    out_dir: str | os.PathLike[str],
    progress: Progress | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Run (or resume) a benchmark and write its files to ``out_dir`` (module docstring).

    Finished (model, seed) pairs of the same spec are reused. If ``out_dir`` holds a
    run of a different spec (other than its models, seeds, dataset label or
    highlighted condition) this raises :class:`PDAEError`, unless ``overwrite``,
    which refits every pair whose stored run does not match. ``progress`` gets
    dict events (``stage``, ``message``, and ``model``, ``seed``, ``done``,
    ``total``, ``epoch``... where they apply). Returns the per-condition table."""
    spec.check_models()
    out = Path(out_dir)
    _emit(progress, "prepare", "preparing data")
    adata, registry, info = _prepare(adata, registry, spec)
    spec_hash = _spec_hash(spec, info["fingerprint"])
    spec_file = out / "spec.json"
    if spec_file.is_file() and not overwrite:
        try:
            old = json.loads(spec_file.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("spec_hash") != spec_hash:
            prev = old.get("spec", {})
            diff = [k for k, v in spec.to_dict().items() if k not in _NOT_HASHED and prev.get(k, v) != v]
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
    _atomic_write(spec_file, json.dumps(record, indent=2, sort_keys=True, default=_json_default) + "\n")

    conds = condition_column(adata, registry.perturbation_key)
    models = [*spec.models, NOISE]
    ctx = _Context(adata, registry, spec, spec_hash, out, progress, total=len(models) * len(splits))
    frames, sources, observed = [], {}, {}
    for split in splits:
        sources[split.seed] = _source_cells(adata, registry, spec, split.seed)
        observed[split.seed] = {c: _dense(registry.expression(adata[conds == c])) for c in split.test}
        for model in models:
            frames.append(_run_pair(ctx, model, split, sources[split.seed], observed[split.seed]))
    per_condition = _tidy(pd.concat(frames, ignore_index=True))
    _atomic_write(out / "per_condition.csv", per_condition.to_csv(index=False))

    _emit(progress, "summary", "writing summary and figures")
    summary = summarize(per_condition)
    _atomic_write(out / "summary.csv", summary.to_csv(index=False))
    n_source = {s: v.n_obs for s, v in sources.items()}
    times = fit_times(per_condition)
    _atomic_write(out / "summary.md", summary_markdown(summary, _header(spec, info, splits, n_source, spec_hash), times))
    _emit(progress, "fit_times", "fit time per model (s, mean over seeds): " + ", ".join(
        f"{r.model} {r.mean:.1f}" for r in times.itertuples()))
    _write_figures(out, per_condition, summary, ctx, splits, sources, observed)
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
) -> pd.DataFrame:
    """Load a named dataset (:func:`pdae_core.data.datasets.load_dataset`, with
    ``spec.dataset_options``) or an ``.h5ad`` file (perturbation column and control
    label from ``spec.perturbation_key`` / ``spec.control_label``, else the file's
    ``uns['pdae_dataset']``, else ``condition`` / auto-detected), set it up and run
    :func:`run_benchmark`. ``name_or_path`` is recorded as ``spec.dataset``; pass
    ``adata`` when it is already loaded (``name_or_path`` then only labels it)."""
    from ..data.datasets import list_datasets, load_dataset

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
    meta = dict(adata.uns.get("pdae_dataset", {}))
    if meta.get("values") == "lfc_vs_control":
        raise DataError(f"{name} holds log-fold-changes, not cells: the single-cell benchmark cannot use it.")
    key = spec.perturbation_key or meta.get("perturbation_key") or "condition"
    control = spec.control_label or meta.get("control_label")
    registry = setup_anndata(adata, key, control, covariate_key=meta.get("covariate_key"))
    spec = dataclasses.replace(spec, dataset=name)
    return run_benchmark(adata, registry, spec, out_dir, progress=progress, overwrite=overwrite)
