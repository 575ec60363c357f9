"""Background jobs: run long training or benchmarks off the caller's thread.

UI-agnostic (no Streamlit, no printing): a :class:`Job` runs ``fn(reporter)`` on a
daemon thread; ``fn`` reports progress through its :class:`Reporter`, and the UI polls
:meth:`Job.snapshot`, which returns a frozen :class:`JobSnapshot` of plain copies, so
the UI never shares mutable state with the worker. Cancellation is cooperative:
:meth:`Job.cancel` sets a flag that ``fn`` reads as ``reporter.cancelled``.

    job = training_job(model, adata, max_epochs=150).start()
    ...                                  # on every UI refresh:
    snap = job.snapshot()                # state, fraction, message, records, error
    if snap.finished and snap.state is not JobState.FAILED:
        model = job.result()

While a training job runs, the worker thread owns the model: do not use it (predict,
save, ...) until the job is finished.

State machine: PENDING -> RUNNING (:meth:`Job.start`) -> DONE | FAILED | CANCELLED.
An exception in ``fn`` ends FAILED with a one-line ``error`` (its type and message;
the traceback goes to this module's logger). ``fn`` returning after a cancel was
requested ends CANCELLED (its return value is kept: :meth:`Job.result` returns it).
"""

from __future__ import annotations

import copy
import enum
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .loop import Callback, History, TrainConfig

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

    from ..eval.benchmark import BenchmarkSpec
    from ..models.base import PerturbationModel

__all__ = ["JobState", "JobSnapshot", "Job", "Reporter", "TrainingCallback", "training_job", "benchmark_job"]

logger = logging.getLogger(__name__)

_NO_VALUE = object()


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


_FINISHED = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobSnapshot:
    """A job's state at one moment; every field is a copy the caller may keep or mutate."""

    state: JobState
    fraction: float  # progress in [0, 1]; 1.0 once DONE
    message: str  # last human-readable status line
    records: list[dict]  # evaluation records so far (deep copies), e.g. for a loss curve
    error: str | None  # "ExceptionType: message" when FAILED, else None
    elapsed_s: float  # seconds since start (frozen once finished; 0 before start)

    @property
    def finished(self) -> bool:
        """DONE, FAILED or CANCELLED."""
        return self.state in _FINISHED


class _Cancelled(Exception):
    """Raised inside a job to stop it because a cancel was requested (ends CANCELLED).

    Deliberately not a :class:`~pdae_core.errors.PDAEError`, so that library code that
    turns user-facing errors into per-row errors (the benchmark) lets it through."""


def _is_cancellation(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _Cancelled):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class Reporter:
    """Passed to a job's ``fn``: thread-safe progress reporting and the cancel flag.

    Usable on its own too (e.g. to drive :class:`TrainingCallback` without a Job).
    Updates after the job has finished are ignored."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._fraction = 0.0
        self._message = ""
        self._records: list[dict] = []
        self._closed = False

    def update(self, fraction: float | None = None, message: str | None = None) -> None:
        """Set the progress fraction (clamped to [0, 1]; NaN ignored) and/or the status line."""
        with self._lock:
            self._set(fraction, message)

    def add_record(self, record: Mapping[str, Any], fraction: float | None = None, message: str | None = None) -> None:
        """Append a (deep-copied) record, e.g. one evaluation of a training run; with
        ``fraction`` / ``message``, set them in the same step (as :meth:`update` would), so that
        no snapshot shows a status line about an evaluation that its records lack."""
        rec = copy.deepcopy(dict(record))
        with self._lock:
            if not self._closed:
                self._records.append(rec)
            self._set(fraction, message)

    def _set(self, fraction: float | None, message: str | None) -> None:  # with the lock held
        if self._closed:
            return
        if fraction is not None:
            frac = float(fraction)
            if not math.isnan(frac):
                self._fraction = min(1.0, max(0.0, frac))
        if message is not None:
            self._message = str(message)

    @property
    def cancelled(self) -> bool:
        """True once a cancel was requested: ``fn`` should stop soon."""
        return self._cancel.is_set()

    # ---- used by Job ------------------------------------------------------------
    def _request_cancel(self) -> None:
        self._cancel.set()


class Job:
    """Runs ``fn(reporter)`` on a daemon thread; poll :meth:`snapshot` for progress."""

    def __init__(self, fn: Callable[[Reporter], Any], name: str = "job"):
        self.name = str(name)
        self._fn = fn
        self._reporter = Reporter()
        self._lock = self._reporter._lock  # one lock guards all shared state
        self._state = JobState.PENDING
        self._error: str | None = None
        self._exception: BaseException | None = None
        self._value: Any = _NO_VALUE
        self._t0: float | None = None
        self._t1: float | None = None
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Job:
        """Start the worker thread (once). A job cancelled before it started stays CANCELLED
        and never runs ``fn``. Returns the job."""
        with self._lock:
            if self._state is JobState.CANCELLED and self._thread is None:
                return self
            if self._state is not JobState.PENDING:
                raise RuntimeError(f"job {self.name!r} was already started")
            self._state = JobState.RUNNING
            self._t0 = time.monotonic()
            self._thread = threading.Thread(target=self._run, name=f"pdae-job-{self.name}", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask ``fn`` to stop (it sees ``reporter.cancelled``); returns at once. A PENDING
        job is CANCELLED immediately; a finished one is left as it is."""
        self._reporter._request_cancel()
        with self._lock:
            if self._state is JobState.PENDING:
                self._state = JobState.CANCELLED
                self._reporter._message = "cancelled before it started"
                self._reporter._closed = True
                self._finished.set()

    def snapshot(self) -> JobSnapshot:
        """The current state, as plain copies (safe to keep and to mutate)."""
        with self._lock:
            r = self._reporter
            if self._t0 is None:
                elapsed = 0.0
            else:
                elapsed = (self._t1 if self._t1 is not None else time.monotonic()) - self._t0
            return JobSnapshot(
                state=self._state,
                fraction=r._fraction,
                message=r._message,
                records=copy.deepcopy(r._records),
                error=self._error,
                elapsed_s=float(elapsed),
            )

    @property
    def state(self) -> JobState:
        with self._lock:
            return self._state

    @property
    def cancel_requested(self) -> bool:
        return self._reporter.cancelled

    def result(self) -> Any:
        """``fn``'s return value when DONE, or when CANCELLED after ``fn`` returned
        (e.g. a training job cancelled mid-way returns the model with its best weights
        so far). Raises :class:`RuntimeError` otherwise: still running, FAILED (with
        the original exception as its cause), or cancelled without a value."""
        with self._lock:
            state, value, error, exc = self._state, self._value, self._error, self._exception
        if state in (JobState.DONE, JobState.CANCELLED) and value is not _NO_VALUE:
            return value
        if state is JobState.FAILED:
            raise RuntimeError(f"job {self.name!r} failed: {error}") from exc
        if state is JobState.CANCELLED:
            raise RuntimeError(f"job {self.name!r} was cancelled before it produced a result")
        raise RuntimeError(f"job {self.name!r} is {state.value}; it has no result yet")

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the job has finished (at most ``timeout`` seconds); True if it has.
        A job that was never started returns at once."""
        with self._lock:
            started = self._thread is not None
        if not started:
            return self._finished.is_set()
        return self._finished.wait(timeout)

    # ---- worker -----------------------------------------------------------------
    def _run(self) -> None:
        value: Any = _NO_VALUE
        error: str | None = None
        exception: BaseException | None = None
        try:
            value = self._fn(self._reporter)
        except BaseException as e:  # never re-raise on the worker thread
            if _is_cancellation(e):
                logger.info("job %r cancelled", self.name)
            else:
                text = " ".join(str(e).split())
                error = f"{type(e).__name__}: {text}" if text else type(e).__name__
                exception = e
                logger.exception("job %r failed", self.name)
        with self._lock:
            r = self._reporter
            if exception is not None:
                self._state, self._error, self._exception = JobState.FAILED, error, exception
                r._message = error or ""
            elif self._reporter.cancelled:
                self._state = JobState.CANCELLED
                r._message = f"cancelled · {r._message}" if r._message else "cancelled"
            else:
                self._state = JobState.DONE
                r._fraction = 1.0
                r._message = r._message or "done"
            self._value = value
            r._closed = True
            self._t1 = time.monotonic()
            self._finished.set()

    def __repr__(self) -> str:
        return f"Job({self.name!r}, {self.state.value})"


# ---------------------------------------------------------------------------------
# training


class TrainingCallback(Callback):
    """Bridges ``model.fit`` progress to a :class:`Reporter`.

    Fraction = steps done / planned steps (``max_epochs * steps_per_epoch``, or
    ``max_steps`` when smaller); with ``time_limit_s``, the elapsed share of it when
    that is larger. Early stopping ends below 1.0 (a DONE job then reports 1.0).
    Step messages (``'epoch 12/150 · loss 0.4321 · val ED 0.1234 at epoch 10'``) are
    throttled to one per ``min_interval_s``; every evaluation is added as a record,
    together with its status line (``'epoch 12/150 · loss 0.4321 · val ED 0.1234'``).
    ``should_stop`` returns ``reporter.cancelled``, so a cancel stops training after the
    current step (the model keeps its best weights so far).

    An ensemble of ``n_members`` networks trains them one after the other, and
    ``on_train_start`` is called once per network: ``max_steps`` and ``time_limit_s`` are
    then per network, the fraction runs over the whole ensemble, messages start with
    ``'network 2 of 5, '`` and records carry ``member`` (0-based)."""

    def __init__(
        self,
        reporter: Reporter,
        min_interval_s: float = 0.2,
        max_steps: int | None = None,
        time_limit_s: float | None = None,
        n_members: int = 1,
    ):
        self.reporter = reporter
        self.min_interval_s = float(min_interval_s)
        self.max_steps = max_steps
        self.time_limit_s = time_limit_s
        self.n_members = max(1, int(n_members))
        self.member = -1  # index of the network in training (0-based); -1 before the first
        self.max_epochs = 0
        self.steps_per_epoch = 0
        self.total_steps = 0
        self.epoch = 0
        self.step = 0
        self.val_ed: float | None = None
        self.val_epoch: int | None = None
        self._t0 = time.monotonic()
        self._last_update = -math.inf

    def on_train_start(self, max_epochs: int, steps_per_epoch: int) -> None:
        self.member = min(self.member + 1, self.n_members - 1)
        self.max_epochs, self.steps_per_epoch = int(max_epochs), int(steps_per_epoch)
        self.total_steps = max(1, self.max_epochs * self.steps_per_epoch)
        if self.max_steps is not None:
            self.total_steps = max(1, min(self.total_steps, int(self.max_steps)))
        self.epoch = self.step = 0
        self.val_ed = self.val_epoch = None
        self._t0 = time.monotonic()
        self._last_update = -math.inf
        self.reporter.update(
            fraction=self._fraction(),
            message=f"{self._network()}training: {self.max_epochs} epochs × {self.steps_per_epoch} steps",
        )

    def on_budget(self, total_steps: int) -> None:
        self.total_steps = max(1, int(total_steps))
        if self.max_steps is not None:
            self.total_steps = max(1, min(self.total_steps, int(self.max_steps)))
        self.reporter.update(
            fraction=self._fraction(),
            message=f"{self._network()}training: {self.total_steps} steps ({self.steps_per_epoch} per epoch)",
        )

    def _network(self) -> str:
        return f"network {self.member + 1} of {self.n_members}, " if self.n_members > 1 else ""

    def _fraction(self) -> float:
        frac = self.step / self.total_steps if self.total_steps else 0.0
        if self.time_limit_s:
            frac = max(frac, (time.monotonic() - self._t0) / float(self.time_limit_s))
        frac = min(1.0, frac)
        return min(1.0, (max(self.member, 0) + frac) / self.n_members)

    def _where(self) -> str:
        return f"{self._network()}epoch {self.epoch}/{self.max_epochs}"

    def on_step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        self.epoch, self.step = int(epoch), int(step)
        now = time.monotonic()
        if now - self._last_update < self.min_interval_s:
            return
        self._last_update = now
        msg = self._where()
        if "loss" in losses:
            msg += f" · loss {losses['loss']:.4f}"
        if self.val_ed is not None:
            msg += f" · val ED {self.val_ed:.4f}"
            if self.val_epoch is not None and self.val_epoch != self.epoch:
                msg += f" at epoch {self.val_epoch}"  # the last evaluation, the chart's last point
        self.reporter.update(fraction=self._fraction(), message=msg)

    def on_evaluation(self, record: dict[str, float]) -> None:
        self.epoch = int(record.get("epoch", self.epoch))
        self.step = int(record.get("step", self.step))
        val = record.get("val_ed")
        self.val_ed = None if val is None else float(val)
        self.val_epoch = self.epoch
        msg = self._where()
        if "train_loss" in record:
            msg += f" · loss {record['train_loss']:.4f}"
        msg += f" · val ED {self.val_ed:.4f}" if self.val_ed is not None else " · no validation cells"
        rec = {**record, "member": self.member} if self.n_members > 1 else record
        self.reporter.add_record(rec, fraction=self._fraction(), message=msg)

    def on_train_end(self, history: History) -> None:
        head = "stopped" if history.cancelled else "finished"
        msg = f"{self._network()}{head} at epoch {self.epoch}/{self.max_epochs} ({history.steps} steps, " \
              f"{history.seconds:.1f} s)"
        if history.stopped_early:
            msg += ", early stop"
        if history.best_val is not None:
            msg += f" · best val ED {history.best_val:.4f} (epoch {history.best_epoch})"
        self.reporter.update(message=msg)

    def should_stop(self) -> bool:
        return self.reporter.cancelled


def training_job(
    model: PerturbationModel, adata: ad.AnnData, holdout: Sequence[str] | str = (), **train_kwargs: Any
) -> Job:
    """A (not yet started) job that calls ``model.fit(adata, holdout=holdout,
    callbacks=[TrainingCallback(reporter)], **train_kwargs)`` and returns the model.

    ``train_kwargs`` are :class:`~pdae_core.train.loop.TrainConfig` fields (or
    ``train_config=``), as for ``fit``. Cancelling stops training after the current
    step and the job ends CANCELLED; ``result()`` still returns the model, which holds
    its best weights so far (an ensemble keeps the networks trained so far, the one in
    training included): the caller decides whether to use it. A cancel before training
    began ends CANCELLED with no result. Bad settings or data end FAILED with the error
    message. ``callbacks=`` adds callbacks after the job's own. No tqdm bar is drawn (the job's
    snapshots are its progress) unless ``progress_bar=True`` is passed.

    For an ensemble (``model.n_members`` > 1) the networks train one after the other;
    progress says which (``'network 2 of 5, epoch 10/40 · ...'``) and ``time_limit_s``
    bounds the whole ensemble: each network gets an equal share of it."""
    extra_callbacks = list(train_kwargs.pop("callbacks", ()))
    n_members = max(1, int(getattr(model, "n_members", 1) or 1))

    def run(reporter: Reporter) -> PerturbationModel:
        if reporter.cancelled:
            raise _Cancelled()
        base = train_kwargs.get("train_config")
        rest = {k: v for k, v in train_kwargs.items() if k != "train_config"}
        cfg = TrainConfig.from_dict({**base.to_dict(), **rest}) if base is not None else TrainConfig(**rest)
        kwargs = dict(train_kwargs)
        kwargs.setdefault("progress_bar", False)  # the job reports progress to its UI: no bar on the server's terminal
        limit = cfg.time_limit_s
        if limit and n_members > 1:  # the time limit covers the whole ensemble
            limit = float(limit) / n_members
            kwargs["time_limit_s"] = limit
        cb = TrainingCallback(reporter, max_steps=cfg.max_steps, time_limit_s=limit, n_members=n_members)
        reporter.update(fraction=0.0, message="preparing training data")
        model.fit(adata, holdout=holdout, callbacks=[cb, *extra_callbacks], **kwargs)
        return model

    kind = getattr(model, "model_type", "") or type(model).__name__
    return Job(run, name=f"train {kind}" + (f" ×{n_members}" if n_members > 1 else ""))


# ---------------------------------------------------------------------------------
# benchmark


def benchmark_job(
    name_or_path: str | os.PathLike[str],
    spec: BenchmarkSpec,
    out_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    adata: ad.AnnData | None = None,
    overwrite: bool = False,
) -> Job:
    """A (not yet started) job that runs :func:`pdae_core.eval.benchmark.benchmark_dataset`
    and returns its per-condition table.

    Each progress event becomes the status line (``format_event``); the fraction is
    (model, seed) pairs done / all pairs, with a trained model's epochs filling in its
    pair. The benchmark has no cancel hook, so a cancel takes effect at its next
    progress event (between stages, and at each evaluation while a model trains);
    the job then ends CANCELLED with no result, and finished pairs are on disk (a
    later run with the same spec reuses them)."""
    from ..eval.benchmark import benchmark_dataset, format_event

    def run(reporter: Reporter) -> pd.DataFrame:
        best = 0.0

        def progress(event: dict[str, Any]) -> None:
            nonlocal best
            if reporter.cancelled:
                raise _Cancelled()
            done, total = event.get("done"), event.get("total")
            frac = None
            if event.get("stage") == "done":
                frac = 1.0
            elif done is not None and total:
                part = 0.0
                if event.get("stage") == "epoch" and event.get("max_epochs"):
                    part = min(1.0, float(event.get("epoch", 0)) / float(event["max_epochs"]))
                frac = (float(done) + part) / float(total)
            if frac is not None:
                best = max(best, min(1.0, frac))
            reporter.update(fraction=best, message=format_event(event))

        if reporter.cancelled:
            raise _Cancelled()
        return benchmark_dataset(name_or_path, spec, out_dir, data_dir=data_dir, progress=progress,
                                 overwrite=overwrite, adata=adata)

    return Job(run, name=f"benchmark {os.fspath(name_or_path)}")
