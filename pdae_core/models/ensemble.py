"""Ensembles: N networks of one model type, trained with different seeds, predicting together.

``pc.PDAE.from_anndata(adata, n_members=5)`` (any model type; CLI ``pdae train --ensemble 5``)
builds an ensemble: member ``k`` is initialised exactly as a single model of seed
``seed + k`` and trained with training seed ``TrainConfig.seed + k`` (another batch order,
other random draws in the loss). It is a model of the member's type (``isinstance(m, PDAE)``)
with the same interface:

* :meth:`~pdae_core.models.base.PerturbationModel.predict` returns the members' *mixture*:
  each predicted cell comes from a member drawn at random (seeded), so the cells pool all
  members' predicted distributions with equal weight;
* :meth:`~pdae_core.models.base.PerturbationModel.member_changes` gives each member's
  predicted mean change per gene, from which :func:`change_summary` makes the mean change
  and its spread across members (the model's uncertainty about the change);
* ``latent`` and ``perturbation_embedding`` are those of member 0 (members' latent spaces
  are not aligned, so averaging them would mean nothing).

It saves as one checkpoint (one safetensors file with ``members.K.`` prefixes, one config
with an ``ensemble`` record) under the same integrity rules as any other.

With ``cross_fit=True`` (CLI ``pdae train --ensemble 5 --cross-fit``) the training doubles
whose singles are measured are dealt into one group per member, member ``k`` trains without
group ``k``, and after training each member predicts the doubles it did not see: their
errors give split-conformal intervals (``model.calibration``, a
:class:`~pdae_core.eval.calibration.Calibration`, saved in the checkpoint's ``ensemble``
record) for the predicted change of every gene and for the interaction metrics of the pair
screen. Every member still sees all singles and most doubles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import torch

from ..data.contexts import training_mask
from ..data.registry import condition_column
from ..data.streaming import take_rows
from ..errors import DataError
from ..eval.calibration import MIN_CELLS, Calibration, calibrate, calibration_doubles, deal_doubles
from ..train.loop import Callback, History, TrainConfig, train_module
from .base import PerturbationModel
from .catalog import MAX_MEMBERS, register_ensemble_factory
from .module import PerturbationModule

__all__ = ["MAX_MEMBERS", "Ensemble", "EnsembleModule", "change_summary", "ensemble_of"]

class EnsembleModule(PerturbationModule):
    """The members' networks side by side (``members``, an ``nn.ModuleList``)."""

    def __init__(self, members: Sequence[PerturbationModule]):
        super().__init__()
        if not members:
            raise ValueError("An ensemble needs at least one member.")
        self.members = torch.nn.ModuleList(members)

    def loss(self, x: torch.Tensor, labels: torch.Tensor, shard: Any = None) -> dict[str, torch.Tensor]:
        """The mean of the members' losses on the same batch (the ensemble's own fit trains each
        member on its own batches instead, see :meth:`Ensemble._train`)."""
        parts = [m.loss(x, labels, shard) for m in self.members]
        return {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}

    def embed(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.members[0].embed(x, labels)

    def transfer(self, x: torch.Tensor, labels: torch.Tensor, target: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Each cell moved by a member drawn uniformly at random from ``generator``: a draw from
        the mixture of the members' predicted distributions."""
        n = x.shape[0]
        which = torch.randint(len(self.members), (n,), generator=generator, device=x.device)
        out: torch.Tensor | None = None
        for k, member in enumerate(self.members):
            idx = torch.nonzero(which == k).squeeze(1)
            if len(idx) == 0:
                continue
            tgt = target[idx] if target.shape[0] == n and n > 1 else target
            pred = member.transfer(x[idx], labels[idx], tgt, generator=generator)
            if out is None:
                out = pred.new_empty((n, pred.shape[1]))
            out[idx] = pred
        assert out is not None
        return out

    @property
    def perturbation_matrix(self) -> torch.Tensor:
        return self.members[0].perturbation_matrix

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        return [g for m in self.members for g in m.optimizer_groups(lr)]

    def init_from_data(self, X: torch.Tensor) -> None:
        for m in self.members:
            m.init_from_data(X)


class Ensemble(PerturbationModel):
    """Mixin of the ensemble classes that :func:`ensemble_of` makes (``PDAEEnsemble`` = this and
    :class:`~pdae_core.models.pdae.PDAE`); see the module docstring."""

    member_class: ClassVar[type[PerturbationModel]] = PerturbationModel

    def __init__(self, registry: Any, seed: int = 0, n_members: int = 5, cross_fit: bool = False, **config: Any):
        if isinstance(n_members, bool) or not isinstance(n_members, (int, np.integer)) or not (
            1 <= n_members <= MAX_MEMBERS
        ):
            raise ValueError(f"An ensemble has 1 to {MAX_MEMBERS} members; got n_members={n_members!r}.")
        if cross_fit not in (True, False):
            raise ValueError(f"cross_fit must be True or False, got {cross_fit!r}.")
        if cross_fit and n_members < 2:
            raise ValueError("A cross-fitted ensemble needs at least 2 members.")
        self._size = int(n_members)  # read by _build_module during the base class's __init__
        self.cross_fit = bool(cross_fit)
        self.calibration: Calibration | None = None
        self._left_out: list[list[str]] | None = None
        self._row_conditions: np.ndarray | None = None
        super().__init__(registry, seed=seed, **config)

    def _build_module(self, seed: int) -> PerturbationModule:
        return EnsembleModule([super(Ensemble, self)._build_module(seed + k) for k in range(self._size)])

    def _member_modules(self) -> list[PerturbationModule]:
        return list(self.module.members)

    def _ensemble_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"n_members": self.n_members}  # the base class's count of the member networks
        if self.cross_fit:
            record["cross_fit"] = True
            if self.calibration is not None:
                record["calibration"] = self.calibration.to_dict()
        return record

    def _read_ensemble_record(self, record: dict[str, Any], where: str) -> None:
        """Set what a checkpoint's ``ensemble`` record says beyond the member count (checked)."""
        if record.get("calibration") is not None:
            if not self.cross_fit:
                raise DataError(f"{where}: a calibration record without cross_fit.")
            self.calibration = Calibration.from_dict(record["calibration"], self.registry.n_genes, self.n_members,
                                                     where)

    def fit(self, adata: ad.AnnData, holdout: Sequence[str] = (), train_config: TrainConfig | None = None,
            callbacks: Sequence[Callback] = (), **train_kwargs: Any) -> History:
        """As a single model's ``fit``; a cross-fitted ensemble also leaves one group of training
        doubles out of each member and calibrates its intervals on them afterwards (module
        docstring). A cancelled run is not calibrated."""
        self.calibration = None
        if not self.cross_fit:
            return super().fit(adata, holdout, train_config, callbacks, **train_kwargs)
        keep, _ = training_mask(adata, self.registry, holdout)
        conds = condition_column(adata, self.registry.perturbation_key)[keep]
        seed = int(self.init_seed)
        min_cells = 1 if self.accepts_changes else MIN_CELLS  # a profile model: one row per condition
        self._left_out = deal_doubles(calibration_doubles(conds, self.registry, min_cells), self.n_members, seed)
        self._row_conditions = np.asarray(conds, dtype=str)
        try:
            history = super().fit(adata, holdout, train_config, callbacks, **train_kwargs)
        finally:
            self._row_conditions = None
        if not history.cancelled:
            self.calibration = calibrate(self, adata, self._left_out, seed=seed)
        return history

    def _train(self, X: Any, labels: np.ndarray, groups: np.ndarray, train_config: TrainConfig,
               callbacks: Sequence[Callback]) -> History:
        """Train member ``k`` on its own with training seed ``train_config.seed + k`` (cross-fitted:
        without its group of doubles). The history holds every member's records (with a ``member``
        field), the total time and steps and the mean best validation score. A cancelled run
        keeps the members trained so far."""
        hists: list[History] = []
        for k, member in enumerate(self.module.members):
            cfg = TrainConfig.from_dict({**train_config.to_dict(), "seed": int(train_config.seed) + k})
            if self._row_conditions is not None and self._left_out is not None:
                rows = np.flatnonzero(~np.isin(self._row_conditions, self._left_out[k]))
                _, g = np.unique(groups[rows], return_inverse=True)
                hists.append(train_module(member, take_rows(X, rows), labels[rows], g, cfg, callbacks))
            else:
                hists.append(train_module(member, X, labels, groups, cfg, callbacks))
            if hists[-1].cancelled:
                self.module.members = torch.nn.ModuleList(list(self.module.members)[: k + 1])
                break
        best = [h.best_val for h in hists]
        return History(
            records=[{**r, "member": k} for k, h in enumerate(hists) for r in h.records],
            best_epoch=hists[0].best_epoch,
            best_val=float(np.mean(best)) if all(b is not None for b in best) else None,
            stopped_early=any(h.stopped_early for h in hists),
            cancelled=any(h.cancelled for h in hists),
            seconds=float(sum(h.seconds for h in hists)),
            steps=int(sum(h.steps for h in hists)),
            device=hists[0].device,
        )

    def __repr__(self) -> str:
        return super().__repr__().replace("(", f"({self.n_members} members, ", 1)


_CLASSES: dict[type, type] = {}


@register_ensemble_factory
def ensemble_of(member_class: type[PerturbationModel]) -> type[Ensemble]:
    """The ensemble class of a model type (made once): a subclass of both :class:`Ensemble` and
    ``member_class``, so it keeps the type's hooks (FCR's contexts, SAMS-VAE's priors) and its
    ``model_type``."""
    if issubclass(member_class, Ensemble):
        return member_class
    if member_class not in _CLASSES:
        _CLASSES[member_class] = type(
            f"{member_class.__name__}Ensemble", (Ensemble, member_class),
            {"member_class": member_class, "__module__": __name__,
             "__doc__": f"An ensemble of {member_class.__name__} networks (see :mod:`pdae_core.models.ensemble`)."},
        )
    return _CLASSES[member_class]


def change_summary(changes: np.ndarray, genes: Sequence[str]) -> pd.DataFrame:
    """Per gene, from the members' predicted changes (members x genes, as
    :meth:`~pdae_core.models.base.PerturbationModel.member_changes` returns): ``change`` (the mean
    over members) and ``spread`` (their standard deviation, ddof=1; NaN for one member)."""
    changes = np.atleast_2d(np.asarray(changes, dtype=np.float64))
    spread = changes.std(0, ddof=1) if changes.shape[0] > 1 else np.full(changes.shape[1], np.nan)
    return pd.DataFrame({"change": changes.mean(0), "spread": spread}, index=pd.Index(list(genes), name="gene"))
