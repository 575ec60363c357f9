"""Intervals for a double measured with n cells (pdae_core.eval.cell_noise): the observed mean of a
few cells is noisy, so an interval calibrated on doubles with many cells under-covers doubles with
few; separating the model's error from the sampling noise fixes that."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pdae_core.data.registry import setup_anndata
from pdae_core.eval.calibration import _quantile
from pdae_core.eval.cell_noise import CellNoise, cell_counts_and_variance, metric_noise, model_variance
from pdae_core.eval.interactions import pair_metrics
from pdae_core.eval.stacking import METRICS


def _errors(rng, n_cells, tau, sigma2):
    """Signed errors of predictions whose model error has sd ``tau`` and whose observed side is the
    mean of ``n_cells`` cells of variance ``sigma2``."""
    n = np.asarray(n_cells, dtype=float)[:, None]
    return rng.normal(0, tau, (len(n), len(tau))) + rng.normal(0, 1, (len(n), len(tau))) * np.sqrt(sigma2 / n)


def _fit(gene_err, cells, sigma2):
    d = len(cells)
    zeros = {m: np.zeros(d) for m in METRICS}
    return CellNoise.fit(gene_err, zeros, {m: np.ones(d) for m in METRICS}, cells, sigma2, (0.8, 0.95))


def test_intervals_at_the_cells_of_a_double_cover_where_one_width_does_not():
    rng = np.random.default_rng(0)
    G = 300
    tau, sigma2 = rng.uniform(0.05, 0.2, G), rng.uniform(0.5, 2.0, G)
    cells = rng.integers(10, 200, 400)  # calibration doubles, as the ensemble keeps them (>= 10 cells)
    err = _errors(rng, cells, tau, sigma2)
    noise = _fit(err, cells, sigma2)
    ratio = noise.gene_model_var / tau**2  # the model's own error, the noise removed (noisy per gene)
    assert 0.8 < np.median(ratio) < 1.25 and np.corrcoef(noise.gene_model_var, tau**2)[0, 1] > 0.7
    plain = _quantile(np.abs(err), 0.8)
    for n in (3, 1000):
        test = _errors(rng, np.full(2000, n), tau, sigma2)
        covered = np.mean(np.abs(test) <= noise.gene_half_width(0.8, n))
        assert abs(covered - 0.8) < 0.03, (n, covered)
        plain_cov = np.mean(np.abs(test) <= plain)
        # one width for all: far too narrow for 3 cells, too wide for 1000
        assert plain_cov < 0.6 if n == 3 else plain_cov > 0.9, (n, plain_cov)
    # more cells, narrower; infinitely many: the model's error alone
    w = [noise.gene_half_width(0.8, n) for n in (3, 30, 300)]
    assert (w[0] > w[1]).all() and (w[1] > w[2]).all()
    np.testing.assert_allclose(noise.gene_half_width(0.8, np.inf), noise._gene_q(0.8) * np.sqrt(noise.gene_model_var))
    with pytest.raises(ValueError, match="levels"):
        noise.gene_half_width(0.5, 10)


def test_model_variance_is_floored_when_the_noise_explains_everything():
    v = np.full((50, 3), 4.0)
    tau = model_variance(np.zeros((50, 3)), v)
    assert (tau > 0).all() and np.allclose(tau, 1e-3 * 4.0 + 1e-12)
    np.testing.assert_allclose(model_variance(np.full((4, 1), 3.0), np.full((4, 1), 5.0)), [4.0])


def test_noise_inflates_the_normalised_residual_of_a_few_cell_double():
    rng = np.random.default_rng(1)
    dA, dB = rng.normal(0, 1, 50), rng.normal(0, 1, 50)
    exact = dA + dB  # exactly additive: residual 0, magnitude sqrt(2)
    noise_var = np.full(50, 2.0)
    few = metric_noise(dA, dB, exact, noise_var, 5, rng)
    many = metric_noise(dA, dB, exact, noise_var, 1e6, rng)
    assert few["normalised_residual"][0] > 0.1 and few["normalised_residual"][1] > 0  # observed > predicted
    assert many["normalised_residual"][0] < 0.01 and many["normalised_residual"][1] < 0.01
    assert metric_noise(dA, dB, exact, noise_var, np.inf, rng) == {m: (0.0, 0.0) for m in METRICS}
    # the simulated shift is what the noise does to the metric, against a direct simulation
    sims = [pair_metrics(dA, dB, exact + rng.normal(0, np.sqrt(2.0 / 5), 50))["normalised_residual"]
            for _ in range(2000)]
    assert few["normalised_residual"][0] == pytest.approx(float(np.mean(sims)), rel=0.1)


def test_metric_interval_is_centred_on_the_shifted_prediction_and_cut_at_zero():
    rng = np.random.default_rng(2)
    d = 60
    cells = np.full(d, 20)
    e = rng.normal(0, 0.1, d)
    spread = np.full(d, 0.2)
    noise = CellNoise.fit(np.zeros((d, 2)) + 0.1, {m: e for m in METRICS}, {m: spread for m in METRICS},
                          cells, np.ones(2), (0.8,))
    lo, hi = noise.metric_interval("normalised_residual", 1.0, 0.3, 0.2, 0.8)
    assert (lo + hi) / 2 == pytest.approx(1.3)
    lo0, hi0 = noise.metric_interval("normalised_residual", 1.0, 0.3, 0.0, 0.8)
    assert hi0 - lo0 < hi - lo  # a smaller sampling spread, a narrower interval
    assert noise.metric_interval("magnitude", 0.01, 0.0, 0.5, 0.8)[0] == 0.0


def test_cells_and_pooled_variance_of_conditions():
    X = np.array([[1.0, 0], [3, 0], [5, 2], [7, 4], [2, 2], [0, 0]])
    a = ad.AnnData(X, obs=pd.DataFrame({"condition": ["A+B", "B+A", "A+B", "C+D", "C+D", "control"]},
                                       index=[f"c{i}" for i in range(6)]),
                   var=pd.DataFrame(index=["g1", "g2"]))
    reg = setup_anndata(a, "condition", "control")
    counts, var = cell_counts_and_variance(a, reg, ["A+B", "C+D"])
    assert counts.tolist() == [3, 2]
    ab, cd = X[:3], X[3:5]
    expect = (((ab - ab.mean(0)) ** 2).sum(0) + ((cd - cd.mean(0)) ** 2).sum(0)) / (2 + 1)
    np.testing.assert_allclose(var, expect)
    counts, var = cell_counts_and_variance(a, reg, ["A+B", "C+D"], variance=False)  # counts alone
    assert counts.tolist() == [3, 2] and var is None
    counts, var = cell_counts_and_variance(a, reg, ["control"])
    assert counts.tolist() == [1] and var is None


def test_round_trip_and_refusals():
    rng = np.random.default_rng(3)
    cells = rng.integers(10, 50, 30)
    noise = _fit(_errors(rng, cells, np.full(4, 0.1), np.ones(4)), cells, np.ones(4))
    back = CellNoise.from_dict(noise.to_dict(), 4, 30, ValueError)
    np.testing.assert_array_equal(back.gene_half_width(0.95, 7), noise.gene_half_width(0.95, 7))
    assert back.cells.tolist() == cells.tolist()

    def broken(edit):
        d = noise.to_dict()
        edit(d)
        return d

    cases = {
        "noise_var must be a list of 4": lambda d: d["noise_var"].pop(),
        "must be non-negative": lambda d: d["gene_model_var"].__setitem__(0, -1.0),
        "model's positive": lambda d: d["gene_model_var"].__setitem__(0, 0.0),
        "between 0 and 1": lambda d: d["gene_scores"].__setitem__("2", [1.0] * 4),
        "exactly magnitude": lambda d: d["metric_scores"].pop("magnitude"),
        "30 positive integers": lambda d: d["cells"].__setitem__(0, 0),
        "numbers or null": lambda d: d["noise_var"].__setitem__(1, "x"),
    }
    for msg, edit in cases.items():
        with pytest.raises(ValueError, match=msg):
            CellNoise.from_dict(broken(edit), 4, 30, ValueError)
