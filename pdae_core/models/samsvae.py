"""SAMS-VAE: the Sparse Additive Mechanism Shift VAE (Bereket & Karaletsos, NeurIPS 2023,
arXiv 2311.02794), behind the shared pdae_core model interface.

Generative model (the paper's SAMS-VAE). Every elementary perturbation ``t`` has a global
latent embedding ``e_t ~ N(0, s^2 I)`` and a global sparse mask ``m_t ~ Bernoulli(p)``
(one bit per latent dimension). A cell with basal state ``z_basal ~ N(0, I)`` and
label ``l`` (doses ``d_t``) has the latent state

    z = z_basal + sum_t d_t (e_t * m_t)

and expression ``x ~ p(x | decoder(z))``: a Gaussian with a learned per-gene scale on
log-normalised data (``likelihood="gaussian"``), or a negative binomial with the
cell's library size and a learned per-gene inverse dispersion on raw counts
(``likelihood="nb"``). A combination's shift is the sum of its parts' masked shifts.

Variational posterior (the paper's inference model, simplified: ``q(e_t)`` does not
depend on ``m_t`` here). ``q(e_t) = N(mu_t, diag sigma_t^2)`` and
``q(m_t) = Bernoulli(sigmoid(logits_t))`` are global; masks are sampled with the
binary Concrete / Gumbel-sigmoid relaxation at ``temperature``, either relaxed
(``mask_posterior="relaxed"``) or straight-through (``"straight_through"``: hard
0/1 masks in the forward pass, relaxed gradients). The basal state is amortised:
``q(z_basal | x)`` (mean field) or, with ``correlated=True``, ``q(z_basal | x, shift)``
where the encoder also sees the cell's sampled latent shift ``sum_t d_t e_t * m_t``
(the paper's correlated encoder).

Objective: the negative ELBO per cell,

    -log p(x | z) + KL(q(z_basal | .) || N(0, I)) + sum_{t in label} [KL(q(e_t)||p(e_t)) + KL(q(m_t)||p(m_t))] / N_t

where ``N_t`` is the number of training cells whose label includes ``t``: summed over
one pass through the data, each perturbation's global KL counts exactly once, as in
the full-data ELBO. :meth:`SAMSVAE.fit` counts ``N_t`` on the training cells and stores
it in the module buffer ``n_cells``. The mask KL is the closed-form Bernoulli KL (also
for the relaxed posterior, as usual for Concrete relaxations); one draw of the globals
is shared by the cells of a batch.

Prediction (``transfer``): the source cell's ``z_basal`` is drawn from ``q`` (for the
correlated variant given the source's own shift), the target's masked shift is added
with ``e`` and ``m`` drawn from their posteriors (exact Bernoulli masks, one draw per
predicted cell), and the decoded distribution is sampled. Gaussian predictions are
clipped at 0, the lower end of log1p data; NB predictions are sampled counts (with the
source cell's library size). ``embed`` is the posterior mean of ``z_basal``, and
``perturbation_matrix`` is ``E[e_t * m_t] = mu_t * sigmoid(logits_t)``.

Defaults and where they come from:

* ``embedding_prior_scale = 1.0``: the paper's prior ``e_t ~ N(0, I)``.
* ``mask_prior = 0.01``: a sparse Bernoulli prior (about 1 % of the latent dimensions
  affected by a perturbation a priori), a value used with the authors' public
  ``sams_vae`` code; the paper treats it as a hyperparameter.
* mask logits starting at 0 (q(m) = 0.5), ``temperature = 1.0``, straight-through
  masks and the correlated encoder: the defaults of the authors' public guide
  (``mask_posterior="relaxed"`` gave the same held-out accuracy here: 0.18 vs 0.19).
* ``likelihood = "gaussian"``: this package's data is log-normalised; ``"nb"`` models
  raw counts.
* ``latent_dim = 16``, ``hidden_dims = (256, 256)``: chosen for 2 CPU cores (the paper's
  genome-scale experiments use larger latents); 16 matches the PDAE and trains
  norman19_devel (3k cells, 500 genes, 150 epochs) in about a minute; 32 was no better.
* ``global_lr_factor = 10``: the global variational parameters (``q(e)``, ``q(m)``)
  learn 10x faster than the networks, as ``W`` in the PDAE (not in the paper). Each
  gets gradient only from the few cells of its perturbation in a batch; at factor 1 the
  embeddings lag behind the encoder, which absorbs the effects into ``z_basal``
  (held-out energy distance 0.39 vs 0.19 on norman19_devel).
* ``gene_scale_floor = 0.1``: lower bound of the Gaussian likelihood's per-gene sd (not in
  the paper). Log1p data is mostly zeros (97 % in norman19_devel): without a floor the
  sd of rarely expressed genes collapses towards 0, their likelihood dominates the ELBO
  and the embeddings are never learned (held-out energy distance 0.60, no better than
  "no change"); 0.1 is about a third of the log1p value of a single count at typical
  depth, i.e. below the data's resolution. Floors 0.03 / 0.05 / 0.1 / 0.2 gave mean
  held-out energy distances 0.37 / 0.21 / 0.19 / 0.41 on norman19_devel (seed 0). Genes
  that are constant in the training cells are left out of the Gaussian likelihood
  (which is unbounded for them) and predicted as that constant.
* ``min_scale = 1e-3``: numerical floor on the other standard deviations (implementation detail).

Training uses the shared loop (``pdae_core.train.loop``): stratified batches, Adam with
cosine decay, weight averaging and early stopping on the validation energy distance
computed with ``transfer``. The paper optimises the same ELBO with Adam; the choice
of the kept weights by a validation energy distance is this package's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.registry import detect_x_kind
from ..errors import DataError
from .base import PerturbationModel
from .catalog import register_model
from .distributions import bernoulli_kl, gaussian_nll, nb_log_prob, normal_kl, sample_nb
from .hparams import ModelConfig, choice_check, hp
from .module import PerturbationModule
from .nn import last_linear, mlp

if TYPE_CHECKING:
    from ..train.distributed import Shard


# ---- configuration --------------------------------------------------------------------------


@dataclass
class SAMSVAEConfig(ModelConfig):
    """Architecture, prior and variational hyperparameters of a SAMS-VAE (see the module
    docstring for where each default comes from; each is declared with
    :func:`~pdae_core.models.hparams.hp`: help text and choices)."""

    n_genes: int
    n_perturbations: int
    latent_dim: int = hp(16, "latent dimension")
    hidden_dims: tuple[int, ...] = hp((256, 256), "encoder and decoder hidden layer sizes")
    likelihood: str = hp("gaussian", "gaussian: log-normalised data; nb: negative binomial on raw counts",
                         choices=("gaussian", "nb"))
    correlated: bool = hp(True, "basal-state encoder also sees the cell's sampled shift, q(z_basal | x, shift)")
    mask_prior: float = hp(0.01, "p of the Bernoulli prior on every mask entry")
    mask_posterior: str = hp("straight_through", "masks in training: hard 0/1 with relaxed gradients "
                             "(straight_through) or relaxed", choices=("straight_through", "relaxed"))
    temperature: float = hp(1.0, "temperature of the Gumbel-sigmoid (binary Concrete) mask relaxation")
    embedding_prior_scale: float = hp(1.0, "prior scale s of the perturbation embeddings, e_t ~ N(0, s^2 I)")
    global_lr_factor: float = hp(10.0, "learning-rate multiplier of the global posteriors q(e), q(m)")
    min_scale: float = hp(1e-3, "numerical floor on the posterior standard deviations")
    gene_scale_floor: float = hp(0.1, "lower bound of the Gaussian likelihood's per-gene sd")

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        self.correlated = bool(self.correlated)
        checks = [
            (self.n_genes >= 1, "n_genes must be >= 1"),
            (self.n_perturbations >= 1, "n_perturbations must be >= 1"),
            (self.latent_dim >= 1, "latent_dim must be >= 1"),
            (len(self.hidden_dims) >= 1 and min(self.hidden_dims) >= 1, "hidden_dims must be positive"),
            choice_check(self, "likelihood"),
            (0.0 < self.mask_prior < 1.0, "mask_prior must be in (0, 1)"),
            choice_check(self, "mask_posterior"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.embedding_prior_scale > 0, "embedding_prior_scale must be > 0"),
            (self.global_lr_factor > 0, "global_lr_factor must be > 0"),
            (self.min_scale > 0, "min_scale must be > 0"),
            (self.gene_scale_floor > 0, "gene_scale_floor must be > 0"),
        ]
        self._raise_failed(checks)



# ---- the module -------------------------------------------------------------------------------


class SAMSVAEModule(PerturbationModule):
    """Basal encoder, global embedding / mask posteriors and the decoder of a SAMS-VAE."""

    _GLOBAL = ("e_loc", "e_scale_raw", "mask_logits")

    def __init__(self, config: SAMSVAEConfig):
        super().__init__()
        self.config = c = config
        K, d, G = c.n_perturbations, c.latent_dim, c.n_genes
        self.encoder = mlp([G + (d if c.correlated else 0), *c.hidden_dims, 2 * d])
        self.decoder = mlp([d, *reversed(c.hidden_dims), G])
        # q(e_t) = N(e_loc, softplus(e_scale_raw)^2), q(m_t) = Bernoulli(sigmoid(mask_logits))
        self.e_loc = nn.Parameter(0.1 * torch.randn(K, d))
        self.e_scale_raw = nn.Parameter(torch.full((K, d), math.log(math.expm1(0.1))))
        self.mask_logits = nn.Parameter(torch.zeros(K, d))
        # per gene: log sd (gaussian) or log inverse dispersion (nb)
        self.gene_log_param = nn.Parameter(torch.zeros(G))
        # encoder input standardisation, fitted on the training cells
        self.register_buffer("x_mean", torch.zeros(G))
        self.register_buffer("x_scale", torch.ones(G))
        # 1 for genes that vary among the training cells, 0 for constant ones (gaussian only:
        # their likelihood is unbounded, so they are left out of it and predicted as the constant)
        self.register_buffer("gene_varies", torch.ones(G))
        # N_t: training cells whose label includes t (set by SAMSVAE.fit; 0 counts as 1)
        self.register_buffer("n_cells", torch.zeros(K))

    # ---- training hooks ----------------------------------------------------------------
    def optimizer_groups(self, lr: float) -> list[dict]:
        glob = [p for n, p in self.named_parameters() if n in self._GLOBAL]
        others = [p for n, p in self.named_parameters() if n not in self._GLOBAL]
        return [{"params": others, "lr": lr}, {"params": glob, "lr": self.config.global_lr_factor * lr}]

    @torch.no_grad()
    def init_from_data(self, X: torch.Tensor) -> None:
        """Standardise the encoder input per gene and start the decoder at the average
        cell (gene means and sds, or mean expression proportions for NB)."""
        xin = torch.log1p(X) if self.config.likelihood == "nb" else X
        self.x_mean.copy_(xin.mean(0))
        self.x_scale.copy_(xin.std(0).clamp_min(1e-2))
        last = last_linear(self.decoder)
        if self.config.likelihood == "nb":
            prop = (X / X.sum(1, keepdim=True).clamp_min(1.0)).mean(0)
            last.bias.copy_(torch.log(prop + 1e-8))
        else:
            last.bias.copy_(X.mean(0))
            self.gene_varies.copy_((X.std(0) > 0).to(X.dtype))
            sd = X.std(0) - self.config.gene_scale_floor
            self.gene_log_param.copy_(torch.log(sd.clamp_min(1e-2)))

    # ---- the model's parts ------------------------------------------------------------------
    @property
    def e_scale(self) -> torch.Tensor:
        return F.softplus(self.e_scale_raw) + self.config.min_scale

    @property
    def gene_scale(self) -> torch.Tensor:
        """Per-gene sd of the Gaussian likelihood (``gene_scale_floor`` + exp(param))."""
        return self.gene_log_param.exp() + self.config.gene_scale_floor

    @property
    def mask_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.mask_logits)

    def sample_globals(
        self,
        n: int = 1,
        generator: torch.Generator | None = None,
        hard: bool = False,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws of (e, m) from q, each (n, K, d) (or (n, len(index), d) for the
        perturbations in ``index`` only). Masks are relaxed or straight-through
        Gumbel-sigmoid samples, or exact Bernoulli draws (``hard``)."""
        c = self.config
        loc, scale, logits = self.e_loc, self.e_scale, self.mask_logits
        if index is not None:
            loc, scale, logits = loc[index], scale[index], logits[index]
        shape = (n, *loc.shape)
        dev, dt = loc.device, loc.dtype
        eps = torch.randn(shape, device=dev, dtype=dt, generator=generator)
        e = loc + scale * eps
        u = torch.rand(shape, device=dev, dtype=dt, generator=generator).clamp(1e-6, 1.0 - 1e-6)
        logistic = torch.log(u) - torch.log1p(-u)
        pre = logits + logistic  # > 0 with probability sigmoid(logits)
        if hard:
            return e, (pre > 0).to(dt)
        soft = torch.sigmoid(pre / c.temperature)
        if c.mask_posterior == "straight_through":
            return e, (pre > 0).to(dt) + (soft - soft.detach())  # exactly 0/1 forward, relaxed gradient
        return e, soft

    @staticmethod
    def shift(labels: torch.Tensor, e: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Latent shift ``sum_t d_t e_t * m_t`` of each cell: labels (B, K), e and m
        (1, K, d) shared by the batch or (B, K, d) one draw per cell -> (B, d)."""
        em = e * m
        if em.shape[0] == 1:
            return labels @ em[0]
        return torch.einsum("bk,bkd->bd", labels, em)

    def mean_shift(self, labels: torch.Tensor) -> torch.Tensor:
        """Posterior mean shift ``labels @ E[e * m]`` (B, d)."""
        return labels @ self.perturbation_matrix.T

    def encode(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of ``q(z_basal | x)`` (or ``q(z_basal | x, shift)`` when correlated)."""
        c = self.config
        xin = torch.log1p(x) if c.likelihood == "nb" else x
        h = (xin - self.x_mean) / self.x_scale
        if c.correlated:
            if shift is None:
                raise ValueError("the correlated encoder needs the cells' latent shift")
            h = torch.cat([h, shift], dim=-1)
        out = self.encoder(h)
        d = c.latent_dim
        return out[..., :d], F.softplus(out[..., d:]) + c.min_scale

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x | z)`` per cell (n,)."""
        out = self.decoder(z)
        if self.config.likelihood == "nb":
            mu = x.sum(-1, keepdim=True) * torch.softmax(out, dim=-1)
            return nb_log_prob(x, mu, self.gene_log_param.exp()).sum(-1)
        # genes that are constant in the training cells (gene_varies == 0) are left out
        return (-gaussian_nll(x, out, self.gene_scale) * self.gene_varies).sum(-1)

    def sample_x(
        self, z: torch.Tensor, library: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draws from ``p(x | z)``: Gaussian draws clipped at 0, or NB counts with ``library``."""
        out = self.decoder(z)
        if self.config.likelihood == "nb":
            if library is None:
                raise ValueError("NB sampling needs the library sizes")
            mu = library.reshape(-1, 1) * torch.softmax(out, dim=-1)
            return sample_nb(mu, self.gene_log_param.exp(), generator)
        eps = torch.randn(out.shape, device=out.device, dtype=out.dtype, generator=generator)
        x = (out + self.gene_scale * eps).clamp_min(0.0)
        return torch.where(self.gene_varies > 0, x, self.x_mean)

    def global_kl(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per perturbation (K,): KL(q(e_t) || p(e_t)) and KL(q(m_t) || p(m_t)), summed over latent dims."""
        c = self.config
        kl_e = normal_kl(self.e_loc, self.e_scale, scale_p=c.embedding_prior_scale).sum(-1)
        kl_m = bernoulli_kl(self.mask_logits, c.mask_prior).sum(-1)
        return kl_e, kl_m

    def global_kl_weights(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, K): ``1 / N_t`` for every perturbation t in a cell's label, else 0."""
        return (labels != 0).to(labels.dtype) / self.n_cells.clamp_min(1.0)

    @property
    def perturbation_matrix(self) -> torch.Tensor:
        """``E[e_t * m_t]`` as (latent_dim, n_perturbations)."""
        return (self.e_loc * self.mask_probs).T

    # ---- shared interface of pdae_core modules ---------------------------------------------
    def embed(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Posterior mean of ``z_basal`` (the correlated encoder gets the posterior mean shift)."""
        loc, _ = self.encode(x, self.mean_shift(labels) if self.config.correlated else None)
        return loc

    def transfer(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Cells observed under ``labels`` moved to ``target``: ``z_basal ~ q``, plus the
        target's shift with ``e``, ``m`` drawn from q (one draw per cell), decoded and
        sampled (NB: sampled counts with the source cell's library size)."""
        B = x.shape[0]
        target = target.expand(B, -1)
        K = self.config.n_perturbations
        # only the perturbations that occur in the source or target labels need draws
        used = (target[:, :K] != 0).any(0)
        if self.config.correlated:
            used = used | (labels[:, :K] != 0).any(0)
        idx = torch.nonzero(used).flatten()
        e, m = self.sample_globals(B, generator, hard=True, index=idx)
        src = self.shift(labels[:, idx], e, m) if self.config.correlated else None
        loc, scale = self.encode(x, src)
        zb = loc + scale * torch.randn(loc.shape, device=loc.device, dtype=loc.dtype, generator=generator)
        z = zb + self.shift(target[:, idx], e, m)
        library = x.sum(-1) if self.config.likelihood == "nb" else None
        return self.sample_x(z, library, generator)

    def loss(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        shard: Shard | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Negative ELBO per cell, averaged over the batch (``"loss"``), and its parts.
        ``shard`` is ignored (no sharded loss: each rank uses its local slice); random
        draws come from ``generator`` (the global RNG when None)."""
        e, m = self.sample_globals(1, generator)
        s = self.shift(labels, e, m)
        loc, scale = self.encode(x, s if self.config.correlated else None)
        zb = loc + scale * torch.randn(loc.shape, device=loc.device, dtype=loc.dtype, generator=generator)
        nll = -self.log_likelihood(x, zb + s)
        kl_z = normal_kl(loc, scale).sum(-1)
        kl_e_t, kl_m_t = self.global_kl()
        w = self.global_kl_weights(labels)
        kl_e, kl_m = w @ kl_e_t, w @ kl_m_t
        total = (nll + kl_z + kl_e + kl_m).mean()
        return {"loss": total, "nll": nll.mean(), "kl_z": kl_z.mean(), "kl_embed": kl_e.mean(), "kl_mask": kl_m.mean()}


@register_model
class SAMSVAE(PerturbationModel):
    """Sparse Additive Mechanism Shift VAE behind the shared model interface.

    ``likelihood="gaussian"`` (default) models log-normalised expression;
    ``likelihood="nb"`` models raw counts (set the AnnData up with ``layer="counts"``)
    and then its predictions are sampled counts.

    >>> model = SAMSVAE.from_anndata(adata, perturbation_key="condition")
    >>> model.fit(adata, holdout=["KLF1+MAP2K6"])
    >>> pred = model.predict(adata[adata.obs.condition == "control"], "KLF1+MAP2K6")
    """

    model_type = "samsvae"
    config_class = SAMSVAEConfig
    module_class = SAMSVAEModule

    def _before_training(self, adata: ad.AnnData, keep: np.ndarray, labels: np.ndarray) -> Callable[[], None]:
        """Stores ``N_t``, the number of training cells (outside the held-out conditions)
        whose label includes each perturbation ``t``, which scales the global KL terms of
        the ELBO; restored if training fails."""
        bufs = [m.n_cells for m in self._member_modules()]  # every member's, for an ensemble
        olds = [b.detach().clone() for b in bufs]
        for buf in bufs:
            buf.copy_(torch.as_tensor((labels != 0).sum(0), dtype=buf.dtype, device=buf.device))

        def undo() -> None:
            for buf, old in zip(bufs, olds):
                buf.copy_(old.to(buf.device))

        return undo

    def _check_x_kind(self, adata: ad.AnnData) -> None:
        kind = detect_x_kind(adata, self.registry.layer)
        if kind == "change":
            super()._check_x_kind(adata)  # refuses changes from control with the shared message
        where = f"layer {self.registry.layer!r}" if self.registry.layer else "X"
        if self.config.likelihood == "nb" and kind != "counts":
            raise DataError(
                f"SAMSVAE with likelihood='nb' models raw counts, but {where} holds non-integer "
                "(log-normalised?) values. Set the AnnData up on the raw counts (e.g. "
                "SAMSVAE.from_anndata(adata, layer='counts', likelihood='nb') after pdae_core.preprocess) "
                "or use likelihood='gaussian'."
            )
        if self.config.likelihood == "gaussian" and kind == "counts":
            raise DataError(
                f"{where} holds raw counts; SAMSVAE with likelihood='gaussian' expects log-normalised "
                "expression. Run pdae_core.preprocess(adata) (normalize_total + log1p) first, or use "
                "likelihood='nb' for counts."
            )
