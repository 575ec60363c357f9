"""``pdae train`` flags generated from the selected model's config dataclass.

Every field of ``MODEL_TYPES[name].config_class`` except those that come from the data
becomes a flag ``--field-name`` whose type is read from the field's annotation: int,
float, bool (``--x`` / ``--no-x``), str and tuples as comma lists. Help texts and
choices are the ones the config declares on its fields
(:func:`~pdae_core.models.hparams.hp`). A flag not given leaves no attribute on the
parsed arguments, so only the values the user gave reach the model and the config's
own defaults apply otherwise; the help text shows those defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from ..models.hparams import field_choices, help_text, hyperparameter_fields
from .common import finite_float, float_list, int_list, integer, non_negative_int, positive_int, str_list

DEST_PREFIX = "hp_"

#: Integer fields with a bound checked while parsing (the config checks the rest).
INT_TYPES: dict[str, Callable[[str], int]] = {
    "latent_dim": positive_int, "n_sources": positive_int, "noise_dim": non_negative_int,
}
METAVARS = {"latent_dim": "D"}


@dataclasses.dataclass(frozen=True)
class ModelFlag:
    """One generated flag: the config field it sets and how it is parsed and shown."""

    field: str
    flag: str
    kind: str  # "bool" | "int" | "float" | "str" | "ints" | "floats" | "strs"
    default: Any
    optional: bool = False
    choices: tuple[str, ...] | None = None
    as_list: bool = False  # the field is a list, not a tuple
    help: str = ""  # the help text the config declares for the field

    @property
    def dest(self) -> str:
        return DEST_PREFIX + self.field


def _config_class(model: str) -> type:
    from ..models.catalog import MODEL_TYPES

    return MODEL_TYPES[model].config_class


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    try:
        return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))[f.name]
    except Exception:  # unresolvable annotation: fall back on the default's type
        default = _default(f)
        return type(default) if default is not None else None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _kind(tp: Any) -> tuple[str | None, bool, bool]:
    """(kind, optional, as_list) of a field annotation; kind None when no flag can set it."""
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            return None, False, False
        tp, optional = args[0], True
        origin = typing.get_origin(tp)
    scalar = {bool: "bool", int: "int", float: "float", str: "str"}
    if tp in scalar:
        return scalar[tp], optional, False
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(set(args)) == 1 and args[0] in (int, float, str):
            return {int: "ints", float: "floats", str: "strs"}[args[0]], optional, origin is list
    return None, False, False


def model_flags(model: str) -> list[ModelFlag]:
    """The flags of a model type's hyperparameters, in the order of its config fields."""
    cls = _config_class(model)
    choices = field_choices(cls)
    out = []
    for f in hyperparameter_fields(cls):
        kind, optional, as_list = _kind(_field_type(cls, f))
        if kind is None:
            continue
        out.append(ModelFlag(field=f.name, flag="--" + f.name.replace("_", "-"), kind=kind, default=_default(f),
                             optional=optional, choices=choices.get(f.name) if kind == "str" else None,
                             as_list=as_list, help=help_text(f)))
    return out


def show(value: Any) -> str:
    """A config default as written on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _parser(flag: ModelFlag) -> Callable[[str], Any]:
    base: Callable[[str], Any] = {
        "int": INT_TYPES.get(flag.field, integer), "float": finite_float, "str": str,
        "ints": int_list, "floats": float_list, "strs": str_list,
    }[flag.kind]
    if flag.as_list:
        base = (lambda parse: lambda text: list(parse(text)))(base)
    if not flag.optional:
        return base

    def parse(text: str) -> Any:
        return None if text.strip().lower() == "none" else base(text)

    return parse


def _metavar(flag: ModelFlag) -> str | None:
    if flag.choices:
        return None
    if flag.field in METAVARS:
        return METAVARS[flag.field]
    if flag.field.startswith("w_"):
        return "W"
    if flag.kind in ("ints", "floats", "strs"):
        return show(flag.default) if flag.default else {"ints": "N,N", "floats": "X,X", "strs": "A,B"}[flag.kind]
    return {"int": "N", "float": "X", "str": "TEXT"}[flag.kind]


def add_model_flags(parser: argparse.ArgumentParser, model: str) -> None:
    """Add a group with one flag per hyperparameter of ``model`` (absent from the parsed
    arguments unless given)."""
    g = parser.add_argument_group(
        f"{model} hyperparameters (default: the model's own; `--model NAME --help` lists another model's)"
    )
    flags = model_flags(model)
    for flag in flags:
        text = flag.help or flag.field.replace("_", " ")
        if flag.optional:
            text += '; "none" accepted'
        shown = f"{text} (default: {show(flag.default)})".replace("%", "%%")
        if flag.kind == "bool":
            g.add_argument(flag.flag, dest=flag.dest, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS,
                           help=shown)
        else:
            g.add_argument(flag.flag, dest=flag.dest, type=_parser(flag), choices=flag.choices,
                           metavar=_metavar(flag), default=argparse.SUPPRESS, help=shown)
    parser.set_defaults(model_flags=tuple(flag.field for flag in flags))


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """The model hyperparameters given on the command line (only those given)."""
    given = vars(args)
    return {name: given[DEST_PREFIX + name] for name in getattr(args, "model_flags", ()) if DEST_PREFIX + name in given}
