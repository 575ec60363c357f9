"""Baselines: exactness on additive data, held-out cells, the prediction format."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pdae_core.data.registry import setup_anndata
from pdae_core.errors import DataError, PDAEError
from pdae_core.eval import metrics
from pdae_core.models.baselines import AdditiveBaseline, LinearBaseline, NoChange, PoolBaseline
from pdae_core.models.pdae import PDAE

OBS_COLUMNS = ["condition", "target", "source_cell", "source_condition", "draw", "kind"]
ALL = [NoChange, AdditiveBaseline, LinearBaseline, PoolBaseline]


def additive_data(n: int = 25, n_genes: int = 8, seed: int = 0, counts: dict[str, int] | None = None):
    """Every condition = the same basal cells + the sum of its parts' effects (exactly
    additive in gene space, cell for cell). Returns (adata, registry, basal, effects)."""
    rng = np.random.default_rng(seed)
    effects = {p: rng.uniform(-1.0, 1.0, n_genes) for p in ("A", "B", "C")}
    conds = ["ctrl", "A", "B", "C", "A+B", "B+C"]
    counts = counts or {}
    basal = rng.gamma(4.0, 1.0, size=(max([n, *counts.values()]), n_genes)) + 2.0
    X, labels, names = [], [], []
    for c in conds:
        k = counts.get(c, n)
        parts = [] if c == "ctrl" else c.split("+")
        X.append(basal[:k] + sum((effects[p] for p in parts), np.zeros(n_genes)))
        labels += [c] * k
        names += [f"{c}_{i}" for i in range(k)]
    adata = ad.AnnData(
        np.vstack(X).astype(np.float32),
        obs=pd.DataFrame({"condition": pd.Categorical(labels)}, index=names),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )
    reg = setup_anndata(adata, "condition", control_label="ctrl")
    return adata, reg, basal, effects


def cells(adata: ad.AnnData, cond: str) -> ad.AnnData:
    return adata[adata.obs["condition"].astype(str).to_numpy() == cond]


# ---------------------------------------------------------------------------------
# additive baseline


def test_additive_is_exact_on_additive_data():
    adata, reg, basal, eff = additive_data()
    model = AdditiveBaseline().fit(adata, reg, holdout=["A+B"])
    pred = model.predict(cells(adata, "ctrl"), "A+B")
    obs = cells(adata, "A+B").X
    np.testing.assert_allclose(pred.X, obs, atol=1e-5)  # cell for cell
    assert abs(metrics.energy_distance(pred.X, obs, unbiased=False)) < 1e-4
    np.testing.assert_allclose(pred.X, basal[:25] + eff["A"] + eff["B"], atol=1e-5)
    # doses scale each part's effect
    dosed = model.predict(cells(adata, "ctrl"), {"A": 0.5, "C": 2.0})
    np.testing.assert_allclose(dosed.X, basal[:25] + 0.5 * eff["A"] + 2.0 * eff["C"], atol=1e-5)
    assert dosed.obs["target"].iloc[0] == "A:0.5+C:2"


def test_additive_moves_non_control_sources_by_the_label_difference():
    adata, reg, basal, eff = additive_data()
    model = AdditiveBaseline().fit(adata, reg, holdout=["A+B"])
    # A cells to A+B: only B's effect is added (A is not added twice)
    np.testing.assert_allclose(model.predict(cells(adata, "A"), "A+B").X, cells(adata, "A+B").X, atol=1e-5)
    # B+C cells to A+B: + A - C
    np.testing.assert_allclose(model.predict(cells(adata, "B+C"), "A+B").X, cells(adata, "A+B").X, atol=1e-5)
    # to control: the source's effects removed
    np.testing.assert_allclose(model.predict(cells(adata, "B+C"), "ctrl").X, cells(adata, "ctrl").X, atol=1e-5)


def test_additive_effects_are_means_of_training_cells():
    adata, reg, _, _ = additive_data(seed=3)
    model = AdditiveBaseline().fit(adata, reg)
    X = adata.X.astype(np.float64)
    conds = adata.obs["condition"].astype(str).to_numpy()
    ctrl = X[conds == "ctrl"].mean(0)
    np.testing.assert_allclose(model.control_mean_, ctrl, rtol=1e-12)
    for p in ("A", "B", "C"):
        k = reg.perturbations.index(p)
        np.testing.assert_allclose(model.effects_[k], X[conds == p].mean(0) - ctrl, rtol=1e-10, atol=1e-12)
        assert model.n_single_cells_[k] == 25


def test_additive_refuses_a_part_without_single_cells():
    adata, reg, _, _ = additive_data()
    model = AdditiveBaseline().fit(adata, reg, holdout=["A"])
    assert model.n_single_cells_[reg.perturbations.index("A")] == 0
    assert np.isnan(model.effects_[reg.perturbations.index("A")]).all()
    with pytest.raises(DataError, match="^The additive baseline cannot predict 'A\\+B'.*single perturbation.*A"):
        model.predict(cells(adata, "ctrl"), "A+B")
    with pytest.raises(DataError):
        model.predict(cells(adata, "ctrl"), "A")
    # A's effect is not needed to move A+B cells to A+B+... nor to predict B
    assert model.predict(cells(adata, "ctrl"), "B").n_obs == 25
    assert model.predict(cells(adata, "A+B"), "A+B").n_obs == 25
    with pytest.raises(DataError, match="Unknown perturbation"):
        model.predict(cells(adata, "ctrl"), "Z")


def test_additive_and_linear_need_control_cells():
    adata, reg, _, _ = additive_data()
    for cls in (AdditiveBaseline, LinearBaseline):
        with pytest.raises(DataError, match="^The (additive|linear) baseline needs control cells"):
            cls().fit(adata, reg, holdout=["ctrl"])


# ---------------------------------------------------------------------------------
# linear baseline


def test_linear_coefficients_are_the_ridge_solution():
    adata, reg, _, _ = additive_data(seed=1, counts={"A": 10, "B+C": 40})
    model = LinearBaseline(alpha=0.7).fit(adata, reg, holdout=["A+B"])
    X = adata.X.astype(np.float64)
    conds = adata.obs["condition"].astype(str).to_numpy()
    ctrl = X[conds == "ctrl"].mean(0)
    train = ["A", "B", "C", "B+C"]  # one row per training condition, whatever its cell count
    Lc = np.array([reg.label_vector(c) for c in train], dtype=np.float64)
    Y = np.array([X[conds == c].mean(0) - ctrl for c in train])
    ref = np.linalg.solve(Lc.T @ Lc + 0.7 * np.eye(3), Lc.T @ Y)
    np.testing.assert_allclose(model.coef_, ref, rtol=1e-9, atol=1e-12)
    src = cells(adata, "ctrl")
    np.testing.assert_allclose(
        model.predict(src, "A+B").X, src.X + reg.label_vector("A+B") @ ref, rtol=1e-6, atol=1e-5
    )


def test_linear_recovers_additive_effects_and_ignores_unseen_perturbations():
    adata, reg, basal, eff = additive_data()
    model = LinearBaseline(alpha=1e-8).fit(adata, reg, holdout=["A+B"])
    np.testing.assert_allclose(model.predict(cells(adata, "ctrl"), "A+B").X, cells(adata, "A+B").X, atol=1e-4)
    # C only in held-out conditions: the ridge gives it no effect
    model = LinearBaseline().fit(adata, reg, holdout=["C", "B+C"])
    assert np.all(model.coef_[reg.perturbations.index("C")] == 0)
    np.testing.assert_allclose(model.predict(cells(adata, "ctrl"), "C").X, cells(adata, "ctrl").X, atol=1e-6)
    with pytest.raises(ValueError):
        LinearBaseline(alpha=0.0)


# ---------------------------------------------------------------------------------
# held-out cells


def _poisoned():
    adata, reg, _, _ = additive_data(seed=2)
    X = adata.X.copy()
    X[adata.obs["condition"].astype(str).to_numpy() == "A+B"] = 1e4
    adata.X = X
    return adata, reg


@pytest.mark.parametrize("cls", ALL)
def test_fit_ignores_held_out_cells(cls):
    adata, reg = _poisoned()
    src = cells(adata, "ctrl")
    model = cls().fit(adata, reg, holdout=["A+B"])
    assert model.holdout == ["A+B"] and "A+B" not in model.train_conditions
    assert model.n_train_cells == adata.n_obs - 25
    for target in ("A+B", "B", "ctrl"):
        pred = model.predict(src, target, seed=0, n_draws=3)
        assert pred.X.max() < 100, target  # nothing of the (huge) held-out cells leaks in
    # identical to a fit on the data without those cells
    keep = adata.obs["condition"].astype(str).to_numpy() != "A+B"
    other = cls().fit(adata[keep].copy(), reg)
    np.testing.assert_array_equal(model.predict(src, "A+B", seed=4).X, other.predict(src, "A+B", seed=4).X)


def test_fit_means_exclude_held_out_conditions():
    adata, reg = _poisoned()
    model = LinearBaseline().fit(adata, reg, holdout=["A+B"])
    conds = adata.obs["condition"].astype(str).to_numpy()
    np.testing.assert_allclose(model.control_mean_, adata.X[conds == "ctrl"].mean(0), rtol=1e-6)
    assert np.abs(model.coef_).max() < 5
    with pytest.raises(DataError, match="zero cells"):
        NoChange().fit(adata, reg, holdout=["A+C"])


def test_pool_draws_training_cells_only():
    adata, reg = _poisoned()
    model = PoolBaseline().fit(adata, reg, holdout=["A+B"])
    pred = model.predict(cells(adata, "ctrl"), "A+B", seed=1, n_draws=4)
    train = adata.X[adata.obs["condition"].astype(str).to_numpy() != "A+B"]
    match = (pred.X[:, None, :] == train[None, :, :]).all(2)
    assert np.all(match.any(1))  # every predicted cell is a training cell
    assert len(np.unique(pred.X, axis=0)) > 20  # from many conditions, not one cell
    np.testing.assert_array_equal(pred.X, model.predict(cells(adata, "ctrl"), "A+B", seed=1, n_draws=4).X)
    assert not np.array_equal(pred.X, model.predict(cells(adata, "ctrl"), "A+B", seed=2, n_draws=4).X)


def test_pool_balance_conditions():
    adata, reg, _, _ = additive_data(counts={"ctrl": 300, "A": 10, "B": 10, "C": 10, "A+B": 10, "B+C": 10})
    src = cells(adata, "ctrl")
    conds = adata.obs["condition"].astype(str).to_numpy()

    def ctrl_fraction(model: PoolBaseline) -> float:
        X = model.predict(src, "A", seed=0, n_draws=4).X  # 1200 draws
        ctrl = adata.X[conds == "ctrl"]
        return float((X[:, None, :] == ctrl[None]).all(2).any(1).mean())

    assert ctrl_fraction(PoolBaseline().fit(adata, reg)) == pytest.approx(300 / 350, abs=0.05)
    assert ctrl_fraction(PoolBaseline(balance_conditions=True).fit(adata, reg)) == pytest.approx(1 / 6, abs=0.05)


# ---------------------------------------------------------------------------------
# the prediction format


@pytest.mark.parametrize("cls", ALL)
def test_output_format_matches_the_models(cls, tiny_adata):
    reg = setup_anndata(tiny_adata, "condition")
    src = tiny_adata[tiny_adata.obs["condition"] == "control"][:7]
    target = "P1+P2"
    ref = PDAE(reg, latent_dim=2, hidden_dims=(8,), noise_dim=2).predict(src, target, n_draws=2)
    model = cls().fit(tiny_adata, reg, holdout=[target] if target in set(tiny_adata.obs["condition"]) else ())
    pred = model.predict(src, target, n_draws=2)
    assert list(pred.obs.columns) == list(ref.obs.columns) == OBS_COLUMNS
    pd.testing.assert_frame_equal(pred.obs, ref.obs)  # same names, index, values, dtypes
    assert list(pred.var_names) == reg.gene_names and pred.X.dtype == np.float32
    assert pred.X.shape == (14, reg.n_genes)
    info = pred.uns["pdae_prediction"]
    assert info["model_type"] == cls.model_type and info["target"] == target
    assert info["label"] == reg.label_vector(target).tolist()
    # a label vector or a mapping as target: named canonically, like the models
    vec = model.predict(src, reg.label_vector(target))
    assert set(vec.obs["target"]) == {"P1+P2"} and set(vec.obs["condition"]) == {"P1+P2"}
    assert set(model.predict(src, {"P1": 1.0}).obs["target"]) == {"P1"}


def test_no_change_returns_the_source_cells(tiny_adata):
    reg = setup_anndata(tiny_adata, "condition")
    src = tiny_adata[tiny_adata.obs["condition"] == "P3"]
    pred = NoChange().fit(tiny_adata, reg).predict(src, "P1+P2", n_draws=3)
    np.testing.assert_array_equal(pred.X, np.tile(src.X, (3, 1)))
    assert pred.obs["draw"].tolist() == [0] * 40 + [1] * 40 + [2] * 40
    assert set(pred.obs["source_condition"]) == {"P3"} and pred.obs_names.is_unique
    assert pred.obs["source_cell"].tolist() == list(src.obs_names) * 3


def test_predict_validation(tiny_adata):
    reg = setup_anndata(tiny_adata, "condition")
    src = tiny_adata[tiny_adata.obs["condition"] == "control"]
    with pytest.raises(PDAEError, match="^The additive baseline is not fitted"):
        AdditiveBaseline().predict(src, "P1")
    model = AdditiveBaseline().fit(tiny_adata, reg)
    with pytest.raises(DataError):
        model.predict(src[:0], "P1")
    with pytest.raises(DataError, match="genes"):
        model.predict(src[:, 1:], "P1")
    # the same genes in another order are reordered (issue 14, item 10)
    np.testing.assert_array_equal(model.predict(src[:, ::-1], "P1").X, model.predict(src, "P1").X)
    with pytest.raises(ValueError):
        model.predict(src, "P1", n_draws=0)
    sparse = src.copy()
    sparse.X = sp.csr_matrix(sparse.X)
    np.testing.assert_allclose(model.predict(sparse, "P1").X, model.predict(src, "P1").X)
    with pytest.raises(DataError, match="genes"):
        AdditiveBaseline().fit(tiny_adata[:, :5], reg)
