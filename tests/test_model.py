"""Model and prediction API of PDAE on the tiny synthetic data, and one real-data integration test."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from pdae_core import PDAE, DataError, setup_anndata

SMALL = dict(latent_dim=3, hidden_dims=(16,), noise_dim=2, n_sources=4)
FAST = dict(max_epochs=1, batch_size=64, seed=0, accelerator="cpu")



def small_model(adata, **kw) -> PDAE:
    return PDAE.from_anndata(adata, **{**SMALL, **kw})


def cells_of(adata, condition):
    return adata[adata.obs["condition"] == condition]


# ---- prediction targets ----------------------------------------------------------------------


def test_tiny_fixture_layout(tiny_adata):
    reg = setup_anndata(tiny_adata)
    assert reg.perturbations == ["P1", "P2", "P3", "P4"]
    assert reg.control_label == "control"
    assert tiny_adata.obs["condition"].nunique() == 8


def test_predict_target_forms_agree(tiny_adata):
    model = small_model(tiny_adata)
    src = cells_of(tiny_adata, "control")[:10]
    double = tiny_adata.obs["condition"][tiny_adata.obs["n_perturbations"] == 2].iloc[0]
    a, b = double.split("+")
    vec = model.registry.label_vector(double)
    assert vec.sum() == 2
    forms = [double, [a, b], {a: 1.0, b: 1.0}, [(a, 1.0), (b, 1.0)], vec, vec.tolist()]
    preds = [model.predict(src, t, seed=3).X for t in forms]
    for p in preds[1:]:
        np.testing.assert_array_equal(p, preds[0])
    # doses: a dict, (name, dose) pairs and the raw vector give one prediction, unlike dose 1
    dosed = [{"P1": 0.5, "P3": 2.0}, [("P1", 0.5), ("P3", 2.0)], np.array([0.5, 0, 2.0, 0], dtype=np.float32)]
    dp = [model.predict(src, t, seed=3) for t in dosed]
    for p in dp[1:]:
        np.testing.assert_array_equal(p.X, dp[0].X)
    assert dp[0].uns["pdae_prediction"]["label"] == [0.5, 0.0, 2.0, 0.0]
    assert dp[0].obs["target"].iloc[0] == "P1:0.5+P3:2"
    assert not np.allclose(dp[0].X, model.predict(src, "P1+P3", seed=3).X)


def test_predict_output_layout(tiny_adata):
    model = small_model(tiny_adata)
    src = tiny_adata[::20]  # cells of every condition
    pred = model.predict(src, "P2+P3")
    assert isinstance(pred, ad.AnnData)
    assert pred.shape == (src.n_obs, tiny_adata.n_vars)
    assert list(pred.var_names) == list(tiny_adata.var_names)
    assert pred.X.dtype == np.float32
    for col in ("target", "source_cell", "source_condition", "condition"):
        assert col in pred.obs.columns
    assert (pred.obs["target"] == "P2+P3").all()
    assert list(pred.obs["source_cell"]) == list(src.obs_names)
    assert list(pred.obs["source_condition"]) == list(src.obs["condition"].astype(str))
    assert pred.obs_names.is_unique
    assert pred.uns["pdae_prediction"]["target"] == "P2+P3"
    draws = model.predict(src, "P2+P3", n_draws=3)
    assert draws.shape == (3 * src.n_obs, tiny_adata.n_vars)
    assert sorted(set(draws.obs["draw"])) == [0, 1, 2]
    assert draws.obs_names.is_unique


def test_predict_target_errors(tiny_adata):
    model = small_model(tiny_adata)
    src = cells_of(tiny_adata, "control")[:5]
    with pytest.raises(DataError, match=r"length 4 .*got 3"):
        model.predict(src, np.ones(3, dtype=np.float32))
    with pytest.raises(DataError, match=r"Unknown perturbation 'KLF1'"):
        model.predict(src, "P1+KLF1")
    with pytest.raises(DataError, match=r"Unknown perturbation 'P9'"):
        model.predict(src, [("P9", 0.5)])
    with pytest.raises(DataError, match="No source cells"):
        model.predict(src[:0], "P1")
    with pytest.raises(ValueError, match="n_draws must be >= 1"):
        model.predict(src, "P1", n_draws=0)
    wrong_genes = src[:, :20].copy()
    with pytest.raises(DataError, match=r"expects 30 genes.*has 20"):
        model.predict(wrong_genes, "P1")


# ---- latent space, W, additivity -----------------------------------------------------------


def test_latent_shape_and_basal_state(tiny_adata):
    model = small_model(tiny_adata)
    z = model.latent(tiny_adata)
    assert z.shape == (tiny_adata.n_obs, 3)
    assert model.latent(tiny_adata[:0]).shape == (0, 3)
    assert np.all(np.isfinite(z))
    # the same expression observed under P2 has its P2 shift removed from the basal state
    ctrl = cells_of(tiny_adata, "control").copy()
    relabelled = ctrl.copy()
    relabelled.obs["condition"] = "P2"
    W = model.perturbation_embedding()
    np.testing.assert_allclose(
        model.latent(ctrl) - model.latent(relabelled), np.tile(W.loc["P2"].to_numpy(), (ctrl.n_obs, 1)), atol=1e-5
    )


def test_perturbation_embedding_rows_are_vocabulary(tiny_adata):
    model = small_model(tiny_adata)
    emb = model.perturbation_embedding()
    assert list(emb.index) == model.registry.perturbations
    assert emb.shape == (4, 3)
    np.testing.assert_array_equal(emb.to_numpy(), model.module.perturbation_matrix.detach().numpy().T)


def test_latent_shifts_are_additive(tiny_adata):
    model = small_model(tiny_adata)
    model.fit(tiny_adata, **FAST)  # also after training
    reg, mod = model.registry, model.module
    emb = model.perturbation_embedding()
    with torch.no_grad():
        for a, b in [("P1", "P2"), ("P2", "P4"), ("P1", "P3")]:
            la, lb = (torch.as_tensor(reg.label_vector(p)) for p in (a, b))
            both = mod.shift(la + lb)
            torch.testing.assert_close(both, mod.shift(la) + mod.shift(lb))
            torch.testing.assert_close(mod.shift(torch.as_tensor(reg.label_vector(f"{a}+{b}"))), both)
            np.testing.assert_allclose(both.numpy(), (emb.loc[a] + emb.loc[b]).to_numpy(), atol=1e-6)
            # doses scale the shift
            torch.testing.assert_close(mod.shift(2.5 * la), 2.5 * mod.shift(la))


# ---- decoder -------------------------------------------------------------------------------------


def test_deterministic_decoder_ignores_seed(tiny_adata):
    src = cells_of(tiny_adata, "P1")[:10]
    det = small_model(tiny_adata, noise_dim=0)
    np.testing.assert_array_equal(det.predict(src, "P3", seed=0).X, det.predict(src, "P3", seed=1).X)
    noisy = small_model(tiny_adata, noise_dim=2)
    np.testing.assert_array_equal(noisy.predict(src, "P3", seed=5).X, noisy.predict(src, "P3", seed=5).X)
    assert not np.allclose(noisy.predict(src, "P3", seed=0).X, noisy.predict(src, "P3", seed=1).X)


def test_softplus_output_is_non_negative(tiny_adata):
    src = tiny_adata[::4]
    far = {"P1": 30.0, "P2": -30.0}  # far outside the data: large pre-activations of both signs
    pos = small_model(tiny_adata).predict(src, far)
    assert pos.X.min() >= 0.0
    assert isinstance(small_model(tiny_adata).module.decoder[-1], torch.nn.Softplus)
    raw = small_model(tiny_adata, softplus_output=False).predict(src, far)
    assert raw.X.min() < 0.0  # the check above would catch a decoder without softplus


# ---- extrapolation check ------------------------------------------------------------------------


def test_heldout_double_of_trained_singles_is_in_span(tiny_adata):
    model = small_model(tiny_adata)
    untrained = model.extrapolation_check("P1+P2")
    assert not untrained.in_span and "not trained" in untrained.message
    model.fit(tiny_adata, holdout=["P1+P2"], **FAST)
    assert model.holdout == ["P1+P2"] and "P1+P2" not in model.train_conditions
    chk = model.extrapolation_check("P1+P2")
    assert chk.in_span and not chk.measured_in_training
    assert chk.unseen_perturbations == []
    assert "span" in chk.message
    assert model.extrapolation_check("P2").measured_in_training
    pred = model.predict(cells_of(tiny_adata, "control"), "P1+P2")
    info = pred.uns["pdae_prediction"]["extrapolation"]
    assert info["in_span"] is True and info["measured_in_training"] is False


def test_target_using_only_heldout_perturbation_is_out_of_span(tiny_adata):
    with_p1 = [c for c in tiny_adata.obs["condition"].unique() if "P1" in c.split("+")]
    assert "P1" in with_p1 and len(with_p1) >= 2
    model = small_model(tiny_adata)
    model.fit(tiny_adata, holdout=with_p1, **FAST)
    assert "P1" in model.registry.perturbations  # still in the vocabulary
    for target in ("P1", "P1+P3", {"P1": 0.5}):
        chk = model.extrapolation_check(target)
        assert not chk.in_span
        assert chk.unseen_perturbations == ["P1"]
        assert "P1" in chk.message and "outside the span" in chk.message
        assert chk.rank_with_target == chk.rank_train + 1
    pred = model.predict(cells_of(tiny_adata, "control")[:5], "P1+P3")
    assert pred.uns["pdae_prediction"]["extrapolation"]["in_span"] is False
    assert model.extrapolation_check("P3+P4").in_span


# ---- real data ------------------------------------------------------------------------------------

NORMAN_DOUBLES = ["KLF1+MAP2K6", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2", "KLF1+TGFBR2"]


@pytest.mark.slow
def test_norman_slice_heldout_doubles(data_dir):
    full = ad.read_h5ad(data_dir / "perturbench_devel.h5ad")
    norman = full[full.obs["dataset"] == "norman19"].copy()
    reg = setup_anndata(norman, perturbation_key="condition")
    assert reg.control_label == "control"
    conds = set(norman.obs["condition"].astype(str))
    non_control = conds - {"control"}
    assert len(non_control) == 33
    assert sum("+" not in c for c in non_control) == 18
    assert set(NORMAN_DOUBLES) <= non_control
    parts = {p for c in non_control for p in c.split("+")}
    assert reg.perturbations == sorted(parts)
    assert reg.x_kind == "log1p" and reg.n_genes == 500

    model = PDAE.from_anndata(norman, latent_dim=4, hidden_dims=(32,), noise_dim=2, n_sources=4)
    hist = model.fit(norman, holdout=NORMAN_DOUBLES, max_epochs=2, batch_size=256, eval_every=1, seed=0)
    assert [r["epoch"] for r in hist.records] == [1, 2]
    assert all(np.isfinite(r["val_ed"]) for r in hist.records)
    assert sorted(model.holdout) == sorted(NORMAN_DOUBLES)
    assert not set(NORMAN_DOUBLES) & set(model.train_conditions)
    assert len(model.train_conditions) == 34 - 5

    ctrl = cells_of(norman, "control")
    pred = model.predict(ctrl, "KLF1+MAP2K6")
    assert pred.shape == (ctrl.n_obs, 500)
    assert np.all(np.isfinite(pred.X)) and pred.X.min() >= 0
    assert (pred.obs["source_condition"] == "control").all()
    assert (pred.obs["target"] == "KLF1+MAP2K6").all()
    for double in NORMAN_DOUBLES:
        chk = model.extrapolation_check(double)
        assert chk.in_span, chk.message
        assert not chk.measured_in_training and chk.unseen_perturbations == []
