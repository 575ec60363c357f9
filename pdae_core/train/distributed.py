"""Data-parallel training on ``torch.distributed`` (DistributedDataParallel, ``torchrun``).

How a global batch is split, and why the PDAE loss stays the single-process loss
--------------------------------------------------------------------------------
Every rank draws the same global mini-batch (same seed, same stratified batcher)
and keeps a contiguous slice of it (``np.array_split`` sizes), so rank ``r`` holds
target cells ``lo_r .. hi_r`` of the global batch and reads only those rows.

The PDAE perturbation loss scores each target cell against *source* cells of the
whole batch moved to its label. Scoring against local sources only would still be
unbiased, but it would be a different (smaller-pool) estimator than one process
with the same global batch. Instead each rank encodes its own cells and
``gather_rows`` all-gathers the basal states ``z_base`` (with gradients), so every
rank sees all B sources; the random source choice and the decoder noise are drawn
for the whole batch with the same generator state on every rank and sliced to the
local targets. Each rank's objective is ``(world / B) * sum over its targets`` of
the per-cell terms, plus the batch-level terms (prior energy distance on the
gathered ``z_base``, the L2,1 norm). DDP averages gradients over ranks, and the
backward of ``gather_rows`` sums the gradient that reaches every source from all
ranks, so the averaged gradient is exactly the gradient of the single-process loss
on the global batch: the estimator is the same unbiased one, and the loss
trajectory of an N-process run matches a 1-process run up to floating-point
summation order (``tests/test_distributed.py`` checks it with ``gloo`` on 2 CPU
processes).

Models whose ``loss`` does not take a ``shard`` (the peer models) are trained with
plain DDP on each rank's local slice: the usual data-parallel estimator, not the
single-process one.

Launch (one node, 4 GPUs; on several nodes add ``--nnodes``/``--rdzv-endpoint``)::

    torchrun --standalone --nproc-per-node 4 -m pdae_core.cli train --dataset norman19_devel --out ckpt/
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0 and in any non-distributed run: the process that prints and saves."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """Whether the environment says this process is one of several (``torchrun`` sets these)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(backend: str | None = None) -> int:
    """Initialise the default process group from ``torchrun``'s environment variables
    (``nccl`` when CUDA is available, else ``gloo``) unless it is already initialised.
    Returns the world size; 1 (and nothing initialised) outside ``torchrun``."""
    if not launched_by_torchrun():
        return world_size()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build.")
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return world_size()


def shutdown() -> None:
    _LOSS_GROUP.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_LOSS_GROUP: list = []


def loss_group():
    """A process group of its own for the loss's all-gathers, so that they never
    interleave with DDP's gradient all-reduces on the default group (made once per
    process group; :func:`shutdown` forgets it)."""
    if not _LOSS_GROUP:
        _LOSS_GROUP.append(dist.new_group())
    return _LOSS_GROUP[0]


def local_device(device: torch.device) -> torch.device:
    """In a multi-process CUDA run, each process uses GPU ``LOCAL_RANK``."""
    if device.type == "cuda" and world_size() > 1 and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


class _GatherRows(torch.autograd.Function):
    """All-gather of row blocks of unequal sizes, differentiable: the backward sums the
    gradient of every rank's loss with respect to the gathered rows and returns each
    rank its own block (gloo has no reduce-scatter, so this is an all-reduce + slice)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: tuple[int, ...], rank_: int, group) -> torch.Tensor:  # type: ignore[override]
        n_max = max(sizes)
        padded = t.new_zeros((n_max, *t.shape[1:]))
        padded[: t.shape[0]] = t
        bufs = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(bufs, padded.contiguous(), group=group)
        ctx.sizes, ctx.rank, ctx.group = sizes, rank_, group
        return torch.cat([b[:n] for b, n in zip(bufs, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        lo = sum(ctx.sizes[: ctx.rank])
        return g[lo : lo + ctx.sizes[ctx.rank]], None, None, None


@dataclass
class Shard:
    """This rank's slice ``[offset, offset + sizes[rank])`` of a global batch of
    ``sum(sizes)`` cells. A loss that accepts a shard computes the single-process
    loss of the global batch across ranks (see the module docstring)."""

    sizes: tuple[int, ...]
    rank: int
    group: object = None

    @property
    def world_size(self) -> int:
        return len(self.sizes)

    @property
    def global_size(self) -> int:
        return int(sum(self.sizes))

    @property
    def offset(self) -> int:
        return int(sum(self.sizes[: self.rank]))

    @property
    def local_size(self) -> int:
        return int(self.sizes[self.rank])

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows ``t`` -> the rows of every rank, in rank order (differentiable)."""
        return _GatherRows.apply(t, self.sizes, self.rank, self.group)


def split_sizes(n: int, world: int) -> tuple[int, ...]:
    """Sizes of ``world`` contiguous slices of ``n`` cells (as ``np.array_split``)."""
    return tuple(int(len(a)) for a in np.array_split(np.arange(n), world))


def all_reduce_mean(values: torch.Tensor, group=None) -> torch.Tensor:
    """Mean of a tensor over ranks (no gradient); identity outside a distributed run."""
    if world_size() == 1:
        return values
    v = values.detach().clone()
    dist.all_reduce(v, op=dist.ReduceOp.SUM, group=group)
    return v / world_size()
