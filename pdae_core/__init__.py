"""pdae_core: predict the distribution of single cells under unseen perturbations
and combinations of perturbations (Perturbation Distribution Autoencoder and peers).

The names below are imported on first use (PEP 562), so that ``import pdae_core`` (and
``pdae_core.cli``, whose ``main`` handles Ctrl-C) costs no torch/anndata import by itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .models.base import PerturbationModel

# public name -> module that defines it
_EXPORTS = {
    **dict.fromkeys(["PerturbationRegistry", "detect_x_kind", "preprocess", "read_h5ad", "setup_anndata"],
                    ".data.registry"),
    "preprocess_on_disk": ".data.streaming",
    **dict.fromkeys(["CheckpointError", "DataError", "DatasetUnavailableError", "PDAEError"], ".errors"),
    **dict.fromkeys(["describe_interaction", "interaction_metrics", "interaction_table", "interactions_from_cells"],
                    ".eval.interactions"),
    **dict.fromkeys(["ExtrapolationCheck", "PerturbationModel", "span_check"], ".models.base"),
    **dict.fromkeys(["FCR", "FCRConfig", "FCRModule"], ".models.fcr"),
    **dict.fromkeys(["PDAE", "PDAEConfig", "PDAEModule"], ".models.pdae"),
    **dict.fromkeys(["SAMSVAE", "SAMSVAEConfig", "SAMSVAEModule"], ".models.samsvae"),
    **dict.fromkeys(["SCCVAE", "SCCVAEConfig", "SCCVAEModule"], ".models.sccvae"),
    **dict.fromkeys(["Callback", "History", "TrainConfig", "resolve_device"], ".train.loop"),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def load_model(path, adata=None, accelerator: str = "cpu", trust_modified: bool = False) -> PerturbationModel:
    """Load any pdae_core checkpoint directory (never unpickles). A checkpoint modified after
    saving is refused unless ``trust_modified=True``, which loads it with a warning."""
    from .models.base import PerturbationModel

    return PerturbationModel.load(path, adata=adata, accelerator=accelerator, trust_modified=trust_modified)


def predict(model: PerturbationModel, source_cells, target, seed: int = 0, n_draws: int = 1):
    """Predicted cells (AnnData) of ``source_cells`` moved to ``target``; see ``PerturbationModel.predict``."""
    return model.predict(source_cells, target, seed=seed, n_draws=n_draws)


def latent(model: PerturbationModel, adata):
    """Basal latent embedding ``z_base`` of every cell of ``adata``."""
    return model.latent(adata)


__all__ = [
    "PDAE", "PDAEConfig", "PDAEModule", "SAMSVAE", "SAMSVAEConfig", "SAMSVAEModule",
    "FCR", "FCRConfig", "FCRModule", "SCCVAE", "SCCVAEConfig", "SCCVAEModule", "PerturbationModel", "ExtrapolationCheck", "span_check",
    "PerturbationRegistry", "setup_anndata", "preprocess", "preprocess_on_disk", "read_h5ad", "detect_x_kind",
    "TrainConfig", "History", "Callback", "resolve_device",
    "PDAEError", "DataError", "CheckpointError", "DatasetUnavailableError",
    "interaction_metrics", "interaction_table", "interactions_from_cells", "describe_interaction",
    "load_model", "predict", "latent", "__version__",
]
