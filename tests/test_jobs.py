"""Background jobs (pdae_core.train.jobs): state machine, cancellation, copies, training and benchmark jobs."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from pdae_core import PDAE, setup_anndata
from pdae_core.data.synthetic import make_synthetic
from pdae_core.errors import DataError
from pdae_core.eval.benchmark import BenchmarkSpec
from pdae_core.train.jobs import (
    Job,
    JobSnapshot,
    JobState,
    Reporter,
    TrainingCallback,
    benchmark_job,
    training_job,
)
from pdae_core.train.loop import History

TIMEOUT = 20.0


def wait_for(cond, timeout: float = TIMEOUT) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def small_adata():
    adata, _ = make_synthetic(n_perturbations=3, latent_dim=3, n_genes=20, hidden=8, n_doubles=2,
                              cells_per_condition=30, seed=2)
    return adata


def tiny_model(adata) -> PDAE:
    return PDAE(setup_anndata(adata, "condition", "control"), hidden_dims=(16,), latent_dim=4, noise_dim=2,
                n_sources=4)


# ---- Job -----------------------------------------------------------------------------


def test_trivial_job_pending_running_done():
    gate = threading.Event()

    def fn(reporter: Reporter) -> int:
        reporter.update(fraction=0.5, message="half way")
        gate.wait(TIMEOUT)
        return 42

    job = Job(fn, name="trivial")
    snap = job.snapshot()
    assert snap.state is JobState.PENDING and not snap.finished and snap.elapsed_s == 0.0
    with pytest.raises(RuntimeError, match="pending"):
        job.result()
    assert job.start() is job
    wait_for(lambda: job.snapshot().message == "half way")
    snap = job.snapshot()
    assert snap.state is JobState.RUNNING and snap.fraction == 0.5 and not snap.finished
    with pytest.raises(RuntimeError, match="running"):
        job.result()
    with pytest.raises(RuntimeError, match="already started"):
        job.start()
    gate.set()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert isinstance(snap, JobSnapshot)
    assert snap.state is JobState.DONE and snap.finished and snap.error is None
    assert snap.fraction == 1.0 and snap.message == "half way" and snap.elapsed_s > 0
    assert job.result() == 42
    assert JobState.DONE == "done"  # str enum: plain strings for the UI


def test_exception_ends_failed_with_one_line_error(caplog):
    def fn(reporter: Reporter) -> None:
        reporter.update(fraction=0.3)
        raise DataError("column 'condition' is missing\n(second line)")

    with caplog.at_level(logging.ERROR, logger="pdae_core.train.jobs"):
        job = Job(fn, name="bad").start()
        assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.state is JobState.FAILED and snap.finished
    assert snap.error == "DataError: column 'condition' is missing (second line)"
    assert snap.message == snap.error and snap.fraction == pytest.approx(0.3)
    with pytest.raises(RuntimeError, match="failed: DataError: column") as info:
        job.result()
    assert isinstance(info.value.__cause__, DataError)
    assert any(r.exc_info and "bad" in r.getMessage() for r in caplog.records)  # traceback logged


def test_cancel_of_looping_fn():
    def fn(reporter: Reporter) -> str:
        i = 0
        while not reporter.cancelled:
            i += 1
            reporter.update(fraction=i / 1e9, message=f"iteration {i}")
            time.sleep(0.001)
        return "partial"

    job = Job(fn).start()
    wait_for(lambda: job.snapshot().message.startswith("iteration"))
    job.cancel()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.state is JobState.CANCELLED and snap.finished and snap.error is None
    assert snap.message.startswith("cancelled") and snap.fraction < 1.0
    assert job.result() == "partial"  # fn returned a value after the cancel: kept
    job.cancel()  # no-op once finished
    assert job.snapshot().state is JobState.CANCELLED


def test_cancel_before_start_never_runs():
    ran = []
    job = Job(lambda r: ran.append(1))
    job.cancel()
    assert job.snapshot().state is JobState.CANCELLED and job.join(0)
    job.start()
    time.sleep(0.05)
    assert not ran and job.snapshot().state is JobState.CANCELLED
    with pytest.raises(RuntimeError, match="cancelled"):
        job.result()


def test_snapshot_records_are_copies():
    rec = {"epoch": 1, "vals": [1.0]}

    def fn(reporter: Reporter) -> None:
        reporter.add_record(rec)
        rec["vals"].append(99.0)  # the caller's dict changing later does not matter
        reporter.update(fraction=7.0)  # clamped
        reporter.update(fraction=float("nan"))  # ignored

    job = Job(fn).start()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.records == [{"epoch": 1, "vals": [1.0]}]
    snap.records[0]["vals"].append(2.0)
    snap.records[0]["epoch"] = 5
    snap.records.append({"epoch": 2})
    assert job.snapshot().records == [{"epoch": 1, "vals": [1.0]}]


def test_reporter_clamps_fraction():
    r = Reporter()
    r.update(fraction=-3)
    assert r._fraction == 0.0
    r.update(fraction=3)
    assert r._fraction == 1.0
    r.update(message="x")
    assert r._fraction == 1.0 and r._message == "x"


# ---- training ------------------------------------------------------------------------


def test_training_callback_throttles_and_stops():
    r = Reporter()
    cb = TrainingCallback(r, min_interval_s=60.0)
    cb.on_train_start(max_epochs=10, steps_per_epoch=5)
    cb.on_step(1, 1, {"loss": 0.5})
    assert r._message == "epoch 1/10 · loss 0.5000" and r._fraction == pytest.approx(1 / 50)
    for s in range(2, 6):
        cb.on_step(1, s, {"loss": 0.1})
    assert r._message == "epoch 1/10 · loss 0.5000"  # throttled
    cb.on_evaluation({"epoch": 2, "step": 10, "train_loss": 0.25, "val_ed": 0.125})
    assert r._records == [{"epoch": 2, "step": 10, "train_loss": 0.25, "val_ed": 0.125}]
    assert r._message == "epoch 2/10 · loss 0.2500 · val ED 0.1250" and r._fraction == pytest.approx(10 / 50)
    cb.on_train_end(History(steps=10, best_val=0.125, best_epoch=2))
    assert r._message.startswith("finished at epoch 2/10") and "best val ED 0.1250" in r._message
    assert not cb.should_stop()
    r._request_cancel()
    assert cb.should_stop()


def test_training_job_done(small_adata):
    model = tiny_model(small_adata)
    job = training_job(model, small_adata, max_epochs=3, accelerator="cpu")
    assert job.snapshot().state is JobState.PENDING
    assert job.start().join(TIMEOUT)
    snap = job.snapshot()
    assert snap.state is JobState.DONE, snap.error
    assert snap.fraction == 1.0 and snap.records
    assert snap.records[-1]["epoch"] == 3 and "val_ed" in snap.records[-1]
    assert snap.message.startswith("finished at epoch 3/3")
    assert job.result() is model and model.is_trained and not model.history.cancelled


def test_training_job_cancel_keeps_a_usable_model(small_adata):
    model = tiny_model(small_adata)
    double = next(c for c in small_adata.obs["condition"].cat.categories if "+" in c)
    job = training_job(model, small_adata, holdout=[double], max_epochs=100_000, eval_every=1,
                       accelerator="cpu").start()
    wait_for(lambda: len(job.snapshot().records) >= 1)
    t0 = time.monotonic()
    job.cancel()
    assert job.join(TIMEOUT)
    assert time.monotonic() - t0 < 5.0
    snap = job.snapshot()
    assert snap.state is JobState.CANCELLED and snap.error is None and snap.fraction < 1.0
    assert snap.message.startswith("cancelled · stopped at epoch")
    assert job.result() is model and model.history.cancelled and model.holdout == [double]
    ctrl = small_adata[small_adata.obs["condition"] == "control"]
    pred = model.predict(ctrl, double)
    assert pred.shape == (ctrl.n_obs, small_adata.n_vars) and np.isfinite(pred.X).all()


def test_training_job_bad_settings_fail(small_adata):
    job = training_job(tiny_model(small_adata), small_adata, max_epochs=0).start()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.state is JobState.FAILED
    assert snap.error == "ValueError: TrainConfig: max_epochs must be >= 1"
    job = training_job(tiny_model(small_adata), small_adata, holdout=["nope"], max_epochs=1).start()
    assert job.join(TIMEOUT)
    assert job.snapshot().state is JobState.FAILED and job.snapshot().error.startswith("DataError: ")


# ---- benchmark -----------------------------------------------------------------------


def bench_spec() -> BenchmarkSpec:
    return BenchmarkSpec(models=["additive", "control"], seeds=[0], test_fraction=0.5, n_boot=10, accelerator="cpu")


def test_benchmark_job_done(small_adata, tmp_path):
    job = benchmark_job("synthetic", bench_spec(), tmp_path / "bench", adata=small_adata.copy())
    assert job.start().join(TIMEOUT)
    snap = job.snapshot()
    assert snap.state is JobState.DONE, snap.error
    assert snap.fraction == 1.0 and "benchmark written to" in snap.message
    assert (tmp_path / "bench" / "summary.md").is_file()
    df = job.result()
    assert set(df["model"]) == {"additive", "control", "noise floor"}


def test_benchmark_job_cancel(small_adata, tmp_path, monkeypatch):
    import pdae_core.eval.benchmark as bm

    holder: list[Job] = []
    fractions: list[float] = []
    original = bm.format_event

    def cancelling_format(event):  # cancel as soon as the first pair is done
        if event.get("stage") == "pair_done":
            fractions.append(event["done"] / event["total"])
            holder[0].cancel()
        return original(event)

    monkeypatch.setattr(bm, "format_event", cancelling_format)
    job = benchmark_job("synthetic", bench_spec(), tmp_path / "bench", adata=small_adata.copy())
    holder.append(job)
    assert job.start().join(TIMEOUT)
    snap = job.snapshot()
    assert snap.state is JobState.CANCELLED and snap.error is None
    assert snap.fraction == pytest.approx(fractions[0]) and 0 < snap.fraction < 1
    assert not (tmp_path / "bench" / "summary.md").exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        job.result()
