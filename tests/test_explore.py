"""Exploration helpers (pdae_core.explore) on small synthetic and hand-built data.

One UMAP is fitted in the whole module (the module-scoped ``reference`` fixture):
umap-learn compiles its numba kernels on first use, which dominates the runtime.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from pdae_core import PDAE, DataError, setup_anndata
from pdae_core import explore as ex
from pdae_core.data.columns import control_candidates, guess_columns
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.baselines import AdditiveBaseline
from pdae_core.plot.style import ADDITIVE, CONTROL, OBSERVED, PREDICTED

N_CELLS = 40  # per condition of the synthetic data
MAX_SRC = 25


# ---- fixtures ---------------------------------------------------------------------------


def hand_adata(obs: dict, X: np.ndarray | None = None, n_genes: int = 3) -> ad.AnnData:
    obs_df = pd.DataFrame(obs)
    n = len(obs_df)
    obs_df.index = [f"c{i}" for i in range(n)]
    if X is None:
        X = np.random.default_rng(0).uniform(0.1, 2.0, size=(n, n_genes)).astype(np.float32)
    var = pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])])
    return ad.AnnData(X, obs=obs_df, var=var)


@pytest.fixture(scope="module")
def syn() -> ad.AnnData:
    """control, P1, P2, P3, P1+P2, P1+P3, P2+P3: 40 cells each, 20 genes (280 cells)."""
    adata, _ = make_synthetic(n_perturbations=3, latent_dim=3, n_genes=20, hidden=16, n_doubles=3,
                              cells_per_condition=N_CELLS, seed=0)
    return adata


@pytest.fixture(scope="module")
def reg(syn):
    return setup_anndata(syn, "condition")


@pytest.fixture(scope="module")
def model(syn, reg) -> PDAE:
    """A tiny PDAE trained for 2 epochs with the single P1 held out."""
    m = PDAE(reg, hidden_dims=(16,), latent_dim=4)
    m.fit(syn, holdout=["P1"], max_epochs=2, batch_size=64, seed=0, accelerator="cpu")
    return m


@pytest.fixture(scope="module")
def additive(syn, model) -> AdditiveBaseline:
    return ex.fit_additive(syn, model)


@pytest.fixture(scope="module")
def result(model, syn, additive) -> ex.WhatIf:
    """P2+P3 from control: measured, and both parts measured alone in training."""
    return ex.what_if(model, syn, {"P2": 1.0, "P3": 1.0}, max_source_cells=MAX_SRC, additive=additive)


@pytest.fixture(scope="module")
def dosed(model, syn, additive) -> ex.WhatIf:
    """P1 at dose 0.5 + P2: never measured, and P1 alone is held out of the additive baseline."""
    return ex.what_if(model, syn, {"P2": 1.0, "P1": 0.5}, max_source_cells=MAX_SRC, additive=additive)


@pytest.fixture(scope="module")
def reference(syn) -> ex.ReferenceEmbedding:
    return ex.ReferenceEmbedding(syn, "condition", n_pcs=10)


# ---- guess_columns ------------------------------------------------------------------------


@pytest.mark.parametrize("ctrl", ["ctrl", "non-targeting", "Control"])
def test_guess_columns_prefers_column_with_control_label(ctrl):
    n = 40
    labels = [ctrl] * 4 + ["A"] * 14 + ["B"] * 12 + ["A+B"] * 10  # control is the rarest label
    adata = hand_adata({
        "cell_id": [f"AAAC{i:04d}" for i in range(n)],  # per-cell ids: first, string, many values
        "n_counts": np.arange(n) * 100,  # numeric: never a candidate
        "gene": ["KLF1", "MAP2K6", "CEBPA", "SPI1"] * 10,  # a hinted name but no control label
        "treatment": labels,
        "cell_type": ["K562", "RPE1"] * 20,
    })
    g = guess_columns(adata)
    assert g.perturbation_key == "treatment"
    assert g.control_label == ctrl
    assert g.perturbation_candidates[0] == "treatment"
    assert g.perturbation_candidates[-1] == "cell_id"  # penalised as id-like
    assert "n_counts" not in g.perturbation_candidates
    assert g.covariate_key == "cell_type"
    assert g.covariate_candidates[0] == "cell_type"
    assert "treatment" not in g.covariate_candidates


def test_guess_columns_ignores_single_valued_covariate():
    adata = hand_adata({
        "condition": ["ctrl", "A", "B", "A+B"] * 5,
        "cell_type": ["K562"] * 20,  # one value: not a covariate (nor a perturbation column)
        "batch": ["b1", "b2"] * 10,  # two values but not a covariate-like name
    })
    g = guess_columns(adata)
    assert g.perturbation_key == "condition"
    assert g.control_label == "ctrl"
    assert g.covariate_key is None
    assert "cell_type" not in g.covariate_candidates
    assert "cell_type" not in g.perturbation_candidates
    assert g.covariate_candidates == ["batch"]


def test_guess_columns_named_covariate_wins_over_others():
    adata = hand_adata({
        "condition": ["ctrl", "A", "B", "A+B"] * 5,
        "batch": ["b1", "b2"] * 10,
        "cell_type": ["T", "B", "T", "NK"] * 5,
    })
    g = guess_columns(adata)
    assert g.covariate_key == "cell_type"
    assert g.covariate_candidates == ["cell_type", "batch"]


def test_guess_columns_control_none_when_no_control_like_label():
    adata = hand_adata({"condition": ["A", "B", "A+B", "B"] * 5})
    g = guess_columns(adata)
    assert g.perturbation_key == "condition"
    assert g.control_label is None


def test_guess_columns_nothing_fits():
    adata = hand_adata({
        "n_counts": np.arange(12, dtype=float),
        "n_genes": np.arange(12),
        "sample": ["s1"] * 12,  # a single value
    })
    g = guess_columns(adata)
    assert g.perturbation_key is None
    assert g.control_label is None
    assert g.covariate_key is None
    assert g.perturbation_candidates == []
    assert g.covariate_candidates == []


# ---- control_candidates -------------------------------------------------------------------


def test_control_candidates_control_first_then_by_count():
    labels = ["A"] * 10 + ["B"] * 5 + ["ctrl"] * 3 + ["C"] * 7 + ["D"] * 5
    adata = hand_adata({"cond": pd.Categorical(labels, categories=["A", "B", "C", "D", "E", "ctrl"])})
    # control first although rarest; then by count; ties (B, D) by name; unused "E" absent
    assert control_candidates(adata, "cond") == ["ctrl", "A", "C", "B", "D"]


def test_control_candidates_missing_column():
    adata = hand_adata({"cond": ["ctrl", "A"] * 3})
    with pytest.raises(DataError, match="'perturbation'"):
        control_candidates(adata, "perturbation")


# ---- summarize_dataset --------------------------------------------------------------------


def test_summarize_dataset_hand_built_counts():
    conds = ["ctrl"] * 4 + ["A"] * 3 + ["B"] * 2 + ["A+B"] * 2 + ["A+C"] * 2  # C never alone
    X = np.random.default_rng(1).integers(0, 20, size=(len(conds), 5)).astype(np.float32)
    adata = hand_adata({"condition": conds}, X=X)
    reg = setup_anndata(adata, "condition")
    s = ex.summarize_dataset(adata, reg)
    assert (s.n_cells, s.n_genes, s.n_perturbations) == (13, 5, 3)
    assert s.x_kind == "counts"
    assert s.control_label == "ctrl"
    assert s.n_singles == 2
    assert s.n_combinations == 2
    assert s.combinations_with_parts == ["A+B"]
    t = s.conditions.set_index("condition")
    assert list(s.conditions.columns) == ["condition", "n_cells", "kind", "n_parts", "parts_measured"]
    assert t.loc["ctrl", "kind"] == "control" and not t.loc["ctrl", "parts_measured"]
    assert t.loc["A", "kind"] == "single" and t.loc["A", "parts_measured"]
    assert t.loc["A+C", "kind"] == "combination" and not t.loc["A+C", "parts_measured"]
    assert t.loc["A+B", "parts_measured"]
    assert t["n_cells"].to_dict() == {"ctrl": 4, "A": 3, "B": 2, "A+B": 2, "A+C": 2}
    assert t.loc["A+C", "n_parts"] == 2 and t.loc["ctrl", "n_parts"] == 0
    assert s.conditions["n_cells"].sum() == s.n_cells


def test_summarize_dataset_synthetic(syn, reg):
    s = ex.summarize_dataset(syn, reg)
    assert s.x_kind == "log1p"
    assert (s.n_cells, s.n_genes, s.n_perturbations) == (7 * N_CELLS, 20, 3)
    assert (s.n_singles, s.n_combinations) == (3, 3)
    assert sorted(s.combinations_with_parts) == ["P1+P2", "P1+P3", "P2+P3"]
    # the same data without P1 alone: P1's combinations lose their measured parts
    sub = syn[syn.obs["condition"].astype(str) != "P1"]
    s2 = ex.summarize_dataset(sub, reg)
    assert s2.n_singles == 2
    assert s2.combinations_with_parts == ["P2+P3"]


# ---- top_changed_genes --------------------------------------------------------------------


def test_top_changed_genes_hand_computed():
    control = np.array([[1, 2, 3, 4], [3, 2, 1, 0]], dtype=float)  # mean 2, 2, 2, 2
    predicted = np.array([[2.5, 2, 0, 5], [2.5, 2, 0, 7]])  # mean 2.5, 2, 0, 6: delta .5, 0, -2, 4
    observed = np.array([[1.0, 1.0, 1.0, 3.0]])  # delta -1, -1, -1, 1
    df = ex.top_changed_genes(control, predicted, observed, None, ["a", "b", "c", "d"])
    assert list(df.columns) == [
        "rank", "gene", "control_mean", "predicted_mean", "predicted_delta", "observed_delta", "additive_delta",
    ]
    assert df["gene"].tolist() == ["d", "c", "a", "b"]
    assert df["rank"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(df["predicted_delta"], [4.0, -2.0, 0.5, 0.0])
    np.testing.assert_allclose(df["control_mean"], 2.0)
    np.testing.assert_allclose(df["predicted_mean"], [6.0, 0.0, 2.5, 2.0])
    np.testing.assert_allclose(df["observed_delta"], [1.0, -1.0, -1.0, -1.0])
    assert df["additive_delta"].isna().all()
    top2 = ex.top_changed_genes(control, predicted, None, predicted + 1.0, ["a", "b", "c", "d"], n=2)
    assert top2["gene"].tolist() == ["d", "c"]
    assert top2["observed_delta"].isna().all()
    np.testing.assert_allclose(top2["additive_delta"], [5.0, -1.0])


def test_top_changed_genes_length_mismatch():
    c = np.ones((3, 4))
    with pytest.raises(ValueError, match="differ in length"):
        ex.top_changed_genes(c, np.ones((2, 4)), None, None, ["a", "b", "c"])
    with pytest.raises(ValueError):
        ex.top_changed_genes(c, np.ones((2, 3)), None, None, ["a", "b", "c", "d"])


# ---- fit_additive and what_if -------------------------------------------------------------


def test_fit_additive_uses_model_holdout(syn, reg, model, additive):
    assert model.holdout == ["P1"]
    assert additive.holdout == ["P1"]
    np.testing.assert_array_equal(additive.n_single_cells_, [0, N_CELLS, N_CELLS])
    direct = AdditiveBaseline().fit(syn, reg, ["P1"])
    np.testing.assert_allclose(additive.effects_, direct.effects_, equal_nan=True)
    # on data without the held-out condition, the holdout is dropped instead of failing
    sub = syn[syn.obs["condition"].astype(str) != "P1"]
    a2 = ex.fit_additive(sub, model)
    assert a2.holdout == []
    assert a2.n_single_cells_[0] == 0


def test_what_if_measured_double(result, syn, reg, additive):
    r = result
    assert r.target == "P2+P3"
    np.testing.assert_array_equal(r.label, [0.0, 1.0, 1.0])
    assert r.check.target == "P2+P3" and r.check.measured_in_training
    assert r.predicted.n_obs == min(MAX_SRC, N_CELLS)
    assert r.predicted.shape[1] == reg.n_genes
    assert r.control.n_obs == min(MAX_SRC, N_CELLS)
    assert (r.control.obs["condition"].astype(str) == "control").all()
    # the source is the control sample shown beside the prediction
    assert list(r.predicted.obs["source_cell"]) == list(r.control.obs_names)
    assert r.observed is not None and r.observed.n_obs == N_CELLS
    assert set(r.observed.obs["condition"].astype(str)) == {"P2+P3"}
    assert r.additive is not None and r.additive_note is None
    assert r.additive.shape == r.predicted.shape
    effect = additive.effects_[1] + additive.effects_[2]
    ctrl = reg.expression(r.control)
    np.testing.assert_allclose(r.additive.X, ctrl + effect, rtol=1e-5, atol=1e-5)
    # the gene table is computed from these cells
    t = r.top_genes.set_index("gene").loc[reg.gene_names]
    np.testing.assert_allclose(t["control_mean"], ctrl.mean(0), atol=1e-5)
    np.testing.assert_allclose(t["predicted_delta"], np.asarray(r.predicted.X).mean(0) - ctrl.mean(0), atol=1e-5)
    np.testing.assert_allclose(t["observed_delta"], reg.expression(r.observed).mean(0) - ctrl.mean(0), atol=1e-5)
    np.testing.assert_allclose(t["additive_delta"], effect, atol=1e-4)
    assert len(r.top_genes) == reg.n_genes
    d = np.abs(r.top_genes["predicted_delta"].to_numpy())
    assert np.all(d[:-1] >= d[1:])


def test_what_if_dose_and_missing_additive_part(dosed):
    r = dosed
    assert r.target == "P1:0.5+P2"
    np.testing.assert_allclose(r.label, [0.5, 1.0, 0.0])
    assert r.observed is None  # never measured at dose 0.5
    assert r.additive is None
    assert isinstance(r.additive_note, str) and "P1" in r.additive_note
    assert r.top_genes["observed_delta"].isna().all()
    assert r.top_genes["additive_delta"].isna().all()
    assert not r.check.measured_in_training


def test_what_if_measured_but_part_held_out(model, syn, additive):
    r = ex.what_if(model, syn, {"P2": 1, "P1": 1}, max_source_cells=None, additive=additive)
    assert r.target == "P1+P2"
    assert r.predicted.n_obs == N_CELLS  # no cap: every control cell
    assert r.observed is not None and r.observed.n_obs == N_CELLS
    assert r.additive is None and "P1" in r.additive_note
    assert r.top_genes["observed_delta"].notna().all()
    # without an additive baseline there is no note either
    r2 = ex.what_if(model, syn, {"P1": 1, "P2": 1}, max_source_cells=10)
    assert r2.additive is None and r2.additive_note is None
    assert r2.predicted.n_obs == 10


def test_what_if_observed_matches_label_not_spelling(model, syn):
    swapped = syn.copy()
    cond = swapped.obs["condition"].astype(str)
    swapped.obs["condition"] = cond.replace({"P2+P3": "P3+P2"}).to_numpy()
    r = ex.what_if(model, swapped, {"P2": 1, "P3": 1}, max_source_cells=5)
    assert r.target == "P2+P3"
    assert r.observed is not None and r.observed.n_obs == N_CELLS
    assert set(r.observed.obs["condition"]) == {"P3+P2"}


def test_what_if_source_condition(model, syn):
    r = ex.what_if(model, syn, {"P3": 1}, source_condition="P2", max_source_cells=7, seed=3)
    assert r.predicted.n_obs == 7
    assert set(r.predicted.obs["source_condition"]) == {"P2"}
    assert r.control.n_obs == 7 and set(r.control.obs["condition"].astype(str)) == {"control"}
    assert r.target == "P3"
    assert r.observed is not None and set(r.observed.obs["condition"].astype(str)) == {"P3"}


def test_what_if_errors(model, syn):
    with pytest.raises(DataError, match="non-zero weight"):
        ex.what_if(model, syn, {"P1": 0, "P2": 0.0})
    with pytest.raises(DataError, match="non-zero weight"):
        ex.what_if(model, syn, {})
    with pytest.raises(DataError, match="'nope'"):
        ex.what_if(model, syn, {"P1": 1}, source_condition="nope")
    with pytest.raises(DataError, match="P9"):
        ex.what_if(model, syn, {"P9": 1})


# ---- reference embedding ------------------------------------------------------------------


def test_reference_embedding_layout(reference, syn, reg):
    ref = reference
    assert ref.coords.shape == (syn.n_obs, 2)
    assert np.isfinite(ref.coords).all()
    assert list(ref.obs_names) == list(syn.obs_names)
    assert list(ref.conditions) == list(syn.obs["condition"].astype(str))
    # reference rows land (nearly) on their own coordinates
    rows = np.arange(0, syn.n_obs, 13)
    xy = ref.transform(reg.expression(syn[rows]))
    assert xy.shape == (len(rows), 2) and xy.dtype == np.float32
    spread = float(np.ptp(ref.coords, axis=0).max())
    np.testing.assert_allclose(xy, ref.coords[rows], atol=1e-3 * spread)
    # coordinates by obs name; unknown names are skipped
    names = list(syn.obs_names[[5, 100, 3]]) + ["not-a-cell"]
    np.testing.assert_array_equal(ref.coords_of(names), ref.coords[[5, 100, 3]])


def test_reference_embedding_bad_input(reference):
    with pytest.raises(DataError, match="20 genes"):
        reference.transform(np.zeros((3, 19)))
    with pytest.raises(DataError):
        reference.transform(np.zeros(20))


def test_reference_embedding_subsample(syn, reference):
    sub = ex.ReferenceEmbedding(syn, "condition", n_pcs=5, max_cells=60, seed=1)
    assert sub.coords.shape == (60, 2)
    assert set(sub.obs_names) <= set(map(str, syn.obs_names))
    assert len(set(sub.obs_names)) == 60


def _group_counts(groups):
    return pd.Series(groups).value_counts().to_dict()


def test_what_if_embedding_groups(reference, result, syn):
    coords, groups, hover = ex.what_if_embedding(reference, result)
    assert len(coords) == len(groups) == len(hover)
    assert coords.shape[1] == 2 and np.isfinite(coords).all()
    n = _group_counts(groups)
    assert n == {
        ex.OTHER_CELLS: syn.n_obs - result.control.n_obs - result.observed.n_obs,
        CONTROL: result.control.n_obs,
        OBSERVED: result.observed.n_obs,
        PREDICTED: result.predicted.n_obs,
    }
    g = np.asarray(groups)
    # control and observed cells sit at their own reference coordinates
    np.testing.assert_array_equal(coords[g == CONTROL], reference.coords_of(result.control.obs_names))
    np.testing.assert_array_equal(coords[g == OBSERVED], reference.coords_of(result.observed.obs_names))
    assert all("predicted P2+P3 from cell" in h for h, k in zip(hover, groups) if k == PREDICTED)
    # with the additive baseline's cells
    coords2, groups2, _ = ex.what_if_embedding(reference, result, include_additive=True)
    assert _group_counts(groups2)[ADDITIVE] == result.additive.n_obs
    assert len(coords2) == len(coords) + result.additive.n_obs


def test_what_if_embedding_unmeasured_and_subsampled_reference(reference, dosed, syn):
    _, groups, _ = ex.what_if_embedding(reference, dosed, include_additive=True)  # no additive: skipped
    n = _group_counts(groups)
    assert set(n) == {ex.OTHER_CELLS, CONTROL, PREDICTED}
    assert n[ex.OTHER_CELLS] == syn.n_obs - dosed.control.n_obs
    # a reference that embedded only some of the control cells places them all anyway
    small = ex.ReferenceEmbedding(syn, "condition", n_pcs=5, max_cells=60, seed=2)
    coords, groups, _ = ex.what_if_embedding(small, dosed)
    n = _group_counts(groups)
    assert n[CONTROL] == dosed.control.n_obs and n[PREDICTED] == dosed.predicted.n_obs
    in_ref = np.isin(small.obs_names, list(map(str, dosed.control.obs_names))).sum()
    assert n.get(ex.OTHER_CELLS, 0) == 60 - in_ref
    assert len(coords) == len(groups)


def test_what_if_embedding_uses_reference_layer(syn, reference, result):
    """Dataset cells missing from a subsampled reference are placed from the
    reference's layer, like the cells it embedded, not from X."""
    layered = syn.copy()
    layered.layers["logn"] = layered.X.copy()
    layered.X = layered.X * 50.0 + 7.0  # a different scale in X (e.g. counts)
    small = ex.ReferenceEmbedding(layered, "condition", layer="logn", n_pcs=5, max_cells=60, seed=2)
    control = layered[result.control.obs_names]
    wi = ex.WhatIf(result.target, result.label, result.check, result.predicted, control, None, None, None,
                   result.top_genes)
    coords, groups, _ = ex.what_if_embedding(small, wi)
    g = np.asarray(groups)
    # every dataset cell was placed when the map was fitted: sampled cells at their UMAP position,
    # the others from the layer
    placed = coords[g == CONTROL]
    np.testing.assert_array_equal(placed, small.coords_of(control.obs_names))
    unsampled = ~np.isin(np.asarray(control.obs_names, dtype=str), small.obs_names)
    assert unsampled.any()
    np.testing.assert_allclose(placed[unsampled], small.transform(control[unsampled].layers["logn"]), rtol=1e-5)
    np.testing.assert_allclose(coords[g == PREDICTED], small.transform(np.asarray(result.predicted.X)))


def test_gene_values(result, dosed, reg):
    genes = ["gene3", "gene0"]
    v = ex.gene_values(result, genes, reg)
    assert set(v) == {CONTROL, PREDICTED, OBSERVED, ADDITIVE}
    assert v[CONTROL].shape == (result.control.n_obs, 2)
    assert v[PREDICTED].shape == (result.predicted.n_obs, 2)
    assert v[OBSERVED].shape == (result.observed.n_obs, 2)
    assert v[ADDITIVE].shape == (result.additive.n_obs, 2)
    np.testing.assert_array_equal(v[CONTROL], reg.expression(result.control)[:, [3, 0]])
    np.testing.assert_array_equal(v[PREDICTED], np.asarray(result.predicted.X)[:, [3, 0]])
    assert set(ex.gene_values(dosed, ["gene1"], reg)) == {CONTROL, PREDICTED}
    with pytest.raises(DataError, match="nope"):
        ex.gene_values(result, ["gene1", "nope"], reg)


def test_umap_2d(reference):  # reference first: umap's numba kernels are compiled by then
    X = np.random.default_rng(0).standard_normal((12, 5))
    a, b = ex.umap_2d(X, seed=1), ex.umap_2d(X, seed=1)
    assert a.shape == (12, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    small = ex.umap_2d(X[:3])  # PCA below 4 rows
    assert small.shape == (3, 2) and np.isfinite(small).all()


# ---- latent space and perturbation embedding ----------------------------------------------


def test_latent_embedding(model, syn, reg):
    zb = ex.latent_embedding(model, syn)
    z = ex.latent_embedding(model, syn, which="z")
    assert zb.shape == z.shape == (syn.n_obs, 4)
    W = model.perturbation_embedding().to_numpy()
    assert W.shape == (3, 4)
    np.testing.assert_allclose(z - zb, reg.label_matrix(syn) @ W, atol=1e-5)
    with torch.no_grad():
        enc = model.module.encode(torch.as_tensor(reg.expression(syn))).numpy()
    np.testing.assert_allclose(z, enc, atol=1e-5)  # z is the encoded cell
    ctrl = (syn.obs["condition"].astype(str) == "control").to_numpy()
    np.testing.assert_array_equal(z[ctrl], zb[ctrl])
    with pytest.raises(ValueError, match="which"):
        ex.latent_embedding(model, syn, which="latent")


def test_perturbation_projection(model):
    coords, ratio = ex.perturbation_projection(model.perturbation_embedding())
    assert coords.shape == (3, 2) and ratio.shape == (2,)
    assert np.all(ratio >= 0) and ratio.sum() <= 1 + 1e-9
    rng = np.random.default_rng(0)
    W = pd.DataFrame(rng.standard_normal((6, 5)), index=[f"p{i}" for i in range(6)])
    coords, ratio = ex.perturbation_projection(W)
    assert coords.shape == (6, 2)
    assert ratio.sum() <= 1 + 1e-9 and ratio[0] >= ratio[1] > 0
    np.testing.assert_allclose(coords.mean(0), 0.0, atol=1e-5)
    # each axis's share is the variance of its coordinates over the total variance of W
    np.testing.assert_allclose(ratio, coords.var(0) / W.to_numpy().var(0).sum(), rtol=1e-4)
    # rank one: every shift a multiple of one direction
    W1 = pd.DataFrame(np.outer([1.0, -2.0, 0.5, 3.0], [1.0, 2.0, 0.0]))
    _, r1 = ex.perturbation_projection(W1)
    np.testing.assert_allclose(r1, [1.0, 0.0], atol=1e-9)


def test_shift_similarity():
    W = pd.DataFrame(
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [2.0, 0.0, 0.0], [0.0, -1.0, 0.2], [0.0, 0.0, 0.0]],
        index=["a", "b", "d", "c", "e", "zero"],
    )
    S = ex.shift_similarity(W)
    assert sorted(S.index) == sorted(W.index) and list(S.index) == list(S.columns)
    M = S.to_numpy()
    assert np.isfinite(M).all()
    np.testing.assert_allclose(M, M.T)
    np.testing.assert_allclose(np.diag(M), 1.0)
    assert S.loc["a", "c"] == pytest.approx(1.0)
    assert S.loc["a", "b"] == pytest.approx(0.0)
    assert S.loc["b", "e"] == pytest.approx(-1.0 / np.sqrt(1.04))
    assert (S.loc["zero"].drop("zero") == 0).all()
    order = list(S.index)
    assert abs(order.index("a") - order.index("c")) == 1  # same direction: adjacent after clustering
    # without clustering the input order is kept
    S2 = ex.shift_similarity(W, cluster=False)
    assert list(S2.index) == list(W.index)
    np.testing.assert_allclose(S2.loc[S.index, S.columns].to_numpy(), M)
    # two perturbations: no clustering needed, zero row still finite
    S3 = ex.shift_similarity(W.loc[["a", "zero"]])
    np.testing.assert_array_equal(S3.to_numpy(), [[1.0, 0.0], [0.0, 1.0]])


def test_measured_mask_reads_categories_as_the_cells_values():
    """The cells measured under a label: from a categorical column's few categories (unused ones,
    even ones the vocabulary does not know, are skipped) the same cells as from its values."""
    adata, _ = make_synthetic(n_perturbations=3, latent_dim=2, n_genes=8, hidden=4, n_doubles=1,
                              cells_per_condition=5, seed=0)
    reg = setup_anndata(adata, perturbation_key="condition", control_label="control")
    strings = adata.copy()
    strings.obs["condition"] = strings.obs["condition"].astype(str)
    cats = adata.copy()
    cats.obs["condition"] = pd.Categorical(cats.obs["condition"].astype(str),
                                           categories=[*sorted(set(cats.obs["condition"].astype(str))), "UNKNOWN+GENE"])
    for target in sorted(set(strings.obs["condition"])):
        label = reg.label_vector(target)
        want = ex._measured_mask(strings, reg, label)
        assert want.sum() == 5
        np.testing.assert_array_equal(ex._measured_mask(cats, reg, label), want)
