"""One training loop for every pdae_core module.

A module is a :class:`~pdae_core.models.module.PerturbationModule`; the loop uses only
that contract. It handles the device, seeds, stratified mini-batches, a validation
split by cells, early stopping on a validation energy distance (of ``transfer``), and
progress callbacks that know nothing of any UI.

Feedback: a progress bar (:class:`ProgressBar`, ``tqdm.auto``: text in a terminal, a widget
in Jupyter; not drawn when stderr is neither, e.g. redirected to a file) unless
``TrainConfig.progress_bar`` is False or a callback shows progress itself
(``shows_progress = True``, as the ``pdae train`` bar does); and log records on the
``pdae_core.train.loop`` logger: start and end at INFO, one line per epoch at DEBUG.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..data.streaming import RowSource, prefetch
from .batches import split_cells, stratified_batches
from .budget import Budget
from .distributed import Shard, all_reduce_mean, local_device, loss_group, split_sizes
from .distributed import rank as dist_rank
from .distributed import world_size as dist_world_size
from .validation import _EMA, _Validator  # noqa: F401 (_Validator is the loop's built-in validation)

if TYPE_CHECKING:
    from ..models.module import PerturbationModule

log = logging.getLogger(__name__)
_DDP_HAS_FORWARD_SYNC = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters


PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass
class TrainConfig:
    """Optimisation settings. Defaults converge on a CPU in minutes for ~5k cells."""

    max_epochs: int = 150
    #: the training budget in optimiser steps: when ``max_epochs`` would take more steps than this,
    #: the cosine schedule and the evaluations span this many steps instead (so a screen of 200,000
    #: cells trains as long as one of 6,000); None: the budget is ``max_epochs`` whatever the size
    budget_steps: int | None = 6000
    batch_size: int = 128
    cells_per_condition: int = 8
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # "cosine" (decay to lr/100 over the budget) | "constant"
    ema_decay: float | None = 0.995  # exponential moving average of the weights (None: off)
    weight_decay: float = 0.0
    grad_clip: float | None = 10.0
    val_fraction: float = 0.1
    eval_every: int = 2
    patience: int = 30
    val_max_sources: int = 256
    seed: int = 0
    max_steps: int | None = None  # a hard stop after this many steps (the schedule still spans the budget)
    time_limit_s: float | None = None
    accelerator: str = "auto"
    precision: str = "32"  # "32" | "bf16-mixed" | "16-mixed" (autocast; losses stay float32)
    compile: bool = False  # torch.compile the loss computation
    val_max_cells: int = 512  # per condition: bounds validation memory on large data
    init_max_cells: int = 20_000  # cells used by the module's init_from_data (input scaling)
    prefetch: int = 2  # batches read ahead on a background thread when X is not in memory
    full_batch: bool = False  # every step sees all training rows in their order (a few rows, e.g. one per condition)
    progress_bar: bool = True  # a tqdm bar over the steps (see ProgressBar); False: silent
    #: CPU threads of torch while training: a number, "auto" (the idle cores, re-checked every few
    #: seconds so that jobs sharing a machine do not slow each other down; see pdae_core.train.threads)
    #: or None (torch's setting is left alone)
    threads: int | str | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.max_epochs >= 1, "max_epochs must be >= 1"),
            (self.budget_steps is None or self.budget_steps >= 1, "budget_steps must be >= 1 or None"),
            (self.batch_size >= 3, "batch_size must be >= 3"),
            (1 <= self.cells_per_condition <= self.batch_size, "cells_per_condition must be in [1, batch_size]"),
            (self.lr > 0, "lr must be > 0"),
            (self.lr_schedule in ("cosine", "constant"), "lr_schedule must be 'cosine' or 'constant'"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (self.eval_every >= 1, "eval_every must be >= 1"),
            (self.ema_decay is None or 0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1) or None"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.precision in PRECISIONS, f"precision must be one of {sorted(PRECISIONS)}"),
            (self.val_max_cells >= 1, "val_max_cells must be >= 1"),
            (self.init_max_cells >= 2, "init_max_cells must be >= 2"),
            (self.prefetch >= 0, "prefetch must be >= 0"),
            (isinstance(self.progress_bar, bool), "progress_bar must be True or False"),
            (self.threads is None or self.threads == "auto" or (isinstance(self.threads, int) and self.threads >= 1),
             "threads must be a positive integer, 'auto' or None"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class History:
    """What happened during training: one record per evaluation."""

    records: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val: float | None = None
    stopped_early: bool = False
    cancelled: bool = False
    seconds: float = 0.0
    steps: int = 0
    device: str = "cpu"
    #: with ``threads="auto"``: (seconds since the start, threads) at the start and at each change
    thread_changes: list[tuple[float, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Callback:
    """Progress hooks. Subclass and override what you need; all are optional.

    ``should_stop`` is polled after every step: return True to cancel training
    (the best weights so far are kept). A callback that displays progress itself sets
    ``shows_progress = True``: the loop then draws no bar of its own."""

    shows_progress: bool = False

    def on_train_start(self, max_epochs: int, steps_per_epoch: int) -> None: ...

    def on_budget(self, total_steps: int) -> None:
        """Called right after ``on_train_start`` with the steps planned (the step budget, or
        ``max_epochs * steps_per_epoch`` when that is smaller)."""

    def on_step(self, epoch: int, step: int, losses: dict[str, float]) -> None: ...

    def on_evaluation(self, record: dict[str, float]) -> None: ...

    def on_train_end(self, history: History) -> None: ...

    def should_stop(self) -> bool:
        return False


class ProgressBar(Callback):
    """A tqdm bar over the training steps (``tqdm.auto``: a widget in Jupyter, text on stderr
    elsewhere) with the epoch, the latest loss and, once evaluated, the validation score
    (``val_ed``, or ``val_score`` for a caller's ``validate``) in its postfix.

    ``disable``: True hides it; None hides it when stderr is not a terminal (tqdm's rule;
    Jupyter always shows it). The loop adds one (``disable=None``) when
    ``TrainConfig.progress_bar`` is True and no callback has ``shows_progress``."""

    shows_progress = True

    def __init__(self, disable: bool | None = False, desc: str = "training") -> None:
        self.disable, self.desc = disable, desc
        self.bar: Any = None
        self.val: tuple[str, float] | None = None
        self.val_ed: float | None = None

    def on_train_start(self, max_epochs: int, steps_per_epoch: int) -> None:
        from tqdm.auto import tqdm

        self.close()
        self.val = self.val_ed = None
        self.bar = tqdm(total=max_epochs * steps_per_epoch, unit="step", desc=self.desc, disable=self.disable,
                        dynamic_ncols=True)

    def on_budget(self, total_steps: int) -> None:
        if self.bar is not None:
            self.bar.total = int(total_steps)
            self.bar.refresh()

    def _postfix(self, epoch: float, loss: float) -> str:
        text = f"epoch={epoch:g}, loss={loss:.4g}"
        return text + (f", {self.val[0]}={self.val[1]:.4g}" if self.val is not None else "")

    def on_step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        if self.bar is None or self.bar.disable:
            return
        self.bar.set_postfix_str(self._postfix(epoch, losses["loss"]), refresh=False)
        self.bar.update(1)

    def on_evaluation(self, record: dict[str, float]) -> None:
        key = "val_ed" if "val_ed" in record else "val_score" if "val_score" in record else None
        if key is None:
            return
        self.val = (key, float(record[key]))
        if key == "val_ed":
            self.val_ed = self.val[1]
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(record["epoch"], record.get("train_loss", math.nan)))

    def on_train_end(self, history: History) -> None:
        self.close()

    def close(self) -> None:
        """Close the bar (also after an exception; closing twice is harmless)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Governor(Callback):
    """Re-checks the thread count after every step (a :class:`~pdae_core.train.threads.ThreadGovernor`
    measures only every few seconds); the history records the changes."""

    def __init__(self, governor: Any):
        self.governor = governor

    def on_step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        self.governor.check()

    def on_train_end(self, history: History) -> None:
        history.thread_changes = list(self.governor.changes)


def resolve_device(accelerator: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; or name one ("cpu", "cuda", "cuda:1", "gpu", "mps")."""
    acc = str(accelerator).lower().strip()
    if acc == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if acc == "gpu":
        acc = "cuda"
    if acc.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"accelerator={accelerator!r} was asked for but no CUDA GPU is available; use 'auto' or 'cpu'.")
        return torch.device(acc)
    if acc == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("accelerator='mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'.")
        return torch.device("mps")
    if acc == "cpu":
        return torch.device("cpu")
    raise ValueError(f"Unknown accelerator {accelerator!r}: use 'auto', 'cpu', 'cuda', 'cuda:N', 'gpu' or 'mps'.")


def _to_tensor(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """A copy in torch's own (aligned) memory: BLAS kernels may sum in another order
    on differently aligned buffers, and streamed training must match in-memory
    training bit for bit."""
    return torch.tensor(rows, dtype=torch.float32, device=device)


class _LossForward(torch.nn.Module):
    """``forward`` = the module's loss, so that DDP (and torch.compile) can wrap it."""

    def __init__(self, module: PerturbationModule):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, labels: torch.Tensor, shard: Shard | None = None) -> dict[str, torch.Tensor]:
        return self.module.loss(x, labels, shard)


def train_module(
    module: PerturbationModule,
    X: np.ndarray | RowSource,
    labels: np.ndarray,
    groups: np.ndarray,
    config: TrainConfig,
    callbacks: Sequence[Callback] = (),
    validate: Callable[[PerturbationModule], float] | None = None,
    reseed: bool = True,
) -> History:
    """Train ``module`` in place on ``X`` (cells x genes) with ``labels`` (cells x K);
    ``groups`` (condition index per cell) drives stratified batches and the split.
    Returns the :class:`History`; the module ends with its best validation weights.

    ``X`` is a dense array (moved to the device whole: fastest when it fits) or a
    :class:`~pdae_core.data.streaming.RowSource` (sparse in memory, or an on-disk ``.h5ad``
    opened in backed mode), read one mini-batch at a time; both give the same result
    for the same seed. Inside a ``torch.distributed`` process group of several ranks
    the run is data-parallel (see :mod:`pdae_core.train.distributed`).

    ``validate`` replaces the built-in validation (the energy distance of held-out cells
    of the training conditions, see :class:`_Validator`) by the caller's score of the
    module, lower is better, recorded as ``val_score`` every ``eval_every`` epochs (on
    the averaged weights when ``ema_decay`` is set). Torch's random generator is seeded
    with ``config.seed`` first; ``reseed=False`` continues the caller's stream instead
    (a caller that seeded it to build the module, as the pseudobulk PDAE does).

    ``config.progress_bar`` adds a :class:`ProgressBar` (on rank 0 only) unless a callback
    shows progress itself (``shows_progress``)."""
    device = local_device(resolve_device(config.accelerator))
    bars = []
    if config.progress_bar and dist_rank() == 0 and not any(getattr(cb, "shows_progress", False) for cb in callbacks):
        bars.append(ProgressBar(disable=None))
    governors: list[Callback] = []
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        from .threads import ThreadGovernor, set_threads

        set_threads(config.threads)
        if config.threads == "auto":
            governors.append(_Governor(ThreadGovernor()))
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if reseed:
                torch.manual_seed(config.seed)
            return _train(module, X, labels, groups, config, [*bars, *governors, *callbacks], device, validate)
    finally:
        for bar in bars:  # also on an error or Ctrl-C
            bar.close()
        if config.threads is not None:
            torch.set_num_threads(threads_before)


def _train(
    module: PerturbationModule,
    X: np.ndarray | RowSource,
    labels: np.ndarray,
    groups: np.ndarray,
    config: TrainConfig,
    callbacks: Sequence[Callback],
    device: torch.device,
    validate: Callable[[PerturbationModule], float] | None = None,
) -> History:
    rng = np.random.default_rng(config.seed)
    groups = np.asarray(groups)
    if X.shape[0] != len(groups) or len(labels) != len(groups):
        raise ValueError(f"X has {X.shape[0]} rows, labels {len(labels)} and groups {len(groups)}: they must agree")
    module.to(device)
    in_memory = isinstance(X, np.ndarray)
    source = None if in_memory else X
    Xt = torch.as_tensor(X, dtype=torch.float32, device=device) if in_memory else None
    Lt = torch.as_tensor(labels, dtype=torch.float32, device=device)

    def read(idx: np.ndarray) -> torch.Tensor:
        if Xt is not None:
            return Xt[torch.as_tensor(idx, device=device)]
        return _to_tensor(source.rows(idx), device)

    train_idx, val_idx = split_cells(groups, config.val_fraction, rng, config.val_max_cells)
    val_key = "val_score" if validate is not None else "val_ed"
    validator = validate or _Validator(read(val_idx), Lt[val_idx], groups[val_idx], config.val_max_sources, config.seed)

    world, rank_ = dist_world_size(), dist_rank()
    sharded = world > 1
    if sharded and not module.supports_shard:
        log.info("%s has no sharded loss: each rank trains on its local slice of the batch", type(module).__name__)
    opt = torch.optim.Adam(module.optimizer_groups(config.lr), lr=config.lr, weight_decay=config.weight_decay)
    amp_dtype = PRECISIONS[config.precision]
    scaler = torch.amp.GradScaler(device.type) if config.precision == "16-mixed" else None
    hist = History(device=str(device))

    def epoch_batches() -> list[np.ndarray]:  # positions in train_idx
        if config.full_batch:
            return [np.arange(len(train_idx))]
        return stratified_batches(groups[train_idx], config.batch_size, config.cells_per_condition, rng)

    steps_per_epoch = 1 if config.full_batch else len(
        stratified_batches(groups[train_idx], config.batch_size, config.cells_per_condition, np.random.default_rng(0))
    )
    plan = Budget.plan(config, steps_per_epoch)
    sched = None
    if config.lr_schedule == "cosine":  # from lr down to lr/100 over the budget: per step, or per epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(t, plan.units) / plan.units))
        )
    log.info(
        "training %s on %s: %d cells (%d for validation), %d conditions, %s (%d steps per epoch)",
        type(module).__name__, device, len(train_idx), len(val_idx), len(np.unique(groups)), plan.describe(),
        steps_per_epoch,
    )
    for cb in callbacks:
        cb.on_train_start(plan.epochs, steps_per_epoch)
        cb.on_budget(plan.total_steps)

    init_idx = train_idx
    if len(train_idx) > config.init_max_cells:  # a fixed random subset, drawn without touching `rng`
        pick = np.random.default_rng(config.seed + 31337).choice(len(train_idx), config.init_max_cells, replace=False)
        init_idx = np.sort(train_idx[pick])
    module.init_from_data(read(init_idx))
    forward: torch.nn.Module = _LossForward(module)
    if sharded:
        # buffers (input scaling) are set identically on every rank: no need to sync them
        sync = {"forward_sync_buffers": False} if _DDP_HAS_FORWARD_SYNC else {"broadcast_buffers": False}
        forward = DistributedDataParallel(
            forward,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not module.supports_shard,
            **sync,
        )
    if config.compile:
        forward = torch.compile(forward)
    ema = _EMA(module, config.ema_decay) if config.ema_decay else None
    best_state: dict[str, torch.Tensor] | None = None
    best = math.inf
    bad_evals = 0
    t0 = time.perf_counter()
    train_seconds = 0.0
    step = 0
    stop = False
    last_eval_step = -1

    def evaluate(epoch: float, n_batches: int, sums: dict[str, float]) -> bool:
        """Validate (on the averaged weights), keep the best; True when patience ran out."""
        nonlocal best, bad_evals, best_state, last_eval_step
        last_eval_step = step
        module.eval()
        if ema is not None:
            ema.swap(module)  # evaluate (and keep) the averaged weights
        record = {"epoch": epoch, "step": step, "seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
                  "lr": opt.param_groups[0]["lr"]}
        record.update({f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()})
        if validator:
            val = validator(module)
            record[val_key] = val
            if val < best - 1e-6:
                best, bad_evals = val, 0
                best_state = copy.deepcopy(module.state_dict())
                hist.best_epoch, hist.best_val = epoch, val
            else:
                bad_evals += 1
        hist.records.append(record)
        if val_key in record:
            log.debug("epoch %g: %s=%.4g (best %.4g at epoch %s)", epoch, val_key, record[val_key], best,
                      hist.best_epoch)
        for cb in callbacks:
            cb.on_evaluation(record)
        if ema is not None:
            ema.swap(module)  # back to the raw weights to go on training
        module.train()
        if validator and bad_evals >= config.patience:
            hist.stopped_early = True
            return True
        return False

    for epoch in range(1, plan.epochs + 1):
        module.train()
        sums: dict[str, float] = {}
        n_batches = 0
        t_epoch = time.perf_counter()
        batches = epoch_batches()
        shards: list[Shard | None] = [None] * len(batches)
        if sharded:
            local = []
            for k, b in enumerate(batches):
                sizes = split_sizes(len(b), world)
                shards[k] = Shard(sizes, rank_, loss_group())
                lo = sum(sizes[:rank_])
                local.append(b[lo : lo + sizes[rank_]])
            batches = local
        cell_batches = [train_idx[b] for b in batches]
        xs = (read(i) for i in cell_batches) if source is None else prefetch(source, cell_batches, config.prefetch)
        for k, xb in enumerate(xs):
            if source is not None:
                xb = _to_tensor(xb, device)
            lb = Lt[torch.as_tensor(cell_batches[k], device=device)]
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext():
                out = forward(xb, lb, shards[k])
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(out["loss"]).backward()
                scaler.unscale_(opt)
            else:
                out["loss"].backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if ema is not None:
                ema.update(module)
            step += 1
            n_batches += 1
            keys = list(out)
            vec = torch.stack([torch.as_tensor(out[k2]).detach().float().reshape(()) for k2 in keys])
            if sharded:  # losses averaged over ranks: those of the global batch
                vec = all_reduce_mean(vec)
            losses = dict(zip(keys, vec.tolist()))
            if not all(math.isfinite(v) for v in losses.values()):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch}, step {step} (losses {losses}); lower the learning rate"
                )
            for k2, v in losses.items():
                sums[k2] = sums.get(k2, 0.0) + v
            for cb in callbacks:
                cb.on_step(epoch, step, losses)
            cancel = any(cb.should_stop() for cb in callbacks)
            limit = (config.max_steps is not None and step >= config.max_steps) or (
                config.time_limit_s is not None and time.perf_counter() - t0 >= config.time_limit_s
            )
            if sharded:  # every rank stops at the same step
                flags = all_reduce_mean(torch.tensor([float(cancel), float(limit)], device=vec.device))
                cancel, limit = bool(flags[0] > 0), bool(flags[1] > 0)
            if cancel:
                hist.cancelled = stop = True
                break
            if limit:
                stop = True
                break
            if plan.by_steps:
                if sched is not None:
                    sched.step()
                done = step >= plan.total_steps
                if done or step % plan.eval_interval == 0:
                    train_seconds += time.perf_counter() - t_epoch
                    halt = evaluate(round(step / steps_per_epoch, 3), n_batches, sums)
                    t_epoch = time.perf_counter()
                    if halt:
                        stop = True
                        break
                    sums, n_batches = {}, 0
                if done:
                    stop = True
                    break
        train_seconds += time.perf_counter() - t_epoch
        if log.isEnabledFor(logging.DEBUG):
            log.debug("epoch %d: %d steps, %s (%.2f s)", epoch, n_batches,
                      ", ".join(f"{k}={v / max(n_batches, 1):.4g}" for k, v in sums.items()),
                      time.perf_counter() - t_epoch)
        if plan.by_steps:
            if stop:
                if step != last_eval_step and not hist.stopped_early:  # a step or time limit, or a cancel
                    evaluate(round(step / steps_per_epoch, 3), n_batches, sums)
                break
            continue
        if sched is not None:
            sched.step()
        last = epoch == plan.epochs or stop
        if (epoch % config.eval_every == 0 or last) and evaluate(epoch, n_batches, sums):
            break
        if stop:
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    elif ema is not None:
        module.load_state_dict(ema.shadow)
    module.eval()
    hist.seconds = time.perf_counter() - t0
    hist.steps = step
    why = ("cancelled" if hist.cancelled else "stopped early" if hist.stopped_early
           else "stopped at the step or time limit" if stop else "finished")
    epochs = int(hist.records[-1]["epoch"]) if hist.records else 0
    best_text = f"; best {val_key} {hist.best_val:.4g} at epoch {hist.best_epoch}" if hist.best_val is not None else ""
    log.info("training %s: %d epochs, %d steps in %.1f s%s", why, epochs, step, hist.seconds, best_text)
    for cb in callbacks:
        cb.on_train_end(hist)
    return hist
