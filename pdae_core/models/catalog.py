"""The catalogue of model types: every :class:`~pdae_core.models.base.PerturbationModel`
subclass registers itself here by its ``model_type`` so that checkpoints, the CLI
and the benchmark find it by name; :func:`build_model` builds one by that name."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..data.registry import PerturbationRegistry

#: model type name -> its :class:`~pdae_core.models.base.PerturbationModel` subclass (typed loosely:
#: this module must not import ``base``, which imports the checkpoints, which read this catalogue).
MODEL_TYPES: dict[str, type] = {}


def register_model(cls: type) -> type:
    """Class decorator: make a model type loadable from checkpoints by its ``model_type``."""
    MODEL_TYPES[cls.model_type] = cls
    return cls


#: The most members an ensemble may have (checked when building one and when loading a checkpoint).
MAX_MEMBERS = 64

#: set by :mod:`.ensemble` when the models package is imported (as the model types register themselves)
_ENSEMBLE_FACTORY: list[Any] = []


def register_ensemble_factory(factory: Any) -> Any:
    """Called once by :mod:`.ensemble`: ``factory(member_class)`` returns the ensemble class of a type."""
    _ENSEMBLE_FACTORY[:] = [factory]
    return factory


def ensemble_class(member_class: type) -> type:
    """The ensemble class of a model type (see :mod:`pdae_core.models.ensemble`)."""
    if not _ENSEMBLE_FACTORY:  # pragma: no cover - the models package always imports .ensemble
        raise RuntimeError("pdae_core.models.ensemble is not imported.")
    return _ENSEMBLE_FACTORY[0](member_class)


def _config_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


def build_model(
    model_type: str, registry: PerturbationRegistry, seed: int = 0, n_members: int | None = None,
    **hyperparameters: Any,
) -> Any:
    """An untrained model of a registered type for ``registry``, initialised with ``seed``; with
    ``n_members``, an ensemble of that many (:mod:`pdae_core.models.ensemble`).

    ``hyperparameters`` set fields of the type's config; the config's defaults apply to
    the others. So that one form can offer the same choices for every type, a
    hyperparameter that only other model types have (``latent_dim`` for FCR) is left
    out; a name that no model type knows reaches the model, which rejects it.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r} (known: {', '.join(sorted(MODEL_TYPES))})")
    cls = MODEL_TYPES[model_type]
    own = _config_fields(cls.config_class)
    others = set().union(*(_config_fields(c.config_class) for c in MODEL_TYPES.values())) - own
    options = {k: v for k, v in hyperparameters.items() if k not in others}
    if n_members is not None:
        return ensemble_class(cls)(registry, seed=seed, n_members=n_members, **options)
    return cls(registry, seed=seed, **options)
