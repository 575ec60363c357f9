"""Hyperparameter declarations for the model configs.

Every hyperparameter of a model's config dataclass is declared with :func:`hp`: its
default, a one-line help text and, for a fixed set of string values, its choices. The
command line (``pdae train`` flags) and the config's own validation read them from the
field (``dataclasses.Field.metadata``), so each is written once, next to the field.
The metadata does not enter ``dataclasses.asdict``, equality or checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

#: Config fields filled in from the data (the registry), never hyperparameters.
DATA_FIELDS = ("n_genes", "n_perturbations", "covariate_categories", "context_categories")


def hp(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with an immutable ``default``, a ``help`` text for users and,
    optionally, the ``choices`` its value must be one of (in the order shown)."""
    if not help.strip():
        raise ValueError("hp: the help text must not be empty")
    if choices is not None:
        choices = tuple(choices)
        if not choices or default not in choices:
            raise ValueError(f"hp: default {default!r} is not among the choices {choices}")
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def hyperparameter_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are hyperparameters (not filled in from the data)."""
    return [f for f in dataclasses.fields(cls) if f.name not in DATA_FIELDS]


def help_text(f: dataclasses.Field) -> str:
    """The help text declared for a field ('' when none was)."""
    return str(f.metadata.get("help") or "")


def field_choices(cls: type) -> dict[str, tuple[str, ...]]:
    """The declared choices of a config's fields, by field name (fields with choices only)."""
    return {f.name: f.metadata["choices"] for f in dataclasses.fields(cls) if f.metadata.get("choices")}


def choice_check(config: Any, name: str) -> tuple[bool, str]:
    """``(ok, message)`` for a field declared with choices: whether the config's value is
    one of them, and the message ``"<name> must be 'a' or 'b'"`` for when it is not."""
    allowed = field_choices(type(config))[name]
    quoted = [repr(c) for c in allowed]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return getattr(config, name) in allowed, f"{name} must be {listed}"


class ModelConfig:
    """Base of the model config dataclasses: what every config does the same way."""

    def _raise_failed(self, checks: Iterable[tuple[bool, str]]) -> None:
        """Raise ``ValueError("<Config>: <message>")`` for the first failed ``(ok, message)``."""
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"{type(self).__name__}: {msg}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tuples and lists as new lists): what a
        checkpoint stores, and ``type(self)(**d)`` rebuilds the config."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, (tuple, list)) else v
        return out
