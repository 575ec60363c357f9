"""The catalogue of model types: every :class:`~pdae_core.models.base.PerturbationModel`
subclass registers itself here by its ``model_type`` so that checkpoints, the CLI
and the benchmark find it by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import PerturbationModel

MODEL_TYPES: dict[str, type[PerturbationModel]] = {}


def register_model(cls: type[PerturbationModel]) -> type[PerturbationModel]:
    """Class decorator: make a model type loadable from checkpoints by its ``model_type``."""
    MODEL_TYPES[cls.model_type] = cls
    return cls
