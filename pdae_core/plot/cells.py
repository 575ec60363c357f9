"""Plotly figures of single cells, genes and perturbations for the dashboard: pure
functions, no file IO, no UI framework.

Every function takes arrays or tables and returns a :class:`plotly.graph_objects.Figure`;
the caller shows it (``st.plotly_chart``, ``fig.show()``) or saves it. Names and colours
of the kinds of cell population come from :mod:`pdae_core.plot.style`, so pages agree
with each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .style import (
    ADDITIVE,
    CONDITION_KIND_COLORS,
    CONTROL,
    DIVERGING,
    EXPR_LABEL,
    KIND_COLORS,
    OBSERVED,
    OTHER_CELLS,
    OTHER_CELLS_COLOR,
    PALETTE,
    PREDICTED,
    TEMPLATE,
    kind_color,
)

if TYPE_CHECKING:
    from ..data.registry import PerturbationRegistry

_DELTA_COLUMNS = {"predicted_delta": PREDICTED, "observed_delta": OBSERVED, "additive_delta": ADDITIVE}
_LOSS_SKIP = {"epoch", "step", "lr", "seconds", "train_seconds"}

#: ADDITIVE, CONTROL, OBSERVED and PREDICTED are re-exported for pdae_core.explore and
#: tests/test_explore.py (defined in :mod:`.style`).
__all__ = [
    "ADDITIVE",
    "CONTROL",
    "OBSERVED",
    "PREDICTED",
    "condition_count_bars",
    "delta_bars",
    "embedding_scatter",
    "gene_violins",
    "latent_heatmap",
    "latent_scatter",
    "loss_curve",
    "perturbation_map",
    "similarity_heatmap",
    "what_if_scatter",
]


def _coords2(coords: np.ndarray, n: int | None, what: str) -> np.ndarray:
    xy = np.asarray(coords, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coords must have shape (n, 2), got {xy.shape}.")
    if n is not None and xy.shape[0] != n:
        raise ValueError(f"coords has {xy.shape[0]} rows but {what} has {n} entries.")
    return xy


def _group_colors(names: Sequence[str], colors: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    k = 0
    for g in names:
        if colors is not None and g in colors:
            out[g] = colors[g]
        elif g in KIND_COLORS:
            out[g] = KIND_COLORS[g]
        else:
            out[g] = PALETTE[k % len(PALETTE)]
            k += 1
    return out


def _heatmap_height(k: int, base: int = 120) -> int:
    return max(300, 18 * k + base)


def embedding_scatter(
    coords: np.ndarray,
    groups: Sequence[str],
    hover: Sequence[str] | None = None,
    title: str | None = None,
    colors: Mapping[str, str] | None = None,
    axis_prefix: str = "UMAP",
    order: Sequence[str] | None = None,
    marker_size: int = 4,
) -> go.Figure:
    """Cells in a 2-D embedding, one WebGL trace per group (legend entry = group).

    Traces follow ``order`` (names not among ``groups`` are skipped, groups missing
    from ``order`` follow in first-appearance order), else first-appearance order;
    later traces are drawn on top. Colour: ``colors``, then :data:`KIND_COLORS`, then
    the next unused palette colour. Hover text: ``hover[i]``, else the group."""
    g = np.asarray([str(x) for x in groups], dtype=object)
    xy = _coords2(coords, len(g), "groups")
    if hover is not None and len(hover) != len(g):
        raise ValueError(f"hover has {len(hover)} entries but groups has {len(g)}.")
    text = g if hover is None else np.asarray([str(h) for h in hover], dtype=object)
    present = list(dict.fromkeys(g.tolist()))
    names = [str(o) for o in order if str(o) in present] if order is not None else []
    names += [p for p in present if p not in names]
    cmap = _group_colors(names, colors)
    fig = go.Figure()
    for name in names:
        m = g == name
        fig.add_trace(go.Scattergl(
            x=xy[m, 0], y=xy[m, 1], mode="markers", name=name, text=text[m],
            marker={"color": cmap[name], "size": marker_size, "opacity": 0.8},
            hovertemplate="%{text}<extra></extra>",
        ))
    fig.update_layout(
        title=title, template=TEMPLATE, legend={"itemsizing": "constant"},
        xaxis_title=f"{axis_prefix} 1", yaxis_title=f"{axis_prefix} 2",
    )
    return fig


#: Drawing order of the what-if UMAP: the faint other cells underneath, predicted cells on top.
_WHAT_IF_ORDER = (OTHER_CELLS, CONTROL, OBSERVED, ADDITIVE, PREDICTED)


def what_if_scatter(
    coords: np.ndarray, groups: Sequence[str], hover: Sequence[str] | None = None, title: str | None = None
) -> go.Figure:
    """The what-if UMAP of :func:`pdae_core.explore.what_if_embedding`: the dataset's
    other cells in faint grey underneath, then control, observed, additive and
    predicted cells (on top), each in its kind colour."""
    return embedding_scatter(coords, groups, hover, title=title, colors={OTHER_CELLS: OTHER_CELLS_COLOR},
                             order=_WHAT_IF_ORDER)


def expression_scatter(
    coords: np.ndarray,
    values: Sequence[float],
    hover: Sequence[str] | None = None,
    gene: str = "gene",
    title: str | None = None,
    axis_prefix: str = "UMAP",
    marker_size: int = 4,
) -> go.Figure:
    """Cells in a 2-D embedding coloured by one gene's expression (a continuous scale, highest
    drawn on top); cells without a value (NaN) in faint grey underneath. Hover: ``hover[i]``
    and the value."""
    v = np.asarray(values, dtype=float).reshape(-1)
    xy = _coords2(coords, len(v), "values")
    if hover is not None and len(hover) != len(v):
        raise ValueError(f"hover has {len(hover)} entries but values has {len(v)}.")
    text = np.asarray(["" if hover is None else str(h) for h in (hover if hover is not None else v)], dtype=object)
    fig = go.Figure()
    nan = ~np.isfinite(v)
    if nan.any():
        fig.add_trace(go.Scattergl(
            x=xy[nan, 0], y=xy[nan, 1], mode="markers", name="no value", text=text[nan],
            marker={"color": OTHER_CELLS_COLOR, "size": marker_size}, hovertemplate="%{text}<extra></extra>",
        ))
    order = np.flatnonzero(~nan)[np.argsort(v[~nan], kind="stable")]
    finite = v[order]
    top = float(finite.max()) if finite.size else 1.0
    fig.add_trace(go.Scattergl(
        x=xy[order, 0], y=xy[order, 1], mode="markers", name=gene, text=text[order], customdata=finite,
        marker={"color": finite, "colorscale": "Viridis", "cmin": min(0.0, float(finite.min()) if finite.size else 0.0),
                "cmax": top if top > 0 else 1.0, "size": marker_size, "opacity": 0.9,
                "colorbar": {"title": {"text": gene}}},
        hovertemplate="%{text}<br>" + gene + ": %{customdata:.2f}<extra></extra>", showlegend=False,
    ))
    fig.update_layout(title=title or f"{gene} expression", template=TEMPLATE,
                      xaxis_title=f"{axis_prefix} 1", yaxis_title=f"{axis_prefix} 2")
    return fig


def latent_scatter(
    coords: np.ndarray,
    conditions: Sequence[str],
    registry: PerturbationRegistry,
    colour_by: str = "condition",
    covariate: Sequence[str] | None = None,
    held_out: Sequence[str] = (),
    title: str | None = None,
) -> go.Figure:
    """Cells in a 2-D embedding of a latent space, coloured by ``colour_by``:

    - ``"condition"``: one group per condition, control first (in the control colour),
      then the others sorted by name;
    - ``"kind"``: control / single / combination (by the number of perturbations
      ``registry`` parses from the condition), in :data:`CONDITION_KIND_COLORS`;
    - ``"covariate"``: the values of ``covariate`` (one per cell), palette colours.

    Hover: the cell's condition, marked "(held out)" when it is in ``held_out``."""
    conds = [str(c) for c in conditions]
    control = registry.control_label
    if colour_by == "condition":
        groups = conds
        order: list[str] | None = [control, *sorted(set(conds) - {control})]
        colors: Mapping[str, str] | None = {control: KIND_COLORS[CONTROL]}
    elif colour_by == "kind":
        n_parts = {c: len(registry.parse(c)) for c in set(conds)}
        groups = [CONTROL if n_parts[c] == 0 else "single" if n_parts[c] == 1 else "combination" for c in conds]
        order, colors = list(CONDITION_KIND_COLORS), CONDITION_KIND_COLORS
    elif colour_by == "covariate":
        if covariate is None or len(covariate) != len(conds):
            raise ValueError("colour_by='covariate' needs covariate: one value per cell.")
        groups = [str(v) for v in covariate]
        order, colors = None, None
    else:
        raise ValueError(f"colour_by must be 'condition', 'kind' or 'covariate', got {colour_by!r}.")
    held = set(held_out)
    hover = [f"{c} (held out)" if c in held else c for c in conds]
    return embedding_scatter(coords, groups, hover, title=title, colors=colors, order=order)


def gene_violins(values: Mapping[str, np.ndarray], genes: Sequence[str], title: str | None = None) -> go.Figure:
    """Expression of a few genes, one violin trace per kind (``{kind: (n_cells, n_genes)}``),
    grouped by gene, with box and mean line and no points."""
    genes = [str(x) for x in genes]
    if not genes:
        raise ValueError("genes is empty: give at least one gene.")
    if not values:
        raise ValueError("values is empty: give {kind: (n_cells, n_genes) array}.")
    fig = go.Figure()
    for kind, arr in values.items():
        a = np.asarray(arr, dtype=float)
        if a.ndim != 2 or a.shape[1] != len(genes):
            raise ValueError(f"values[{kind!r}] has shape {a.shape}; expected (n_cells, {len(genes)}) for the genes.")
        fig.add_trace(go.Violin(
            x=np.tile(genes, a.shape[0]), y=a.ravel(), name=str(kind), legendgroup=str(kind),
            line_color=kind_color(str(kind)), box_visible=True, meanline_visible=True, points=False,
            hovertemplate=f"{kind}<br>gene: %{{x}}<br>value: %{{y:.3f}}<extra></extra>",
        ))
    fig.update_layout(violinmode="group", title=title, template=TEMPLATE, xaxis_title="gene",
                      yaxis_title=EXPR_LABEL)
    return fig


def delta_bars(table: pd.DataFrame, n: int = 20, title: str | None = None) -> go.Figure:
    """Horizontal grouped bars of the change from control for the first ``n`` genes of
    ``table`` (table order, first row on top); one trace per delta column present and
    not all-NaN among those rows. NaN values are left out."""
    if "gene" not in table.columns:
        raise ValueError(f"table has no column 'gene' (columns: {list(table.columns)}).")
    cols = [c for c in _DELTA_COLUMNS if c in table.columns]
    if not cols:
        raise ValueError(f"table has none of the delta columns {list(_DELTA_COLUMNS)}.")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    top = table.head(n)
    genes = [str(x) for x in top["gene"]]
    fig = go.Figure()
    for c in cols:
        v = top[c].to_numpy(dtype=float)
        ok = np.isfinite(v)
        if not ok.any():
            continue
        kind = _DELTA_COLUMNS[c]
        fig.add_trace(go.Bar(
            x=v[ok], y=np.asarray(genes, dtype=object)[ok], orientation="h", name=kind, marker_color=KIND_COLORS[kind],
            hovertemplate=f"%{{y}}<br>{kind}: %{{x:.3f}}<extra></extra>",
        ))
    fig.add_vline(x=0, line_width=1, line_color="black")
    fig.update_layout(
        barmode="group", title=title, template=TEMPLATE, height=max(300, 24 * len(genes) + 140),
        xaxis_title="change in mean expression vs control (log1p)",
        yaxis={"title": {"text": "gene"}, "type": "category", "categoryorder": "array", "categoryarray": genes, "autorange": "reversed"},
    )
    return fig


def _number(v: object) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def loss_curve(records: Sequence[Mapping[str, float]], title: str | None = None) -> go.Figure:
    """Training losses (left axis) and validation energy distance (``val_ed``, right axis)
    per epoch, one line per numeric key other than epoch/step/lr/seconds; None,
    non-numeric and non-finite values are skipped. No points -> an empty figure with
    the note "no evaluations yet"."""
    keys = list(dict.fromkeys(k for r in records for k in r if k not in _LOSS_SKIP))
    fig = go.Figure()
    for j, key in enumerate(keys):
        pts = [(_number(r.get("epoch", i)), _number(r.get(key))) for i, r in enumerate(records)]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if not pts:
            continue
        right = key == "val_ed"
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=key,
            yaxis="y2" if right else "y", line={"color": "black" if right else PALETTE[j % len(PALETTE)],
                                               "dash": "dash" if right else "solid"},
            hovertemplate=f"{key}<br>epoch %{{x}}<br>%{{y:.4g}}<extra></extra>",
        ))
    fig.update_layout(title=title, template=TEMPLATE, xaxis_title="epoch", yaxis_title="training loss",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0})
    if any(t.yaxis == "y2" for t in fig.data):
        fig.update_layout(yaxis2={"title": {"text": "validation energy distance"}, "overlaying": "y",
                                  "side": "right", "showgrid": False})
    if not fig.data:
        fig.add_annotation(text="no evaluations yet", xref="paper", yref="paper", x=0.5, y=0.5,
                           showarrow=False, font={"size": 16})
    return fig


def perturbation_map(
    coords: np.ndarray, labels: Sequence[str], title: str | None = None, axis_prefix: str = "PC"
) -> go.Figure:
    """Perturbations as labelled points in 2-D (e.g. PCA of their latent shifts)."""
    labels = [str(x) for x in labels]
    xy = _coords2(coords, len(labels), "labels")
    fig = go.Figure(go.Scatter(
        x=xy[:, 0], y=xy[:, 1], mode="markers+text", text=labels, textposition="top center",
        marker={"color": "#444444", "size": 8}, hovertemplate="%{text}<extra></extra>", showlegend=False,
    ))
    fig.update_layout(title=title, template=TEMPLATE, xaxis_title=f"{axis_prefix} 1", yaxis_title=f"{axis_prefix} 2")
    return fig


def latent_heatmap(W: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Heatmap of per-perturbation latent vectors (rows = perturbations, first on top;
    columns = latent dimensions), diverging colours centred at 0 (positive red)."""
    if W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError(f"W is empty (shape {W.shape}).")
    fig = go.Figure(go.Heatmap(
        z=W.to_numpy(dtype=float), x=[str(c) for c in W.columns], y=[str(i) for i in W.index],
        colorscale=DIVERGING, zmid=0,
        hovertemplate="perturbation: %{y}<br>dimension: %{x}<br>value: %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(
        title=title, template=TEMPLATE, height=_heatmap_height(W.shape[0]),
        xaxis={"title": {"text": "latent dimension"}, "type": "category"},
        yaxis={"title": {"text": "perturbation"}, "type": "category", "autorange": "reversed"},
    )
    return fig


def similarity_heatmap(sim: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Square similarity matrix (index == columns, in the caller's order; first row on
    top) on a fixed -1..1 diverging scale, hover "A vs B: 0.83"."""
    if sim.shape[0] != sim.shape[1] or [str(i) for i in sim.index] != [str(c) for c in sim.columns]:
        raise ValueError(f"sim must be square with index == columns (shape {sim.shape}).")
    if sim.shape[0] == 0:
        raise ValueError("sim is empty.")
    names = [str(i) for i in sim.index]
    z = sim.to_numpy(dtype=float)
    text = [[f"{a} vs {b}: {v:.2f}" if np.isfinite(v) else f"{a} vs {b}: n/a" for b, v in zip(names, row)]
            for a, row in zip(names, z)]
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=names, text=text, colorscale=DIVERGING, zmin=-1, zmax=1, zmid=0,
        hovertemplate="%{text}<extra></extra>",
    ))
    fig.update_layout(
        title=title, template=TEMPLATE, height=_heatmap_height(len(names), 150),
        xaxis={"type": "category", "tickangle": -45}, yaxis={"type": "category", "autorange": "reversed"},
    )
    return fig


def condition_count_bars(counts: pd.DataFrame, title: str | None = None, max_conditions: int = 60) -> go.Figure:
    """Cells per condition, horizontal bars: control on top, then the others largest first,
    one trace per condition kind (control, single, combination, then any other). With more
    than ``max_conditions`` rows only the largest are shown (control always) and the title
    says so."""
    missing = [c for c in ("condition", "n_cells", "kind") if c not in counts.columns]
    if missing:
        raise ValueError(f"counts has no column(s) {missing} (columns: {list(counts.columns)}).")
    if max_conditions < 1:
        raise ValueError(f"max_conditions must be >= 1, got {max_conditions}.")
    df = counts.assign(_ctrl=counts["kind"] != CONTROL).sort_values(["_ctrl", "n_cells"], ascending=[True, False],
                                                                     kind="stable").drop(columns="_ctrl")
    title = title or "cells per condition"
    if len(df) > max_conditions:
        title = f"{title} (showing the {max_conditions} largest of {len(df)} conditions)"
        df = df.head(max_conditions)
    order = [str(c) for c in df["condition"]]
    kinds = [k for k in CONDITION_KIND_COLORS if k in set(df["kind"])]
    kinds += [k for k in dict.fromkeys(df["kind"]) if k not in kinds]
    fig = go.Figure()
    for k in kinds:
        s = df[df["kind"] == k]
        fig.add_trace(go.Bar(
            x=s["n_cells"].to_numpy(), y=[str(c) for c in s["condition"]], orientation="h", name=str(k),
            marker_color=kind_color(str(k)), hovertemplate=f"%{{y}} ({k})<br>%{{x}} cells<extra></extra>",
        ))
    fig.update_layout(
        barmode="stack", title=title, template=TEMPLATE, height=max(300, 16 * len(order) + 120),
        xaxis_title="cells",
        yaxis={"title": {"text": "condition"}, "type": "category", "categoryorder": "array", "categoryarray": order, "autorange": "reversed"},
    )
    return fig
