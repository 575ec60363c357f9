"""``pdae info``: describe a checkpoint (model, genes, perturbations, training, preprocessing).

Fast by default: a checkpoint whose files and digests check out (the file list, the SHA-256 of
the weights and the digest of ``config.json``, which detect any change made after saving) and
whose config has the expected form is described from ``config.json`` alone, without importing
torch (:func:`quick_summary`). Anything else (a modified or older checkpoint, an unexpected
field, a newer library version), and ``--load``, goes through
:func:`pdae_core.models.checkpoint.load_checkpoint`, which builds the model, checks every tensor
against the config and words the error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ..train.budget import epochs_run
from .common import EXIT_OK, HelpFormatter, preview, printable

INFO_EXAMPLES = """\
examples:
  pdae info ckpt/
  pdae info ckpt/ --json | python -c "import json,sys; print(json.load(sys.stdin)['holdout'])\""""


def add_parser(sub: Any) -> None:
    """Register ``info``."""
    i = sub.add_parser(
        "info",
        help="describe a checkpoint: model, genes, perturbations, training and preprocessing",
        description="Validate a checkpoint (file list, weights checksum) and describe it: model type, "
        "library version, genes, perturbation vocabulary, control label, separator, training and "
        "held-out conditions, training config, best validation energy distance, preprocessing.",
        epilog=INFO_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    i.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory")
    i.add_argument("--json", action="store_true", help="print one JSON object (full gene and condition lists)")
    i.add_argument("--trust-modified", action="store_true",
                   help="describe a checkpoint even if it was modified after saving (with a warning)")
    i.add_argument("--load", action="store_true",
                   help="also build the model and load its weights, checking every tensor against the config "
                   "(imports torch: a few seconds)")
    i.set_defaults(func=run)


def checkpoint_summary(path: str | os.PathLike, trust_modified: bool = False, load: bool = False) -> dict[str, Any]:
    """Everything `pdae info` shows, as a JSON-ready dict (validates the checkpoint): from
    :func:`quick_summary` when it applies and ``load`` is False, else from the loaded model."""
    if not Path(path).exists():  # the same message as load_checkpoint's, without importing torch
        from ..errors import CheckpointError

        raise CheckpointError(f"Checkpoint not found: {Path(path)}")
    if not load:
        quick = quick_summary(path)
        if quick is not None:
            return quick
    from .common import import_libraries

    import_libraries()  # with Ctrl-C held back
    from .._version import __version__
    from ..models.card import model_card
    from ..models.checkpoint import load_checkpoint, read_config

    cfg = read_config(path)
    # verifies the digests of the config and the weights
    model = load_checkpoint(path, accelerator="cpu", trust_modified=trust_modified)
    reg = model.registry
    return {
        "path": str(Path(path)),
        "library_version": cfg.get("library_version"),
        "current_library_version": __version__,
        **model_card(model, cfg.get("checkpoint_sha256")),
        "separator": reg.separator,
        "dose_key": reg.dose_key,
        "covariate_key": reg.covariate_key,
        "layer": reg.layer,
        "weights_sha256": cfg.get("weights_sha256"),
    }


# ---------------------------------------------------------------------------------
# the summary from config.json alone (no torch): the same dict as checkpoint_summary's after a load

_WEIGHTS, _CONFIG = "model.safetensors", "config.json"  # as pdae_core.models.checkpoint
_ALLOWED = {_WEIGHTS, _CONFIG, "README.md"}
_REGISTRY_FIELDS = {"perturbation_key", "control_label", "perturbations", "gene_names", "separator", "dose_key",
                    "covariate_key", "layer", "x_kind", "preprocessing", "atomic_labels"}


def _is_num(v: Any, none: bool = False) -> bool:
    return (none and v is None) or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def _is_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _sealed(cfg: dict[str, Any], weights: Path) -> bool:
    """Whether the digests recorded at saving match (as :mod:`pdae_core.models.integrity` checks)."""
    body = {k: v for k, v in cfg.items() if k != "checkpoint_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return (hashlib.sha256(text.encode("ascii")).hexdigest() == cfg.get("checkpoint_sha256")
            and _sha256_file(weights) == cfg.get("weights_sha256"))


def _newer(saved: str, current: str) -> bool:
    from packaging.version import Version

    return Version(saved) > Version(current)


def _calibration_doubles(ens: Any) -> int:
    """How many training doubles a cross-fitted ensemble's intervals were calibrated on (0: none)."""
    cal = ens.get("calibration") if isinstance(ens, dict) else None
    groups = cal.get("left_out") if isinstance(cal, dict) else None
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        return 0
    return sum(len(g) for g in groups)


def _well_formed(cfg: dict[str, Any]) -> bool:
    """The fields the summary reads have the types a save writes (else the full load words the problem)."""
    reg, tr, mc = cfg.get("registry"), cfg.get("training"), cfg.get("model_config")
    if not (isinstance(reg, dict) and isinstance(tr, dict) and isinstance(mc, dict)
            and isinstance(cfg.get("model_type"), str) and isinstance(cfg.get("library_version"), str)):
        return False
    ens = cfg.get("ensemble", {"n_members": 1})
    hist = tr.get("history")
    labels = tr.get("train_labels", [])
    return (
        set(reg) <= _REGISTRY_FIELDS and _is_names(reg.get("perturbations")) and _is_names(reg.get("gene_names"))
        and all(isinstance(reg.get(k), str) for k in ("perturbation_key", "control_label"))
        and isinstance(reg.get("separator", "+"), str) and isinstance(reg.get("preprocessing", {}), dict)
        and reg.get("x_kind", "log1p") in ("log1p", "counts", "change")
        and all(reg.get(k) is None or isinstance(reg[k], str) for k in ("dose_key", "covariate_key", "layer"))
        and mc.get("n_genes") == len(reg["gene_names"]) and mc.get("n_perturbations") == len(reg["perturbations"])
        and isinstance(ens, dict) and type(ens.get("n_members")) is int and ens["n_members"] >= 1
        and all(_is_names(tr.get(k, [])) for k in ("train_conditions", "holdout"))
        and isinstance(labels, list)
        and all(isinstance(r, list) and len(r) == len(reg["perturbations"]) and all(map(_is_num, r)) for r in labels)
        and (tr.get("train_config") is None or isinstance(tr["train_config"], dict))
        and (hist is None or (
            isinstance(hist, dict) and isinstance(hist.get("records", []), list)
            and all(isinstance(r, dict) and _is_num(r.get("epoch")) and all(_is_num(v, True) for v in r.values())
                    for r in hist.get("records", []))
            and (hist.get("best_epoch") is None or (_is_num(hist["best_epoch"]) and hist["best_epoch"] >= 0))
            and _is_num(hist.get("best_val"), True) and _is_num(hist.get("seconds", 0.0))
            and type(hist.get("steps", 0)) is int and isinstance(hist.get("device", "cpu"), str)
            and all(isinstance(hist.get(k, False), bool) for k in ("stopped_early", "cancelled"))
        ))
    )


def quick_summary(path: str | os.PathLike) -> dict[str, Any] | None:
    """:func:`checkpoint_summary` read from ``config.json`` without building the model (no torch);
    None when the checkpoint does not plainly check out: a file missing or extra, a digest that
    does not match (modified, or saved before digests), an unexpected form or type, a newer
    library version. The caller then loads it, which says what is wrong."""
    from .._version import __version__

    path = Path(path)
    try:
        names = {p.name for p in path.iterdir()} - {".DS_Store"}
        if not ({_WEIGHTS, _CONFIG} <= names <= _ALLOWED) or not all((path / n).is_file() for n in names):
            return None
        with open(path / _CONFIG, encoding="utf-8") as f:
            cfg = json.load(f)
        if (not isinstance(cfg, dict) or cfg.get("format") != "pdae_core.checkpoint" or cfg.get("format_version") != 2
                or not _well_formed(cfg) or _newer(cfg["library_version"], __version__)
                or not _sealed(cfg, path / _WEIGHTS)):
            return None
    except (OSError, ValueError, TypeError, RecursionError, ImportError):  # InvalidVersion is a ValueError
        return None
    reg, tr, hist = cfg["registry"], cfg["training"], cfg["training"].get("history") or None
    records = hist.get("records", []) if hist else []
    labels = tr.get("train_labels", [])
    seen = [p for k, p in enumerate(reg["perturbations"]) if any(row[k] != 0 for row in labels)]
    card = {  # the fields and order of pdae_core.models.card.model_card
        "model_type": cfg["model_type"],
        "n_members": cfg.get("ensemble", {"n_members": 1})["n_members"],
        "calibration_doubles": _calibration_doubles(cfg.get("ensemble")),
        "n_genes": len(reg["gene_names"]),
        "genes": list(reg["gene_names"]),
        "perturbation_key": reg["perturbation_key"],
        "control_label": reg["control_label"],
        "x_kind": reg.get("x_kind", "log1p"),
        "n_perturbations": len(reg["perturbations"]),
        "perturbations": list(reg["perturbations"]),
        "seen_perturbations": seen,
        "train_conditions": list(tr.get("train_conditions", [])),
        "holdout": list(tr.get("holdout", [])),
        "model_config": cfg["model_config"],
        "train_config": tr.get("train_config"),
        "trained": hist is not None,
        "best_val_ed": hist.get("best_val") if hist else None,
        "best_epoch": hist.get("best_epoch") if hist else None,
        "epochs_run": epochs_run(records[-1]["epoch"]) if records else 0,
        "steps": hist.get("steps", 0) if hist else 0,
        "seconds": hist.get("seconds", 0.0) if hist else 0.0,
        "device": hist.get("device", "cpu") if hist else None,
        "stopped_early": hist.get("stopped_early", False) if hist else False,
        "cancelled": hist.get("cancelled", False) if hist else False,
        "preprocessing": dict(reg.get("preprocessing", {})),
        "checkpoint_sha256": cfg["checkpoint_sha256"],
    }
    return {
        "path": str(path), "library_version": cfg["library_version"], "current_library_version": __version__, **card,
        "separator": reg.get("separator", "+"), "dose_key": reg.get("dose_key"),
        "covariate_key": reg.get("covariate_key"), "layer": reg.get("layer"), "weights_sha256": cfg["weights_sha256"],
    }


def _kv(d: dict[str, Any] | None) -> str:
    if not d:
        return "none recorded"
    return ", ".join(f"{k}={v}" for k, v in d.items())


def run(args: argparse.Namespace) -> int:
    """``pdae info``."""
    s = checkpoint_summary(args.checkpoint, trust_modified=args.trust_modified, load=args.load)
    if args.json:  # ASCII only: control characters in names are written as \u escapes
        print(json.dumps(s, indent=1, ensure_ascii=True))
        return EXIT_OK
    opt = lambda v: "-" if v is None else repr(v)  # noqa: E731
    lines = [
        f"Checkpoint:       {s['path']}",
        f"Model type:       {s['model_type']}" + (f", an ensemble of {s['n_members']} networks" if s["n_members"] > 1 else "")
        + (f", cross-fitted: intervals calibrated on {s['calibration_doubles']} training doubles"
           if s["calibration_doubles"] else "")
        + f" (saved by pdae_core {s['library_version']}; this is {s['current_library_version']})",
        f"Genes:            {s['n_genes']} ({preview(s['genes'], 5)})",
        f"Perturbations:    {s['n_perturbations']} ({preview(s['perturbations'], 20)})",
        f"Column:           {s['perturbation_key']!r}; control {s['control_label']!r}; separator {s['separator']!r}",
        f"Dose / covariate: {opt(s['dose_key'])} / {opt(s['covariate_key'])}; layer {opt(s['layer'])}",
        f"Trained on:       {len(s['train_conditions'])} conditions ({preview(s['train_conditions'], 12)})",
        "Held out:         " + (f"{len(s['holdout'])} conditions ({preview(s['holdout'], 12)})" if s["holdout"] else "none"),
    ]
    if not s["trained"]:
        lines.append("Training:         not trained")
    else:
        best = f"{s['best_val_ed']:.4g} at epoch {s['best_epoch']}" if s["best_val_ed"] is not None else "n/a"
        lines.append(f"Best val ED:      {best}")
        lines.append(
            f"Training:         {s['epochs_run']} epochs, {s['steps']} steps, {s['seconds']:.1f} s on {s['device']}"
            + (" (stopped early)" if s["stopped_early"] else "")
        )
    lines += [
        f"Preprocessing:    {_kv(s['preprocessing'])}",
        f"Model config:     {_kv({k: v for k, v in s['model_config'].items() if k not in ('n_genes', 'n_perturbations')})}",
        f"Training config:  {_kv(s['train_config'])}",
        f"Digest (SHA-256): {s['checkpoint_sha256'] or 'none recorded (saved before digests existed)'}",
    ]
    # names come from the checkpoint: escape control characters (terminal escape codes)
    print("\n".join(printable(line) for line in lines))
    return EXIT_OK

