"""pdae_core.models.losses against direct double-loop formulas and dcor; the PDAE loss terms."""

from __future__ import annotations

import itertools
import math

import dcor
import numpy as np
import pytest
import torch

from pdae_core.models.losses import (
    energy_distance,
    energy_score,
    l21_norm,
    pairwise_distances,
    pairwise_sq_distances,
)
from pdae_core.models.pdae import PDAEConfig, PDAEModule, one_condition_sources

# ---------------------------------------------------------------------------------
# reference implementations: plain loops, no vectorisation


def ref_dist(a: np.ndarray, b: np.ndarray) -> float:
    return math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(a, b)))


def ref_energy_score(x: np.ndarray, samples: np.ndarray) -> np.ndarray:
    n, m, _ = samples.shape
    out = np.zeros(n)
    for i in range(n):
        t1 = sum(ref_dist(x[i], samples[i, j]) for j in range(m)) / m
        t2 = 0.0
        if m > 1:
            t2 = sum(ref_dist(samples[i, j], samples[i, k]) for j in range(m) for k in range(m) if j != k)
            t2 /= 2 * m * (m - 1)
        out[i] = t1 - t2
    return out


def ref_energy_distance(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    n, m = len(x), len(y)
    xy = sum(ref_dist(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)

    def within(a: np.ndarray) -> float:
        k = len(a)
        s = sum(ref_dist(a[i], a[j]) for i in range(k) for j in range(k) if i != j)
        if unbiased:
            return s / (k * (k - 1)) if k > 1 else 0.0
        return s / (k * k)

    return 2 * xy - within(x) - within(y)


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


# ---------------------------------------------------------------------------------
# pairwise distances


def test_pairwise_distances_match_loops(rng):
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    d = pairwise_distances(t64(a), t64(b)).numpy()
    ref = np.array([[ref_dist(u, v) for v in b] for u in a])
    np.testing.assert_allclose(d, ref, rtol=1e-9, atol=1e-8)


def test_pairwise_sq_distances_match_loops_and_cdist(rng):
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 2.0
    d2 = pairwise_sq_distances(t64(a), t64(b))
    ref = np.array([[ref_dist(u, v) ** 2 for v in b] for u in a])
    np.testing.assert_allclose(d2.numpy(), ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(d2, torch.cdist(t64(a), t64(b)) ** 2)
    assert float(pairwise_sq_distances(t64(a), t64(a)).diagonal().abs().max()) < 1e-12  # clamped, never negative
    assert bool((pairwise_sq_distances(t64(a), t64(a)) >= 0).all())
    # the distances are its square root (plus the tiny epsilon), also batched
    torch.testing.assert_close(pairwise_distances(t64(a), t64(b)), torch.sqrt(d2 + 1e-10))
    batched = pairwise_sq_distances(t64(np.stack([a, a + 1])), t64(np.stack([a[:2], a[:2]])))
    torch.testing.assert_close(batched[0], pairwise_sq_distances(t64(a), t64(a[:2])))
    # float32 far from the origin stays accurate (the shared centre)
    far = torch.as_tensor(a + 1e4, dtype=torch.float32)
    exact = torch.cdist(far.double(), far[:2].double()) ** 2
    torch.testing.assert_close(pairwise_sq_distances(far, far[:2]).double(), exact, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------
# energy score


@pytest.mark.parametrize("m", [1, 2, 5])
def test_energy_score_matches_double_loop(rng, m):
    x = rng.normal(size=(6, 4))
    samples = rng.normal(size=(6, m, 4)) + 0.3
    es = energy_score(t64(x), t64(samples)).numpy()
    assert es.shape == (6,)
    np.testing.assert_allclose(es, ref_energy_score(x, samples), rtol=1e-9, atol=1e-8)


def test_energy_score_hand_values():
    # m = 1: just the distance to the single sample
    x = t64([[0.0, 0.0]])
    es1 = energy_score(x, t64([[[3.0, 4.0]]]))
    assert es1.item() == pytest.approx(5.0, abs=1e-8)
    # m = 2, 1-D: x = 0, samples {1, 3}: (1 + 3) / 2 - (2 + 2) / (2 * 2 * 1) = 1
    es2 = energy_score(t64([[0.0]]), t64([[[1.0], [3.0]]]))
    assert es2.item() == pytest.approx(1.0, abs=1e-8)
    # m = 2 with both samples at x: ~0 (only the sqrt epsilon remains)
    es0 = energy_score(t64([[1.0, 2.0]]), t64([[[1.0, 2.0], [1.0, 2.0]]]))
    assert abs(es0.item()) < 2e-5


def test_energy_score_is_proper_on_gaussians():
    g = torch.Generator().manual_seed(0)
    n, m = 20000, 2
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    right = torch.randn(n, m, 1, generator=g, dtype=torch.float64)
    shifted = right + 0.5
    wide = right * 2.0
    es_right = energy_score(x, right).mean().item()
    # E|X-Y| - E|Y-Y'|/2 = 2/sqrt(pi) - 1/sqrt(pi) for two independent N(0, 1)
    assert es_right == pytest.approx(1 / math.sqrt(math.pi), abs=0.02)
    assert es_right < energy_score(x, shifted).mean().item() - 0.03
    assert es_right < energy_score(x, wide).mean().item() - 0.03


def test_energy_score_rejects_bad_shapes():
    with pytest.raises(ValueError):
        energy_score(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError):
        energy_score(torch.zeros(3, 2), torch.zeros(4, 2, 2))
    with pytest.raises(ValueError):
        energy_score(torch.zeros(3, 2), torch.zeros(3, 2, 5))


# ---------------------------------------------------------------------------------
# energy distance


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("n,m", [(7, 4), (5, 5), (2, 9)])
def test_energy_distance_matches_double_loop(rng, unbiased, n, m):
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(m, 3)) + 0.7
    ed = energy_distance(t64(x), t64(y), unbiased=unbiased).item()
    assert ed == pytest.approx(ref_energy_distance(x, y, unbiased), rel=1e-9, abs=1e-8)


@pytest.mark.parametrize("n,m", [(12, 8), (3, 30), (2, 2)])
def test_energy_distance_matches_dcor(rng, n, m):
    x, y = rng.normal(size=(n, 5)), rng.normal(size=(m, 5)) * 1.5
    v = energy_distance(t64(x), t64(y), unbiased=False).item()
    u = energy_distance(t64(x), t64(y), unbiased=True).item()
    # dcor's default is the V-statistic; "U" leaves out the i = j pairs, like ours
    assert v == pytest.approx(dcor.energy_distance(x, y), rel=1e-8, abs=1e-8)
    assert v == pytest.approx(dcor.energy_distance(x, y, estimation_stat="V"), rel=1e-8, abs=1e-8)
    assert u == pytest.approx(dcor.energy_distance(x, y, estimation_stat="U"), rel=1e-8, abs=1e-8)
    assert u != pytest.approx(v, rel=1e-3)  # the two estimators really differ


def test_energy_distance_one_point_per_sample():
    x, y = t64([[0.0, 0.0]]), t64([[3.0, 4.0]])
    # no within-set pairs: both estimators are 2 ||x - y||
    for unbiased in (True, False):
        assert energy_distance(x, y, unbiased=unbiased).item() == pytest.approx(10.0, abs=1e-8)
    assert dcor.energy_distance(x.numpy(), y.numpy()) == pytest.approx(10.0)


def test_energy_distance_one_point_against_many(rng):
    x, y = rng.normal(size=(1, 3)), rng.normal(size=(6, 3))
    for unbiased in (True, False):
        got = energy_distance(t64(x), t64(y), unbiased=unbiased).item()
        assert got == pytest.approx(ref_energy_distance(x, y, unbiased), rel=1e-9)
    assert energy_distance(t64(x), t64(y), unbiased=False).item() == pytest.approx(
        dcor.energy_distance(x, y), rel=1e-8
    )


def test_energy_distance_identical_sets(rng):
    x = rng.normal(size=(10, 4))
    v = energy_distance(t64(x), t64(x), unbiased=False).item()
    assert abs(v) < 1e-5  # V-statistic: exactly 0 up to the sqrt epsilon
    # U-statistic: 2 S/n^2 - 2 S/(n(n-1)) = -2 S / (n^2 (n-1)) < 0, S = sum of off-diagonal distances
    s = sum(ref_dist(x[i], x[j]) for i in range(10) for j in range(10) if i != j)
    u = energy_distance(t64(x), t64(x), unbiased=True).item()
    assert u == pytest.approx(-2 * s / (100 * 9), abs=1e-5)  # + sqrt eps on the x_i = y_i pairs
    assert u < 0


def test_energy_distance_symmetric_translation_invariant_nonnegative(rng):
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(11, 3)) + 1.0
    tx, ty = t64(x), t64(y)
    for unbiased in (True, False):
        a = energy_distance(tx, ty, unbiased).item()
        assert a == pytest.approx(energy_distance(ty, tx, unbiased).item(), rel=1e-12)
        assert a == pytest.approx(energy_distance(tx + 5.0, ty + 5.0, unbiased).item(), rel=1e-9)
    for _ in range(20):  # the V-statistic of a conditionally negative definite kernel is >= 0
        a, b = rng.normal(size=(4, 2)), rng.normal(size=(3, 2))
        assert energy_distance(t64(a), t64(b), unbiased=False).item() >= -1e-9


def test_energy_distance_rejects_bad_input():
    with pytest.raises(ValueError):
        energy_distance(torch.zeros(0, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        energy_distance(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        energy_distance(torch.zeros(3), torch.zeros(3))


def test_float32_close_to_float64_at_log_expression_scale(rng):
    # log-normalised expression: values in [0, ~5], a few dozen genes
    x = np.log1p(rng.poisson(3.0, size=(60, 40))).astype(np.float32)
    y = np.log1p(rng.poisson(3.5, size=(50, 40))).astype(np.float32)
    for unbiased in (True, False):
        e32 = energy_distance(torch.from_numpy(x), torch.from_numpy(y), unbiased).item()
        e64 = energy_distance(t64(x), t64(y), unbiased).item()
        assert e32 == pytest.approx(e64, rel=1e-3, abs=1e-4)


# ---------------------------------------------------------------------------------
# gradients where points coincide


def test_gradients_finite_when_points_coincide():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1.0, 2.0], [3.0, 1.0]], dtype=torch.float64, requires_grad=True)
    for unbiased in (True, False):
        x.grad = y.grad = None
        energy_distance(x, y, unbiased).backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    # energy score with every sample on the observation and on each other
    obs = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    s = obs.detach().clone().unsqueeze(1).repeat(1, 3, 1).requires_grad_(True)
    energy_score(obs, s).sum().backward()
    assert torch.isfinite(s.grad).all()
    # a zero column of W
    W = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    l21_norm(W).backward()
    assert torch.isfinite(W.grad).all() and torch.count_nonzero(W.grad) == 0


# ---------------------------------------------------------------------------------
# L2,1 norm


def test_l21_norm_is_sum_of_column_norms(rng):
    W = rng.normal(size=(3, 5))  # latent_dim x n_perturbations
    ref = sum(math.sqrt(sum(W[r, c] ** 2 for r in range(3))) for c in range(5))
    assert l21_norm(t64(W)).item() == pytest.approx(ref, rel=1e-9)
    rows = sum(math.sqrt(sum(W[r, c] ** 2 for c in range(5))) for r in range(3))
    assert abs(ref - rows) > 1e-3  # groups are the columns (perturbations), not the rows
    assert l21_norm(torch.zeros(3, 5, dtype=torch.float64)).item() < 1e-4


# ---------------------------------------------------------------------------------
# the PDAE objective


def _module(grid: str, n_sources: int = 16, rec_samples: int = 2, source_sampling: str = "batch") -> PDAEModule:
    cfg = PDAEConfig(
        n_genes=4, n_perturbations=3, latent_dim=2, hidden_dims=(6,), noise_dim=0, grid=grid,
        n_sources=n_sources, rec_samples=rec_samples, w_pert=2.0, w_rec=0.5, w_prior=0.25, w_l21=0.125,
        source_sampling=source_sampling,
    )
    torch.manual_seed(3)
    return PDAEModule(cfg).double()


def _batch(B: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    x = torch.rand(B, 4, generator=g, dtype=torch.float64) * 3
    labels = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=torch.float64)
    return x, labels[:B]


def _direct_terms(mod: PDAEModule, x: torch.Tensor, L: torch.Tensor, prior_noise: torch.Tensor) -> dict[str, float]:
    """Every loss term from the module's parts, with loops and numpy references."""
    B = x.shape[0]
    with torch.no_grad():
        z = mod.encoder(x)
        s = L @ mod.W.weight.T
        zb = z - s
        xn = x.numpy()
        pert = []
        for i in range(B):
            samples = np.stack([mod.decoder(zb[j] + s[i]).numpy() for j in range(B) if j != i])
            pert.append(ref_energy_score(xn[i : i + 1], samples[None])[0])
        rec = []
        for i in range(B):
            samples = np.stack([mod.decoder(z[i]).numpy()] * mod.config.rec_samples)
            rec.append(ref_energy_score(xn[i : i + 1], samples[None])[0])
        prior = ref_energy_distance(zb.numpy(), prior_noise.numpy(), unbiased=True)
        Wn = mod.W.weight.numpy()
        l21 = sum(np.linalg.norm(Wn[:, k]) for k in range(Wn.shape[1]))
    c = mod.config
    out = {"pert": float(np.mean(pert)), "rec": float(np.mean(rec)), "prior": prior, "l21": float(l21)}
    out["loss"] = c.w_pert * out["pert"] + c.w_rec * out["rec"] + c.w_prior * out["prior"] + c.w_l21 * out["l21"]
    return out


def test_full_grid_loss_terms_match_direct_computation():
    mod = _module("full")
    x, L = _batch(5)
    torch.manual_seed(7)
    out = mod.loss(x, L)
    torch.manual_seed(7)  # noise_dim = 0: the prior's N(0, I) draw is the only random number
    noise = torch.randn(5, 2, dtype=torch.float64)
    ref = _direct_terms(mod, x, L, noise)
    for k in ("pert", "prior", "l21", "loss"):
        assert out[k].item() == pytest.approx(ref[k], rel=1e-7, abs=1e-5), k
    # identical reconstruction samples: the sqrt epsilon (1e-5 per distance) is all that differs
    assert out["rec"].item() == pytest.approx(ref["rec"], abs=1e-5)


def test_sampled_grid_terms_match_direct_computation():
    mod = _module("sampled", n_sources=4)  # n_sources = B - 1: every other cell is a source
    x, L = _batch(5)
    torch.manual_seed(7)
    out = mod.loss(x, L)
    torch.manual_seed(7)
    torch.rand(5, 5)  # the source scores
    noise = torch.randn(5, 2, dtype=torch.float64)
    ref = _direct_terms(mod, x, L, noise)
    for k in ("pert", "prior", "l21"):
        assert out[k].item() == pytest.approx(ref[k], rel=1e-7, abs=1e-5), k


def test_sampled_grid_with_all_sources_equals_full_grid():
    full, sampled = _module("full"), _module("sampled", n_sources=4)
    sampled.load_state_dict(full.state_dict())
    x, L = _batch(5)
    with torch.no_grad():
        target = full.loss(x, L)["pert"].item()
        values = [sampled.loss(x, L)["pert"].item() for _ in range(50)]
    # every draw uses all B - 1 sources, so each one (not just the mean) equals the full grid
    np.testing.assert_allclose(values, target, rtol=1e-12, atol=1e-12)


def test_sampled_grid_is_unbiased_for_the_full_grid():
    B, m = 6, 2
    full, sampled = _module("full"), _module("sampled", n_sources=m)
    sampled.load_state_dict(full.state_dict())
    x, L = _batch(B)
    with torch.no_grad():
        target = full.loss(x, L)["pert"].item()
        # exact expectation: average over every m-subset of the other cells, per target
        z = full.encoder(x)
        s = L @ full.W.weight.T
        zb = z - s
        exact = []
        for i in range(B):
            others = [j for j in range(B) if j != i]
            vals = []
            for sub in itertools.combinations(others, m):
                smp = torch.stack([full.decoder(zb[j] + s[i]) for j in sub])[None]
                vals.append(energy_score(x[i : i + 1], smp).item())
            exact.append(np.mean(vals))
        assert float(np.mean(exact)) == pytest.approx(target, rel=1e-9)
        # Monte Carlo: the sampled loss averages to the full-grid value
        torch.manual_seed(0)
        draws = np.array([sampled.loss(x, L)["pert"].item() for _ in range(1500)])
    se = draws.std(ddof=1) / math.sqrt(len(draws))
    assert draws.std() > 1e-4  # the subsets really vary
    assert abs(draws.mean() - target) < 4 * se


def test_sampled_grid_draws_distinct_sources_uniformly():
    B, m = 5, 2
    mod = _module("sampled", n_sources=m)
    x, L = _batch(B)
    with torch.no_grad():
        zb = mod.encoder(x) - L @ mod.W.weight.T
        s = L @ mod.W.weight.T
    calls: list[torch.Tensor] = []
    original = mod.decode

    def recording(z: torch.Tensor, generator: torch.Generator | None = None, eps=None, labels=None,
                  genes=None) -> torch.Tensor:
        calls.append(z.detach().clone())
        return original(z, generator, eps=eps, labels=labels, genes=genes)

    mod.decode = recording
    n_calls = 300
    seen = []
    torch.manual_seed(1)
    with torch.no_grad():
        for _ in range(n_calls):
            calls.clear()
            mod.loss(x, L)
            seen.append(calls[0])  # the first decoder call moves the sources to each target
    moved = torch.stack(seen)  # (n_calls, B, m, latent)
    assert moved.shape == (n_calls, B, m, 2)
    base = moved - s[None, :, None, :]  # = zb[j] for the chosen sources j
    src = torch.cdist(base.reshape(-1, 2), zb).argmin(1)
    assert torch.allclose(base.reshape(-1, 2), zb[src], atol=1e-10)
    src = src.reshape(n_calls, B, m).numpy()
    targets = np.arange(B)[None, :, None]
    assert not np.any(src == targets)  # never the target cell itself
    srt = np.sort(src, axis=2)
    assert np.all(np.diff(srt, axis=2) > 0)  # m distinct sources
    counts = np.zeros((B, B))
    np.add.at(counts, (np.broadcast_to(targets, src.shape), src), 1)
    off = ~np.eye(B, dtype=bool)
    expected = n_calls * m / (B - 1)
    assert np.all(np.abs(counts[off] - expected) < 5 * math.sqrt(expected))


def test_pdae_loss_gradients_finite_with_coincident_samples():
    mod = _module("full", rec_samples=3)  # deterministic decoder: reconstruction samples coincide
    mod.train()
    x, L = _batch(5)
    out = mod.loss(x, L)
    out["loss"].backward()
    for name, p in mod.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def _grouped_batch(sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Cells of len(sizes) conditions (control, then singles), ``sizes[k]`` cells each."""
    conds = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.float64)
    grp = np.repeat(np.arange(len(sizes)), sizes)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(len(grp), 4, generator=g, dtype=torch.float64) * 3
    return x, conds[torch.as_tensor(grp)], grp


def test_one_condition_sources_mask():
    _, L, grp = _grouped_batch((4, 4, 3, 2))
    torch.manual_seed(0)
    for _ in range(200):
        allowed, m = one_condition_sources(L, 16)
        a = allowed.numpy()
        # every target's sources all come from one other condition with at least m cells
        assert m == 4  # every target finds a 4-cell condition elsewhere; the 3- and 2-cell ones are never drawn
        for i in range(len(grp)):
            src_groups = set(grp[a[i]])
            assert len(src_groups) == 1 and grp[i] not in src_groups
            (c,) = src_groups
            assert a[i].sum() == (grp == c).sum() >= m
    # a cell whose only other condition has one cell: fall back to the whole batch
    _, L1, _ = _grouped_batch((3, 1))
    assert one_condition_sources(L1, 16)[0] is None
    assert one_condition_sources(L1[:3], 16)[0] is None  # a single condition


def test_condition_sampling_draws_other_conditions_uniformly():
    _, L, grp = _grouped_batch((3, 3, 3, 3))
    torch.manual_seed(1)
    counts = np.zeros((len(grp), 4))
    n = 600
    for _ in range(n):
        allowed, m = one_condition_sources(L, 16)
        assert m == 3
        chosen = np.array([grp[row][0] for row in allowed.numpy()])
        counts[np.arange(len(grp)), chosen] += 1
    own = counts[np.arange(len(grp)), grp]
    assert np.all(own == 0)
    expected = n / 3
    for i in range(len(grp)):
        for c in range(4):
            if c != grp[i]:
                assert abs(counts[i, c] - expected) < 5 * math.sqrt(expected * 2 / 3)


def test_condition_sampling_loss_is_the_mean_over_other_conditions():
    """With as many sources as a condition has cells, the condition-sampled perturbation
    term is the mean over targets of ES(x_i; all cells of a random other condition moved to l_i);
    its expectation is the average over the other conditions, computed here exactly."""
    sizes = (3, 3, 3)
    mod = _module("sampled", n_sources=3, source_sampling="condition")
    x, L, grp = _grouped_batch(sizes)
    with torch.no_grad():
        z = mod.encoder(x)
        s = L @ mod.W.weight.T
        zb = z - s
        exact = []
        for i in range(len(grp)):
            per_c = []
            for c in set(grp.tolist()) - {grp[i]}:
                smp = torch.stack([mod.decoder(zb[j] + s[i]) for j in np.flatnonzero(grp == c)])[None]
                per_c.append(energy_score(x[i : i + 1], smp).item())
            exact.append(np.mean(per_c))
        target = float(np.mean(exact))
        torch.manual_seed(0)
        draws = np.array([mod.loss(x, L)["pert"].item() for _ in range(800)])
        batch_mod = _module("sampled", n_sources=3, source_sampling="batch")
        batch_mod.load_state_dict(mod.state_dict())
        batch_draws = np.array([batch_mod.loss(x, L)["pert"].item() for _ in range(800)])
    se = draws.std(ddof=1) / math.sqrt(len(draws))
    assert draws.std() > 1e-4
    assert abs(draws.mean() - target) < 4 * se
    # and it is a different objective from sampling sources anywhere in the batch
    se_b = batch_draws.std(ddof=1) / math.sqrt(len(batch_draws))
    assert abs(batch_draws.mean() - target) > 4 * max(se, se_b)
