"""Plotly figures of the pair screen (:func:`pdae_core.eval.pair_screen.screen_pairs`): pure
functions, no file IO, no UI framework.

- :func:`pair_matrix`: one column of the screen as a symmetric singles x singles matrix.
- :func:`pair_heatmap`: a ranking score over every pair, the measured pairs marked (held out
  or used in training), and for an ensemble the spread across its networks in a second panel.
- :func:`observed_scatter`: predicted against observed magnitude (or non-additivity) of the
  measured pairs.
- :func:`departure_chart`: the genes where one pair departs most from the sum of its parts
  (:func:`pdae_core.eval.departure.gene_departures`), with the observed departure when measured.

The names of the scores and of the table columns, as the dashboard shows them, are here too
(:data:`SCORE_LABELS`, :data:`PAIR_TABLE_LABELS`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import CONDITION_KIND_COLORS, CONTROL, DIVERGING, KIND_COLORS, OBSERVED, PREDICTED, TEMPLATE

__all__ = [
    "METRIC_NAMES",
    "ESTIMATE_LABELS",
    "PAIR_TABLE_LABELS",
    "SCORE_LABELS",
    "SCORE_VIEWS",
    "STATUS_MARKS",
    "DEPARTURE_TABLE_LABELS",
    "departure_chart",
    "observed_scatter",
    "pair_heatmap",
    "pair_matrix",
]

#: The ranking scores of :data:`pdae_core.eval.pair_screen.SCORES`, in words.
SCORE_LABELS: dict[str, str] = {
    "test_next": "Pairs to test next",
    "synergy": "Strongest synergy",
    "buffering": "Strongest buffering",
    "least_additive": "Least additive",
    "uncertain": "Most uncertain",
}
#: score -> (the column its heatmap shows, the column of that value's spread or None)
SCORE_VIEWS: dict[str, tuple[str, str | None]] = {
    "test_next": ("test_next", "normalised_residual_spread"),
    "synergy": ("magnitude", "magnitude_spread"),
    "buffering": ("magnitude", "magnitude_spread"),
    "least_additive": ("normalised_residual", "normalised_residual_spread"),
    "uncertain": ("normalised_residual_spread", None),
}
#: Readable names of the screen's metric columns (axis and colour-bar titles).
METRIC_NAMES: dict[str, str] = {
    "magnitude": "magnitude",
    "normalised_residual": "non-additivity",
    "test_next": "test-next score",
    "dominance": "dominance",
    "effect": "effect size",
    "magnitude_spread": "spread of magnitude",
    "normalised_residual_spread": "spread of non-additivity",
    "magnitude_stacked": "magnitude, corrected",
    "normalised_residual_stacked": "non-additivity, corrected",
    "test_next_stacked": "test-next score, corrected",
}
#: The estimates a ranking can read (:data:`pdae_core.eval.pair_screen.ESTIMATES`), in words.
ESTIMATE_LABELS: dict[str, str] = {
    "model": "The model alone",
    "stacked": "The model corrected by the measured pairs",
}
#: Column headers of the ranked pair table (:func:`pdae_core.explore.pair_ranking`).
PAIR_TABLE_LABELS: dict[str, str] = {
    "rank": "Rank",
    "pair": "Pair",
    "call": "Predicted interaction",
    "top_departures": "Genes departing most from the sum",
    "magnitude": "Magnitude",
    "magnitude_spread": "± magnitude",
    "normalised_residual": "Non-additivity",
    "normalised_residual_spread": "± non-additivity",
    "residual_range": "Non-additivity, likely range",
    "cells_range": "Non-additivity your experiment would show",
    "magnitude_stacked": "Magnitude, corrected",
    "normalised_residual_stacked": "Non-additivity, corrected",
    "stacked_range": "Corrected non-additivity, likely range",
    "test_next_stacked": "Test-next score, corrected",
    "test_next": "Test-next score",
    "dominance": "Dominance",
    "effect": "Effect size",
    "status": "Measured?",
    "observed_magnitude": "Observed magnitude",
    "observed_normalised_residual": "Observed non-additivity",
}
#: How a measured pair is marked: status -> (marker symbol, colour, legend name).
STATUS_MARKS: dict[str, tuple[str, str, str]] = {
    "held out": ("circle-open", KIND_COLORS[OBSERVED], "measured, held out (a true test)"),
    "in training": ("square-open", KIND_COLORS[CONTROL], "measured, used in training"),
    "measured": ("diamond-open", CONDITION_KIND_COLORS["combination"], "measured, not used by the model"),
}
#: Column headers of a pair's per-gene departure table (:func:`pdae_core.eval.departure.gene_departures`).
DEPARTURE_TABLE_LABELS: dict[str, str] = {
    "gene": "Gene",
    "change_a": "Change with the first alone",
    "change_b": "Change with the second alone",
    "sum_of_parts": "Sum of the parts",
    "predicted_pair": "Predicted change with the pair",
    "departure": "Predicted departure from the sum",
    "departure_spread": "± across networks",
    "departure_lo": "Departure, likely range from",
    "departure_hi": "to",
    "kind": "Predicted",
    "observed_pair": "Observed change with the pair",
    "observed_departure": "Observed departure from the sum",
    "observed_kind": "Observed",
    "network_departure": "The networks' own departure (before reweighting)",
    "network_pair": "The networks' own change with the pair",
}
SEQUENTIAL = "YlOrRd"  # larger = more interesting (non-additivity, test-next score)
SPREAD_SCALE = "Purples"


def _need(table: pd.DataFrame, *cols: str) -> None:
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ValueError(f"The pair table has no column(s) {missing} (columns: {list(table.columns)}).")


def _finite(v: object) -> bool:
    try:
        return bool(np.isfinite(float(v)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _status(table: pd.DataFrame) -> pd.Series:
    """Each pair's measured status (the keys of :data:`STATUS_MARKS`, or "no")."""
    if "status" in table.columns:
        return table["status"].astype(str)
    get = lambda c: table[c].astype(bool) if c in table.columns else pd.Series(False, index=table.index)  # noqa: E731
    held, train, measured = get("held_out"), get("in_training"), get("measured")
    return pd.Series(np.where(held, "held out", np.where(train, "in training", np.where(measured, "measured", "no"))),
                     index=table.index)


def pair_matrix(table: pd.DataFrame, column: str, order: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """``(names, M)``: the singles (``order``, default sorted) and the symmetric matrix with
    ``M[i, j] = M[j, i]`` = the pair's ``column``; NaN on the diagonal, for pairs not in the table
    and for non-finite values."""
    _need(table, "a", "b", column)
    names = list(order) if order is not None else sorted(set(table["a"]) | set(table["b"]))
    pos = {n: i for i, n in enumerate(names)}
    unknown = sorted({p for p in (*table["a"], *table["b"]) if p not in pos})
    if unknown:
        raise ValueError(f"Pairs use single(s) {unknown[:5]} that are not in order.")
    M = np.full((len(names), len(names)), np.nan)
    vals = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
    i, j = table["a"].map(pos).to_numpy(int), table["b"].map(pos).to_numpy(int)
    vals = np.where(np.isfinite(vals), vals, np.nan)
    M[i, j] = vals
    M[j, i] = vals
    np.fill_diagonal(M, np.nan)
    return names, M


def _pm(value: float, spread: float | None) -> str:
    if not _finite(value):
        return "not defined"
    return f"{value:.2f}" + (f" ± {spread:.2f}" if spread is not None and _finite(spread) else "")


def _hover(row: pd.Series, status: str, column: str) -> str:
    """What the hover of one pair says, in plain words."""
    lines = [f"<b>{row['a']} + {row['b']}</b>"]
    if "call" in row.index:
        lines.append(f"predicted: {row['call']}")
    if "magnitude" in row.index:
        lines.append(f"magnitude {_pm(row['magnitude'], row.get('magnitude_spread'))} (above 1 synergy, below 1 buffering)")
    if "normalised_residual" in row.index:
        lines.append(f"non-additivity {_pm(row['normalised_residual'], row.get('normalised_residual_spread'))} "
                     "(0 = exactly the sum of its parts)")
    if column not in ("magnitude", "normalised_residual", "normalised_residual_spread"):
        lines.append(f"{METRIC_NAMES.get(column, column)} {_pm(row[column], None)}")
    if status in STATUS_MARKS:
        obs = row.get("observed_magnitude")
        seen = f": observed magnitude {obs:.2f}" if _finite(obs) else ""
        lines.append(f"{STATUS_MARKS[status][2]}{seen}")
    else:
        lines.append("not measured")
    return "<br>".join(lines)


def _hover_matrix(table: pd.DataFrame, names: list[str], column: str, status: pd.Series) -> list[list[str]]:
    pos = {n: i for i, n in enumerate(names)}
    H = [["" for _ in names] for _ in names]
    for idx, row in table.iterrows():
        i, j = pos[row["a"]], pos[row["b"]]
        H[i][j] = H[j][i] = _hover(row, status[idx], column)
    return H


def _z(M: np.ndarray) -> list[list[float | None]]:
    """Matrix for plotly: None (a gap) where not finite."""
    return [[float(v) if np.isfinite(v) else None for v in r] for r in M]


def _marks(table: pd.DataFrame, status: pd.Series, names: list[str], size: float) -> list[go.Scatter]:
    """Markers on both cells of every measured pair: a white halo under the status colour, so the
    mark shows on any cell colour."""
    out = []
    for key, (symbol, color, label) in STATUS_MARKS.items():
        sub = table[status == key]
        if sub.empty:
            continue
        x = [*sub["a"], *sub["b"]]
        y = [*sub["b"], *sub["a"]]
        out.append(go.Scatter(x=x, y=y, mode="markers", hoverinfo="skip", showlegend=False, legendgroup=key,
                              marker={"symbol": symbol, "size": size, "color": "white", "line": {"width": 5}}))
        out.append(go.Scatter(x=x, y=y, mode="markers", name=label, legendgroup=key, hoverinfo="skip",
                              marker={"symbol": symbol, "size": size, "color": color, "line": {"width": 2}}))
    return out


def pair_heatmap(
    table: pd.DataFrame,
    score: str = "test_next",
    *,
    show_spread: bool = True,
    order: Sequence[str] | None = None,
    title: str | None = None,
    estimate: str = "model",
) -> go.Figure:
    """Heatmap of a ranking ``score`` (:data:`SCORE_VIEWS`; with ``estimate="stacked"`` its stacked
    column, ``magnitude_stacked`` ..., except the spread of *Most uncertain*) over every pair of singles: a
    symmetric singles x singles matrix, blank on the diagonal and where the value is not
    defined. Magnitude uses the diverging scale centred at 1 (blue buffering, red synergy);
    the other scores a sequential one. Measured pairs are marked on both of their cells
    (:data:`STATUS_MARKS`: held out vs used in training). When the table has a finite spread
    (an ensemble) and ``show_spread``, a second panel shows the spread across its networks.
    Hover text says each pair's metrics in words (the ``call`` column of
    :func:`pdae_core.explore.pair_ranking` when present)."""
    if score not in SCORE_VIEWS:
        raise ValueError(f"Unknown score {score!r}; choose one of {', '.join(SCORE_VIEWS)}.")
    column, spread_col = SCORE_VIEWS[score]
    if estimate == "stacked" and spread_col is not None:
        column = f"{column}_stacked"
    names, M = pair_matrix(table, column, order)
    status = _status(table)
    hover = _hover_matrix(table, names, column, status)
    has_spread = (show_spread and spread_col is not None and spread_col in table.columns
                  and bool(np.isfinite(pd.to_numeric(table[spread_col], errors="coerce")).any()))
    n = len(names)
    label = METRIC_NAMES.get(column, column)
    if has_spread:
        members = table.attrs.get("n_members")
        right = f"spread across {members} networks (±)" if members else "spread across networks (±)"
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.2, subplot_titles=(label, right))
    else:
        fig = go.Figure()
    scale = {"colorscale": DIVERGING, "zmid": 1.0} if column.startswith("magnitude") else {"colorscale": SEQUENTIAL}
    cb = {"title": {"text": label, "side": "right"}, "len": 0.85, "thickness": 14}
    if has_spread:  # the left panel's colour bar in the gap (the right panel repeats no row names)
        cb |= {"x": fig.layout.xaxis.domain[1] + 0.01, "xanchor": "left", "title": None}  # the panel's title names it
    heat = go.Heatmap(z=_z(M), x=names, y=names, text=hover, hovertemplate="%{text}<extra></extra>",
                      hoverongaps=False, xgap=1, ygap=1, colorbar=cb, name=label, **scale)
    size = float(np.clip(330 / max(n, 1), 5, 16))
    marks = _marks(table, status, names, size)
    if has_spread:
        _, S = pair_matrix(table, spread_col, names)
        fig.add_trace(heat, row=1, col=1)
        fig.add_trace(go.Heatmap(z=_z(S), x=names, y=names, hovertemplate="<b>%{y} + %{x}</b><br>spread across "
                                 "networks ± %{z:.2f}<extra></extra>",
                                 hoverongaps=False, xgap=1, ygap=1, colorscale=SPREAD_SCALE, zmin=0,
                                 name=METRIC_NAMES.get(spread_col, spread_col),
                                 colorbar={"title": {"text": "± " + METRIC_NAMES[spread_col.removesuffix("_spread")],
                                                     "side": "right"}, "len": 0.85, "thickness": 14, "x": 1.0}),
                      row=1, col=2)
        for col in (1, 2):
            for k, tr in enumerate(marks if col == 1 else _marks(table, status, names, size)):
                fig.add_trace(tr.update(showlegend=col == 1 and k % 2 == 1), row=1, col=col)
    else:
        fig.add_trace(heat)
        for tr in marks:
            fig.add_trace(tr)
    if not np.isfinite(M).any():
        fig.add_annotation(text=f"No pair has a defined {label}"
                           + (" (a single network has no spread: train an ensemble)" if "spread" in column else ""),
                           xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False, font={"size": 14})
    tick = {"tickfont": {"size": 11 if n <= 30 else 8 if n <= 60 else 6}, "showgrid": False, "zeroline": False,
            "tickangle": -90 if n > 12 else 0}
    fig.update_xaxes(**tick, categoryorder="array", categoryarray=names)
    fig.update_yaxes(**{k: v for k, v in tick.items() if k != "tickangle"}, categoryorder="array",
                     categoryarray=names, autorange="reversed")
    if has_spread:  # the same rows as the left panel: its names would only crowd the colour bar
        fig.update_yaxes(showticklabels=False, row=1, col=2)
    fig.update_layout(
        template=TEMPLATE, height=int(np.clip(20 * n + 220, 420, 1000)),
        title=title or f"{label} of every pair ({len(table)} pairs of {n} singles)",
        legend={"orientation": "h", "yanchor": "top", "y": -0.22 if n > 12 else -0.1, "x": 0},
        margin={"l": 10, "r": 10, "t": 70, "b": 10}, plot_bgcolor="white",
    )
    return fig


def observed_scatter(table: pd.DataFrame, metric: str = "magnitude", title: str | None = None,
                     estimate: str = "model") -> go.Figure:
    """Predicted (y, with its spread across networks as error bars when there is one; with
    ``estimate="stacked"`` the stacked estimate ``{metric}_stacked`` with its likely range) against
    observed (x) ``metric`` ("magnitude" or "normalised_residual") for the measured pairs with
    both values defined, one colour per :data:`STATUS_MARKS` status, the line y = x for
    reference and, from three pairs on, the Spearman correlation in the title. With no such pair
    the figure says so."""
    if metric not in ("magnitude", "normalised_residual"):
        raise ValueError(f"metric must be 'magnitude' or 'normalised_residual', got {metric!r}.")
    stacked = estimate == "stacked"
    column = f"{metric}_stacked" if stacked else metric
    _need(table, "pair", column, f"observed_{metric}")
    status = _status(table)
    pred = pd.to_numeric(table[column], errors="coerce")
    obs = pd.to_numeric(table[f"observed_{metric}"], errors="coerce")
    keep = np.isfinite(pred) & np.isfinite(obs)
    name = METRIC_NAMES[metric]
    fig = go.Figure()
    n = int(keep.sum())
    if n == 0:
        fig.add_annotation(text="No measured pair to compare with", xref="paper", yref="paper", x=0.5, y=0.5,
                           showarrow=False, font={"size": 14})
    else:
        lo = float(min(pred[keep].min(), obs[keep].min()))
        hi = float(max(pred[keep].max(), obs[keep].max()))
        pad = 0.05 * (hi - lo or 1.0)
        fig.add_trace(go.Scatter(x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines", name="predicted = observed",
                                 line={"color": KIND_COLORS[CONTROL], "dash": "dash", "width": 1}, hoverinfo="skip"))
        wide = 4 * pad if n <= 15 else pad  # room for the pairs' names
        fig.update_xaxes(range=[lo - wide, hi + wide])
        fig.update_yaxes(range=[lo - pad, hi + 2 * pad])
    spread = table.get(f"{metric}_spread")
    for key, (symbol, color, label) in {**STATUS_MARKS, "no": ("circle", KIND_COLORS[CONTROL], "measured")}.items():
        sel = keep & (status == key).to_numpy()
        if not sel.any():
            continue
        sub = table[sel]
        err = minus = None if spread is None else pd.to_numeric(spread[sel], errors="coerce").to_numpy()
        if stacked and f"{column}_hi" in table.columns:  # the jackknife likely range (asymmetric)
            err = pd.to_numeric(table.loc[sel, f"{column}_hi"], errors="coerce").to_numpy() - pred[sel].to_numpy()
            minus = pred[sel].to_numpy() - pd.to_numeric(table.loc[sel, f"{column}_lo"], errors="coerce").to_numpy()
        show_err = err is not None and bool(np.isfinite(err).any())
        fig.add_trace(go.Scatter(
            x=obs[sel], y=pred[sel], mode="markers+text" if n <= 15 else "markers", name=label,
            text=list(sub["pair"]), textposition="top center", textfont={"size": 10}, cliponaxis=False,
            marker={"symbol": symbol.replace("-open", ""), "color": color, "size": 10},
            error_y={"type": "data", "array": np.nan_to_num(err), "arrayminus": np.nan_to_num(minus), "visible": True}
            if show_err else None,
            hovertemplate=f"%{{text}}<br>observed {name} %{{x:.2f}}<br>predicted {name} %{{y:.2f}}<extra></extra>",
        ))
    rho = ""
    if n >= 3:
        r = pd.Series(pred[keep].to_numpy()).rank().corr(pd.Series(obs[keep].to_numpy()).rank())
        rho = f" · Spearman ρ {r:.2f}" if np.isfinite(r) else ""
    fig.update_layout(
        template=TEMPLATE,
        title=title or f"predicted vs observed {name}<br><sup>{n} measured pair{'s' * (n != 1)}{rho}</sup>",
        xaxis_title=f"observed {name} (cells)",
        yaxis_title=f"predicted {name} ({'corrected by the measured pairs' if stacked else 'model'})",
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0}, margin={"l": 10, "r": 10, "t": 60, "b": 10},
    )
    return fig


def departure_chart(table: pd.DataFrame, pair: str, n: int = 20, title: str | None = None) -> go.Figure:
    """The ``n`` genes at the top of a :func:`~pdae_core.eval.departure.gene_departures` table (its
    largest predicted departures), one row each, largest at the top: the predicted departure from
    the sum of the parts as a bar (error bars: the likely range when the table has one, else the
    spread across networks, named as no likely range: networks agree more closely than they are
    right), the observed departure as a marker when the pair was measured, and a line at 0 (exactly
    the sum of the parts)."""
    _need(table, "gene", "departure", "sum_of_parts", "kind")
    top = table.head(int(n)).iloc[::-1]  # plotly draws the first category at the bottom
    genes = top["gene"].astype(str).tolist()
    dep = top["departure"].to_numpy(np.float64)
    if "departure_lo" in top.columns:
        plus, minus = top["departure_hi"].to_numpy(np.float64) - dep, dep - top["departure_lo"].to_numpy(np.float64)
        err_name = "likely range"
    else:
        plus = minus = top["departure_spread"].to_numpy(np.float64) if "departure_spread" in top.columns else None
        err_name = "± across networks, not a likely range"
    show_err = plus is not None and bool(np.isfinite(plus).any())
    hover = [f"<b>{g}</b><br>sum of the parts {s:+.3f}<br>predicted with the pair {p:+.3f}<br>departure {d:+.3f} "
             f"({k})" for g, s, p, d, k in zip(genes, top["sum_of_parts"], top.get("predicted_pair", top["sum_of_parts"]),
                                              dep, top["kind"])]
    fig = go.Figure(go.Bar(
        x=dep, y=genes, orientation="h", name="predicted departure" + (f" ({err_name})" if show_err else ""),
        marker={"color": KIND_COLORS[PREDICTED], "opacity": 0.75}, hovertext=hover, hoverinfo="text",
        error_x={"type": "data", "array": np.nan_to_num(plus), "arrayminus": np.nan_to_num(minus), "visible": True,
                 "color": "#555555", "thickness": 1} if show_err else None,
    ))
    if "observed_departure" in top.columns:
        fig.add_trace(go.Scatter(
            x=top["observed_departure"], y=genes, mode="markers", name="observed departure",
            marker={"symbol": "diamond", "size": 9, "color": KIND_COLORS[OBSERVED]},
            hovertemplate="%{y}: observed departure %{x:+.3f}<extra></extra>",
        ))
    fig.add_vline(x=0, line={"color": KIND_COLORS[CONTROL], "width": 1, "dash": "dash"})
    fig.update_layout(
        template=TEMPLATE, barmode="overlay", height=max(320, 22 * len(genes) + 140),
        title=title or f"{pair}: where the pair departs from the sum of its parts<br><sup>the {len(genes)} genes "
        "with the largest predicted departure; right of 0: higher with the pair than the sum says, left: lower</sup>",
        xaxis_title="change with the pair minus the sum of the single changes",
        legend={"orientation": "h", "yanchor": "top", "y": -0.12, "x": 0}, margin={"l": 10, "r": 10, "t": 70, "b": 10},
    )
    return fig
