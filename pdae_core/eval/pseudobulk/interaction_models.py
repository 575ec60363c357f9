"""Models of the interaction benchmark (:mod:`.interactions_track`) beyond the profile
models of :mod:`.models`: :class:`HeuristicInteractionRegression` (predicts the
interaction metrics of a double directly from its two singles), :class:`PartnerProfile` (the sum
of the singles plus the non-additive part of the measured doubles that share a perturbation),
:class:`PDAEEnsembleProfile` (cross-fitted members of the PDAE mean form, with their
spread and split-conformal intervals of the per-gene change) and :class:`PDAEStackedRegression`
(the ensemble's out-of-fold metrics combined with the baselines' features)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ...errors import DataError
from ..departure_weights import BETAS, GENE_SHRINKS, best_beta, choose_gene_shrink, gene_weights
from ..pair_kernel import PairKernelRegression
from ..stacking import (
    DEFAULT_ALPHAS,
    FEATURES,
    BlendedStacker,
    log_metric,
    part_indicators,
    ridge_loo,
    single_features,
    sum_norm_feature,
)
from .interaction_scores import double_figures, rank_metrics
from .kernel_model import observed_log_metrics, profile_singles
from .models import AdditiveProfile, PDAEProfile, ProfileModel
from .profiles import ProfileSet, train_conditions

__all__ = ["HeuristicInteractionRegression", "PartnerProfile", "PDAEEnsembleProfile",
           "PDAEStackedRegression", "PropensityInteractionRegression", "single_deltas"]


def single_deltas(profiles: ProfileSet, double: str) -> tuple[np.ndarray, np.ndarray]:
    """The measured deltas of the two singles of ``double`` (rows of ``profiles``)."""
    rows = profiles.index([p.strip() for p in double.split(profiles.separator)])
    return profiles.deltas[rows[0]], profiles.deltas[rows[1]]


# ---------------------------------------------------------------------------------
# heuristic regression of the metrics on single-perturbation features


class HeuristicInteractionRegression:
    """Ridge regression of each observed interaction metric of the training doubles on
    features of their two singles, symmetric in A and B: log of the smaller and of
    the larger norm ``||dA||``, ``||dB||``, their ratio (small / large), the cosine of
    ``dA`` and ``dB`` and the log norm of their sum ``||dA + dB||`` (standardised;
    with an intercept). The ridge penalty of each metric is chosen among ``alphas``
    by exact leave-one-out error on the training doubles. It predicts the metrics, not
    profiles: only the rank metrics apply to it. Needs at least 4 training doubles
    with both singles."""

    name = "heuristic"
    FEATURES = FEATURES
    TARGETS = ("magnitude", "normalised_residual")

    def __init__(self, method: str = "lstsq", genes: np.ndarray | None = None,
                 alphas: Sequence[float] = tuple(10.0 ** np.arange(-3, 3.5, 0.5))) -> None:
        self.method, self.genes, self.alphas = method, genes, tuple(float(a) for a in alphas)

    def _features(self, profiles: ProfileSet, doubles: Sequence[str]) -> np.ndarray:
        g = slice(None) if self.genes is None else self.genes
        if not len(doubles):
            return np.zeros((0, len(FEATURES)))
        pairs = [single_deltas(profiles, d) for d in doubles]
        return single_features(np.stack([a[g] for a, _ in pairs]), np.stack([b[g] for _, b in pairs]))

    def fit(self, profiles: ProfileSet) -> HeuristicInteractionRegression:
        doubles = profiles.eligible_doubles()
        if len(doubles) < 4:
            raise DataError(f"The heuristic regression needs >= 4 training doubles with both singles; got {len(doubles)}.")
        g = slice(None) if self.genes is None else self.genes
        y = []
        for d in doubles:
            a, b = (v[g] for v in single_deltas(profiles, d))
            f = double_figures(a, b, profiles.deltas[profiles.index([d])[0]][g], self.method)
            y.append([f["magnitude"], f["normalised_residual"]])
        X = self._features(profiles, doubles)
        self.mu_, self.sd_ = X.mean(0), X.std(0)
        self.sd_[self.sd_ == 0] = 1.0
        Z = np.column_stack([np.ones(len(X)), (X - self.mu_) / self.sd_])
        Y = self._to_target(np.asarray(y, dtype=np.float64))
        penalties = [np.r_[0.0, np.full(Z.shape[1] - 1, a)] for a in self.alphas]  # the intercept is not penalised
        self.coef_, self.alpha_ = [], []
        for t in range(Y.shape[1]):
            _, coef, i, _ = ridge_loo(Z, Y[:, t], penalties)
            self.alpha_.append(self.alphas[i])
            self.coef_.append(coef)
        return self

    def predict_metrics(self, profiles: ProfileSet, doubles: Sequence[str]) -> dict[str, np.ndarray]:
        """Predicted ``magnitude`` and ``normalised_residual`` of ``doubles``, whose
        singles are rows of ``profiles`` (the training profiles)."""
        Z = np.column_stack([np.ones(len(doubles)), (self._features(profiles, doubles) - self.mu_) / self.sd_])
        return {t: self._from_target(Z @ c) for t, c in zip(self.TARGETS, self.coef_)}

    def _to_target(self, y: np.ndarray) -> np.ndarray:
        return y

    def _from_target(self, z: np.ndarray) -> np.ndarray:
        return z


class PropensityInteractionRegression(HeuristicInteractionRegression):
    """Ridge regression of the log of each observed interaction metric of the training doubles
    on which perturbations the double holds (one indicator per perturbation seen in a training
    double; with an intercept; the penalty chosen by exact leave-one-out error as in
    :class:`HeuristicInteractionRegression`): ``log m(A+B) = mu + u_A + u_B``. It learns how a
    perturbation tends to combine (a gene whose doubles are usually buffered) and knows nothing
    of the profiles; a double whose parts are in no training double gets the mean."""

    name = "propensity"

    def _features(self, profiles: ProfileSet, doubles: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "parts_"):  # fixed at the first call, on the training doubles
            self.parts_ = sorted({p.strip() for d in doubles for p in d.split(profiles.separator)})
        return part_indicators([[p.strip() for p in d.split(profiles.separator)] for d in doubles], self.parts_)

    def fit(self, profiles: ProfileSet) -> PropensityInteractionRegression:
        self.__dict__.pop("parts_", None)
        return super().fit(profiles)

    def _to_target(self, y: np.ndarray) -> np.ndarray:
        return log_metric(y)

    def _from_target(self, z: np.ndarray) -> np.ndarray:
        return np.exp(z)


# ---------------------------------------------------------------------------------
# the departure from additivity that the other measured doubles show


class PartnerProfile(AdditiveProfile):
    """The sum of the singles plus the departure from additivity of the measured doubles that
    share a perturbation with the target: a profile baseline that knows how each gene tends to
    combine, without any model of the profiles.

    Non-additive part of a training combination ``c`` (two or more parts, each measured alone
    in training): ``N_c = d_c - sum_p d_p`` over its parts ``p``. For a target combination
    ``t``: ``P_t``, the mean of ``N_c`` over the training combinations that share a part with
    ``t``, each counted once per shared part (``G`` when none does), and ``G``, the mean of
    every ``N_c``. Prediction: ``S_t + a S_t + b P_t + c G`` with ``S_t`` the sum of the
    target's singles; ``a``, ``b``, ``c`` by least squares over genes and the training
    combinations, whose own ``P`` and ``G`` leave them out. A single is its measured delta
    (as :class:`AdditiveProfile`); with fewer than 2 training combinations the model is
    :class:`AdditiveProfile`. After ``fit``: ``coef_`` (``a``, ``b``, ``c``),
    ``conditions_`` (the training combinations), ``nonadditive_`` (their ``N_c``),
    ``combination_parts_`` (which parts each holds) and ``train_features_`` (their ``S``, ``P``, ``G``,
    each leaving the combination out); :meth:`features` gives ``S``, ``P``, ``G`` of targets."""

    name = "partners"

    def fit(self, profiles: ProfileSet) -> PartnerProfile:
        super().fit(profiles)
        known = set(np.asarray(self.perturbations_)[self.known_].tolist())
        rows = [i for i, p in enumerate(profiles.parts) if len(p) >= 2 and set(p) <= known]
        L = (profiles.labels[rows] != 0).astype(np.float64)
        self.conditions_ = [profiles.conditions[i] for i in rows]
        self.combination_parts_ = L
        self.nonadditive_ = profiles.deltas[rows] - L @ self.effects_
        self.coef_ = np.zeros(3)
        if len(rows) < 2:
            return self
        shared = L @ L.T  # shared parts between training combinations
        np.fill_diagonal(shared, 0.0)
        loo_mean = (self.nonadditive_.sum(0)[None] - self.nonadditive_) / (len(rows) - 1)
        self.train_features_ = (L @ self.effects_, self._partner_mean(shared, loo_mean), loo_mean)
        X = np.stack([f.ravel() for f in self.train_features_], axis=1)
        self.coef_ = np.linalg.lstsq(X, self.nonadditive_.ravel(), rcond=None)[0]
        return self

    def _partner_mean(self, weights: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        total = weights.sum(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            P = (weights @ self.nonadditive_) / total
        return np.where(total > 0, P, fallback)

    def features(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``S``, ``P`` and ``G`` of each label (rows; needs 2 or more training combinations)."""
        L = self._labels(labels, len(self.perturbations_))
        G = np.broadcast_to(self.nonadditive_.mean(0), (len(L), self.nonadditive_.shape[1]))
        shared = (L != 0).astype(np.float64) @ self.combination_parts_.T
        return AdditiveProfile.predict(self, L), self._partner_mean(shared, G), G

    def predict(self, labels: np.ndarray) -> np.ndarray:
        L = self._labels(labels, len(self.perturbations_))
        out = super().predict(L)
        combos = np.count_nonzero(L, axis=1) >= 2
        if combos.any() and len(self.nonadditive_) >= 2:
            S, P, G = self.features(L[combos])
            out[combos] += np.tensordot(self.coef_, np.stack([S, P, G]), axes=1)
        return out


# ---------------------------------------------------------------------------------
# cross-fitted ensemble of the PDAE mean form


class PDAEEnsembleProfile(ProfileModel):
    """``n_members`` PDAE mean-form models (:class:`PDAEProfile`), cross-fitted.

    The training doubles with both singles are dealt into ``n_members`` groups
    (seeded); member ``m`` (seed ``seed * n_members + m``) is trained on every training
    profile except group ``m`` and predicts group ``m`` every ``eval_every`` steps (on
    its averaged weights). So every training double gets an out-of-fold prediction at
    every evaluation, for each candidate way of predicting:

    * ``sources``: ``"all"`` (every training profile moved to the target, averaged) or
      ``"control"`` (the control moved);
    * ``anchors``: ``"none"`` (the moved profiles as they are) or ``"singles"``: the
      observed additive part plus the model's own departure from additivity,
      ``f(l) - f(0) + sum_p (d_p - f(p) + f(0))`` over the measured singles ``p`` of
      label ``l`` (``f``: the model's prediction, ``d_p``: the observed delta); for a
      double, ``dA + dB + [f(AB) - f(A) - f(B) + f(0)]``, the observed sum plus the
      model's second difference. A single is then its observed delta.

    The (step, source, anchor) with the best mean of three interaction scores of the
    out-of-fold predictions over all training doubles (Spearman of magnitude and of
    normalised residual with ``method``, mean non-additive Pearson) is chosen, and
    every member is set to its weights at that step. Only training profiles are used.

    Prediction: the mean of the members' predicted deltas (:meth:`predict_members`
    gives each member's). Split-conformal intervals of the per-gene change
    (:meth:`half_widths`): the half-width of gene ``g`` at level ``p`` is the
    ``ceil((n + 1) p)``-th smallest absolute out-of-fold residual of gene ``g`` over the
    ``n`` training doubles (at the chosen step, source and anchor), around the ensemble
    mean; those residuals come from single members trained without 1/``n_members`` of
    the doubles, so the intervals lean conservative for the ensemble mean.

    Defaults (latent 256, one hidden layer of 256, 150 steps, 4 sources, sources
    ``("all", "control")``, anchor ``"none"``) were set by the out-of-fold score above on
    the training doubles of the first of 5 folds (seed 0) alone, 5 members: 300 steps peaked at
    step 100 and declined after (150 steps: same score at half the time); latent
    64 / 128 / 256 / 512: 0.544 / 0.558 / 0.578 / 0.566; 8 sources (latent 128): 0.569 at
    twice the time; hidden 512 (latent 256): 0.554; anchor ``"singles"``: 0.06 (the
    decoder's second difference is not the interaction), so it is off by default.
    Those training doubles are test doubles of the other folds: the defaults are not
    blind to them; the per-fold choice of step and source is. ``double_weight`` goes to
    every member (:class:`PDAEProfile`); 1, the default, because a weight of 3 ranks the
    held-out doubles better but shapes their departure worse (``benchmarks/double_weight.py``).

    After ``fit``: ``members_``, ``groups_``, ``step_``, ``source_``, ``anchor_``,
    ``selection_`` (scores per candidate), ``residuals_`` (training doubles x genes)
    and ``calibration_doubles_``. Memory: each member's averaged weights at every
    evaluation (about 4 MB each for 2,000 genes) until the choice.
    """

    name = "pdae_ensemble"

    def __init__(
        self,
        n_members: int = 5,
        seed: int = 0,
        latent_dim: int = 256,
        hidden_dims: Sequence[int] = (256,),
        steps: int = 150,
        lr: float = 2e-3,
        n_sources: int = 4,
        ema_decay: float | None = 0.98,
        eval_every: int = 25,
        sources: Sequence[str] = ("all", "control"),
        anchors: Sequence[str] = ("none",),
        method: str = "lstsq",
        genes: np.ndarray | None = None,
        num_threads: int | None = None,
        double_weight: int = 1,
    ) -> None:
        if int(n_members) < 2:
            raise ValueError(f"n_members must be >= 2 (cross-fitting), got {n_members}.")
        if not sources or any(s not in ("all", "control") for s in sources):
            raise ValueError(f"sources must be a non-empty subset of ('all', 'control'), got {sources!r}.")
        if not anchors or any(a not in ("none", "singles") for a in anchors):
            raise ValueError(f"anchors must be a non-empty subset of ('none', 'singles'), got {anchors!r}.")
        self.n_members, self.seed = int(n_members), int(seed)
        self.member_kw = dict(latent_dim=int(latent_dim), hidden_dims=tuple(hidden_dims), steps=int(steps),
                              lr=float(lr), n_sources=int(n_sources), ema_decay=ema_decay, val_fraction=0.0,
                              eval_every=int(eval_every), num_threads=num_threads, double_weight=double_weight)
        self.sources, self.anchors = tuple(sources), tuple(anchors)
        self.method, self.genes, self.num_threads = method, genes, num_threads

    # ---- anchoring on the observed singles ------------------------------------------
    def _anchored(self, raw: Callable[[np.ndarray], np.ndarray], labels: np.ndarray) -> np.ndarray:
        """``f(l) - f(0) + sum_p (d_p - f(p) + f(0))`` over the measured singles of each label."""
        L = np.atleast_2d(np.asarray(labels, dtype=np.float64))
        Lk = L * self.known_
        cols = np.flatnonzero((Lk != 0).any(0))
        K = len(self.perturbations_)
        eye = np.eye(K)[cols]
        out = raw(np.vstack([L, eye, np.zeros((1, K))]))
        pred, singles, zero = out[: len(L)], out[len(L): len(L) + len(cols)], out[-1]
        return pred - zero + Lk[:, cols] @ (self.single_deltas_[cols] - singles + zero)

    def _member_predict(self, member: PDAEProfile, labels: np.ndarray, anchor: str) -> np.ndarray:
        if anchor == "singles":
            return self._anchored(member.predict, labels)
        return member.predict(labels)

    # ---- training --------------------------------------------------------------------
    def fit(self, profiles: ProfileSet) -> PDAEEnsembleProfile:
        doubles = profiles.eligible_doubles()
        if len(doubles) < 2 * self.n_members:
            raise DataError(f"{len(doubles)} training doubles with both singles; the cross-fitted ensemble needs at "
                            f"least 2 per member ({2 * self.n_members}).")
        self.perturbations_ = list(profiles.perturbations)
        K = len(self.perturbations_)
        self.known_ = np.zeros(K)
        self.single_deltas_ = np.zeros((K, profiles.n_genes))
        for i, parts in enumerate(profiles.parts):
            if len(parts) == 1:
                j = self.perturbations_.index(parts[0])
                self.known_[j], self.single_deltas_[j] = 1.0, profiles.deltas[i]
        perm = np.random.default_rng(self.seed + 104729).permutation(len(doubles))
        self.groups_ = [sorted(doubles[i] for i in chunk) for chunk in np.array_split(perm, self.n_members)]
        g = slice(None) if self.genes is None else self.genes
        old = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(int(self.num_threads))
        try:
            self.members_, snaps, preds, steps = [], [], [], None
            for m, group in enumerate(self.groups_):
                member = PDAEProfile(seed=self.seed * self.n_members + m, source=self.sources[0], **self.member_kw)
                member.perturbations_ = list(profiles.perturbations)
                inner = profiles.subset(train_conditions(profiles, group))
                labels = profiles.subset(group).labels
                rec_s: list[dict] = []
                rec_p: list[dict] = []

                def validate(module, X, L, member=member, labels=labels, rec_s=rec_s, rec_p=rec_p) -> float:
                    out = {}

                    def raw(lab: np.ndarray) -> np.ndarray:
                        return member._moved_mean(module, X, L, torch.as_tensor(lab, dtype=torch.float32))

                    for s in self.sources:
                        member.source = s
                        for a in self.anchors:
                            out[s, a] = self._anchored(raw, labels) if a == "singles" else raw(labels)
                    rec_p.append(out)
                    rec_s.append({k: v.detach().clone() for k, v in module.state_dict().items()})
                    return 0.0

                module, X, L, curve = member._train(inner, self.member_kw["latent_dim"], validate=validate)
                if steps is not None and [s for s, _ in curve] != steps:
                    raise RuntimeError("members were evaluated at different steps")
                steps = [s for s, _ in curve]
                member.module_, member.X_, member.L_ = module, X, L
                self.members_.append(member)
                snaps.append(rec_s)
                preds.append(rec_p)
        finally:
            torch.set_num_threads(old)
        # choose (step, source, anchor) by the out-of-fold predictions of every training double
        order = [d for group in self.groups_ for d in group]
        self.calibration_doubles_ = order
        obs = profiles.deltas[profiles.index(order)]
        singles = [single_deltas(profiles, d) for d in order]
        observed = [double_figures(a[g], b[g], o[g], self.method) for (a, b), o in zip(singles, obs)]
        self.selection_ = []
        best = None
        for k, step in enumerate(steps):
            for s in self.sources:
                for a in self.anchors:
                    pred = np.vstack([preds[m][k][s, a] for m in range(self.n_members)])
                    score = self._score(pred, obs, singles, observed, g)
                    self.selection_.append({"step": step, "source": s, "anchor": a, **score})
                    if best is None or score["score"] > best[0] + 1e-12:
                        best = (score["score"], k, s, a, pred)
        _, k, s, a, pred = best
        self.step_, self.source_, self.anchor_ = steps[k], s, a
        for m, member in enumerate(self.members_):
            member.module_.load_state_dict(snaps[m][k])
            member.source = s
        self.residuals_ = np.abs(obs - pred)
        self.oof_ = pred  # out-of-fold predictions of calibration_doubles_ (read by PDAEStackedRegression)
        return self

    def _score(self, pred: np.ndarray, obs: np.ndarray, singles: list, observed: list, g: Any) -> dict[str, float]:
        figs = [double_figures(a[g], b[g], p[g], self.method, o[g]) for (a, b), p, o in zip(singles, pred, obs)]
        r = rank_metrics(np.array([f["magnitude"] for f in figs]), np.array([f["magnitude"] for f in observed]),
                         np.array([f["normalised_residual"] for f in figs]),
                         np.array([f["normalised_residual"] for f in observed]),
                         np.array([f["nonadditive_pearson"] for f in figs]))
        parts = [float(r[m][0]) for m in ("spearman_magnitude", "spearman_residual", "nonadditive_pearson")]
        return {"spearman_magnitude": parts[0], "spearman_residual": parts[1], "nonadditive_pearson": parts[2],
                "score": float(np.nanmean(parts)) if np.isfinite(parts).any() else -math.inf}

    # ---- prediction ------------------------------------------------------------------
    def predict_members(self, labels: np.ndarray) -> np.ndarray:
        """Each member's predicted deltas: (members, n, genes)."""
        L = self._labels(labels, len(self.perturbations_))
        return np.stack([self._member_predict(m, L, self.anchor_) for m in self.members_])

    def predict(self, labels: np.ndarray) -> np.ndarray:
        return self.predict_members(labels).mean(0)

    def half_widths(self, level: float) -> np.ndarray:
        """Conformal half-width of each gene's change at coverage ``level`` (inf when
        there are too few training doubles for that level)."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}.")
        n = self.residuals_.shape[0]
        r = math.ceil((n + 1) * level)
        if r > n:
            return np.full(self.residuals_.shape[1], np.inf)
        return np.sort(self.residuals_, axis=0)[r - 1]


# ---------------------------------------------------------------------------------
# the ensemble's metrics stacked with the regressions' features


class PDAEStackedRegression:
    """The cross-fitted PDAE ensemble's predicted metrics, combined with what the baselines know.

    :class:`PDAEEnsembleProfile` gives every training double an out-of-fold prediction (from
    the member trained without it). For each metric (magnitude, normalised residual), a ridge
    regression of the log observed metric of the training doubles is fitted on: the log
    out-of-fold metrics of the PDAE (both), the features of
    :class:`HeuristicInteractionRegression` (norms and cosine of the singles) and the indicators
    of :class:`PropensityInteractionRegression` (which perturbations the double holds), with an
    intercept; one penalty for the dense features and one for the indicators, chosen by exact
    leave-one-out error (:class:`~pdae_core.eval.stacking.MetricStacker`, which the pair screen
    applies to a cross-fitted ensemble too). A held-out double's PDAE features are the mean over members of each
    member's log metric (members never saw it, as out of fold). With ``kernel`` (the default) that
    regression is blended with the ``pair_kernel`` baseline's kernel models (doubles of similar
    singles combine alike; :class:`~pdae_core.eval.stacking.BlendedStacker`), with convex weights
    fitted to the leave-one-out predictions of the training doubles. The normalised residual is
    learnt as its numerator ``log ||dAB - dA - dB||`` and divided by ``||dA + dB||``, which the
    measured singles give exactly.

    Its profile of a double is the sum of the observed singles ``S = dA + dB`` plus the ensemble's
    non-additive part ``E = f(AB) - S``, recalibrated gene by gene: ``S + w_g E + v_g S``. First
    ``beta`` (among ``betas``) by the mean Pearson correlation over genes of the out-of-fold
    ``E + beta S`` with the observed non-additive part, over the training doubles (the scaled
    additive baseline's non-additive part is ``(alpha - 1) S``; this mixes the two); then per gene
    a ridge regression of the observed part on the out-of-fold ``E`` and ``S``, shrunk towards
    ``(1, beta)`` (:func:`gene_weights`), the shrinkage chosen among ``gene_shrinks`` by 5-fold
    cross-validation on the training doubles (:func:`choose_gene_shrink`). ``gene_shrinks=None``:
    ``w = 1``, ``v = beta`` for every gene. Only training profiles are used. On the Norman
    pseudobulk folds the per-gene step lifted the non-additive Pearson from 0.575 to 0.587
    (``benchmarks/nonadditive_mix.py``).

    After ``fit``: ``ensemble_`` (the fitted :class:`PDAEEnsembleProfile`), ``stacker_`` (the blend),
    ``kernel_`` and ``blend_`` (None and 1 without ``kernel``), ``design_``
    (the training doubles' features), ``coef_``,
    ``alpha_`` (the two penalties of each metric), ``weights_`` (the coefficients of the
    PDAE's own two metrics, on the standardised scale, per target metric), ``beta_``, ``shrink_``
    (None without the per-gene step), ``gene_w_`` and ``gene_v_``.
    """

    name = "pdae_stacked"
    TARGETS = ("magnitude", "normalised_residual")

    def __init__(self, method: str = "lstsq", genes: np.ndarray | None = None, seed: int = 0, n_members: int = 5,
                 alphas: Sequence[float] = DEFAULT_ALPHAS,
                 betas: Sequence[float] = BETAS,
                 gene_shrinks: Sequence[float] | None = GENE_SHRINKS, kernel: bool = True, **ensemble_kw: Any) -> None:
        self.method, self.genes, self.seed, self.n_members = method, genes, int(seed), int(n_members)
        self.kernel = bool(kernel)
        self.alphas, self.ensemble_kw = tuple(float(a) for a in alphas), dict(ensemble_kw)
        self.betas = tuple(float(b) for b in betas)
        self.gene_shrinks = None if gene_shrinks is None else tuple(float(x) for x in gene_shrinks)

    def _pdae_features(self, profiles: ProfileSet, doubles: Sequence[str], preds: np.ndarray) -> np.ndarray:
        """Log magnitude and log normalised residual of ``preds`` (members x doubles x genes), the
        mean over members."""
        g = slice(None) if self.genes is None else self.genes
        out = np.zeros((len(doubles), 2))
        for j, d in enumerate(doubles):
            a, b = (v[g] for v in single_deltas(profiles, d))
            figs = [double_figures(a, b, p[j][g], self.method) for p in preds]
            out[j] = [np.mean(log_metric([f[t] for f in figs])) for t in self.TARGETS]
        return out

    def _parts(self, profiles: ProfileSet, doubles: Sequence[str]) -> list[list[str]]:
        return [[p.strip() for p in d.split(profiles.separator)] for d in doubles]

    def fit(self, profiles: ProfileSet) -> PDAEStackedRegression:
        self.ensemble_ = PDAEEnsembleProfile(n_members=self.n_members, seed=self.seed, method=self.method,
                                             genes=self.genes, **self.ensemble_kw).fit(profiles)
        doubles = self.ensemble_.calibration_doubles_
        g = slice(None) if self.genes is None else self.genes
        self.heuristic_ = HeuristicInteractionRegression(method=self.method, genes=self.genes)
        X = (self._pdae_features(profiles, doubles, self.ensemble_.oof_[None]),
             self.heuristic_._features(profiles, doubles), self._parts(profiles, doubles))
        self.stacker_ = BlendedStacker(self.alphas, PairKernelRegression() if self.kernel else None).fit(
            *X, observed_log_metrics(profiles, doubles, self.method, self.genes), profile_singles(profiles, self.genes),
            sum_norm_feature(X[1]))
        st, self.kernel_, self.blend_ = self.stacker_.stacker_, self.stacker_.kernel_, self.stacker_.blend_
        self.design_ = st.design(*X)
        self.mu_, self.sd_, self.coef_, self.alpha_, self.weights_ = st.mu_, st.sd_, st.coef_, st.alpha_, st.weights_
        # the profile's non-additive part, recalibrated by the out-of-fold predictions of the training doubles
        S = np.vstack([np.add(*single_deltas(profiles, d)) for d in doubles])
        na_obs = profiles.deltas[profiles.index(doubles)] - S
        na_ens = self.ensemble_.oof_ - S
        self.beta_ = best_beta(na_ens[:, g], S[:, g], na_obs[:, g], self.betas)
        self.shrink_ = None
        self.gene_w_, self.gene_v_ = np.ones(profiles.n_genes), np.full(profiles.n_genes, self.beta_)
        if self.gene_shrinks is not None:
            self.shrink_, self.shrink_scores_ = choose_gene_shrink(na_ens, S, na_obs, self.betas, self.gene_shrinks,
                                                                   genes=self.genes)
            self.gene_w_, self.gene_v_ = gene_weights(na_ens, S, na_obs, self.beta_, self.shrink_)
        return self

    def predict(self, labels: np.ndarray) -> np.ndarray:
        """Profiles: ``S + w E + v S`` per gene, with ``S`` the sum of the observed singles of each
        label's parts and ``E`` the ensemble's mean minus ``S``."""
        ens = self.ensemble_
        L = ens._labels(labels, len(ens.perturbations_))
        S = (L * ens.known_) @ ens.single_deltas_
        return S + self.gene_w_ * (ens.predict(L) - S) + self.gene_v_ * S

    def predict_metrics(self, profiles: ProfileSet, doubles: Sequence[str]) -> dict[str, np.ndarray]:
        """Predicted ``magnitude`` and ``normalised_residual`` of ``doubles``, whose singles are rows
        of ``profiles`` (the training profiles)."""
        L = np.zeros((len(doubles), len(self.ensemble_.perturbations_)))
        for j, d in enumerate(doubles):
            for p in d.split(profiles.separator):
                L[j, self.ensemble_.perturbations_.index(p.strip())] = 1.0
        feats = self.heuristic_._features(profiles, doubles)
        log = self.stacker_.predict(self._pdae_features(profiles, doubles, self.ensemble_.predict_members(L)),
                                    feats, self._parts(profiles, doubles), sum_norm_feature(feats))
        return {t: np.exp(log[:, i]) for i, t in enumerate(self.TARGETS)}
