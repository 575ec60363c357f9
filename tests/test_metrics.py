"""pdae_core.eval.metrics (and .bootstrap, .matrices) against direct formulas, scipy and dcor."""

from __future__ import annotations

import math

import anndata as ad
import dcor
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import cdist, pdist
from scipy.stats import norm, pearsonr

from pdae_core.errors import DataError
from pdae_core.eval import bootstrap as B
from pdae_core.eval import matrices as MX
from pdae_core.eval import metrics as M


def gaussians(rng: np.random.Generator, n: int, m: int, d: int = 5, shift: float = 0.0):
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d))
    y[:, 0] += shift
    return x, y


def ed_1d_gaussians(mu: float) -> float:
    """Population energy distance between N(0, 1) and N(mu, 1)."""
    s = math.sqrt(2.0)  # X - Y ~ N(-mu, 2), X - X' ~ N(0, 2)
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s * s)) + mu * (1 - 2 * norm.cdf(-mu / s))
    return 2 * e_xy - 2 * (2 / math.sqrt(math.pi))


def ref_ed(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    dxy, dxx, dyy = cdist(x, y), cdist(x, x), cdist(y, y)
    n, m = len(x), len(y)
    if unbiased:
        wx = dxx.sum() / (n * (n - 1)) if n > 1 else 0.0
        wy = dyy.sum() / (m * (m - 1)) if m > 1 else 0.0
    else:
        wx, wy = dxx.sum() / n**2, dyy.sum() / m**2
    return 2 * dxy.mean() - wx - wy


# ---------------------------------------------------------------------------------
# energy distance


@pytest.mark.parametrize("n,m", [(30, 20), (2, 2), (5, 40)])
def test_energy_distance_matches_dcor(rng, n, m):
    x, y = gaussians(rng, n, m, shift=0.8)
    u, v = M.energy_distance(x, y), M.energy_distance(x, y, unbiased=False)
    assert isinstance(u, float) and isinstance(v, float)
    assert v == pytest.approx(dcor.energy_distance(x, y), rel=1e-8)
    assert u == pytest.approx(dcor.energy_distance(x, y, estimation_stat="U"), rel=1e-8)


def test_energy_distance_blocked_equals_direct(rng):
    x, y = gaussians(rng, 23, 17, shift=0.5)
    for unbiased in (True, False):
        direct = M.energy_distance(x, y, unbiased)
        assert M.energy_distance(x, y, unbiased, block_size=4) == pytest.approx(direct, rel=1e-10)
        assert M.energy_distance(x, y, unbiased, block_size=17) == pytest.approx(direct, rel=1e-10)


def test_energy_distance_one_cell_and_identical_sets(rng):
    a, b = np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])
    assert M.energy_distance(a, b) == pytest.approx(10.0, abs=1e-8)
    assert M.energy_distance(a, b, unbiased=False) == pytest.approx(10.0, abs=1e-8)
    x = rng.normal(size=(12, 3))
    assert abs(M.energy_distance(x, x, unbiased=False)) < 1e-5
    assert M.energy_distance(x, x) == pytest.approx(ref_ed(x, x, True), abs=1e-5)
    assert M.energy_distance(x, x) < 0
    one = x[:1]
    # the single cell is also in x: that pair's distance carries the loss's sqrt epsilon (1e-5)
    assert M.energy_distance(one, x) == pytest.approx(ref_ed(one, x, True), abs=1e-5)
    assert M.energy_distance(one, x, unbiased=False) == pytest.approx(dcor.energy_distance(one, x), abs=1e-5)


def test_energy_distance_precise_far_from_origin(rng):
    x, y = gaussians(rng, 40, 30, shift=0.3)
    ref = dcor.energy_distance(x, y)
    # a large common offset (and float32 input) must not cost precision: data are centred in float64
    assert M.energy_distance(x + 1e4, y + 1e4, unbiased=False) == pytest.approx(ref, rel=1e-6)
    assert M.energy_distance(x.astype(np.float32), y.astype(np.float32), unbiased=False) == pytest.approx(ref, rel=1e-5)


def test_energy_distance_inputs(rng):
    x, y = gaussians(rng, 10, 8)
    ref = M.energy_distance(x, y)
    genes = pd.DataFrame(index=[f"g{i}" for i in range(5)])
    adx, ady = ad.AnnData(x.astype(np.float32), var=genes), ad.AnnData(sp.csr_matrix(y.astype(np.float32)), var=genes)
    assert M.energy_distance(adx, ady) == pytest.approx(ref, rel=1e-5)
    assert M.energy_distance(sp.csr_matrix(x), y) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(DataError):
        M.energy_distance(x, y[:, :3])
    with pytest.raises(DataError):
        M.energy_distance(x[0], y[0])  # 1-D is ambiguous
    with pytest.raises(DataError):
        M.energy_distance(np.full((2, 5), np.nan), y)
    with pytest.raises(DataError):
        M.energy_distance(np.zeros((0, 5)), y)
    other = ad.AnnData(y.astype(np.float32), var=pd.DataFrame(index=[f"h{i}" for i in range(5)]))
    with pytest.raises(DataError):
        M.energy_distance(adx, other)


# ---------------------------------------------------------------------------------
# bootstrap


def test_bootstrap_replicate_is_the_tie_free_statistic_of_a_resample(rng):
    # one replicate by hand: the counts-based computation equals the explicit resample
    x, y = gaussians(rng, 9, 7, shift=1.0)
    r = np.random.default_rng(5)
    ix, iy = r.integers(0, 9, 9), r.integers(0, 7, 7)
    cx = np.bincount(ix, minlength=9)[None].astype(float)
    cy = np.bincount(iy, minlength=7)[None].astype(float)
    a, b = MX.centred(x, y)
    got = B._energy_terms(a, b, np.vstack([np.ones((1, 9)), cx]), np.vstack([np.ones((1, 7)), cy]), True, 4)
    xs, ys = x[ix], y[iy]

    def tie_free(z: np.ndarray, idx: np.ndarray) -> float:
        d = cdist(z, z)
        distinct = idx[:, None] != idx[None, :]
        return d[distinct].mean()

    expected = 2 * cdist(xs, ys).mean() - tie_free(xs, ix) - tie_free(ys, iy)
    assert got[0] == pytest.approx(ref_ed(x, y, True), rel=1e-9)
    assert got[1] == pytest.approx(expected, rel=1e-9)


def test_bootstrap_replicates_centre_on_the_estimate(rng):
    x, y = gaussians(rng, 15, 12, d=20, shift=1.0)
    a, b = MX.centred(x, y)
    r = np.random.default_rng(0)
    ca, cb = B._boot_counts(r, 15, 4000), B._boot_counts(r, 12, 4000)
    for unbiased in (True, False):
        stat = B._energy_terms(a, b, ca, cb, unbiased, 64)
        assert stat[0] == pytest.approx(M.energy_distance(x, y, unbiased), rel=1e-9)
        se = stat[1:].std() / math.sqrt(4000)
        assert abs(stat[1:].mean() - stat[0]) < 4 * se
    # counting the copies as pairs at distance 0 would centre the replicates far above the U-statistic
    within_with_copies = MX.pair_sums(a, a, ca, ca, same=True, block=64)[1:] / (15 * 14)
    within_tie_free = B._tie_free_within(MX.pair_sums(a, a, ca, ca, same=True, block=64), ca)[1:]
    assert np.mean(within_tie_free - within_with_copies) > 0.05 * np.mean(within_tie_free)


def test_bootstrap_interval_contains_estimate_and_narrows(rng):
    small_x, small_y = gaussians(rng, 40, 40, shift=1.0)
    big_x, big_y = gaussians(rng, 400, 400, shift=1.0)
    est_s, lo_s, hi_s = M.bootstrap_energy_distance(small_x, small_y, n_boot=200, seed=1)
    est_b, lo_b, hi_b = M.bootstrap_energy_distance(big_x, big_y, n_boot=200, seed=1)
    assert est_s == pytest.approx(M.energy_distance(small_x, small_y), rel=1e-9)
    assert est_b == pytest.approx(M.energy_distance(big_x, big_y), rel=1e-9)
    assert lo_s < est_s < hi_s and lo_b < est_b < hi_b
    assert (hi_b - lo_b) < 0.5 * (hi_s - lo_s)  # ~ 1/sqrt(10) as wide
    # a wider level gives a wider interval; the same seed gives the same interval
    e9, lo9, hi9 = M.bootstrap_energy_distance(small_x, small_y, n_boot=200, seed=1, ci=0.9)
    assert lo_s <= lo9 and hi9 <= hi_s
    assert M.bootstrap_energy_distance(small_x, small_y, n_boot=200, seed=1) == (est_s, lo_s, hi_s)
    assert M.bootstrap_energy_distance(small_x, small_y, n_boot=200, seed=2) != (est_s, lo_s, hi_s)


def test_bootstrap_interval_covers_the_population_value():
    mu, n, hits = 1.0, 30, 0
    truth = ed_1d_gaussians(mu)
    for r in range(60):
        rng = np.random.default_rng(100 + r)
        x, y = rng.normal(size=(n, 1)), rng.normal(mu, 1.0, size=(n, 1))
        _, lo, hi = M.bootstrap_energy_distance(x, y, n_boot=200, seed=r)
        hits += lo <= truth <= hi
    assert hits >= 0.8 * 60  # nominal 0.95; the simulation in the docstring gives ~0.92 here


def test_bootstrap_blocked_equals_unblocked(rng):
    x, y = gaussians(rng, 21, 13, shift=0.5)
    assert M.bootstrap_energy_distance(x, y, n_boot=50, block_size=5) == pytest.approx(
        M.bootstrap_energy_distance(x, y, n_boot=50, block_size=1024), rel=1e-10
    )


def test_bootstrap_rejects_bad_arguments(rng):
    x, y = gaussians(rng, 5, 5)
    with pytest.raises(ValueError):
        M.bootstrap_energy_distance(x, y, n_boot=0)
    with pytest.raises(ValueError):
        M.bootstrap_energy_distance(x, y, ci=1.0)


def test_paired_difference(rng):
    obs = rng.normal(size=(80, 4))
    good = rng.normal(size=(80, 4))
    bad = rng.normal(size=(80, 4)) + np.array([1.5, 0, 0, 0])
    diff, lo, hi = M.paired_bootstrap_difference(bad, good, obs, n_boot=200, seed=0)
    assert diff == pytest.approx(M.energy_distance(bad, obs) - M.energy_distance(good, obs), rel=1e-9)
    assert lo <= diff <= hi
    assert lo > 0  # the shifted prediction is significantly worse
    d2, lo2, hi2 = M.paired_bootstrap_difference(good, bad, obs, n_boot=200, seed=0)
    assert d2 == pytest.approx(-diff, rel=1e-9) and hi2 < 0
    # the same prediction twice, resampled together: exactly no difference
    assert M.paired_bootstrap_difference(good, good.copy(), obs, paired_predictions=True) == (0.0, 0.0, 0.0)
    # resampled independently, two samples of one distribution are not significantly different
    other = rng.normal(size=(80, 4))
    _, lo3, hi3 = M.paired_bootstrap_difference(good, other, obs, n_boot=200, seed=0)
    assert lo3 < 0 < hi3
    with pytest.raises(DataError):
        M.paired_bootstrap_difference(good, good[:10], obs, paired_predictions=True)


def test_paired_difference_narrower_than_separate_intervals(rng):
    obs = rng.normal(size=(60, 4))
    a = rng.normal(size=(60, 4)) + np.array([0.6, 0, 0, 0])
    _, lo, hi = M.paired_bootstrap_difference(a, a + 0.02, obs, n_boot=200, seed=0, paired_predictions=True)
    _, lo_a, hi_a = M.bootstrap_energy_distance(a, obs, n_boot=200, seed=0)
    # sharing the resampled cells cancels the noise common to both
    assert hi - lo < 0.25 * (hi_a - lo_a)


# ---------------------------------------------------------------------------------
# noise floor


def test_noise_floor_same_distribution_vs_shift(rng):
    obs = rng.normal(size=(200, 5))
    nf = M.noise_floor(obs, n_splits=20, seed=0)
    shifted = rng.normal(size=(200, 5)) + np.array([2.0, 0, 0, 0, 0])
    ed = M.energy_distance(shifted, obs)
    assert abs(nf) < 0.02
    assert ed > 0.5 and ed > 20 * abs(nf)
    assert M.noise_floor(obs, n_splits=20, seed=0) == nf
    assert M.noise_floor(obs, n_splits=20, seed=1) != nf


def test_noise_floor_matches_explicit_splits(rng):
    obs = rng.normal(size=(21, 3))
    r = np.random.default_rng(4)
    expected = []
    for _ in range(5):
        p = r.permutation(21)
        expected.append(ref_ed(obs[p[:10]], obs[p[10:]], True))
    assert M.noise_floor(obs, n_splits=5, seed=4, block_size=4) == pytest.approx(np.mean(expected), rel=1e-9)


def test_noise_floor_expectations(rng):
    obs = rng.normal(size=(20, 3))
    dbar = pdist(obs).mean()
    # averaged over splits: the U-statistic is exactly 0 in expectation, the V-statistic 2 * mean distance / half
    assert abs(M.noise_floor(obs, n_splits=2000, seed=0)) < 0.02 * dbar
    assert M.noise_floor(obs, n_splits=2000, seed=0, unbiased=False) == pytest.approx(2 * dbar / 10, rel=0.05)
    with pytest.raises(DataError):
        M.noise_floor(obs[:1])


# ---------------------------------------------------------------------------------
# MMD and mean distance


def ref_mmd(x: np.ndarray, y: np.ndarray, sigma: float, unbiased: bool) -> float:
    def k(a, b):
        return np.exp(-cdist(a, b, "sqeuclidean") / (2 * sigma**2))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    if unbiased:
        return (kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean()
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def test_mmd_matches_direct_formula(rng):
    x, y = gaussians(rng, 25, 18, shift=1.0)
    for unbiased in (True, False):
        assert M.mmd_rbf(x, y, bandwidth=1.7, unbiased=unbiased) == pytest.approx(
            ref_mmd(x, y, 1.7, unbiased), rel=1e-9, abs=1e-12
        )
        assert M.mmd_rbf(x, y, bandwidth=1.7, unbiased=unbiased, block_size=4) == pytest.approx(
            ref_mmd(x, y, 1.7, unbiased), rel=1e-9, abs=1e-12
        )
    med = np.median(pdist(np.vstack([x, y])))
    assert M.median_heuristic(x, y) == pytest.approx(med, rel=1e-12)
    assert M.mmd_rbf(x, y) == pytest.approx(ref_mmd(x, y, med, True), rel=1e-9)


def test_mmd_identical_shifted_and_small_sets(rng):
    x, y = gaussians(rng, 50, 50)
    assert abs(M.mmd_rbf(x, x, unbiased=False)) < 1e-12
    same = M.mmd_rbf(x, y, bandwidth=2.0)
    far = M.mmd_rbf(x, y + 3.0, bandwidth=2.0)
    assert abs(same) < 0.05 and far > 0.5
    one = np.zeros((1, 5))
    assert M.mmd_rbf(one, y, bandwidth=2.0, unbiased=False) == pytest.approx(ref_mmd(one, y, 2.0, False), rel=1e-9)
    with pytest.raises(DataError):
        M.mmd_rbf(one, y, bandwidth=2.0)
    with pytest.raises(ValueError):
        M.mmd_rbf(x, y, bandwidth=0.0)
    assert M.median_heuristic(np.ones((5, 3))) == 1.0  # all cells coincide


def test_mean_l2(rng):
    x, y = gaussians(rng, 7, 11)
    assert M.mean_l2(x, y) == pytest.approx(np.sqrt(((x.mean(0) - y.mean(0)) ** 2).sum()), rel=1e-12)
    assert M.mean_l2(x, x) == 0.0


# ---------------------------------------------------------------------------------
# mean effects


def test_pearson_delta_against_scipy_and_not_on_raw_means(rng):
    ctrl = rng.uniform(1, 20, size=50)  # baseline expression varies a lot across genes
    delta = rng.normal(size=50)
    obs, pred = ctrl + delta, ctrl + 0.8 * delta + rng.normal(scale=0.3, size=50)
    r = M.pearson_delta(pred, obs, ctrl)
    assert r == pytest.approx(pearsonr(pred - ctrl, obs - ctrl)[0], rel=1e-10)
    genes = np.array([3, 7, 11, 20, 21, 40])
    assert M.pearson_delta(pred, obs, ctrl, genes) == pytest.approx(
        pearsonr((pred - ctrl)[genes], (obs - ctrl)[genes])[0], rel=1e-10
    )
    mask = np.zeros(50, dtype=bool)
    mask[genes] = True
    assert M.pearson_delta(pred, obs, ctrl, mask) == pytest.approx(M.pearson_delta(pred, obs, ctrl, genes))
    # a prediction with the opposite effect: raw means still correlate ~1, deltas at -1
    wrong = ctrl - delta
    assert np.corrcoef(wrong, obs)[0, 1] > 0.8
    assert M.pearson_delta(wrong, obs, ctrl) == pytest.approx(-1.0)
    assert math.isnan(M.pearson_delta(ctrl, obs, ctrl))  # predicting no change: undefined


def test_pearson_delta_on_cell_matrices(rng):
    pred, obs, ctrl = rng.normal(size=(10, 6)), rng.normal(size=(12, 6)) + 1, rng.normal(size=(9, 6))
    assert M.pearson_delta(pred, obs, ctrl) == pytest.approx(
        pearsonr(pred.mean(0) - ctrl.mean(0), obs.mean(0) - ctrl.mean(0))[0], rel=1e-10
    )
    with pytest.raises(DataError):
        M.pearson_delta(pred.mean(0), obs.mean(0)[:5], ctrl.mean(0))
    with pytest.raises(DataError):
        M.pearson_delta(pred.mean(0), obs.mean(0), ctrl.mean(0), genes=[0, 9])


def test_r2_delta(rng):
    ctrl, obs, pred = rng.uniform(1, 5, 30), rng.uniform(1, 5, 30), rng.uniform(1, 5, 30)
    do, dp = obs - ctrl, pred - ctrl
    ref = 1 - ((do - dp) ** 2).sum() / ((do - do.mean()) ** 2).sum()
    assert M.r2_delta(pred, obs, ctrl) == pytest.approx(ref, rel=1e-12)
    assert M.r2_delta(obs, obs, ctrl) == 1.0
    assert M.r2_delta(obs + 10, obs, ctrl) < 0  # worse than a constant
    g = [0, 5, 6]
    assert M.r2_delta(pred, obs, ctrl, g) == pytest.approx(
        1 - ((do[g] - dp[g]) ** 2).sum() / ((do[g] - do[g].mean()) ** 2).sum(), rel=1e-12
    )


def test_top_de_genes_and_direction_accuracy():
    ctrl = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    obs = np.array([1.5, -2.0, 1.0, 4.0, 0.5])  # |delta| = .5, 3, 0, 3, .5
    assert M.top_de_genes(obs, ctrl, k=3).tolist() == [1, 3, 0]  # ties keep gene order
    assert M.top_de_genes(obs, ctrl, k=99).tolist() == [1, 3, 0, 4, 2]
    cells_obs = np.vstack([obs - 0.1, obs + 0.1])
    assert M.top_de_genes(cells_obs, np.vstack([ctrl, ctrl]), k=2).tolist() == [1, 3]
    pred = np.array([2.0, 0.0, 1.0, 0.0, 2.0])  # signs: +, -, 0, -, +  vs obs +, -, 0, +, -
    assert M.direction_accuracy(pred, obs, ctrl, None) == pytest.approx(3 / 5)
    assert M.direction_accuracy(pred, obs, ctrl, [1, 3]) == pytest.approx(0.5)
    assert M.direction_accuracy(pred, obs, ctrl, M.top_de_genes(obs, ctrl, k=2)) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        M.top_de_genes(obs, ctrl, k=0)


# ---------------------------------------------------------------------------------
# one condition


def test_evaluate_condition(rng):
    G = 12
    ctrl = rng.normal(size=(60, G)) + 3
    effect = np.zeros(G)
    effect[:4] = [2.0, -1.5, 1.0, 0.8]
    obs = rng.normal(size=(50, G)) + 3 + effect
    pred = rng.normal(size=(40, G)) + 3 + 0.9 * effect
    res = M.evaluate_condition(pred, obs, ctrl, k_de=4, n_boot=100, seed=0)
    assert res["n_pred"] == 40 and res["n_obs"] == 50 and res["n_ctrl"] == 60
    assert res["energy_distance"] == pytest.approx(M.energy_distance(pred, obs), rel=1e-9)
    assert res["energy_distance_lo"] <= res["energy_distance"] <= res["energy_distance_hi"]
    assert res["energy_distance_ctrl"] == pytest.approx(M.energy_distance(ctrl, obs), rel=1e-9)
    assert res["energy_distance_ctrl"] > res["energy_distance"]  # the prediction beats "no change"
    assert res["de_genes"] == M.top_de_genes(obs, ctrl, 4).tolist()
    assert sorted(res["de_genes"]) == [0, 1, 2, 3]
    de = res["de_genes"]
    assert res["energy_distance_de"] == pytest.approx(M.energy_distance(pred[:, de], obs[:, de]), rel=1e-9)
    assert res["mmd_rbf"] == pytest.approx(M.mmd_rbf(pred, obs, bandwidth=M.median_heuristic(obs)), rel=1e-9)
    assert res["mean_l2"] == pytest.approx(M.mean_l2(pred, obs))
    pm, om, cm = pred.mean(0), obs.mean(0), ctrl.mean(0)
    assert res["pearson_delta"] == pytest.approx(M.pearson_delta(pm, om, cm))
    assert res["pearson_delta_de"] == pytest.approx(M.pearson_delta(pm, om, cm, de))
    assert res["r2_delta_de"] == pytest.approx(M.r2_delta(pm, om, cm, de))
    assert res["direction_accuracy_de"] == 1.0
    assert res["noise_floor"] == pytest.approx(M.noise_floor(obs, n_splits=20, seed=0))
    # the observed cells themselves: a perfect mean prediction
    perfect = M.evaluate_condition(obs, obs, ctrl, k_de=4)
    assert perfect["pearson_delta"] == pytest.approx(1.0) and perfect["r2_delta"] == pytest.approx(1.0)
    assert perfect["mean_l2"] == 0.0 and math.isnan(perfect["energy_distance_lo"])
    assert perfect["energy_distance"] == pytest.approx(M.energy_distance(obs, obs))  # < 0: U-statistic
    assert abs(M.evaluate_condition(obs, obs, ctrl, unbiased=False)["energy_distance"]) < 1e-5


def test_evaluate_condition_on_anndata(rng):
    G = 6
    var = pd.DataFrame(index=[f"g{i}" for i in range(G)])
    p, o, c = (rng.normal(size=(n, G)).astype(np.float32) + 2 for n in (10, 12, 14))
    res = M.evaluate_condition(ad.AnnData(p, var=var), ad.AnnData(o, var=var), ad.AnnData(c, var=var), k_de=3)
    assert res["energy_distance"] == pytest.approx(M.energy_distance(p, o), rel=1e-9)
    bad = ad.AnnData(c, var=pd.DataFrame(index=[f"g{i}" for i in reversed(range(G))]))
    with pytest.raises(DataError):
        M.evaluate_condition(ad.AnnData(p, var=var), ad.AnnData(o, var=var), bad)
