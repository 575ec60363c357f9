"""Feedback from long calls (issue 18 part 2): ``fit`` shows a tqdm bar by default (silenced by
``progress_bar=False``) and logs to ``pdae_core.train.loop``; one bar only under ``pdae train``,
none in the dashboard's training jobs; the benchmark runner and the pair screen have a bar of
their own and no bar per fit. A bar is drawn when stderr is a terminal: the tests stand a
terminal-like stream in for stderr."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

import pdae_core as pc
from pdae_core import cli
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.checkpoint import load_checkpoint
from pdae_core.models.integrity import seal
from pdae_core.train import loop
from pdae_core.train.jobs import JobState, training_job
from pdae_core.train.loop import ProgressBar, TrainConfig

SMALL = dict(latent_dim=2, hidden_dims=(8,), noise_dim=2, n_sources=4)
FIT = dict(max_epochs=2, batch_size=32, accelerator="cpu")


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that tqdm draws (its rule for disable=None)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture()
def terminal(monkeypatch):
    """Call it in the test's body to stand a Terminal in for stderr (pytest's capture resets
    sys.stderr between a fixture's set-up and the test)."""

    def use() -> Terminal:
        term = Terminal()
        monkeypatch.setattr(sys, "stderr", term)
        return term

    return use


@pytest.fixture(scope="module")
def data():
    adata, _ = make_synthetic(n_perturbations=3, latent_dim=2, n_genes=12, hidden=8, n_doubles=2,
                              cells_per_condition=20, seed=0)
    return adata


def model(data, **kw):
    return pc.PDAE.from_anndata(data, seed=0, **SMALL, **kw)


@pytest.fixture()
def bars(monkeypatch) -> list[ProgressBar]:
    """Every ProgressBar that starts (the built-in one and the CLI's alike)."""
    started: list[ProgressBar] = []
    start = ProgressBar.on_train_start

    def spy(self, max_epochs, steps_per_epoch):
        started.append(self)
        start(self, max_epochs, steps_per_epoch)

    monkeypatch.setattr(ProgressBar, "on_train_start", spy)
    return started


# ---------------------------------------------------------------------------------
# the setting


def test_progress_bar_is_a_train_config_field_defaulting_to_on():
    assert TrainConfig().progress_bar is True
    # a config saved before the field existed (old checkpoints) reads back with the default
    old = {k: v for k, v in TrainConfig(max_epochs=3).to_dict().items() if k != "progress_bar"}
    assert TrainConfig.from_dict(old) == TrainConfig(max_epochs=3)
    assert TrainConfig.from_dict({**old, "progress_bar": False}).progress_bar is False
    with pytest.raises(ValueError, match="progress_bar must be True or False"):
        TrainConfig(progress_bar="no")


def test_checkpoint_saved_without_the_field_loads(data, tmp_path):
    m = model(data)
    m.fit(data, progress_bar=False, **FIT)
    m.save(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["training"]["train_config"]["progress_bar"] is False  # recorded like every field
    del cfg["training"]["train_config"]["progress_bar"]  # as an older pdae_core wrote it
    (tmp_path / "ck" / "config.json").write_text(json.dumps(seal(cfg), indent=1))
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.train_config.progress_bar is True and loaded.train_config.max_epochs == 2


# ---------------------------------------------------------------------------------
# fit


def test_fit_draws_a_bar_with_epoch_loss_and_validation(data, terminal, bars):
    term = terminal()
    m = model(data)
    m.fit(data, **FIT)
    out = term.getvalue()
    assert len(bars) == 1 and bars[0].bar is None  # closed at the end
    final = out.rstrip("\n").split("\r")[-1]  # the bar as left on screen
    assert final.startswith("training: 100%") and "8/8" in final and "step" in final
    assert "epoch=2" in final and "loss=" in final and "val_ed=" in final


def test_progress_bar_false_is_silent(data, terminal, bars):
    term = terminal()
    model(data).fit(data, progress_bar=False, **FIT)
    model(data).fit(data, train_config=TrainConfig(progress_bar=False, **FIT))
    assert term.getvalue() == "" and bars == []


def test_no_bar_when_stderr_is_not_a_terminal(data, monkeypatch):
    plain = io.StringIO()  # a file or a pipe: tqdm's disable=None hides the bar
    monkeypatch.setattr(sys, "stderr", plain)
    model(data).fit(data, **FIT)
    assert plain.getvalue() == ""


def test_a_callback_that_shows_progress_replaces_the_bar(data, terminal, bars):
    term = terminal()

    class Own(loop.Callback):
        shows_progress = True

    model(data).fit(data, callbacks=[Own()], **FIT)
    assert term.getvalue() == "" and bars == []


def test_bar_is_closed_when_training_fails(data, terminal, bars):
    terminal()

    class Boom(loop.Callback):
        def on_step(self, epoch, step, losses):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model(data).fit(data, callbacks=[Boom()], **FIT)
    assert len(bars) == 1 and bars[0].bar is None


def test_fit_logs_start_end_and_epochs(data, caplog):
    with caplog.at_level(logging.DEBUG, logger="pdae_core.train.loop"):
        model(data).fit(data, progress_bar=False, **FIT)
    msgs = [r.getMessage() for r in caplog.records if r.name == "pdae_core.train.loop"]
    infos = [r.getMessage() for r in caplog.records if r.name == "pdae_core.train.loop" and r.levelno == logging.INFO]
    assert infos[0].startswith("training PDAEModule on cpu:") and "at most 2 epochs" in infos[0]
    assert infos[-1].startswith("training finished: 2 epochs") and "best val_ed" in infos[-1]
    assert any(m.startswith("epoch 1: ") and "loss=" in m for m in msgs)
    assert any(m.startswith("epoch 2: val_ed=") for m in msgs)


# ---------------------------------------------------------------------------------
# the CLI and the dashboard


def test_pdae_train_shows_one_bar(data, tmp_path, terminal, bars):
    term = terminal()
    path = tmp_path / "d.h5ad"
    data.write_h5ad(path)
    rc = cli.main(["train", "--data", str(path), "--out", str(tmp_path / "ck"), "--epochs", "2", "--batch-size", "32",
                   "--latent-dim", "2", "--hidden-dims", "8", "--noise-dim", "2", "--accelerator", "cpu"])
    assert rc == 0
    assert len(bars) == 1 and bars[0].disable is False  # the CLI's own, not the loop's as well
    out = term.getvalue()
    assert out.count("\n") == 1 and "training: 100%" in out  # one bar, closed once


def test_pdae_train_quiet_shows_none(data, tmp_path, terminal):
    term = terminal()
    path = tmp_path / "d.h5ad"
    data.write_h5ad(path)
    rc = cli.main(["train", "--data", str(path), "--out", str(tmp_path / "ck"), "--epochs", "1", "--batch-size", "32",
                   "--latent-dim", "2", "--hidden-dims", "8", "--noise-dim", "2", "--accelerator", "cpu", "-q"])
    assert rc == 0 and "step" not in term.getvalue()


def test_training_job_draws_no_bar(data, terminal, bars):
    term = terminal()
    m = model(data)
    job = training_job(m, data, **FIT).start()
    assert job.join(timeout=120)
    assert job.snapshot().state is JobState.DONE
    assert m.train_config.progress_bar is False
    assert bars == [] and term.getvalue() == ""


# ---------------------------------------------------------------------------------
# the benchmark runner and the pair screen


def test_benchmark_runner_shows_a_bar_over_pairs_and_none_per_fit(data, tmp_path, terminal, bars):
    term = terminal()
    from pdae_core.eval.benchmark import BenchmarkSpec, run_benchmark

    reg = pc.setup_anndata(data, "condition", "control")
    spec = BenchmarkSpec(dataset="synthetic", models=["pdae", "additive"], seeds=[0], test_fraction=0.5, n_boot=5,
                         accelerator="cpu", train={"max_epochs": 1, "max_steps": 2})
    run_benchmark(data, reg, spec, tmp_path / "b")
    out = term.getvalue()
    assert "benchmark: 100%" in out and "3/3" in out  # pdae, additive and the noise floor
    assert bars == [] and "training" not in out
    # a caller's progress events replace the bar, and progress_bar=False silences it
    term.seek(0)
    term.truncate()
    run_benchmark(data, reg, spec, tmp_path / "b", progress=lambda e: None)
    run_benchmark(data, reg, spec, tmp_path / "b", progress_bar=False)
    assert term.getvalue() == ""


def test_pair_screen_bar(terminal):
    term = terminal()
    from pdae_core.eval.pair_screen import screen_pairs

    adata, _ = make_synthetic(n_perturbations=4, latent_dim=2, n_genes=30, hidden=8, n_doubles=2,
                              cells_per_condition=20, seed=3)
    m = pc.PDAE.from_anndata(adata, seed=0, **SMALL)
    m.fit(adata, progress_bar=False, **FIT)
    table = screen_pairs(m, adata, genes="all", n_cells=16, chunk_pairs=2)
    assert len(table) == 6 and "pair screen: 100%" in term.getvalue() and "6/6" in term.getvalue()
    term.seek(0)
    term.truncate()
    seen = []
    screen_pairs(m, adata, genes="all", n_cells=16, chunk_pairs=2, progress=lambda d, t: seen.append(d))
    screen_pairs(m, adata, genes="all", n_cells=16, chunk_pairs=2, progress_bar=False)
    screen_pairs(m, adata, genes="all", n_cells=16)  # one chunk: no bar
    assert seen == [2, 4, 6] and term.getvalue() == ""
