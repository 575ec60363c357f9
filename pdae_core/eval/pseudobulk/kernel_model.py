"""The pair-kernel baselines of the interaction benchmark: doubles of similar singles combine alike.

* ``pair_kernel`` (:class:`PairKernelInteractionRegression`): a double's log interaction metrics
  predicted from the measured doubles of similar singles, by kernel ridge regression over pairs of
  singles (:class:`~pdae_core.eval.pair_kernel.PairKernelRegression`);
* ``pair_kernel_profile`` (:class:`PairKernelProfile`): a double's whole profile, the sum of its
  singles plus the departures from additivity of the measured doubles of similar singles, weighted
  by the same pair kernel and recalibrated gene by gene.

Both use the singles' profiles and the training doubles' observed profiles, and no model of the
profiles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import DataError
from ..departure import pearson_rows
from ..pair_kernel import PairKernelRegression, pair_kernel, single_embeddings
from ..stacking import METRICS, log_metric, residual_as_numerator
from .interaction_scores import double_figures
from .models import AdditiveProfile
from .profiles import ProfileSet

__all__ = ["PairKernelInteractionRegression", "PairKernelProfile", "choose_ridge_shrink", "gene_ridge",
           "observed_log_metrics", "profile_singles"]


def profile_singles(profiles: ProfileSet, genes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every single measured alone in ``profiles``: its change on ``genes`` (all when None)."""
    g = slice(None) if genes is None else genes
    names = sorted(profiles.singles())
    return {n: row[g] for n, row in zip(names, profiles.deltas[profiles.index(names)])}


def observed_log_metrics(profiles: ProfileSet, doubles: Sequence[str], method: str,
                         genes: np.ndarray | None = None) -> np.ndarray:
    """Log magnitude and log normalised residual (:data:`~pdae_core.eval.stacking.METRICS`) of the
    observed ``doubles`` of ``profiles``, against their observed singles, (n, 2)."""
    g = slice(None) if genes is None else genes
    sep, out = profiles.separator, []
    for d in doubles:
        rows = profiles.index([*(p.strip() for p in d.split(sep)), d])
        a, b, ab = (profiles.deltas[r][g] for r in rows)
        f = double_figures(a, b, ab, method)
        out.append([f[m] for m in METRICS])
    return log_metric(np.asarray(out, dtype=np.float64).reshape(len(out), len(METRICS)))


class PairKernelInteractionRegression:
    """Kernel ridge regression of each log observed metric of the training doubles over pairs of
    singles (:mod:`pdae_core.eval.pair_kernel`: the singles embedded by the direction of their
    change and by principal components of all the singles' changes, a symmetric pair kernel,
    width and penalty by leave-one-out, the embeddings blended by leave-one-out): doubles of
    similar singles are predicted to combine alike. The normalised residual is learnt as its
    numerator ``log ||dAB - dA - dB||`` and divided by ``||dA + dB||``, known from the singles.
    Metrics only, as the heuristic regression."""

    name = "pair_kernel"

    def __init__(self, method: str = "lstsq", genes: np.ndarray | None = None) -> None:
        self.method, self.genes = method, genes

    def fit(self, profiles: ProfileSet) -> PairKernelInteractionRegression:
        doubles = profiles.eligible_doubles()
        if len(doubles) < 4:
            raise DataError("The pair kernel regression needs >= 4 training doubles with both singles; "
                            f"got {len(doubles)}.")
        y = residual_as_numerator(observed_log_metrics(profiles, doubles, self.method, self.genes),
                                  self._log_sum_norms(profiles, doubles), 1.0)
        keep = np.isfinite(y).all(1)
        pairs = [[p.strip() for p in d.split(profiles.separator)] for d, k in zip(doubles, keep) if k]
        self.kernel_ = PairKernelRegression().fit(profile_singles(profiles, self.genes), pairs, y[keep])
        return self

    def _log_sum_norms(self, profiles: ProfileSet, doubles: Sequence[str]) -> np.ndarray:
        """``log ||dA + dB||`` of each double, on the genes."""
        g = slice(None) if self.genes is None else self.genes
        sep = profiles.separator
        rows = [profiles.index([p.strip() for p in d.split(sep)]) for d in doubles]
        return np.log([np.linalg.norm(profiles.deltas[r].sum(0)[g]) + 1e-12 for r in rows])

    def predict_metrics(self, profiles: ProfileSet, doubles: Sequence[str]) -> dict[str, np.ndarray]:
        """Predicted ``magnitude`` and ``normalised_residual`` of ``doubles``, whose singles are
        rows of ``profiles`` (the training profiles)."""
        pairs = [[p.strip() for p in d.split(profiles.separator)] for d in doubles]
        log = residual_as_numerator(self.kernel_.predict(pairs), self._log_sum_norms(profiles, doubles), -1.0)
        return {m: np.exp(log[:, t]) for t, m in enumerate(METRICS)}


# ---------------------------------------------------------------------------------
# the whole departure from additivity, from the doubles of similar singles


def gene_ridge(X: np.ndarray, N: np.ndarray, shrink: float) -> np.ndarray:
    """Per gene ``g``, the ridge regression of ``N[:, g]`` (doubles x genes) on ``X[:, g]`` (doubles x
    genes x features) shrunk towards ``c``, the one least-squares fit over every (double, gene),
    with penalty ``shrink`` times the median over genes of ``sum_doubles X[:, g, 0]^2``: the
    weights, genes x features. A gene with little signal keeps ``c``."""
    X, N = np.asarray(X, dtype=np.float64), np.asarray(N, dtype=np.float64)
    c = np.linalg.lstsq(X.reshape(-1, X.shape[-1]), N.ravel(), rcond=None)[0]
    lam = float(shrink) * float(np.median((X[..., 0] ** 2).sum(0)))
    A = np.einsum("ngf,ngh->gfh", X, X) + max(lam, 1e-12) * np.eye(X.shape[-1])
    return np.linalg.solve(A, (np.einsum("ngf,ng->gf", X, N) + lam * c)[..., None])[..., 0]


def choose_ridge_shrink(X: np.ndarray, N: np.ndarray, shrinks: Sequence[float], n_folds: int = 5,
                        seed: int = 0) -> tuple[float, dict[float, float]]:
    """The shrinkage of :func:`gene_ridge` by ``n_folds``-fold cross-validation over the doubles:
    the mean Pearson over genes of each left-out double's prediction with ``N``; and every score."""
    groups = np.array_split(np.random.default_rng(seed).permutation(len(X)), n_folds)
    scores = {}
    for sh in shrinks:
        r: list[float] = []
        for grp in groups:
            m = np.ones(len(X), dtype=bool)
            m[grp] = False
            r += list(pearson_rows((X[grp] * gene_ridge(X[m], N[m], sh)).sum(-1), N[grp]))
        scores[float(sh)] = float(np.nanmean(r))
    return max(scores, key=scores.get), scores


class PairKernelProfile(AdditiveProfile):
    """A double's profile from the departures of the measured doubles of similar singles.

    For the training doubles whose two singles are measured, the non-additive parts
    ``N_c = d_c - d_A - d_B`` are regressed, all genes at once, by kernel ridge regression over
    pairs of singles: the pair kernel ``K(A+B, C+D) = k(A, C) k(B, D) + k(A, D) k(B, C)`` with
    ``k(s, t) = exp(-gamma ||e_s - e_t||^2)`` on the direction ``e_s = d_s / ||d_s||`` of each single's
    change (:mod:`pdae_core.eval.pair_kernel`), ``gamma`` and the penalty chosen by the mean Pearson
    over genes of the exact leave-one-out predictions with ``N_c``. A target's kernel departure
    ``D`` is a weighted mean of the training doubles' departures (centred), weights by how much its
    singles look like theirs. Then, per gene, a ridge regression of ``N`` on the leave-one-out ``D``
    and the singles' sum ``S`` (:func:`gene_ridge`, shrinkage by 5-fold cross-validation on the
    training doubles, :func:`choose_ridge_shrink`). Prediction for a double of two measured
    singles: ``S + w_g D + v_g S``; any other label: the sum of its singles (as
    :class:`AdditiveProfile`). No model of the profiles: the strongest trivial baseline of the
    non-additive part on Norman (``benchmarks/kernel_departure.py``).

    After ``fit``: ``doubles_`` (the training doubles), ``pairs_``, ``gamma_``, ``penalty_``,
    ``kernel_loo_`` (their leave-one-out ``D``), ``shrink_``, ``gene_w_`` and ``gene_v_``."""

    name = "pair_kernel_profile"
    GAMMAS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    PENALTIES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    SHRINKS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

    def fit(self, profiles: ProfileSet) -> PairKernelProfile:
        super().fit(profiles)
        self.doubles_ = profiles.eligible_doubles()
        if len(self.doubles_) < 5:
            raise DataError("The pair kernel profile needs >= 5 training doubles with both singles; "
                            f"got {len(self.doubles_)}.")
        rows = profiles.index(self.doubles_)
        self.pairs_ = [tuple(profiles.parts[i]) for i in rows]
        self.emb_ = single_embeddings(profile_singles(profiles), "cos")
        S = self._sums(self.pairs_)
        N = profiles.deltas[rows].astype(np.float64) - S
        self.mean_ = N.mean(0)
        Y, n, best = N - self.mean_, len(N), None
        for gamma in self.GAMMAS:
            K = pair_kernel(self.pairs_, self.pairs_, self.emb_, gamma)
            for lam in self.PENALTIES:
                A = np.linalg.solve(K + lam * np.eye(n), np.eye(n))
                H = K @ A
                loo = N - (Y - H @ Y) / np.clip(1.0 - np.diag(H), 1e-9, None)[:, None]
                score = float(np.nanmean(pearson_rows(loo, N)))
                if best is None or score > best[0]:
                    best = (score, gamma, lam, A @ Y, loo)
        _, self.gamma_, self.penalty_, self.dual_, self.kernel_loo_ = best
        X = np.stack([self.kernel_loo_, S], axis=-1)
        self.shrink_, self.shrink_scores_ = choose_ridge_shrink(X, N, self.SHRINKS)
        self.gene_w_, self.gene_v_ = gene_ridge(X, N, self.shrink_).T
        return self

    def _sums(self, pairs: Sequence[Sequence[str]]) -> np.ndarray:
        pos = {p: j for j, p in enumerate(self.perturbations_)}
        return np.stack([self.effects_[pos[a]] + self.effects_[pos[b]] for a, b in pairs])

    def kernel_departures(self, pairs: Sequence[Sequence[str]]) -> np.ndarray:
        """The kernel departure ``D`` of each pair of measured singles, before the per-gene step."""
        K = pair_kernel([tuple(p) for p in pairs], self.pairs_, self.emb_, self.gamma_)
        return self.mean_ + K @ self.dual_

    def predict(self, labels: np.ndarray) -> np.ndarray:
        L = self._labels(labels, len(self.perturbations_))
        out = super().predict(L)
        two = (np.count_nonzero(L, axis=1) == 2) & np.all((L == 0) | (L == 1), axis=1)
        if two.any():
            pairs = [tuple(self.perturbations_[j] for j in np.flatnonzero(r)) for r in L[two]]
            S = out[two]
            out[two] = S + self.gene_w_ * self.kernel_departures(pairs) + self.gene_v_ * S
        return out
