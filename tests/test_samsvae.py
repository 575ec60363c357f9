"""SAMS-VAE (pdae_core.models.samsvae): loss terms against direct computations, shapes, config
validation, fit / predict / save / load on small synthetic data, and one real-data run."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, NegativeBinomial, Normal, kl_divergence

from pdae_core import DataError, PerturbationModel, setup_anndata
from pdae_core.models.samsvae import SAMSVAE, SAMSVAEConfig, SAMSVAEModule

SMALL = dict(latent_dim=3, hidden_dims=(16,))
FAST = dict(batch_size=64, seed=0, accelerator="cpu")
NORMAN_DOUBLES = ["KLF1+MAP2K6", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2", "KLF1+TGFBR2"]


def small_model(adata, **kw) -> SAMSVAE:
    return SAMSVAE.from_anndata(adata, **{**SMALL, **kw})


def cells_of(adata, condition):
    return adata[adata.obs["condition"] == condition]


def a_double(adata) -> str:
    return str(adata.obs["condition"][adata.obs["n_perturbations"] == 2].iloc[0])


def counts_adata(adata, seed=0) -> ad.AnnData:
    """Integer counts whose log-rate is the synthetic expression (for the NB likelihood)."""
    rng = np.random.default_rng(seed)
    out = adata.copy()
    out.X = rng.poisson(3.0 * np.expm1(np.asarray(adata.X))).astype(np.float32)
    return out


# ---- the likelihood (the closed forms are in tests/test_distributions.py) ---------------------


def test_gaussian_log_likelihood_leaves_out_constant_genes():
    torch.manual_seed(1)
    mod = SAMSVAEModule(SAMSVAEConfig(n_genes=7, n_perturbations=2, latent_dim=3, hidden_dims=(8,)))
    g = torch.Generator().manual_seed(1)
    x, z = torch.rand(6, 7, generator=g), torch.randn(6, 3, generator=g)
    with torch.no_grad():
        mod.gene_log_param.copy_(torch.randn(7, generator=g))
    loc, scale = mod.decoder(z), mod.gene_scale
    torch.testing.assert_close(mod.log_likelihood(x, z), Normal(loc, scale).log_prob(x).sum(-1))
    w = torch.tensor([1.0, 0, 1, 1, 0, 1, 1])
    with torch.no_grad():
        mod.gene_varies.copy_(w)
    torch.testing.assert_close(mod.log_likelihood(x, z), (Normal(loc, scale).log_prob(x) * w).sum(-1))


def test_nb_log_likelihood_matches_torch():
    torch.manual_seed(2)
    mod = SAMSVAEModule(SAMSVAEConfig(n_genes=6, n_perturbations=2, latent_dim=3, hidden_dims=(8,), likelihood="nb"))
    g = torch.Generator().manual_seed(2)
    x, z = torch.poisson(torch.rand(4, 6, generator=g) * 20), torch.randn(4, 3, generator=g)
    mu = x.sum(-1, keepdim=True) * torch.softmax(mod.decoder(z), dim=-1)
    theta = mod.gene_log_param.exp()
    ref = NegativeBinomial(total_count=theta.expand_as(mu), probs=mu / (mu + theta)).log_prob(x).sum(-1)
    torch.testing.assert_close(mod.log_likelihood(x, z), ref, rtol=1e-4, atol=1e-3)


# ---- the loss against a direct computation ---------------------------------------------------


@pytest.mark.parametrize("correlated", [True, False])
def test_loss_terms_match_direct_computation(correlated):
    torch.manual_seed(0)
    cfg = SAMSVAEConfig(n_genes=5, n_perturbations=3, latent_dim=2, hidden_dims=(8,), correlated=correlated)
    mod = SAMSVAEModule(cfg)
    with torch.no_grad():
        mod.e_loc.normal_()
        mod.mask_logits.normal_()
        mod.n_cells.copy_(torch.tensor([10.0, 4.0, 0.0]))
    x = torch.rand(4, 5)
    labels = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 2.0, 1]])
    out = mod.loss(x, labels, generator=torch.Generator().manual_seed(3))

    # replay the same draws: globals (one draw shared by the batch), then z_basal
    g = torch.Generator().manual_seed(3)
    e, m = mod.sample_globals(1, g)
    em = (e * m)[0]
    shift = torch.stack([sum(labels[i, t] * em[t] for t in range(3)) for i in range(4)])
    loc, scale = mod.encode(x, shift if correlated else None)
    zb = loc + scale * torch.randn(loc.shape, generator=g)
    mean = mod.decoder(zb + shift)
    nll = -Normal(mean, mod.gene_scale).log_prob(x).sum(-1)
    kl_z = kl_divergence(Normal(loc, scale), Normal(0.0, 1.0)).sum(-1)
    q_e = Normal(mod.e_loc, mod.e_scale)
    kl_e_t = kl_divergence(q_e, Normal(0.0, cfg.embedding_prior_scale)).sum(-1)
    kl_m_t = kl_divergence(Bernoulli(logits=mod.mask_logits), Bernoulli(probs=torch.tensor(cfg.mask_prior))).sum(-1)
    n_t = [10.0, 4.0, 1.0]  # N_t = 0 (never trained) counts as 1
    glob_e = torch.stack([sum(kl_e_t[t] / n_t[t] for t in range(3) if labels[i, t] != 0) + 0.0 * kl_e_t[0] for i in range(4)])
    glob_m = torch.stack([sum(kl_m_t[t] / n_t[t] for t in range(3) if labels[i, t] != 0) + 0.0 * kl_m_t[0] for i in range(4)])

    torch.testing.assert_close(out["nll"], nll.mean())
    torch.testing.assert_close(out["kl_z"], kl_z.mean())
    torch.testing.assert_close(out["kl_embed"], glob_e.mean())
    torch.testing.assert_close(out["kl_mask"], glob_m.mean())
    torch.testing.assert_close(out["loss"], (nll + kl_z + glob_e + glob_m).mean())
    assert float(glob_e[0].detach()) == 0.0  # a control cell carries no global KL
    # straight-through masks are exactly 0/1 in the forward pass
    assert set(torch.unique(m.detach()).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("mask_posterior", ["straight_through", "relaxed"])
def test_gradients_reach_the_global_posteriors(mask_posterior):
    torch.manual_seed(0)
    mod = SAMSVAEModule(SAMSVAEConfig(n_genes=6, n_perturbations=2, latent_dim=3, hidden_dims=(8,),
                                      mask_posterior=mask_posterior))
    labels = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 1.0]])
    mod.loss(torch.rand(3, 6), labels)["loss"].backward()
    for p in (mod.e_loc, mod.e_scale_raw, mod.mask_logits):
        assert p.grad is not None and bool((p.grad.abs().sum(1) > 0).all())


def test_global_kl_counts_once_per_pass():
    """Summed over every training cell, each perturbation's global KL counts exactly once."""
    mod = SAMSVAEModule(SAMSVAEConfig(n_genes=4, n_perturbations=3, latent_dim=2, hidden_dims=(4,)))
    labels = torch.tensor([[0.0, 0, 0]] * 3 + [[1.0, 0, 0]] * 4 + [[0, 1.0, 0]] * 2 + [[1.0, 1.0, 0]] * 3)
    mod.n_cells.copy_((labels != 0).sum(0).float())
    with torch.no_grad():
        mod.e_loc.normal_()
    kl_e, kl_m = mod.global_kl()
    w = mod.global_kl_weights(labels)
    torch.testing.assert_close((w @ (kl_e + kl_m)).sum(), (kl_e + kl_m)[:2].sum())


def test_relaxed_masks_are_soft_and_hard_masks_are_bernoulli():
    mod = SAMSVAEModule(SAMSVAEConfig(n_genes=4, n_perturbations=2, latent_dim=3, hidden_dims=(4,),
                                      mask_posterior="relaxed", temperature=0.5))
    with torch.no_grad():
        mod.mask_logits.copy_(torch.tensor([[-2.0, 0.0, 2.0], [1.0, 1.0, 1.0]]))
    _, m = mod.sample_globals(1, torch.Generator().manual_seed(0))
    assert ((m > 0) & (m < 1)).all()
    _, hard = mod.sample_globals(20000, torch.Generator().manual_seed(0), hard=True)
    np.testing.assert_allclose(hard.mean(0).numpy(), mod.mask_probs.detach().numpy(), atol=0.015)


# ---- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(latent_dim=0), "latent_dim"),
        (dict(hidden_dims=()), "hidden_dims"),
        (dict(likelihood="zinb"), "likelihood"),
        (dict(mask_prior=0.0), "mask_prior"),
        (dict(mask_prior=1.0), "mask_prior"),
        (dict(mask_posterior="hard"), "mask_posterior"),
        (dict(temperature=0.0), "temperature"),
        (dict(embedding_prior_scale=-1.0), "embedding_prior_scale"),
        (dict(global_lr_factor=0.0), "global_lr_factor"),
        (dict(gene_scale_floor=0.0), "gene_scale_floor"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        SAMSVAEConfig(n_genes=10, n_perturbations=3, **bad)


def test_config_round_trips_json_and_unknown_hyperparameter(tiny_adata):
    cfg = SAMSVAEConfig(n_genes=10, n_perturbations=3, hidden_dims=[32, 16], correlated=False)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert SAMSVAEConfig(**d) == cfg
    with pytest.raises(ValueError, match="bad hyperparameter"):
        SAMSVAE.from_anndata(tiny_adata, n_latent=5)


# ---- shapes, additivity, latent --------------------------------------------------------------


def test_shapes_and_combination_shift_is_sum_of_parts(tiny_adata):
    model = small_model(tiny_adata)
    mod = model.module
    K = model.registry.n_perturbations
    assert mod.perturbation_matrix.shape == (3, K)
    emb = model.perturbation_embedding()
    assert list(emb.index) == model.registry.perturbations and emb.shape == (K, 3)
    np.testing.assert_allclose(emb.to_numpy(), (mod.e_loc * torch.sigmoid(mod.mask_logits)).detach().numpy())

    reg = model.registry
    double = a_double(tiny_adata)
    a, b = double.split("+")
    la, lb, lab = (torch.as_tensor(reg.label_vector(t))[None] for t in (a, b, double))
    torch.testing.assert_close(mod.mean_shift(lab), mod.mean_shift(la) + mod.mean_shift(lb))
    # with the same draws of e and m (one per cell), the sampled shifts add too
    e, m = mod.sample_globals(5, torch.Generator().manual_seed(0), hard=True)
    torch.testing.assert_close(
        mod.shift(lab.expand(5, -1), e, m), mod.shift(la.expand(5, -1), e, m) + mod.shift(lb.expand(5, -1), e, m)
    )
    # doses scale the shift
    torch.testing.assert_close(mod.shift(2 * la.expand(5, -1), e, m), 2 * mod.shift(la.expand(5, -1), e, m))

    z = model.latent(tiny_adata)
    assert z.shape == (tiny_adata.n_obs, 3) and np.all(np.isfinite(z))
    assert model.latent(tiny_adata[:0]).shape == (0, 3)
    X = torch.as_tensor(reg.expression(tiny_adata))
    L = torch.as_tensor(reg.label_matrix(tiny_adata))
    loc, _ = mod.encode(X, mod.mean_shift(L))
    np.testing.assert_allclose(z, loc.detach().numpy(), atol=1e-6)
    out = mod.transfer(X[:7], L[:7], lab.expand(7, -1), generator=torch.Generator().manual_seed(0))
    assert out.shape == (7, tiny_adata.n_vars)
    zero = torch.zeros(1, K)  # control to control: no perturbation needs a draw
    assert mod.transfer(X[:1], zero, zero, generator=torch.Generator().manual_seed(0)).shape == (1, tiny_adata.n_vars)


def test_transfer_is_seeded_and_non_negative(tiny_adata):
    model = small_model(tiny_adata)
    src = cells_of(tiny_adata, "control")[:20]
    p1 = model.predict(src, "P1+P2", seed=4).X
    assert np.array_equal(p1, model.predict(src, "P1+P2", seed=4).X)
    assert not np.array_equal(p1, model.predict(src, "P1+P2", seed=5).X)
    assert p1.min() >= 0.0


# ---- fitting ------------------------------------------------------------------------------------


def test_fit_stores_n_cells_outside_holdout(tiny_adata):
    double = a_double(tiny_adata)
    model = small_model(tiny_adata)
    model.fit(tiny_adata, holdout=[double], max_steps=2, **FAST)
    conds = tiny_adata.obs["condition"].astype(str)
    train = conds[conds != double]
    expected = [sum(p in c.split("+") for c in train) for p in model.registry.perturbations]
    assert model.module.n_cells.tolist() == expected
    assert "n_cells" in model.module.state_dict()
    a, _ = double.split("+")
    # the held-out double's cells are not counted for its parts
    assert expected[model.registry.perturbations.index(a)] < sum(a in c.split("+") for c in conds)


def test_short_fit_lowers_loss_and_predicts_heldout_double(tiny_adata):
    double = a_double(tiny_adata)
    model = small_model(tiny_adata)
    hist = model.fit(tiny_adata, holdout=[double], max_epochs=6, eval_every=1, lr=3e-3, **FAST)
    losses = [r["train_loss"] for r in hist.records]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert model.holdout == [double] and double not in model.train_conditions
    src = cells_of(tiny_adata, "control")
    pred = model.predict(src, double, seed=0)
    assert pred.shape == (src.n_obs, tiny_adata.n_vars)
    assert pred.X.dtype == np.float32 and np.all(np.isfinite(pred.X))
    assert (pred.obs["target"] == double).all()
    assert list(pred.obs["source_cell"]) == list(src.obs_names)
    assert pred.uns["pdae_prediction"]["model_type"] == "samsvae"
    assert pred.uns["pdae_prediction"]["extrapolation"]["in_span"]


def test_save_load_gives_identical_predictions(tiny_adata, tmp_path):
    double = a_double(tiny_adata)
    model = small_model(tiny_adata, correlated=False, mask_posterior="relaxed")
    model.fit(tiny_adata, holdout=[double], max_epochs=2, **FAST)
    model.save(tmp_path / "ckpt")
    loaded = PerturbationModel.load(tmp_path / "ckpt")
    assert isinstance(loaded, SAMSVAE) and loaded.config == model.config
    src = cells_of(tiny_adata, "control")
    np.testing.assert_array_equal(loaded.predict(src, double, seed=3).X, model.predict(src, double, seed=3).X)
    np.testing.assert_array_equal(loaded.latent(src), model.latent(src))
    assert loaded.module.n_cells.tolist() == model.module.n_cells.tolist()
    assert loaded.holdout == [double]


def test_likelihood_must_match_the_data_kind(tiny_adata):
    counts = counts_adata(tiny_adata)
    with pytest.raises(DataError, match="likelihood='gaussian' expects log-normalised"):
        small_model(counts).fit(counts, max_steps=1, **FAST)
    with pytest.raises(DataError, match="likelihood='nb' models raw counts"):
        small_model(tiny_adata, likelihood="nb").fit(tiny_adata, max_steps=1, **FAST)


def test_nb_fit_predicts_counts(tiny_adata, tmp_path):
    counts = counts_adata(tiny_adata)
    double = a_double(counts)
    model = small_model(counts, likelihood="nb")
    hist = model.fit(counts, holdout=[double], max_epochs=3, eval_every=1, **FAST)
    assert np.isfinite(hist.records[-1]["train_loss"])
    src = cells_of(counts, "control")
    pred = model.predict(src, double, seed=1)
    assert pred.shape == (src.n_obs, counts.n_vars)
    assert np.all(pred.X >= 0) and np.array_equal(pred.X, np.round(pred.X))
    model.save(tmp_path / "nb")
    np.testing.assert_array_equal(PerturbationModel.load(tmp_path / "nb").predict(src, double, seed=1).X, pred.X)


def test_gaussian_constant_genes_are_predicted_as_constant(tiny_adata):
    data = tiny_adata.copy()
    X = np.asarray(data.X).copy()
    X[:, 0] = 0.0
    data.X = X
    model = SAMSVAE(setup_anndata(data), **SMALL)
    model.fit(data, max_steps=3, **FAST)
    assert model.module.gene_varies[0] == 0 and model.module.gene_varies[1:].all()
    pred = model.predict(cells_of(data, "control"), "P1", seed=0)
    assert np.all(pred.X[:, 0] == 0.0)


# ---- real data ---------------------------------------------------------------------------------


def test_norman_short_fit_predicts(data_dir):
    from pdae_core.data.datasets import load_dataset

    adata = load_dataset("norman19_devel", data_dir=data_dir)
    model = SAMSVAE.from_anndata(adata, perturbation_key="condition")
    hist = model.fit(adata, holdout=NORMAN_DOUBLES, max_steps=30, seed=0, accelerator="cpu")
    assert hist.steps == 30 and np.isfinite(hist.records[-1]["train_loss"])
    # KLF1 and SET+KLF1 (100 cells each); KLF1+MAP2K6 and KLF1+TGFBR2 are held out
    assert model.module.n_cells[model.registry.perturbations.index("KLF1")] == 200
    ctrl = cells_of(adata, "control")
    pred = model.predict(ctrl, "KLF1+MAP2K6", seed=0)
    assert pred.shape == (ctrl.n_obs, adata.n_vars) and np.all(np.isfinite(pred.X)) and pred.X.min() >= 0
    assert pred.uns["pdae_prediction"]["extrapolation"]["in_span"]
