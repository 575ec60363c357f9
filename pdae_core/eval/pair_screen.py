"""The pair screen: predict every pair of the measured single perturbations, score how each
pair interacts, and rank the pairs worth testing next.

For every pair ``A+B`` of the perturbations a model saw alone in training (K singles give
K(K-1)/2 pairs), each member network of the model predicts the mean change from control of
``A``, ``B`` and ``A+B`` (from the same control cells), and the pair's interaction is
scored from them as in Norman et al. 2019 (:mod:`pdae_core.eval.interactions`), by least
squares so that thousands of pairs take seconds:

* ``c1``, ``c2``: ``dAB ~ c1 dA + c2 dB``; ``magnitude = sqrt(c1^2 + c2^2)`` (above 1 a
  synergy, below 1 buffering, by the paper's convention; an exactly additive pair has 1.41);
* ``dominance = |log10(|c1| / |c2|)|`` (large: one part dominates);
* ``normalised_residual = ||dAB - dA - dB|| / ||dA + dB||`` (0: exactly additive);
* ``effect`` = ``||dAB||``, the size of the predicted change;
* ``top_departures``: the three genes whose predicted change departs most from the sum of the
  parts, with that departure (:func:`~pdae_core.eval.departure.top_departures`; the whole list of
  one pair: :func:`pair_interaction`'s ``genes_table``). With the observed singles and a
  calibration that recalibrates departures (:mod:`pdae_core.eval.departure_weights`), the
  recalibrated departure.

``dA`` and ``dB`` are the singles' *observed* mean changes when the data measured every single
(``single_effects="auto"``), as the benchmarks score a prediction; otherwise (or with
``"model"``) the network's own predictions of them, so its additive part cancels and the metric
is its second difference. On held-out doubles the observed singles ranked as well or better
(``benchmarks/results/screen_stacking.md``, ``benchmarks/results/single_effects.md``). Each metric is the mean over members,
with its spread (standard deviation across members; NaN for a single network) as the
uncertainty. A pair measured in the data also gets its observed metrics (``observed_*``,
from mean changes of its cells), and is marked ``measured`` / ``held_out`` /
``in_training``.

The ranking scores (:data:`SCORES`): ``synergy`` (largest magnitude first), ``buffering``
(smallest first), ``least_additive`` (largest normalised residual), ``uncertain`` (largest
spread of the normalised residual) and ``test_next``, an upper-confidence score, normalised
residual + ``kappa`` x its spread, which favours pairs predicted to interact *or* about which
the model is unsure: the ones an experiment teaches most.

A cross-fitted ensemble whose calibration doubles are measured in the data (at least
:data:`~pdae_core.eval.stacking.MIN_DOUBLES`) also gets a *stacked* estimate of each metric
(``magnitude_stacked``, ``normalised_residual_stacked``, jackknife intervals ``*_stacked_lo`` /
``_hi``, ``test_next_stacked``): the model's metrics corrected by what the measured doubles teach
(:mod:`pdae_core.eval.stacking`); ``rank_pairs(..., estimate="stacked")`` ranks by it. The
table's ``attrs["stacked_check"]`` says, on the calibration doubles, how well the model's own
out-of-fold metric and the stacker's leave-one-out prediction rank the observed one.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..data.registry import condition_column
from ..errors import DataError
from .cell_noise import expected_ranges
from .departure import gene_departures, top_departures
from .interactions import describe_interaction, expressed_genes, pair_metrics
from .stacking import METRICS, add_stacked, fit_screen_stacker, log_metric

__all__ = ["ESTIMATES", "SCORES", "SINGLE_EFFECTS", "cells_per_network", "single_effects_mode", "has_stacked", "pair_metrics", "screen_pairs", "rank_pairs",
           "screen_singles", "pair_call", "PairInteraction", "pair_interaction"]

#: ranking score -> (column, descending), see the module docstring
SCORES: dict[str, tuple[str, bool]] = {
    "test_next": ("test_next", True),
    "synergy": ("magnitude", True),
    "buffering": ("magnitude", False),
    "least_additive": ("normalised_residual", True),
    "uncertain": ("normalised_residual_spread", True),
}
#: below this many genes expressed in the control cells, the screen scores all genes
MIN_EXPRESSED = 50
#: when an ensemble shares the moved cells of a pair among its networks, each moves at least this many
MIN_CELLS_PER_NETWORK = 128
#: a measured pair (and each single) needs this many cells for its observed metrics; a profile model's data
#: hold one row per condition, so there one row is enough
MIN_OBSERVED_CELLS = 10


#: where a pair's single effects dA, dB come from when its interaction is scored (see :func:`screen_pairs`)
SINGLE_EFFECTS = ("observed", "model")


def single_effects_mode(model: Any, adata: ad.AnnData, singles: Sequence[str], requested: str = "auto",
                        min_cells: int | None = None) -> str:
    """``"observed"`` or ``"model"``: where the screen takes the singles' effects from. ``"auto"``:
    observed when every single of ``singles`` has at least ``min_cells`` cells in ``adata`` (as the
    benchmarks score predictions), else the model's own predictions."""
    if requested not in ("auto", *SINGLE_EFFECTS):
        raise DataError(f"single_effects must be 'auto', 'observed' or 'model', got {requested!r}.")
    if requested == "model":
        return "model"
    need = _min_cells(model, min_cells)
    counts = pd.Series(condition_column(adata, model.registry.perturbation_key)).value_counts()
    missing = [s for s in singles if counts.get(s, 0) < need]
    if requested == "observed" and missing:
        raise DataError(f"Observed single effects need every single measured with at least {need} cell(s); "
                        f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''} "
                        f"{'is' if len(missing) == 1 else 'are'} not, in these data. Use the model's (single_effects='model').")
    return "model" if missing else "observed"


def _min_cells(model: Any, min_cells: int | None) -> int:
    if min_cells is not None:
        return int(min_cells)
    return 1 if getattr(model, "accepts_changes", False) else MIN_OBSERVED_CELLS


def cells_per_network(n_cells: int, n_members: int) -> int:
    """How many control cells each network moves when ``n_cells`` moved cells per pair are shared
    among ``n_members`` networks, as the ensemble's predicted mixture shares its cells:
    ``ceil(n_cells / n_members)``, but at least :data:`MIN_CELLS_PER_NETWORK` (or ``n_cells`` when
    that is fewer). With common random numbers (every target moves the same cells with the same
    noise, :meth:`~pdae_core.models.base.PerturbationModel.member_changes_many`) a network's
    interaction metrics from 128 cells agree with themselves across seeds about as well as from 512
    (``benchmarks/screen_agreement.py``), so an ensemble of 5 screens in about the time of 1.25 networks."""
    n_cells, n_members = int(n_cells), max(1, int(n_members))
    return max(min(n_cells, MIN_CELLS_PER_NETWORK), -(-n_cells // n_members))


def screen_singles(model: Any) -> list[str]:
    """The perturbations the model was trained on alone (conditions of one part at dose 1)."""
    reg = model.registry
    out = []
    for cond in model.train_conditions:
        parts = reg.parse(cond)
        if len(parts) == 1 and parts[0] in reg.perturbations:
            out.append(parts[0])
    return sorted(set(out), key=reg.perturbations.index)


def _observed(adata: ad.AnnData, reg: Any, genes: np.ndarray, pairs: list[tuple[str, str]],
              min_cells: int) -> dict[str, np.ndarray]:
    """Observed metrics of the pairs measured in ``adata`` (both singles and the double with at
    least ``min_cells`` cells); NaN for the others."""
    from .interactions import mean_changes

    conds = condition_column(adata, reg.perturbation_key)
    counts = pd.Series(conds).value_counts()
    seen = {c for c in counts.index if counts[c] >= min_cells}
    out = {k: np.full(len(pairs), np.nan) for k in ("magnitude", "normalised_residual", "dominance")}
    wanted = []
    for i, (a, b) in enumerate(pairs):
        double = next((c for c in (f"{a}{reg.separator}{b}", f"{b}{reg.separator}{a}") if c in seen), None)
        if double is not None and a in seen and b in seen:
            wanted.append((i, a, b, double))
    if not wanted:
        return out
    need = sorted({c for _, a, b, d in wanted for c in (a, b, d)})
    delta = mean_changes(adata, reg, need).to_numpy()[:, genes]
    row = {c: j for j, c in enumerate(need)}
    idx = np.array([i for i, *_ in wanted])
    m = pair_metrics(delta[[row[a] for _, a, _, _ in wanted]], delta[[row[b] for _, _, b, _ in wanted]],
                     delta[[row[d] for *_, d in wanted]])
    for k in out:
        out[k][idx] = m[k]
    return out


def _cells_noise(model: Any, mode: str, cells: float | None) -> tuple[Any, str | None]:
    """The sampling-noise model for ranges at ``cells`` cells per pair, or None and why not
    (no note when no ``cells`` were asked for)."""
    if cells is None:
        return None, None
    if not float(cells) >= 1:
        raise DataError(f"The number of cells per pair must be at least 1, got {cells!r}.")
    cal = getattr(model, "calibration", None)
    if cal is None:
        return None, "ranges at a number of cells need a cross-fitted ensemble (pdae train --ensemble 5 --cross-fit)"
    if cal.cell_noise is None:
        return None, ("the calibration has no sampling-noise model (written before it was kept, or its doubles "
                      "have one row each); retrain to get one")
    if cal.single_effects != mode:
        return None, f"the calibration scored the {cal.single_effects} single effects, this screen the {mode} ones"
    return cal.cell_noise, None


def screen_pairs(
    model: Any,
    adata: ad.AnnData,
    singles: Sequence[str] | None = None,
    n_cells: int = 512,
    genes: str | Sequence[str] = "expressed",
    kappa: float = 1.0,
    seed: int = 0,
    min_cells: int | None = None,
    chunk_pairs: int = 256,
    progress: Callable[[int, int], None] | None = None,
    progress_bar: bool = True,
    level: float = 0.8,
    single_effects: str = "auto",
    cells: float | None = None,
) -> pd.DataFrame:
    """Predict and score every pair of ``singles`` (default: :func:`screen_singles`), one row per
    pair, sorted by the ``test_next`` score (see the module docstring for the columns).

    ``adata`` supplies the control cells that are moved (``n_cells`` of them, seeded; an ensemble's
    networks share them, each moving :func:`cells_per_network` of them, the same ones) and, for
    pairs it measured (the pair and both singles with at least ``min_cells`` cells; default 10, one
    row for a profile model), the observed metrics. ``genes``: ``"expressed"`` (mean expression in the
    control cells above :func:`~pdae_core.eval.interactions.expressed_genes`' threshold, as the
    paper; all genes when fewer than :data:`MIN_EXPRESSED` pass), ``"all"``, or a list of gene names. Pairs are predicted ``chunk_pairs`` at a time, so
    memory stays bounded for any number of pairs. ``progress(done, total)`` is called per chunk;
    without it, ``progress_bar`` shows a tqdm bar over the pairs (in a terminal or Jupyter, when
    there is more than one chunk). ``single_effects`` (:func:`single_effects_mode`): the pair's
    metrics compare its predicted change with the *observed* changes of its singles (``"observed"``,
    what ``"auto"`` takes when ``adata`` measured every single: the way the benchmarks score a
    prediction) or with the model's predictions of them (``"model"``, its own second difference);
    ``attrs["single_effects"]`` says which. A cross-fitted ensemble (``model.calibration``) adds
    split-conformal intervals at ``level`` of the magnitude and the normalised residual
    (``magnitude_lo`` / ``magnitude_hi``, ...; :mod:`pdae_core.eval.calibration`) when it was
    calibrated with the same single effects (else ``attrs["interval_note"]`` says why not). With
    ``cells`` and a calibration that holds a sampling-noise model, also the range each metric would
    show in an experiment measuring the pair with that many cells (``magnitude_lo_cells`` /
    ``magnitude_hi_cells``, ``normalised_residual_lo_cells`` / ``_hi_cells``;
    :func:`~pdae_core.eval.cell_noise.expected_ranges`; ``attrs["cells"]``, or ``attrs["cells_note"]``
    saying why not)."""
    reg = model.registry
    if not model.is_trained:
        raise DataError("The model is not trained: a pair screen needs a trained model.")
    if not 0.0 < float(level) < 1.0:
        raise DataError(f"The interval level must be between 0 and 1, got {level!r}.")
    singles = list(screen_singles(model) if singles is None else singles)
    unknown = [s for s in singles if s not in reg.perturbations]
    if unknown:
        raise DataError(f"Unknown perturbation(s) {unknown[:5]}: the model knows {len(reg.perturbations)}.")
    if len(singles) < 2:
        raise DataError(f"A pair screen needs at least two single perturbations; the model has {singles}.")
    conds = condition_column(adata, reg.perturbation_key)
    source, gidx, gene_set = _screen_inputs(model, adata, n_cells, genes, seed)
    t0 = time.perf_counter()
    K = reg.n_perturbations
    eye = np.eye(K, dtype=np.float32)
    single_idx = [reg.perturbations.index(s) for s in singles]
    mode = single_effects_mode(model, adata, singles, single_effects, min_cells)
    if mode == "observed":  # every network's pairs against the same measured singles
        from .interactions import mean_changes

        obs_single = mean_changes(adata, reg, singles).to_numpy(np.float64)[:, gidx]
        d_single = np.broadcast_to(obs_single[None], (model.n_members, *obs_single.shape))  # (M, S, G')
    else:
        d_single = model.member_changes_many(source, eye[single_idx], seed=seed)[:, :, gidx]  # (M, S, G')
    pairs = list(itertools.combinations(range(len(singles)), 2))
    cols: dict[str, list[np.ndarray]] = {}
    noise, cells_note = _cells_noise(model, mode, cells)
    mean_single = d_single.mean(0) if noise is not None else None  # (S, G'), for the ranges at `cells`
    ranges: list[dict[str, float]] = []
    names, tops = [reg.gene_names[i] for i in gidx], []
    cal = getattr(model, "calibration", None)
    recal = cal.departure if cal is not None and mode == "observed" else None  # departures recalibrated per gene
    bar = None
    if progress is None and progress_bar and len(pairs) > chunk_pairs:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), unit="pair", desc="pair screen", disable=None, dynamic_ncols=True)
    for j in range(0, len(pairs), chunk_pairs):
        chunk = np.array(pairs[j : j + chunk_pairs])
        labels = eye[np.array(single_idx)[chunk[:, 0]]] + eye[np.array(single_idx)[chunk[:, 1]]]
        d_pair = model.member_changes_many(source, labels, seed=seed)[:, :, gidx]  # (M, P, G')
        m = pair_metrics(d_single[:, chunk[:, 0]], d_single[:, chunk[:, 1]], d_pair)
        for key, v in m.items():  # v: (M, P)
            cols.setdefault(key, []).append(v)
        total = d_single[:, chunk[:, 0]] + d_single[:, chunk[:, 1]]
        dep = (d_pair - total).mean(0)  # (P, G'): pair minus the parts
        if recal is not None:
            dep = recal.apply(dep, total.mean(0), gidx)
        tops += top_departures(dep, names)
        if noise is not None:  # the range an experiment with `cells` cells per pair would show
            mp = d_pair.mean(0)
            ranges += [expected_ranges(noise, mean_single[x], mean_single[y], mp[i], {k: float(m[k][:, i].mean()) for k in METRICS},
                                       gidx, float(cells), level, seed) for i, (x, y) in enumerate(chunk)]
        if progress is not None:
            progress(min(j + chunk_pairs, len(pairs)), len(pairs))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    M = model.n_members
    model_log = {}  # per pair, the mean over networks of each network's log metric (what the stacker reads)
    table = pd.DataFrame({
        "pair": [f"{singles[a]}{reg.separator}{singles[b]}" for a, b in pairs],
        "a": [singles[a] for a, _ in pairs], "b": [singles[b] for _, b in pairs],
    })
    table["top_departures"] = tops
    for key, parts in cols.items():
        v = np.concatenate(parts, axis=1)
        table[key] = v.mean(0)
        if key in ("magnitude", "normalised_residual", "c1", "c2"):
            table[f"{key}_spread"] = v.std(0, ddof=1) if M > 1 else np.nan
        if key in ("magnitude", "normalised_residual"):
            model_log[key] = log_metric(v).mean(0)
    cal = getattr(model, "calibration", None)
    if cal is not None and cal.single_effects != mode:
        table.attrs["interval_note"] = (f"the intervals were calibrated with the {cal.single_effects} single effects, "
                                        f"this screen uses the {mode} ones")
        table.attrs["calibrated_single_effects"] = cal.single_effects
        cal = None
    if cal is not None:  # a cross-fitted ensemble: conformal intervals (pdae_core.eval.calibration)
        for key in ("magnitude", "normalised_residual"):
            table[f"{key}_lo"], table[f"{key}_hi"] = cal.metric_range(key, table[key].to_numpy(), level)
        table.attrs.update(interval_level=float(level), calibration_doubles=cal.n)
    if ranges:
        for key in METRICS:
            table[f"{key}_lo_cells"] = [r[f"{key}_lo"] for r in ranges]
            table[f"{key}_hi_cells"] = [r[f"{key}_hi"] for r in ranges]
        table.attrs["cells"] = float(cells)
    elif cells_note:
        table.attrs["cells_note"] = cells_note
    spread = table["normalised_residual_spread"].fillna(0.0)
    table["test_next"] = table["normalised_residual"] + float(kappa) * spread
    present = set(conds)
    alt = {f"{a}{reg.separator}{b}": f"{b}{reg.separator}{a}" for a, b in zip(table["a"], table["b"])}
    table["measured"] = [p in present or alt[p] in present for p in table["pair"]]
    held = set(model.holdout)
    trained = set(model.train_conditions)
    table["held_out"] = [p in held or alt[p] in held for p in table["pair"]]
    table["in_training"] = [p in trained or alt[p] in trained for p in table["pair"]]
    obs = _observed(adata, reg, gidx, list(zip(table["a"], table["b"])), _min_cells(model, min_cells))
    for key, v in obs.items():
        table[f"observed_{key}"] = v
    if cal is not None and cal.out_of_fold is not None:
        table.attrs.update(add_stacked(table, model, adata, gidx, model_log, float(level), float(kappa),
                                       _min_cells(model, min_cells)))
    table.attrs.update({"n_members": M, "n_genes": int(len(gidx)), "genes": gene_set, "n_source_cells": int(source.n_obs),
                        "seconds": time.perf_counter() - t0, "kappa": float(kappa), "single_effects": mode})
    return rank_pairs(table, "test_next")


#: what a ranking reads: the model's own metrics, or their stacked estimate (when the screen made one)
ESTIMATES = ("model", "stacked")


def has_stacked(table: pd.DataFrame) -> bool:
    """Whether the screen made a stacked estimate (a cross-fitted ensemble with enough measured
    calibration doubles)."""
    return "normalised_residual_stacked" in table and bool(table["normalised_residual_stacked"].notna().any())


def rank_pairs(table: pd.DataFrame, score: str = "test_next", estimate: str = "model") -> pd.DataFrame:
    """``table`` sorted by a :data:`SCORES` score, with its ``rank`` (1 = first to look at).
    ``estimate="stacked"`` ranks by the stacked metrics (``magnitude_stacked``, ...; pairs without
    one last) and ``"auto"`` does so when the table has them (:func:`has_stacked`); the
    ``uncertain`` score reads the spread either way."""
    if score not in SCORES:
        raise DataError(f"Unknown score {score!r}; choose one of {', '.join(SCORES)}.")
    if estimate == "auto":
        estimate = "stacked" if has_stacked(table) else "model"
    if estimate not in ESTIMATES:
        raise DataError(f"Unknown estimate {estimate!r}; choose one of auto, {', '.join(ESTIMATES)}.")
    col, desc = SCORES[score]
    if estimate == "stacked" and score != "uncertain":
        if not has_stacked(table):
            raise DataError("This screen has no stacked estimate: it needs a cross-fitted ensemble "
                            "(pdae train --ensemble 5 --cross-fit) whose calibration doubles are measured in the data"
                            + (f" ({table.attrs['stacked_note']})" if "stacked_note" in table.attrs else "") + ".")
        col = f"{col}_stacked"
    out = table.drop(columns="rank", errors="ignore").sort_values(col, ascending=not desc, kind="mergesort", na_position="last").reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out.attrs.update(table.attrs, score=score, estimate=estimate)
    return out


# ---------------------------------------------------------------------------------
# in words, and one pair in full

#: The rules of thumb of :func:`~pdae_core.eval.interactions.describe_interaction`, shared by :func:`pair_call`.
_RULES = describe_interaction.__kwdefaults__


def pair_call(c1: float, c2: float, magnitude: float, dominance: float, names: tuple[str, str] = ("A", "B")) -> str:
    """A few words for one screened pair: ``"buffering"``, ``"synergy"`` or ``"additive"``, then
    ``"mostly like A"`` and ``"opposite directions"`` when they apply. The rules (and thresholds)
    of :func:`~pdae_core.eval.interactions.describe_interaction`, without its *new phenotype* test:
    the screen does not compute the model fit (:func:`pair_interaction` does)."""
    c1, c2, magnitude, dominance = (float(v) for v in (c1, c2, magnitude, dominance))
    if not (np.isfinite(c1) and np.isfinite(c2)) or (c1 == 0 and c2 == 0):
        return "not measurable"
    tol = _RULES["additive_tol"]
    additive = abs(c1 - 1) <= tol and abs(c2 - 1) <= tol
    words = ["additive" if additive else "synergy" if magnitude > 1 else "buffering"]
    if not additive and dominance >= _RULES["dominance_min"]:
        words.append(f"mostly like {names[0] if abs(c1) > abs(c2) else names[1]}")
    if c1 * c2 < 0:
        words.append("opposite directions")
    return "; ".join(words)


@dataclass
class PairInteraction:
    """One pair's predicted interaction (and the observed one when the pair was measured).

    ``predicted``: the :func:`~pdae_core.eval.interactions.interaction_metrics` (least squares)
    of each member network's predicted mean changes, averaged over members; ``spread``: their
    standard deviation across members (NaN for a single network); ``members``: one row per
    member. ``observed``: the same metrics from the cells of the pair and its singles (None when
    the pair or a single has fewer than ``min_cells`` cells). ``member_calls``: each member's
    :func:`pair_call`. ``stacked``: the screen's stacked estimate of the pair (``magnitude``,
    ``normalised_residual``, each with ``_lo`` / ``_hi`` at ``level``, and ``doubles``, how many
    calibration doubles taught it), None when the screen would have none for it. ``single_effects``:
    where ``dA`` and ``dB`` came from (:func:`single_effects_mode`), as in the screen. ``at_cells``:
    for a measured pair and a calibration with a sampling-noise model, the range each metric would
    show in an experiment with as many cells as the pair has (``cells``, ``<metric>_lo`` / ``_hi`` at
    ``level``: :func:`~pdae_core.eval.cell_noise.expected_ranges`), else None. ``genes_table``: per
    gene of the gene set, where the pair departs from the sum of its parts
    (:func:`~pdae_core.eval.departure.gene_departures`; ranges at ``level`` for a calibrated
    ensemble scored against the observed singles: at the pair's number of cells when it was
    measured and the calibration has a sampling-noise model). ``recalibration``: when the table's
    departures are recalibrated gene by gene (:mod:`~pdae_core.eval.departure_weights`), how many
    calibration doubles taught it (``doubles``) and the cross-validated Pearson of the recalibrated
    and of the networks' own departure with the observed one (``pearson``, ``pearson_networks``);
    else None."""

    pair: str
    a: str
    b: str
    predicted: dict[str, float]
    spread: dict[str, float]
    members: pd.DataFrame
    description: str
    member_calls: list[str]
    observed: dict[str, float] | None
    observed_description: str | None
    measured: bool
    held_out: bool
    in_training: bool
    n_genes: int
    genes: str
    n_source_cells: int
    stacked: dict[str, float] | None = None
    single_effects: str = "model"
    at_cells: dict[str, float] | None = None
    genes_table: pd.DataFrame | None = None
    recalibration: dict[str, float] | None = None

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def agreement(self) -> str | None:
        """How many member networks make the ensemble's call, e.g. "4 of 5 networks call it buffering"
        (None for a single network)."""
        if self.n_members < 2:
            return None
        call = pair_call(self.predicted["c1"], self.predicted["c2"], self.predicted["magnitude"],
                         self.predicted["dominance"]).split(";")[0]
        n = sum(c.split(";")[0] == call for c in self.member_calls)
        return f"{n} of {self.n_members} networks call it {call}"

    def observed_within(self, metric: str) -> bool | None:
        """Whether the observed ``metric`` lies in the range expected at the pair's number of cells
        (``at_cells``); None without either."""
        if self.at_cells is None or self.observed is None:
            return None
        return bool(self.at_cells[f"{metric}_lo"] <= self.observed[metric] <= self.at_cells[f"{metric}_hi"])


def _screen_inputs(model: Any, adata: ad.AnnData, n_cells: int, genes: str | Sequence[str],
                   seed: int, share: bool = True) -> tuple[ad.AnnData, np.ndarray, str]:
    """The control cells :func:`screen_pairs` moves (:func:`cells_per_network` of the ``n_cells``,
    the same for every network; with ``share=False`` all ``n_cells`` for every network) and its gene
    set (indices, description), chosen as it does (the same seed gives the same cells)."""
    reg = model.registry
    adata = reg.model_genes(adata)
    conds = condition_column(adata, reg.perturbation_key)
    ctrl_idx = np.flatnonzero(conds == reg.control_label)
    if len(ctrl_idx) == 0:
        raise DataError(f"No control cells ({reg.control_label!r} in {reg.perturbation_key!r}) to move in the data.")
    rng = np.random.default_rng(seed)
    n_cells = cells_per_network(n_cells, model.n_members) if share else int(n_cells)
    if len(ctrl_idx) > n_cells:
        ctrl_idx = np.sort(rng.choice(ctrl_idx, n_cells, replace=False))
    if len(ctrl_idx) < n_cells and len(ctrl_idx) > 1:
        # fewer control cells than moved cells: each is moved several times, with fresh decoder noise
        # (the mean change is then less noisy: seed-to-seed rank agreement on the demo in docs/user-guide.md)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # repeated observation names, made unique below
            source = adata[np.resize(ctrl_idx, n_cells)].copy()
        source.obs_names_make_unique()
    else:
        source = adata[ctrl_idx]
    if isinstance(genes, str) and genes == "expressed" and reg.x_kind == "change":
        return source, np.arange(reg.n_genes), "all; the data are changes from control"
    if isinstance(genes, str) and genes == "expressed":
        gidx = expressed_genes(source, x_kind=reg.x_kind)
        if len(gidx) < MIN_EXPRESSED:
            return source, np.arange(reg.n_genes), f"all; only {len(gidx)} are expressed in control"
        return source, gidx, "expressed"
    if isinstance(genes, str) and genes == "all":
        return source, np.arange(reg.n_genes), "all"
    if isinstance(genes, str):
        raise DataError(f"genes must be 'expressed', 'all' or a list of gene names, got {genes!r}.")
    pos = {g: i for i, g in enumerate(reg.gene_names)}
    missing = [g for g in genes if g not in pos]
    if missing:
        raise DataError(f"Gene(s) {missing[:5]} are not among the model's {reg.n_genes} genes.")
    return source, np.array([pos[g] for g in genes]), "given"


def pair_interaction(
    model: Any,
    adata: ad.AnnData,
    a: str,
    b: str,
    n_cells: int = 512,
    genes: str | Sequence[str] = "expressed",
    seed: int = 0,
    min_cells: int | None = None,
    level: float = 0.8,
    single_effects: str = "auto",
) -> PairInteraction:
    """The predicted interaction of ``a + b`` in full (:class:`PairInteraction`): the same control
    cells, gene set and seeds as :func:`screen_pairs` with the same arguments, so magnitude, weights
    and normalised residual equal the pair's row of the screen; in addition the model fit (and the
    other distance-correlation metrics) and a plain sentence
    (:func:`~pdae_core.eval.interactions.describe_interaction`). ``a`` and ``b`` must be single
    perturbations the model knows."""
    from .interactions import interaction_metrics, mean_changes

    reg = model.registry
    if not model.is_trained:
        raise DataError("The model is not trained: it cannot predict an interaction.")
    unknown = [p for p in (a, b) if p not in reg.perturbations]
    if unknown or a == b:
        raise DataError(f"A pair needs two different perturbations the model knows; got {a!r} and {b!r}.")
    source, gidx, gene_set = _screen_inputs(model, adata, n_cells, genes, seed)
    eye = np.eye(reg.n_perturbations, dtype=np.float32)
    ia, ib = reg.perturbations.index(a), reg.perturbations.index(b)
    d = model.member_changes_many(source, np.stack([eye[ia], eye[ib], eye[ia] + eye[ib]]), seed=seed)[:, :, gidx]
    mode = single_effects_mode(model, adata, [a, b], single_effects, min_cells)
    if mode == "observed":
        d[:, :2] = mean_changes(adata, reg, [a, b]).to_numpy(np.float64)[:, gidx][None]
    members = pd.DataFrame([interaction_metrics(m[0], m[1], m[2], method="lstsq") for m in d])
    predicted = members.mean().to_dict()
    spread = (members.std(ddof=1) if len(members) > 1 else members.iloc[0] * np.nan).to_dict()
    calls = [pair_call(r.c1, r.c2, r.magnitude, r.dominance, (a, b)) for r in members.itertuples()]
    conds = condition_column(adata, reg.perturbation_key)
    counts = pd.Series(conds).value_counts()
    names = (f"{a}{reg.separator}{b}", f"{b}{reg.separator}{a}")
    double = next((c for c in names if c in counts.index), None)
    n_pair = int(sum(counts.get(n, 0) for n in names))  # cells of the pair, as written either way
    observed = obs_text = at_cells = None
    cal = getattr(model, "calibration", None)
    if double is not None and all(counts.get(c, 0) >= _min_cells(model, min_cells) for c in (a, b, double)):
        delta = mean_changes(adata, reg, [a, b, double]).to_numpy()[:, gidx]
        observed = interaction_metrics(delta[0], delta[1], delta[2], method="lstsq")
        obs_text = describe_interaction(observed, (a, b))
        if cal is not None and cal.cell_noise is not None and cal.single_effects == mode:
            mean = d.mean(0)
            at_cells = expected_ranges(cal.cell_noise, mean[0], mean[1], mean[2], predicted, gidx, n_pair, level,
                                       seed)
    half_width = weights = None  # the pair's change has a calibrated range; with the observed singles it is the departure's
    noise = None if cal is None or observed is None else cal.cell_noise
    if cal is not None and mode == "observed":
        half_width = (noise.gene_half_width(level, n_pair) if noise is not None else cal.gene_half_width(level))[gidx]
        if cal.departure is not None:  # the departure recalibrated gene by gene, with its own ranges
            weights = (cal.departure.weight[gidx], cal.departure.sum_weight[gidx])
            half_width = cal.departure.half_width(level, None if noise is None else noise.noise_var, n_pair, gidx)
    table = gene_departures(d, [reg.gene_names[i] for i in gidx], None if observed is None else delta, half_width,
                            weights)
    stacked = None
    if cal is not None and cal.out_of_fold is not None and cal.single_effects == mode:
        stack = fit_screen_stacker(model, adata, gidx, [a, b], _min_cells(model, min_cells))
        if not isinstance(stack, str):
            v = stack.predict(np.array([[log_metric(members[m].to_numpy()).mean() for m in METRICS]]), [a], [b])[0]
            if np.isfinite(v).all():
                stacked = {"doubles": float(stack.n)}
                for m, x in zip(METRICS, v):
                    hw = stack.half_width(m, level)
                    stacked.update({m: float(x), f"{m}_lo": float(x * np.exp(-hw)), f"{m}_hi": float(x * np.exp(hw))})
    return PairInteraction(
        pair=names[0], a=a, b=b, predicted=predicted, spread=spread, members=members,
        description=describe_interaction(predicted, (a, b), predicted=True), member_calls=calls,
        observed=observed, observed_description=obs_text, measured=double is not None,
        held_out=any(n in set(model.holdout) for n in names),
        in_training=any(n in set(model.train_conditions) for n in names),
        n_genes=int(len(gidx)), genes=gene_set, n_source_cells=int(source.n_obs), stacked=stacked,
        single_effects=mode, at_cells=at_cells, genes_table=table,
        recalibration=None if weights is None else {"doubles": float(cal.departure.n_doubles),
                                                    "pearson": cal.departure.pearson,
                                                    "pearson_networks": cal.departure.pearson_networks},
    )
