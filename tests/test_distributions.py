"""pdae_core.models.distributions: every density, KL and sampler against torch.distributions
(or scipy / closed forms), elementwise, as the models use them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Gamma, NegativeBinomial, Normal, kl_divergence

from pdae_core.models.distributions import (
    LOG_2PI,
    bernoulli_kl,
    censored_gaussian_nll,
    censored_mean,
    gaussian_nll,
    nb_log_prob,
    normal_kl,
    sample_nb,
    sample_standard_gamma,
    std_normal_kl_logvar,
)


def test_log_2pi():
    assert LOG_2PI == math.log(2.0 * math.pi)


# ---- Gaussian ---------------------------------------------------------------------------------


def test_gaussian_nll_matches_normal_log_prob():
    x = torch.tensor([[0.0, 1.5, -2.0]])
    mean = torch.tensor([[0.5, 1.0, 0.0]])
    scale = torch.tensor([0.3, 1.0, 2.5])
    direct = [
        0.5 * ((xi - mi) / si) ** 2 + math.log(si) + 0.5 * math.log(2 * math.pi)
        for xi, mi, si in zip([0.0, 1.5, -2.0], [0.5, 1.0, 0.0], [0.3, 1.0, 2.5])
    ]
    torch.testing.assert_close(gaussian_nll(x, mean, scale), torch.tensor([direct]))
    ref = -torch.distributions.Normal(mean, scale).log_prob(x)
    torch.testing.assert_close(gaussian_nll(x, mean, scale), ref)
    assert gaussian_nll(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1)).item() == pytest.approx(0.5 * np.log(2 * np.pi))


def test_gaussian_nll_summed_per_cell_matches_torch():
    # per cell, summed over genes, with a per-gene scale (how FCR and SAMS-VAE use it)
    for seed, (n, G) in [(1, (6, 7)), (2, (7, 5))]:
        g = torch.Generator().manual_seed(seed)
        x, loc = torch.rand(n, G, generator=g), torch.randn(n, G, generator=g)
        scale = torch.rand(G, generator=g) + 0.1
        torch.testing.assert_close(-gaussian_nll(x, loc, scale).sum(-1), Normal(loc, scale).log_prob(x).sum(-1))
        torch.testing.assert_close(gaussian_nll(x, loc, scale).sum(-1), -Normal(loc, scale).log_prob(x).sum(-1))


def test_normal_kl_matches_torch():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(5, 4, generator=g)
    scale = torch.rand(5, 4, generator=g) + 0.1
    for prior in (1.0, 0.5):
        ref = kl_divergence(Normal(loc, scale), Normal(torch.zeros(()), torch.tensor(prior)))
        torch.testing.assert_close(normal_kl(loc, scale, scale_p=prior), ref)
        torch.testing.assert_close(normal_kl(loc, scale, torch.zeros(5, 4), torch.full((5, 4), prior)), ref)
    assert float(normal_kl(torch.zeros(3), torch.ones(3)).abs().max()) < 1e-7


def test_normal_kl_between_two_gaussians():
    g = torch.Generator().manual_seed(1)
    mq, mp = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    sq, sp = torch.rand(5, 4, generator=g) + 0.2, torch.rand(5, 4, generator=g) + 0.2
    torch.testing.assert_close(normal_kl(mq, sq, mp, sp), kl_divergence(Normal(mq, sq), Normal(mp, sp)))
    ref = kl_divergence(Normal(mq, sq), Normal(mp, sp)).sum(-1)
    torch.testing.assert_close(normal_kl(mq, sq, mp, sp).sum(-1), ref)
    # KL(N(1, 1) || N(0, 1)) = 1/2; KL(N(0, 2^2) || N(0, 1)) = (4 - 1 - log 4) / 2
    one = torch.ones(1, 1)
    assert normal_kl(one, one, torch.zeros(1, 1), one).sum(-1).item() == pytest.approx(0.5)
    v = normal_kl(torch.zeros(1, 1), 2 * one, torch.zeros(1, 1), one).sum(-1).item()
    assert v == pytest.approx((4 - 1 - np.log(4)) / 2, rel=1e-6)


def test_std_normal_kl_logvar_matches_closed_form_and_torch():
    mu = torch.tensor([0.0, 1.0, -2.0])
    logvar = torch.tensor([0.0, math.log(4.0), math.log(0.25)])
    # KL(N(m, v) || N(0, 1)) = (v + m^2 - 1 - log v) / 2
    direct = torch.tensor([0.0, (4 + 1 - 1 - math.log(4)) / 2, (0.25 + 4 - 1 - math.log(0.25)) / 2])
    torch.testing.assert_close(std_normal_kl_logvar(mu, logvar), direct)
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    torch.testing.assert_close(std_normal_kl_logvar(mu, logvar), ref)
    # the two parametrisations agree
    torch.testing.assert_close(std_normal_kl_logvar(mu, logvar), normal_kl(mu, torch.exp(0.5 * logvar)))


def test_censored_gaussian_nll_and_mean_match_scipy():
    from scipy import integrate, stats

    x = torch.tensor([0.0, 0.0, 0.7, 2.0], dtype=torch.float64)
    mean = torch.tensor([0.3, -1.0, 0.5, 2.5], dtype=torch.float64)
    scale = torch.tensor([0.5, 0.2, 1.0, 0.8], dtype=torch.float64)
    want = [
        -stats.norm.logcdf(0.0, loc=0.3, scale=0.5),  # P(y <= 0)
        -stats.norm.logcdf(0.0, loc=-1.0, scale=0.2),
        -stats.norm.logpdf(0.7, loc=0.5, scale=1.0),
        -stats.norm.logpdf(2.0, loc=2.5, scale=0.8),
    ]
    np.testing.assert_allclose(censored_gaussian_nll(x, mean, scale).numpy(), want, rtol=1e-10)
    for m, s in [(0.3, 0.5), (-1.0, 0.2), (2.5, 0.8)]:
        e, _ = integrate.quad(lambda y, m=m, s=s: max(y, 0.0) * stats.norm.pdf(y, m, s), m - 12 * s, m + 12 * s, points=[0.0])
        got = float(censored_mean(torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)))
        assert got == pytest.approx(e, rel=1e-7, abs=1e-12)


def test_censored_gaussian_matches_torch_normal():
    g = torch.Generator().manual_seed(4)
    loc = torch.randn(50, dtype=torch.float64, generator=g)
    scale = torch.rand(50, dtype=torch.float64, generator=g) + 0.1
    x = torch.where(torch.arange(50) % 2 == 0, torch.zeros(50, dtype=torch.float64), torch.rand(50, dtype=torch.float64, generator=g))
    d = Normal(loc, scale)
    ref = torch.where(x > 0, -d.log_prob(x), -torch.log(d.cdf(torch.zeros_like(x))))
    got = censored_gaussian_nll(x, loc, scale)
    ok = torch.isfinite(ref)  # log(cdf) underflows far in the tail; log_ndtr does not
    assert int(ok.sum()) >= 45 and bool(torch.isfinite(got).all())
    torch.testing.assert_close(got[ok], ref[ok])
    # the mean of rectified draws
    torch.manual_seed(0)
    draws = d.sample((200_000,)).clamp_min(0.0)
    torch.testing.assert_close(censored_mean(loc, scale), draws.mean(0), rtol=0.0, atol=0.01)


# ---- Bernoulli --------------------------------------------------------------------------------


def test_bernoulli_kl_matches_direct_formula_and_torch():
    logits = torch.tensor([-6.0, -1.0, 0.0, 0.5, 4.0])
    p = 0.01
    q = torch.sigmoid(logits).double()
    direct = q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))
    torch.testing.assert_close(bernoulli_kl(logits, p).double(), direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bernoulli_kl(logits, p), kl_divergence(Bernoulli(logits=logits), Bernoulli(probs=torch.tensor(p))))
    # zero exactly at the prior
    assert abs(float(bernoulli_kl(torch.tensor([math.log(0.2 / 0.8)]), 0.2))) < 1e-6
    # finite for saturated logits
    assert torch.isfinite(bernoulli_kl(torch.tensor([-80.0, 80.0]), 0.3)).all()


# ---- negative binomial ------------------------------------------------------------------------


def test_nb_log_prob_matches_torch():
    g = torch.Generator().manual_seed(2)
    mu = torch.rand(4, 6, generator=g) * 20 + 0.1
    theta = torch.rand(6, generator=g) * 5 + 0.2
    x = torch.poisson(mu, generator=g)
    # torch's NB counts failures before total_count successes: mean = total_count * p / (1 - p)
    ref = NegativeBinomial(total_count=theta.expand_as(mu), probs=mu / (mu + theta)).log_prob(x)
    torch.testing.assert_close(nb_log_prob(x, mu, theta), ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(nb_log_prob(x, mu, theta).sum(-1), ref.sum(-1), rtol=1e-4, atol=1e-3)


def test_sample_nb_moments_and_determinism():
    mu = torch.tensor([[0.5, 4.0, 30.0]]).expand(40000, 3)
    theta = torch.tensor([0.3, 2.0, 10.0])
    x = sample_nb(mu, theta, torch.Generator().manual_seed(0))
    assert torch.all(x == x.round()) and torch.all(x >= 0)
    m = mu[0]
    np.testing.assert_allclose(x.mean(0).numpy(), m.numpy(), rtol=0.05)
    np.testing.assert_allclose(x.var(0).numpy(), (m + m * m / theta).numpy(), rtol=0.1)
    again = sample_nb(mu[:50], theta, torch.Generator().manual_seed(7))
    torch.testing.assert_close(again, sample_nb(mu[:50], theta, torch.Generator().manual_seed(7)))


def test_sample_nb_matches_torch_negative_binomial_frequencies():
    mu, theta = torch.full((30000, 1), 3.0), torch.tensor([1.5])
    x = sample_nb(mu, theta, torch.Generator().manual_seed(1)).flatten()
    pmf = NegativeBinomial(total_count=theta, probs=mu[0] / (mu[0] + theta)).log_prob(torch.arange(8.0)).exp()
    freq = torch.stack([(x == k).float().mean() for k in range(8)])
    torch.testing.assert_close(freq, pmf, rtol=0.0, atol=0.01)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.5])
def test_sample_standard_gamma_matches_torch_gamma(alpha):
    a = torch.full((40000,), alpha)
    x = sample_standard_gamma(a, torch.Generator().manual_seed(2))
    assert x.shape == a.shape and bool((x > 0).all())
    ref = Gamma(torch.tensor(alpha), torch.tensor(1.0))
    assert float(x.mean()) == pytest.approx(float(ref.mean), rel=0.03)
    assert float(x.var()) == pytest.approx(float(ref.variance), rel=0.06)
    # the empirical CDF at a few quantiles of torch's Gamma
    torch.manual_seed(0)
    ref_draws = ref.sample((40000,))
    for q in (0.1, 0.5, 0.9):
        t = float(ref_draws.quantile(q))
        assert float((x <= t).float().mean()) == pytest.approx(q, abs=0.015)
    # reproducible from the generator
    torch.testing.assert_close(sample_standard_gamma(a[:20], torch.Generator().manual_seed(5)),
                               sample_standard_gamma(a[:20], torch.Generator().manual_seed(5)))
