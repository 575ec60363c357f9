"""Scores of the interaction benchmark (:mod:`.interactions_track`): the per-double
interaction figures of a predicted double, the rank metrics over doubles, bootstrap
intervals and paired differences over doubles, and the Markdown tables.

Rank metrics, computed per seed over the held-out doubles (each double is predicted
once per seed, by the models fitted without its fold) and then averaged over seeds:

* ``spearman_magnitude``: Spearman correlation of the predicted and observed
  magnitude ``sqrt(c1^2 + c2^2)`` (Norman et al. 2019);
* ``spearman_residual``: the same for the normalised non-additive residual
  ``||dAB - dA - dB|| / ||dA + dB||``;
* ``nonadditive_pearson``: mean over doubles of the Pearson correlation, over genes,
  of the predicted and observed non-additive part ``dAB - dA - dB``;
* ``precision_synergy`` / ``precision_buffering``: of the ``top`` doubles with the
  largest (smallest) observed magnitude, the fraction that are also among the ``top``
  largest (smallest) predicted magnitudes.

A model whose prediction is constant over doubles (the additive baseline: c1 = c2 = 1
for every double) cannot rank them: its rank metrics are NaN, and the ``random`` row
says what a ranking at random reaches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..departure import pearson_over_genes
from ..interactions import fit_coefficients

__all__ = ["RANK_METRICS", "double_figures", "rank_metrics", "summarise_interactions",
           "interaction_differences", "uncertainty_summary", "interactions_markdown"]

#: Columns of :func:`summarise_interactions` (and of :func:`rank_metrics`).
RANK_METRICS = ("spearman_magnitude", "spearman_residual", "nonadditive_pearson", "precision_synergy",
                "precision_buffering")
LABELS = {"spearman_magnitude": "Spearman magnitude", "spearman_residual": "Spearman normalised residual",
          "nonadditive_pearson": "non-additive Pearson", "precision_synergy": "precision@{top} synergy",
          "precision_buffering": "precision@{top} buffering"}
_CONST = 1e-9  # relative spread below which a prediction is constant (rounding only)


# ---------------------------------------------------------------------------------
# one double


def double_figures(dA: np.ndarray, dB: np.ndarray, dAB: np.ndarray, method: str = "lstsq",
                   obs: np.ndarray | None = None) -> dict[str, float]:
    """Interaction figures of one (observed or predicted) double ``dAB`` with the
    *observed* singles ``dA``, ``dB`` (one gene set): ``c1``, ``c2``, ``magnitude``
    and ``normalised_residual`` as :func:`pdae_core.eval.interactions.interaction_metrics`
    (without its distance correlations, which the benchmark does not score). With
    ``obs`` (the observed double), also ``nonadditive_pearson`` (Pearson over genes of
    ``dAB - dA - dB`` and ``obs - dA - dB``; NaN when the predicted part is zero up to
    rounding, as for the additive baseline) and ``error_l2`` (``||dAB - obs||``)."""
    c1, c2 = fit_coefficients(dA, dB, dAB, method)
    total = float(np.linalg.norm(dA + dB))
    part = dAB - dA - dB
    nonadd = float(np.linalg.norm(part))
    out = {"c1": c1, "c2": c2, "magnitude": math.hypot(c1, c2),
           "normalised_residual": nonadd / total if total > 0 else (0.0 if nonadd == 0 else math.inf)}
    if obs is not None:
        scale = max(total, float(np.linalg.norm(dAB)), 1e-300)
        out["nonadditive_pearson"] = pearson_over_genes(part, obs - dA - dB) if nonadd > _CONST * scale else math.nan
        out["error_l2"] = float(np.linalg.norm(dAB - obs))
    return out


# ---------------------------------------------------------------------------------
# rank metrics over doubles (rows of 2-D arrays: one per bootstrap replicate)


def _constant(x: np.ndarray) -> bool:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return x.size == 0 or float(np.ptp(x)) <= _CONST * max(1.0, float(np.abs(x).max()))


def _spearman_rows(pred: np.ndarray, obs: np.ndarray) -> np.ndarray:
    rp, ro = rankdata(pred, axis=1), rankdata(obs, axis=1)
    rp, ro = rp - rp.mean(1, keepdims=True), ro - ro.mean(1, keepdims=True)
    den = np.sqrt((rp**2).sum(1) * (ro**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rp * ro).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def _precision_rows(pred: np.ndarray, obs: np.ndarray, top: int, largest: bool) -> np.ndarray:
    sign = -1.0 if largest else 1.0
    n = pred.shape[1]
    t = min(int(top), n)
    po = np.argsort(sign * obs, axis=1, kind="stable")[:, :t]
    pp = np.argsort(sign * pred, axis=1, kind="stable")[:, :t]
    hit = np.zeros((pred.shape[0], n), dtype=bool)
    np.put_along_axis(hit, po, True, axis=1)
    return np.take_along_axis(hit, pp, axis=1).sum(1) / t


def rank_metrics(pred_mag: np.ndarray, obs_mag: np.ndarray, pred_res: np.ndarray, obs_res: np.ndarray,
                 nonadd: np.ndarray, top: int = 10) -> dict[str, np.ndarray]:
    """:data:`RANK_METRICS` of each row (arrays of shape (replicates, doubles), or 1-D
    for one set of doubles). A prediction that is constant over the doubles, or
    missing (NaN), gives NaN for the metrics that rank it."""
    arrs = [np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (pred_mag, obs_mag, pred_res, obs_res, nonadd)]
    pm, om, pr, orr, na = arrs
    nan = np.full(pm.shape[0], np.nan)
    mag_ok = not _constant(pm) and np.isfinite(pm).all()
    res_ok = not _constant(pr) and np.isfinite(pr).all()
    with np.errstate(invalid="ignore"):
        return {
            "spearman_magnitude": _spearman_rows(pm, om) if mag_ok else nan,
            "spearman_residual": _spearman_rows(pr, orr) if res_ok else nan,
            "nonadditive_pearson": np.nanmean(na, 1) if np.isfinite(na).any() else nan,
            "precision_synergy": _precision_rows(pm, om, top, True) if mag_ok else nan,
            "precision_buffering": _precision_rows(pm, om, top, False) if mag_ok else nan,
        }


# ---------------------------------------------------------------------------------
# per model: point estimates, bootstrap intervals, paired differences


def _aligned(df: pd.DataFrame) -> tuple[list[str], list[int], dict[str, dict[str, np.ndarray]]]:
    """Per model, (seeds x doubles) arrays of the columns the rank metrics need, doubles
    in one order; a double a model did not score is NaN."""
    doubles = sorted(df["double"].unique())
    seeds = sorted(int(s) for s in df["seed"].unique())
    out: dict[str, dict[str, np.ndarray]] = {}
    cols = ("magnitude_pred", "magnitude_obs", "residual_pred", "residual_obs", "nonadditive_pearson")
    for name, g in df.groupby("model", sort=False):
        arrs = {}
        for c in cols:
            if c not in g:
                arrs[c] = np.full((len(seeds), len(doubles)), np.nan)
                continue
            piv = g.pivot_table(index="seed", columns="double", values=c, aggfunc="first", dropna=False)
            arrs[c] = piv.reindex(index=seeds, columns=doubles).to_numpy(np.float64)
            if c.endswith("_pred") and g[c].notna().any() and all(
                    _constant(v) for _, v in g.groupby(["seed", "fold"])[c]):
                # the same value for every double of a fold (e.g. scaled additive: alpha sqrt 2 with the
                # fold's alpha): differences between folds are no ranking of doubles
                arrs[c] = np.where(np.isnan(arrs[c]), np.nan, 1.0)
        out[str(name)] = arrs
    return doubles, seeds, out


def _model_stats(a: dict[str, np.ndarray], idx: np.ndarray, top: int) -> dict[str, np.ndarray]:
    """Rank metrics on the doubles ``idx`` (replicates x doubles), averaged over seeds."""
    acc: dict[str, list[np.ndarray]] = {m: [] for m in RANK_METRICS}
    for s in range(a["magnitude_obs"].shape[0]):
        r = rank_metrics(*(a[c][s][idx] for c in ("magnitude_pred", "magnitude_obs", "residual_pred",
                                                  "residual_obs", "nonadditive_pearson")), top=top)
        for m in RANK_METRICS:
            acc[m].append(r[m])
    return {m: np.mean(acc[m], 0) for m in RANK_METRICS}


def _random_stats(a: dict[str, np.ndarray], idx: np.ndarray, top: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Rank metrics of a ranking at random (fresh uniform scores per row and seed)."""
    acc: dict[str, list[np.ndarray]] = {m: [] for m in RANK_METRICS}
    for s in range(a["magnitude_obs"].shape[0]):
        shape = idx.shape
        r = rank_metrics(rng.random(shape), a["magnitude_obs"][s][idx], rng.random(shape),
                         a["residual_obs"][s][idx], np.full(shape, np.nan), top=top)
        for m in RANK_METRICS:
            acc[m].append(r[m])
    return {m: np.mean(acc[m], 0) for m in RANK_METRICS}


def _boot_index(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n))


def summarise_interactions(df: pd.DataFrame, n_boot: int = 2000, top: int = 10, random_draws: int = 1000,
                           seed: int = 0) -> pd.DataFrame:
    """Per model (and a ``random`` ranking row unless ``random_draws`` is 0): each of
    :data:`RANK_METRICS` as the mean over seeds of the per-seed value (``<m>``), its
    sd over seeds (``<m>_sd``; NaN with one seed) and a 95% percentile interval over
    ``n_boot`` bootstrap resamples of the doubles (``<m>_lo``, ``<m>_hi``; the same
    resampled doubles for every seed and model). The random row's value is the mean
    over ``random_draws`` random rankings of all doubles; its interval resamples the
    doubles and draws a fresh ranking per replicate. ``fit_seconds``: mean fit time
    per fold. Seeded: the same table every run."""
    doubles, seeds, arrs = _aligned(df)
    n = len(doubles)
    idx = _boot_index(n, n_boot, seed)
    full = np.arange(n)[None, :]
    rows = []
    for name, a in arrs.items():
        g = df[df.model == name]
        row: dict[str, object] = {"model": name, "n_doubles": int(g["double"].nunique()), "n_seeds": len(seeds)}
        boot = _model_stats(a, idx, top)
        for m in RANK_METRICS:
            per_seed = [rank_metrics(*(a[c][s] for c in ("magnitude_pred", "magnitude_obs", "residual_pred",
                                                         "residual_obs", "nonadditive_pearson")), top=top)[m][0]
                        for s in range(len(seeds))]
            row[m] = float(np.mean(per_seed))
            row[f"{m}_sd"] = float(np.std(per_seed, ddof=1)) if len(seeds) > 1 else math.nan
            ok = boot[m][np.isfinite(boot[m])]
            row[f"{m}_lo"], row[f"{m}_hi"] = ((float(np.quantile(ok, 0.025)), float(np.quantile(ok, 0.975)))
                                              if ok.size and math.isfinite(row[m]) else (math.nan, math.nan))
        row["fit_seconds"] = float(g.groupby(["seed", "fold"])["fit_seconds"].first().mean())
        rows.append(row)
    if random_draws and arrs:
        a = next(iter(arrs.values()))
        rng = np.random.default_rng(seed + 1)
        point = _random_stats(a, np.repeat(full, int(random_draws), 0), top, rng)
        boot = _random_stats(a, idx, top, rng)
        row = {"model": "random", "n_doubles": n, "n_seeds": len(seeds)}
        for m in RANK_METRICS:
            row[m] = float(np.nanmean(point[m])) if np.isfinite(point[m]).any() else math.nan
            row[f"{m}_sd"] = math.nan
            ok = boot[m][np.isfinite(boot[m])]
            row[f"{m}_lo"], row[f"{m}_hi"] = ((float(np.quantile(ok, 0.025)), float(np.quantile(ok, 0.975)))
                                              if ok.size else (math.nan, math.nan))
        row["fit_seconds"] = 0.0
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["top"] = int(top)
    return out


def interaction_differences(df: pd.DataFrame, candidates: Sequence[str] = ("pdae_stacked", "pdae_ensemble", "pdae"),
                            n_boot: int = 2000, top: int = 10, seed: int = 0) -> pd.DataFrame:
    """Paired differences ``candidate - baseline`` of each rank metric, for every
    candidate present and every other model (and ``random``): the difference of the
    seed-averaged metrics with a 95% interval over ``n_boot`` bootstrap resamples of the
    doubles, the same resample for both models (so what the doubles share cancels).
    ``<m>_p_above``: fraction of replicates where the candidate is higher. NaN where
    either model cannot rank (constant prediction) or has no such figure."""
    doubles, _, arrs = _aligned(df)
    idx = _boot_index(len(doubles), n_boot, seed)
    stats = {name: _model_stats(a, idx, top) for name, a in arrs.items()}
    full = {name: _model_stats(a, np.arange(len(doubles))[None, :], top) for name, a in arrs.items()}
    if arrs:
        a = next(iter(arrs.values()))
        rng = np.random.default_rng(seed + 2)
        stats["random"] = _random_stats(a, idx, top, rng)
        full["random"] = {m: np.array([np.nanmean(v)]) if np.isfinite(v).any() else np.array([np.nan])
                          for m, v in _random_stats(a, np.repeat(np.arange(len(doubles))[None, :], 1000, 0),
                                                    top, rng).items()}
    rows = []
    for cand in [c for c in candidates if c in arrs]:
        for base in [b for b in stats if b != cand and b not in candidates[: candidates.index(cand)]]:
            row: dict[str, object] = {"model": cand, "baseline": base}
            for m in RANK_METRICS:
                d = stats[cand][m] - stats[base][m]
                ok = d[np.isfinite(d)]
                point = float(full[cand][m][0] - full[base][m][0])
                if ok.size and math.isfinite(point):
                    row.update({m: point, f"{m}_lo": float(np.quantile(ok, 0.025)),
                                f"{m}_hi": float(np.quantile(ok, 0.975)), f"{m}_p_above": float((ok > 0).mean())})
                else:
                    row.update({m: math.nan, f"{m}_lo": math.nan, f"{m}_hi": math.nan, f"{m}_p_above": math.nan})
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------
# uncertainty of an ensemble


def uncertainty_summary(df: pd.DataFrame, model: str = "pdae_ensemble", n_boot: int = 2000,
                        seed: int = 0) -> pd.DataFrame:
    """Uncertainty quality of ``model`` on the held-out doubles (rows with ``spread``),
    one row per figure: ``spread_error_spearman`` (Spearman over doubles of the
    ensemble spread, the mean per-gene sd of the members' predicted changes, and the
    error ``||pred - obs||``; per seed, then averaged), the same on the relative scale
    (spread / ||pred|| vs error / ||obs||), the empirical coverage of the conformal
    intervals of the per-gene change (``coverage_<level>``: fraction of held-out
    (double, gene) pairs inside; its width in ``width_<level>``), and ensemble vs the
    median member (``ensemble_minus_median_member_l2``: mean over doubles of the
    ensemble's error minus the median member's; negative = the ensemble is closer).
    Where the rows carry the observed doubles' cell counts (``n_cells``, cell level), also
    ``error_cells_spearman`` (Spearman of the error with the cell count: an observed mean of
    few cells is itself far from the truth, which no spread can know),
    ``spread_error_spearman_given_cells`` (the spread against the error with that part taken
    out: the residual of ``log error`` regressed on ``log n_cells``, per seed) and ``spread_cv``
    (sd over mean of the spread over doubles: how much there is to rank).
    Each with a 95% bootstrap interval over doubles."""
    g = df[(df.model == model) & df["spread"].notna()] if "spread" in df else df.iloc[:0]
    if g.empty:
        return pd.DataFrame(columns=["figure", "value", "lo", "hi"])
    seeds = sorted(g.seed.unique())
    doubles = sorted(g["double"].unique())
    idx = _boot_index(len(doubles), n_boot, seed)

    def piv(col: str) -> np.ndarray:
        return g.pivot_table(index="seed", columns="double", values=col, aggfunc="first",
                             dropna=False).reindex(index=seeds, columns=doubles).to_numpy(np.float64)

    def rank_figure(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Spearman of x and y over doubles, per seed then averaged; and its bootstrap replicates."""
        return (np.mean([_spearman_rows(x[s][None], y[s][None])[0] for s in range(len(seeds))]),
                np.nanmean([_spearman_rows(x[s][idx], y[s][idx]) for s in range(len(seeds))], 0))

    spread, err, pn, on = piv("spread"), piv("error_l2"), piv("pred_norm"), piv("obs_norm")
    figures: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "spread_error_spearman": rank_figure(spread, err),
        "relative_spread_error_spearman": rank_figure(spread / pn, err / on)}
    if "n_cells" in g and g["n_cells"].gt(0).all():
        cells = piv("n_cells")
        given = np.full_like(err, np.nan)
        for s in range(len(seeds)):  # log error minus its least-squares line in log cells
            ok = np.isfinite(err[s]) & np.isfinite(cells[s]) & (err[s] > 0)
            if ok.sum() > 2:
                x, y = np.log(cells[s][ok]), np.log(err[s][ok])
                given[s][ok] = y - np.polyval(np.polyfit(x, y, 1), x)
        figures["error_cells_spearman"] = rank_figure(cells, err)
        figures["spread_error_spearman_given_cells"] = rank_figure(spread, given)
        cv = spread[:, idx].std(-1) / spread[:, idx].mean(-1)
        figures["spread_cv"] = (float(np.nanmean(spread.std(1) / spread.mean(1))), np.nanmean(cv, 0))
    for col in [c for c in g.columns if c.startswith(("coverage_", "width_"))]:
        v = piv(col)
        figures[col] = (np.nanmean(v), np.nanmean([v[s][idx].mean(1) for s in range(len(seeds))], 0))
    if "member_median_l2" in g:
        d = err - piv("member_median_l2")
        figures["ensemble_minus_median_member_l2"] = (np.nanmean(d), np.nanmean([d[s][idx].mean(1)
                                                                                for s in range(len(seeds))], 0))
    rows = []
    for name, (point, boot) in figures.items():
        ok = boot[np.isfinite(boot)]
        rows.append({"figure": name, "value": float(point),
                     "lo": float(np.quantile(ok, 0.025)) if ok.size else math.nan,
                     "hi": float(np.quantile(ok, 0.975)) if ok.size else math.nan})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------
# Markdown


def _cell(v: float, lo: float = math.nan, hi: float = math.nan, signed: bool = False) -> str:
    if not math.isfinite(v):
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    s = f.format(v)
    return s + (f" [{f.format(lo)}, {f.format(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else "")


def interactions_markdown(summary: pd.DataFrame, differences: pd.DataFrame | None = None,
                          uncertainty: pd.DataFrame | None = None, header: Sequence[str] = (),
                          notes: Sequence[str] = (), uncertainty_notes: Sequence[str] = ()) -> str:
    """Markdown of :func:`summarise_interactions`, :func:`interaction_differences` and
    :func:`uncertainty_summary` (fit times are left out: they are in the CSV)."""
    top = summary.attrs.get("top", 10)
    heads = [LABELS[m].format(top=top) for m in RANK_METRICS]
    lines = [*header, *([""] if header else []),
             "| model | doubles | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for r in summary.to_dict("records"):
        cells = [_cell(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) for m in RANK_METRICS]
        lines.append(f"| {r['model']} | {r['n_doubles']} | " + " | ".join(cells) + " |")
    lines += ["", "Mean over seeds of the per-seed figure over all held-out doubles; [95% bootstrap interval "
              "over doubles]; n/a: the model cannot rank doubles (its prediction is the same for every double) "
              "or predicts no profile.", *notes]
    if differences is not None and len(differences):
        lines += ["", "Paired differences (model minus baseline; 95% bootstrap interval over doubles, the same "
                  "resampled doubles for both):", "",
                  "| model | baseline | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
        for r in differences.to_dict("records"):
            cells = [_cell(r[m], r[f"{m}_lo"], r[f"{m}_hi"], signed=True) for m in RANK_METRICS]
            lines.append(f"| {r['model']} | {r['baseline']} | " + " | ".join(cells) + " |")
    if uncertainty is not None and len(uncertainty):
        lines += ["", "Uncertainty of the ensemble on the held-out doubles (95% bootstrap interval over doubles):",
                  "", "| figure | value |", "|---|---|"]
        for r in uncertainty.to_dict("records"):
            lines.append(f"| {r['figure']} | {_cell(r['value'], r['lo'], r['hi'])} |")
        lines += list(uncertainty_notes)
    return "\n".join(lines)
