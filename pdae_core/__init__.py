"""pdae_core: predict the distribution of single cells under unseen perturbations
and combinations of perturbations (Perturbation Distribution Autoencoder and peers)."""

from ._version import __version__
from .data.registry import (  # noqa: E402
    PerturbationRegistry,
    detect_x_kind,
    preprocess,
    read_h5ad,
    setup_anndata,
)
from .data.streaming import preprocess_on_disk  # noqa: E402
from .errors import CheckpointError, DataError, DatasetUnavailableError, PDAEError  # noqa: E402
from .models.base import ExtrapolationCheck, PerturbationModel, span_check  # noqa: E402
from .models.fcr import FCR, FCRConfig, FCRModule  # noqa: E402  (registers "fcr")
from .models.pdae import PDAE, PDAEConfig, PDAEModule  # noqa: E402
from .models.samsvae import SAMSVAE, SAMSVAEConfig, SAMSVAEModule  # noqa: E402  (registers "samsvae")
from .models.sccvae import SCCVAE, SCCVAEConfig, SCCVAEModule  # noqa: E402  (registers "sccvae")
from .train.loop import Callback, History, TrainConfig, resolve_device  # noqa: E402


def load_model(path, adata=None, accelerator: str = "cpu") -> PerturbationModel:
    """Load any pdae_core checkpoint directory (never unpickles)."""
    return PerturbationModel.load(path, adata=adata, accelerator=accelerator)


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
    "load_model", "predict", "latent", "__version__",
]
