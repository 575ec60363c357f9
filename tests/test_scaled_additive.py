"""Scaled additive baseline: one scale ``alpha`` on the additive change of combinations,
fitted on the training combinations only (cell level and mean level)."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pdae_core.data.registry import setup_anndata
from pdae_core.errors import DataError
from pdae_core.eval import benchmark as bm
from pdae_core.eval.benchmark import BenchmarkSpec, run_benchmark
from pdae_core.eval.pseudobulk import (
    ProfileSet,
    paired_differences,
    profiles_from_anndata,
    run_pseudobulk_benchmark,
)
from pdae_core.eval.pseudobulk.models import PROFILE_MODELS, AdditiveProfile, ScaledAdditiveProfile
from pdae_core.eval.pseudobulk.profiles import train_conditions
from pdae_core.models.baselines import AdditiveBaseline, ScaledAdditiveBaseline

PARTS = ("A", "B", "C", "D")
DOUBLES = ("A+B", "C+D", "A+C", "B+D")


def scaled_data(scale: float = 0.5, n: int = 20, n_genes: int = 10, seed: int = 0,
                doubles: tuple[str, ...] = DOUBLES, extra: dict[str, np.ndarray] | None = None):
    """Every condition = the same basal cells + its change: a single's own effect, a
    double ``scale`` times the sum of its parts' effects (cell for cell). ``extra``:
    conditions with a given change (e.g. a double whose part has no single cells).
    Returns (adata, registry, basal, effects)."""
    rng = np.random.default_rng(seed)
    eff = {p: rng.uniform(-1.0, 1.0, n_genes) for p in PARTS}
    basal = rng.gamma(4.0, 1.0, size=(n, n_genes)) + 3.0
    change = {"ctrl": np.zeros(n_genes), **eff}
    change.update({d: scale * sum(eff[p] for p in d.split("+")) for d in doubles})
    change.update(extra or {})
    X, labels, names = [], [], []
    for c, v in change.items():
        X.append(basal + v)
        labels += [c] * n
        names += [f"{c}_{i}" for i in range(n)]
    adata = ad.AnnData(np.vstack(X).astype(np.float32),
                       obs=pd.DataFrame({"condition": pd.Categorical(labels)}, index=names),
                       var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    return adata, setup_anndata(adata, "condition", control_label="ctrl"), basal, eff


def cells(adata: ad.AnnData, cond: str) -> ad.AnnData:
    return adata[adata.obs["condition"].astype(str).to_numpy() == cond]


# ---------------------------------------------------------------------------------
# cell level


def test_alpha_is_recovered_and_held_out_doubles_are_scaled():
    adata, reg, basal, eff = scaled_data(scale=0.5)
    model = ScaledAdditiveBaseline().fit(adata, reg, holdout=["A+B"])
    assert model.alpha_ == pytest.approx(0.5, abs=1e-5)
    assert model.alpha_conditions_ == ["A+C", "B+D", "C+D"]  # the held-out double is not among them
    pred = model.predict(cells(adata, "ctrl"), "A+B")
    expected = basal + 0.5 * (eff["A"] + eff["B"])
    np.testing.assert_allclose(pred.X, expected, atol=1e-4)  # cell for cell
    np.testing.assert_allclose(pred.X.mean(0) - basal.mean(0), 0.5 * (eff["A"] + eff["B"]), atol=1e-4)
    # the plain additive baseline is off by the other half
    add = AdditiveBaseline().fit(adata, reg, holdout=["A+B"]).predict(cells(adata, "ctrl"), "A+B")
    np.testing.assert_allclose(add.X.mean(0) - pred.X.mean(0), 0.5 * (eff["A"] + eff["B"]), atol=1e-4)
    assert pred.uns["pdae_prediction"]["model_type"] == "scaled_additive"
    assert "alpha=0.5" in repr(model)


def test_alpha_above_one_and_a_triple():
    adata, reg, basal, eff = scaled_data(scale=1.5)
    model = ScaledAdditiveBaseline().fit(adata, reg, holdout=["A+B"])
    assert model.alpha_ == pytest.approx(1.5, abs=1e-5)
    pred = model.predict(cells(adata, "ctrl"), "A+B+C")  # any combination of >= 2 parts is scaled
    np.testing.assert_allclose(pred.X, basal + 1.5 * (eff["A"] + eff["B"] + eff["C"]), atol=1e-4)


def test_singles_are_predicted_as_additive_does():
    adata, reg, basal, eff = scaled_data(scale=0.5)
    scaled = ScaledAdditiveBaseline().fit(adata, reg, holdout=["A+B"])
    add = AdditiveBaseline().fit(adata, reg, holdout=["A+B"])
    ctrl = cells(adata, "ctrl")
    for target in ("A", {"C": 2.0}, "ctrl"):
        np.testing.assert_array_equal(scaled.predict(ctrl, target).X, add.predict(ctrl, target).X)
    np.testing.assert_allclose(scaled.predict(ctrl, "A").X, basal + eff["A"], atol=1e-4)
    np.testing.assert_allclose(scaled.predict(ctrl, {"C": 2.0}).X, basal + 2.0 * eff["C"], atol=1e-4)


def test_non_control_sources_move_between_scaled_changes():
    adata, reg, basal, eff = scaled_data(scale=0.5)
    model = ScaledAdditiveBaseline().fit(adata, reg, holdout=["A+B"])
    # A cells to A+B: from A's change to the scaled change of A+B (the observed A+B cells)
    np.testing.assert_allclose(model.predict(cells(adata, "A"), "A+B").X, basal + 0.5 * (eff["A"] + eff["B"]),
                               atol=1e-4)
    # C+D cells back to control, and to the single A
    np.testing.assert_allclose(model.predict(cells(adata, "C+D"), "ctrl").X, basal, atol=1e-4)
    np.testing.assert_allclose(model.predict(cells(adata, "C+D"), "A").X, basal + eff["A"], atol=1e-4)


def test_without_training_doubles_alpha_is_one_and_equals_additive():
    adata, reg, _, _ = scaled_data(scale=0.5)
    scaled = ScaledAdditiveBaseline().fit(adata, reg, holdout=list(DOUBLES))
    add = AdditiveBaseline().fit(adata, reg, holdout=list(DOUBLES))
    assert scaled.alpha_ == 1.0 and scaled.alpha_conditions_ == []
    ctrl = cells(adata, "ctrl")
    for target in ("A+B", "C+D", "B", "A+B+C"):
        np.testing.assert_array_equal(scaled.predict(ctrl, target).X, add.predict(ctrl, target).X)
    np.testing.assert_array_equal(scaled.predict(cells(adata, "A"), "A+B").X, add.predict(cells(adata, "A"), "A+B").X)
    # a dataset without any double at all
    adata0, reg0, _, _ = scaled_data(doubles=())
    assert ScaledAdditiveBaseline().fit(adata0, reg0).alpha_ == 1.0


def test_held_out_double_never_enters_alpha():
    adata, reg, _, _ = scaled_data(scale=0.5)
    base = ScaledAdditiveBaseline().fit(adata, reg, holdout=["A+B"])
    changed = adata.copy()
    ab = changed.obs["condition"].astype(str).to_numpy() == "A+B"
    changed.X[ab] = changed.X[ab] * 3.0 + 7.0  # nothing like 0.5 * (A + B) any more
    again = ScaledAdditiveBaseline().fit(changed, reg, holdout=["A+B"])
    assert again.alpha_ == base.alpha_
    ctrl = cells(adata, "ctrl")
    np.testing.assert_array_equal(again.predict(ctrl, "A+B").X, base.predict(ctrl, "A+B").X)
    # the same change does move alpha when A+B trains: the test above could fail
    assert abs(ScaledAdditiveBaseline().fit(changed, reg).alpha_ - base.alpha_) > 0.1


def test_combinations_with_an_unmeasured_part_are_left_out_of_alpha():
    rng = np.random.default_rng(5)
    extra = {"A+E": rng.normal(0.0, 3.0, 10)}  # E is never measured alone: no additive prediction
    adata, reg, _, _ = scaled_data(scale=0.5, extra=extra)
    model = ScaledAdditiveBaseline().fit(adata, reg, holdout=["A+B"])
    assert model.alpha_ == pytest.approx(0.5, abs=1e-5) and "A+E" not in model.alpha_conditions_
    with pytest.raises(DataError, match="The scaled additive baseline cannot predict 'A\\+E'.*single perturbation.*E"):
        model.predict(cells(adata, "ctrl"), "A+E")


def test_alpha_is_the_pooled_least_squares_scale_on_noisy_data(tiny_adata):
    reg = setup_anndata(tiny_adata, "condition", "control")
    conds = tiny_adata.obs["condition"].astype(str).to_numpy()
    doubles = sorted({c for c in conds if "+" in c})
    model = ScaledAdditiveBaseline().fit(tiny_adata, reg, holdout=doubles[:1])
    X = reg.expression(tiny_adata).astype(np.float64)
    ctrl = X[conds == "control"].mean(0)
    num = den = 0.0
    for d in doubles[1:]:
        d_obs = X[conds == d].mean(0) - ctrl
        d_add = sum(X[conds == p].mean(0) - ctrl for p in d.split("+"))
        num, den = num + d_obs @ d_add, den + d_add @ d_add
    assert model.alpha_conditions_ == doubles[1:]
    assert model.alpha_ == pytest.approx(num / den, rel=1e-9)
    assert model.alpha_ != pytest.approx(1.0, abs=1e-3)  # the synthetic decoder is not additive in gene space


# ---------------------------------------------------------------------------------
# benchmark registration


def test_registered_for_the_benchmark(tiny_adata, tmp_path):
    assert "scaled_additive" in bm.available_models()
    spec = BenchmarkSpec()
    assert spec.models[spec.models.index("additive") + 1] == "scaled_additive"  # a default baseline
    reg = setup_anndata(tiny_adata, "condition", "control")
    req = bm.FitRequest(tiny_adata, reg, ["P1+P2"] if "P1+P2" in set(tiny_adata.obs.condition) else [], 0, {}, {},
                        "cpu", [])
    assert isinstance(bm.get_builder("scaled_additive")(req), ScaledAdditiveBaseline)
    run = BenchmarkSpec(dataset="synthetic", models=["additive", "scaled_additive"], seeds=[0], test_fraction=0.5,
                        n_boot=5, accelerator="cpu")
    df = run_benchmark(tiny_adata, reg, run, tmp_path)
    sa = df[df.model == "scaled_additive"]
    assert len(sa) > 0 and (sa["error"].fillna("") == "").all() and sa["energy_distance"].notna().all()


# ---------------------------------------------------------------------------------
# mean level (pseudobulk)


def _scaled_profiles(scale: float, n_pert: int = 6, n_genes: int = 30, seed: int = 0) -> ProfileSet:
    rng = np.random.default_rng(seed)
    names = [f"P{i}" for i in range(n_pert)]
    eff = {n: rng.normal(size=n_genes) for n in names}
    doubles = [f"{a}+{b}" for a, b in itertools.combinations(names, 2)]
    X = np.vstack([eff[n] for n in names] + [scale * sum(eff[p] for p in d.split("+")) for d in doubles])
    obs = pd.DataFrame({"condition": names + doubles}, index=[f"r{i}" for i in range(len(X))])
    adata = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    return profiles_from_anndata(adata, values="deltas")


def test_profile_alpha_recovered_and_held_out_doubles_scaled():
    p = _scaled_profiles(0.5)
    test = p.eligible_doubles()[:4]
    train = p.subset(train_conditions(p, test))
    model = ScaledAdditiveProfile().fit(train)
    assert model.alpha_ == pytest.approx(0.5, abs=1e-12)
    assert not set(test) & set(model.alpha_conditions_) and len(model.alpha_conditions_) == 11
    held = p.subset(test)
    np.testing.assert_allclose(model.predict(held.labels), held.deltas, atol=1e-10)  # = 0.5 * (sum)
    singles = p.subset([f"P{i}" for i in range(6)])
    np.testing.assert_allclose(model.predict(singles.labels), singles.deltas, atol=1e-12)  # as additive
    np.testing.assert_allclose(model.predict(singles.labels), AdditiveProfile().fit(train).predict(singles.labels))


def test_profile_without_training_doubles_and_held_out_changes():
    p = _scaled_profiles(0.5)
    singles = [f"P{i}" for i in range(6)]
    only = p.subset(singles)
    scaled, add = ScaledAdditiveProfile().fit(only), AdditiveProfile().fit(only)
    assert scaled.alpha_ == 1.0 and scaled.alpha_conditions_ == []
    np.testing.assert_array_equal(scaled.predict(p.labels), add.predict(p.labels))
    # changing a held-out double's profile leaves alpha as it is
    test = p.eligible_doubles()[:3]
    base = ScaledAdditiveProfile().fit(p.subset(train_conditions(p, test))).alpha_
    p.deltas[p.index(test[:1])] *= 40.0  # 20 times its additive change
    assert ScaledAdditiveProfile().fit(p.subset(train_conditions(p, test))).alpha_ == base
    assert abs(ScaledAdditiveProfile().fit(p).alpha_ - base) > 0.1


def test_profile_benchmark_by_name():
    assert "scaled_additive" in PROFILE_MODELS
    p = _scaled_profiles(0.5)
    df = run_pseudobulk_benchmark(p, models=("additive", "scaled_additive"), k=3)
    sa, add = df[df.model == "scaled_additive"], df[df.model == "additive"]
    assert len(sa) == len(add) == 15
    np.testing.assert_allclose(sa["r2_delta"], 1.0, atol=1e-9)
    np.testing.assert_allclose(add["pearson_delta"], 1.0, atol=1e-9)  # right direction ...
    assert (add["r2_delta"] < 0.5).all()  # ... twice too large


def test_same_pearson_as_additive_is_a_tie_in_the_paired_table():
    rng = np.random.default_rng(3)
    p = _scaled_profiles(0.5)
    p.deltas[6:] += rng.normal(0.0, 0.3, size=p.deltas[6:].shape)  # noisy doubles: alpha near, not at, 0.5
    df = run_pseudobulk_benchmark(p, models=("additive", "scaled_additive", "linear"), k=3)
    d = paired_differences(df).set_index("model")
    # a positive scale leaves the Pearson delta as it is: no wins from rounding
    assert d.loc["scaled_additive", "pearson_delta_diff"] == pytest.approx(0.0, abs=1e-12)
    assert d.loc["scaled_additive", "pearson_delta_wins"] == 0 and d.loc["scaled_additive", "pearson_delta_de_wins"] == 0
    assert d.loc["linear", "pearson_delta_wins"] > 0  # real differences still count
