"""What a model is and how it was trained, as one JSON-ready dict: read by ``pdae info``
(:func:`pdae_core.cli.info.checkpoint_summary`) and by the what-if report
(:func:`pdae_core.report.what_if_report`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..train.budget import epochs_run

if TYPE_CHECKING:
    from .base import PerturbationModel

__all__ = ["model_card"]


def model_card(model: PerturbationModel, checkpoint_sha256: str | None = None) -> dict[str, Any]:
    """What a model is and how it was trained, as a JSON-ready dict (``pdae info --json`` adds the
    checkpoint's file facts to it).
    ``checkpoint_sha256``: the digest of the checkpoint the model was loaded from, if any
    (:func:`pdae_core.report.checkpoint_digest`); a model in memory does not carry it."""
    reg, hist = model.registry, model.history
    records = hist.records if hist else []
    return {
        "model_type": model.model_type,
        "n_members": model.n_members,
        "calibration_doubles": model.calibration.n if getattr(model, "calibration", None) is not None else 0,
        "n_genes": reg.n_genes,
        "genes": list(reg.gene_names),
        "perturbation_key": reg.perturbation_key,
        "control_label": reg.control_label,
        "x_kind": reg.x_kind,
        "n_perturbations": reg.n_perturbations,
        "perturbations": list(reg.perturbations),
        "seen_perturbations": list(model.seen_perturbations),
        "train_conditions": list(model.train_conditions),
        "holdout": list(model.holdout),
        "model_config": model.config.to_dict(),
        "train_config": model.train_config.to_dict() if model.train_config else None,
        "trained": model.is_trained,
        "best_val_ed": hist.best_val if hist else None,
        "best_epoch": hist.best_epoch if hist else None,
        "epochs_run": epochs_run(records[-1]["epoch"]) if records else 0,
        "steps": hist.steps if hist else 0,
        "seconds": hist.seconds if hist else 0.0,
        "device": hist.device if hist else None,
        "stopped_early": hist.stopped_early if hist else False,
        "cancelled": getattr(hist, "cancelled", False) if hist else False,
        "preprocessing": dict(reg.preprocessing),
        "checkpoint_sha256": checkpoint_sha256,
    }

