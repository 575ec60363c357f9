"""The interface every pdae_core model shares: fit, predict, latent, save, load.

A model couples a :class:`~pdae_core.data.registry.PerturbationRegistry` (how the data
encodes perturbations) with a :class:`~pdae_core.models.module.PerturbationModule` (the
network: ``loss``, ``embed``, ``transfer``, ``perturbation_matrix``). Subclasses name
their ``model_type``, ``config_class`` (a dataclass) and ``module_class``; everything
else (training, prediction, checkpoints, the extrapolation check) is shared.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..data.contexts import context_values, group_keys, measured_pairs, training_mask
from ..data.registry import PerturbationRegistry, Target, condition_column, setup_anndata
from ..data.streaming import RowSource, row_source
from ..errors import DataError
from ..train.loop import Callback, History, TrainConfig, resolve_device, train_module
from .extrapolation import ExtrapolationCheck, context_check, dose_warning, label_check, span_check  # noqa: F401 (re-exported)
from .module import PerturbationModule
from .prediction import check_prediction_size, check_source_cells, prediction_anndata

#: ``varm`` key of an ensemble's prediction: per gene, the mean over networks of their predicted mean
#: change from the source cells (``mean``) and its standard deviation across networks (``spread``)
CHANGE_KEY = "change_across_networks"

#: The most values (parameters and buffers) a model's network may hold: 2^30, 4 GiB of float32.
MAX_PARAMETERS = 2**30


class PerturbationModel:
    """Base class: a registry, a config, a :class:`~pdae_core.models.module.PerturbationModule`
    (``self.module``) and what it was trained on."""

    model_type: ClassVar[str] = ""
    #: True when a cell's latent state is ``latent() + W l`` (``W`` = perturbation_embedding,
    #: one column per perturbation, same space as ``latent()``); False for models whose
    #: perturbation embedding lives in another block (FCR).
    additive_latent: ClassVar[bool] = True
    config_class: ClassVar[type] = object
    module_class: ClassVar[type[PerturbationModule]] = PerturbationModule
    #: :class:`~pdae_core.train.loop.TrainConfig` fields this model type trains with unless told
    #: otherwise (e.g. full batches for per-condition profiles); empty: TrainConfig's defaults.
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: True for model types that take changes from control (``x_kind == "change"``) as data
    accepts_changes: ClassVar[bool] = False
    #: True for model types that use the context column (``registry.covariate_key``); the others
    #: warn at ``fit`` that they ignore it, and their extrapolation check says so
    uses_context: ClassVar[bool] = False

    def __init__(self, registry: PerturbationRegistry, seed: int = 0, **config: Any):
        self.registry = registry
        try:
            self.config = self.config_class(
                n_genes=registry.n_genes, n_perturbations=registry.n_perturbations, **config
            )
        except TypeError as e:
            raise ValueError(f"{type(self).__name__}: bad hyperparameter ({e})") from None
        self._check_size()
        self.module = self._build_module(seed)
        self.module.eval()
        self.init_seed = seed
        self.train_conditions: list[str] = []
        self.train_labels: np.ndarray = np.zeros((0, registry.n_perturbations), dtype=np.float32)
        self.holdout: list[str] = []
        #: (condition, context) pairs with training cells (empty without a context column)
        self.train_pairs: list[list[str]] = []
        self.train_config: TrainConfig | None = None
        self.history: History | None = None

    def _build_module(self, seed: int) -> PerturbationModule:
        """The network, initialised from torch's RNG seeded with ``seed`` (the global RNG is left
        as it was). An ensemble builds one network per member here."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.module_class(self.config)

    def _check_size(self) -> None:
        """Refuse hyperparameters whose network would exceed :data:`MAX_PARAMETERS`: the
        module is first built on torch's ``meta`` device, which allocates nothing."""
        with torch.device("meta"):
            probe = self._build_module(0)
        n = sum(t.numel() for t in probe.state_dict().values())
        if n > MAX_PARAMETERS:
            raise ValueError(
                f"{type(self).__name__}: these hyperparameters give a network of {n:,} values "
                f"({n * 4 / 2**30:.1f} GiB), more than the {MAX_PARAMETERS:,} (4 GiB) this library builds; "
                "lower latent_dim / hidden_dims."
            )

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_anndata(
        cls,
        adata: ad.AnnData,
        perturbation_key: str = "condition",
        control_label: str | None = None,
        separator: str = "+",
        dose_key: str | None = None,
        covariate_key: str | None = None,
        layer: str | None = None,
        seed: int = 0,
        n_members: int | None = None,
        **config: Any,
    ) -> PerturbationModel:
        """Set up ``adata`` (see :func:`~pdae_core.data.registry.setup_anndata`) and build a model for it;
        with ``n_members``, an ensemble of that many networks (:mod:`pdae_core.models.ensemble`)."""
        reg = setup_anndata(adata, perturbation_key, control_label, separator, dose_key, covariate_key, layer)
        config = cls._config_from_data(adata, reg, dict(config))
        from ..data.genes import DEFAULT_MAX_GENES

        if adata.n_vars > DEFAULT_MAX_GENES and reg.x_kind != "change":
            warnings.warn(
                f"The data has {adata.n_vars:,} genes; the model will learn and predict all of them. To train on the "
                f"{DEFAULT_MAX_GENES:,} most variable (as `pdae train` does), chosen on the training cells only: "
                "adata, registry, note = pdae_core.data.genes.cap_genes(adata, registry, cells=training cells).",
                stacklevel=2,
            )
        if n_members is not None:
            from .catalog import ensemble_class

            return ensemble_class(cls)(reg, seed=seed, n_members=n_members, **config)
        return cls(reg, seed=seed, **config)

    @classmethod
    def _config_from_data(
        cls, adata: ad.AnnData, registry: PerturbationRegistry, config: dict[str, Any]
    ) -> dict[str, Any]:
        """Hook of :meth:`from_anndata`: the hyperparameters ``config`` completed with what
        the model reads from the data (default: nothing; FCR reads its context categories)."""
        return config

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, accelerator: str = "auto") -> PerturbationModel:
        self.module.to(resolve_device(accelerator))
        return self

    @property
    def is_trained(self) -> bool:
        return self.history is not None

    def _seen_mask(self) -> np.ndarray:
        """(K,) bool: which elementary perturbations occur in some training label vector."""
        return np.abs(self.train_labels).sum(0) > 0

    @property
    def seen_perturbations(self) -> list[str]:
        """Names of the elementary perturbations present in the training labels, in the
        registry's order (empty before training). The others' shifts were never trained."""
        return [p for p, seen in zip(self.registry.perturbations, self._seen_mask()) if seen]

    # ---- training -------------------------------------------------------------------
    def fit(
        self,
        adata: ad.AnnData,
        holdout: Sequence[str] = (),
        train_config: TrainConfig | None = None,
        callbacks: Sequence[Callback] = (),
        **train_kwargs: Any,
    ) -> History:
        """Train on every cell of ``adata`` except those of the ``holdout`` conditions.

        A hold-out item is a condition (``"A+B"``) or, with a context column, a (condition,
        context) pair: ``"stimulated@CD4T"`` or ``("stimulated", "CD4T")`` (see
        :mod:`pdae_core.data.contexts`). With a context column, each (condition, context)
        pair is one distribution in training.

        ``train_kwargs`` override fields of :class:`~pdae_core.train.loop.TrainConfig`
        (``max_epochs``, ``lr``, ``batch_size``, ``seed``, ``accelerator``, ...).
        """
        if train_config is None:
            train_config = TrainConfig(**{**self.train_defaults, **train_kwargs})
        elif train_kwargs:
            train_config = TrainConfig.from_dict({**train_config.to_dict(), **train_kwargs})
        self._check_x_kind(adata)
        self.registry.check_genes(adata)
        conds = condition_column(adata, self.registry.perturbation_key)
        keep, holdout = training_mask(adata, self.registry, holdout)
        key = self.registry.covariate_key
        if key is not None and not self.uses_context:
            warnings.warn(
                f"The {self.model_type} model does not use the context column {key!r}: its predictions ignore the "
                "context (a perturbation's response is pooled over every context where it was measured).",
                UserWarning, stacklevel=2,
            )
        sub = adata[keep]
        X = self._training_matrix(adata, keep)
        L = self.registry.label_matrix(adata)[keep]
        names = np.unique(conds[keep])
        _, groups = np.unique(group_keys(sub, self.registry) if self.uses_context else conds[keep], return_inverse=True)
        if len(names) < 2:
            raise DataError("Training needs at least two conditions (e.g. control and one perturbation).")
        if X.shape[0] < 8:
            raise DataError(f"Training needs at least 8 cells; {X.shape[0]} remain after holding out {holdout}.")
        undo = self._before_training(adata, keep, L)
        try:
            self.history = self._train(X, self._module_labels(sub, L), groups, train_config, callbacks)
        except BaseException:
            if undo is not None:
                undo()
            raise
        self.train_config = train_config
        self.holdout = holdout
        self.train_conditions = [str(n) for n in names]
        self.train_pairs = measured_pairs(sub, self.registry)
        uniq = np.unique(L, axis=0)
        self.train_labels = uniq.astype(np.float32)
        return self.history

    def _train(self, X: np.ndarray | RowSource, labels: np.ndarray, groups: np.ndarray, train_config: TrainConfig,
               callbacks: Sequence[Callback]) -> History:
        """Hook of :meth:`fit`: train the network on the training cells (an ensemble trains each member)."""
        return train_module(self.module, X, labels, groups, train_config, callbacks)

    def _member_modules(self) -> list[PerturbationModule]:
        """The networks whose predictions are pooled: one for a single model, one per member for an ensemble."""
        return [self.module]

    @property
    def n_members(self) -> int:
        """How many networks predict together: 1, or the members of an ensemble."""
        return len(self._member_modules())

    def _ensemble_record(self) -> dict[str, Any] | None:
        """What a checkpoint records about the members (None: not an ensemble)."""
        return None

    def member_changes(self, source: ad.AnnData, target: Target, seed: int = 0, batch_size: int = 8192) -> np.ndarray:
        """Each member's predicted mean change of the ``source`` cells under ``target``: (members, genes),
        one row for a single model. The change is the mean of the cells moved to ``target`` minus the
        mean of the source cells (on the model's expression scale)."""
        label = self.registry.label_vector(target)
        return self.member_changes_many(source, label[None], seed=seed, batch_size=batch_size)[:, 0]

    @torch.no_grad()
    def member_changes_many(self, source: ad.AnnData, labels: np.ndarray, seed: int = 0,
                            batch_size: int = 8192, members: Sequence[int] | None = None) -> np.ndarray:
        """:meth:`member_changes` for many targets, given as label vectors ``labels`` (targets x
        perturbations): (members, targets, genes). Common random numbers: every target of a member
        moves the same cells with the same decoder noise (a generator seeded from ``seed`` and the
        member, restarted per target), so a difference between two targets' changes (the
        non-additive part ``dAB - dA - dB`` of a pair) carries no noise of its own, and a target's
        change does not depend on which other targets are asked for with it; cells go in chunks of
        ``batch_size``. ``members``: only these members (positions), in this order (default: all)."""
        self.module.eval()
        if source.n_obs == 0:
            raise DataError("No source cells to predict from.")
        labels = np.atleast_2d(np.asarray(labels, dtype=np.float32))
        if labels.shape[1] != self.registry.n_perturbations or not np.all(np.isfinite(labels)):
            raise DataError(f"Target label vectors must be finite, with {self.registry.n_perturbations} entries each.")
        X, L = self._tensors(source)
        n = len(X)
        base = X.double().mean(0)
        modules = self._member_modules()
        which = list(range(len(modules))) if members is None else [int(k) for k in members]
        if any(not 0 <= k < len(modules) for k in which):
            raise ValueError(f"members must be positions among {len(modules)} members, got {members!r}.")
        out = np.empty((len(which), len(labels), X.shape[1]), dtype=np.float64)
        chunks = [(X[i : i + batch_size], L[i : i + batch_size]) for i in range(0, n, batch_size)]
        for row, k in enumerate(which):
            module = modules[k]
            states = [module.source_state(xb, lb) for xb, lb in chunks]  # encoded once for all targets
            for j, label in enumerate(labels):
                tgt = torch.as_tensor(label, device=self.device)
                gen = torch.Generator(device=self.device).manual_seed((int(seed) * 1_000_003 + k * 7_919) % 2**63)
                total = torch.zeros(X.shape[1], dtype=torch.float64, device=self.device)
                for (_, lb), state in zip(chunks, states):
                    total += module.transfer_from(state, self._target_rows(tgt, lb), generator=gen).double().sum(0)
                out[row, j] = (total / n - base).cpu().numpy()
        return out

    def _before_training(self, adata: ad.AnnData, keep: np.ndarray, labels: np.ndarray) -> Callable[[], None] | None:
        """Hook of :meth:`fit`, called after the input checks and just before training with
        the whole ``adata``, the mask of its training cells and their label matrix. A model
        that sets state from the training data does it here (SAMS-VAE: cells per
        perturbation; FCR: context categories) and may return a function that undoes it,
        called when training fails. Default: nothing."""
        return None

    def _training_matrix(self, adata: ad.AnnData, keep: np.ndarray) -> np.ndarray | RowSource:
        """The training cells' expression: a dense array when ``X`` is dense in memory
        (moved to the device whole), else a row source read one batch at a time (a
        sparse ``X`` is densified per batch; a backed ``.h5ad`` is streamed from disk)."""
        layer = self.registry.layer
        if adata.isbacked and layer is None:
            return row_source(adata.X, np.flatnonzero(keep), where=f"X of {adata.filename}")
        X = adata.layers[layer] if layer is not None else adata.X
        if sp.issparse(X):
            if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
                raise DataError(f"Expression matrix has non-numeric dtype {X.dtype}; expected floats or integers.")
            return row_source(sp.csr_matrix(X)[np.flatnonzero(keep)])
        return self.registry.expression(adata[keep])

    def _check_x_kind(self, adata: ad.AnnData) -> None:
        from ..data.registry import detect_x_kind

        kind = detect_x_kind(adata, self.registry.layer)
        if kind == "counts":
            raise DataError(
                "X holds raw counts; this model expects log-normalised expression. "
                "Run pdae_core.preprocess(adata) (normalize_total + log1p, optional HVG selection) first."
            )
        if kind == "change" and not self.accepts_changes:
            raise DataError(
                f"X holds changes from control (per-condition profiles), not cells: the {self.model_type} model "
                "describes single-cell expression. Train the profile model instead (pdae train --level pseudobulk, or "
                "pdae_core.models.pdae_profile.PDAEProfileModel)."
            )

    # ---- inference ------------------------------------------------------------------
    def _module_labels(self, adata: ad.AnnData, L: np.ndarray) -> np.ndarray:
        """What the module receives as ``labels`` for the cells of ``adata`` whose
        perturbation label matrix is ``L`` (n, K). Default: ``L`` itself. A model that
        also conditions on a covariate (FCR) appends its encoding here; its module then
        gets (n, K + C) labels in ``loss``/``embed``/``transfer``, while target labels
        passed to ``transfer`` by ``predict`` stay (n, K)."""
        return L

    def _target_rows(self, target: torch.Tensor, source_labels: torch.Tensor) -> torch.Tensor:
        """What the module receives as ``target`` for source cells whose module labels are
        ``source_labels``: the target's label vector (K,) repeated per cell (default). A model
        whose context is part of the label (PDAE with contexts) appends each source cell's
        context block, so every predicted cell stays in its source's context."""
        return target.expand(len(source_labels), -1)

    def _tensors(self, adata: ad.AnnData, what: str = "the source cells") -> tuple[torch.Tensor, torch.Tensor]:
        """Validated expression (genes in the model's order) and module labels of ``adata``."""
        order = check_source_cells(self.registry, adata, what)
        X = self.registry.expression(adata)
        if order is not None:
            X = X[:, order]
        L = self.registry.label_matrix(adata)
        return torch.as_tensor(X, device=self.device), torch.as_tensor(self._module_labels(adata, L), device=self.device)

    def _source_chunk(self, source: ad.AnnData, order: np.ndarray | None, lo: int, hi: int) -> torch.Tensor:
        """Expression of the source cells ``lo:hi`` in the model's gene order, on the model's device."""
        X = self.registry.expression(source if lo == 0 and hi >= source.n_obs else source[lo:hi])
        return torch.as_tensor(X if order is None else X[:, order], device=self.device)

    @torch.no_grad()
    def latent(self, adata: ad.AnnData, batch_size: int = 8192) -> np.ndarray:
        """Basal latent embedding (perturbation removed) of every cell, (n_cells, latent_dim).
        The cells are validated as in :meth:`predict` (genes in another order are reordered)."""
        self.module.eval()
        if adata.isbacked and self.registry.layer is None and adata.n_obs > batch_size:
            # read a backed file chunk by chunk rather than loading X whole
            order = check_source_cells(self.registry, adata, "the cells")
            L = torch.as_tensor(self._module_labels(adata, self.registry.label_matrix(adata)), device=self.device)
            rows = row_source(adata.X, where=f"X of {adata.filename}")
            out = []
            for i in range(0, adata.n_obs, batch_size):
                xb = rows.rows(np.arange(i, min(i + batch_size, adata.n_obs)))
                xb = torch.as_tensor(xb if order is None else xb[:, order], device=self.device)
                out.append(self.module.embed(xb, L[i : i + batch_size]).cpu())
            return torch.cat(out).numpy()
        X, L = self._tensors(adata, "the cells")
        out = [self.module.embed(X[i : i + batch_size], L[i : i + batch_size]).cpu() for i in range(0, len(X), batch_size)]
        return torch.cat(out).numpy() if out else self.module.embed(X, L).cpu().numpy()  # (0, latent_dim)

    @torch.no_grad()
    def predict(
        self,
        source: ad.AnnData,
        target: Target,
        seed: int = 0,
        n_draws: int = 1,
        batch_size: int = 8192,
    ) -> ad.AnnData:
        """Predicted cells under ``target``: every source cell moved to the target
        (``n_draws`` decoder draws each). ``target`` is a condition name
        (``"KLF1+MAP2K6"``), ``{name: dose}``, a list of names or (name, dose) pairs,
        or a raw label vector. The result's ``obs`` names the target, the source cell
        and its condition; ``uns['pdae_prediction']`` holds the extrapolation check.

        The source cells are validated (finite, non-negative, not raw counts for a model
        of log-normalised expression, the model's genes: in another order they are
        reordered); more than :func:`~pdae_core.models.prediction.max_predicted_cells`
        predicted cells is refused before any work. A dose outside the doses seen in
        training for its perturbation gives a ``UserWarning``. An ensemble's prediction also holds,
        in ``varm['change_across_networks']``, each gene's mean change over the networks and its
        spread (standard deviation across them)."""
        self.module.eval()
        if source.n_obs == 0:
            raise DataError("No source cells to predict from.")
        if int(n_draws) < 1:
            raise ValueError(f"n_draws must be >= 1, got {n_draws}.")
        n_draws, n = int(n_draws), source.n_obs
        check_prediction_size(n * n_draws, self.registry.n_genes)
        label = self.registry.label_vector(target)
        name = target if isinstance(target, str) else self.registry.condition_name(label)
        order = check_source_cells(self.registry, source, "the source cells")
        L = torch.as_tensor(self._module_labels(source, self.registry.label_matrix(source)), device=self.device)
        contexts = self._source_contexts(source)
        check = self.extrapolation_check(label if not isinstance(target, str) else target, context=contexts)
        if check.doses_outside_training:
            warnings.warn(dose_warning(check, label, self.registry.perturbations), UserWarning, stacklevel=3)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        tgt = torch.as_tensor(label, device=self.device)
        pred = np.empty((n * n_draws, self.registry.n_genes), dtype=np.float32)  # filled chunk by chunk
        whole = self._source_chunk(source, order, 0, n) if n_draws > 1 else None  # read once for every draw
        for d in range(n_draws):
            for i in range(0, n, batch_size):
                # the source is read a chunk at a time (a large or on-disk source is never densified whole)
                xb = whole[i : i + batch_size] if whole is not None else self._source_chunk(source, order, i, i + batch_size)
                lb = L[i : i + batch_size]
                out = self.module.transfer(xb, lb, self._target_rows(tgt, lb), generator=gen)
                pred[d * n + i : d * n + i + len(xb)] = out.cpu().numpy()
        info = {
            "model_type": self.model_type,
            "n_members": self.n_members,
            "target": name,
            "label": label.tolist(),
            "seed": int(seed),
            "extrapolation": check.to_dict(),
        }
        out = prediction_anndata(pred, source, self.registry, name, n_draws, info)
        if self.n_members > 1:  # an ensemble: each network's mean change, summarised per gene
            changes = self.member_changes(source, label, seed=seed, batch_size=batch_size)
            table = pd.DataFrame({"mean": changes.mean(0), "spread": changes.std(0, ddof=1)}, index=out.var_names)
            cal = getattr(self, "calibration", None)
            for level, hw in sorted(cal.gene_half_widths.items()) if cal is not None else ():
                # split-conformal interval of each gene's change (a cross-fitted ensemble; eval/calibration.py)
                table[f"lower_{round(level * 100)}"] = table["mean"] - hw
                table[f"upper_{round(level * 100)}"] = table["mean"] + hw
            out.varm[CHANGE_KEY] = table
        return out

    def _source_contexts(self, source: ad.AnnData) -> list[str] | None:
        """The contexts of the source cells (sorted), or None without a context column."""
        key = self.registry.covariate_key
        if key is None or key not in source.obs.columns:
            return None
        return sorted(set(context_values(source, key).tolist()))

    def _context_span_rows(self) -> tuple[np.ndarray, Callable[[np.ndarray, str], np.ndarray]] | None:
        """For a model whose label includes the context: the training label vectors with their
        context block, and how to extend a target label with a context's block. None otherwise."""
        return None

    def extrapolation_check(self, target: Target, context: str | Sequence[str] | None = None) -> ExtrapolationCheck:
        """Does the target lie in the span of the training labels (the paper's guarantee)?

        With a context column, ``context`` (one context or several: the source cells') asks
        whether the target was measured *in that context*; a model that uses contexts checks
        the span with the context block included."""
        check = label_check(self, target)
        if context is not None and self.registry.covariate_key is not None and self.is_trained:
            contexts = [context] if isinstance(context, str) else [str(c) for c in context]
            context_check(self, check, self.registry.label_vector(target), contexts)
        return check


    def perturbation_embedding(self) -> pd.DataFrame:
        """One row per elementary perturbation: its latent shift (the columns of ``W``)."""
        W = self.module.perturbation_matrix.detach().cpu().numpy()
        return pd.DataFrame(
            W.T, index=pd.Index(self.registry.perturbations, name="perturbation"),
            columns=[f"z{i}" for i in range(W.shape[0])],
        )

    # ---- checkpoints ----------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = True) -> None:
        """Write ``model.safetensors`` + ``config.json`` into directory ``path`` atomically."""
        from .checkpoint import save_checkpoint

        save_checkpoint(self, path, overwrite=overwrite)

    @classmethod
    def load(
        cls, path: str | os.PathLike, adata: ad.AnnData | None = None, accelerator: str = "cpu",
        trust_modified: bool = False,
    ) -> PerturbationModel:
        """Load a checkpoint (never unpickles); with ``adata``, check that its genes match.

        A checkpoint modified after saving is refused unless ``trust_modified`` (then loaded with
        a :class:`~pdae_core.models.integrity.ModifiedCheckpointWarning`)."""
        from .checkpoint import load_checkpoint

        model = load_checkpoint(path, accelerator=accelerator, trust_modified=trust_modified)
        if cls is not PerturbationModel and not isinstance(model, cls):
            from ..errors import CheckpointError

            raise CheckpointError(f"{path} holds a {model.model_type!r} model, not {cls.model_type!r}.")
        if adata is not None:
            model.registry.check_genes(adata)
        return model

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "untrained"
        return (
            f"{type(self).__name__}({state}, {self.registry.n_genes} genes, "
            f"{self.registry.n_perturbations} perturbations, config={self.config})"
        )
