"""How long a training run lasts (:class:`Budget`: epochs, or a budget in steps on large data) and
how many epochs a history's records say it ran. Torch-free, so that ``pdae info`` starts fast."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Budget:
    """How long a run trains. The budget is ``max_epochs`` epochs, or ``budget_steps`` steps when
    the epochs would take more: then the cosine schedule steps once per optimiser step and the
    model is evaluated every ``eval_interval`` steps (as many evaluations as ``max_epochs /
    eval_every``), so training time stops growing with the number of cells."""

    by_steps: bool
    total_steps: int
    epochs: int  # epochs started (the last one may end part-way)
    eval_interval: int  # steps between evaluations when by_steps
    steps_per_epoch: int

    @property
    def units(self) -> int:
        """What the cosine schedule counts: steps when by_steps, else epochs."""
        return self.total_steps if self.by_steps else self.epochs

    @classmethod
    def plan(cls, config: Any, steps_per_epoch: int) -> Budget:
        """The budget of a :class:`~pdae_core.train.loop.TrainConfig` for this many steps per epoch."""
        spe = max(1, int(steps_per_epoch))
        by_epochs = config.max_epochs * spe
        if config.budget_steps is None or config.budget_steps >= by_epochs:
            return cls(False, by_epochs, config.max_epochs, config.eval_every * spe, spe)
        total = int(config.budget_steps)
        interval = max(1, round(total * config.eval_every / config.max_epochs))
        return cls(True, total, math.ceil(total / spe), interval, spe)

    def describe(self) -> str:
        """``'at most 150 epochs'`` or ``'a budget of 6000 steps (4.3 epochs)'``."""
        if self.by_steps:
            return f"a budget of {self.total_steps} steps ({self.total_steps / self.steps_per_epoch:.1f} epochs)"
        return f"at most {self.epochs} epochs"


def epochs_run(epoch: float) -> int | float:
    """Epochs run, from a record's ``epoch``: an integer, or a fraction (3 decimals) when a step
    budget ended part-way through an epoch."""
    e = float(epoch)
    return int(e) if e.is_integer() else round(e, 3)
