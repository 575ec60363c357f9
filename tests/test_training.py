"""Training loop: seeds, validation split, stratified batches, early stopping, callbacks, devices."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from pdae_core import PDAE, Callback, TrainConfig, resolve_device
from pdae_core.data.registry import condition_column
from pdae_core.train.batches import split_cells, stratified_batches
from pdae_core.train.loop import _Validator

SMALL = dict(latent_dim=3, hidden_dims=(16,), noise_dim=2, n_sources=4)



def small_model(adata, seed=0, **kw) -> PDAE:
    return PDAE.from_anndata(adata, seed=seed, **{**SMALL, **kw})


def validation_ed(model: PDAE, adata, cfg: TrainConfig, holdout=()) -> float:
    """The validation energy distance that ``fit`` monitors, recomputed from scratch for ``model``."""
    reg = model.registry
    conds = condition_column(adata, reg.perturbation_key)
    keep = ~np.isin(conds, list(holdout))
    sub = adata[keep]
    X = torch.as_tensor(reg.expression(sub))
    L = torch.as_tensor(reg.label_matrix(sub))
    _, groups = np.unique(conds[keep], return_inverse=True)
    _, val_idx = split_cells(groups, cfg.val_fraction, np.random.default_rng(cfg.seed))
    validator = _Validator(X[val_idx], L[val_idx], groups[val_idx], cfg.val_max_sources, cfg.seed)
    model.module.eval()
    return validator(model.module)


def without_seconds(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in records]


# ---- seeds -------------------------------------------------------------------------------------


def test_same_seed_gives_identical_weights_and_history(tiny_adata):
    cfg = TrainConfig(max_epochs=3, batch_size=64, eval_every=1, seed=7, accelerator="cpu")
    a, b = small_model(tiny_adata), small_model(tiny_adata)
    ha, hb = a.fit(tiny_adata, train_config=cfg), b.fit(tiny_adata, train_config=cfg)
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert without_seconds(ha.records) == without_seconds(hb.records)
    assert len(ha.records) == 3
    assert (ha.best_epoch, ha.best_val, ha.steps) == (hb.best_epoch, hb.best_val, hb.steps)
    src = tiny_adata[:20]
    np.testing.assert_array_equal(a.predict(src, "P1+P4", seed=1).X, b.predict(src, "P1+P4", seed=1).X)


def test_different_seeds_differ(tiny_adata):
    init_a, init_b = small_model(tiny_adata, seed=0), small_model(tiny_adata, seed=1)
    assert not torch.equal(init_a.module.W.weight, init_b.module.W.weight)
    assert torch.equal(init_a.module.W.weight, small_model(tiny_adata, seed=0).module.W.weight)
    a, b = small_model(tiny_adata), small_model(tiny_adata)  # same initial weights
    ha = a.fit(tiny_adata, max_epochs=2, batch_size=64, eval_every=1, seed=0, accelerator="cpu")
    hb = b.fit(tiny_adata, max_epochs=2, batch_size=64, eval_every=1, seed=1, accelerator="cpu")
    assert not torch.equal(a.module.encoder[0].weight, b.module.encoder[0].weight)
    assert [r["train_loss"] for r in ha.records] != [r["train_loss"] for r in hb.records]


# ---- validation split and batches ----------------------------------------------------------------


def test_validation_split_is_by_cells_and_stratified():
    groups = np.repeat(np.arange(4), [40, 40, 20, 3])
    train, val = split_cells(groups, 0.25, np.random.default_rng(0))
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(groups)))
    # every condition with >= 4 cells gives round(25%) of its cells; a 3-cell condition stays in training
    assert np.bincount(groups[val], minlength=4).tolist() == [10, 10, 5, 0]
    assert set(groups[train]) == {0, 1, 2, 3}  # split by cells: conditions appear on both sides
    train2, val2 = split_cells(groups, 0.25, np.random.default_rng(1))
    assert not np.array_equal(val, val2)  # random cells, not the first ones
    assert split_cells(groups, 0.0, np.random.default_rng(0))[1].size == 0


def test_stratified_batches_contain_every_condition():
    # 8 conditions x 32 cells, 8 cells per condition, batches of 64 = 8 conditions x 8 cells
    groups = np.repeat(np.arange(8), 32)
    for seed in range(5):
        batches = stratified_batches(groups, 64, 8, np.random.default_rng(seed))
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(len(groups)))  # each cell once
        for b in batches:
            counts = np.bincount(groups[b], minlength=8)
            assert counts.tolist() == [8] * 8, f"seed {seed}: cells per condition in a batch {counts.tolist()}"


def test_stratified_batches_cap_cells_per_condition():
    # more conditions than fit in one batch: each batch holds 64 / 8 = 8 conditions, 8 cells each
    groups = np.repeat(np.arange(16), 32)
    for seed in range(5):
        batches = stratified_batches(groups, 64, 8, np.random.default_rng(seed))
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(len(groups)))
        for b in batches:
            counts = np.bincount(groups[b])
            assert counts.max() <= 8 and np.count_nonzero(counts) == 8, f"seed {seed}: {counts.tolist()}"


# ---- early stopping --------------------------------------------------------------------------------


class Snapshots(Callback):
    """Keeps the module's weights at every evaluation."""

    def __init__(self, model):
        self.model, self.states = model, {}

    def on_evaluation(self, record):
        self.states[record["epoch"]] = copy.deepcopy(self.model.module.state_dict())


def test_early_stopping_restores_best_weights(tiny_adata):
    cfg = TrainConfig(max_epochs=60, batch_size=64, eval_every=1, patience=2, lr=0.05, seed=0, accelerator="cpu")
    model = small_model(tiny_adata)
    snaps = Snapshots(model)
    hist = model.fit(tiny_adata, train_config=cfg, callbacks=[snaps])
    last = hist.records[-1]["epoch"]
    assert hist.stopped_early and not hist.cancelled
    assert last < cfg.max_epochs and len(hist.records) == last
    assert hist.best_epoch is not None and hist.best_epoch < last
    vals = [r["val_ed"] for r in hist.records]
    assert hist.best_val == min(vals)
    # patience: the evaluations after the best did not improve on it
    assert all(v >= hist.best_val - 1e-6 for v in vals[hist.best_epoch:])
    # the model holds the best weights, not the last ones
    final = model.module.state_dict()
    assert all(torch.equal(final[k], snaps.states[hist.best_epoch][k]) for k in final)
    assert not all(torch.equal(final[k], snaps.states[last][k]) for k in final)
    assert validation_ed(model, tiny_adata, cfg) == pytest.approx(hist.best_val, rel=1e-6, abs=1e-7)


def test_no_validation_runs_every_epoch(tiny_adata):
    model = small_model(tiny_adata)
    hist = model.fit(tiny_adata, max_epochs=3, batch_size=64, val_fraction=0.0, patience=1, eval_every=1, accelerator="cpu")
    assert [r["epoch"] for r in hist.records] == [1, 2, 3]
    assert "val_ed" not in hist.records[0] and hist.best_epoch is None and not hist.stopped_early


def test_short_training_lowers_validation_energy_distance(tiny_adata):
    cfg = TrainConfig(max_epochs=15, batch_size=64, eval_every=1, lr=1e-2, seed=0, accelerator="cpu")
    model = small_model(tiny_adata)
    before = validation_ed(model, tiny_adata, cfg)
    hist = model.fit(tiny_adata, train_config=cfg)
    after = validation_ed(model, tiny_adata, cfg)
    assert after == pytest.approx(hist.best_val, rel=1e-6)
    assert after < 0.5 * before, (before, after)
    assert hist.records[-1]["train_loss"] < hist.records[0]["train_loss"]


# ---- callbacks -----------------------------------------------------------------------------------


class Recorder(Callback):
    def __init__(self, stop_after=None):
        self.starts, self.steps, self.evals, self.ends = [], [], [], []
        self.stop_after = stop_after

    def on_train_start(self, max_epochs, steps_per_epoch):
        self.starts.append((max_epochs, steps_per_epoch))

    def on_step(self, epoch, step, losses):
        self.steps.append((epoch, step, dict(losses)))

    def on_evaluation(self, record):
        self.evals.append(dict(record))

    def on_train_end(self, history):
        self.ends.append(history)

    def should_stop(self):
        return self.stop_after is not None and len(self.steps) >= self.stop_after


def test_callback_hooks_are_called(tiny_adata):
    rec = Recorder()
    model = small_model(tiny_adata)
    hist = model.fit(tiny_adata, max_epochs=3, batch_size=64, eval_every=1, callbacks=[rec], accelerator="cpu")
    assert len(rec.starts) == 1 and rec.starts[0][0] == 3
    per_epoch = rec.starts[0][1]
    assert per_epoch == sum(1 for e, _, _ in rec.steps if e == 1) > 0
    assert [s for _, s, _ in rec.steps] == list(range(1, hist.steps + 1))
    assert sorted({e for e, _, _ in rec.steps}) == [1, 2, 3]
    for _, _, losses in rec.steps:
        assert {"loss", "pert", "rec", "prior", "l21"} <= set(losses)
        assert all(math.isfinite(v) for v in losses.values())
    assert rec.evals == hist.records and len(rec.evals) == 3
    assert len(rec.ends) == 1 and rec.ends[0] is hist
    assert not hist.cancelled


def test_should_stop_cancels_training(tiny_adata):
    rec = Recorder(stop_after=3)
    model = small_model(tiny_adata)
    hist = model.fit(tiny_adata, max_epochs=50, batch_size=64, callbacks=[rec], accelerator="cpu")
    assert hist.cancelled and not hist.stopped_early
    assert hist.steps == 3 and len(rec.steps) == 3
    assert len(hist.records) == 1 and hist.records[0]["epoch"] == 1  # a final evaluation
    assert len(rec.ends) == 1 and model.is_trained


# ---- devices -----------------------------------------------------------------------------------------


@pytest.fixture()
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)


def test_accelerator_resolution(no_gpu):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    for acc in ("cuda", "gpu", "cuda:1"):
        with pytest.raises(ValueError, match=rf"accelerator='{acc}' was asked for but no CUDA GPU"):
            resolve_device(acc)
    with pytest.raises(ValueError, match="Apple MPS is not available"):
        resolve_device("mps")
    with pytest.raises(ValueError, match=r"Unknown accelerator 'tpu'"):
        resolve_device("tpu")


def test_auto_accelerator_on_this_machine(tiny_adata):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    hist = small_model(tiny_adata).fit(tiny_adata, max_epochs=1, batch_size=64)
    assert hist.device.startswith(expected)


def test_fit_on_missing_gpu_fails_clearly(tiny_adata, no_gpu):
    model = small_model(tiny_adata)
    with pytest.raises(ValueError, match="no CUDA GPU is available; use 'auto' or 'cpu'"):
        model.fit(tiny_adata, max_epochs=1, accelerator="cuda")
    assert not model.is_trained


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=2)
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="cells_per_condition"):
        TrainConfig(batch_size=16, cells_per_condition=32)
    cfg = TrainConfig(max_epochs=5, lr=0.01, accelerator="cpu")
    assert TrainConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg


class _Recorder(torch.nn.Module):
    """A module whose loss records the rows it sees and draws one random number per step."""

    def __init__(self, n_genes: int):
        super().__init__()
        self.b = torch.nn.Parameter(torch.zeros(n_genes))
        self.seen: list[torch.Tensor] = []
        self.draws: list[float] = []

    def optimizer_groups(self, lr):
        return self.parameters()

    def init_from_data(self, x):
        pass

    supports_shard = False

    def loss(self, x, labels, shard=None):
        self.seen.append(x.detach().clone())
        self.draws.append(float(torch.rand(())))
        return {"loss": ((x - self.b) ** 2).mean()}


def _recorder_run(**kw):
    from pdae_core.train.loop import train_module

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 4)).astype(np.float32)
    module = _Recorder(4)
    cfg = TrainConfig(**{"max_epochs": 3, "batch_size": 12, "cells_per_condition": 1, "val_fraction": 0.0,
                         "accelerator": "cpu", **kw.pop("config", {})})
    hist = train_module(module, X, np.zeros((12, 1), np.float32), np.arange(12), cfg, **kw)
    return module, X, hist


def test_full_batch_sees_every_row_in_order_each_step():
    module, X, hist = _recorder_run(config={"full_batch": True})
    assert len(module.seen) == 3 and hist.steps == 3
    for x in module.seen:
        np.testing.assert_array_equal(x.numpy(), X)
    shuffled, _, _ = _recorder_run()  # stratified batches shuffle the rows
    assert not all(np.array_equal(x.numpy(), X) for x in shuffled.seen)


def test_custom_validation_score_is_recorded_and_selects_the_best_weights():
    calls = []

    def score(module):
        calls.append(float(module.b.detach().sum()))
        return -float(len(calls))  # improves at every evaluation: the last weights are the best

    module, _, hist = _recorder_run(config={"full_batch": True, "eval_every": 1, "ema_decay": None}, validate=score)
    assert [r["val_score"] for r in hist.records] == [-1.0, -2.0, -3.0]
    assert all("val_ed" not in r for r in hist.records)
    assert hist.best_epoch == 3 and hist.best_val == -3.0
    assert math.isclose(float(module.b.detach().sum()), calls[-1])


def test_reseed_false_continues_the_callers_random_stream():
    with torch.random.fork_rng():
        torch.manual_seed(5)
        torch.rand(())  # the caller used the stream (e.g. to build the module)
        a, _, _ = _recorder_run(config={"full_batch": True, "seed": 0}, reseed=False)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        torch.rand(())
        expected = [float(torch.rand(())) for _ in range(3)]
    assert a.draws == expected
    b, _, _ = _recorder_run(config={"full_batch": True, "seed": 0})  # default: seeded with config.seed
    with torch.random.fork_rng():
        torch.manual_seed(0)
        assert b.draws == [float(torch.rand(())) for _ in range(3)]
