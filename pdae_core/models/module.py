"""The contract between a model's ``nn.Module`` and the rest of pdae_core.

Every model's network subclasses :class:`PerturbationModule`. The training loop
(:func:`pdae_core.train.loop.train_module`) calls only what is declared here, and
:class:`~pdae_core.models.base.PerturbationModel` uses ``embed``, ``transfer`` and
``perturbation_matrix`` for ``latent``, ``predict`` and ``perturbation_embedding``.

Shapes: ``x`` is (n, G) float32 expression (n cells, G = ``n_genes``), ``labels`` is
(n, K') float32: the perturbation label matrix (n, K), one column per elementary
perturbation (doses as values, a combination's label the sum of its parts'), or
whatever the model's :meth:`~pdae_core.models.base.PerturbationModel._module_labels`
makes of it (FCR appends a one-hot context: (n, K + C)).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..train.distributed import Shard


class PerturbationModule(torch.nn.Module, abc.ABC):
    """Base class of every model's network: the loss, the embedding, the transfer.

    A subclass implements :meth:`loss`, :meth:`embed`, :meth:`transfer` and the
    :attr:`perturbation_matrix` property; it may override :meth:`optimizer_groups`,
    :meth:`init_from_data` and :attr:`supports_shard`, whose defaults are one Adam group,
    no initialisation from data and no sharded loss. Its constructor takes the model's
    config dataclass as its only argument (``module_class(config)``).
    """

    #: True when :meth:`loss` honours ``shard`` (a data-parallel loss over the global
    #: batch). False: ``shard`` is ignored and, under data parallelism, each rank's loss
    #: is that of its local slice of the batch.
    supports_shard: bool = False

    @abc.abstractmethod
    def loss(self, x: torch.Tensor, labels: torch.Tensor, shard: Shard | None = None) -> dict[str, torch.Tensor]:
        """The training objective on one mini-batch.

        Receives ``x`` (n, G) and ``labels`` (n, K') of the batch's cells and, in a
        data-parallel run, the :class:`~pdae_core.train.distributed.Shard` that says
        which slice of the global batch they are (None otherwise; modules with
        ``supports_shard = False`` ignore it). Returns a dict of scalar tensors: key
        ``"loss"`` (required) is the total that is minimised; the other keys are its
        parts, averaged per epoch and reported as ``train_<key>`` by the loop.
        Random draws use the global torch RNG (the loop seeds it)."""

    @abc.abstractmethod
    def embed(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The basal latent state of cells ``x`` (n, G) observed under ``labels``
        (n, K'): (n, latent_dim), deterministic (a posterior mean, not a draw)."""

    @abc.abstractmethod
    def transfer(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Cells ``x`` (n, G) observed under ``labels`` (n, K') moved to ``target``.

        ``target`` is (n, K) from ``predict`` (the validation of the training loop
        passes rows of the training labels, (n, K')); (1, K) broadcasts where the
        model allows it. Returns predicted expression (n, G), one draw per cell,
        with every random draw taken from ``generator`` (the global RNG when None),
        so that a seeded generator gives reproducible predictions."""

    def source_state(self, x: torch.Tensor, labels: torch.Tensor) -> Any:
        """What :meth:`transfer_from` needs of source cells, computed once when the same cells are
        moved to many targets (the pair screen). Default: the cells themselves. Must not draw
        random numbers."""
        return (x, labels)

    def transfer_from(self, state: Any, target: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """:meth:`transfer` of the cells whose :meth:`source_state` is ``state``: the same result,
        the same random draws. Default: ``transfer`` itself. A module whose encoding does not
        depend on the target (the PDAE) overrides both to encode the cells once."""
        x, labels = state
        return self.transfer(x, labels, target, generator=generator)

    @property
    @abc.abstractmethod
    def perturbation_matrix(self) -> torch.Tensor:
        """(latent_dim, K): column k is elementary perturbation k's effect in latent
        space (``W`` of the PDAE); shown by ``PerturbationModel.perturbation_embedding``."""

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """Adam parameter groups for the base learning rate ``lr``: a list of dicts with
        ``"params"`` and ``"lr"``. Default: every parameter, in ``parameters()`` order,
        at ``lr``. Override to give some parameters another learning rate."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def init_from_data(self, X: torch.Tensor) -> None:
        """Called once by the loop before the first step with training cells ``X``
        (n, G; at most ``TrainConfig.init_max_cells`` of them), e.g. to standardise the
        encoder's input. Must not draw random numbers. Default: nothing."""
        return None

    def forward(self, x: torch.Tensor, labels: torch.Tensor, shard: Shard | None = None) -> dict[str, torch.Tensor]:
        """Same as :meth:`loss`."""
        return self.loss(x, labels, shard)
