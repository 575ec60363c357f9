"""Plotly figures comparing predicted changes from control, one model or several: pure
functions, no file IO, no UI framework (the numbers come from :mod:`pdae_core.compare`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from .cells import _figure as figure_in_template
from .style import KIND_COLORS, OBSERVED, TEMPLATE, model_colors

__all__ = ["change_panels", "change_bars", "colors_for", "r_text"]

_CHANGE = "change in mean expression vs control (log1p)"


def r_text(r: float) -> str:
    """A Pearson r as shown in titles: ``"r = 0.83"``, or ``"r: –"`` when undefined."""
    return f"r = {r:.2f}" if r is not None and np.isfinite(r) else "r: –"


def colors_for(names: Sequence[str], colors: Mapping[str, str] | None = None) -> dict[str, str]:
    """A colour per model: ``colors`` where given, else :func:`~pdae_core.plot.style.model_colors`
    (fixed for the usual model types, palette colours in order for the others)."""
    auto = model_colors([n for n in names if not colors or n not in colors])
    return {n: (colors[n] if colors and n in colors else auto[n]) for n in names}


def _checked(deltas: Mapping[str, np.ndarray], n_genes: int) -> dict[str, np.ndarray]:
    if not deltas:
        raise ValueError("No changes to draw: give {model: change per gene} for at least one model.")
    out = {str(k): np.asarray(v, dtype=float).reshape(-1) for k, v in deltas.items()}
    for name, v in out.items():
        if len(v) != n_genes:
            raise ValueError(f"{name} has {len(v)} values but there are {n_genes} genes.")
    return out


def change_panels(
    deltas: Mapping[str, np.ndarray],
    observed: np.ndarray,
    genes: Sequence[str],
    correlations: Mapping[str, float] | None = None,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
    n_labels: int = 6,
    per_row: int = 3,
) -> go.Figure:
    """Predicted versus observed change from control, one point per gene, one panel per model
    (side by side, ``per_row`` to a row, same axes), each titled with its Pearson r
    (``correlations``). A dashed ``y = x`` line marks perfect predictions; the ``n_labels`` genes
    of largest observed change are named in every panel."""
    obs = np.asarray(observed, dtype=float).reshape(-1)
    names = [str(g) for g in genes]
    if len(names) != len(obs):
        raise ValueError(f"observed has {len(obs)} values but there are {len(names)} genes.")
    preds = _checked(deltas, len(obs))
    corr = dict(correlations or {})
    cols = max(1, min(int(per_row), len(preds)))
    rows = math.ceil(len(preds) / cols)
    titles = [f"{m} · {r_text(corr.get(m, float('nan')))}" for m in preds]
    vals = np.concatenate([obs, *preds.values()])
    vals = vals[np.isfinite(vals)]
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (-1.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    label_idx = [i for i in np.argsort(-np.nan_to_num(np.abs(obs), nan=-1.0), kind="stable")[: max(0, int(n_labels))]
                 if np.isfinite(obs[i])]
    cmap = colors_for(list(preds), colors)
    # the panels' axes and titles laid out here, in one layout (make_subplots and an update per
    # panel cost about 0.1 s for a figure the what-if page redraws on every change)
    hgap, vgap = 0.08, (0.18 if rows > 1 else 0.1)
    width, height = (1 - hgap * (cols - 1)) / cols, (1 - vgap * (rows - 1)) / rows
    traces, labels, layout = [], [], {}
    for k, (m, v) in enumerate(preds.items()):
        row, col = k // cols, k % cols
        axis = "" if k == 0 else str(k + 1)
        x0, y1 = col * (width + hgap), 1 - row * (height + vgap)
        layout[f"xaxis{axis}"] = {"domain": [x0, x0 + width], "anchor": f"y{axis}", "range": [lo, hi],
                                  "title": {"text": "observed change"}}
        layout[f"yaxis{axis}"] = {"domain": [y1 - height, y1], "anchor": f"x{axis}", "range": [lo, hi],
                                  "title": {"text": "predicted change" if col == 0 else None}}
        labels.append({"text": titles[k], "x": x0 + width / 2, "y": y1, "xref": "paper", "yref": "paper",
                       "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 16}})
        traces.append(go.Scatter(
            x=obs, y=v, mode="markers", name=m, text=names, showlegend=False, xaxis=f"x{axis}", yaxis=f"y{axis}",
            marker={"color": cmap[m], "size": 6, "opacity": 0.7},
            hovertemplate="%{text}<br>observed %{x:.3f}<br>predicted %{y:.3f}<extra>" + m + "</extra>",
        ))
        traces.append(go.Scatter(
            x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", showlegend=False, hoverinfo="skip",
            xaxis=f"x{axis}", yaxis=f"y{axis}", line={"dash": "dash", "color": "black", "width": 1},
        ))
        labels += [{"x": float(obs[i]), "y": float(v[i]), "text": names[i], "showarrow": True, "arrowhead": 0,
                    "ax": 14, "ay": -14, "font": {"size": 10}, "xref": f"x{axis}", "yref": f"y{axis}"}
                   for i in label_idx if np.isfinite(v[i])]
    fig = figure_in_template(*traces)
    fig.update_layout(
        title=title or "Predicted versus observed change from control, one point per gene",
        height=380 * rows + 60, annotations=labels, **layout,
    )
    return fig


def change_bars(
    deltas: Mapping[str, np.ndarray],
    genes: Sequence[str],
    observed: np.ndarray | None = None,
    n: int = 15,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Horizontal grouped bars of the change from control of the top ``n`` genes, one bar per model
    (and the observed change, when given, in the observed colour). Genes: those of largest
    observed change when ``observed`` is given, else of largest change averaged over the models
    (absolute values); the first on top."""
    names = [str(g) for g in genes]
    preds = _checked(deltas, len(names))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if observed is not None:
        obs = np.asarray(observed, dtype=float).reshape(-1)
        if len(obs) != len(names):
            raise ValueError(f"observed has {len(obs)} values but there are {len(names)} genes.")
        score = np.abs(obs)
    else:
        obs = None
        score = np.nanmean(np.abs(np.stack(list(preds.values()))), axis=0)
    order = np.argsort(-np.nan_to_num(score, nan=-1.0), kind="stable")[:n]
    top = [names[i] for i in order]
    cmap = colors_for(list(preds), colors)
    series = ([(OBSERVED, obs, KIND_COLORS[OBSERVED])] if obs is not None else [])
    series += [(m, v, cmap[m]) for m, v in preds.items()]
    fig = go.Figure()
    for name, v, color in series:
        fig.add_trace(go.Bar(
            x=v[order], y=top, orientation="h", name=name, marker_color=color,
            hovertemplate=f"%{{y}}<br>{name}: %{{x:.3f}}<extra></extra>",
        ))
    fig.add_vline(x=0, line_width=1, line_color="black")
    fig.update_layout(
        barmode="group", template=TEMPLATE, legend_title="model",
        title=title or ("Change of the most changed genes, per model" if obs is None else
                        "Change of the genes that changed most in the observed cells, per model"),
        height=max(320, (8 * len(series) + 8) * len(top) + 140), xaxis_title=_CHANGE,
        yaxis={"title": {"text": "gene"}, "type": "category", "categoryorder": "array", "categoryarray": top,
               "autorange": "reversed"},
    )
    return fig
