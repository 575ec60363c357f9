"""Split-conformal intervals for a cross-fitted ensemble, calibrated on its training doubles.

A *cross-fitted* ensemble (``PDAE.from_anndata(adata, n_members=5, cross_fit=True)``; CLI
``pdae train --ensemble 5 --cross-fit``) deals the training doubles whose two singles are
measured (:func:`calibration_doubles`) into one group per member (:func:`deal_doubles`);
member ``k`` trains on every training cell except those of group ``k``. Each training double
is then unseen by exactly one member, whose prediction of it is out of fold: the same
situation as a pair the model never saw. :func:`calibrate` compares those out-of-fold
predictions with the observed doubles and keeps, as a :class:`Calibration`:

* per gene, the conformal half-width of the predicted mean change at each level of
  :data:`LEVELS`: the ``ceil((n + 1) p)``-th smallest absolute out-of-fold error of that gene
  over the ``n`` calibration doubles (infinite when ``n`` is too small for level ``p``);
* per interaction metric (``magnitude``, ``normalised_residual``), the sorted absolute
  out-of-fold errors of the metric, scored as the pair screen scores a pair (against the
  observed singles, least squares, the genes expressed in control), from which
  :meth:`Calibration.metric_half_width` gives a half-width at any level;
* with the observed singles and at least 10 calibration doubles, a gene-by-gene recalibration
  of the predicted departure from the sum of the parts
  (:class:`~pdae_core.eval.departure_weights.DepartureWeights`), kept when it beats the networks'
  own departures in cross-validation over the calibration doubles, with its own ranges.

An interval is the ensemble's prediction plus or minus the half-width. The errors come from
single members trained without a fifth of the doubles, so the intervals lean conservative
for the ensemble mean. They cover an unmeasured pair at the nominal rate when it is
exchangeable with the calibration doubles (drawn from the same design); only training
data are used, never held-out conditions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np

from ..data.registry import PerturbationRegistry, condition_column
from ..errors import DataError
from .cell_noise import CellNoise, cell_counts_and_variance, expected_ranges, metric_noise
from .conformal import conformal_rank, record_floats, record_levels
from .departure_weights import DepartureWeights, fit_departure_weights
from .interactions import mean_changes
from .pair_screen import SINGLE_EFFECTS, _screen_inputs, pair_metrics
from .stacking import METRICS  # the interaction metrics with an interval

__all__ = ["LEVELS", "METRICS", "Calibration", "calibrate", "calibration_doubles", "conformal_rank",
           "deal_doubles", "interval_check"]

#: levels of the per-gene intervals kept in a checkpoint
LEVELS = (0.8, 0.9, 0.95)
#: a double (and each of its singles) needs this many training cells to calibrate on
MIN_CELLS = 10


def _quantile(errors: np.ndarray, level: float) -> np.ndarray:
    """Conformal quantile of ``errors`` (n, ...) along axis 0; inf when n is too small."""
    errors = np.sort(np.asarray(errors, dtype=np.float64), axis=0)
    k = conformal_rank(len(errors), level)
    return np.full(errors.shape[1:], np.inf) if k is None else errors[k - 1]


def calibration_doubles(conditions: Sequence[str], registry: PerturbationRegistry,
                        min_cells: int = MIN_CELLS) -> list[str]:
    """The conditions of two perturbations among ``conditions`` (one entry per training cell)
    that have at least ``min_cells`` cells, as do both their singles: the doubles a cross-fitted
    ensemble can leave out and calibrate on, sorted."""
    names, counts = np.unique(np.asarray(conditions, dtype=str), return_counts=True)
    n = dict(zip(names.tolist(), counts.tolist()))
    out = []
    for c in names.tolist():
        if n[c] < min_cells or c == registry.control_label:
            continue
        try:
            parts = registry.parse(c)
        except (DataError, ValueError):
            continue
        if len(parts) == 2 and parts[0] != parts[1] and all(n.get(p, 0) >= min_cells for p in parts):
            out.append(c)
    return out


def deal_doubles(doubles: Sequence[str], n_groups: int, seed: int) -> list[list[str]]:
    """``doubles`` shuffled (seeded) and dealt into ``n_groups`` groups of near-equal size."""
    doubles = sorted(doubles)
    if len(doubles) < n_groups:
        raise DataError(
            f"Cross-fitting {n_groups} members needs at least {n_groups} training doubles whose two singles are "
            f"measured (each with >= {MIN_CELLS} cells); the data have {len(doubles)}"
            + (f": {', '.join(doubles)}." if doubles else ".")
            + " Train without cross-fitting (calibrated intervals), or with fewer networks."
        )
    order = np.random.default_rng(int(seed)).permutation(len(doubles))
    return [sorted(doubles[i] for i in order[k::n_groups]) for k in range(n_groups)]


@dataclass
class Calibration:
    """Out-of-fold errors of a cross-fitted ensemble (module docstring). ``left_out[k]``: the
    doubles member ``k`` did not train on; ``gene_half_widths[level]``: per gene; ``metric_errors``:
    sorted absolute errors per metric; ``genes``: how the metric's gene set was chosen;
    ``out_of_fold``: per metric, each calibration double's out-of-fold predicted value, in the
    order of ``doubles`` (inf where not measurable; None in checkpoints written before it was kept),
    which the pair screen stacks with the measured doubles (:mod:`pdae_core.eval.stacking`);
    ``single_effects``: whether the metrics were scored against the observed singles or the
    member's predicted ones (:data:`~pdae_core.eval.pair_screen.SINGLE_EFFECTS`; records written
    before the choice existed used the model's); ``cell_noise``: the sampling-noise model of the
    calibration doubles (:class:`~pdae_core.eval.cell_noise.CellNoise`: intervals for a double
    measured with a given number of cells; None in records written before it was kept);
    ``departure``: the gene-by-gene recalibration of the predicted departure from the sum of the
    observed singles (:class:`~pdae_core.eval.departure_weights.DepartureWeights`; None with the
    model's own singles, with fewer than 10 calibration doubles, when it did not beat the networks'
    own departures in cross-validation, or in records written before it was kept)."""

    left_out: list[list[str]]
    gene_half_widths: dict[float, np.ndarray]
    metric_errors: dict[str, np.ndarray]
    genes: str = "expressed"
    n_source_cells: int = 0
    out_of_fold: dict[str, np.ndarray] | None = None
    single_effects: str = "model"
    cell_noise: CellNoise | None = None
    departure: DepartureWeights | None = None
    doubles: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.doubles = sorted(d for g in self.left_out for d in g)

    @property
    def n(self) -> int:
        return len(self.doubles)

    def gene_half_width(self, level: float) -> np.ndarray:
        """Per-gene half-width of the predicted change at ``level`` (one of :data:`LEVELS`)."""
        for lv, hw in self.gene_half_widths.items():
            if abs(lv - float(level)) < 1e-9:
                return hw
        raise DataError(f"Per-gene intervals are kept at levels {sorted(self.gene_half_widths)}; got {level!r}.")

    def metric_half_width(self, metric: str, level: float) -> float:
        """Half-width of an interaction metric's interval at ``level`` (inf: too few doubles)."""
        if metric not in self.metric_errors:
            raise DataError(f"No interval for {metric!r}; metrics with one: {', '.join(self.metric_errors)}.")
        errs = self.metric_errors[metric]  # sorted; inf where a metric was not measurable
        k = conformal_rank(len(errs), level)
        return math.inf if k is None else float(errs[k - 1])

    def metric_range(self, metric: str, value: Any, level: float) -> tuple[Any, Any]:
        """The interval ``value`` +- :meth:`metric_half_width`, cut at 0 (both metrics are >= 0,
        so the cut keeps the coverage); ``value`` may be a number or an array."""
        hw, v = self.metric_half_width(metric, level), np.asarray(value, dtype=np.float64)
        return np.maximum(v - hw, 0.0), v + hw

    # ---- JSON ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def num(v: np.ndarray) -> list[float | None]:
            return [float(x) if np.isfinite(x) else None for x in np.asarray(v, dtype=np.float64)]

        return {
            "left_out": [list(g) for g in self.left_out],
            "gene_half_widths": {f"{lv:g}": num(hw) for lv, hw in sorted(self.gene_half_widths.items())},
            "metric_errors": {m: num(v) for m, v in self.metric_errors.items()},
            "genes": self.genes,
            "n_source_cells": int(self.n_source_cells),
            **({} if self.out_of_fold is None else {"out_of_fold": {m: num(v) for m, v in self.out_of_fold.items()}}),
            "single_effects": self.single_effects,
            **({} if self.cell_noise is None else {"cell_noise": self.cell_noise.to_dict()}),
            **({} if self.departure is None else {"departure_weights": self.departure.to_dict()}),
        }

    @classmethod
    def from_dict(cls, d: Any, n_genes: int, n_members: int, where: str = "the checkpoint") -> Calibration:
        """Read :meth:`to_dict`'s output, checking every field; :class:`DataError` names what is wrong."""

        def bad(what: str) -> DataError:
            return DataError(f"{where}: invalid calibration record ({what}).")

        def floats(v: Any, what: str, length: int | None = None) -> np.ndarray:
            return record_floats(v, what, length, bad)

        if not isinstance(d, dict):
            raise bad("not an object")
        left = d.get("left_out")
        if (not isinstance(left, list) or len(left) != n_members
                or not all(isinstance(g, list) and all(isinstance(s, str) for s in g) for g in left)):
            raise bad(f"left_out must be {n_members} lists of condition names, one per member")
        gene_hw = record_levels(d.get("gene_half_widths"), "gene_half_widths", n_genes, bad)
        me = d.get("metric_errors")
        if not isinstance(me, dict) or set(me) != set(METRICS):
            raise bad(f"metric_errors must have exactly {', '.join(METRICS)}")
        metric = {m: np.sort(floats(v, f"metric_errors[{m!r}]")) for m, v in me.items()}
        genes, n_src = d.get("genes", "expressed"), d.get("n_source_cells", 0)
        if not isinstance(genes, str) or type(n_src) is not int or n_src < 0:
            raise bad("genes must be text and n_source_cells a non-negative integer")
        n_doubles = sum(len(g) for g in left)
        oof = d.get("out_of_fold")
        if oof is not None:
            if not isinstance(oof, dict) or set(oof) != set(METRICS):
                raise bad(f"out_of_fold must have exactly {', '.join(METRICS)}")
            oof = {m: floats(v, f"out_of_fold[{m!r}]", n_doubles) for m, v in oof.items()}
        single = d.get("single_effects", "model")
        if single not in SINGLE_EFFECTS:
            raise bad(f"single_effects must be one of {', '.join(SINGLE_EFFECTS)}")
        noise = d.get("cell_noise")
        noise = None if noise is None else CellNoise.from_dict(noise, n_genes, n_doubles, bad)
        dep = d.get("departure_weights")
        if dep is not None and single != "observed":
            raise bad("departure_weights needs single_effects 'observed'")
        dep = None if dep is None else DepartureWeights.from_dict(dep, n_genes, bad)
        if dep is not None and dep.n_doubles != n_doubles:
            raise bad(f"departure_weights.n_doubles must be the {n_doubles} calibration doubles")
        return cls(left_out=[list(g) for g in left], gene_half_widths=gene_hw, metric_errors=metric, genes=genes,
                   n_source_cells=n_src, out_of_fold=oof, single_effects=single, cell_noise=noise, departure=dep)


def _double_inputs(model: Any, adata: ad.AnnData, doubles: Sequence[str], n_cells: int, seed: int) -> tuple[
        ad.AnnData, np.ndarray, str, dict[str, list[str]], dict[str, np.ndarray]]:
    """What :func:`calibrate` and :func:`interval_check` predict from and compare with: the pair
    screen's control cells and gene set (same seed), each double's parts, and the observed mean
    change from control of every double and single involved."""
    reg = model.registry
    data = reg.model_genes(adata)
    # every network moves all n_cells: the per-gene change and the members' spread are not differences
    # between targets, so common random numbers do not cancel their noise (128 cells per network made
    # the spread 1.7x larger on schraivogel20, noise more than disagreement)
    source, gidx, gene_set = _screen_inputs(model, data, n_cells, "expressed", seed, share=False)
    parts = {d: reg.parse(d) for d in doubles}
    need = sorted({c for d in doubles for c in (*parts[d], d)})
    present = set(condition_column(data, reg.perturbation_key))
    missing = [c for c in need if c not in present]
    if missing:
        raise DataError(f"Calibration needs the cells of {missing[:5]}, which the data do not have.")
    observed = dict(zip(need, mean_changes(data, reg, need).to_numpy(np.float64)))
    return source, gidx, gene_set, parts, observed


def calibrate(model: Any, adata: ad.AnnData, left_out: Sequence[Sequence[str]], n_cells: int = 512,
              seed: int = 0, levels: Sequence[float] = LEVELS, single_effects: str = "observed") -> Calibration:
    """The :class:`Calibration` of a trained cross-fitted ensemble ``model``: member ``k``
    predicts the doubles ``left_out[k]`` (and their singles) from ``n_cells`` control cells of
    ``adata`` (chosen as the pair screen chooses them, same seed, but all of them for every network),
    and its predictions are compared with the doubles' observed mean changes from control. The
    interaction metrics are scored as the pair screen scores them with ``single_effects``
    (``"observed"``: against the observed singles, which every calibration double has; ``"model"``:
    the member's predicted singles). The sampling noise of the doubles' cells is modelled too
    (:class:`~pdae_core.eval.cell_noise.CellNoise`, seeded by ``seed``)."""
    if single_effects not in SINGLE_EFFECTS:
        raise ValueError(f"single_effects must be one of {SINGLE_EFFECTS}, got {single_effects!r}.")
    reg = model.registry
    if len(left_out) != model.n_members:
        raise ValueError(f"left_out has {len(left_out)} groups for {model.n_members} members.")
    source, gidx, gene_set, parts, observed = _double_inputs(model, adata, [d for g in left_out for d in g],
                                                             n_cells, seed)
    order = sorted(d for g in left_out for d in g)
    cells, noise_var = cell_counts_and_variance(reg.model_genes(adata), reg, order)
    n_of, rng = dict(zip(order, cells.tolist())), np.random.default_rng(seed)
    metric_err, oof = {m: [] for m in METRICS}, {m: {} for m in METRICS}
    signed: dict[str, np.ndarray] = {}
    departs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # predicted, sum and observed departure
    noisy: dict[str, dict[str, tuple[float, float]]] = {m: {} for m in METRICS}
    for k, group in enumerate(left_out):
        if not group:
            continue
        labels = np.concatenate([np.stack([reg.label_vector(p) for p in (*parts[d], d)]) for d in group])
        pred = model.member_changes_many(source, labels, seed=seed, members=[k])[0].reshape(len(group), 3, -1)
        for d, (pA, pB, pAB) in zip(group, pred):
            oA, oB, oAB = (observed[c] for c in (*parts[d], d))
            signed[d] = pAB - oAB
            departs[d] = (pAB - oA - oB, oA + oB, oAB - oA - oB)
            if single_effects == "observed":
                pA, pB = oA, oB
            p = pair_metrics(pA[gidx], pB[gidx], pAB[gidx])
            o = pair_metrics(oA[gidx], oB[gidx], oAB[gidx])
            shift = (None if noise_var is None else
                     metric_noise(pA[gidx], pB[gidx], pAB[gidx], noise_var[gidx], n_of[d], rng))
            for m in METRICS:
                e = abs(float(p[m]) - float(o[m]))
                metric_err[m].append(e if np.isfinite(e) else np.inf)  # not measurable: counted as a miss
                oof[m][d] = float(p[m]) if np.isfinite(p[m]) else np.inf
                if shift is not None:
                    noisy[m][d] = (float(o[m]) - float(p[m]) - shift[m][0], shift[m][1])
    errors = np.abs(np.stack([signed[d] for d in order]))
    noise = None if noise_var is None else CellNoise.fit(
        np.stack([signed[d] for d in order]), {m: np.array([noisy[m][d][0] for d in order]) for m in METRICS},
        {m: np.array([noisy[m][d][1] for d in order]) for m in METRICS}, cells, noise_var, levels)
    departure = None if single_effects != "observed" else fit_departure_weights(
        *(np.stack([departs[d][i] for d in order]) for i in range(3)), levels, noise_var, cells, seed)
    return Calibration(
        left_out=[sorted(g) for g in left_out],
        gene_half_widths={float(lv): _quantile(errors, lv) for lv in levels},
        metric_errors={m: np.sort(np.asarray(v, dtype=np.float64)) for m, v in metric_err.items()},
        genes=gene_set, n_source_cells=int(source.n_obs),
        out_of_fold={m: np.array([oof[m][d] for d in order]) for m in METRICS}, single_effects=single_effects,
        cell_noise=noise, departure=departure,
    )


def interval_check(model: Any, adata: ad.AnnData, doubles: Sequence[str], n_cells: int = 512,
                   seed: int = 0) -> list[dict[str, Any]]:
    """How a calibrated ensemble's intervals fare on ``doubles`` it did not train on (held-out
    conditions of ``adata`` whose singles it saw): one dict per double with the ensemble's mean
    predicted change vs the observed one (``error``: root mean square over genes; ``spread``:
    root mean square of the members' standard deviation), the fraction of genes whose observed
    change lies inside the interval at each level (``gene_coverage_80``...), and per metric
    the predicted and observed values, the half-width and whether the observed value is
    covered (``magnitude_covered_80``...). Predictions as in :func:`calibrate` (the pair screen's
    control cells, gene set and scoring; ``single_effects``: the singles the metrics were scored
    against, the calibration's). With a sampling-noise model (``cal.cell_noise``) the same for the
    intervals at the double's number of cells (``n_cells``): ``cells_gene_coverage_80``,
    ``cells_magnitude_covered_80``, ``cells_normalised_residual_half_width_80``..."""
    cal = getattr(model, "calibration", None)
    if cal is None:
        raise DataError("The model has no calibration: train a cross-fitted ensemble (cross_fit=True).")
    reg = model.registry
    source, gidx, _, parts, observed = _double_inputs(model, adata, doubles, n_cells, seed)
    noise = cal.cell_noise
    counts, _ = cell_counts_and_variance(reg.model_genes(adata), reg, list(doubles), variance=False)
    levels = sorted(cal.gene_half_widths)
    rows = []
    for d, n_d in zip(doubles, counts.tolist()):
        labels = np.stack([reg.label_vector(p) for p in (*parts[d], d)])
        pred = model.member_changes_many(source, labels, seed=seed)  # (M, 3, G)
        oA, oB, oAB = (observed[c] for c in (*parts[d], d))
        mean_ab = pred[:, 2].mean(0)
        row: dict[str, Any] = {
            "double": d, "n_members": int(pred.shape[0]), "single_effects": cal.single_effects, "n_cells": int(n_d),
            "error": float(np.sqrt(np.mean((mean_ab - oAB) ** 2))),
            "spread": float(np.sqrt(np.mean(pred[:, 2].std(0, ddof=1) ** 2))) if pred.shape[0] > 1 else np.nan,
        }
        for lv in levels:
            hw = cal.gene_half_widths[lv]
            row[f"gene_coverage_{round(lv * 100)}"] = float(np.mean(np.abs(mean_ab - oAB) <= hw))
            if noise is not None:
                hw = noise.gene_half_width(lv, n_d)
                row[f"cells_gene_coverage_{round(lv * 100)}"] = float(np.mean(np.abs(mean_ab - oAB) <= hw))
        if cal.single_effects == "observed":  # scored as the calibration was
            pred[:, 0], pred[:, 1] = oA, oB
        p = pair_metrics(pred[:, 0][:, gidx], pred[:, 1][:, gidx], pred[:, 2][:, gidx])  # per member
        o = pair_metrics(oA[gidx], oB[gidx], oAB[gidx])
        for m in METRICS:
            row[f"{m}_pred"], row[f"{m}_obs"] = float(np.mean(p[m])), float(o[m])
            for lv in levels:
                hw, tag = cal.metric_half_width(m, lv), round(lv * 100)
                row[f"{m}_half_width_{tag}"] = hw
                row[f"{m}_covered_{tag}"] = bool(abs(row[f"{m}_pred"] - row[f"{m}_obs"]) <= hw)
        for lv in levels if noise is not None else ():
            r = expected_ranges(noise, pred[:, 0].mean(0)[gidx], pred[:, 1].mean(0)[gidx], mean_ab[gidx],
                                {m: row[f"{m}_pred"] for m in METRICS}, gidx, n_d, lv, seed)
            for m in METRICS:
                tag = round(lv * 100)
                row[f"cells_{m}_half_width_{tag}"] = (r[f"{m}_hi"] - r[f"{m}_lo"]) / 2
                row[f"cells_{m}_covered_{tag}"] = bool(r[f"{m}_lo"] <= row[f"{m}_obs"] <= r[f"{m}_hi"])
        rows.append(row)
    return rows
