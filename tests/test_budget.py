"""The training budget in steps: the schedule, the evaluations and the time stop growing with the cells."""

from __future__ import annotations

import numpy as np
import pytest

from pdae_core import PDAE, Callback, TrainConfig
from pdae_core.data.synthetic import make_synthetic
from pdae_core.train.jobs import Reporter, TrainingCallback
from pdae_core.train.loop import Budget

SMALL = dict(latent_dim=3, hidden_dims=(16,), noise_dim=2, n_sources=4)


def data(cells_per_condition: int):
    adata, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=30, hidden=16, n_doubles=3,
                              cells_per_condition=cells_per_condition, seed=1)
    return adata


class Plan(Callback):
    def __init__(self):
        self.start = self.total = None
        self.steps = 0

    def on_train_start(self, max_epochs, steps_per_epoch):
        self.start = (max_epochs, steps_per_epoch)

    def on_budget(self, total_steps):
        self.total = total_steps

    def on_step(self, epoch, step, losses):
        self.steps = step


def test_plan_is_epochs_on_small_data_and_steps_on_large():
    cfg = TrainConfig()  # 150 epochs, 6000 steps, an evaluation every 2 epochs
    small = Budget.plan(cfg, 35)
    assert (small.by_steps, small.total_steps, small.epochs, small.eval_interval) == (False, 5250, 150, 70)
    big = Budget.plan(cfg, 1400)
    assert (big.by_steps, big.total_steps, big.epochs) == (True, 6000, 5)
    assert big.eval_interval == 80 and big.total_steps // big.eval_interval == cfg.max_epochs // cfg.eval_every
    assert Budget.plan(TrainConfig(budget_steps=None), 1400).total_steps == 150 * 1400
    with pytest.raises(ValueError, match="budget_steps"):
        TrainConfig(budget_steps=0)


def test_same_budget_same_steps_whatever_the_number_of_cells():
    """Two datasets, one 4x the other: at the same step budget both train the same number of steps,
    end their cosine schedule at lr/100 and are evaluated as often."""
    runs = []
    for cells in (40, 160):
        adata = data(cells)
        plan = Plan()
        model = PDAE.from_anndata(adata, seed=0, **SMALL)
        hist = model.fit(adata, max_epochs=20, budget_steps=30, batch_size=32, eval_every=2, patience=100,
                         callbacks=[plan], accelerator="cpu", progress_bar=False)
        runs.append((hist, plan))
    for hist, plan in runs:
        assert hist.steps == 30 and plan.steps == 30 and plan.total == 30
        assert not hist.stopped_early
        assert [r["step"] for r in hist.records] == [3 * k for k in range(1, 11)]  # 20 / 2 evaluations
        assert hist.records[-1]["lr"] == pytest.approx(1e-3 * 0.01, rel=1e-6)  # the schedule spans the budget
        assert hist.records[0]["lr"] > 0.9e-3
    small_epochs, big_epochs = runs[0][0].records[-1]["epoch"], runs[1][0].records[-1]["epoch"]
    assert big_epochs < small_epochs  # the larger dataset sees each cell fewer times
    assert runs[1][1].start[1] > runs[0][1].start[1]


def test_epoch_budget_when_it_is_the_smaller():
    adata = data(40)
    model = PDAE.from_anndata(adata, seed=0, **SMALL)
    plan = Plan()
    hist = model.fit(adata, max_epochs=3, budget_steps=10_000, batch_size=32, eval_every=1, callbacks=[plan],
                     accelerator="cpu", progress_bar=False)
    assert [r["epoch"] for r in hist.records] == [1, 2, 3]
    assert hist.steps == plan.total == 3 * plan.start[1]


def test_step_limit_inside_a_step_budget_ends_with_an_evaluation():
    adata = data(160)
    model = PDAE.from_anndata(adata, seed=0, **SMALL)
    hist = model.fit(adata, max_epochs=20, budget_steps=30, max_steps=7, batch_size=32, eval_every=2,
                     accelerator="cpu", progress_bar=False)
    assert hist.steps == 7
    assert [r["step"] for r in hist.records] == [3, 6, 7]
    assert hist.records[-1]["lr"] > 1e-3 * 0.5  # stopped early in the schedule


def test_dashboard_progress_runs_over_the_budget():
    adata = data(160)
    reporter = Reporter()
    cb = TrainingCallback(reporter)
    model = PDAE.from_anndata(adata, seed=0, **SMALL)
    model.fit(adata, max_epochs=20, budget_steps=30, batch_size=32, callbacks=[cb], accelerator="cpu")
    assert cb.total_steps == 30
    assert cb.step == 30


def test_seeded_step_budget_runs_are_identical():
    adata = data(160)
    a, b = (PDAE.from_anndata(adata, seed=0, **SMALL) for _ in range(2))
    kw = dict(max_epochs=20, budget_steps=12, batch_size=32, accelerator="cpu", progress_bar=False)
    ha, hb = a.fit(adata, **kw), b.fit(adata, **kw)
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in ha.records]
    assert strip == [{k: v for k, v in r.items() if "seconds" not in k} for r in hb.records]
    for k, v in a.module.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), b.module.state_dict()[k].numpy())


def test_a_step_budget_model_saves_and_loads(tmp_path):
    """Evaluations part-way through an epoch give a fractional best epoch; the checkpoint keeps it,
    with the thread count's history."""
    adata = data(160)
    model = PDAE.from_anndata(adata, seed=0, **SMALL)
    hist = model.fit(adata, max_epochs=20, budget_steps=13, batch_size=32, threads="auto", accelerator="cpu",
                     progress_bar=False)
    assert hist.best_epoch != int(hist.best_epoch)
    assert hist.thread_changes and hist.thread_changes[0][0] == 0.0
    model.save(tmp_path / "ckpt")
    back = PDAE.load(tmp_path / "ckpt")
    assert back.history.best_epoch == hist.best_epoch
    assert [list(c) for c in back.history.thread_changes] == [list(c) for c in hist.thread_changes]
    assert back.train_config.budget_steps == 13 and back.train_config.threads == "auto"
