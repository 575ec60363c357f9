"""The network of FCR (see :mod:`pdae_core.models.fcr` for the model, its loss and its
defaults): priors, encoders, decoder, classifiers and the independence discriminators,
with the adversarial pieces they need (gradient reversal, within-group permutations)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .distributions import gaussian_nll, normal_kl
from .module import PerturbationModule
from .nn import inverse_softplus, last_linear, mlp

if TYPE_CHECKING:
    from ..train.distributed import Shard

#: the independence discriminators: name -> (first block, second block)
PAIRS = {"x_t": ("x", "t"), "x_tx": ("x", "tx"), "t_tx": ("t", "tx")}


# ---- adversarial pieces (module-level so that the tests can check them directly) ---------------


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


class FCRModule(PerturbationModule):
    """Priors, encoders, decoder, classifiers and discriminators of FCR. ``labels`` are
    (n, K + C): the K treatment columns, then the one-hot context."""

    def __init__(self, config: Any):  # an FCRConfig (fcr.py imports this module)
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
        last = last_linear(self.decoder)
        if self.config.softplus_output:
            last.bias.copy_(inverse_softplus(mean.clamp_min(1e-4)))
        else:
            last.bias.copy_(mean)
        self.sigma_raw.copy_(inverse_softplus((sd - self.config.min_sigma).clamp_min(1e-3)))

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
        target: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Cells observed under ``labels`` (n, K + C) moved to ``target`` ((n, K), or
        (n, K + C) whose context columns are ignored: each cell keeps its own context)."""
        c = self.config
        K = c.n_perturbations
        _, cov = self.split(labels)
        if target.shape[-1] not in (K, K + c.n_covariates):
            raise ValueError(f"target must have {K} (or {K + c.n_covariates}) columns, got {target.shape[-1]}")
        t = target[..., :K].expand(x.shape[0], K)
        mx, sx = self.q_x(x, cov)
        zx = mx if c.transfer_zx == "mean" else self._sample(mx, sx, generator)
        zt = self._sample(*self.p_t(t), generator)
        ztx = self._sample(*self.p_tx(cov, t), generator)
        y = self.decode_mean(zx, zt, ztx)
        if c.output_noise:
            y = self._sample(y, self.sigma.expand_as(y), generator)
        return y.clamp_min(0.0) if c.clip_output else y

    def loss(self, x: torch.Tensor, labels: torch.Tensor, shard: Shard | None = None) -> dict[str, torch.Tensor]:
        """The FCR objective on one batch; ``"loss"`` is the weighted total. ``shard`` is
        ignored (no sharded loss: each rank uses its local slice)."""
        c = self.config
        t, cov = self.split(labels)
        G = c.n_genes
        px, pt, ptx = self.p_x(cov), self.p_t(t), self.p_tx(cov, t)
        qx, qt, qtx = self.q_x(x, cov, px[0]), self.q_t(x, t, pt[0]), self.q_tx(x, cov, t, ptx[0])
        zx, zt, ztx = self._sample(*qx), self._sample(*qt), self._sample(*qtx)

        nll = gaussian_nll(x, self.decode_mean(zx, zt, ztx), self.sigma).sum(-1).mean() / G
        kl_x = normal_kl(*qx, *px).sum(-1).mean() / G
        kl_t = normal_kl(*qt, *pt).sum(-1).mean() / G
        kl_tx = normal_kl(*qtx, *ptx).sum(-1).mean() / G

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
