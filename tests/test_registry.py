"""Data setup: setup_anndata, label vectors/matrices, read_h5ad, detect_x_kind, preprocess."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pdae_core import PDAE, DataError, detect_x_kind, preprocess, read_h5ad, setup_anndata
from pdae_core.data.registry import require_conditions


def make_adata(conds, X=None, n_genes=6, seed=0, genes=None, **obs_cols) -> ad.AnnData:
    """Small log-like AnnData (non-integer, non-negative) with obs['condition'] = conds."""
    rng = np.random.default_rng(seed)
    n = len(conds)
    if X is None:
        X = (rng.random((n, n_genes)) * 3 + 0.01).astype(np.float32)
    genes = genes if genes is not None else [f"g{j}" for j in range(X.shape[1])]
    obs = pd.DataFrame({"condition": list(conds), **obs_cols}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))


CONDS = ["control"] * 4 + ["A"] * 4 + ["B"] * 4 + ["A+C"] * 4


# ---- control label, vocabulary, separator ---------------------------------------------


@pytest.mark.parametrize("label", ["control", "ctrl", "non-targeting", "Non-Targeting"])
def test_control_label_is_auto_detected(label):
    adata = make_adata([label] * 3 + ["KLF1"] * 3 + ["KLF1+MAP2K6"] * 3)
    reg = setup_anndata(adata)
    assert reg.control_label == label
    assert reg.perturbations == ["KLF1", "MAP2K6"]
    assert reg.is_control(label) and not reg.is_control("KLF1")


def test_vocabulary_includes_parts_seen_only_in_combinations():
    reg = setup_anndata(make_adata(CONDS))
    assert reg.perturbations == ["A", "B", "C"]  # C only occurs in "A+C"
    assert reg.n_perturbations == 3
    assert reg.gene_names == [f"g{j}" for j in range(6)]
    assert reg.x_kind == "log1p"


def test_unused_categories_are_ignored():
    adata = make_adata(CONDS)
    adata.obs["condition"] = pd.Categorical(CONDS, categories=["control", "A", "B", "A+C", "ZZZ"])
    assert "ZZZ" not in setup_anndata(adata).perturbations


def test_custom_separator():
    conds = ["ctrl"] * 3 + ["A"] * 3 + ["A_B"] * 3 + ["X+Y"] * 3
    adata = make_adata(conds, perturbation=conds)
    reg = setup_anndata(adata, perturbation_key="perturbation", separator="_")
    assert reg.separator == "_"
    assert reg.control_label == "ctrl"
    assert reg.perturbations == ["A", "B", "X+Y"]  # '+' is not a separator here
    L = reg.label_matrix(adata)
    np.testing.assert_array_equal(L[6], [1, 1, 0])
    np.testing.assert_array_equal(L[9], [0, 0, 1])
    assert reg.condition_name(np.array([1, 1, 0], dtype=np.float32)) == "A_B"


def test_label_matrix_is_multi_hot_and_control_is_zero():
    adata = make_adata(CONDS)
    reg = setup_anndata(adata)
    L = reg.label_matrix(adata)
    assert L.shape == (16, 3) and L.dtype == np.float32
    expected = {"control": [0, 0, 0], "A": [1, 0, 0], "B": [0, 1, 0], "A+C": [1, 0, 1]}
    for i, c in enumerate(CONDS):
        np.testing.assert_array_equal(L[i], expected[c])


def test_label_vector_accepts_every_target_form():
    reg = setup_anndata(make_adata(CONDS))
    np.testing.assert_array_equal(reg.label_vector("A+C"), [1, 0, 1])
    np.testing.assert_array_equal(reg.label_vector("control"), [0, 0, 0])
    np.testing.assert_array_equal(reg.label_vector({"A": 0.5, "C": 2}), [0.5, 0, 2])
    np.testing.assert_array_equal(reg.label_vector(["A", "B"]), [1, 1, 0])
    np.testing.assert_array_equal(reg.label_vector([("A", 0.25), ("C", 3.0)]), [0.25, 0, 3])
    np.testing.assert_array_equal(reg.label_vector([0.0, 2.0, 1.0]), [0, 2, 1])
    np.testing.assert_array_equal(reg.label_vector(np.array([0, 1, 0])), [0, 1, 0])
    # an array of names (e.g. from adata.obs[...].unique()) is a list of names, not a raw vector
    np.testing.assert_array_equal(reg.label_vector(np.array(["A", "C"])), [1, 0, 1])


def test_label_vector_errors_name_the_problem():
    reg = setup_anndata(make_adata(CONDS))
    with pytest.raises(DataError, match=r"Unknown perturbation 'KLF1'"):
        reg.label_vector("A+KLF1")
    with pytest.raises(DataError, match=r"Unknown perturbation 'Z'"):
        reg.label_vector({"Z": 1.0})
    with pytest.raises(DataError, match=r"length 3 .*got 2"):
        reg.label_vector([1.0, 0.0])
    with pytest.raises(DataError, match="NaN or infinite"):
        reg.label_vector(np.array([np.nan, 0, 0]))
    with pytest.raises(DataError, match="not finite"):
        reg.label_vector({"A": float("inf")})
    with pytest.raises(DataError, match="empty part"):
        reg.label_vector("A+")


# ---- doses -------------------------------------------------------------------------------


def test_dose_column_single_value_applies_to_every_part():
    conds = ["control"] * 2 + ["A"] * 2 + ["A+B"] * 2
    doses = [np.nan, np.nan, 0.5, 0.5, 2.0, 2.0]  # control cells need no dose
    adata = make_adata(conds, dose=doses)
    reg = setup_anndata(adata, dose_key="dose")
    assert reg.dose_key == "dose"
    L = reg.label_matrix(adata)
    np.testing.assert_array_equal(L[0], [0, 0])
    np.testing.assert_array_equal(L[2], [0.5, 0])
    np.testing.assert_array_equal(L[4], [2.0, 2.0])


def test_dose_column_per_part_doses():
    conds = ["control", "A", "A+B", "A+B"]
    adata = make_adata(conds, dose=["0", "1.5", "0.5+2", "3"])
    reg = setup_anndata(adata, dose_key="dose")
    L = reg.label_matrix(adata)
    np.testing.assert_array_equal(L, [[0, 0], [1.5, 0], [0.5, 2.0], [3.0, 3.0]])


def test_dose_column_errors_name_column_and_value():
    conds = ["control", "A", "A+B"]
    with pytest.raises(DataError, match=r"'1\+2\+3'.*'dose'.*3 parts.*'A\+B' has 2"):
        setup_anndata(make_adata(conds, dose=["0", "1", "1+2+3"]), dose_key="dose")
    with pytest.raises(DataError, match=r"'high'.*'dose'.*not a number"):
        setup_anndata(make_adata(conds, dose=["0", "high", "1"]), dose_key="dose")
    with pytest.raises(DataError, match=r"'dose'.*not finite"):
        setup_anndata(make_adata(conds, dose=[0.0, np.nan, 1.0]), dose_key="dose")
    with pytest.raises(DataError, match=r"Dose column 'amount' is not in obs"):
        setup_anndata(make_adata(conds), dose_key="amount")


# ---- bad obs ---------------------------------------------------------------------------------


def test_missing_perturbation_column():
    with pytest.raises(DataError, match=r"Perturbation column 'perturbation' is not in obs.*condition"):
        setup_anndata(make_adata(CONDS), perturbation_key="perturbation")


def test_no_control_cells():
    with pytest.raises(DataError, match=r"control cells in perturbation column 'condition'.*control_label="):
        setup_anndata(make_adata(["A"] * 3 + ["B"] * 3))


def test_control_label_given_but_absent():
    with pytest.raises(DataError, match=r"Control label 'DMSO' has no cells in column 'condition'"):
        setup_anndata(make_adata(CONDS), control_label="DMSO")


def test_only_control_cells():
    with pytest.raises(DataError, match=r"only control cells"):
        setup_anndata(make_adata(["control"] * 5))


def test_nan_perturbation_labels():
    conds = ["control", "A", None, "A", np.nan]
    with pytest.raises(DataError, match=r"Perturbation column 'condition' has 2 cells with no value.*c2"):
        setup_anndata(make_adata(conds))


def test_missing_covariate_and_layer():
    with pytest.raises(DataError, match=r"Covariate column 'batch'"):
        setup_anndata(make_adata(CONDS), covariate_key="batch")
    with pytest.raises(DataError, match=r"Layer 'counts' is not in the AnnData"):
        setup_anndata(make_adata(CONDS), layer="counts")


def test_require_conditions_names_empty_conditions():
    adata = make_adata(CONDS)
    reg = setup_anndata(adata)
    require_conditions(adata, reg, ["A", "A+C"])  # present: no error
    with pytest.raises(DataError, match=r"B\+C.*zero cells in column 'condition'"):
        require_conditions(adata, reg, ["A", "B+C"])


def test_fit_with_unknown_holdout_condition():
    adata = make_adata(CONDS)
    model = PDAE.from_anndata(adata, latent_dim=2, hidden_dims=(4,), noise_dim=0)
    with pytest.raises(DataError, match=r"'?B\+C'?.*zero cells"):
        model.fit(adata, holdout=["B+C"], max_epochs=1)
    assert not model.is_trained


def test_fit_accepts_a_single_holdout_name():
    adata = make_adata(CONDS * 2)
    model = PDAE.from_anndata(adata, latent_dim=2, hidden_dims=(4,), noise_dim=0, n_sources=2)
    model.fit(adata, holdout="A+C", max_epochs=1, batch_size=8, cells_per_condition=4)
    assert model.holdout == ["A+C"]
    assert "A+C" not in model.train_conditions


# ---- bad X -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_expression(bad):
    adata = make_adata(CONDS)
    adata.X[3, 2] = bad
    with pytest.raises(DataError, match=r"X contains 1 NaN or infinite"):
        setup_anndata(adata)


def test_negative_expression_names_where_and_suggests_layer():
    adata = make_adata(CONDS)
    adata.X[0, 0] = -0.5
    with pytest.raises(DataError, match=r"X contains negative values.*-0\.5.*layer="):
        setup_anndata(adata)
    adata.layers["scaled"] = adata.X.copy()
    with pytest.raises(DataError, match=r"layer 'scaled' contains negative"):
        detect_x_kind(adata, layer="scaled")


def test_non_numeric_expression():
    X = np.full((len(CONDS), 3), "1.0", dtype=object)
    with pytest.raises(DataError, match=r"non-numeric dtype object"):
        setup_anndata(make_adata(CONDS, X=X))


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicate_gene_names():
    with pytest.raises(DataError, match=r"Gene names are not unique \(KLF1\).*var_names_make_unique"):
        setup_anndata(make_adata(CONDS, genes=["KLF1", "g1", "KLF1", "g3", "g4", "g5"]))


def test_detect_x_kind_counts_vs_log1p():
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(20, 8))
    assert detect_x_kind(make_adata(["control"] * 20, X=counts.astype(np.int64))) == "counts"
    assert detect_x_kind(make_adata(["control"] * 20, X=counts.astype(np.float32))) == "counts"
    assert detect_x_kind(make_adata(["control"] * 20, X=sp.csr_matrix(counts.astype(np.float32)))) == "counts"
    logged = np.log1p(counts).astype(np.float32)
    assert detect_x_kind(make_adata(["control"] * 20, X=logged)) == "log1p"
    assert detect_x_kind(make_adata(["control"] * 20, X=sp.csr_matrix(logged))) == "log1p"
    assert setup_anndata(make_adata(["control"] * 10 + ["A"] * 10, X=counts)).x_kind == "counts"


# ---- files ---------------------------------------------------------------------------------------


def test_read_h5ad_roundtrip(tmp_path):
    adata = make_adata(CONDS)
    adata.write_h5ad(tmp_path / "ok.h5ad")
    back = read_h5ad(tmp_path / "ok.h5ad")
    np.testing.assert_array_equal(np.asarray(back.X), adata.X)
    assert list(back.obs["condition"]) == CONDS


@pytest.mark.filterwarnings("ignore::anndata.OldFormatWarning")
def test_read_h5ad_rejects_non_h5ad(tmp_path):
    text = tmp_path / "cells.h5ad"
    text.write_text("gene,cell\nKLF1,1\n")
    with pytest.raises(DataError, match=r"cells\.h5ad is not an \.h5ad file \(not HDF5\)"):
        read_h5ad(text)
    empty = tmp_path / "empty.h5ad"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.h5ad is not an \.h5ad file"):
        read_h5ad(empty)
    folder = tmp_path / "folder.h5ad"
    folder.mkdir()
    with pytest.raises(DataError, match=r"folder\.h5ad is a directory"):
        read_h5ad(folder)
    with pytest.raises(DataError, match=r"File not found: .*missing\.h5ad"):
        read_h5ad(tmp_path / "missing.h5ad")
    truncated = tmp_path / "truncated.h5ad"
    make_adata(CONDS).write_h5ad(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(DataError, match=r"truncated\.h5ad"):
        read_h5ad(truncated)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["foo"] = np.arange(3)
    with pytest.raises(DataError, match=r"other\.h5 is HDF5 but not a readable AnnData"):
        read_h5ad(other)


# ---- preprocessing ---------------------------------------------------------------------------------


def counts_adata(n_cells=60, n_genes=40, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 3.0, size=n_genes)
    counts = rng.poisson(rates * rng.uniform(0.5, 2.0, size=(n_cells, 1))).astype(np.int64)
    counts[:, 0] += 1  # no empty cell
    conds = ["control"] * (n_cells // 2) + ["A"] * (n_cells - n_cells // 2)
    return make_adata(conds, X=counts)


def test_preprocess_raw_counts():
    raw = counts_adata()
    counts = raw.X.copy()
    out = preprocess(raw, n_top_genes=10)
    assert out is not raw
    np.testing.assert_array_equal(raw.X, counts)  # copy=True leaves the input alone
    assert out.n_vars == 10
    keep = [raw.var_names.get_loc(g) for g in out.var_names]
    np.testing.assert_array_equal(np.asarray(out.layers["counts"]), counts[:, keep])
    expected = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)[:, keep]
    np.testing.assert_allclose(np.asarray(out.X), expected, rtol=1e-5, atol=1e-5)
    assert dict(out.uns["pdae_preprocessing"]) == {
        "input": "counts", "normalize_total": 1e4, "log1p": True, "highly_variable_genes": 10,
    }
    assert detect_x_kind(out) == "log1p"
    reg = setup_anndata(out)
    assert reg.preprocessing == dict(out.uns["pdae_preprocessing"])
    assert reg.x_kind == "log1p" and reg.n_genes == 10


def test_preprocess_leaves_log_data_alone():
    adata = make_adata(CONDS)
    out = preprocess(adata)
    np.testing.assert_array_equal(out.X, adata.X)
    assert "counts" not in out.layers
    assert dict(out.uns["pdae_preprocessing"]) == {"input": "log1p"}


def test_fit_refuses_raw_counts_and_says_to_preprocess():
    raw = counts_adata()
    model = PDAE.from_anndata(raw, latent_dim=2, hidden_dims=(4,), noise_dim=0)
    with pytest.raises(DataError, match=r"raw counts.*pdae_core\.preprocess\(adata\)"):
        model.fit(raw, max_epochs=1)
    assert not model.is_trained
    model.fit(preprocess(raw), max_epochs=1, batch_size=16)  # after preprocessing it trains
    assert model.is_trained


def test_condition_name_with_doses_round_trips(tiny_adata):
    from pdae_core import setup_anndata

    reg = setup_anndata(tiny_adata, "condition", "control")
    vec = reg.label_vector({"P1": 0.5, "P2": 1.0})
    name = reg.condition_name(vec)
    assert name == "P1:0.5+P2"
    np.testing.assert_array_equal(reg.label_vector(name), vec)
