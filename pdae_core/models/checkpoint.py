"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``config.json``
(everything else). Nothing is ever unpickled, so a checkpoint from an untrusted
source cannot run code; any other file in the directory is refused.

``config.json`` holds the model type, its hyperparameters, the registry (gene
names, perturbation vocabulary, separator, control label, preprocessing), what the
model was trained on, the library version, and the SHA-256 of the weights file.
Saving writes a fresh directory next to the target and swaps it in, so an
interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.registry import PerturbationRegistry
from ..errors import CheckpointError, DataError
from ..train.loop import History, TrainConfig

if TYPE_CHECKING:
    from .base import PerturbationModel

FORMAT = "pdae_core.checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ALLOWED_FILES = {WEIGHTS, CONFIG, "README.md"}
_IGNORED = {".DS_Store"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _library_version() -> str:
    from .._version import __version__

    return __version__


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_checkpoint(model: PerturbationModel, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``model`` to directory ``path`` (created, or atomically replaced if it is empty or holds a
    checkpoint; any other directory is refused rather than deleted)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} exists and is not a directory; a checkpoint is a directory.")
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists (pass overwrite=True to replace it).")
    if path.exists():
        foreign = sorted({p.name for p in path.iterdir()} - ALLOWED_FILES - _IGNORED)
        if foreign:
            raise CheckpointError(
                f"{path} exists and is not a pdae_core checkpoint (it holds {foreign[:5]}); refusing to "
                "replace it: choose another path or empty it first."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_dir(path.parent, f".{path.name}.tmp-")
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
        # one metadata key: safetensors writes several in no fixed order, which would make
        # byte-identical weights hash differently from one save to the next
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": _library_version(),
            "model_type": model.model_type,
            "model_config": model.config.to_dict(),
            "init_seed": int(model.init_seed),
            "registry": model.registry.to_dict(),
            "training": {
                "train_conditions": list(model.train_conditions),
                "train_labels": model.train_labels.tolist(),
                "holdout": list(model.holdout),
                "train_config": model.train_config.to_dict() if model.train_config else None,
                "history": model.history.to_dict() if model.history else None,
            },
            "weights_sha256": _sha256(tmp / WEIGHTS),
        }
        with open(tmp / CONFIG, "w") as f:
            json.dump(_json_safe(config), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            for stale in path.parent.glob(f".{path.name}.old-*"):  # left by a save killed after its swap
                shutil.rmtree(stale, ignore_errors=True)
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            old.rmdir()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _new_dir(parent: Path, prefix: str) -> Path:
    """A fresh directory created with the user's umask (``mkdtemp`` would make it 0700)."""
    while True:
        d = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue


def _recover(path: Path) -> None:
    """If a save was interrupted between its two renames, put the previous checkpoint back."""
    if path.exists():
        return
    olds = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.exists() else []
    if olds:
        os.replace(olds[-1], path)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Validate a checkpoint directory's files and return its parsed ``config.json``."""
    path = Path(path)
    _recover(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory (expected a folder with {WEIGHTS} and {CONFIG}).")
    names = {p.name for p in path.iterdir()} - _IGNORED
    unexpected = sorted(names - ALLOWED_FILES)
    if unexpected:
        raise CheckpointError(
            f"Checkpoint {path} contains unexpected file(s) {unexpected}: a checkpoint holds only "
            f"{WEIGHTS} and {CONFIG}. Pickle or other executable formats are never loaded; "
            "remove the extra files if you trust them."
        )
    for need in (WEIGHTS, CONFIG):
        if need not in names:
            raise CheckpointError(f"Checkpoint {path} is incomplete: {need} is missing.")
        if not (path / need).is_file():
            raise CheckpointError(f"Checkpoint {path}: {need} is not a regular file.")
    try:
        with open(path / CONFIG) as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / CONFIG} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path / CONFIG} must hold a JSON object.")
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{path / CONFIG} is not a pdae_core checkpoint (format={cfg.get('format')!r}).")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path / CONFIG} has format_version {cfg.get('format_version')!r}; this library reads {FORMAT_VERSION}."
        )
    for key in ("model_type", "model_config", "registry", "training", "weights_sha256"):
        if key not in cfg:
            raise CheckpointError(f"{path / CONFIG} is missing the field {key!r}.")
    return cfg


def load_checkpoint(path: str | os.PathLike, accelerator: str = "cpu") -> PerturbationModel:
    """Load and validate a checkpoint; raises :class:`CheckpointError` on anything amiss."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..train.loop import resolve_device
    from .catalog import MODEL_TYPES

    path = Path(path)
    cfg = read_config(path)
    mtype = cfg["model_type"]
    if mtype not in MODEL_TYPES:
        raise CheckpointError(f"{path}: unknown model type {mtype!r} (known: {sorted(MODEL_TYPES)}).")
    cls = MODEL_TYPES[mtype]
    if _sha256(path / WEIGHTS) != cfg["weights_sha256"]:
        raise CheckpointError(
            f"{path / WEIGHTS} does not match the SHA-256 recorded in {CONFIG}: the weights or the config were "
            "changed after saving."
        )
    try:
        registry = PerturbationRegistry.from_dict(cfg["registry"])
    except (DataError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG}: invalid registry ({e}).") from None
    mc = cfg["model_config"]
    if not isinstance(mc, dict):
        raise CheckpointError(f"{path / CONFIG}: model_config must be an object.")
    if mc.get("n_genes") != registry.n_genes or mc.get("n_perturbations") != registry.n_perturbations:
        raise CheckpointError(
            f"{path / CONFIG}: model_config says {mc.get('n_genes')} genes / {mc.get('n_perturbations')} perturbations "
            f"but the registry lists {registry.n_genes} / {registry.n_perturbations}."
        )
    kwargs = {k: v for k, v in mc.items() if k not in ("n_genes", "n_perturbations")}
    try:
        model = cls(registry, seed=int(cfg.get("init_seed", 0)), **kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG}: invalid model_config ({e}).") from None
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / WEIGHTS} is not a valid safetensors file: {e}") from None
    expected = model.module.state_dict()
    if set(state) != set(expected):
        raise CheckpointError(
            f"{path / WEIGHTS} does not fit a {mtype!r} model with this config: missing "
            f"{sorted(set(expected) - set(state))[:5]}, unexpected {sorted(set(state) - set(expected))[:5]}."
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path / WEIGHTS}: tensor {k!r} has shape {tuple(state[k].shape)} but config.json implies {tuple(v.shape)}."
            )
    model.module.load_state_dict(state)
    tr = cfg["training"] if isinstance(cfg["training"], dict) else {}
    try:
        model.train_conditions = [str(c) for c in tr.get("train_conditions", [])]
        labels = np.asarray(tr.get("train_labels", []), dtype=np.float32)
        model.train_labels = labels.reshape(-1, registry.n_perturbations) if labels.size else model.train_labels
        model.holdout = [str(c) for c in tr.get("holdout", [])]
        model.train_config = TrainConfig.from_dict(tr["train_config"]) if tr.get("train_config") else None
        model.history = History.from_dict(tr["history"]) if tr.get("history") else None
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise CheckpointError(f"{path / CONFIG}: invalid training section ({e!r}).") from None
    model.module.to(resolve_device(accelerator))
    model.module.eval()
    return model
