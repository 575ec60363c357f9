"""Checks made when a checkpoint is loaded, before anything big is built (issue 14): the
safetensors header read on its own (no tensor loaded) and compared with the shapes the
config implies (a module built on the meta device, which allocates nothing), the types of
the ``training`` section of ``config.json``, and the library version that saved it.
Every problem is a :class:`CheckpointError` naming the file and the field or tensor."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError

if TYPE_CHECKING:
    from ..data.registry import PerturbationRegistry

# bytes per element of each safetensors dtype
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def read_weights_header(weights: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes listed in a safetensors file's header, read without loading any tensor.

    Refuses a header that does not fit in the file, is not valid JSON, or whose tensors need
    more bytes than the file holds."""
    try:
        size = weights.stat().st_size
        with open(weights, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > size - 8 or n > 100 << 20:
                raise CheckpointError(
                    f"{weights} is not a valid safetensors file: its header length ({n}) does not fit in the "
                    f"file ({size} bytes)."
                )
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"Cannot read {weights}: {e.strerror or e}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{weights} is not a valid safetensors file: its header is not valid JSON.") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{weights} is not a valid safetensors file: its header is not a JSON object.")
    shapes: dict[str, tuple[int, ...]] = {}
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if (not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
                or not isinstance(dtype, str) or dtype not in _DTYPE_BYTES):
            raise CheckpointError(f"{weights} is not a valid safetensors file: the header entry of tensor {name!r} is malformed.")
        shapes[name] = tuple(shape)
        total += math.prod(shape) * _DTYPE_BYTES[dtype]
    if total > size - 8 - n:
        raise CheckpointError(
            f"{weights} is not a valid safetensors file: its header lists tensors of {total} bytes but the file holds only {size - 8 - n} bytes "
            "of data; the file is truncated or was altered."
        )
    return shapes


def expected_shapes(cls: type, registry: PerturbationRegistry, kwargs: dict[str, Any],
                     where: Path) -> dict[str, tuple[int, ...]]:
    """The shapes of the weights a model of ``cls`` with this config has, built on the meta device
    (no memory is allocated, whatever sizes the config asks for)."""
    import torch

    try:
        config = cls.config_class(n_genes=registry.n_genes, n_perturbations=registry.n_perturbations, **kwargs)
        with torch.device("meta"):
            module = cls.module_class(config)
    except (TypeError, ValueError, RuntimeError, NotImplementedError, OverflowError) as e:
        raise CheckpointError(f"{where}: invalid model_config ({e}).") from None
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_shapes(weights: Path, mtype: str, expected: dict[str, tuple[int, ...]],
                  found: dict[str, tuple[int, ...]]) -> None:
    if set(found) != set(expected):
        raise CheckpointError(
            f"{weights} does not fit a {mtype!r} model with this config: missing "
            f"{sorted(set(expected) - set(found))[:5]}, unexpected {sorted(set(found) - set(expected))[:5]}."
        )
    for k, shape in expected.items():
        if found[k] != shape:
            raise CheckpointError(f"{weights}: tensor {k!r} has shape {found[k]} but config.json implies {shape}.")


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def check_training(tr: dict[str, Any], where: Path) -> None:
    """Types of the ``training`` section of config.json; a CheckpointError names the bad field."""

    def bad(field: str, expected: str) -> CheckpointError:
        return CheckpointError(
            f"{where}: invalid training section: training.{field} must be {expected}, got {tr_get(field)!r:.80}."
        )

    def tr_get(field: str) -> Any:
        d: Any = tr
        for part in field.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    for field in ("train_conditions", "holdout"):
        v = tr.get(field, [])
        if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
            raise bad(field, "a list of condition names")
    pairs = tr.get("train_pairs", [])
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(c, str) for c in p) for p in pairs
    ):
        raise bad("train_pairs", "a list of [condition, context] pairs")
    labels = tr.get("train_labels", [])
    if not isinstance(labels, list) or not all(
        isinstance(row, list) and all(_is_number(x) and x is not None for x in row) for row in labels
    ):
        raise bad("train_labels", "a list of rows of numbers")
    if tr.get("train_config") is not None and not isinstance(tr["train_config"], dict):
        raise bad("train_config", "an object or null")
    h = tr.get("history")
    if h is None:
        return
    if not isinstance(h, dict):
        raise bad("history", "an object or null")
    recs = h.get("records", [])
    if not isinstance(recs, list) or not all(
        isinstance(r, dict) and all(_is_number(x) for x in r.values()) and _is_number(r.get("epoch"))
        and r.get("epoch") is not None for r in recs
    ):
        raise bad("history.records", "a list of objects of numbers, each with an 'epoch'")
    for field, ok, expected in (
        # an integer, or a fraction of an epoch when a step budget evaluates part-way through one
        ("best_epoch", lambda v: v is None or (type(v) in (int, float) and math.isfinite(v) and v >= 0),
         "a non-negative number or null"),
        ("thread_changes", lambda v: isinstance(v, list) and all(
            isinstance(c, list) and len(c) == 2 and type(c[0]) in (int, float) and type(c[1]) is int for c in v),
         "a list of [seconds, threads] pairs"),
        ("best_val", _is_number, "a number or null"),
        ("seconds", lambda v: _is_number(v) and v is not None, "a number"),
        ("steps", lambda v: type(v) is int, "an integer"),
        ("stopped_early", lambda v: isinstance(v, bool), "true or false"),
        ("cancelled", lambda v: isinstance(v, bool), "true or false"),
        ("device", lambda v: isinstance(v, str), "a string"),
    ):
        if field in h and not ok(h[field]):
            raise bad(f"history.{field}", expected)


def warn_if_newer(version: Any, current: str, where: Path) -> None:
    """Warn when the checkpoint was saved by a newer pdae_core than the installed one."""
    import warnings

    try:
        from packaging.version import InvalidVersion, Version

        try:
            newer = Version(version) > Version(current)
        except InvalidVersion:
            raise CheckpointError(f"{where}: library_version {version!r:.40} is not a version number.") from None
    except ImportError:  # pragma: no cover - packaging is nearly always installed
        def parse(v: str) -> tuple[int, ...]:
            return tuple(int(x) for x in re.findall(r"\d+", v)[:3])

        newer = parse(version) > parse(current)
    if newer:
        warnings.warn(
            f"{where.parent} was saved by pdae_core {version}, newer than the installed {current}: it may use "
            "features this version does not know; upgrade pdae_core if loading or predictions fail.",
            UserWarning,
            stacklevel=3,
        )
