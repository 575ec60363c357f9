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
  code; ELU activations (the shared ``pdae_core.models.pdae.mlp``).
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
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..data.registry import PerturbationRegistry, Target, setup_anndata
from ..errors import DataError
from ..train.loop import Callback, History, TrainConfig
from .base import PerturbationModel
from .catalog import register_model
from .pdae import mlp

logger = logging.getLogger(__name__)

PAIRS = {"x_t": ("x", "t"), "x_tx": ("x", "tx"), "t_tx": ("t", "tx")}
_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass
class FCRConfig:
    """Architecture and loss hyperparameters of an FCR model (see the module docstring)."""

    n_genes: int
    n_perturbations: int
    covariate_categories: list[str] = field(default_factory=list)
    zx_dim: int = 32
    zt_dim: int = 32
    ztx_dim: int = 32
    hidden_dims: tuple[int, ...] = (128, 128)
    prior_hidden_dims: tuple[int, ...] = (64,)
    interaction_dim: int = 32
    classifier_hidden: int = 64
    disc_hidden_dims: tuple[int, ...] = (64, 64)
    independence_pairs: tuple[str, ...] = ("x_tx", "t_tx", "x_t")
    w_rec: float = 1.0
    w_kl: float = 1.0
    w_cls: float = 1.0
    w_adv: float = 1.0
    w_sim: float = 1.0
    linear_prior_means: bool = False
    residual_posterior: bool = True
    lr_scale: float = 3.0
    grl_scale: float = 1.0
    min_scale: float = 1e-3
    min_sigma: float = 0.05
    softplus_output: bool = True
    transfer_zx: str = "mean"  # "mean" | "sample"
    output_noise: bool = True
    clip_output: bool = False

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
            (self.transfer_zx in ("sample", "mean"), "transfer_zx must be 'sample' or 'mean'"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"FCRConfig: {msg}")

    @property
    def n_covariates(self) -> int:
        """Number of contexts C (1 when there is no covariate)."""
        return max(1, len(self.covariate_categories))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("hidden_dims", "prior_hidden_dims", "disc_hidden_dims", "independence_pairs",
                  "covariate_categories"):
            d[k] = list(d[k])
        return d


# ---- loss pieces (module-level so that the tests can check them directly) ------------------------


def gaussian_kl(mu_q: torch.Tensor, s_q: torch.Tensor, mu_p: torch.Tensor, s_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, s_q^2) || N(mu_p, s_p^2)) of diagonal Gaussians, summed over the last dim."""
    var_ratio = (s_q / s_p) ** 2
    return 0.5 * (var_ratio + ((mu_q - mu_p) / s_p) ** 2 - 1.0 - torch.log(var_ratio)).sum(-1)


def gaussian_nll(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """-log N(x; mu, sigma^2) summed over the last dim (sigma broadcasts, e.g. per gene)."""
    return (0.5 * ((x - mu) / sigma) ** 2 + torch.log(sigma) + 0.5 * _LOG_2PI).sum(-1)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; the backward pass multiplies the gradient by ``-scale``."""
    return _GradReverse.apply(x, scale)


def group_derangement(groups: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For group ids (n,), a permutation ``perm`` that sends every cell of a group with at
    least two cells to another cell of the same group (never itself), and ``mask`` (n,)
    marking those cells; cells alone in their group map to themselves with mask False."""
    n = groups.shape[0]
    device = groups.device
    key = torch.rand(n, generator=generator, device=device)
    order = torch.argsort(groups.double() * 2.0 + key.double())  # grouped, random within group
    g_sorted = groups[order]
    _, inv, counts = torch.unique_consecutive(g_sorted, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    size = counts[inv]
    pos = torch.arange(n, device=device) - starts[inv]
    # one random shift in 1..size-1 per group (0 for singletons)
    r = torch.rand(len(counts), generator=generator, device=device)
    shift = torch.where(counts > 1, 1 + torch.floor(r * (counts - 1).to(r.dtype)).long(), torch.zeros_like(counts))
    new_pos = starts[inv] + (pos + shift[inv]) % size
    perm = torch.empty(n, dtype=torch.long, device=device)
    perm[order] = order[new_pos]
    mask = torch.empty(n, dtype=torch.bool, device=device)
    mask[order] = size > 1
    return perm, mask


def permutation_bce(disc: nn.Module, a: torch.Tensor, b: torch.Tensor, perm: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """BCE of a discriminator telling true pairs (a_i, b_i) (label 1) from permuted pairs
    (a_i, b_perm(i)) (label 0), over the cells in ``mask``; the mean of the two halves."""
    if not bool(mask.any()):
        return a.sum() * 0.0 + b.sum() * 0.0
    a, b_true, b_fake = a[mask], b[mask], b[perm][mask]
    logit_true = disc(torch.cat([a, b_true], -1)).squeeze(-1)
    logit_fake = disc(torch.cat([a, b_fake], -1)).squeeze(-1)
    return 0.5 * (
        F.binary_cross_entropy_with_logits(logit_true, torch.ones_like(logit_true))
        + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
    )


class FCRModule(nn.Module):
    """Priors, encoders, decoder, classifiers and discriminators of FCR. ``labels`` are
    (n, K + C): the K treatment columns, then the one-hot context."""

    def __init__(self, config: FCRConfig):
        super().__init__()
        self.config = c = config
        G, K, C = c.n_genes, c.n_perturbations, c.n_covariates
        self.enc_x = mlp([G + C, *c.hidden_dims, 2 * c.zx_dim])
        self.enc_t = mlp([G + K, *c.hidden_dims, 2 * c.zt_dim])
        self.enc_tx = mlp([G + C + K, *c.hidden_dims, 2 * c.ztx_dim])
        self.prior_x = mlp([C, *c.prior_hidden_dims, 2 * c.zx_dim])
        lin = c.linear_prior_means
        self.prior_t = mlp([K, *c.prior_hidden_dims, (1 if lin else 2) * c.zt_dim])  # (mean and) scale
        self.emb_x = nn.Linear(C, c.interaction_dim)
        self.emb_t = nn.Linear(K, c.interaction_dim, bias=False)  # t = 0 -> 0: one control prior for all contexts
        self.prior_tx = mlp([c.interaction_dim, *c.prior_hidden_dims, (1 if lin else 2) * c.ztx_dim])
        if lin:  # prior means linear in t (z_t) and bilinear in (x, t) (z_tx); zero for controls
            self.prior_t_mean = nn.Linear(K, c.zt_dim, bias=False)
            self.prior_tx_mean = nn.Linear(c.interaction_dim, c.ztx_dim, bias=False)
        self.decoder = mlp([c.zx_dim + c.zt_dim + c.ztx_dim, *reversed(c.hidden_dims), G],
                           nn.Softplus() if c.softplus_output else None)
        self.sigma_raw = nn.Parameter(torch.zeros(G))  # sigma = min_sigma + softplus(sigma_raw)
        self.cls_x = mlp([c.zx_dim, c.classifier_hidden, C])
        self.cls_t = mlp([c.zt_dim, c.classifier_hidden, K])
        dims = {"x": c.zx_dim, "t": c.zt_dim, "tx": c.ztx_dim}
        self.discriminators = nn.ModuleDict(
            {p: mlp([dims[PAIRS[p][0]] + dims[PAIRS[p][1]], *c.disc_hidden_dims, 1]) for p in c.independence_pairs}
        )
        self.register_buffer("x_mean", torch.zeros(G))
        self.register_buffer("x_scale", torch.ones(G))

    @torch.no_grad()
    def init_from_data(self, X: torch.Tensor) -> None:
        """Standardise the encoders' input per gene; start the decoder at the mean profile
        and its noise at the per-gene sd."""
        mean, sd = X.mean(0), X.std(0)
        self.x_mean.copy_(mean)
        self.x_scale.copy_(sd.clamp_min(1e-2))
        last = [m for m in self.decoder if isinstance(m, nn.Linear)][-1]
        if self.config.softplus_output:
            m = mean.clamp_min(1e-4)
            last.bias.copy_(torch.where(m > 20, m, torch.log(torch.expm1(m))))  # inverse softplus
        else:
            last.bias.copy_(mean)
        s = (sd - self.config.min_sigma).clamp_min(1e-3)
        self.sigma_raw.copy_(torch.where(s > 20, s, torch.log(torch.expm1(s))))

    # ---- parts ---------------------------------------------------------------------------
    def split(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(treatment (n, K), context one-hot (n, C)) of module labels (n, K + C)."""
        K, C = self.config.n_perturbations, self.config.n_covariates
        if labels.shape[-1] != K + C:
            raise ValueError(f"FCR labels must have {K} treatment + {C} context columns, got {labels.shape[-1]}")
        return labels[..., :K], labels[..., K:]

    def _gauss(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = out.chunk(2, dim=-1)
        return mu, F.softplus(raw) + self.config.min_scale

    def _std(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.x_mean) / self.x_scale

    def _posterior(self, out: torch.Tensor, prior_mean) -> tuple[torch.Tensor, torch.Tensor]:
        mu, s = self._gauss(out)
        if self.config.residual_posterior:  # q's mean = the prior's mean + the encoder's offset
            mu = mu + prior_mean()
        return mu, s

    def q_x(self, y: torch.Tensor, cov: torch.Tensor, prior_mean: torch.Tensor | None = None):
        """q(z_x | y, x): (mean, sd)."""
        out = self.enc_x(torch.cat([self._std(y), cov], -1))
        return self._posterior(out, lambda: self.p_x(cov)[0] if prior_mean is None else prior_mean)

    def q_t(self, y: torch.Tensor, t: torch.Tensor, prior_mean: torch.Tensor | None = None):
        """q(z_t | y, t): (mean, sd)."""
        out = self.enc_t(torch.cat([self._std(y), t], -1))
        return self._posterior(out, lambda: self.p_t(t)[0] if prior_mean is None else prior_mean)

    def q_tx(self, y: torch.Tensor, cov: torch.Tensor, t: torch.Tensor, prior_mean: torch.Tensor | None = None):
        """q(z_tx | y, x, t): (mean, sd)."""
        out = self.enc_tx(torch.cat([self._std(y), cov, t], -1))
        return self._posterior(out, lambda: self.p_tx(cov, t)[0] if prior_mean is None else prior_mean)

    def p_x(self, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gauss(self.prior_x(cov))

    def p_t(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.linear_prior_means:
            return self.prior_t_mean(t), F.softplus(self.prior_t(t)) + self.config.min_scale
        return self._gauss(self.prior_t(t))

    def p_tx(self, cov: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.emb_x(cov) * self.emb_t(t)
        if self.config.linear_prior_means:
            return self.prior_tx_mean(h), F.softplus(self.prior_tx(h)) + self.config.min_scale
        return self._gauss(self.prior_tx(h))

    def optimizer_groups(self, lr: float) -> list[dict]:
        """One Adam group at ``lr_scale`` times the shared learning rate."""
        return [{"params": list(self.parameters()), "lr": self.config.lr_scale * lr}]

    @property
    def sigma(self) -> torch.Tensor:
        """Per-gene sd of the Gaussian likelihood."""
        return self.config.min_sigma + F.softplus(self.sigma_raw)

    def decode_mean(self, zx: torch.Tensor, zt: torch.Tensor, ztx: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([zx, zt, ztx], -1))

    @staticmethod
    def _sample(mu: torch.Tensor, s: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + s * eps

    @property
    def perturbation_matrix(self) -> torch.Tensor:
        """(zt_dim, K): prior mean of ``z_t`` under each unit treatment minus under control."""
        K = self.config.n_perturbations
        p = self.sigma_raw
        mu, _ = self.p_t(torch.cat([torch.zeros(1, K, device=p.device, dtype=p.dtype),
                                    torch.eye(K, device=p.device, dtype=p.dtype)]))
        return (mu[1:] - mu[:1]).T

    # ---- shared interface --------------------------------------------------------------------
    def embed(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Posterior mean of the covariate block ``z_x``."""
        _, cov = self.split(labels)
        return self.q_x(x, cov)[0]

    def transfer(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        target_labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Cells observed under ``labels`` (n, K + C) moved to ``target_labels`` ((n, K), or
        (n, K + C) whose context columns are ignored: each cell keeps its own context)."""
        c = self.config
        K = c.n_perturbations
        _, cov = self.split(labels)
        if target_labels.shape[-1] not in (K, K + c.n_covariates):
            raise ValueError(f"target_labels must have {K} (or {K + c.n_covariates}) columns, got {target_labels.shape[-1]}")
        t = target_labels[..., :K].expand(x.shape[0], K)
        mx, sx = self.q_x(x, cov)
        zx = mx if c.transfer_zx == "mean" else self._sample(mx, sx, generator)
        zt = self._sample(*self.p_t(t), generator)
        ztx = self._sample(*self.p_tx(cov, t), generator)
        y = self.decode_mean(zx, zt, ztx)
        if c.output_noise:
            y = self._sample(y, self.sigma.expand_as(y), generator)
        return y.clamp_min(0.0) if c.clip_output else y

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The FCR objective on one batch; ``"loss"`` is the weighted total."""
        c = self.config
        t, cov = self.split(labels)
        G = c.n_genes
        px, pt, ptx = self.p_x(cov), self.p_t(t), self.p_tx(cov, t)
        qx, qt, qtx = self.q_x(x, cov, px[0]), self.q_t(x, t, pt[0]), self.q_tx(x, cov, t, ptx[0])
        zx, zt, ztx = self._sample(*qx), self._sample(*qt), self._sample(*qtx)

        nll = gaussian_nll(x, self.decode_mean(zx, zt, ztx), self.sigma).mean() / G
        kl_x = gaussian_kl(*qx, *px).mean() / G
        kl_t = gaussian_kl(*qt, *pt).mean() / G
        kl_tx = gaussian_kl(*qtx, *ptx).mean() / G

        zero = x.sum() * 0.0
        cls_x = F.cross_entropy(self.cls_x(zx), cov.argmax(-1)) if c.n_covariates > 1 else zero
        cls_t = F.binary_cross_entropy_with_logits(self.cls_t(zt), (t != 0).to(x.dtype))

        adv = zero
        if len(self.discriminators) and c.w_adv > 0:
            _, groups = torch.unique(labels, dim=0, return_inverse=True)
            perm, mask = group_derangement(groups)
            blocks = {"x": zx, "t": zt, "tx": ztx}
            rev = {k: grad_reverse(v, c.grl_scale) for k, v in blocks.items()}
            for name, disc in self.discriminators.items():
                a, b = PAIRS[name]
                adv = adv + permutation_bce(disc, rev[a], rev[b], perm, mask)

        sim = zero
        if c.w_sim > 0:
            sim = self._structure_reg(qx[0], qt[0], t, cov)

        total = (c.w_rec * nll + c.w_kl * (kl_x + kl_t + kl_tx) + c.w_cls * (cls_x + cls_t)
                 + c.w_adv * adv + c.w_sim * sim)
        return {"loss": total, "nll": nll, "kl_x": kl_x, "kl_t": kl_t, "kl_tx": kl_tx,
                "cls_x": cls_x, "cls_t": cls_t, "adv": adv, "sim": sim}

    @staticmethod
    def _structure_reg(mx: torch.Tensor, mt: torch.Tensor, t: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """mean over treated cells of cos(z_t, z_t^0) - cos(z_x, z_x^0), z^0 the posterior
        mean of a random control cell of the same context in the batch (0 if none)."""
        ctrl = (t == 0).all(-1)
        same = (cov.unsqueeze(1) == cov.unsqueeze(0)).all(-1)  # (B, B)
        cand = same & ctrl.unsqueeze(0) & (~ctrl).unsqueeze(1)
        rows = cand.any(1)
        if not bool(rows.any()):
            return mx.sum() * 0.0
        score = torch.rand(cand.shape, device=mx.device) * cand
        j = score.argmax(1)[rows]
        i = rows.nonzero().squeeze(1)
        return (F.cosine_similarity(mt[i], mt[j], dim=-1) - F.cosine_similarity(mx[i], mx[j], dim=-1)).mean()


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
    def from_anndata(
        cls,
        adata: ad.AnnData,
        perturbation_key: str = "condition",
        control_label: str | None = None,
        separator: str = "+",
        dose_key: str | None = None,
        covariate_key: str | None = None,
        layer: str | None = None,
        seed: int = 0,
        **config: Any,
    ) -> FCR:
        """Like :meth:`PerturbationModel.from_anndata`; the context categories are read from
        ``adata.obs[covariate_key]`` unless ``covariate_categories`` is given."""
        reg = setup_anndata(adata, perturbation_key, control_label, separator, dose_key, covariate_key, layer)
        if covariate_key is not None and not config.get("covariate_categories"):
            config["covariate_categories"] = _categories(adata, covariate_key)
        return cls(reg, seed=seed, **config)

    def _rebuild(self, categories: list[str]) -> None:
        """New config and module with these context categories, same init seed and device."""
        device = self.device
        self.config = FCRConfig(**{**self.config.to_dict(), "covariate_categories": categories})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            self.module = FCRModule(self.config)
        self.module.to(device).eval()

    def fit(
        self,
        adata: ad.AnnData,
        holdout: Sequence[str] = (),
        train_config: TrainConfig | None = None,
        callbacks: Sequence[Callback] = (),
        **train_kwargs: Any,
    ) -> History:
        """Train (see :meth:`PerturbationModel.fit`); reads the context categories from
        ``adata`` first when the config has none."""
        key = self.registry.covariate_key
        if key is not None and not self.config.covariate_categories:
            self._rebuild(_categories(adata, key))
        return super().fit(adata, holdout, train_config, callbacks, **train_kwargs)

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
