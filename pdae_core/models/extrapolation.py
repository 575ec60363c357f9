"""The extrapolation check: is a prediction target covered by what the model was trained on?

The additive latent-shift model identifies ``W l`` exactly for labels ``l`` in the span
of the training labels (von Kuegelgen et al., 2025). With a context column the check
also asks whether the target was measured in the source cells' context, and, for a
model whose label includes the context, whether the pair lies in that span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.registry import Target
from ..errors import DataError


@dataclass
class ExtrapolationCheck:
    """Whether a target's label vector lies in the span of the training labels.

    The additive latent-shift model identifies ``W l`` exactly for labels ``l`` in
    that span (von Kuegelgen et al., 2025); outside it the prediction rests on
    shifts the data never constrained.
    """

    target: str
    in_span: bool
    residual: float
    rank_train: int
    rank_with_target: int
    unseen_perturbations: list[str]
    measured_in_training: bool
    message: str
    #: seen perturbations whose dose lies outside the doses seen in training for them
    #: (control counting as dose 0), and those ranges as ``{name: [low, high]}``
    doses_outside_training: list[str] = field(default_factory=list)
    training_dose_ranges: dict[str, list[float]] = field(default_factory=dict)
    #: with a context column: the source cells' context(s), whether the target was measured in
    #: each of them, the contexts where it was measured, and a plain sentence about it
    contexts: list[str] = field(default_factory=list)
    measured_in_context: bool | None = None
    measured_contexts: list[str] = field(default_factory=list)
    context_note: str = ""
    #: how the dashboard shows ``context_note``: "success" (covered), "warning" (the model ignores
    #: the context, or no guarantee applies), "error" (not supported); "" without a note
    context_level: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def span_check(train_labels: np.ndarray, label: np.ndarray, tol: float = 1e-6) -> tuple[bool, float, int, int]:
    """Is ``label`` in the row span of ``train_labels``? Returns (in_span, relative
    residual of the least-squares fit, rank, rank with the label).

    Scale-invariant: every nonzero row and the label are scaled to unit norm first
    (which leaves the span unchanged), so ``c * l`` is in the span for any ``c != 0``
    exactly when ``l`` is. The label is in the span when its relative residual is at
    most ``tol``; the rank with the label is then the rank, else the rank plus one."""
    L = np.asarray(train_labels, dtype=np.float64).reshape(-1, np.asarray(label).size)
    v = np.asarray(label, dtype=np.float64).reshape(-1)
    norms = np.linalg.norm(L, axis=1)
    L = L[norms > 0] / norms[norms > 0, None]
    rank = int(np.linalg.matrix_rank(L, tol=tol)) if L.size else 0
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        return True, 0.0, rank, rank
    v = v / norm
    if L.size:
        coef, *_ = np.linalg.lstsq(L.T, v, rcond=None)
        resid = float(np.linalg.norm(L.T @ coef - v))
    else:
        resid = 1.0
    in_span = resid <= tol
    return in_span, resid, rank, rank if in_span else rank + 1


def _names_list(names: Sequence[str]) -> str:
    names = [str(n) for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _fmt_dose(x: float) -> str:
    return f"{x:g}"


def dose_ranges(
    train_labels: np.ndarray, label: np.ndarray, perturbations: Sequence[str], seen: np.ndarray, rtol: float = 1e-6
) -> tuple[dict[str, list[float]], list[str]]:
    """For each seen perturbation the target uses: the range of its training doses
    (control counting as dose 0), and the names whose target dose lies outside it."""
    L = np.asarray(train_labels, dtype=np.float64)
    ranges: dict[str, list[float]] = {}
    outside: list[str] = []
    for k in np.flatnonzero((np.abs(label) > 0) & seen):
        lo, hi = min(0.0, float(L[:, k].min())), max(0.0, float(L[:, k].max()))
        d = float(label[k])
        ranges[perturbations[k]] = [lo, hi]
        slack = rtol * max(1.0, abs(lo), abs(hi))
        if d < lo - slack or d > hi + slack:
            outside.append(perturbations[k])
    return ranges, outside


def dose_warning(check: ExtrapolationCheck, label: np.ndarray, perturbations: list[str]) -> str:
    parts = [
        f"{p} at dose {_fmt_dose(float(label[perturbations.index(p)]))} (training range "
        f"[{_fmt_dose(lo)}, {_fmt_dose(hi)}])"
        for p, (lo, hi) in check.training_dose_ranges.items()
    ]
    return f"Predicting {check.target}: dose outside the range seen in training for {'; '.join(parts)}."


def label_check(model: Any, target: Target) -> ExtrapolationCheck:
    """The check of a target's label vector against the training labels, contexts aside."""
    label = model.registry.label_vector(target)
    name = target if isinstance(target, str) else model.registry.condition_name(label)
    if not model.is_trained:
        return ExtrapolationCheck(name, False, 1.0, 0, 0, [], False, "The model is not trained yet.")
    seen = model._seen_mask()
    unseen = [model.registry.perturbations[i] for i in np.flatnonzero((np.abs(label) > 0) & ~seen)]
    in_span, resid, r1, r2 = span_check(model.train_labels, label)
    measured = bool(np.any(np.all(np.abs(model.train_labels - label[None]) < 1e-6, axis=1)))
    ranges, outside = dose_ranges(model.train_labels, label, model.registry.perturbations, seen)
    if measured:
        msg = f"{name} was measured in training: the prediction is an in-distribution reconstruction."
    elif in_span:
        msg = (
            f"{name} lies in the span of the {len(model.train_labels)} training label vectors (rank {r1}): "
            "covered by the additive-shift extrapolation guarantee."
        )
    else:
        why = (
            f"perturbation(s) {', '.join(unseen)} never appear in training, so their shift is not identified"
            if unseen
            else f"it is not a linear combination of the training labels (relative residual {resid:.2g})"
        )
        msg = f"{name} is outside the span of the training labels: {why}. Treat the prediction as unsupported."
    if outside:
        msg += " " + " ".join(
            f"The dose {_fmt_dose(label[model.registry.perturbations.index(p)])} of {p} is outside the range of "
            f"doses seen in training for it [{_fmt_dose(ranges[p][0])}, {_fmt_dose(ranges[p][1])}] "
            "(control counts as dose 0): the prediction extrapolates in dose."
            for p in outside
        )
    return ExtrapolationCheck(name, bool(in_span), resid, r1, r2, unseen, measured, msg, outside,
                              {p: ranges[p] for p in outside})


def context_check(model: Any, check: ExtrapolationCheck, label: np.ndarray, contexts: Sequence[str]) -> None:
    """Completes ``check`` for the source contexts: measured there? in the span with them?"""
    name = check.target
    where: dict[str, list[str]] = {}
    for cond, ctx in model.train_pairs:
        try:
            same = np.allclose(model.registry.label_vector(cond), label, atol=1e-6)
        except DataError:
            same = False
        if same:
            where.setdefault(ctx, []).append(cond)
    missing = [c for c in contexts if c not in where]
    check.contexts = list(contexts)
    check.measured_contexts = sorted(where)
    check.measured_in_context = not missing
    if not missing:
        check.measured_in_training = True
        check.context_note = f"{name} was measured in {_names_list(contexts)} and used in training."
        check.message = f"{name} was measured in {_names_list(contexts)} in training: the prediction is an in-distribution reconstruction."
        return
    check.measured_in_training = False
    never = f"never in {_names_list(missing)}"
    key = model.registry.covariate_key
    if not where:
        check.context_note = ""  # the condition itself was never measured: the span verdict says it all
        return
    seen_in = f"{name} was measured in training (in {_names_list(sorted(where))}), but {never}"
    rows = model._context_span_rows()
    if not model.uses_context:
        check.context_note = (
            f"{seen_in}. This model does not use the {key!r} column: it predicts the response averaged over "
            "the contexts where it was measured, so treat differences between contexts with caution."
        )
        check.context_level = "warning"
        check.message = check.context_note
        return
    if rows is None:
        check.context_note = (
            f"{seen_in}: the model carries its effect over to {_names_list(missing)} through what it learnt "
            "about the contexts; no span guarantee applies to this model."
        )
        check.context_level = "warning"
        check.message = check.context_note
        return
    train_rows, extend = rows
    ok = [span_check(train_rows, extend(label, c))[0] for c in missing]
    check.in_span = check.in_span and all(ok)
    if all(ok):
        check.context_note = (
            f"{seen_in}: the model adds its effect, learnt where it was measured, to what it learnt about "
            f"{_names_list(missing)} from other conditions."
        )
        check.context_level = "success"
        check.message = check.context_note + " Covered by the additive-shift extrapolation guarantee."
    else:
        check.context_note = (
            f"{seen_in}, and {_names_list(missing)} cannot be tied to it through the measured conditions: "
            "the prediction is not supported."
        )
        check.context_level = "error"
        check.message = check.context_note

