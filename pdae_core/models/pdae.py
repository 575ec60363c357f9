"""The Perturbation Distribution Autoencoder (von Kuegelgen et al., arXiv 2504.18522).

Cells ``x`` are encoded to ``z = g(x)``; a perturbation with label vector ``l`` is a
mean shift ``W l`` in latent space, so the basal state is ``z_base = g(x) - W l``;
a stochastic decoder ``f(z, sigma * eps)`` maps a latent point and noise back to
expression. A cell observed under ``l_j`` is moved to ``l_i`` by decoding
``z_base_j + W l_i``; a combination's shift is the sum of its parts' shifts.

Training minimises

    w_pert  * mean_i ES(x_i ; {f(z_base_j + W l_i, eps) : j != i})
  + w_rec   * mean_i ES(x_i ; {f(sg[g(x_i)], eps_k) : k = 1..rec_samples})
  + w_prior * ED({z_base_i}, N(0, I))
  + w_l21   * ||W||_{2,1}

where ES is the unbiased energy score (beta = 1), ED the unbiased energy distance
and sg[.] stops gradients into the encoder. ``grid="full"`` scores every target
against every other cell of the batch (B^2 decoder passes). ``grid="sampled"``
scores each target against at most ``n_sources`` sources drawn without replacement:

* ``source_sampling="condition"`` (default): all from one other condition of the
  batch, drawn at random per target. The proper energy score then asks the moved
  cells of *each* condition to match the target's distribution on their own, not
  only their mixture, which is the model's assumption that ``z_base`` does not
  depend on the condition (chosen on synthetic dev seeds and Norman validation ED,
  see the README);
* ``source_sampling="batch"``: from the whole batch, an unbiased estimate of the
  full-grid loss at B * n_sources decoder passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import torch
from torch import nn

from ..data.contexts import context_categories, context_onehot
from ..data.registry import PerturbationRegistry
from ..train.distributed import Shard
from .base import PerturbationModel
from .catalog import register_model
from .hparams import ModelConfig, choice_check, hp
from .losses import energy_distance, energy_score, l21_norm
from .module import PerturbationModule
from .nn import inverse_softplus, last_linear, mlp, mlp_rows


@dataclass
class PDAEConfig(ModelConfig):
    """Architecture and loss hyperparameters of a PDAE.

    The loss weights are the reference code's (w_pert 10, w_rec 0.1, w_prior 1e-4,
    w_l21 1e-4). What differs converges faster on a CPU: the sampled grid
    (``benchmarks/grid_vs_sampled.py`` measures it), a larger learning rate with
    cosine decay, weight averaging (``TrainConfig``), a 10x learning rate for ``W``,
    and per-gene standardisation of the encoder input. The latent size (16) and the
    schedule were chosen on synthetic data (seed 0 and dev seeds); see the README.
    Each hyperparameter is declared with :func:`~pdae_core.models.hparams.hp` (its help
    text and choices, read by the command line and by ``__post_init__``).
    """

    n_genes: int
    n_perturbations: int
    latent_dim: int = hp(16, "latent dimension")
    hidden_dims: tuple[int, ...] = hp((512, 256), "encoder layer sizes, mirrored by the decoder")
    noise_dim: int = hp(16, "decoder noise dimension, 0 = deterministic")
    noise_sigma: float = hp(1.0, "standard deviation of the decoder noise")
    softplus_output: bool = hp(True, "softplus on the decoder output (non-negative expression)")
    w_pert: float = hp(10.0, "weight of the perturbation energy score")
    w_rec: float = hp(0.1, "weight of the reconstruction energy score")
    w_prior: float = hp(1e-4, "weight of the latent prior energy distance")
    w_l21: float = hp(1e-4, "weight of the L2,1 penalty on W")
    grid: str = hp("sampled", "score each cell against n_sources sampled cells or against every cell of the batch",
                   choices=("sampled", "full"))
    n_sources: int = hp(16, "sources per cell with the sampled grid")
    source_sampling: str = hp("condition", "with the sampled grid: a cell's sources all come from one other "
                              "condition of the batch, or from anywhere in the batch", choices=("condition", "batch"))
    rec_samples: int = hp(2, "decoder samples per cell in the reconstruction energy score")
    gene_sample: int = hp(2000, "genes the energy scores compare at each training step, a fresh random subset "
                          "(0: every gene); with thousands of genes a step then costs about what it costs at "
                          "this many. Prediction always decodes every gene")
    #: with a context column: its categories (the first is the reference level, whose shift is 0);
    #: each other context is one more column of ``W``, a latent shift like a perturbation's
    context_categories: list[str] = field(default_factory=list)
    decoder_context: bool = hp(False, "with a context column: also give the decoder each cell's context "
                               "(otherwise the context is only a latent shift)")

    @property
    def n_context_columns(self) -> int:
        """Columns of ``W`` for contexts: one per context except the reference level."""
        return max(0, len(self.context_categories) - 1)

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        cats = self.context_categories
        if isinstance(cats, str) or not isinstance(cats, (list, tuple)):
            raise ValueError("PDAEConfig: context_categories must be a list of strings")
        self.context_categories = [str(c) for c in cats]
        checks = [
            (self.n_genes >= 1, "n_genes must be >= 1"),
            (self.n_perturbations >= 1, "n_perturbations must be >= 1"),
            (self.latent_dim >= 1, "latent_dim must be >= 1"),
            (len(self.hidden_dims) >= 1 and min(self.hidden_dims) >= 1, "hidden_dims must be positive"),
            (self.noise_dim >= 0, "noise_dim must be >= 0 (0 = deterministic decoder)"),
            (self.noise_sigma >= 0, "noise_sigma must be >= 0"),
            choice_check(self, "grid"),
            choice_check(self, "source_sampling"),
            (self.n_sources >= 2, "n_sources must be >= 2"),
            (self.rec_samples >= 1, "rec_samples must be >= 1"),
            (self.gene_sample == 0 or self.gene_sample >= 2, "gene_sample must be 0 (every gene) or >= 2"),
            (min(self.w_pert, self.w_rec, self.w_prior, self.w_l21) >= 0, "loss weights must be >= 0"),
            (len(set(self.context_categories)) == len(self.context_categories), "context_categories has duplicates"),
        ]
        self._raise_failed(checks)



def one_condition_sources(labels: torch.Tensor, m: int) -> tuple[torch.Tensor | None, int]:
    """For ``source_sampling="condition"``: each target cell (row) draws one *other*
    condition of the batch, and only that condition's cells may be its sources.

    Returns a (B, B) boolean mask of allowed (target, source) pairs and the number of
    sources per target, ``min(m, k)``, where ``k`` is the largest size that every
    target finds in some other condition of the batch; only conditions with at least
    that many cells are drawn. Returns ``(None, m)`` when some cell has no other
    condition with two or more cells in the batch (the caller then samples from the
    whole batch). Uses the global RNG, like the rest of the sampled grid."""
    _, grp = torch.unique(labels, dim=0, return_inverse=True)
    n_groups = int(grp.max()) + 1 if grp.numel() else 0
    if n_groups < 2:
        return None, m
    sizes = torch.bincount(grp, minlength=n_groups)
    other = grp.unsqueeze(1) != torch.arange(n_groups, device=grp.device)  # (B, G)
    best = torch.where(other, sizes.unsqueeze(0), torch.zeros_like(sizes).unsqueeze(0)).max(1).values
    k = int(best.min())
    if k < 2:
        return None, m
    m = min(m, k)
    eligible = other & (sizes >= m).unsqueeze(0)
    chosen = torch.rand(eligible.shape, device=grp.device).masked_fill(~eligible, -1.0).argmax(1)
    return grp.unsqueeze(0) == chosen.unsqueeze(1), m


class PDAEModule(PerturbationModule):
    """Encoder ``g``, perturbation matrix ``W`` and stochastic decoder ``f``."""

    supports_shard = True

    def __init__(self, config: PDAEConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoder = mlp([c.n_genes, *c.hidden_dims, c.latent_dim])
        # W: latent_dim x (n_perturbations + context columns), no bias: shift(l) = W l
        self.W = nn.Linear(c.n_perturbations + c.n_context_columns, c.latent_dim, bias=False)
        nn.init.normal_(self.W.weight, std=0.1)
        #: context columns the decoder also reads (0 unless decoder_context)
        self.decoder_context_dim = c.n_context_columns if c.decoder_context else 0
        self.decoder = mlp(
            [c.latent_dim + c.noise_dim + self.decoder_context_dim, *reversed(c.hidden_dims), c.n_genes],
            nn.Softplus() if c.softplus_output else None,
        )
        # per-gene centre and scale of the encoder's input (fitted on the training cells)
        self.register_buffer("x_mean", torch.zeros(c.n_genes))
        self.register_buffer("x_scale", torch.ones(c.n_genes))

    def optimizer_groups(self, lr: float) -> list[dict]:
        """Adam parameter groups: ``W`` learns 10x faster than the networks, so that
        latent shifts of a few units are reached in hundreds rather than thousands of steps."""
        others = [p for n, p in self.named_parameters() if not n.startswith("W.")]
        return [{"params": others, "lr": lr}, {"params": list(self.W.parameters()), "lr": 10.0 * lr}]

    @torch.no_grad()
    def init_from_data(self, X: torch.Tensor) -> None:
        """Called once before training: standardise the encoder's input per gene and
        start the decoder at the mean expression profile (much faster convergence
        when expression values are large; the model class is unchanged)."""
        mean = X.mean(0)
        self.x_mean.copy_(mean)
        self.x_scale.copy_(X.std(0).clamp_min(1e-2))
        last = last_linear(self.decoder)
        if self.config.softplus_output:
            last.bias.copy_(inverse_softplus(mean.clamp_min(1e-4)))
        else:
            last.bias.copy_(mean)

    # ---- the model's parts --------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder((x - self.x_mean) / self.x_scale)

    def shift(self, labels: torch.Tensor) -> torch.Tensor:
        return self.W(labels)

    def z_base(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.encode(x) - self.shift(labels)

    # eager even under torch.compile: the number of sources per target is data-dependent with
    # source_sampling="condition", and the compiler cannot draw random tensors of a symbolic size
    @torch.compiler.disable
    def noise(self, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Decoder noise for latent points of batch shape ``shape`` (None when deterministic)."""
        if self.config.noise_dim == 0:
            return None
        return torch.randn(*shape, self.config.noise_dim, device=like.device, dtype=like.dtype, generator=generator)

    def decode(
        self, z: torch.Tensor, generator: torch.Generator | None = None, eps: torch.Tensor | None = None,
        labels: torch.Tensor | None = None, genes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``f(z, sigma * eps)``; ``eps`` is drawn here unless given. With ``decoder_context``,
        the context block of ``labels`` (broadcast over ``z``'s leading shape) is a decoder input too.
        ``genes`` (indices): only those genes' outputs."""
        c = self.config
        if c.noise_dim > 0:
            if eps is None:
                eps = self.noise(tuple(z.shape[:-1]), z, generator)
            z = torch.cat([z, c.noise_sigma * eps], dim=-1)
        if self.decoder_context_dim:
            if labels is None:
                raise ValueError("a PDAE with decoder_context decodes with the cells' labels (their context)")
            ctx = labels[..., c.n_perturbations:]
            while ctx.dim() < z.dim():
                ctx = ctx.unsqueeze(-2)
            z = torch.cat([z, ctx.expand(*z.shape[:-1], ctx.shape[-1])], dim=-1)
        return mlp_rows(self.decoder, z, genes)

    @property
    def perturbation_matrix(self) -> torch.Tensor:
        """The perturbations' columns of ``W``: (latent_dim, n_perturbations)."""
        return self.W.weight[:, : self.config.n_perturbations]

    @property
    def context_matrix(self) -> torch.Tensor:
        """The contexts' columns of ``W`` (latent_dim, contexts - 1); the reference context's shift is 0."""
        return self.W.weight[:, self.config.n_perturbations:]

    # ---- shared interface of pdae_core modules ---------------------------------------
    def embed(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Basal latent state ``z_base`` of cells observed under ``labels``."""
        return self.z_base(x, labels)

    def transfer(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Cells observed under ``labels`` moved to ``target`` (row-wise or broadcast)."""
        zb = self.z_base(x, labels)
        return self.decode(zb + self.shift(target), generator, labels=target)

    def source_state(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``z_base`` of the source cells: moving them to many targets encodes them once."""
        return self.z_base(x, labels)

    def transfer_from(self, state: torch.Tensor, target: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        return self.decode(state + self.shift(target), generator, labels=target)

    def loss(self, x: torch.Tensor, labels: torch.Tensor, shard: Shard | None = None) -> dict[str, torch.Tensor]:
        """The PDAE objective on one batch; ``"loss"`` is the weighted total.

        With a :class:`~pdae_core.train.distributed.Shard`, ``x`` holds this rank's slice of a
        global batch; sources come from every rank and the random draws are those of
        the global batch, so the ranks' losses average to the single-process loss
        (see :mod:`pdae_core.train.distributed`)."""
        c = self.config
        n = x.shape[0]
        z = self.encode(x)
        s = self.shift(labels)
        zb = z - s
        if shard is None:
            B, lo, world, zb_all = n, 0, 1, zb
        else:
            B, lo, world, zb_all = shard.global_size, shard.offset, shard.world_size, shard.gather(zb)
        if B < 3:
            raise ValueError("a PDAE batch needs at least 3 cells")
        hi = lo + n
        if c.grid == "full":
            # zb_j + s_i for every target i (dim 0) and source j (dim 1), j != i
            grid = zb_all.unsqueeze(0) + s.unsqueeze(1)  # (n, B, d)
            off = ~torch.eye(B, dtype=torch.bool, device=x.device)[lo:hi]
            moved = grid[off].view(n, B - 1, -1)
        else:
            m = min(c.n_sources, B - 1)
            scores = torch.rand(B, B, device=x.device)
            scores.fill_diagonal_(2.0)  # never pick j == i
            if c.source_sampling == "condition":
                allowed, m = one_condition_sources(labels if shard is None else shard.gather(labels), m)
                if allowed is not None:
                    scores = scores.masked_fill(~allowed, 3.0)
            src = scores.argsort(dim=1)[lo:hi, :m]  # m distinct sources != i, uniformly at random (among the allowed)
            # index_select, not zb_all[src]: the backward of advanced indexing sums in a
            # thread-dependent order on the CPU, index_select's does not (same seed = same result)
            moved = zb_all.index_select(0, src.reshape(-1)).view(n, m, -1) + s.unsqueeze(1)  # (n, m, d)
        eps = self.noise((B, moved.shape[1]), zb)
        # with many genes, the scores compare a random subset of them (the same for the whole batch and,
        # drawn from the global RNG, for every rank), scaled so that the loss keeps its size
        genes, scale = None, 1.0
        if 0 < c.gene_sample < c.n_genes:
            genes = torch.randperm(c.n_genes, device=x.device)[: c.gene_sample]
            scale = (c.n_genes / c.gene_sample) ** 0.5
        x_scored = x if genes is None else x.index_select(1, genes)
        samples = self.decode(moved, eps=None if eps is None else eps[lo:hi], labels=labels, genes=genes)

        def batch_mean(per_cell: torch.Tensor) -> torch.Tensor:
            # one process: the mean; a shard: (world / B) x its sum, whose average over ranks is the mean
            return per_cell.mean() if shard is None else per_cell.sum() * (world / B)

        l_pert = scale * batch_mean(energy_score(x_scored, samples))

        zd = z.detach().unsqueeze(1).expand(n, c.rec_samples, z.shape[1])
        eps = self.noise((B, c.rec_samples), zb)
        rec = self.decode(zd, eps=None if eps is None else eps[lo:hi], labels=labels, genes=genes)
        l_rec = scale * batch_mean(energy_score(x_scored, rec))

        l_prior = energy_distance(zb_all, torch.randn(B, zb.shape[1], device=zb.device, dtype=zb.dtype))
        l_l21 = l21_norm(self.W.weight)
        total = c.w_pert * l_pert + c.w_rec * l_rec + c.w_prior * l_prior + c.w_l21 * l_l21
        return {"loss": total, "pert": l_pert, "rec": l_rec, "prior": l_prior, "l21": l_l21}


@register_model
class PDAE(PerturbationModel):
    """Perturbation Distribution Autoencoder behind the shared model interface.

    >>> model = PDAE.from_anndata(adata, perturbation_key="condition")
    >>> model.fit(adata, holdout=["KLF1+MAP2K6"])
    >>> pred = model.predict(adata[adata.obs.condition == "control"], "KLF1+MAP2K6")
    """

    model_type = "pdae"
    config_class = PDAEConfig
    module_class = PDAEModule
    uses_context = True

    # ---- contexts: one more additive latent shift -----------------------------------------
    @classmethod
    def _config_from_data(
        cls, adata: ad.AnnData, registry: PerturbationRegistry, config: dict[str, Any]
    ) -> dict[str, Any]:
        """The context categories are read from ``adata.obs[covariate_key]`` unless given."""
        key = registry.covariate_key
        if key is not None and not config.get("context_categories"):
            config["context_categories"] = context_categories(adata, key)
        return config

    def _before_training(self, adata: ad.AnnData, keep: np.ndarray, labels: np.ndarray) -> None:
        """Reads the context categories from ``adata`` when the config has none (a new module)."""
        key = self.registry.covariate_key
        if key is not None and not self.config.context_categories:
            device = self.device
            self.config = type(self.config)(**{**self.config.to_dict(), "context_categories":
                                               context_categories(adata, key)})
            self.module = self._build_module(self.init_seed)
            self.module.to(device).eval()

    def _module_labels(self, adata: ad.AnnData, L: np.ndarray) -> np.ndarray:
        """(n, K + contexts - 1): the perturbation labels, then the context block (the reference
        context's is zero). Without a context column: the labels alone."""
        key, cats = self.registry.covariate_key, self.config.context_categories
        if key is None or not cats:
            return L
        block = context_onehot(adata, key, cats, what=f"this {self.model_type} model", drop_reference=True)
        return np.concatenate([np.asarray(L, dtype=np.float32), block], axis=1)

    def _target_rows(self, target: torch.Tensor, source_labels: torch.Tensor) -> torch.Tensor:
        """The target's label, then each source cell's own context block: predicted cells stay in
        their source's context."""
        rows = target.expand(len(source_labels), -1)
        K = self.registry.n_perturbations
        if source_labels.shape[1] == K or rows.shape[1] != K:
            return rows
        return torch.cat([rows, source_labels[:, K:]], dim=1)

    def _context_span_rows(self):
        """Training label vectors with their context block, and how to extend a target's label."""
        cats = self.config.context_categories
        if self.registry.covariate_key is None or not cats or not self.train_pairs:
            return None
        def extend(label: np.ndarray, context: str) -> np.ndarray:
            block = np.zeros(len(cats) - 1, dtype=np.float32)
            if context in cats[1:]:
                block[cats.index(context) - 1] = 1.0
            return np.concatenate([np.asarray(label, dtype=np.float32), block])
        rows = np.stack([extend(self.registry.label_vector(c), x) for c, x in self.train_pairs])
        return rows, extend

    def context_embedding(self):
        """One row per context: its latent shift (zero for the reference level, the first)."""
        import pandas as pd

        cats = self.config.context_categories
        C = self.module.context_matrix.detach().cpu().numpy()
        values = np.concatenate([np.zeros((C.shape[0], 1), dtype=C.dtype), C], axis=1).T if cats else C.T
        return pd.DataFrame(values, index=pd.Index(cats, name="context"), columns=[f"z{i}" for i in range(C.shape[0])])
