"""The ``pair_kernel`` baseline of the interaction benchmark: a double's log interaction metrics
predicted from the measured doubles of similar singles, by kernel ridge regression over pairs of
singles (:class:`~pdae_core.eval.pair_kernel.PairKernelRegression`). It uses the singles'
profiles and the training doubles' observed metrics, and no model of the doubles' profiles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import DataError
from ..pair_kernel import PairKernelRegression
from ..stacking import METRICS, log_metric, residual_as_numerator
from .interaction_scores import double_figures
from .profiles import ProfileSet

__all__ = ["PairKernelInteractionRegression", "observed_log_metrics", "profile_singles"]


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
