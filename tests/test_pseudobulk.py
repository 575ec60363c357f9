"""Mean-level benchmark track: profile sets, folds, profile models and the runner."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from pdae_core.errors import DataError
from pdae_core.eval.pseudobulk import (
    AdditiveProfile,
    LinearProfile,
    PDAEProfile,
    double_folds,
    profiles_from_anndata,
    pseudobulk_markdown,
    run_pseudobulk_benchmark,
    summarise_pseudobulk,
)


def _adata(names: list[str], X: np.ndarray, key: str = "condition") -> ad.AnnData:
    obs = pd.DataFrame({key: names}, index=[f"row{i}" for i in range(len(names))])
    return ad.AnnData(X=np.asarray(X, dtype=np.float64), obs=obs,
                      var=pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])]))


def _additive_truth(n_pert: int = 6, n_genes: int = 40, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Singles with random deltas and every double as the exact sum of its singles."""
    rng = np.random.default_rng(seed)
    names = [f"P{i}" for i in range(n_pert)]
    eff = {n: rng.normal(size=n_genes) for n in names}
    doubles = [f"{a}+{b}" for a, b in itertools.combinations(names, 2)]
    X = np.vstack([eff[n] for n in names] + [eff[d.split("+")[0]] + eff[d.split("+")[1]] for d in doubles])
    return names + doubles, X


# ---------------------------------------------------------------------------------
# data


def test_profile_set_from_deltas():
    names, X = _additive_truth()
    p = profiles_from_anndata(_adata(names, X))
    assert p.n_conditions == 6 + 15 and p.perturbations == [f"P{i}" for i in range(6)]
    assert p.labels.shape == (21, 6) and np.array_equal(p.labels.sum(1), [1] * 6 + [2] * 15)
    assert p.parts[6] == ("P0", "P1") and p.genes[:2] == ["g0", "g1"]
    np.testing.assert_array_equal(p.deltas, X)
    assert len(p.eligible_doubles()) == 15


def test_means_with_control_equal_deltas(tmp_path):
    names, D = _additive_truth()
    base = np.random.default_rng(1).uniform(1, 3, size=D.shape[1])
    means = _adata(["control", *names], np.vstack([base, D + base]))
    ref = profiles_from_anndata(_adata(names, D))
    for got in (profiles_from_anndata(means), profiles_from_anndata(means, values="means")):
        assert got.conditions == ref.conditions and got.perturbations == ref.perturbations
        np.testing.assert_allclose(got.deltas, ref.deltas, atol=1e-12)
        np.testing.assert_array_equal(got.labels, ref.labels)
    path = tmp_path / "pb.h5ad"
    means.write_h5ad(path)
    np.testing.assert_allclose(profiles_from_anndata(path).deltas, ref.deltas, atol=1e-12)
    # a zero control row in a delta matrix is accepted and dropped
    zero_ctrl = _adata(["control", *names], np.vstack([np.zeros(D.shape[1]), D]))
    np.testing.assert_array_equal(profiles_from_anndata(zero_ctrl, values="deltas").deltas, D)


def test_builtin_tag_is_read_as_deltas(data_dir):
    from pdae_core.data.datasets import load_dataset

    adata = load_dataset("norman19_pseudobulk", data_dir=data_dir)
    assert adata.uns["pdae_dataset"]["values"] == "lfc_vs_control"
    p = profiles_from_anndata(adata)
    assert p.n_conditions == 234 and len(p.perturbations) == 105 and p.n_genes == 2000
    np.testing.assert_allclose(p.deltas, np.asarray(adata.X, dtype=np.float64))
    assert set(p.eligible_doubles()) == set(adata.obs_names[adata.obs.both_singles_present & (adata.obs.n_perturbations == 2)])


@pytest.mark.parametrize(
    "names, X, kwargs, match",
    [
        (["A", "B", "A+B", "B+C"], np.ones((4, 3)), {"perturbation_key": "perturbation"}, "'perturbation' is not in obs"),
        (["A", "B", "A+B", "A+B"], np.ones((4, 3)), {}, "'A\\+B' appears in more than one row"),
        (["A", "B", "A+B", "B+A"], np.ones((4, 3)), {}, "more than one row"),
        (["control", "control", "A+B", "B+C"], np.ones((4, 3)), {}, "control appears in more than one row"),
        (["A", "B", "A+B", "B+C"], np.array([[1.0, np.nan, 0]] + [[1.0, 1, 1]] * 3), {}, "NaN or infinite"),
        (["A", "B", "A+B", "B+C"], np.array([[1.0, np.inf, 0]] + [[1.0, 1, 1]] * 3), {}, "NaN or infinite"),
        (["A", "B", "A+B", "B+C"], np.ones((4, 3)), {"values": "means"}, "needs a control row"),
        (["control", "A", "B", "A+B"], np.ones((4, 3)), {}, "has 1 double"),
        (["A", "B", "A+", "B+C"], np.ones((4, 3)), {}, "empty part"),
        (["A", "B", "A+A", "B+C"], np.ones((4, 3)), {}, "names a perturbation twice"),
        (["control", "B", "A+B", "B+C"], np.ones((4, 3)), {"values": "deltas"}, "control row .* is not zero"),
        (["A", "B", "A+B", "B+C"], np.ones((4, 3)), {"values": "lfc"}, "values must be one of"),
        (["A", "B", "A+B", "B+C"], np.ones((4, 3)), {}, "looks like expression .* no control row"),
    ],
)
def test_bad_input_raises(names, X, kwargs, match):
    with pytest.raises(DataError, match=match):
        profiles_from_anndata(_adata(names, X), **kwargs)


def test_non_negative_deltas_need_explicit_values():
    X = np.abs(np.random.default_rng(0).normal(size=(4, 3)))
    names = ["A", "B", "A+B", "B+C"]
    np.testing.assert_array_equal(profiles_from_anndata(_adata(names, X), values="deltas").deltas, X)
    tagged = _adata(names, X)
    tagged.uns["pdae_dataset"] = {"values": "log1p"}
    with pytest.raises(DataError, match="'log1p'"):
        profiles_from_anndata(tagged)


def test_bad_path_raises(tmp_path):
    with pytest.raises(DataError, match="File not found"):
        profiles_from_anndata(tmp_path / "missing.h5ad")


# ---------------------------------------------------------------------------------
# folds


def test_folds_partition_eligible_doubles():
    names, X = _additive_truth(n_pert=7)
    extra = ["P0+Z", "P1+P2+P3"]  # Z never measured alone; a triple
    rng = np.random.default_rng(0)
    p = profiles_from_anndata(_adata(names + extra, np.vstack([X, rng.normal(size=(2, X.shape[1]))])))
    eligible = p.eligible_doubles()
    assert len(eligible) == 21 and "P0+Z" not in eligible
    folds = double_folds(p, k=4, seed=3)
    assert len(folds) == 4 and sorted(len(f) for f in folds) == [5, 5, 5, 6]
    flat = [c for f in folds for c in f]
    assert sorted(flat) == sorted(eligible) and len(set(flat)) == len(flat)
    assert not any(len(p.parts[p.conditions.index(c)]) != 2 for c in flat)  # never a single in test
    assert folds == double_folds(p, k=4, seed=3) and folds != double_folds(p, k=4, seed=4)
    assert "P0+Z" in [c for f in double_folds(p, k=4, require_singles=False) for c in f]

    # training rows the runner uses: every condition except the fold's doubles
    from pdae_core.eval.pseudobulk.profiles import train_conditions

    for test in folds:
        train = train_conditions(p, test)
        assert not set(train) & set(test)
        assert {"P0+Z", "P1+P2+P3", *[f"P{i}" for i in range(7)]} <= set(train)
    with pytest.raises(DataError, match="fewer than k=30"):
        double_folds(p, k=30)


# ---------------------------------------------------------------------------------
# models and runner


def test_additive_and_linear_exact_on_additive_truth():
    names, X = _additive_truth()
    p = profiles_from_anndata(_adata(names, X))
    progress: list[str] = []
    df = run_pseudobulk_benchmark(p, models=("additive", "linear"), k=3, progress=progress.append)
    assert len(df) == 2 * 15 and len(progress) == 2 * 3
    assert set(df.columns) >= {"model", "seed", "fold", "condition", "pearson_delta", "pearson_delta_de",
                               "r2_delta", "mean_l2"}
    add, lin = df[df.model == "additive"], df[df.model == "linear"]
    np.testing.assert_allclose(add.pearson_delta, 1.0, atol=1e-12)
    np.testing.assert_allclose(add.mean_l2, 0.0, atol=1e-12)
    assert lin.pearson_delta.min() > 0.999 and lin.pearson_delta_de.min() > 0.999  # ridge alpha 1e-2

    summary = summarise_pseudobulk(df)
    assert list(summary.model) == ["additive", "linear"] and summary.sd_over.tolist() == ["doubles"] * 2
    assert summary.n_doubles.tolist() == [15, 15]
    md = pseudobulk_markdown(summary)
    assert "| additive | 15 | 1.000 ± 0.000" in md and "top-20 DE" in md

    two = summarise_pseudobulk(run_pseudobulk_benchmark(p, models=("linear",), k=3, seeds=(0, 1)))
    assert two.sd_over.iloc[0] == "seeds" and two.n_seeds.iloc[0] == 2


def test_additive_needs_singles():
    names, X = _additive_truth()
    p = profiles_from_anndata(_adata(names, X))
    model = AdditiveProfile().fit(p.subset([c for c in p.conditions if c != "P0"]))
    with pytest.raises(DataError, match="P0"):
        model.predict(p.subset(["P0+P1"]).labels)
    assert np.allclose(LinearProfile().fit(p).predict(np.zeros((1, 6))), 0.0)  # control -> no change


def test_additive_baseline_on_norman_pseudobulk(data_dir):
    """The additive figures quoted for the 126 doubles with both singles (data README)."""
    from pdae_core.data.datasets import load_dataset

    p = profiles_from_anndata(load_dataset("norman19_pseudobulk", data_dir=data_dir))
    df = run_pseudobulk_benchmark(p, models=("additive", "linear"), k=5)
    add = df[df.model == "additive"]
    assert add.condition.nunique() == len(add) == 126
    assert add.pearson_delta.mean() == pytest.approx(0.675, abs=0.005)
    assert add.pearson_delta_de.mean() == pytest.approx(0.775, abs=0.005)
    assert df[df.model == "linear"].condition.nunique() == 126


def _latent_additive_truth(seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Deltas ``f(z0 + W l) - f(z0)`` with a random nonlinear decoder ``f``."""
    rng = np.random.default_rng(seed)
    n_pert, d, n_genes = 6, 3, 30
    W = rng.normal(scale=1.0, size=(n_pert, d))
    A1, A2 = rng.normal(size=(d, 32)), rng.normal(size=(32, n_genes)) / np.sqrt(32)

    def f(z: np.ndarray) -> np.ndarray:
        return np.tanh(z @ A1) @ A2 * 2.0

    names = [f"P{i}" for i in range(n_pert)]
    conds = names + [f"{a}+{b}" for a, b in itertools.combinations(names, 2)]
    L = np.array([[1.0 if f"P{i}" in c.split("+") else 0.0 for i in range(n_pert)] for c in conds])
    z0 = rng.normal(scale=0.3, size=d)
    return conds, f(z0 + L @ W) - f(z0)


def test_double_weight_repeats_the_combinations_training_rows():
    conds, X = _latent_additive_truth(seed=0)
    p = profiles_from_anndata(_adata(conds, X))
    X1, L1 = PDAEProfile()._rows(p)
    X3, L3 = PDAEProfile(double_weight=3)._rows(p)
    doubles = np.flatnonzero(p.labels.sum(1) == 2)
    assert len(doubles) == 15 and len(X1) == p.n_conditions + 1
    # weight 3: the 15 doubles twice more, first; then every profile as at weight 1; the control (zeros) last
    assert len(X3) == len(X1) + 2 * 15
    np.testing.assert_array_equal(X3[-len(X1):].numpy(), X1.numpy())
    np.testing.assert_array_equal(L3[-len(X1):].numpy(), L1.numpy())
    np.testing.assert_allclose(X3[:30].numpy(), np.vstack([X[doubles]] * 2), rtol=1e-6)
    assert (L3[:30].sum(1) == 2).all() and not L3[-1].any() and not X3[-1].any()
    # a model trained with the weight differs from one without (the same seed and steps)
    kw = dict(latent_dim=4, hidden_dims=(16,), steps=20, val_fraction=0.0, seed=1)
    held = p.labels[doubles[:2]]
    assert not np.allclose(PDAEProfile(**kw).fit(p).predict(held), PDAEProfile(double_weight=3, **kw).fit(p).predict(held))
    for bad in (0, 1.5, -2):
        with pytest.raises(ValueError, match="double_weight"):
            PDAEProfile(double_weight=bad)


@pytest.mark.slow
def test_pdae_profile_beats_no_change():
    conds, X = _latent_additive_truth(seed=2)
    p = profiles_from_anndata(_adata(conds, X))
    test = ["P0+P3", "P1+P5", "P2+P4"]
    train = p.subset([c for c in p.conditions if c not in test])
    held = p.subset(test)
    state = torch.random.get_rng_state()
    model = PDAEProfile(latent_dim=4, hidden_dims=(32,), steps=300, lr=3e-3, val_fraction=0.0, seed=1).fit(train)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    pred = model.predict(held.labels)
    assert pred.shape == held.deltas.shape
    err = np.linalg.norm(pred - held.deltas, axis=1)
    no_change = np.linalg.norm(held.deltas, axis=1)
    assert np.all(err < no_change) and err.mean() < 0.5 * no_change.mean(), (err, no_change)
    again = PDAEProfile(latent_dim=4, hidden_dims=(32,), steps=300, lr=3e-3, val_fraction=0.0, seed=1).fit(train)
    np.testing.assert_array_equal(again.predict(held.labels), pred)  # seeded: reproducible


def test_pdae_profile_selects_steps_on_training_doubles():
    names, X = _additive_truth(n_pert=6, n_genes=20)
    p = profiles_from_anndata(_adata(names, X))
    test = ["P0+P1", "P2+P3"]
    train = p.subset([c for c in p.conditions if c not in test])
    model = PDAEProfile(latent_dim=(2, 4), hidden_dims=(16,), steps=40, eval_every=10, val_fraction=0.2).fit(train)
    assert model.validation_ and not set(model.validation_) & set(test)
    assert set(model.validation_) <= set(train.eligible_doubles())
    # every candidate latent size is scored at every evaluation step, on training doubles only
    assert [(d, s) for d, s, _ in model.curve_] == [(d, s) for d in (2, 4) for s in (10, 20, 30, 40)]
    best = max(model.curve_, key=lambda t: (t[2], -t[0], -t[1]))
    assert (model.best_latent_dim_, model.best_step_) == best[:2]
    assert model.module_.config.latent_dim == model.best_latent_dim_
    assert model.predict(p.subset(test).labels).shape == (2, 20)


def _reference_full_batch_pdae(model: PDAEProfile, profiles, latent_dim: int, steps: int):
    """The pseudobulk PDAE's optimisation written out by hand (full-batch Adam, cosine
    decay over ``steps``, clipping at 10, EMA with warm-up, one torch stream seeded
    before the module is built): what the shared training loop must reproduce."""
    from pdae_core.models.pdae import PDAEConfig, PDAEModule

    X, L = model._rows(profiles)
    config = PDAEConfig(n_genes=profiles.n_genes, n_perturbations=len(profiles.perturbations), latent_dim=latent_dim,
                        hidden_dims=model.hidden_dims, noise_dim=0, softplus_output=False, n_sources=model.n_sources,
                        source_sampling="batch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model.seed)
        module = PDAEModule(config)
        module.init_from_data(X)
        opt = torch.optim.Adam(module.optimizer_groups(model.lr))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.01 + 0.99 * 0.5 * (1.0 + np.cos(np.pi * min(s, steps) / steps)))
        avg = {k: v.detach().clone() for k, v in module.state_dict().items()}
        for step in range(1, steps + 1):
            module.train()
            opt.zero_grad()
            module.loss(X, L)["loss"].backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                d = min(model.ema_decay, (1.0 + step) / (10.0 + step))
                for k, v in module.state_dict().items():
                    avg[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
        module.load_state_dict(avg)
        module.eval()
    return module, X, L


def test_pdae_profile_trains_through_the_shared_loop_exactly_like_a_dedicated_loop():
    conds, X = _latent_additive_truth(seed=2)
    p = profiles_from_anndata(_adata(conds, X))
    test = ["P0+P3", "P1+P5"]
    train = p.subset([c for c in p.conditions if c not in test])
    labels = torch.as_tensor(p.subset(test).labels, dtype=torch.float32)
    model = PDAEProfile(latent_dim=4, hidden_dims=(16,), steps=25, val_fraction=0.0, seed=3).fit(train)
    ref, RX, RL = _reference_full_batch_pdae(model, train, latent_dim=4, steps=25)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.module_.state_dict()[k]), k
    np.testing.assert_array_equal(model.predict(p.subset(test).labels), model._moved_mean(ref, RX, RL, labels))


def test_paired_differences_against_a_direct_computation():
    from pdae_core.eval.pseudobulk import paired_differences, pseudobulk_markdown, summarise_pseudobulk

    rng = np.random.default_rng(0)
    conds = [f"D{i}" for i in range(30)]
    rows = []
    for model, shift in (("additive", 0.0), ("pdae", 0.05)):
        for c in conds:
            v = 0.6 + 0.1 * rng.standard_normal()
            rows.append({"model": model, "seed": 0, "fold": 0, "condition": c, "pearson_delta": v + shift,
                         "pearson_delta_de": v - shift, "r2_delta": 0.1, "mean_l2": 1.0, "fit_seconds": 0.0})
    df = pd.DataFrame(rows)
    d = paired_differences(df).iloc[0]
    a, p = (df[df.model == m].set_index("condition") for m in ("additive", "pdae"))
    direct = (p.pearson_delta - a.pearson_delta).mean()
    assert d.pearson_delta_diff == pytest.approx(direct)
    assert d.pearson_delta_lo <= direct <= d.pearson_delta_hi
    assert d.pearson_delta_de_wins == int(((p.pearson_delta_de - a.pearson_delta_de) > 0).sum())
    md = pseudobulk_markdown(summarise_pseudobulk(df), paired_differences(df), ["# title"])
    assert md.startswith("# title") and "Paired difference to additive" in md and "fit" not in md.lower()
    # seeded bootstrap: the same table every time
    assert md == pseudobulk_markdown(summarise_pseudobulk(df), paired_differences(df), ["# title"])


def test_a_models_paired_interval_does_not_depend_on_the_other_models():
    from pdae_core.eval.pseudobulk import paired_differences

    rng = np.random.default_rng(1)
    rows = []
    for model in ("additive", "scaled_additive", "pdae"):
        for i in range(25):
            rows.append({"model": model, "seed": 0, "condition": f"D{i}", "pearson_delta": rng.random(),
                         "pearson_delta_de": rng.random()})
    df = pd.DataFrame(rows)
    alone = paired_differences(df[df.model != "scaled_additive"]).set_index("model").loc["pdae"]
    listed = paired_differences(df).set_index("model").loc["pdae"]  # scaled_additive resampled first
    pd.testing.assert_series_equal(alone, listed)
