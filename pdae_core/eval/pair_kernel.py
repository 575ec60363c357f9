"""Kernel regression over pairs of singles: how a double combines, learnt from doubles of similar singles.

Two doubles whose singles change the same genes in the same way tend to combine alike (two
members of one complex, two regulators of one program). :class:`PairKernelRegression` turns that
into a prediction of a double's log interaction metrics from the measured doubles, without any
model of the profiles:

* each measured single ``s`` gets an embedding ``e_s`` from its mean change ``d_s``
  (:func:`single_embeddings`): ``cos`` (``d_s / ||d_s||``, so only the direction counts) or
  ``pcaK`` (its coordinates on the first ``K`` principal components of all the singles' changes,
  scaled so that the mean squared norm is 1, so the size of the change counts too);
* singles are compared by ``k(s, t) = exp(-gamma ||e_s - e_t||^2)`` and doubles by the symmetric
  pair kernel ``K(A+B, C+D) = k(A, C) k(B, D) + k(A, D) k(B, C)`` (the same for ``B+A``);
* per metric and embedding, kernel ridge regression of the centred log metric of the training
  doubles, ``gamma`` and the penalty chosen by exact leave-one-out error;
* the embeddings' leave-one-out predictions are combined with non-negative weights summing to 1
  fitted to the training doubles (:func:`convex_weights`, a super learner).

:class:`~pdae_core.eval.stacking.BlendedStacker` adds the same kernel models to the ridge stacker of
a model's own metrics (:class:`~pdae_core.eval.stacking.MetricStacker`): the stacker's and the kernels' leave-one-out
predictions are combined by :func:`convex_weights`, so the blend leans on whichever has predicted
the training doubles better. On ``norman19_pseudobulk`` this lifted the held-out magnitude
Spearman of the stacked PDAE ensemble (``pdae benchmark --task interactions``, ``pdae_stacked``);
the kernel models alone are the ``pair_kernel`` baseline. Pure NumPy (and SciPy's NNLS); only
training doubles are used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import nnls

__all__ = ["EMBEDDINGS", "GAMMAS", "LAMBDAS", "PairKernelRegression", "convex_weights", "pair_kernel",
           "single_embeddings"]

#: the embeddings of the singles combined by default
EMBEDDINGS = ("cos", "pca10", "pca20")
#: kernel widths tried (on embeddings whose mean squared norm is 1)
GAMMAS = (0.1, 0.3, 1.0, 3.0, 10.0)
#: ridge penalties tried
LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def single_embeddings(singles: Mapping[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """One embedding per single (module docstring): ``kind`` is ``"cos"`` or ``"pcaK"`` (K >= 1; at
    most one fewer than the number of singles is used). A single with no change embeds at 0."""
    names = list(singles)
    if not names:
        raise ValueError("No singles to embed.")
    D = np.stack([np.asarray(singles[n], dtype=np.float64) for n in names])
    if kind == "cos":
        norm = np.linalg.norm(D, axis=1, keepdims=True)
        E = np.divide(D, norm, out=np.zeros_like(D), where=norm > 0)
    elif kind.startswith("pca") and kind[3:].isdigit() and int(kind[3:]) >= 1:
        Dc = D - D.mean(0)
        k = max(1, min(int(kind[3:]), len(names) - 1))
        _, _, Vt = np.linalg.svd(Dc, full_matrices=False)
        E = Dc @ Vt[:k].T
        scale = math.sqrt(float(np.mean(np.sum(E**2, axis=1))))
        E = E / scale if scale > 0 else E
    else:
        raise ValueError(f"Unknown embedding {kind!r}: use 'cos' or 'pcaK' (e.g. 'pca10').")
    return dict(zip(names, E))


def pair_kernel(pairs1: Sequence[Sequence[str]], pairs2: Sequence[Sequence[str]], emb: Mapping[str, np.ndarray],
                gamma: float) -> np.ndarray:
    """``K[i, j] = k(A, C) k(B, D) + k(A, D) k(B, C)`` for ``pairs1[i] = (A, B)``, ``pairs2[j] = (C, D)``,
    with ``k(s, t) = exp(-gamma ||e_s - e_t||^2)`` on the embeddings ``emb``."""
    names = sorted({p for pr in (*pairs1, *pairs2) for p in pr})
    pos = {n: i for i, n in enumerate(names)}
    E = np.stack([emb[n] for n in names])
    sq = np.sum(E**2, axis=1)
    k = np.exp(-gamma * np.clip(sq[:, None] + sq[None] - 2 * E @ E.T, 0.0, None))

    def idx(pairs: Sequence[Sequence[str]], j: int) -> np.ndarray:
        return np.array([pos[p[j]] for p in pairs], dtype=np.int64)

    a1, b1, a2, b2 = idx(pairs1, 0), idx(pairs1, 1), idx(pairs2, 0), idx(pairs2, 1)
    return k[np.ix_(a1, a2)] * k[np.ix_(b1, b2)] + k[np.ix_(a1, b2)] * k[np.ix_(b1, a2)]


def convex_weights(preds: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights ``w >= 0``, ``sum(w) = 1`` minimising ``||preds @ w - y||^2`` (``preds``: (n, k)),
    by non-negative least squares with the sum constraint as a heavily weighted extra row."""
    preds, y = np.asarray(preds, dtype=np.float64), np.asarray(y, dtype=np.float64)
    big = 1e3 * max(1.0, float(np.abs(preds).max()), float(np.abs(y).max())) * math.sqrt(len(y))
    w, _ = nnls(np.vstack([preds, np.full(preds.shape[1], big)]), np.r_[y, big])
    return w / w.sum() if w.sum() > 0 else np.full(preds.shape[1], 1.0 / preds.shape[1])


def _krr_loo(K: np.ndarray, y: np.ndarray, lambdas: Sequence[float]) -> tuple[float, np.ndarray, float, np.ndarray]:
    """Kernel ridge fits of ``y`` (centred) for each penalty; the one with the smallest exact
    leave-one-out error: (error, dual coefficients, penalty, leave-one-out predictions)."""
    best = None
    n = len(K)
    for lam in lambdas:
        A = np.linalg.solve(K + lam * np.eye(n), np.eye(n))
        alpha = A @ y
        H = K @ A
        r = (y - K @ alpha) / np.clip(1.0 - np.diag(H), 1e-9, None)
        err = float(np.mean(r**2))
        if best is None or err < best[0]:
            best = (err, alpha, float(lam), y - r)
    return best


class PairKernelRegression:
    """Kernel ridge regression of log interaction metrics over pairs of singles (module docstring).

    ``fit(singles, pairs, target_log)``: ``singles`` maps every measured single to its mean change
    (all of them shape the embeddings, not only those in training doubles); ``pairs`` (n) the
    training doubles' two singles; ``target_log`` (n, T). After it: per target ``choices_`` (per
    embedding: gamma, penalty), ``weights_`` (convex weights of the embeddings), and
    ``loo_predictions()`` (n, T) of the blend, ``embedding_loo_`` (T, n, embeddings)."""

    def __init__(self, embeddings: Sequence[str] = EMBEDDINGS, gammas: Sequence[float] = GAMMAS,
                 lambdas: Sequence[float] = LAMBDAS) -> None:
        self.embeddings, self.gammas, self.lambdas = tuple(embeddings), tuple(gammas), tuple(lambdas)
        if not self.embeddings:
            raise ValueError("PairKernelRegression needs at least one embedding.")

    def fit(self, singles: Mapping[str, np.ndarray], pairs: Sequence[Sequence[str]],
            target_log: np.ndarray) -> PairKernelRegression:
        Y = np.asarray(target_log, dtype=np.float64)
        Y = Y[:, None] if Y.ndim == 1 else Y
        self.pairs_ = [tuple(p) for p in pairs]
        if len(self.pairs_) != len(Y) or len(Y) < 4 or not np.isfinite(Y).all():
            raise ValueError("PairKernelRegression needs at least 4 pairs, one finite target row each.")
        missing = sorted({s for p in self.pairs_ for s in p} - set(singles))
        if missing:
            raise ValueError(f"Pairs name singles without a measured change: {missing[:5]}.")
        self.emb_ = {kind: single_embeddings(singles, kind) for kind in self.embeddings}
        self.mean_ = Y.mean(0)
        self.choices_, self.duals_, self.weights_, loo_each = [], [], [], []
        for t in range(Y.shape[1]):
            y = Y[:, t] - self.mean_[t]
            choices, duals, loos = [], [], []
            for kind in self.embeddings:
                best = None
                for g in self.gammas:
                    err, alpha, lam, loo = _krr_loo(pair_kernel(self.pairs_, self.pairs_, self.emb_[kind], g), y,
                                                    self.lambdas)
                    if best is None or err < best[0]:
                        best = (err, alpha, (float(g), lam), loo)
                choices.append(best[2])
                duals.append(best[1])
                loos.append(best[3] + self.mean_[t])
            L = np.column_stack(loos)
            self.choices_.append(choices)
            self.duals_.append(duals)
            self.weights_.append(convex_weights(L, Y[:, t]))
            loo_each.append(L)
        self.embedding_loo_ = np.stack(loo_each)
        self.target_log_ = Y
        return self

    def predict_each(self, pairs: Sequence[Sequence[str]]) -> np.ndarray:
        """Each embedding's prediction of the log metrics of ``pairs``: (T, n, embeddings)."""
        pairs = [tuple(p) for p in pairs]
        out = np.zeros((len(self.choices_), len(pairs), len(self.embeddings)))
        for e, kind in enumerate(self.embeddings):
            missing = sorted({s for p in pairs for s in p} - set(self.emb_[kind]))
            if missing:
                raise ValueError(f"Pairs name singles without a measured change: {missing[:5]}.")
            for t in range(len(self.choices_)):
                K = pair_kernel(pairs, self.pairs_, self.emb_[kind], self.choices_[t][e][0])
                out[t, :, e] = K @ self.duals_[t][e] + self.mean_[t]
        return out

    def predict(self, pairs: Sequence[Sequence[str]]) -> np.ndarray:
        """Predicted log metrics of ``pairs`` (the embeddings blended), (n, T)."""
        each = self.predict_each(pairs)
        return np.column_stack([each[t] @ self.weights_[t] for t in range(len(self.weights_))])

    def loo_predictions(self) -> np.ndarray:
        """Each training pair's log metrics predicted without it (the embeddings blended), (n, T)."""
        return np.column_stack([self.embedding_loo_[t] @ w for t, w in enumerate(self.weights_)])
