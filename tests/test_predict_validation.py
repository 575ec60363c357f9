"""Issue 14, items 10-14: the library validates what predict / latent / label vectors receive.

Each test failed on main before the fix (noted per test)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

import pdae_core as pc
from pdae_core import PDAE, setup_anndata
from pdae_core.data.registry import PerturbationRegistry
from pdae_core.data.synthetic import make_synthetic
from pdae_core.errors import DataError
from pdae_core.models.base import span_check
from pdae_core.models.baselines import LinearBaseline, NoChange


@pytest.fixture(scope="module")
def syn():
    adata, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=30, hidden=16, n_doubles=3,
                              cells_per_condition=40, seed=1)
    return adata


@pytest.fixture(scope="module")
def model(syn):
    reg = setup_anndata(syn, "condition", "control")
    m = PDAE(reg, seed=0, latent_dim=4, hidden_dims=(16,), noise_dim=2)
    m.fit(syn, holdout=["P3+P4"], max_epochs=2, accelerator="cpu", seed=0)
    return m


@pytest.fixture(scope="module")
def linear(syn, model):
    return LinearBaseline().fit(syn, model.registry, holdout=["P3+P4"])


@pytest.fixture()
def ctrl(syn):
    c = syn[syn.obs["condition"] == "control"].copy()
    c.X = np.asarray(c.X, dtype=np.float32).copy()
    return c


def _with(ctrl, i, j, value):
    bad = ctrl.copy()
    bad.X[i, j] = value
    return bad


# ---- item 10: source cells are validated in the library (failed before: NaN predictions) -----


@pytest.mark.parametrize("value,match", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                         (-1.0, "negative values")])
def test_predict_and_latent_refuse_bad_values(model, linear, ctrl, value, match):
    bad = _with(ctrl, 2, 5, value)
    with pytest.raises(DataError, match=match):
        model.predict(bad, "P1")
    with pytest.raises(DataError, match=match):
        pc.predict(model, bad, "P1")
    with pytest.raises(DataError, match=match):
        model.latent(bad)
    with pytest.raises(DataError, match=match):
        linear.predict(bad, "P1")


def test_predict_refuses_raw_counts(model, linear, ctrl):
    counts = ctrl.copy()
    counts.X = np.round(np.expm1(ctrl.X) * 7).astype(np.float32)
    assert counts.X.max() > 1
    for call in (lambda: model.predict(counts, "P1"), lambda: model.latent(counts),
                 lambda: linear.predict(counts, "P1")):
        with pytest.raises(DataError, match="raw counts.*normalize_total"):
            call()


def test_all_zero_source_cells_are_not_counts(model, ctrl):
    zero = ctrl[:3].copy()
    zero.X = np.zeros_like(zero.X)
    assert np.isfinite(model.predict(zero, "P1").X).all()


def test_permuted_genes_are_reordered(model, linear, ctrl):
    perm = np.random.default_rng(0).permutation(ctrl.n_vars)
    shuffled = ctrl[:, perm].copy()
    assert list(shuffled.var_names) != model.registry.gene_names
    ref, got = model.predict(ctrl, "P1+P2", seed=3, n_draws=2), model.predict(shuffled, "P1+P2", seed=3, n_draws=2)
    np.testing.assert_array_equal(got.X, ref.X)
    assert list(got.var_names) == model.registry.gene_names
    np.testing.assert_array_equal(model.latent(shuffled), model.latent(ctrl))
    np.testing.assert_array_equal(linear.predict(shuffled, "P1").X, linear.predict(ctrl, "P1").X)


def test_backed_latent_validated_and_reordered(model, ctrl, tmp_path):
    import anndata as ad

    perm = np.random.default_rng(1).permutation(ctrl.n_vars)
    ctrl[:, perm].copy().write_h5ad(tmp_path / "perm.h5ad")
    backed = ad.read_h5ad(tmp_path / "perm.h5ad", backed="r")
    np.testing.assert_allclose(model.latent(backed, batch_size=16), model.latent(ctrl), rtol=1e-6, atol=1e-6)
    _with(ctrl, 0, 0, np.nan).write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(DataError, match="NaN"):
        model.latent(ad.read_h5ad(tmp_path / "nan.h5ad", backed="r"), batch_size=16)


def test_missing_or_different_genes_are_refused(model, linear, ctrl):
    missing = ctrl[:, 3:].copy()
    for call in (lambda: model.predict(missing, "P1"), lambda: model.latent(missing),
                 lambda: linear.predict(missing, "P1")):
        with pytest.raises(DataError, match=f"missing.*{model.registry.gene_names[0]}"):
            call()
    renamed = ctrl.copy()
    renamed.var_names = [f"other{i}" for i in range(ctrl.n_vars)]
    with pytest.raises(DataError, match="missing"):
        model.predict(renamed, "P1")


# ---- item 11: a huge n_draws is refused before any work (failed before: hang / memory) ---------


def test_huge_n_draws_refused_before_work(model, linear, ctrl):
    for predictor in (model, linear):
        t0 = time.perf_counter()
        with pytest.raises(DataError, match="more than one prediction may hold"):
            predictor.predict(ctrl, "P1", n_draws=10**9)
        assert time.perf_counter() - t0 < 5


def test_chunked_predict_same_numbers_as_before(model, ctrl):
    """Predictions are written chunk by chunk into one preallocated array: same numbers as
    the former concatenation of every chunk."""
    import torch

    got = model.predict(ctrl, "P1+P2", seed=5, n_draws=3, batch_size=7)
    X = torch.as_tensor(np.asarray(ctrl.X))
    L = torch.as_tensor(model.registry.label_matrix(ctrl))
    tgt = torch.as_tensor(model.registry.label_vector("P1+P2"))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        ref = torch.cat([model.module.transfer(X[i:i + 7], L[i:i + 7], tgt.expand(len(X[i:i + 7]), -1), generator=gen)
                         for _ in range(3) for i in range(0, len(X), 7)]).numpy()
    assert got.X.dtype == np.float32 and got.shape == (3 * ctrl.n_obs, ctrl.n_vars)
    np.testing.assert_array_equal(got.X, ref)


# ---- item 12: scale-invariant span test, doses outside the training range --------------------


def test_span_check_is_scale_invariant():
    L = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    for c in (1e-9, 1e-3, 1.0, 1e3, 1e9):
        inside, resid, r1, r2 = span_check(L, c * np.array([1.0, 1.0, 0.0]))
        assert inside and resid < 1e-6 and r1 == r2 == 2, c  # failed before at 1e9
        outside, resid, r1, r2 = span_check(L, c * np.array([1.0, 0.0, 1.0]))
        assert not outside and resid > 0.1 and (r1, r2) == (2, 3), c  # failed before at 1e-9


def test_huge_dose_is_in_span_but_flagged(model, ctrl):
    check = model.extrapolation_check({"P1": 1e9})
    assert check.in_span and "outside the span" not in check.message  # failed before
    assert check.doses_outside_training == ["P1"]
    assert "outside the range of doses seen in training" in check.message and "P1" in check.message
    with pytest.warns(UserWarning, match=r"P1.*1e\+09.*\[0, 1\]"):
        model.predict(ctrl[:4], {"P1": 1e9})


def test_ordinary_targets_are_not_flagged(model, ctrl):
    for target in ("P1", "P1+P2", "P3+P4", {"P1": 0.5, "P2": 1.0}):
        check = model.extrapolation_check(target)
        assert check.doses_outside_training == [] and "range of doses" not in check.message
    assert model.extrapolation_check("P1").message.endswith("in-distribution reconstruction.")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(ctrl[:4], "P1+P2")
    check = model.extrapolation_check({"P1": -2.0})
    assert check.doses_outside_training == ["P1"]


# ---- item 13: empty and bytes targets (failed before: control / raw ValueError) --------------


@pytest.mark.parametrize("target", [[], {}, (), np.array([], dtype=np.float32), "", "  "])
def test_empty_target_is_an_error(model, ctrl, target):
    with pytest.raises(DataError, match="empty.*'control'"):
        model.registry.label_vector(target)
    with pytest.raises(DataError, match="empty"):
        model.predict(ctrl[:4], target)


@pytest.mark.parametrize("target", [b"P1", bytearray(b"P1"), 5, None, {"P1"}, {"P1": "high"}, [("P1", "x")]])
def test_bad_target_types_name_accepted_forms(model, target):
    with pytest.raises(DataError, match="condition name"):
        model.registry.label_vector(target)


def test_control_stays_explicitly_available(model, ctrl):
    reg = model.registry
    assert not reg.label_vector("control").any() and not reg.label_vector(["control"]).any()
    assert not reg.label_vector(np.zeros(reg.n_perturbations)).any()
    assert model.predict(ctrl[:4], "control").n_obs == 4


# ---- item 14: an empty separator is refused by the library (failed before for a registry) -----


def test_empty_separator_is_refused(syn, model):
    with pytest.raises(DataError, match="separator"):
        setup_anndata(syn, "condition", "control", separator="")
    d = model.registry.to_dict()
    for bad in ("", None, 3):
        with pytest.raises(DataError, match="separator"):
            PerturbationRegistry.from_dict({**d, "separator": bad})
    with pytest.raises(DataError, match="separator"):
        PerturbationRegistry("condition", "control", ["A"], ["g"], separator="")
    # related checkpoint fields (item 8) are refused by the registry too, naming the field
    for field, bad in (("preprocessing", "abc"), ("x_kind", "zzz")):
        with pytest.raises(DataError, match=field):
            PerturbationRegistry.from_dict({**d, field: bad})


def test_nochange_unaffected(syn, model, ctrl):
    pred = NoChange().fit(syn, model.registry).predict(ctrl, "P1")
    np.testing.assert_array_equal(pred.X, ctrl.X)
