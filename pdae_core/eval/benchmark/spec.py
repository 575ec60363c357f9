"""What a benchmark runs: :class:`BenchmarkSpec`, the model builders, and the hashes
that identify a spec and its data (a finished (model, seed) pair is reused only
under the same hash)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ...data.registry import PerturbationRegistry, condition_column
from ...data.synthetic import SyntheticOracle
from ...errors import PDAEError
from ...models.baselines import (
    AdditiveBaseline,
    LinearBaseline,
    NoChange,
    PoolBaseline,
    ScaledAdditiveBaseline,
)
from ...models.catalog import MODEL_TYPES, build_model
from ...train.loop import Callback, TrainConfig
from ..heldout import NOISE, Predictor

NOT_HASHED = ("dataset", "models", "seeds", "highlight")  # fields that do not change a (model, seed) result
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed", "accelerator"}


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


def _cross_fitted_pdae(req: FitRequest) -> Predictor:
    """A PDAE ensemble of 5 cross-fitted networks (options may set ``n_members`` and PDAE's
    hyperparameters), calibrated on its training doubles (:mod:`pdae_core.eval.calibration`)."""
    options = dict(req.options)
    n = int(options.pop("n_members", 5))
    model = build_model("pdae", req.registry, seed=req.seed, n_members=n, cross_fit=True, **options)
    model.fit(req.adata, holdout=req.holdout, callbacks=req.callbacks, seed=req.seed, accelerator=req.accelerator,
              **req.train)
    return model


#: Builders of the models that are not model types (baselines, the synthetic oracle).
#: Every model type of :data:`pdae_core.models.catalog.MODEL_TYPES` (pdae, samsvae, ...)
#: is built by :func:`model_type_builder`; a name here takes precedence.
MODEL_BUILDERS: dict[str, ModelBuilder] = {
    "additive": _baseline_builder(AdditiveBaseline),
    "scaled_additive": _baseline_builder(ScaledAdditiveBaseline),
    "linear": _baseline_builder(LinearBaseline),
    "control": _baseline_builder(NoChange),
    "pool": _baseline_builder(PoolBaseline),
    # cross-fitted, calibrated PDAE ensemble: its intervals are checked on the held-out doubles
    "pdae_ensemble": _cross_fitted_pdae,
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
    models: list[str] = field(default_factory=lambda: ["pdae", "additive", "scaled_additive", "linear", "control"])
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


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars and arrays as Python values, the rest as str."""
    if isinstance(o, np.generic):
        return o.item()
    return o.tolist() if isinstance(o, np.ndarray) else str(o)


def hash_spec(spec: BenchmarkSpec, fingerprint: str) -> str:
    """The hash of the fields that change a (model, seed) result, and of the data."""
    d = {k: v for k, v in spec.to_dict().items() if k not in NOT_HASHED}
    return _digest({"spec": d, "data": fingerprint})


def data_fingerprint(adata: ad.AnnData, registry: PerturbationRegistry) -> str:
    """Identity of the data: shape, genes, every cell's condition and the sum of X."""
    X = adata.layers[registry.layer] if registry.layer else adata.X
    total = float(X.sum(dtype=np.float64)) if sp.issparse(X) else float(np.asarray(X).sum(dtype=np.float64))
    h = hashlib.sha256()
    h.update(repr((adata.shape, total)).encode())
    h.update("\n".join(map(str, adata.var_names)).encode())
    h.update("\n".join(condition_column(adata, registry.perturbation_key)).encode())
    return h.hexdigest()[:16]
