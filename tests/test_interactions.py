"""Genetic-interaction metrics (pdae_core.eval.interactions), checked against direct
formulas, numpy's least squares and the ``dcor`` package."""

from __future__ import annotations

import math

import anndata as ad
import dcor
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pdae_core.data.registry import setup_anndata
from pdae_core.errors import DataError
from pdae_core.eval import interactions as gi
from pdae_core.eval.pseudobulk.profiles import ProfileSet

RNG = np.random.default_rng(0)


def _singles(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), rng.normal(size=n)


# ---------------------------------------------------------------------------------
# distance correlation


@pytest.mark.parametrize("n", [2, 7, 300])
def test_distance_correlation_matches_dcor(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = np.sin(3 * x) + 0.2 * rng.normal(size=n)
    X = rng.normal(size=(n, 2)) + y[:, None]
    assert gi.distance_correlation(x, y) == pytest.approx(dcor.distance_correlation(x, y), abs=1e-8)
    assert gi.distance_correlation(X, y) == pytest.approx(dcor.distance_correlation(X, y), abs=1e-8)


def test_distance_correlation_blocks_agree(monkeypatch):
    x, y = _singles(500, seed=3)
    y = x**2 + 0.5 * y
    whole = gi.distance_correlation(x, y)
    monkeypatch.setattr(gi, "_BLOCK_ELEMENTS", 500 * 7)  # blocks of 7 rows, the last one short
    assert gi.distance_correlation(x, y) == pytest.approx(whole, abs=1e-12)
    assert whole == pytest.approx(dcor.distance_correlation(x, y), abs=1e-8)


def test_distance_correlation_constant_and_perfect():
    x = np.arange(10.0)
    assert gi.distance_correlation(np.full(10, 3.0), x) == 0.0
    assert gi.distance_correlation(x, np.zeros(10)) == 0.0
    assert gi.distance_correlation(2 * x - 5, x) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        gi.distance_correlation(np.r_[x[:-1], np.nan], x)


# ---------------------------------------------------------------------------------
# fits and metrics against direct formulas


def test_lstsq_metrics_match_direct_formulas():
    a, b = _singles(150, seed=1)
    ab = 0.7 * a - 0.4 * b + 0.3 * RNG.normal(size=150)
    m = gi.interaction_metrics(a, b, ab, method="lstsq")
    c = np.linalg.lstsq(np.c_[a, b], ab, rcond=None)[0]
    assert (m["c1"], m["c2"]) == pytest.approx(tuple(c), abs=1e-10)
    assert m["magnitude"] == pytest.approx(np.sqrt(c[0] ** 2 + c[1] ** 2), abs=1e-10)
    assert m["dominance"] == pytest.approx(abs(np.log10(abs(c[0]) / abs(c[1]))), abs=1e-10)
    assert m["nonadditive_norm"] == pytest.approx(np.linalg.norm(ab - a - b))
    assert m["normalised_residual"] == pytest.approx(np.linalg.norm(ab - a - b) / np.linalg.norm(a + b))
    assert m["n_genes"] == 150
    assert set(m) == set(gi.METRICS)


@pytest.mark.parametrize("method", ["theil_sen", "lstsq"])
def test_dcor_metrics_match_dcor_package(method):
    a, b = _singles(120, seed=2)
    ab = 0.9 * a + 0.5 * b + 0.4 * np.tanh(a * b)
    m = gi.interaction_metrics(a, b, ab, method=method)
    fitted = m["c1"] * a + m["c2"] * b
    da, db = dcor.distance_correlation(a, ab), dcor.distance_correlation(b, ab)
    assert m["model_fit"] == pytest.approx(dcor.distance_correlation(fitted, ab), abs=1e-8)
    assert m["dcor_a"] == pytest.approx(da, abs=1e-8)
    assert m["dcor_b"] == pytest.approx(db, abs=1e-8)
    assert m["equality_of_contribution"] == pytest.approx(min(da, db) / max(da, db), abs=1e-8)
    assert m["similarity"] == pytest.approx(dcor.distance_correlation(np.c_[a, b], ab), abs=1e-8)


@pytest.mark.parametrize("n", [40, 3000])  # all pairs / 10,000 random pairs
def test_theil_sen_exact_on_noise_free_data(n):
    a, b = _singles(n, seed=4)
    c1, c2 = gi.fit_coefficients(a, b, 1.7 * a - 0.3 * b)
    assert (c1, c2) == pytest.approx((1.7, -0.3), abs=1e-9)


def test_theil_sen_robust_where_least_squares_is_not():
    rng = np.random.default_rng(5)
    a, b = _singles(400, seed=5)
    ab = 0.6 * a + 1.2 * b + 0.01 * rng.normal(size=400)
    ab[:20] += 25.0 * np.sign(a[:20])  # 5% outlier genes, all pulling c1 up
    ts = gi.fit_coefficients(a, b, ab)
    ls = gi.fit_coefficients(a, b, ab, method="lstsq")
    assert ts == pytest.approx((0.6, 1.2), abs=0.05)
    assert abs(ls[0] - 0.6) > 0.3
    assert gi.fit_coefficients(a, b, ab, seed=0) == ts  # deterministic
    assert gi.fit_coefficients(a, b, ab, max_subsets=500, seed=1) == pytest.approx((0.6, 1.2), abs=0.1)


# ---------------------------------------------------------------------------------
# degenerate inputs


@pytest.mark.parametrize("method", ["theil_sen", "lstsq"])
def test_zero_single(method):
    a, b = _singles(60, seed=6)
    m = gi.interaction_metrics(np.zeros(60), b, 0.8 * b, method=method)
    assert m["c1"] == 0.0 and m["c2"] == pytest.approx(0.8)
    assert m["dominance"] == math.inf
    assert m["dcor_a"] == 0.0 and m["equality_of_contribution"] == 0.0
    assert m["model_fit"] == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["theil_sen", "lstsq"])
def test_identical_singles_split_equally(method):
    a, _ = _singles(60, seed=7)
    m = gi.interaction_metrics(a, a.copy(), 1.5 * a, method=method)
    assert m["c1"] == pytest.approx(0.75) and m["c2"] == pytest.approx(0.75)
    assert m["dominance"] == pytest.approx(0.0, abs=1e-9)
    assert m["equality_of_contribution"] == pytest.approx(1.0)
    scaled = gi.fit_coefficients(a, 2 * a, 3 * a, method=method)  # collinear: minimum-norm split
    assert scaled == pytest.approx((0.6, 1.2))


@pytest.mark.parametrize("method", ["theil_sen", "lstsq"])
def test_zero_double_and_zero_singles(method):
    a, b = _singles(50, seed=8)
    m = gi.interaction_metrics(a, b, np.zeros(50), method=method)
    assert (m["c1"], m["c2"], m["magnitude"]) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    assert m["model_fit"] == 0.0 and m["similarity"] == 0.0
    assert math.isnan(m["equality_of_contribution"]) and math.isnan(m["dominance"])
    assert m["normalised_residual"] == pytest.approx(1.0)
    z = gi.interaction_metrics(np.zeros(50), np.zeros(50), a, method=method)
    assert (z["c1"], z["c2"]) == (0.0, 0.0) and z["normalised_residual"] == math.inf
    assert gi.interaction_metrics(a, -a, np.zeros(50), method=method)["normalised_residual"] == 0.0


def test_bad_inputs_raise_value_errors():
    a, b = _singles(20)
    with pytest.raises(ValueError, match="dAB contains 1 NaN"):
        gi.interaction_metrics(a, b, np.r_[a[:-1], np.nan])
    with pytest.raises(ValueError, match="differ in length"):
        gi.interaction_metrics(a, b, a[:-1])
    with pytest.raises(ValueError, match="at least 2 genes"):
        gi.interaction_metrics([1.0], [1.0], [1.0])
    with pytest.raises(DataError, match="method must be one of"):
        gi.interaction_metrics(a, b, a + b, method="ols")


# ---------------------------------------------------------------------------------
# tables


def _profiles() -> ProfileSet:
    rng = np.random.default_rng(9)
    singles = {p: rng.normal(size=30) for p in "ABCD"}
    rows = dict(singles)
    rows["A+B"] = singles["A"] + singles["B"]
    rows["C+A"] = 0.3 * singles["C"] + 0.3 * singles["A"]
    rows["B+D"] = 2.0 * singles["D"]
    rows["A+E"] = rng.normal(size=30)  # E never measured alone
    names = list(rows)
    parts = [tuple(n.split("+")) for n in names]
    vocab = sorted({p for ps in parts for p in ps})
    labels = np.array([[float(v in ps) for v in vocab] for ps in parts])
    return ProfileSet(names, parts, vocab, labels, np.array([rows[n] for n in names]),
                      [f"g{i}" for i in range(30)])


def test_table_from_profile_set():
    prof = _profiles()
    tab = gi.interactions_from_profiles(prof, method="lstsq")
    assert list(tab.index) == ["A+B", "C+A", "B+D"]
    assert list(tab.columns) == ["single_a", "single_b", *gi.METRICS]
    assert tuple(tab.loc["C+A", ["single_a", "single_b"]]) == ("C", "A")
    assert tab.loc["A+B", ["c1", "c2"]].tolist() == pytest.approx([1.0, 1.0])
    assert tab.loc["A+B", "normalised_residual"] == pytest.approx(0.0, abs=1e-12)
    assert tab.loc["C+A", "magnitude"] == pytest.approx(0.3 * math.sqrt(2))
    assert tab.loc["B+D", "dominance"] > 5  # c1 ~ 0, c2 = 2
    direct = gi.interaction_metrics(prof.deltas[2], prof.deltas[0], prof.deltas[5], method="lstsq")
    assert tab.loc["C+A", "model_fit"] == pytest.approx(direct["model_fit"])


def test_table_inputs_agree_and_gene_sets():
    prof = _profiles()
    df = pd.DataFrame(prof.deltas, index=prof.conditions, columns=prof.genes)
    genes = ["g3", "g1", "g7", "g20", "g11"]
    by_df = gi.interaction_table(df, ["B+A", "A+C"], genes=genes)
    pos = [3, 1, 7, 20, 11]
    by_tuple = gi.interaction_table((prof.conditions, prof.deltas), ["B+A", "A+C"], genes=pos)
    mask = np.isin(np.arange(30), pos)
    by_mask = gi.interaction_table(prof, ["B+A", "A+C"], genes=mask)
    pd.testing.assert_frame_equal(by_df, by_tuple)
    assert by_df["n_genes"].tolist() == [5.0, 5.0]
    assert by_df["magnitude"].to_numpy() == pytest.approx(by_mask["magnitude"].to_numpy())  # order-free
    assert by_df.loc["A+C", ["c1", "c2"]].tolist() == pytest.approx([0.3, 0.3])


def test_table_errors():
    prof = _profiles()
    with pytest.raises(DataError, match="one of their singles"):
        gi.interaction_table(prof, ["A+E"])
    with pytest.raises(DataError, match="Not doubles"):
        gi.interaction_table(prof, ["A"])
    with pytest.raises(DataError, match="not in the deltas"):
        gi.interaction_table(prof, ["A+B"], genes=["g1", "nope"])
    with pytest.raises(DataError, match="at least 2"):
        gi.interaction_table(prof, ["A+B"], genes=[1])
    dup = pd.DataFrame(np.zeros((2, 3)), index=["A+B", "B+A"])
    with pytest.raises(DataError, match="same condition"):
        gi.interaction_table(dup)


# ---------------------------------------------------------------------------------
# from cells


def _cells() -> ad.AnnData:
    rng = np.random.default_rng(10)
    base = np.r_[np.full(4, 2.0), np.full(2, 0.05)]  # genes 4, 5 barely expressed in control
    shift = {"control": 0, "A": np.r_[1, 0, 0, 1, 0, 0], "B": np.r_[0, 1, 0, 1, 0, 0]}
    shift["B+A"] = 0.5 * (shift["A"] + shift["B"])
    conds, X = [], []
    for c, s in shift.items():
        X.append(base + s + 0.01 * rng.normal(size=(30, 6)))
        conds += [c] * 30
    obs = pd.DataFrame({"condition": conds}, index=[f"c{i}" for i in range(len(conds))])
    var = pd.DataFrame(index=[f"g{i}" for i in range(6)])
    return ad.AnnData(np.vstack(X).astype(np.float32), obs=obs, var=var)


def test_mean_changes_and_expressed_genes():
    adata = _cells()
    reg = setup_anndata(adata, "condition", "control")
    d = gi.mean_changes(adata, reg, ["A", "A+B"])  # "A+B" finds the cells of "B+A"
    X = adata.X.astype(np.float64)
    ctrl = X[adata.obs["condition"] == "control"].mean(0)
    assert d.loc["A"].to_numpy() == pytest.approx(X[adata.obs["condition"] == "A"].mean(0) - ctrl)
    assert list(d.columns) == reg.gene_names
    ctrl_cells = X[adata.obs["condition"] == "control"]
    assert gi.expressed_genes(ctrl_cells).tolist() == [0, 1, 2, 3]
    assert gi.expressed_genes(sp.csr_matrix(ctrl_cells)).tolist() == [0, 1, 2, 3]
    assert gi.expressed_genes(ctrl_cells.mean(0), threshold=0.01).tolist() == list(range(6))
    assert gi.expressed_genes(ctrl_cells, x_kind="counts").tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match="no cells"):
        gi.mean_changes(adata, reg, ["C"])


def test_interactions_from_cells():
    adata = _cells()
    reg = setup_anndata(adata, "condition", "control")
    tab = gi.interactions_from_cells(adata, reg, ["A+B"], method="lstsq")
    assert tab.loc["A+B", "n_genes"] == 4  # the two barely expressed genes are left out
    assert tab.loc["A+B", ["c1", "c2"]].tolist() == pytest.approx([0.5, 0.5], abs=0.05)
    assert "buffering" in gi.describe_interaction(tab.loc["A+B"])
    with pytest.raises(DataError, match="Not doubles"):
        gi.interactions_from_cells(adata, reg, ["A"])


# ---------------------------------------------------------------------------------
# in words


def _m(c1, c2, fit=0.95):
    return {"c1": c1, "c2": c2, "magnitude": math.hypot(c1, c2), "model_fit": fit,
            "dominance": abs(math.log10(abs(c1) / abs(c2))) if c1 and c2 else (math.inf if c1 or c2 else math.nan)}


def test_describe_interaction():
    assert gi.describe_interaction(_m(1.05, 0.9)).startswith("additive: the double is close to the sum")
    syn = gi.describe_interaction(_m(1.6, 1.5))
    assert syn.startswith("synergy") and "magnitude 2.19" in syn
    buf = gi.describe_interaction(_m(0.5, 0.5), predicted=True)
    assert buf == "predicted buffering: the double changes genes less than the sum of its parts (magnitude 0.71)."
    dom = gi.describe_interaction({**_m(0.1, 0.95), "single_a": "KLF1", "single_b": "CEBPA"})
    assert "mostly like CEBPA, weight 9.5x that of KLF1" in dom
    assert "mostly like A." in gi.describe_interaction(_m(0.9, 0.0))
    assert gi.describe_interaction(_m(1.0, 1.0, fit=0.3)).startswith("new phenotype")
    assert "opposite directions" in gi.describe_interaction(_m(1.0, -0.8), names=("X", "Y"))
    assert gi.describe_interaction(_m(0.0, 0.0)).startswith("no interaction measurable")
    with pytest.raises(DataError, match="missing 'model_fit'"):
        gi.describe_interaction({"c1": 1, "c2": 1, "magnitude": 1, "dominance": 0})
