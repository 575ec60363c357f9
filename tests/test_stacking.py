"""Stacking of interaction metrics (pdae_core.eval.stacking): the single features against direct
formulas (a zero single, identical singles), exact leave-one-out residuals against refits, a known
rule recovered, jackknife half-widths at the conformal rank."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pdae_core.eval.stacking import MetricStacker, log_metric, part_indicators, ridge_loo, single_features


def test_single_features_match_direct_formulas_and_degenerate_singles():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), 3 * rng.normal(size=30)
    f = single_features(a[None], b[None])[0]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    lo, hi = min(na, nb), max(na, nb)
    assert f == pytest.approx([math.log(lo), math.log(hi), lo / hi, a @ b / (na * nb), math.log(np.linalg.norm(a + b))])
    np.testing.assert_allclose(single_features(b[None], a[None]), f[None])  # symmetric in A and B
    zero = single_features(np.zeros((1, 30)), b[None])[0]
    assert zero[2] == 0.0 and zero[3] == 0.0 and zero[0] < -20 and np.isfinite(zero).all()  # no effect: cosine 0
    same = single_features(a[None], a[None])[0]
    assert same[2] == pytest.approx(1.0) and same[3] == pytest.approx(1.0)
    assert same[4] == pytest.approx(math.log(2 * na))
    both = single_features(np.zeros((1, 30)), np.zeros((1, 30)))[0]
    assert both[2] == 1.0 and both[3] == 0.0 and np.isfinite(both).all()


def test_part_indicators_ignore_unknown_perturbations():
    X = part_indicators([("A", "B"), ("B", "Z")], ["A", "B", "C"])
    np.testing.assert_array_equal(X, [[1, 1, 0], [0, 1, 0]])
    assert log_metric([0.0, np.e])[1] == pytest.approx(1.0) and np.isfinite(log_metric([0.0])).all()


def test_ridge_leave_one_out_residuals_equal_refits_without_each_row():
    rng = np.random.default_rng(1)
    Z = np.column_stack([np.ones(25), rng.normal(size=(25, 4))])
    y = Z @ rng.normal(size=5) + 0.3 * rng.normal(size=25)
    P = [np.r_[0.0, np.full(4, a)] for a in (0.1, 10.0)]
    _, coef, i, r = ridge_loo(Z, y, P)
    for j in (0, 7, 24):
        keep = np.arange(25) != j
        c = np.linalg.solve(Z[keep].T @ Z[keep] + np.diag(P[i]), Z[keep].T @ y[keep])
        assert r[j] == pytest.approx(y[j] - Z[j] @ c, rel=1e-8)
    np.testing.assert_allclose(coef, np.linalg.solve(Z.T @ Z + np.diag(P[i]), Z.T @ y))


def test_stacker_recovers_a_rule_of_model_metric_and_parts_and_its_intervals():
    """log m = 0.8 * model's log m + u_part: the stacker must rank new doubles as the rule does,
    better than the model's metric alone; its half-widths are the conformal order statistics."""
    rng = np.random.default_rng(2)
    genes = [f"G{i}" for i in range(12)]
    u = dict(zip(genes, rng.normal(scale=0.6, size=12)))
    pairs = [(genes[i], genes[j]) for i in range(12) for j in range(i + 1, 12)]
    model = rng.normal(size=(len(pairs), 2))
    feats = rng.normal(size=(len(pairs), 5))
    truth = np.array([[0.8 * m[0] + u[a] + u[b], 0.5 * m[1] - u[a] - u[b]] for m, (a, b) in zip(model, pairs)])
    y = truth + 0.05 * rng.normal(size=truth.shape)
    tr = np.flatnonzero(np.arange(len(pairs)) % 3 != 0)
    te = np.flatnonzero(np.arange(len(pairs)) % 3 == 0)
    st = MetricStacker().fit(model[tr], feats[tr], [pairs[i] for i in tr], y[tr])
    pred = st.predict(model[te], feats[te], [pairs[i] for i in te])
    for t in range(2):
        assert np.corrcoef(pred[:, t], truth[te, t])[0, 1] > 0.95
        assert np.corrcoef(pred[:, t], truth[te, t])[0, 1] > np.corrcoef(model[te, t], truth[te, t])[0, 1] + 0.2
    assert st.vocabulary_ == sorted({p for i in tr for p in pairs[i]})
    np.testing.assert_allclose(st.loo_predictions(), y[tr] - st.loo_residuals_)
    n = len(tr)
    k = math.ceil((n + 1) * 0.8)
    assert st.half_width(0, 0.8) == pytest.approx(np.sort(np.abs(st.loo_residuals_[:, 0]))[k - 1])
    assert st.half_width(1, 0.999) == math.inf  # too few doubles for that level
    with pytest.raises(ValueError, match="at least 4"):
        MetricStacker().fit(model[:3], feats[:3], pairs[:3], y[:3])
    with pytest.raises(ValueError, match="one row per double"):
        MetricStacker().fit(model[:5], feats[:4], pairs[:5], y[:5])
