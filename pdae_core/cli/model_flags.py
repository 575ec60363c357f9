"""``pdae train`` flags generated from the selected model's config dataclass.

Every field of ``MODEL_TYPES[name].config_class`` except those that come from the data
becomes a flag ``--field-name`` whose type is read from the field's annotation: int,
float, bool (``--x`` / ``--no-x``), str (with choices where the config's
``__post_init__`` checks ``self.x in ("a", "b")``) and tuples as comma lists. A flag
not given leaves no attribute on the parsed arguments, so only the values the user
gave reach the model and the config's own defaults apply otherwise; the help text
shows those defaults.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from .common import finite_float, float_list, int_list, integer, non_negative_int, positive_int, str_list

#: Config fields filled in from the data, never flags.
DATA_FIELDS = ("n_genes", "n_perturbations", "covariate_categories")
DEST_PREFIX = "hp_"

#: Help texts written for the command line, by model type and field (others: the field's comment).
HELP: dict[str, dict[str, str]] = {
    "pdae": {
        "latent_dim": "latent dimension",
        "hidden_dims": "encoder layer sizes, mirrored by the decoder",
        "noise_dim": "decoder noise dimension, 0 = deterministic",
        "noise_sigma": "standard deviation of the decoder noise",
        "softplus_output": "softplus on the decoder output (non-negative expression)",
        "grid": "score each cell against n_sources sampled cells or against every cell of the batch",
        "n_sources": "sources per cell with --grid sampled",
        "source_sampling": "with --grid sampled: a cell's sources all come from one other condition of the batch, "
        "or from anywhere in the batch",
        "w_pert": "weight of the perturbation energy score",
        "w_rec": "weight of the reconstruction energy score",
        "w_prior": "weight of the latent prior energy distance",
        "w_l21": "weight of the L2,1 penalty on W",
        "rec_samples": "decoder samples per cell in the reconstruction energy score",
    },
}
GENERIC_HELP = {"latent_dim": "latent dimension", "hidden_dims": "hidden layer sizes"}
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

    @property
    def dest(self) -> str:
        return DEST_PREFIX + self.field


def _config_class(model: str) -> type:
    from ..models.catalog import MODEL_TYPES

    return MODEL_TYPES[model].config_class


@functools.cache
def _source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return ""


def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field in the class source, where there is one
    that says more than the field's choices (``# "a" | "b"``)."""
    out: dict[str, str] = {}
    for m in re.finditer(r"^[ \t]+(\w+)[ \t]*:[^=\n]*=[^#\n]*#[ \t]*(.+?)[ \t]*$", _source(cls), re.M):
        if re.sub(r'"[^"]*"|\||\s', "", m.group(2)):
            out.setdefault(m.group(1), m.group(2))
    return out


def field_choices(cls: type) -> dict[str, tuple[str, ...]]:
    """The fixed sets ``self.<field> in ("a", "b", ...)`` that the config checks."""
    out: dict[str, tuple[str, ...]] = {}
    for m in re.finditer(r"self\.(\w+) in (\([^()]*\))", _source(cls)):
        try:
            values = ast.literal_eval(m.group(2))
        except (ValueError, SyntaxError):
            continue
        if isinstance(values, tuple) and values and all(isinstance(v, str) for v in values):
            out.setdefault(m.group(1), values)
    return out


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
    for f in dataclasses.fields(cls):
        if f.name in DATA_FIELDS:
            continue
        kind, optional, as_list = _kind(_field_type(cls, f))
        if kind is None:
            continue
        out.append(ModelFlag(field=f.name, flag="--" + f.name.replace("_", "-"), kind=kind, default=_default(f),
                             optional=optional, choices=choices.get(f.name) if kind == "str" else None,
                             as_list=as_list))
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
    cls = _config_class(model)
    comments = field_comments(cls)
    own = HELP.get(model, {})
    g = parser.add_argument_group(
        f"{model} hyperparameters (default: the model's own; `--model NAME --help` lists another model's)"
    )
    flags = model_flags(model)
    for flag in flags:
        text = own.get(flag.field) or comments.get(flag.field) or GENERIC_HELP.get(flag.field) \
            or flag.field.replace("_", " ")
        if flag.optional:
            text += '; "none" accepted'
        help_text = f"{text} (default: {show(flag.default)})".replace("%", "%%")
        if flag.kind == "bool":
            g.add_argument(flag.flag, dest=flag.dest, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS,
                           help=help_text)
        else:
            g.add_argument(flag.flag, dest=flag.dest, type=_parser(flag), choices=flag.choices,
                           metavar=_metavar(flag), default=argparse.SUPPRESS, help=help_text)
    parser.set_defaults(model_flags=tuple(flag.field for flag in flags))


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """The model hyperparameters given on the command line (only those given)."""
    given = vars(args)
    return {name: given[DEST_PREFIX + name] for name in getattr(args, "model_flags", ()) if DEST_PREFIX + name in given}
