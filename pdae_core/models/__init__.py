"""The perturbation-response models: the shared interface (:mod:`.base`, :mod:`.module`),
the catalogue of model types (:mod:`.catalog`) and one module per model.

Importing this package imports every model module, so that each registers its
``model_type`` in :data:`~pdae_core.models.catalog.MODEL_TYPES` (checkpoints, the CLI and
the benchmark find models there). A new model adds its module to this import.
"""

from . import ensemble, fcr, pdae, pdae_profile, samsvae, sccvae  # noqa: F401  (each registers its model type; ensemble its factory)
