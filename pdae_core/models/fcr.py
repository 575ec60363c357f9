"""Factorized Causal Representation (FCR; Mao et al., NeurIPS 2024, arXiv 2410.22472).

A cell's expression ``y`` observed in context ``x`` (a covariate such as the cell
line) under treatment ``t`` (multi-hot, doses as values, combinations summed) is
generated from three latent blocks with conditional Gaussian priors:

    z_x  ~ p(z_x | x)       = N(mu_x(x), s_x(x))           covariate (context) block
    z_t  ~ p(z_t | t)       = N(mu_t(t), s_t(t))           treatment block
    z_tx ~ p(z_tx | x, t)   = N(mu_tx(x, t), s_tx(x, t))   interaction block
    y    ~ N(f(z_x, z_t, z_tx), diag(sigma^2))             per-gene learned sigma, log data

and inferred by three encoders q(z_x | y, x), q(z_t | y, t), q(z_tx | y, x, t) (paper
Sec. 4, Fig. 2a-b). The objective (minimised, per batch; G = ``n_genes``) is

    w_rec * NLL / G + w_kl * (KL_x + KL_t + KL_tx) / G                    (negative ELBO / G)
  + w_cls * (CE(x | z_x) + BCE(t | z_t))                                  auxiliary classifiers
  + w_adv * sum_pairs BCE(D(a, b) true vs D(a, b[perm]) permuted)          independence discriminators
  + w_sim * (cos(z_t, z_t^0) - cos(z_x, z_x^0))                           causal structure regulariser

* the classifiers predict the covariate from ``z_x`` (softmax over contexts; skipped with
  a single context) and which perturbations are on from ``z_t`` (multi-label, one
  sigmoid per perturbation);
* the permutation discriminators (FactorVAE-style, Kim & Mnih 2018, as in the paper,
  Fig. 2c) learn to tell true pairs of blocks of one cell from pairs whose second block
  comes from another cell. The prior factorises given (x, t), so the other cell is drawn
  from the cells of the batch with the same (x, t) (a derangement within each group;
  cells alone in their group are skipped): permuting across the whole batch would let
  the discriminator win by spotting mismatched treatments or contexts, and the encoders
  would then be pushed to drop treatment/context information. Pairs: (z_x, z_tx) and
  (z_t, z_tx) (the interaction block against each main block, as in the released code)
  plus (z_x, z_t) (also implied by the factorised prior); ``independence_pairs`` selects;
* the causal structure regulariser pairs every treated cell with a random control cell
  of the same context in the batch (``z^0``, posterior means): treated and control cells
  should share ``z_x`` and differ in ``z_t``.

**One optimiser, one loss** (``pdae_core.train.loop``): the adversarial game is played
through a gradient-reversal layer (Ganin & Lempitsky 2015) in front of each
discriminator. The discriminators minimise their BCE like any other term; the encoders
receive the reversed gradient (times ``grl_scale``), i.e. they maximise it. The paper
alternates an autoencoder and a discriminator optimiser instead; both play the same
minimax game. The logged ``adv`` term hovers near 3 log 2 (chance) when the encoders win.

Prediction (``transfer``): ``z_x`` from the source cell, q(z_x | y, x) (its mean, or a
sample with ``transfer_zx="sample"``); ``z_t ~ p(z_t | t_target)`` and
``z_tx ~ p(z_tx | x_source, t_target)``; decode and draw the Gaussian (``output_noise``;
``clip_output`` clips at 0). The source keeps its own context: target labels are (n, K)
from ``predict``, or (n, K + C) from the training loop's validation, whose context
columns are ignored. ``embed`` is the posterior mean of ``z_x``;
``perturbation_matrix`` (zt_dim, K) is the prior mean of ``z_t`` under each unit
treatment ``e_k`` minus that under control.

Combinations and doses: ``t`` enters every network through a linear first layer, so a
combination's pre-activation is the sum of its parts' and doses scale a perturbation's
column; the prior networks are nonlinear after that, so FCR does not force a double's
latent shift to equal the sum of its parts'. ``linear_prior_means=True`` makes it so
(mean of z_t linear in t, of z_tx bilinear in (x, t), both 0 for controls; the scales
stay networks); it validated worse on norman19_devel (0.063 vs 0.048), so it is off.

Covariates: ``FCR._module_labels`` appends a one-hot encoding of
``adata.obs[registry.covariate_key]`` over ``config.covariate_categories`` (stored in
the checkpoint so the shapes rebuild), so the module sees labels of shape (n, K + C).
``from_anndata`` and ``fit`` read the categories from the data when the config has
none; data with a category the model does not know raises a ``DataError``. **With no
covariate key FCR runs with a single context** (C = 1, a constant column): ``z_x`` is
then a cell-state block with one prior, the covariate classifier is skipped, and
``z_tx`` is a second treatment block; a warning is logged.

Defaults and where they come from ("released code": the public FCR code, read through a
fork of github.com/Genentech/fcr; the paper's tables were not available here):

* ``zx_dim = zt_dim = ztx_dim = 32``: the released code uses 64 per block; halved for
  2 CPU cores (a few thousand cells x 500 genes do not need 192 latent dimensions).
* ``hidden_dims = (128, 128)``: encoder/decoder width 128, depth 3 as in the released
  code; ELU activations (the shared ``pdae_core.models.nn.mlp``).
* ``disc_hidden_dims = (64, 64)``: discriminator width 64, depth 2 (released code).
  ``prior_hidden_dims = (64,)``, ``interaction_dim = 32``, ``classifier_hidden = 64``:
  small networks, chosen for 2 CPU cores.
* ``p(z_tx | x, t)`` acts on the product of a context embedding and a bias-free
  treatment embedding (a multiplicative interaction, as in the released code), so all
  contexts' controls share one interaction prior.
* ``w_rec = w_kl = 1``: the ELBO, divided by G so that the auxiliary weights are O(1)
  (the released code also averages the likelihood over genes). ``w_cls = w_adv = w_sim
  = grl_scale = 1``: our choice; the paper tunes its loss weights per dataset.
* ``min_sigma = 0.05`` (sigma = min_sigma + softplus(.)) and ``softplus_output = True``
  (non-negative decoded mean): our choice. Half the genes of norman19_devel are zero in
  every cell; without a floor their sigma shrinks towards 0 and their 1/sigma^2 weight
  drowns the genes that respond to perturbations (the fit then stalled).
* ``residual_posterior = True``: each encoder outputs an offset from its block's prior
  mean (the "residual normal" of NVAE, Vahdat & Kautz 2020; the same model family),
  so the likelihood's gradient reaches the priors directly; ``lr_scale = 3`` runs the
  module at 3x the shared ``TrainConfig.lr`` (the VAE learned slowly at 1e-3). Both
  chosen on the validation energy distance of norman19_devel among a few 150-epoch
  variants (0.048 with both; 0.052 with a plain posterior at 3x, which did worse on
  the held-out doubles, 0.16 vs 0.08).
* ``transfer_zx = "mean"``, ``output_noise = True``, ``clip_output = False``: draw the
  generative model at prediction time. Clipping at 0 raised the mean of near-zero genes
  and cost 0.03-0.05 energy distance per condition even with the true means and sds.
* Encoder inputs are standardised per gene and the decoder starts at the mean profile
  with sigma at the per-gene sd (``init_from_data``; as in PDAE).
* Optimisation (Adam, batch size, epochs, EMA, early stopping on validation energy
  distance) is the shared ``TrainConfig`` (the released code uses Adam at lr 3e-4).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..data.registry import PerturbationRegistry, Target
from ..errors import DataError
from .base import PerturbationModel
from .catalog import register_model
from .fcr_module import PAIRS, FCRModule
from .hparams import ModelConfig, choice_check, hp

logger = logging.getLogger(__name__)


@dataclass
class FCRConfig(ModelConfig):
    """Architecture and loss hyperparameters of an FCR model (see the module docstring;
    each is declared with :func:`~pdae_core.models.hparams.hp`: help text and choices)."""

    n_genes: int
    n_perturbations: int
    covariate_categories: list[str] = field(default_factory=list)
    zx_dim: int = hp(32, "size of the covariate (context) latent block z_x")
    zt_dim: int = hp(32, "size of the treatment latent block z_t")
    ztx_dim: int = hp(32, "size of the interaction latent block z_tx")
    hidden_dims: tuple[int, ...] = hp((128, 128), "encoder and decoder hidden layer sizes")
    prior_hidden_dims: tuple[int, ...] = hp((64,), "hidden layer sizes of the prior networks")
    interaction_dim: int = hp(32, "size of the context and treatment embeddings of the interaction prior")
    classifier_hidden: int = hp(64, "hidden layer size of the auxiliary classifiers")
    disc_hidden_dims: tuple[int, ...] = hp((64, 64), "hidden layer sizes of the independence discriminators")
    independence_pairs: tuple[str, ...] = hp(("x_tx", "t_tx", "x_t"), "latent block pairs kept independent by "
                                             "discriminators (among x_tx, t_tx, x_t)")
    w_rec: float = hp(1.0, "weight of the reconstruction term")
    w_kl: float = hp(1.0, "weight of the KL terms")
    w_cls: float = hp(1.0, "weight of the auxiliary classifiers")
    w_adv: float = hp(1.0, "weight of the independence discriminators")
    w_sim: float = hp(1.0, "weight of the causal structure regulariser (treated vs control cells)")
    linear_prior_means: bool = hp(False, "prior means linear in the treatment (a double's shift = sum of its parts')")
    residual_posterior: bool = hp(True, "encoders output an offset from their block's prior mean")
    lr_scale: float = hp(3.0, "learning-rate multiplier of the whole model")
    grl_scale: float = hp(1.0, "scale of the reversed discriminator gradient reaching the encoders")
    min_scale: float = hp(1e-3, "numerical floor on the latent standard deviations")
    min_sigma: float = hp(0.05, "floor on the per-gene output standard deviation")
    softplus_output: bool = hp(True, "softplus on the decoded mean (non-negative expression)")
    transfer_zx: str = hp("mean", "z_x of a source cell in predictions: a posterior sample or its mean",
                          choices=("sample", "mean"))
    output_noise: bool = hp(True, "predictions sample the output Gaussian (off: its mean)")
    clip_output: bool = hp(False, "clip predicted expression at 0")

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        self.prior_hidden_dims = tuple(int(h) for h in self.prior_hidden_dims)
        self.disc_hidden_dims = tuple(int(h) for h in self.disc_hidden_dims)
        if isinstance(self.independence_pairs, str):
            self.independence_pairs = (self.independence_pairs,)
        self.independence_pairs = tuple(str(p) for p in self.independence_pairs)
        cats = self.covariate_categories
        if isinstance(cats, str) or not isinstance(cats, (list, tuple)):
            raise ValueError("FCRConfig: covariate_categories must be a list of strings")
        self.covariate_categories = [str(c) for c in cats]
        checks = [
            (self.n_genes >= 1, "n_genes must be >= 1"),
            (self.n_perturbations >= 1, "n_perturbations must be >= 1"),
            (min(self.zx_dim, self.zt_dim, self.ztx_dim) >= 1, "zx_dim, zt_dim and ztx_dim must be >= 1"),
            (len(self.hidden_dims) >= 1 and min(self.hidden_dims) >= 1, "hidden_dims must be positive"),
            (len(self.prior_hidden_dims) >= 1 and min(self.prior_hidden_dims) >= 1,
             "prior_hidden_dims must be positive"),
            (len(self.disc_hidden_dims) >= 1 and min(self.disc_hidden_dims) >= 1, "disc_hidden_dims must be positive"),
            (self.interaction_dim >= 1, "interaction_dim must be >= 1"),
            (self.classifier_hidden >= 1, "classifier_hidden must be >= 1"),
            (len(set(self.covariate_categories)) == len(self.covariate_categories),
             "covariate_categories has duplicates"),
            (all(p in PAIRS for p in self.independence_pairs),
             f"independence_pairs must be among {sorted(PAIRS)}"),
            (len(set(self.independence_pairs)) == len(self.independence_pairs), "independence_pairs has duplicates"),
            (min(self.w_rec, self.w_kl, self.w_cls, self.w_adv, self.w_sim) >= 0, "loss weights must be >= 0"),
            (self.grl_scale >= 0, "grl_scale must be >= 0"),
            (self.lr_scale > 0, "lr_scale must be > 0"),
            (self.min_scale > 0, "min_scale must be > 0"),
            (self.min_sigma > 0, "min_sigma must be > 0"),
            choice_check(self, "transfer_zx"),
        ]
        self._raise_failed(checks)

    @property
    def n_covariates(self) -> int:
        """Number of contexts C (1 when there is no covariate)."""
        return max(1, len(self.covariate_categories))



def _categories(adata: ad.AnnData, key: str) -> list[str]:
    if key not in adata.obs.columns:
        raise DataError(f"Covariate column {key!r} is not in obs (columns: {list(adata.obs.columns)[:12]}).")
    col = adata.obs[key]
    if col.isna().any():
        raise DataError(f"Covariate column {key!r} has {int(col.isna().sum())} missing values.")
    return sorted(set(col.astype(str)))


@register_model
class FCR(PerturbationModel):
    """Factorized Causal Representation behind the shared model interface.

    The covariate (``registry.covariate_key``, e.g. the cell line) is part of the model:
    predictions keep each source cell's context, and a context unseen in training raises
    a ``DataError``. Without a covariate key the model has a single context (a warning).

    >>> reg = setup_anndata(adata, "condition", "control", covariate_key="cell_type")
    >>> model = FCR(reg)
    >>> model.fit(adata, holdout=["SGK1"])
    >>> pred = model.predict(adata[adata.obs.condition == "control"], "SGK1")
    """

    model_type = "fcr"
    uses_context = True
    additive_latent = False  # z_t (perturbation_embedding) is a different block from z_x (latent)
    config_class = FCRConfig
    module_class = FCRModule

    def __init__(self, registry: PerturbationRegistry, seed: int = 0, **config: Any):
        if registry.covariate_key is None:
            if config.get("covariate_categories"):
                raise ValueError("FCR: covariate_categories given but the registry has no covariate_key.")
            logger.warning(
                "FCR: the registry has no covariate_key; running with a single context "
                "(set covariate_key in setup_anndata to model cell lines / contexts)."
            )
        super().__init__(registry, seed=seed, **config)

    @classmethod
    def _config_from_data(
        cls, adata: ad.AnnData, registry: PerturbationRegistry, config: dict[str, Any]
    ) -> dict[str, Any]:
        """The context categories are read from ``adata.obs[covariate_key]`` unless
        ``covariate_categories`` is given."""
        key = registry.covariate_key
        if key is not None and not config.get("covariate_categories"):
            config["covariate_categories"] = _categories(adata, key)
        return config

    def _rebuild(self, categories: list[str]) -> None:
        """New config and module with these context categories, same init seed and device."""
        device = self.device
        self.config = FCRConfig(**{**self.config.to_dict(), "covariate_categories": categories})
        self.module = self._build_module(self.init_seed)  # one network per member for an ensemble
        self.module.to(device).eval()

    def _before_training(self, adata: ad.AnnData, keep: np.ndarray, labels: np.ndarray) -> None:
        """Reads the context categories from ``adata`` when the config has none."""
        key = self.registry.covariate_key
        if key is not None and not self.config.covariate_categories:
            self._rebuild(_categories(adata, key))

    def _covariate_onehot(self, adata: ad.AnnData) -> np.ndarray:
        key = self.registry.covariate_key
        n = adata.n_obs
        if key is None:
            return np.ones((n, 1), dtype=np.float32)
        cats = self.config.covariate_categories
        if not cats:
            raise DataError(
                f"This FCR model does not know its {key!r} categories yet: fit it, or build it with "
                "FCR.from_anndata(...) or covariate_categories=[...]."
            )
        if key not in adata.obs.columns:
            raise DataError(f"Covariate column {key!r} (the model's context) is not in obs.")
        vals = adata.obs[key].astype(str).to_numpy()
        idx = pd.Index(cats).get_indexer(vals)
        if (idx < 0).any():
            unknown = sorted(set(vals[idx < 0].tolist()))
            raise DataError(
                f"{key!r} value(s) {unknown[:8]} are not among the model's {len(cats)} known categories "
                f"({cats[:8]}): FCR can only place cells in contexts it was trained on."
            )
        onehot = np.zeros((n, len(cats)), dtype=np.float32)
        onehot[np.arange(n), idx] = 1.0
        return onehot

    def _module_labels(self, adata: ad.AnnData, L: np.ndarray) -> np.ndarray:
        """(n, K + C): the perturbation labels, then the one-hot context."""
        return np.concatenate([np.asarray(L, dtype=np.float32), self._covariate_onehot(adata)], axis=1)

    def predict(
        self,
        source: ad.AnnData,
        target: Target,
        seed: int = 0,
        n_draws: int = 1,
        batch_size: int = 8192,
    ) -> ad.AnnData:
        """See :meth:`PerturbationModel.predict`; ``obs`` also holds each source cell's
        context under the covariate key (the prediction keeps it)."""
        out = super().predict(source, target, seed=seed, n_draws=n_draws, batch_size=batch_size)
        key = self.registry.covariate_key
        if key is not None and key not in out.obs.columns:
            out.obs[key] = np.tile(source.obs[key].astype(str).to_numpy(), n_draws)
        return out
