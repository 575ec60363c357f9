"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``config.json``
(everything else). Nothing is ever unpickled, so a checkpoint from an untrusted
source cannot run code; any other file in the directory is refused.

``config.json`` holds the model type, its hyperparameters, the registry (gene
names, perturbation vocabulary, separator, control label, preprocessing), what the
model was trained on, the library version, the SHA-256 of the weights file, and one
digest over all of it (:mod:`.integrity`): a checkpoint modified after saving is refused
on load unless the caller passes ``trust_modified=True``. A checkpoint packed in a ``.zip`` (the
dashboard's download) is loaded with the same checks by :func:`.archive.load_model_archive`.

Saving (:func:`save_checkpoint`) never deletes a file it did not write, and never
loses the previous checkpoint:

1. :func:`check_output_dir`: the target ``NAME`` must be absent, an empty folder, or a
   checkpoint folder (``overwrite=True`` to replace what it holds), in a writable
   folder. A folder holding any other file is refused, naming the files; a
   ``README.md`` there is carried over to the new checkpoint.
2. Lock ``.NAME.lock`` next to ``NAME`` (:mod:`.output_lock`): a save while another
   process holds the lock (for instance a running ``pdae train --out NAME``) is refused.
3. Under the lock, leftovers of earlier saves killed midway are handled (step 6).
4. The new checkpoint is written to ``.NAME.tmp-PID-TOKEN`` (weights, config, fsync;
   ``README.md`` copied).
5. Swap: ``NAME`` -> ``.NAME.old-PID-TOKEN``, then ``.NAME.tmp-PID-TOKEN`` -> ``NAME``
   (two atomic renames; an exception between them renames the old one back), then
   ``.NAME.old-PID-TOKEN`` is deleted and the lock released.
6. A save killed during 4 leaves a ``tmp`` folder; killed between the two renames, an
   ``old`` *and* a ``tmp`` folder of the same PID-TOKEN and no ``NAME``; killed after
   them, a lone ``old`` folder. Only the middle case is an interrupted swap: the next
   load or save renames that ``old`` back to ``NAME`` (the previous checkpoint). A lone
   ``old`` folder is never put back, so a checkpoint the user deleted stays deleted.
   Leftover folders named exactly ``.NAME.tmp-*`` / ``.NAME.old-*`` as this module (or
   an earlier version) names them are deleted by the next save (under the lock) and,
   once the process that made them no longer runs, by the next load (with the lock
   file of a process that no longer runs).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..data.registry import PerturbationRegistry
from ..errors import CheckpointError, DataError
from ..train.loop import History, TrainConfig
from .checkpoint_checks import (
    check_shapes,
    check_training,
    expected_shapes,
    read_weights_header,
    warn_if_newer,
)
from .integrity import seal, verify
from .output_lock import output_lock, pid_alive, remove_stale_lock

FORMAT = "pdae_core.checkpoint"
FORMAT_VERSION = 2  # 2: config.json carries checkpoint_sha256 (integrity.py); 1 did not
READABLE_VERSIONS = (1, 2)
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


def _target(path: str | os.PathLike) -> Path:
    """``path`` as a Path with a real last component (``.`` or ``..`` would hide it)."""
    path = Path(path)
    return Path(os.path.abspath(path)) if path.name in ("", "..") else path


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    return p


def check_output_dir(path: str | os.PathLike, overwrite: bool, flag: str = "overwrite=True") -> list[str]:
    """Check that a checkpoint can be saved to ``path`` without deleting anything it did not write,
    and that its folder is writable; raises :class:`CheckpointError` otherwise.

    ``path`` must be absent, an empty folder, or a folder with only checkpoint files (``config.json``,
    ``model.safetensors``, ``README.md``); it needs ``overwrite`` (named ``flag`` in the message) if
    it holds any file. Returns the files that a save carries over (``README.md``)."""
    path = _target(path)
    if path.is_symlink():
        raise CheckpointError(f"{path} is a symbolic link; give the real folder to save a checkpoint to.")
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} exists and is not a directory; a checkpoint is a directory.")
    keep: list[str] = []
    if path.is_dir():
        try:
            cwd = Path.cwd().resolve()
        except OSError:
            cwd = None
        if cwd is not None and (cwd == path.resolve() or path.resolve() in cwd.parents):
            raise CheckpointError(
                f"{path} is the current folder or holds it: a save replaces the whole folder; "
                "give a folder name inside it instead."
            )
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except PermissionError:
            raise CheckpointError(f"Cannot read folder {path} (permission denied).") from None
        names, foreign = [], []
        for e in entries:
            if e.name in _IGNORED or e.name in ALLOWED_FILES:
                if not e.is_file(follow_symlinks=False):
                    foreign.append(e.name)  # a folder or a link named like a checkpoint file
                elif e.name not in (WEIGHTS, CONFIG):
                    keep.append(e.name)
            else:
                foreign.append(e.name)
            if e.name not in _IGNORED:
                names.append(e.name)
        if foreign:
            foreign.sort()
            more = f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
            raise CheckpointError(
                f"{path} exists and is not a pdae_core checkpoint (it holds {foreign[:10]}{more}); refusing to "
                "replace it, which would delete these files: move them elsewhere or choose another folder."
            )
        if names and not overwrite:
            raise CheckpointError(
                f"{path} already exists and holds {sorted(names)}; pass {flag} to replace the checkpoint "
                "(a README.md there is kept)."
            )
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise CheckpointError(f"Cannot create {path}: {base} is a file, not a folder.")
    if base == path.parent:  # a real write probe (also catches read-only mounts and ACLs)
        probe = base / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as e:
            raise CheckpointError(
                f"Cannot write to folder {base} ({e.strerror or e}): {path} cannot be saved there."
            ) from None
    elif not os.access(base, os.W_OK | os.X_OK):
        raise CheckpointError(f"Cannot write to folder {base} (permission denied): {path} cannot be created there.")
    return sorted(keep)


def save_checkpoint(model: Any, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``model`` to directory ``path`` (the sequence is in the module docstring): created, or
    atomically replaced if it holds a checkpoint and ``overwrite``; a folder holding other files is
    refused, never emptied. Refused as well while another process holds the output lock of ``path``."""
    path = _target(path)
    check_output_dir(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"Cannot create the folder {path.parent}: {e.strerror or e}.") from None
    with output_lock(path, f"Checkpoint {path}"):
        clean_leftovers(path, locked=True)
        keep = check_output_dir(path, overwrite)
        _write_and_swap(model, path, keep)
    return path


def _write_and_swap(model: Any, path: Path, keep: list[str]) -> None:
    from safetensors.torch import save_file

    token = f"{os.getpid()}-{secrets.token_hex(6)}"
    tmp = path.parent / f".{path.name}.tmp-{token}"
    tmp.mkdir()  # with the user's umask (mkdtemp would make it 0700)
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
        # one metadata key: safetensors writes several in no fixed order, which would make
        # byte-identical weights hash differently from one save to the next
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        _fsync(tmp / WEIGHTS)
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
                "train_pairs": [list(p) for p in getattr(model, "train_pairs", [])],
                "train_config": model.train_config.to_dict() if model.train_config else None,
                "history": model.history.to_dict() if model.history else None,
            },
            "weights_sha256": _sha256(tmp / WEIGHTS),
        }
        record = model._ensemble_record()
        if record is not None:
            config["ensemble"] = record
        with open(tmp / CONFIG, "w") as f:
            json.dump(seal(_json_safe(config)), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        for name in keep:  # the user's README.md moves over to the new checkpoint
            shutil.copy2(path / name, tmp / name)
        _fsync(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{token}"
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            _fsync(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
            _fsync(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file or a folder's entries to disk (best effort: not every system syncs folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# how save names its temporary folders (PID-TOKEN), and how earlier versions named them
_LEFTOVER = re.compile(r"(?P<kind>tmp|old)-(?:(?P<pid>[0-9]+)-[0-9a-f]{12}|[0-9a-f]{12}|[a-z0-9_]{8})")


def _leftovers(path: Path) -> list[tuple[Path, str, int | None, str]]:
    """The leftover folders of saves to ``path``: (folder, 'tmp' or 'old', PID or None, suffix)."""
    prefix = f".{path.name}."
    try:
        with os.scandir(path.parent) as it:
            entries = list(it)
    except OSError:
        return []
    out = []
    for e in entries:
        m = _LEFTOVER.fullmatch(e.name[len(prefix):]) if e.name.startswith(prefix) else None
        if m and e.is_dir(follow_symlinks=False):
            out.append((Path(e.path), m["kind"], int(m["pid"]) if m["pid"] else None, e.name[len(prefix) + 4:]))
    return sorted(out)


def clean_leftovers(path: str | os.PathLike, locked: bool = False) -> None:
    """Finish what saves to ``path`` killed midway left behind (module docstring, step 6).

    ``locked``: the caller holds the output lock of ``path``, so no other save to it runs and
    every leftover goes; otherwise only those of processes that no longer run. Best effort:
    a read-only folder is left as it is."""
    path = _target(path)
    items = _leftovers(path)
    me = os.getpid()

    def finished(pid: int | None) -> bool:
        if pid is None or pid == me:
            return locked
        return locked or not pid_alive(pid)

    if not os.path.lexists(path):
        tmps = {suffix for _, kind, pid, suffix in items if kind == "tmp" and pid is not None}
        for d, kind, pid, suffix in items:
            if kind == "old" and pid is not None and suffix in tmps and finished(pid):
                try:
                    os.replace(d, path)  # killed between the two renames: the previous checkpoint comes back
                except OSError:
                    pass  # restored by another process first, or a read-only folder
                break
    for d, _, pid, _ in items:
        if finished(pid) and os.path.lexists(d):
            shutil.rmtree(d, ignore_errors=True)
    if not locked:
        remove_stale_lock(path)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Validate a checkpoint directory's files and return its parsed ``config.json``."""
    path = Path(path)
    clean_leftovers(path)
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
    except RecursionError:
        raise CheckpointError(f"{path / CONFIG} is not a checkpoint config: its JSON is nested too deeply.") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path / CONFIG} must hold a JSON object.")
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{path / CONFIG} is not a pdae_core checkpoint (format={cfg.get('format')!r}).")
    if cfg.get("format_version") not in READABLE_VERSIONS or isinstance(cfg.get("format_version"), bool):
        raise CheckpointError(
            f"{path / CONFIG} has format_version {cfg.get('format_version')!r:.40}; this library reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))}."
        )
    for key in ("model_type", "model_config", "registry", "training", "weights_sha256"):
        if key not in cfg:
            raise CheckpointError(f"{path / CONFIG} is missing the field {key!r}.")
    kind_name = {str: "string", dict: "object"}
    for key, kind in (("model_type", str), ("model_config", dict), ("registry", dict), ("training", dict),
                      ("weights_sha256", str)):
        if not isinstance(cfg[key], kind):
            raise CheckpointError(f"{path / CONFIG}: the field {key!r} must be a JSON {kind_name[kind]}.")
    if "library_version" in cfg and not isinstance(cfg["library_version"], str):
        raise CheckpointError(f"{path / CONFIG}: the field 'library_version' must be a version string.")
    return cfg


def load_checkpoint(path: str | os.PathLike, accelerator: str = "cpu", trust_modified: bool = False) -> Any:
    """Load and validate a checkpoint; raises :class:`CheckpointError` on anything amiss.

    A checkpoint modified after saving (or saved without a digest, format 1) is refused unless
    ``trust_modified``, which loads it with a warning (:mod:`.integrity`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..train.loop import resolve_device
    from .catalog import MAX_MEMBERS, MODEL_TYPES, ensemble_class

    path = Path(path)
    cfg = read_config(path)
    verify(cfg, _sha256(path / WEIGHTS), path, trust_modified=trust_modified)
    mtype = cfg["model_type"]
    if mtype not in MODEL_TYPES:
        raise CheckpointError(f"{path}: unknown model type {mtype!r:.80} (known: {sorted(MODEL_TYPES)}).")
    cls = MODEL_TYPES[mtype]
    try:
        registry = PerturbationRegistry.from_dict(cfg["registry"])
    except (DataError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG}: invalid registry ({e}).") from None
    mc = cfg["model_config"]
    if mc.get("n_genes") != registry.n_genes or mc.get("n_perturbations") != registry.n_perturbations:
        raise CheckpointError(
            f"{path / CONFIG}: model_config says {mc.get('n_genes')} genes / {mc.get('n_perturbations')} perturbations "
            f"but the registry lists {registry.n_genes} / {registry.n_perturbations}."
        )
    kwargs = {k: v for k, v in mc.items() if k not in ("n_genes", "n_perturbations")}
    n_members, ens = None, None
    if "ensemble" in cfg:
        ens = cfg["ensemble"]
        n_members = ens.get("n_members") if isinstance(ens, dict) else None
        if type(n_members) is not int or not 1 <= n_members <= MAX_MEMBERS:
            raise CheckpointError(
                f"{path / CONFIG}: the field 'ensemble' must be an object with n_members, an integer from 1 to "
                f"{MAX_MEMBERS}; got {ens!r:.80}."
            )
        if ens.get("cross_fit", False) not in (True, False):
            raise CheckpointError(f"{path / CONFIG}: ensemble.cross_fit must be true or false.")
    tr = cfg["training"]
    check_training(tr, path / CONFIG)
    if "library_version" in cfg:
        warn_if_newer(cfg["library_version"], _library_version(), path / CONFIG)
    # sizes first, from the header and a module on the meta device: nothing big is allocated
    # before the config is known to agree with the weights
    expected = expected_shapes(cls, registry, kwargs, path / CONFIG)
    if n_members is not None:  # one network per member, under members.K.
        expected = {f"members.{k}.{name}": shape for k in range(n_members) for name, shape in expected.items()}
        cls, kwargs = ensemble_class(cls), {**kwargs, "n_members": n_members,
                                            "cross_fit": bool(ens.get("cross_fit", False))}
    check_shapes(path / WEIGHTS, mtype, expected, read_weights_header(path / WEIGHTS))
    try:
        init_seed = int(cfg.get("init_seed", 0))
        model = cls(registry, seed=init_seed, **kwargs)
    except (TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{path / CONFIG}: invalid model_config or init_seed ({e}).") from None
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / WEIGHTS} is not a valid safetensors file: {e}") from None
    check_shapes(path / WEIGHTS, mtype, {k: tuple(v.shape) for k, v in model.module.state_dict().items()},
                  {k: tuple(v.shape) for k, v in state.items()})
    model.module.load_state_dict(state)
    try:
        model.train_conditions = [str(c) for c in tr.get("train_conditions", [])]
        labels = np.asarray(tr.get("train_labels", []), dtype=np.float32)
        model.train_labels = labels.reshape(-1, registry.n_perturbations) if labels.size else model.train_labels
        model.holdout = [str(c) for c in tr.get("holdout", [])]
        model.train_pairs = [[str(a), str(b)] for a, b in tr.get("train_pairs", [])]
        model.train_config = TrainConfig.from_dict(tr["train_config"]) if tr.get("train_config") else None
        model.history = History.from_dict(tr["history"]) if tr.get("history") else None
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise CheckpointError(f"{path / CONFIG}: invalid training section ({e!r}).") from None
    if ens is not None:
        try:
            model._read_ensemble_record(ens, str(path / CONFIG))
        except DataError as e:
            raise CheckpointError(str(e)) from None
    model.module.to(resolve_device(accelerator))
    model.module.eval()
    return model
