"""Where a pair departs from the sum of its parts, gene by gene.

A pair's interaction metrics (:mod:`pdae_core.eval.interactions`) say *how much* the double
``A+B`` differs from ``A`` plus ``B``; this module says *which genes* carry that difference: per
gene, the departure ``dAB - dA - dB`` of the predicted change from the sum of the singles' changes,
its spread across an ensemble's networks, a calibrated range where the model has one, and, for a
measured pair, the observed departure. On the Norman 2019 profiles the shape of this departure is
where the PDAE ensemble is ahead of every baseline (non-additive Pearson, docs/benchmarks.md).

- :func:`gene_departures`: the per-gene table of one pair, sorted by the size of the departure.
- :func:`departure_kind`: each gene's departure in words (stronger, weaker, reversed, new).
- :func:`departure_agreement`: for a measured pair, how the predicted departure matches the
  observed one, beside what a uniform scaling of the sum could reach at best.
- :func:`describe_departures`, :func:`agreement_in_words`, :func:`recalibration_in_words`: the
  same in sentences.
- :func:`top_departures`: for many pairs at once (the pair screen), each pair's largest departures
  as a short text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["KINDS", "NEW_RATIO", "agreement_in_words", "departure_agreement", "departure_kind", "describe_departures",
           "gene_departures", "pearson_over_genes", "pearson_rows", "recalibration_in_words", "top_departures"]

#: A gene whose summed single change is below this fraction of its departure is "new in the pair".
NEW_RATIO = 1.0 / 3.0
#: The words :func:`departure_kind` gives, each with what it means.
KINDS: dict[str, str] = {
    "stronger": "changes more than the sum of the parts, in the same direction",
    "weaker": "changes less than the sum of the parts (buffered)",
    "reversed": "changes against the direction of the sum of the parts",
    "new": "changes in the pair although neither part changes it much",
    "none": "exactly the sum of the parts",
}


def departure_kind(total: np.ndarray, departure: np.ndarray) -> np.ndarray:
    """Per gene, the departure ``departure`` from the summed single change ``total`` in words
    (:data:`KINDS`): ``"new"`` when ``|total| < NEW_RATIO |departure|``; else ``"stronger"`` when
    both have the same sign, ``"weaker"`` when the departure points back and is no larger than the
    sum, ``"reversed"`` when it points back and is larger (the pair moves the gene the other way);
    ``"none"`` where the departure is exactly 0."""
    total, departure = np.asarray(total, dtype=np.float64), np.asarray(departure, dtype=np.float64)
    if total.shape != departure.shape:
        raise ValueError(f"total and departure must have the same shape, got {total.shape} and {departure.shape}.")
    out = np.where(total * departure > 0, "stronger",
                   np.where(np.abs(departure) <= np.abs(total), "weaker", "reversed")).astype(object)
    out[np.abs(total) < NEW_RATIO * np.abs(departure)] = "new"
    out[departure == 0] = "none"
    return out


def gene_departures(
    changes: np.ndarray,
    genes: Sequence[str],
    observed: np.ndarray | None = None,
    half_width: np.ndarray | None = None,
    weights: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The per-gene departure of one pair from the sum of its parts.

    ``changes``: (networks, 3, genes) mean changes from control of ``A``, ``B`` and ``A+B`` per
    network (one network: shape (1, 3, genes)); the singles' rows may be the observed changes, the
    same for every network. ``observed``: (3, genes) the observed changes of ``A``, ``B``, ``A+B``
    when the pair was measured. ``half_width``: per gene, the half-width of a calibrated interval
    of the pair's change (it is also the departure's when the singles are the observed ones), or
    with ``weights`` of the recalibrated departure. ``weights``: per gene ``(w, v)``, a
    recalibration of the networks' departure ``E`` learnt on doubles they did not train on
    (:mod:`pdae_core.eval.departure_weights`): the departure is ``w E + v (dA + dB)`` and the
    predicted pair the sum of the parts plus it; the networks' own are kept as
    ``network_departure`` and ``network_pair``.

    Returns one row per gene, sorted by ``|departure|`` (largest first): ``gene``, ``change_a``,
    ``change_b``, ``sum_of_parts``, ``predicted_pair``, ``departure`` (``predicted_pair -
    sum_of_parts``), ``departure_spread`` (standard deviation of the networks' departures; NaN for
    one network), ``kind`` (:func:`departure_kind`); with ``half_width`` ``departure_lo`` /
    ``departure_hi``; with ``observed`` ``observed_pair``, ``observed_departure`` (the observed
    pair minus the observed singles) and ``observed_kind``."""
    d = np.asarray(changes, dtype=np.float64)
    if d.ndim != 3 or d.shape[1] != 3:
        raise ValueError(f"changes must have shape (networks, 3, genes), got {d.shape}.")
    n_genes = d.shape[2]
    if len(genes) != n_genes:
        raise ValueError(f"{len(genes)} gene names for {n_genes} genes.")
    mean = d.mean(0)
    per_net = d[:, 2] - d[:, 0] - d[:, 1]
    total = mean[0] + mean[1]
    dep = mean[2] - total
    extra = {}
    if weights is not None:
        w, v = (np.asarray(x, dtype=np.float64) for x in weights)
        if w.shape != (n_genes,) or v.shape != (n_genes,):
            raise ValueError(f"weights must be two arrays of one value per gene ({n_genes}).")
        extra = {"network_pair": mean[2], "network_departure": dep}
        dep, per_net = w * dep + v * total, w * per_net + v * (d[:, 0] + d[:, 1])
    table = pd.DataFrame({
        "gene": list(genes), "change_a": mean[0], "change_b": mean[1], "sum_of_parts": total,
        "predicted_pair": total + dep, "departure": dep,
        "departure_spread": per_net.std(0, ddof=1) if len(d) > 1 else np.full(n_genes, np.nan),
        "kind": departure_kind(total, dep), **extra,
    })
    if half_width is not None:
        hw = np.asarray(half_width, dtype=np.float64)
        if hw.shape != (n_genes,):
            raise ValueError(f"half_width must have one value per gene ({n_genes}), got shape {hw.shape}.")
        table["departure_lo"], table["departure_hi"] = dep - hw, dep + hw
    if observed is not None:
        o = np.asarray(observed, dtype=np.float64)
        if o.shape != (3, n_genes):
            raise ValueError(f"observed must have shape (3, {n_genes}), got {o.shape}.")
        table["observed_pair"] = o[2]
        table["observed_departure"] = o[2] - o[0] - o[1]
        table["observed_kind"] = departure_kind(o[0] + o[1], table["observed_departure"].to_numpy())
    order = np.argsort(-np.abs(dep), kind="stable")
    return table.iloc[order].reset_index(drop=True)


def pearson_over_genes(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two vectors over genes (NaN when either is constant): the
    interaction benchmark's non-additive Pearson when they are two departures from the sum."""
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / den if den > 0 else math.nan


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`pearson_over_genes` of each row of ``a`` with the same row of ``b`` (doubles x genes;
    NaN for a constant row)."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def departure_agreement(table: pd.DataFrame) -> dict[str, float]:
    """For a measured pair's :func:`gene_departures` table: ``pearson``, the Pearson correlation
    over its genes of the predicted and observed departure (the interaction benchmark's
    non-additive Pearson); ``scaling``, ``|Pearson|`` of the sum of the parts with the observed
    departure: the most a prediction that scales every gene's sum alike (``alpha (dA + dB)``,
    whatever ``alpha``) could reach; ``covered``, the fraction of genes whose observed departure
    lies in the calibrated range (NaN without ranges); ``genes``, how many genes."""
    if "observed_departure" not in table.columns:
        raise ValueError("The table has no observed departure: the pair was not measured.")
    obs = table["observed_departure"].to_numpy(np.float64)
    out = {"pearson": pearson_over_genes(table["departure"].to_numpy(np.float64), obs),
           "scaling": abs(pearson_over_genes(table["sum_of_parts"].to_numpy(np.float64), obs)),
           "covered": math.nan, "genes": float(len(table))}
    if "departure_lo" in table.columns:
        lo, hi = table["departure_lo"].to_numpy(np.float64), table["departure_hi"].to_numpy(np.float64)
        out["covered"] = float(np.mean((obs >= lo) & (obs <= hi)))
    return out


def describe_departures(table: pd.DataFrame, n: int = 20) -> str:
    """The ``n`` largest predicted departures of a :func:`gene_departures` table in one sentence,
    counted by kind, e.g. "Of the 20 genes that depart most from the sum of the parts, 12 change
    less than the sum (buffered), 5 more, 3 only with the pair."."""
    kinds = table.head(int(n))["kind"].value_counts()
    words = {"weaker": "change less than the sum (buffered)", "stronger": "more than the sum",
             "reversed": "against the sum's direction", "new": "only with the pair", "none": "exactly as the sum"}
    parts = [f"{int(kinds[k])} {w}" for k, w in words.items() if kinds.get(k, 0)]
    if not parts:
        return "No gene departs from the sum of the parts."
    m = int(kinds.sum())
    lead = f"Of the {m} genes that depart most from the sum of the parts, " if m > 1 else "The one gene "
    return lead + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."


def agreement_in_words(agree: dict[str, float], in_training: bool = False) -> str:
    """A measured pair's :func:`departure_agreement` in a sentence a biologist reads."""
    r, s = agree["pearson"], agree["scaling"]
    if not math.isfinite(r):
        return "The predicted departure is flat, so its agreement with the observed one cannot be measured."
    verdict = ("better than" if r > s else "no better than") + " scaling every gene's sum alike could do at best"
    text = (f"Predicted and observed departures agree with Pearson r = {r:.2f} over {int(agree['genes'])} genes, "
            f"{verdict} (r = {s:.2f}).")
    if math.isfinite(agree["covered"]):
        text += f" {agree['covered']:.0%} of the genes' observed departures fall inside their likely ranges."
    if in_training:
        text += " The pair was used in training, so this is not a test of the model."
    return text


def recalibration_in_words(info: dict[str, float]) -> str:
    """A :class:`~pdae_core.eval.pair_screen.PairInteraction`'s ``recalibration`` in a sentence."""
    return (f"Each gene's departure is the networks' own, reweighted gene by gene where {int(info['doubles'])} "
            f"measured pairs they did not train on showed them right or wrong (on those pairs, cross-validated: "
            f"r = {info['pearson']:.2f} with the measured departures, against {info['pearson_networks']:.2f} for "
            "the networks' own).")


def top_departures(departure: np.ndarray, genes: Sequence[str], k: int = 3) -> list[str]:
    """Per row of ``departure`` (pairs x genes), its ``k`` genes with the largest departure from the
    sum of the parts, largest first, with their signed departure: e.g. ``"HBZ -0.53; HBG2 -0.31;
    H4C3 +0.24"`` (the first rows of each pair's :func:`gene_departures` table)."""
    dep = np.atleast_2d(np.asarray(departure, dtype=np.float64))
    if dep.shape[1] != len(genes):
        raise ValueError(f"{len(genes)} gene names for {dep.shape[1]} genes.")
    k = min(int(k), dep.shape[1])
    order = np.argsort(-np.abs(dep), axis=1, kind="stable")[:, :k]
    return ["; ".join(f"{genes[g]} {row[g]:+.2f}" for g in idx) for row, idx in zip(dep, order)]
