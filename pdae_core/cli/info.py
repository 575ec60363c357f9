"""``pdae info``: describe a checkpoint (model, genes, perturbations, training, preprocessing)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

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
    i.set_defaults(func=run)


def checkpoint_summary(path: str | os.PathLike, trust_modified: bool = False) -> dict[str, Any]:
    """Everything `pdae info` shows, as a JSON-ready dict (validates the checkpoint)."""
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


def _kv(d: dict[str, Any] | None) -> str:
    if not d:
        return "none recorded"
    return ", ".join(f"{k}={v}" for k, v in d.items())


def run(args: argparse.Namespace) -> int:
    """``pdae info``."""
    s = checkpoint_summary(args.checkpoint, trust_modified=args.trust_modified)
    if args.json:  # ASCII only: control characters in names are written as \u escapes
        print(json.dumps(s, indent=1, ensure_ascii=True))
        return EXIT_OK
    opt = lambda v: "-" if v is None else repr(v)  # noqa: E731
    lines = [
        f"Checkpoint:       {s['path']}",
        f"Model type:       {s['model_type']}" + (f", an ensemble of {s['n_members']} networks" if s["n_members"] > 1 else "")
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
