"""FCR (Mao et al. 2024): loss terms against direct computations, the gradient-reversal
game, covariate handling, fitting, checkpoints, and short fits on real data."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from pdae_core import DataError, PerturbationModel, setup_anndata
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.fcr import FCR, FCRConfig
from pdae_core.models.fcr_module import FCRModule, grad_reverse, group_derangement, permutation_bce

SMALL = dict(zx_dim=3, zt_dim=3, ztx_dim=3, hidden_dims=(16,), prior_hidden_dims=(8,), interaction_dim=4,
             classifier_hidden=8, disc_hidden_dims=(8,))
FAST = dict(max_epochs=3, batch_size=64, seed=0, accelerator="cpu")
NORMAN_DOUBLES = ["KLF1+MAP2K6", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2", "KLF1+TGFBR2"]


def with_context(adata, seed=0):
    """The tiny synthetic data with a two-level covariate 'ctx' (context B shifts gene 0)."""
    adata = adata.copy()
    rng = np.random.default_rng(seed)
    ctx = np.where(rng.random(adata.n_obs) < 0.5, "A", "B")
    adata.obs["ctx"] = ctx
    X = np.asarray(adata.X, dtype=np.float32).copy()
    X[ctx == "B", 0] += 1.0
    adata.X = X
    return adata


def small_module(n_genes=6, K=3, cats=("a", "b"), **kw):
    torch.manual_seed(0)
    return FCRModule(FCRConfig(n_genes=n_genes, n_perturbations=K, covariate_categories=list(cats), **{**SMALL, **kw}))


def batch(n=12, G=6, K=3, C=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, G, generator=g) * 2
    t = torch.zeros(n, K)
    t[n // 3:, 0] = 1.0
    t[2 * n // 3:, 1] = 2.0  # a dosed combination
    cov = F.one_hot(torch.arange(n) % C, C).float()
    return x, torch.cat([t, cov], 1)


# ---- loss pieces against direct computations ---------------------------------------------------


# (the Gaussian NLL and KL are tested in tests/test_distributions.py)


def test_grad_reverse_negates_and_scales_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, 2.5)
    torch.testing.assert_close(y, x)
    (y * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(x.grad, -2.5 * torch.arange(3.0).expand(4, 3))


def test_group_derangement_stays_in_group_and_moves():
    groups = torch.tensor([3, 0, 0, 1, 3, 3, 2, 0, 3, 1, 5])
    for seed in range(20):
        perm, mask = group_derangement(groups, torch.Generator().manual_seed(seed))
        assert sorted(perm.tolist()) == list(range(len(groups)))
        assert torch.equal(groups[perm], groups)
        assert mask.tolist() == [g not in (2, 5) for g in groups.tolist()]  # singletons are skipped
        assert bool((perm[mask] != torch.arange(len(groups))[mask]).all())
        assert bool((perm[~mask] == torch.arange(len(groups))[~mask]).all())


def test_permutation_bce_direct():
    torch.manual_seed(0)
    disc = torch.nn.Linear(5, 1)
    a, b = torch.randn(6, 2), torch.randn(6, 3)
    perm = torch.tensor([1, 0, 2, 4, 5, 3])
    mask = torch.tensor([True, True, False, True, True, True])
    got = permutation_bce(disc, a, b, perm, mask)
    p_true = torch.sigmoid(disc(torch.cat([a, b], 1)).squeeze(1))[mask]
    p_fake = torch.sigmoid(disc(torch.cat([a, b[perm]], 1)).squeeze(1))[mask]
    ref = 0.5 * (-torch.log(p_true).mean() - torch.log(1 - p_fake).mean())
    torch.testing.assert_close(got, ref)


def test_module_loss_terms_match_direct_computation():
    m = small_module()
    m._sample = lambda mu, s, generator=None: mu  # deterministic latents: z = posterior mean
    x, labels = batch()
    out = m.loss(x, labels)
    t, cov = labels[:, :3], labels[:, 3:]
    G = 6
    (mx, sx), (mt, st), (mtx, stx) = m.q_x(x, cov), m.q_t(x, t), m.q_tx(x, cov, t)
    y_mu = m.decoder(torch.cat([mx, mt, mtx], 1))
    nll = -Normal(y_mu, m.config.min_sigma + F.softplus(m.sigma_raw)).log_prob(x).sum(1).mean() / G
    torch.testing.assert_close(out["nll"], nll)
    for name, q, p in [("kl_x", (mx, sx), m.p_x(cov)), ("kl_t", (mt, st), m.p_t(t)), ("kl_tx", (mtx, stx), m.p_tx(cov, t))]:
        ref = kl_divergence(Normal(*q), Normal(*p)).sum(1).mean() / G
        torch.testing.assert_close(out[name], ref)
    torch.testing.assert_close(out["cls_x"], F.cross_entropy(m.cls_x(mx), cov.argmax(1)))
    on = (t != 0).float()
    pt = torch.sigmoid(m.cls_t(mt))
    torch.testing.assert_close(out["cls_t"], -(on * torch.log(pt) + (1 - on) * torch.log(1 - pt)).mean())
    # every context has controls: each treated cell is paired with a control of its own context
    ctrl = (t == 0).all(1)
    vals_t, vals_x = [], []
    for i in torch.nonzero(~ctrl).squeeze(1):
        js = torch.nonzero(ctrl & (cov == cov[i]).all(1)).squeeze(1)
        assert len(js) >= 1
        # the pairing is random: the expected value averages over the candidate controls
        vals_t.append(F.cosine_similarity(mt[i].expand(len(js), -1), mt[js]).mean())
        vals_x.append(F.cosine_similarity(mx[i].expand(len(js), -1), mx[js]).mean())
    sims = torch.stack([m.loss(x, labels)["sim"] for _ in range(200)])
    assert sims.mean().item() == pytest.approx((torch.stack(vals_t) - torch.stack(vals_x)).mean().item(), abs=0.02)
    c = m.config
    total = (c.w_rec * out["nll"] + c.w_kl * (out["kl_x"] + out["kl_t"] + out["kl_tx"])
             + c.w_cls * (out["cls_x"] + out["cls_t"]) + c.w_adv * out["adv"] + c.w_sim * out["sim"])
    torch.testing.assert_close(out["loss"], total)
    assert 0.0 < out["adv"].item() < 10.0


def test_structure_reg_deterministic_pairing():
    # one control per context: the pairing is fixed
    mx = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, -1.0]])
    mt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    cov = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    got = FCRModule._structure_reg(mx, mt, t, cov)
    cos = F.cosine_similarity
    ref = 0.5 * ((cos(mt[2], mt[0], 0) - cos(mx[2], mx[0], 0)) + (cos(mt[3], mt[1], 0) - cos(mx[3], mx[1], 0)))
    torch.testing.assert_close(got, ref)


def test_adversarial_game_one_loss():
    """Discriminators descend their BCE; the encoders get exactly the reversed gradient."""
    only_adv = dict(w_rec=0.0, w_kl=0.0, w_cls=0.0, w_sim=0.0, w_adv=1.0)
    x, labels = batch(n=24)

    def grads(module, use_grl):
        module.zero_grad()
        torch.manual_seed(5)
        if use_grl:
            module.loss(x, labels)["adv"].backward()
        else:  # the same computation without the reversal layer
            import pdae_core.models.fcr_module as fcr_module

            orig = fcr_module.grad_reverse
            fcr_module.grad_reverse = lambda v, s=1.0: v
            try:
                module.loss(x, labels)["adv"].backward()
            finally:
                fcr_module.grad_reverse = orig
        return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    m = small_module(**only_adv)
    g_rev, g_plain = grads(m, True), grads(m, False)
    enc = [n for n in g_rev if n.startswith("enc_")]
    disc = [n for n in g_rev if n.startswith("discriminators.")]
    assert enc and disc
    for n in enc:
        torch.testing.assert_close(g_rev[n], -g_plain[n])
    for n in disc:
        torch.testing.assert_close(g_rev[n], g_plain[n])
    half = small_module(grl_scale=0.5, **only_adv)
    g_half = grads(half, True)
    for n in enc:
        torch.testing.assert_close(g_half[n], 0.5 * g_rev[n])


def test_module_shapes_and_transfer_targets():
    m = small_module()
    x, labels = batch()
    assert m.embed(x, labels).shape == (12, 3)
    assert m.perturbation_matrix.shape == (3, 3)
    tgt = torch.tensor([[1.0, 1.0, 0.0]]).expand(12, -1)
    a = m.transfer(x, labels, tgt, generator=torch.Generator().manual_seed(0))
    assert a.shape == (12, 6)
    m.config.clip_output = True  # optional clipping at 0 (log1p expression is non-negative)
    assert bool((m.transfer(x, labels, tgt) >= 0).all())
    m.config.clip_output = False
    # (n, K + C) targets: the context columns are ignored, each cell keeps its own context
    other_ctx = torch.cat([tgt, 1.0 - labels[:, 3:]], 1)
    b = m.transfer(x, labels, other_ctx, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="columns"):
        m.transfer(x, labels, torch.zeros(12, 4))
    with pytest.raises(ValueError, match="context columns"):
        m.embed(x, labels[:, :4])


def test_linear_prior_option_adds_parts_and_residual_posterior():
    m = small_module(linear_prior_means=True)
    with torch.no_grad():
        W = m.perturbation_matrix
        ab = torch.tensor([[1.0, 0.0, 2.0]])  # A + 2 B: the latent shift adds up
        torch.testing.assert_close(m.p_t(ab)[0][0] - m.p_t(torch.zeros(1, 3))[0][0], W[:, 0] + 2 * W[:, 2])
        torch.testing.assert_close(m.p_t(torch.zeros(1, 3))[0], torch.zeros(1, 3))  # control at the origin
        x, labels = batch()
        t, cov = labels[:, :3], labels[:, 3:]
        # residual posterior: q's mean is the prior mean plus the encoder's offset
        off = m.enc_t(torch.cat([m._std(x), t], 1))[:, :3]
        torch.testing.assert_close(m.q_t(x, t)[0], m.p_t(t)[0] + off)
    plain = small_module(residual_posterior=False)
    with torch.no_grad():
        off = plain.enc_x(torch.cat([plain._std(x), cov], 1))[:, :3]
        torch.testing.assert_close(plain.q_x(x, cov)[0], off)


def test_optimizer_groups_scale_lr():
    m = small_module(lr_scale=2.5)
    (g,) = m.optimizer_groups(1e-3)
    assert g["lr"] == pytest.approx(2.5e-3)
    assert sum(p.numel() for p in g["params"]) == sum(p.numel() for p in m.parameters())


def test_perturbation_matrix_is_prior_mean_shift():
    m = small_module()
    with torch.no_grad():
        mu0 = m.p_t(torch.zeros(1, 3))[0]
        for k in range(3):
            e = torch.zeros(1, 3)
            e[0, k] = 1.0
            torch.testing.assert_close(m.perturbation_matrix[:, k], (m.p_t(e)[0] - mu0)[0])


# ---- config and covariates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [dict(zx_dim=0), dict(hidden_dims=()), dict(independence_pairs=["x_y"]), dict(transfer_zx="mode"),
     dict(w_adv=-1.0), dict(covariate_categories=["a", "a"]), dict(covariate_categories="a"), dict(min_scale=0.0),
     dict(grl_scale=-0.1), dict(disc_hidden_dims=(0,)), dict(min_sigma=0.0), dict(lr_scale=0.0)],
)
def test_config_validation(bad):
    with pytest.raises(ValueError, match="FCRConfig"):
        FCRConfig(n_genes=5, n_perturbations=2, **bad)


def test_config_roundtrip_json_types():
    c = FCRConfig(n_genes=5, n_perturbations=2, covariate_categories=("b", "a"), hidden_dims=[8])
    d = c.to_dict()
    assert d["covariate_categories"] == ["b", "a"] and d["hidden_dims"] == [8]
    assert FCRConfig(**d) == c and c.n_covariates == 2
    assert FCRConfig(n_genes=5, n_perturbations=2).n_covariates == 1


def test_model_level_errors(tiny_adata):
    reg = setup_anndata(tiny_adata)
    with pytest.raises(ValueError, match="bad hyperparameter"):
        FCR(reg, bogus=1)
    with pytest.raises(ValueError, match="no covariate_key"):
        FCR(reg, covariate_categories=["A"])


def test_single_context_warns(tiny_adata, caplog):
    reg = setup_anndata(tiny_adata)
    with caplog.at_level(logging.WARNING, logger="pdae_core.models.fcr"):
        model = FCR(reg, **SMALL)
    assert "single context" in caplog.text
    L = reg.label_matrix(tiny_adata)
    ml = model._module_labels(tiny_adata, L)
    assert ml.shape == (tiny_adata.n_obs, 5) and np.all(ml[:, 4] == 1.0)


def test_covariate_labels_and_unknown_category(tiny_adata):
    adata = with_context(tiny_adata)
    model = FCR.from_anndata(adata, covariate_key="ctx", **SMALL)
    assert model.config.covariate_categories == ["A", "B"]
    L = model.registry.label_matrix(adata)
    ml = model._module_labels(adata, L)
    assert ml.shape == (adata.n_obs, 4 + 2)
    np.testing.assert_array_equal(ml[:, :4], L)
    np.testing.assert_array_equal(ml[:, 5], (adata.obs["ctx"] == "B").to_numpy().astype(np.float32))
    bad = adata[:5].copy()
    bad.obs["ctx"] = ["C"] * 5
    with pytest.raises(DataError, match=r"\['C'\].*not among"):
        model.predict(bad, "P1")
    # a model built from a registry alone reads its categories in fit
    reg = setup_anndata(adata, covariate_key="ctx")
    m2 = FCR(reg, **SMALL)
    with pytest.raises(DataError, match="categories yet"):
        m2.predict(adata[:5], "P1")
    m2.fit(adata, max_epochs=1, batch_size=64, accelerator="cpu")
    assert m2.config.covariate_categories == ["A", "B"]
    assert m2.module.cls_x[-1].out_features == 2


# ---- training, prediction, checkpoints ---------------------------------------------------------


@pytest.fixture(scope="module")
def synth():
    adata, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=30, hidden=16, n_doubles=3,
                              cells_per_condition=60, seed=2)
    return with_context(adata)


@pytest.fixture(scope="module")
def fitted(synth):
    doubles = sorted({c for c in synth.obs["condition"] if "+" in c})
    model = FCR.from_anndata(synth, covariate_key="ctx", **SMALL)
    hist = model.fit(synth, holdout=[doubles[0]], **{**FAST, "max_epochs": 8, "eval_every": 1})
    return model, hist, doubles[0]


def test_short_fit_lowers_loss_and_predicts_double(synth, fitted):
    model, hist, double = fitted
    losses = [r["train_loss"] for r in hist.records]
    assert losses[-1] < losses[0]
    assert all(np.isfinite(r["val_ed"]) for r in hist.records)
    src = synth[synth.obs["condition"] == "control"]
    pred = model.predict(src, double, seed=1)
    assert pred.shape == (src.n_obs, synth.n_vars)
    assert list(pred.obs["source_cell"]) == list(src.obs_names)
    assert (pred.obs["target"] == double).all()
    assert list(pred.obs["ctx"]) == list(src.obs["ctx"])  # each prediction keeps its source's context
    assert np.isfinite(pred.X).all()
    assert model.latent(src).shape == (src.n_obs, model.config.zx_dim)
    assert model.perturbation_embedding().shape == (4, model.config.zt_dim)
    assert model.extrapolation_check(double).in_span


def test_save_load_identical_predictions(synth, fitted, tmp_path):
    model, _, double = fitted
    model.save(tmp_path / "fcr")
    loaded = PerturbationModel.load(tmp_path / "fcr")
    assert isinstance(loaded, FCR)
    assert loaded.config == model.config and loaded.config.covariate_categories == ["A", "B"]
    src = synth[:80]
    a = model.predict(src, double, seed=7).X
    b = loaded.predict(src, double, seed=7).X
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, model.predict(src, double, seed=8).X)  # stochastic in the seed


def test_combinations_doses_and_context(synth, fitted):
    model, _, double = fitted
    src = synth[synth.obs["condition"] == "control"][:40]
    a, b = double.split("+")
    vec = model.registry.label_vector(double)
    np.testing.assert_array_equal(vec, model.registry.label_vector(a) + model.registry.label_vector(b))
    p1 = model.predict(src, double, seed=3).X
    np.testing.assert_array_equal(p1, model.predict(src, vec, seed=3).X)
    assert not np.allclose(p1, model.predict(src, {a: 2.0, b: 1.0}, seed=3).X)  # doses reach the priors
    # the context is used: the same cells placed in the other context are predicted differently
    X, L = model._tensors(src)
    swapped = torch.cat([L[:, :4], 1.0 - L[:, 4:]], 1)
    tgt = torch.as_tensor(vec).expand(len(X), -1)
    with torch.no_grad():
        p_own = model.module.transfer(X, L, tgt, generator=torch.Generator().manual_seed(0))
        p_swap = model.module.transfer(X, swapped, tgt, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(p_own, p_swap)


# ---- real data ---------------------------------------------------------------------------------


def test_norman19_short_fit(data_dir):
    from pdae_core.data.datasets import load_dataset

    adata = load_dataset("norman19_devel", data_dir=data_dir)
    reg = setup_anndata(adata, "condition", "control")
    model = FCR(reg)
    hist = model.fit(adata, holdout=NORMAN_DOUBLES, max_steps=30, accelerator="cpu", seed=0)
    assert hist.steps == 30 and np.isfinite(hist.best_val)
    src = adata[adata.obs["condition"] == "control"][:100]
    pred = model.predict(src, "KLF1+MAP2K6")
    assert pred.shape == (100, adata.n_vars) and np.isfinite(pred.X).all()
    assert not model.extrapolation_check("KLF1+MAP2K6").measured_in_training


def test_mcfaline23_covariates(data_dir):
    from pdae_core.data.datasets import load_dataset

    adata = load_dataset("mcfaline23_devel", data_dir=data_dir)
    assert adata.uns["pdae_dataset"]["covariate_key"] == "cell_type"
    reg = setup_anndata(adata, "condition", "control", covariate_key="cell_type")
    model = FCR(reg)
    hist = model.fit(adata, holdout=["SGK1"], max_steps=30, accelerator="cpu", seed=0)
    assert hist.steps == 30
    lines = ["A172", "T98G", "U87MG"]
    assert model.config.covariate_categories == lines
    ctrl = adata[adata.obs["condition"] == "control"]
    pred = model.predict(ctrl, "SGK1", seed=0)
    assert list(pred.obs["cell_type"]) == list(ctrl.obs["cell_type"].astype(str))
    means = {c: pred.X[(pred.obs["cell_type"] == c).to_numpy()].mean(0) for c in lines}
    obs = {c: np.asarray(adata[(adata.obs["condition"] == "SGK1") & (adata.obs["cell_type"] == c)].X.todense()).mean(0)
           for c in lines}
    for c in lines:  # predictions from each line's controls are closest to that line's observed SGK1 cells
        d = {o: float(np.linalg.norm(means[c] - obs[o])) for o in lines}
        assert min(d, key=d.get) == c, (c, d)
    bad = ctrl[:3].copy()
    bad.obs["cell_type"] = ["LN229"] * 3
    with pytest.raises(DataError, match="LN229"):
        model.predict(bad, "SGK1")
