"""Baselines behind the prediction interface of the models.

Every baseline is fitted with ``fit(adata, registry, holdout=())`` on the cells of
``adata`` outside the ``holdout`` conditions, and predicts with
``predict(source, target, seed=0, n_draws=1)``, returning an AnnData with the same
``obs`` columns as :meth:`pdae_core.models.base.PerturbationModel.predict` (the
perturbation key, ``target``, ``source_cell``, ``source_condition``, ``draw``,
``kind``) and ``uns['pdae_prediction']``.

* :class:`NoChange`: the source cells, unchanged.
* :class:`AdditiveBaseline`: gene-space additivity, each part's effect measured on its
  single-perturbation cells.
* :class:`ScaledAdditiveBaseline`: the additive change of a combination times one scalar
  fitted on the training combinations.
* :class:`LinearBaseline`: ridge regression of mean effects on label vectors.
* :class:`PoolBaseline`: random training cells, whatever the target.

The shift baselines move each source cell by the effect of ``target - source label``
(for control source cells, the target's effect), so a source cell already carrying
some of the target's perturbations is not shifted twice.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar, TypeVar

import anndata as ad
import numpy as np

from ..data.contexts import training_mask
from ..data.registry import PerturbationRegistry, Target, condition_column
from ..errors import DataError, PDAEError
from .prediction import check_prediction_size, check_source_cells, prediction_anndata

__all__ = ["Baseline", "NoChange", "AdditiveBaseline", "ScaledAdditiveBaseline", "LinearBaseline", "PoolBaseline"]

_B = TypeVar("_B", bound="Baseline")

#: How each baseline is named in messages a user reads (by ``model_type``), never its class name.
_PLAIN_NAMES = {
    "no_change": "the no-change baseline",
    "additive": "the additive baseline",
    "scaled_additive": "the scaled additive baseline",
    "linear": "the linear baseline",
    "pool": "the random-cells baseline",
}


class Baseline:
    """Shared fit / predict plumbing; subclasses implement ``_fit`` and ``_predict``."""

    model_type: ClassVar[str] = "baseline"

    def __init__(self) -> None:
        self.registry: PerturbationRegistry | None = None
        self.holdout: list[str] = []
        self.train_conditions: list[str] = []
        self.train_labels: np.ndarray = np.zeros((0, 0), dtype=np.float32)
        self.n_train_cells: int = 0

    @property
    def is_fitted(self) -> bool:
        return self.registry is not None

    def _plain_name(self, capital: bool = False) -> str:
        """The name messages use: "the additive baseline" (``capital``: "The additive baseline")."""
        name = _PLAIN_NAMES.get(self.model_type, f"the {self.model_type.replace('_', ' ')} baseline")
        return name[0].upper() + name[1:] if capital else name

    # ---- training -------------------------------------------------------------------
    def fit(self: _B, adata: ad.AnnData, registry: PerturbationRegistry, holdout: Sequence[str] = ()) -> _B:
        """Fit on every cell of ``adata`` except those of the ``holdout`` conditions
        (which must have cells, as for the models). Returns ``self``."""
        if isinstance(holdout, str):
            holdout = [holdout]
        registry.check_genes(adata)
        conds = condition_column(adata, registry.perturbation_key)
        keep, holdout = training_mask(adata, registry, holdout)
        if registry.covariate_key is not None:
            warnings.warn(
                f"{self._plain_name(capital=True)} does not use the context column {registry.covariate_key!r}: its "
                "predictions ignore the context (a perturbation's change is pooled over every context).",
                UserWarning, stacklevel=2,
            )
        if not keep.any():
            raise DataError(f"No cells remain after holding out {holdout}.")
        sub = adata[keep]
        X = registry.expression(sub).astype(np.float64)
        L = registry.label_matrix(sub)
        self._fit(X, L, conds[keep], registry)
        self.registry = registry
        self.holdout = holdout
        self.train_conditions = sorted({str(c) for c in conds[keep]})
        self.train_labels = np.unique(L, axis=0).astype(np.float32)
        self.n_train_cells = int(keep.sum())
        return self

    def _fit(self, X: np.ndarray, L: np.ndarray, conditions: np.ndarray, registry: PerturbationRegistry) -> None:
        """Learn from training expression ``X`` (float64), labels ``L`` and condition names."""

    # ---- inference ------------------------------------------------------------------
    def predict(self, source: ad.AnnData, target: Target, seed: int = 0, n_draws: int = 1) -> ad.AnnData:
        """Predicted cells under ``target`` (a condition name, ``{name: dose}``, a list of
        names or (name, dose) pairs, or a label vector), ``n_draws`` per source cell,
        in the format of :meth:`pdae_core.models.base.PerturbationModel.predict`, with
        the same checks of the source cells and of the prediction's size."""
        reg = self.registry
        if reg is None:
            raise PDAEError(f"{self._plain_name(capital=True)} is not fitted yet: call fit(adata, registry) first.")
        if source.n_obs == 0:
            raise DataError("No source cells to predict from.")
        if int(n_draws) < 1:
            raise ValueError(f"n_draws must be >= 1, got {n_draws}.")
        n_draws = int(n_draws)
        check_prediction_size(source.n_obs * n_draws, reg.n_genes)
        label = reg.label_vector(target)
        name = target if isinstance(target, str) else reg.condition_name(label)
        order = check_source_cells(reg, source)  # same checks as the models; permuted genes are reordered
        X = reg.expression(source).astype(np.float64)
        if order is not None:
            X = X[:, order]
        rng = np.random.default_rng(seed)
        pred = self._predict(X, source, label, rng, n_draws)
        info = {
            "model_type": self.model_type,
            "target": name,
            "label": label.tolist(),
            "seed": int(seed),
            "holdout": list(self.holdout),
            "measured_in_training": bool(np.any(np.all(np.abs(self.train_labels - label[None]) < 1e-6, axis=1))),
        }
        return prediction_anndata(pred, source, reg, name, n_draws, info)

    def _predict(
        self, X: np.ndarray, source: ad.AnnData, label: np.ndarray, rng: np.random.Generator, n_draws: int
    ) -> np.ndarray:
        raise NotImplementedError

    def _label_shift(self, source: ad.AnnData, label: np.ndarray) -> np.ndarray:
        """Per source cell: target label minus the cell's own label (n_cells, K)."""
        assert self.registry is not None
        return label[None, :].astype(np.float64) - self.registry.label_matrix(source).astype(np.float64)

    def __repr__(self) -> str:
        state = f"fitted on {self.n_train_cells} cells" if self.is_fitted else "not fitted"
        return f"{type(self).__name__}({state}, holdout={self.holdout})"


def _control_mean(X: np.ndarray, L: np.ndarray, what: str) -> np.ndarray:
    ctrl = np.all(L == 0, axis=1)
    if not ctrl.any():
        raise DataError(f"{what} needs control cells in the training data; there are none.")
    return X[ctrl].mean(0)


class NoChange(Baseline):
    """Predicts the source cells unchanged (``n_draws`` identical copies)."""

    model_type = "no_change"

    def _predict(
        self, X: np.ndarray, source: ad.AnnData, label: np.ndarray, rng: np.random.Generator, n_draws: int
    ) -> np.ndarray:
        return np.tile(X, (n_draws, 1))


class AdditiveBaseline(Baseline):
    """Gene-space additivity: ``source + sum_p (t_p - s_p) * (mean_p - mean_control)``.

    ``t`` is the target's label vector (doses), ``s`` the source cell's own label
    (0 for control cells, which makes this ``source + sum_p dose_p * effect_p``), and
    ``mean_p`` the mean of the training cells of the single perturbation ``p`` at
    dose 1 (label vector = unit vector ``e_p``). A part without such cells
    (held out, or only measured in combinations) raises a :class:`DataError` at
    prediction time. After ``fit``: ``control_mean_`` (G,), ``effects_`` (K, G; NaN
    rows for parts without single cells) and ``n_single_cells_`` (K,).
    """

    model_type = "additive"

    def _fit(self, X: np.ndarray, L: np.ndarray, conditions: np.ndarray, registry: PerturbationRegistry) -> None:
        self.control_mean_ = _control_mean(X, L, self._plain_name(capital=True))
        K, G = registry.n_perturbations, X.shape[1]
        self.effects_ = np.full((K, G), np.nan)
        self.n_single_cells_ = np.zeros(K, dtype=int)
        nonzero = L != 0
        single = nonzero.sum(1) == 1
        for p in range(K):
            rows = single & (L[:, p] == 1.0)
            if rows.any():
                self.effects_[p] = X[rows].mean(0) - self.control_mean_
                self.n_single_cells_[p] = int(rows.sum())

    def _coefficients(self, source: ad.AnnData, label: np.ndarray) -> np.ndarray:
        """Per source cell, the weight of each part's effect in its shift (n_cells, K):
        here ``target label - source label``."""
        return self._label_shift(source, label)

    def _predict(
        self, X: np.ndarray, source: ad.AnnData, label: np.ndarray, rng: np.random.Generator, n_draws: int
    ) -> np.ndarray:
        assert self.registry is not None
        shift = self._coefficients(source, label)
        needed = np.flatnonzero(np.any(shift != 0, axis=0))
        missing = [self.registry.perturbations[p] for p in needed if self.n_single_cells_[p] == 0]
        if missing:
            raise DataError(
                f"{self._plain_name(capital=True)} cannot predict {self.registry.condition_name(label)!r}: no training "
                f"cells of the single perturbation(s) {', '.join(missing)} (alone, at dose 1); they are held out "
                "or never measured alone, so their effect is unknown."
            )
        eff = np.nan_to_num(self.effects_[needed], nan=0.0)
        return np.tile(X + shift[:, needed] @ eff, (n_draws, 1))


def _combination_scale(labels: np.ndarray, alpha: float) -> np.ndarray:
    """Per label vector (rows): ``alpha`` for a combination (two or more non-zero parts), else 1."""
    return np.where(np.count_nonzero(labels, axis=1) >= 2, alpha, 1.0)


class ScaledAdditiveBaseline(AdditiveBaseline):
    """Additivity with one fitted scale: a combination's additive change times ``alpha``.

    The effects are those of :class:`AdditiveBaseline` (means of the single-perturbation
    cells minus the control mean). ``alpha`` is the least-squares scale, pooled over all
    genes and over the training combinations (two or more parts, each measured alone in
    training), of the observed mean change from control on the additive one:
    ``alpha = sum_c <d_obs_c, d_add_c> / sum_c <d_add_c, d_add_c>`` with
    ``d_obs_c = mean_c - mean_control`` and ``d_add_c = l_c @ effects_`` (each
    combination weighs the same, whatever its cell count). Held-out conditions are not
    in training, so they never enter ``alpha``. Without such combinations (or if
    their additive changes are all zero) ``alpha = 1`` and the model equals the
    additive baseline. ``alpha`` is not clipped: below 1 the combinations are weaker
    than the sum of their parts (e.g. saturation), above 1 stronger.

    ``alpha`` applies to combinations only: the predicted mean of a label ``l`` is
    ``mean_control + a(l) * l @ effects_`` with ``a(l) = alpha`` when ``l`` has two or
    more non-zero parts and 1 otherwise, so a single (at any dose) gets its measured
    effect, as with the additive baseline. A source cell with label ``s`` is moved by
    ``(a(t) t - a(s) s) @ effects_`` (for control cells ``a(t) t @ effects_``).
    After ``fit``, besides the additive attributes: ``alpha_`` (float) and
    ``alpha_conditions_`` (the training combinations it was fitted on).
    """

    model_type = "scaled_additive"

    def _fit(self, X: np.ndarray, L: np.ndarray, conditions: np.ndarray, registry: PerturbationRegistry) -> None:
        super()._fit(X, L, conditions, registry)
        known = self.n_single_cells_ > 0
        combo = (np.count_nonzero(L, axis=1) >= 2) & np.all((L == 0) | known[None, :], axis=1)
        num = den = 0.0
        used: set[str] = set()
        if combo.any():
            uniq, inv = np.unique(L[combo], axis=0, return_inverse=True)
            inv = inv.reshape(-1)
            Xc, names = X[combo], np.asarray(conditions)[combo]
            for k, lab in enumerate(uniq):
                rows = inv == k
                d_obs = Xc[rows].mean(0) - self.control_mean_
                d_add = lab.astype(np.float64) @ np.nan_to_num(self.effects_, nan=0.0)
                num += float(d_obs @ d_add)
                den += float(d_add @ d_add)
                used.update(str(c) for c in names[rows])
        self.alpha_ = num / den if den > 0 else 1.0
        self.alpha_conditions_ = sorted(used) if den > 0 else []

    def _coefficients(self, source: ad.AnnData, label: np.ndarray) -> np.ndarray:
        assert self.registry is not None
        S = self.registry.label_matrix(source).astype(np.float64)
        t = label.astype(np.float64)
        a_t = float(_combination_scale(t[None, :], self.alpha_)[0])
        return a_t * t[None, :] - _combination_scale(S, self.alpha_)[:, None] * S

    def __repr__(self) -> str:
        extra = f", alpha={self.alpha_:.4g})" if self.is_fitted else ")"
        return super().__repr__()[:-1] + extra


class LinearBaseline(Baseline):
    """Ridge regression of mean effects on label vectors.

    For every distinct training label vector ``l_c`` (a condition, at its doses) the
    control-centred mean ``y_c = mean_c - mean_control`` is one row; each condition
    weighs the same, whatever its cell count. ``coef_ = argmin_B sum_c ||y_c - l_c B||^2
    + alpha ||B||^2 = (L^T L + alpha I)^-1 L^T Y`` (K x G). Prediction:
    ``source + (t - s) @ coef_`` (``t`` target label, ``s`` the source cell's label).
    Perturbations never seen in training get a zero effect (the ridge term).
    """

    model_type = "linear"

    def __init__(self, alpha: float = 1e-2) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}.")
        self.alpha = float(alpha)

    def _fit(self, X: np.ndarray, L: np.ndarray, conditions: np.ndarray, registry: PerturbationRegistry) -> None:
        self.control_mean_ = _control_mean(X, L, self._plain_name(capital=True))
        uniq, inv = np.unique(L, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
        means = np.zeros((len(uniq), X.shape[1]))
        np.add.at(means, inv, X)
        means /= counts[:, None]
        Lc = uniq.astype(np.float64)
        Y = means - self.control_mean_
        K = Lc.shape[1]
        self.coef_ = np.linalg.solve(Lc.T @ Lc + self.alpha * np.eye(K), Lc.T @ Y)

    def _predict(
        self, X: np.ndarray, source: ad.AnnData, label: np.ndarray, rng: np.random.Generator, n_draws: int
    ) -> np.ndarray:
        return np.tile(X + self._label_shift(source, label) @ self.coef_, (n_draws, 1))

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", alpha={self.alpha})"


class PoolBaseline(Baseline):
    """Random training cells, whatever the target: each predicted cell is drawn with
    replacement from every non-held-out training cell (all conditions, control
    included), uniformly over cells, or with ``balance_conditions=True`` uniformly
    over conditions and then over that condition's cells. Uses ``seed``."""

    model_type = "pool"

    def __init__(self, balance_conditions: bool = False) -> None:
        super().__init__()
        self.balance_conditions = bool(balance_conditions)

    def _fit(self, X: np.ndarray, L: np.ndarray, conditions: np.ndarray, registry: PerturbationRegistry) -> None:
        self.pool_ = X.astype(np.float32)
        self.pool_conditions_ = np.asarray(conditions, dtype=str)

    def _predict(
        self, X: np.ndarray, source: ad.AnnData, label: np.ndarray, rng: np.random.Generator, n_draws: int
    ) -> np.ndarray:
        n = X.shape[0] * n_draws
        if not self.balance_conditions:
            return self.pool_[rng.integers(0, self.pool_.shape[0], size=n)]
        names, inv = np.unique(self.pool_conditions_, return_inverse=True)
        members = [np.flatnonzero(inv == k) for k in range(len(names))]
        pick = rng.integers(0, len(names), size=n)
        idx = np.array([members[k][rng.integers(0, len(members[k]))] for k in pick], dtype=int)
        return self.pool_[idx]

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", balance_conditions={self.balance_conditions})"
