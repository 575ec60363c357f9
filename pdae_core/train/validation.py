"""What the training loop evaluates and keeps: the built-in validation score (:class:`_Validator`)
and the moving average of the weights (:class:`_EMA`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ..models.module import PerturbationModule


class _Validator:
    """Mean over validation conditions of the energy distance between the observed
    validation cells of a condition and validation cells of *other* conditions moved
    to it. Sources and noise are fixed, so successive evaluations are comparable."""

    def __init__(self, X: torch.Tensor, L: torch.Tensor, groups: np.ndarray, max_sources: int, seed: int):
        self.X, self.L = X, L
        rng = np.random.default_rng(seed + 7919)
        self.items = []
        for g in np.unique(groups):
            tgt = np.flatnonzero(groups == g)
            others = np.flatnonzero(groups != g)
            if len(tgt) < 2 or len(others) < 2:
                continue
            src = others[rng.permutation(len(others))[:max_sources]]
            self.items.append((tgt, src))
        self.seed = seed

    def __bool__(self) -> bool:
        return bool(self.items)

    @torch.no_grad()
    def __call__(self, module: PerturbationModule) -> float:
        # not at the top: pdae_core.models imports every model, and they import this module
        from ..models.losses import energy_distance

        gen = torch.Generator(device=self.X.device).manual_seed(self.seed + 104729)
        vals = []
        for tgt, src in self.items:
            target = self.L[tgt[:1]].expand(len(src), -1)
            pred = module.transfer(self.X[src], self.L[src], target, generator=gen)
            vals.append(float(energy_distance(pred, self.X[tgt])))
        return float(np.mean(vals))


class _EMA:
    """Exponential moving average of a module's floating-point state. Evaluation and
    the returned model use the average, which is much steadier than the raw weights
    (the raw weights of an energy-score model jitter from step to step)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.n = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1.0 + self.n) / (10.0 + self.n))  # warm-up: short memory at first
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                self.shadow[k].copy_(v)

    def swap(self, module: torch.nn.Module) -> None:
        """Exchange the module's weights with the average (call twice to undo)."""
        current = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow)
        self.shadow = current
