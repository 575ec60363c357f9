"""Energy score, energy distance, the kernel MMD and the L2,1 norm (differentiable, in torch).

The energy terms use Euclidean distances (beta = 1), whose square root gets a tiny
epsilon so that gradients stay finite when two points coincide (it changes values by
< 1e-5); the MMD uses an RBF kernel on squared distances.
"""

from __future__ import annotations

import functools

import torch

_EPS = 1e-10


_HALF = (torch.float16, torch.bfloat16)


def _float32(fn):
    """Run a loss with autocast off and half-precision inputs cast to float32: under mixed precision the networks run in
    bf16/fp16, but distances of nearby points lose all precision in half precision."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = [a.float() if isinstance(a, torch.Tensor) and a.dtype in _HALF else a for a in args]  # float64 stays
        if torch.is_autocast_enabled(args[0].device.type):
            with torch.autocast(args[0].device.type, enabled=False):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


def _norm(diff: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((diff * diff).sum(-1) + _EPS)


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``a`` (..., n, d) and ``b`` (..., m, d).

    Both are centred on a shared (detached) mean first: the expansion
    |a|^2 + |b|^2 - 2ab then stays accurate in float32 for points far from 0."""
    c = torch.cat([a, b], dim=-2).mean(dim=-2, keepdim=True).detach()
    a, b = a - c, b - c
    sq = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(-2) - 2.0 * a @ b.transpose(-1, -2)
    return sq.clamp_min(0.0)


def pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``a`` (..., n, d) and ``b`` (..., m, d)
    (the square root of :func:`pairwise_sq_distances`, plus a tiny epsilon)."""
    return torch.sqrt(pairwise_sq_distances(a, b) + _EPS)


@_float32
def energy_score(x: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Unbiased energy score of each observation against its own samples.

    ``x``: (n, d) observations; ``samples``: (n, m, d), m >= 1 draws from the
    predicted distribution of each observation. Returns (n,):

        ES_i = 1/m sum_j ||x_i - y_ij|| - 1/(2 m (m-1)) sum_{j != k} ||y_ij - y_ik||

    (the second term is dropped when m = 1). Lower is better; its expectation is
    minimised when the samples come from the distribution of ``x``.
    """
    if samples.dim() != 3 or samples.shape[0] != x.shape[0] or samples.shape[2] != x.shape[1]:
        raise ValueError(f"samples must be (n, m, d) matching x (n, d); got {tuple(samples.shape)} and {tuple(x.shape)}")
    m = samples.shape[1]
    term1 = _norm(samples - x.unsqueeze(1)).mean(1)
    if m < 2:
        return term1
    d = pairwise_distances(samples, samples)  # (n, m, m); diagonal ~ sqrt(eps)
    off = d.sum((1, 2)) - d.diagonal(dim1=1, dim2=2).sum(1)
    return term1 - off / (2.0 * m * (m - 1))


@_float32
def energy_distance(x: torch.Tensor, y: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Energy distance 2 E||X-Y|| - E||X-X'|| - E||Y-Y'|| between two samples.

    ``unbiased=True`` (U-statistic) drops the i = j pairs in the within-sample terms,
    so its expectation is exactly the population energy distance (it can be
    slightly negative when the two samples come from one distribution). With
    ``unbiased=False`` it is the V-statistic (``dcor.energy_distance``'s default).
    A sample of one point has no within-sample pairs: its term is taken as 0.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n, d) and (m, d); got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    if n == 0 or m == 0:
        raise ValueError("energy distance needs at least one point in each sample")
    xy = pairwise_distances(x, y).mean()

    def within(a: torch.Tensor) -> torch.Tensor:
        k = a.shape[0]
        d = pairwise_distances(a, a)
        off = d.sum() - d.diagonal().sum()
        if unbiased:
            return off / (k * (k - 1)) if k > 1 else off * 0.0
        return off / (k * k)

    return 2.0 * xy - within(x) - within(y)


@_float32
def l21_norm(W: torch.Tensor) -> torch.Tensor:
    """L2,1 norm of the perturbation matrix ``W`` (latent_dim x n_perturbations):
    the sum over perturbations (columns) of each column's Euclidean norm. It is a
    group lasso that pulls the shifts of perturbations without an effect to zero."""
    return torch.sqrt((W * W).sum(0) + _EPS).sum()


def median_bandwidth(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Median heuristic: the median squared distance over distinct pairs of the pooled sample (detached)."""
    p = torch.cat([a, b]).detach()
    d = pairwise_sq_distances(p, p)
    off = d[~torch.eye(len(p), dtype=torch.bool, device=p.device)]
    return off.median().clamp_min(1e-8)


def mmd_rbf(
    a: torch.Tensor,
    b: torch.Tensor,
    scales: tuple[float, ...] = (1.0,),
    bandwidth: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Unbiased squared MMD between samples ``a`` (n, d) and ``b`` (m, d), n, m >= 2, with the
    kernel ``k(x, y) = mean_s exp(-||x - y||^2 / (s * h))``; ``h`` is ``bandwidth`` or, when
    None, the median heuristic on the pooled sample."""
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError("the unbiased MMD needs at least 2 points in each sample")
    h = median_bandwidth(a, b) if bandwidth is None else torch.as_tensor(bandwidth, dtype=a.dtype, device=a.device)

    def k(d: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.exp(-d / (s * h)) for s in scales]).mean(0)

    kaa, kbb, kab = k(pairwise_sq_distances(a, a)), k(pairwise_sq_distances(b, b)), k(pairwise_sq_distances(a, b))
    within_a = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    within_b = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return within_a + within_b - 2.0 * kab.mean()
