"""Closed-form densities, KL divergences and samplers shared by the variational models.

Convention: every function here is **elementwise** (it broadcasts its arguments and
returns a tensor of their broadcast shape); the callers sum over genes or latent
dimensions and average over cells themselves. Each is checked against
``torch.distributions`` in ``tests/test_distributions.py``; they exist because the
models need forms that ``torch.distributions`` does not offer (a censored Gaussian,
a KL in the log-variance parametrisation, samplers driven by a ``torch.Generator``)
or need them without building distribution objects in the training step.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

LOG_2PI = math.log(2.0 * math.pi)


# ---- Gaussian ---------------------------------------------------------------------------------


def gaussian_nll(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``-log N(x | loc, scale^2)`` (the log-density is its negation)."""
    return 0.5 * ((x - loc) / scale) ** 2 + torch.log(scale) + 0.5 * LOG_2PI


def normal_kl(
    loc_q: torch.Tensor,
    scale_q: torch.Tensor,
    loc_p: torch.Tensor | None = None,
    scale_p: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """``KL( N(loc_q, scale_q^2) || N(loc_p, scale_p^2) )``; ``loc_p=None`` is a prior centred at 0."""
    var_ratio = (scale_q / scale_p) ** 2
    diff = loc_q if loc_p is None else loc_q - loc_p
    return 0.5 * (var_ratio + (diff / scale_p) ** 2 - 1.0 - torch.log(var_ratio))


def std_normal_kl_logvar(loc: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL( N(loc, exp(logvar)) || N(0, 1) )``, with the posterior given by its log-variance."""
    return 0.5 * (loc * loc + torch.exp(logvar) - 1.0 - logvar)


def censored_gaussian_nll(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``-log p(x)`` of ``x = max(0, y)``, ``y ~ N(loc, scale^2)`` (Tobit): the Gaussian
    density where ``x > 0`` and ``P(y <= 0) = Phi(-loc / scale)`` where ``x = 0``."""
    return torch.where(x > 0, gaussian_nll(x, loc, scale), -torch.special.log_ndtr(-loc / scale))


def censored_mean(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``E[max(0, y)]`` for ``y ~ N(loc, scale^2)``: ``loc Phi(loc/scale) + scale phi(loc/scale)``."""
    t = loc / scale
    return loc * torch.special.ndtr(t) + scale * torch.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)


# ---- Bernoulli --------------------------------------------------------------------------------


def bernoulli_kl(logits: torch.Tensor, prior_p: float) -> torch.Tensor:
    """``KL( Bernoulli(sigmoid(logits)) || Bernoulli(prior_p) )``, stable in the logits."""
    q = torch.sigmoid(logits)
    log_q, log_1mq = F.logsigmoid(logits), F.logsigmoid(-logits)
    return q * (log_q - math.log(prior_p)) + (1.0 - q) * (log_1mq - math.log1p(-prior_p))


# ---- negative binomial ------------------------------------------------------------------------


def nb_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative binomial log-probability of counts ``x`` with mean ``mu`` and inverse
    dispersion ``theta`` (variance ``mu + mu^2 / theta``)."""
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
        + theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
    )


def sample_standard_gamma(alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gamma(alpha, 1) draws driven by ``generator`` (Marsaglia & Tsang 2000, with the
    ``U^(1/alpha)`` boost for alpha < 1); ``torch.distributions.Gamma`` takes no generator."""
    alpha = alpha.detach()
    flat = alpha.reshape(-1)
    boost = flat < 1.0
    a = torch.where(boost, flat + 1.0, flat)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.arange(a.numel(), device=a.device)
    for _ in range(1000):
        if todo.numel() == 0:
            break
        dd, cc = d[todo], c[todo]
        xn = torch.randn(todo.numel(), device=a.device, dtype=a.dtype, generator=generator)
        u = torch.rand(todo.numel(), device=a.device, dtype=a.dtype, generator=generator)
        v = (1.0 + cc * xn) ** 3
        vpos = v.clamp_min(1e-30)
        ok = (v > 0) & (torch.log(u.clamp_min(1e-30)) < 0.5 * xn * xn + dd - dd * vpos + dd * torch.log(vpos))
        out[todo[ok]] = (dd * v)[ok]
        todo = todo[~ok]
    if todo.numel():  # practically unreachable (acceptance rate > 95 %); fall back to the mean
        out[todo] = a[todo]
    if boost.any():
        u = torch.rand(int(boost.sum()), device=a.device, dtype=a.dtype, generator=generator)
        out[boost] = out[boost] * u.clamp_min(1e-30) ** (1.0 / flat[boost])
    return out.view_as(alpha)


def sample_nb(mu: torch.Tensor, theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Negative binomial counts as a Gamma-Poisson mixture: ``rate = mu / theta * Gamma(theta, 1)``."""
    theta = theta.expand_as(mu)
    rate = mu.detach() / theta * sample_standard_gamma(theta, generator)
    return torch.poisson(rate, generator=generator)
