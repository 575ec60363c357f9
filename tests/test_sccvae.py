"""SCCVAE (Liu, Zhang & Uhler 2025): loss terms against direct computations, the causal
layer, combinations, the shared model interface, checkpoints and short fits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pdae_core import PerturbationModel, setup_anndata
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.distributions import censored_mean
from pdae_core.models.losses import median_bandwidth, mmd_rbf
from pdae_core.models.sccvae import SCCVAE, SCCVAEConfig, SCCVAEModule

SMALL = dict(latent_dim=4, hidden_dims=(16,))


def tiny_module(**kw) -> SCCVAEModule:
    torch.manual_seed(0)
    return SCCVAEModule(SCCVAEConfig(n_genes=6, n_perturbations=3, **{**SMALL, "kl_warmup_steps": 0, **kw}))


def onehot(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ---- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(latent_dim=0), "latent_dim"),
        (dict(hidden_dims=()), "hidden_dims"),
        (dict(shift_type="mlp"), "shift_type"),
        (dict(graph="dag"), "graph"),
        (dict(beta=-1.0), "loss weights"),
        (dict(mmd_weight=-0.1), "loss weights"),
        (dict(mmd_scales=(1.0, 0.0)), "mmd_scales"),
        (dict(mmd_bandwidth=0.0), "mmd_bandwidth"),
        (dict(n_sources=1), "n_sources"),
        (dict(min_scale=0.0), "min_scale"),
        (dict(shift_lr_mult=0.0), "shift_lr_mult"),
        (dict(kl_warmup_steps=-1), "kl_warmup_steps"),
        (dict(sources="perturbed"), "sources"),
        (dict(likelihood="nb"), "likelihood"),
        (dict(likelihood="censored", rectify=False), "needs rectify"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        SCCVAEConfig(n_genes=5, n_perturbations=2, **bad)


def test_config_round_trips_through_json():
    c = SCCVAEConfig(n_genes=5, n_perturbations=2, hidden_dims=[8, 4], mmd_scales=[1, 2], mmd_bandwidth=3.0)
    d = json.loads(json.dumps(c.to_dict()))
    assert SCCVAEConfig(**d) == c
    assert c.hidden_dims == (8, 4) and c.mmd_scales == (1.0, 2.0)


def test_model_rejects_unknown_hyperparameter(tiny_adata):
    with pytest.raises(ValueError, match="bad hyperparameter"):
        SCCVAE.from_anndata(tiny_adata, noise_dim=3)


# ---- loss terms against direct computations ----------------------------------------------------------


# (the densities and KL terms are tested in tests/test_distributions.py)


def _mmd_direct(a: np.ndarray, b: np.ndarray, scales, h: float) -> float:
    def k(x, y):
        d2 = float(((x - y) ** 2).sum())
        return float(np.mean([math.exp(-d2 / (s * h)) for s in scales]))

    n, m = len(a), len(b)
    aa = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    bb = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    ab = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return aa + bb - 2 * ab


def test_mmd_matches_direct_double_sum(rng):
    a = rng.normal(size=(5, 3))
    b = rng.normal(loc=0.7, size=(4, 3))
    ta, tb = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    scales = (0.5, 1.0, 2.0)
    got = float(mmd_rbf(ta, tb, scales, bandwidth=1.7))
    assert got == pytest.approx(_mmd_direct(a, b, scales, 1.7), rel=1e-9, abs=1e-12)
    # median heuristic: median squared distance over the distinct pairs of the pooled sample
    p = np.vstack([a, b])
    d2 = [((p[i] - p[j]) ** 2).sum() for i in range(len(p)) for j in range(len(p)) if i != j]
    h = float(np.sort(d2)[(len(d2) - 1) // 2])  # torch.median takes the lower middle value
    assert float(median_bandwidth(ta, tb)) == pytest.approx(h, rel=1e-9)
    assert float(mmd_rbf(ta, tb, scales)) == pytest.approx(_mmd_direct(a, b, scales, h), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        mmd_rbf(ta[:1], tb)


def test_mmd_separates_distributions(rng):
    same = [float(mmd_rbf(torch.randn(200, 4), torch.randn(200, 4))) for _ in range(3)]
    assert abs(np.mean(same)) < 0.01
    assert float(mmd_rbf(torch.randn(200, 4), torch.randn(200, 4) + 1.0)) > 0.05


def _direct_loss(mod: SCCVAEModule, x: torch.Tensor, L: torch.Tensor, seed: int) -> dict[str, float]:
    """The SCCVAE loss written out cell by cell and condition by condition (same random draws)."""
    from scipy import stats

    c = mod.config
    n, G = x.shape
    torch.manual_seed(seed)
    eps_z = torch.randn(n, c.latent_dim)
    with torch.no_grad():
        S = mod.S
        Minv = torch.linalg.inv(torch.eye(c.latent_dim) - mod.B)
        sigma = torch.exp(mod.log_scale).clamp_min(c.min_scale)
        rec, kl, z = 0.0, 0.0, []
        for i in range(n):
            h = mod.encoder((x[i] - mod.x_mean) / mod.x_scale)
            m, logvar = h[: c.latent_dim], h[c.latent_dim :].clamp(-12, 8)
            s = L[i] @ S
            zi = m - s + torch.exp(0.5 * logvar) * eps_z[i]
            z.append(zi)
            mean = mod.decoder((zi + s) @ Minv)
            for g in range(G):
                xi, mg, sg = float(x[i, g]), float(mean[g]), float(sigma[g])
                if c.likelihood == "censored" and xi <= 0:
                    rec -= stats.norm.logcdf(0.0, loc=mg, scale=sg)
                else:
                    rec += 0.5 * ((xi - mg) / sg) ** 2 + math.log(sg) + 0.5 * math.log(2 * math.pi)
            v = torch.exp(logvar)
            kl += float((0.5 * ((m - s) ** 2 + v - 1 - logvar)).sum())
        # targets and sources, in torch.unique order of the label rows
        uniq = torch.unique(L, dim=0)
        ctrl = [i for i in range(n) if float(L[i].abs().sum()) == 0]
        jobs = []
        for u in uniq:
            members = [i for i in range(n) if torch.equal(L[i], u)]
            if float(u.abs().sum()) == 0 and ctrl:
                continue
            src = ctrl if ctrl else [i for i in range(n) if i not in members]
            jobs.append((members, src, u))
        eps_x = torch.randn(sum(len(s) for _, s, _ in jobs), G)
        k = 0
        preds, mmds = [], []
        for members, src, u in jobs:
            mus, samples = [], []
            for j in src:
                mu = mod.decoder((z[j] + u @ S) @ Minv)
                if c.likelihood == "censored":  # E[max(0, y)], y ~ N(mu, sigma^2)
                    t = (mu / sigma).double().numpy()
                    mus.append(torch.as_tensor(mu.double().numpy() * stats.norm.cdf(t) + sigma.double().numpy() * stats.norm.pdf(t)))
                else:
                    mus.append(mu.double())
                samples.append((mu + sigma * eps_x[k]).clamp_min(0.0))
                k += 1
            diff = torch.stack(mus).mean(0) - x[members].double().mean(0)
            preds.append(float((diff**2).sum()) / G)
            ys, xs = torch.stack(samples).double().numpy(), x[members].double().numpy()
            pooled = np.vstack([ys, xs])
            d2 = [((pooled[a] - pooled[b]) ** 2).sum() for a in range(len(pooled)) for b in range(len(pooled)) if a != b]
            mmds.append(_mmd_direct(ys, xs, c.mmd_scales, float(np.sort(d2)[(len(d2) - 1) // 2])))
    out = {"rec": rec / n / G, "kl": kl / n / G, "pred": float(np.mean(preds)), "mmd": float(np.mean(mmds))}
    out["loss"] = c.w_rec * out["rec"] + c.w_pred * out["pred"] + c.beta * out["kl"] + c.mmd_weight * out["mmd"]
    return out


@pytest.mark.parametrize("with_control, likelihood", [(True, "gaussian"), (False, "gaussian"), (True, "censored")])
def test_loss_terms_match_direct_computation(with_control, likelihood):
    mod = tiny_module(beta=0.7, w_pred=1.3, mmd_weight=2.0, n_sources=16, likelihood=likelihood)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(9, 6, generator=gen) * 2 - 0.6).clamp_min(0.0)  # about 30% exact zeros
    assert 5 < int((x == 0).sum()) < 40
    rows = [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [1, 0, 1], [1, 0, 1], [0, 0, 0], [0, 0, 0]]
    if not with_control:
        rows[-2:] = [[0, 0, 2.0], [0, 0, 2.0]]  # a dosed single instead of control
    L = onehot(rows)
    torch.manual_seed(5)
    got = {k: float(v.detach()) for k, v in mod.loss(x, L).items()}
    want = _direct_loss(mod, x, L, seed=5)
    for key in ("rec", "kl", "pred", "mmd", "loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    assert got["pred"] > 0 and got["kl"] > 0


def test_kl_warmup_is_linear_in_training_steps():
    mod = tiny_module(kl_warmup_steps=4, beta=2.0, mmd_weight=10.0)
    x, L = torch.rand(6, 6), onehot([[0, 0, 0]] * 3 + [[0, 1, 0]] * 3)
    seen = []
    for _ in range(6):
        seen.append(mod.kl_factor())
        torch.manual_seed(0)
        with torch.no_grad():
            out = mod.loss(x, L)
        parts = out["rec"] + out["pred"] + 2.0 * seen[-1] * out["kl"] + 10.0 * out["mmd"]
        assert float(out["loss"]) == pytest.approx(float(parts), rel=1e-6)
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    mod.eval()
    mod.loss(x, L)  # evaluation does not advance the schedule
    assert int(mod.steps) == 6
    assert tiny_module().kl_factor() == 1.0  # no warm-up


def test_control_only_batch_has_no_prediction_terms():
    mod = tiny_module()
    with torch.no_grad():
        out = mod.loss(torch.rand(5, 6), torch.zeros(5, 3))
    assert float(out["pred"]) == 0.0 and float(out["mmd"]) == 0.0
    assert torch.isfinite(out["loss"]) and float(out["rec"]) != 0.0


def test_sources_are_capped_at_n_sources():
    mod = tiny_module(n_sources=3)
    L = torch.zeros(10, 3)
    L[7:, 0] = 1.0
    pairs = mod._pairs(L)
    assert len(pairs) == 1
    tgt, src, lab = pairs[0]
    assert tgt.tolist() == [7, 8, 9] and len(src) == 3 and set(src.tolist()) <= set(range(7))
    torch.testing.assert_close(lab, torch.tensor([1.0, 0.0, 0.0]))
    # sources="all": control is a target too, and each target draws on the other conditions
    every = tiny_module(n_sources=16, sources="all")._pairs(L)
    assert [(t.tolist(), sorted(s.tolist())) for t, s, _ in every] == [
        (list(range(7)), [7, 8, 9]),
        ([7, 8, 9], list(range(7))),
    ]


def test_l1_penalty_enters_the_dense_loss():
    mod = tiny_module(shift_type="dense", w_l1=0.5, mmd_weight=3.0)
    x, L = torch.rand(6, 6), onehot([[0, 0, 0]] * 3 + [[1, 0, 0]] * 3)
    torch.manual_seed(0)
    with torch.no_grad():
        out = mod.loss(x, L)
    assert float(out["l1"]) == pytest.approx(float(mod.shift_dense.detach().abs().sum()))
    parts = out["rec"] + out["pred"] + out["kl"] + 3.0 * out["mmd"] + 0.5 * out["l1"]
    assert float(out["loss"]) == pytest.approx(float(parts), rel=1e-6)


# ---- causal layer, shifts and combinations --------------------------------------------------------


def test_graph_is_acyclic_and_propagation_solves_the_scm():
    mod = tiny_module(latent_dim=5)
    B = mod.B.detach()
    assert torch.equal(B, torch.triu(B, diagonal=1)) and B.abs().sum() > 0
    M = mod.propagation().detach()
    torch.testing.assert_close(M, torch.linalg.inv(torch.eye(5) - B))
    v = torch.randn(7, 5)
    u = v @ M
    torch.testing.assert_close(u, u @ B + v)  # u_j = sum_i B_ij u_i + (z + s)_j
    none = tiny_module(graph="none")
    assert none.B.abs().sum() == 0
    torch.testing.assert_close(none.propagation().detach(), torch.eye(4))


def test_softmax_shifts_target_a_distribution_of_nodes():
    mod = tiny_module()
    S = mod.S.detach()
    w = S / mod.shift_magnitude.detach().unsqueeze(1)
    assert (w > 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    torch.testing.assert_close(mod.perturbation_matrix.detach(), S.T)
    assert mod.perturbation_matrix.shape == (4, 3)
    torch.testing.assert_close(mod.propagated_effect_matrix().detach(), (S @ mod.propagation().detach()).T)


@pytest.mark.parametrize("shift_type", ["softmax", "dense"])
def test_combination_shift_is_sum_of_parts_before_propagation(shift_type):
    mod = tiny_module(shift_type=shift_type, sample_noise=False)
    la, lb = onehot([[1, 0, 0]]), onehot([[0, 0, 1]])
    with torch.no_grad():
        torch.testing.assert_close(mod.shift(la + lb), mod.shift(la) + mod.shift(lb))
        torch.testing.assert_close(mod.shift(2.5 * la), 2.5 * mod.shift(la))
        torch.testing.assert_close(mod.propagated_shift(la + lb), mod.propagated_shift(la) + mod.propagated_shift(lb))
        x = torch.rand(4, 6)
        ctrl = torch.zeros(4, 3)
        z = mod.embed(x, ctrl)
        mu = mod.decoder((z + mod.S[0] + mod.S[2]) @ torch.linalg.inv(torch.eye(4) - mod.B))
        torch.testing.assert_close(mod.transfer(x, ctrl, (la + lb).expand(4, -1)), censored_mean(mu, mod.scale()))
        gauss = tiny_module(shift_type=shift_type, sample_noise=False, likelihood="gaussian")
        torch.testing.assert_close(gauss.transfer(x, ctrl, (la + lb).expand(4, -1)), mu)  # same init


def test_embed_removes_own_shift_and_transfer_is_consistent():
    mod = tiny_module(sample_noise=False)
    x = torch.rand(5, 6)
    with torch.no_grad():
        ctrl, p2 = torch.zeros(5, 3), onehot([[0, 1, 0]] * 5)
        torch.testing.assert_close(mod.embed(x, ctrl) - mod.embed(x, p2), mod.S[1].expand(5, -1))
        # moving cells to their own condition reconstructs them through the encoder's mean
        torch.testing.assert_close(mod.transfer(x, p2, p2), mod.expected(mod.decode_mean(mod.encode(x)[0])))
        # a P2 cell moved to control = decoding of its exogenous noise alone
        torch.testing.assert_close(mod.transfer(x, p2, ctrl), mod.expected(mod.decode_mean(mod.embed(x, p2))))


def test_transfer_sampling_is_driven_by_the_generator():
    mod = tiny_module()
    with torch.no_grad():
        mod.decoder[-1].bias.fill_(0.05)
        x, L, T = torch.rand(50, 6), torch.zeros(50, 3), onehot([[0, 1, 1]] * 50)
        a = mod.transfer(x, L, T, torch.Generator().manual_seed(3))
        b = mod.transfer(x, L, T, torch.Generator().manual_seed(3))
        c = mod.transfer(x, L, T, torch.Generator().manual_seed(4))
        assert a.shape == (50, 6)
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, c)
        assert a.min() >= 0 and (a == 0).any()  # rectified
        raw = tiny_module(rectify=False, likelihood="gaussian").transfer(x, L, T, torch.Generator().manual_seed(3))
        assert raw.min() < 0


# ---- the shared model interface ---------------------------------------------------------------------


def _synthetic():
    adata, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=30, hidden=16, n_doubles=3,
                              cells_per_condition=60, seed=2)
    return adata


def test_fit_lowers_loss_predicts_and_round_trips(tmp_path):
    adata = _synthetic()
    double = [c for c in adata.obs["condition"].unique() if "+" in c][0]
    model = SCCVAE.from_anndata(adata, seed=1, **SMALL)
    assert model.latent(adata).shape == (adata.n_obs, 4)
    hist = model.fit(adata, holdout=[double], max_epochs=8, batch_size=64, eval_every=1, accelerator="cpu", seed=0)
    losses = [r["train_loss"] for r in hist.records]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert all(np.isfinite(r["val_ed"]) for r in hist.records)
    assert double not in model.train_conditions and model.holdout == [double]
    assert model.extrapolation_check(double).in_span

    ctrl = adata[adata.obs["condition"] == "control"]
    pred = model.predict(ctrl, double, seed=7)
    assert pred.shape == (ctrl.n_obs, adata.n_vars)
    assert (pred.obs["target"] == double).all() and (pred.obs["source_condition"] == "control").all()
    assert list(pred.obs["source_cell"]) == list(ctrl.obs_names)
    assert np.all(np.isfinite(pred.X)) and pred.X.min() >= 0
    assert pred.uns["pdae_prediction"]["model_type"] == "sccvae"
    emb = model.perturbation_embedding()
    assert emb.shape == (4, 4) and list(emb.index) == model.registry.perturbations
    assert model.propagated_embedding().shape == (4, 4)
    B = model.causal_graph().to_numpy()
    assert np.allclose(B, np.triu(B, 1))

    model.save(tmp_path / "ckpt")
    loaded = PerturbationModel.load(tmp_path / "ckpt")
    assert isinstance(loaded, SCCVAE) and loaded.config == model.config
    np.testing.assert_array_equal(loaded.predict(ctrl, double, seed=7).X, pred.X)
    np.testing.assert_array_equal(loaded.latent(adata), model.latent(adata))
    with open(tmp_path / "ckpt" / "config.json") as f:
        assert json.load(f)["model_type"] == "sccvae"


def test_dense_model_without_graph_round_trips(tmp_path):
    adata = _synthetic()
    model = SCCVAE.from_anndata(adata, shift_type="dense", graph="none", w_l1=1e-3, sample_noise=False, **SMALL)
    model.fit(adata, max_steps=3, batch_size=64, accelerator="cpu")
    src = adata[:20]
    model.save(tmp_path / "d")
    loaded = SCCVAE.load(tmp_path / "d")
    np.testing.assert_array_equal(loaded.predict(src, "P1+P3").X, model.predict(src, "P1+P3").X)
    np.testing.assert_array_equal(model.predict(src, "P1+P3", seed=0).X, model.predict(src, "P1+P3", seed=1).X)


NORMAN_DOUBLES = ["KLF1+MAP2K6", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2", "KLF1+TGFBR2"]


@pytest.mark.slow
def test_short_fit_on_norman(data_dir):
    from pdae_core.data.datasets import load_dataset

    norman = load_dataset("norman19_devel", data_dir=data_dir)
    setup_anndata(norman, perturbation_key="condition")
    model = SCCVAE.from_anndata(norman, latent_dim=8, hidden_dims=(64,))
    hist = model.fit(norman, holdout=NORMAN_DOUBLES, max_steps=30, accelerator="cpu", seed=0)
    assert hist.steps == 30 and np.isfinite(hist.best_val)
    assert len(model.train_conditions) == 34 - 5
    ctrl = norman[norman.obs["condition"] == "control"]
    pred = model.predict(ctrl, "KLF1+MAP2K6")
    assert pred.shape == (ctrl.n_obs, 500)
    assert np.all(np.isfinite(pred.X)) and pred.X.min() >= 0
    for double in NORMAN_DOUBLES:
        assert model.extrapolation_check(double).in_span
