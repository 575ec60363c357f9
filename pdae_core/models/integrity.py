"""Integrity of a whole checkpoint: one SHA-256 over everything that gives the weights their
meaning, checked on load.

``config.json`` records ``weights_sha256`` (the SHA-256 of ``model.safetensors``) and
``checkpoint_sha256``: the SHA-256 of the canonical form of ``config.json`` without that
field (keys sorted, no spaces, ASCII), which includes ``weights_sha256``. So one digest
covers the weights and every field that gives them their meaning: gene names and order,
perturbation vocabulary, separator, control label, preprocessing, hyperparameters,
training record. Editing any of them, or the weights, after saving is detected on load.
Formatting does not count: re-indenting ``config.json`` changes nothing that is hashed.

What a modified checkpoint means (the policy):

* by default it is refused with a :class:`CheckpointError` that says it was modified
  after saving;
* ``trust_modified=True`` (CLI ``--trust-modified``) loads it anyway with a
  :class:`ModifiedCheckpointWarning`; every other check (file list, types, shapes
  against the safetensors header) still applies. Saving it again records new digests.
* A checkpoint saved before these digests existed (format version 1) cannot be verified:
  it is refused unless ``trust_modified=True``.

The digest guards against accidental and naive edits, not against a forger, who can
recompute it. To trust a checkpoint from someone else, compare its ``checkpoint_sha256``
(``pdae info`` prints it) with the one its author published.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

__all__ = ["ModifiedCheckpointWarning", "config_digest", "seal", "verify"]

DIGEST_FIELD = "checkpoint_sha256"


class ModifiedCheckpointWarning(UserWarning):
    """A checkpoint that fails its integrity check was loaded because the caller trusts it."""


def _canonical(cfg: dict[str, Any]) -> bytes:
    body = {k: v for k, v in cfg.items() if k != DIGEST_FIELD}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as e:  # NaN/Infinity, or nested too deeply
        raise CheckpointError(f"config.json cannot be put in canonical form ({e}).") from None
    return text.encode("ascii")


def config_digest(cfg: dict[str, Any]) -> str:
    """The SHA-256 of ``cfg`` in canonical form, without its own digest field."""
    return hashlib.sha256(_canonical(cfg)).hexdigest()


def seal(cfg: dict[str, Any]) -> dict[str, Any]:
    """Record the digest of ``cfg`` in it (in place; returns it). Done last when saving."""
    cfg[DIGEST_FIELD] = config_digest(cfg)
    return cfg


def verify(cfg: dict[str, Any], weights_sha256: str, directory: Path, trust_modified: bool = False) -> None:
    """Check the recorded digests against ``cfg`` and the weights file's SHA-256
    ``weights_sha256``; refuse (or, with ``trust_modified``, warn about) a mismatch."""
    problems = []
    recorded = cfg.get(DIGEST_FIELD)
    if recorded is None:
        problems.append(
            f"{directory} was saved by an earlier pdae_core (checkpoint format {cfg.get('format_version')!r}) "
            "that did not record a digest of config.json, so its genes, perturbations and settings cannot be verified"
        )
    elif not isinstance(recorded, str):
        raise CheckpointError(f"{directory / 'config.json'}: the field {DIGEST_FIELD!r} must be a hex string.")
    elif config_digest(cfg) != recorded:
        problems.append(
            f"{directory} was modified after saving: config.json no longer matches the digest recorded when it was "
            "saved (a field such as the gene order, the perturbation list or a setting was edited)"
        )
    if weights_sha256 != cfg.get("weights_sha256"):
        problems.append(
            f"{directory} was modified after saving: model.safetensors does not match the SHA-256 recorded in "
            "config.json (the weights were replaced or altered)"
        )
    if not problems:
        return
    if not trust_modified:
        raise CheckpointError(
            "; ".join(problems) + ". Refusing to load it. If you trust its source, load it with "
            "trust_modified=True (CLI: --trust-modified) and save it again to record new digests."
        )
    warnings.warn(
        "; ".join(problems) + ". Loaded anyway because trust_modified=True.",
        ModifiedCheckpointWarning,
        stacklevel=4,
    )
