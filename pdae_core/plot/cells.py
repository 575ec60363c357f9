"""Plotly figures of single cells, genes and perturbations for the dashboard: pure
functions, no file IO, no UI framework.

Every function takes arrays or tables and returns a :class:`plotly.graph_objects.Figure`;
the caller shows it (``st.plotly_chart``, ``fig.show()``) or saves it. Names and colours
of the kinds of cell population come from :mod:`pdae_core.plot.style`, so pages agree
with each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

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

#: ADDITIVE, CONTROL, OBSERVED and PREDICTED are re-exported for pdae_core.explore and
#: tests/test_explore.py (defined in :mod:`.style`).
__all__ = [
    "ADDITIVE",
    "CONTROL",
    "LABEL_POSITIONS",
    "MISSING",
    "OBSERVED",
    "PREDICTED",
    "MAX_DRAWN",
    "WHAT_IF_CAPS",
    "condition_count_bars",
    "delta_bars",
    "drawn_points",
    "embedding_scatter",
    "expression_scatter",
    "gene_violins",
    "latent_heatmap",
    "latent_scatter",
    "perturbation_map",
    "place_labels",
    "similarity_heatmap",
    "thinning_note",
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


def _every_label(names: Sequence[str]) -> dict[str, object]:
    """A category axis that writes every name (plotly would skip some when crowded); with
    :func:`_heatmap_height` each row keeps 18 pixels for its 11-pixel name."""
    return {"type": "category", "tickmode": "array", "tickvals": list(names), "ticktext": list(names),
            "tickfont": {"size": 11}, "automargin": True}


#: How a missing value reads in figure text (hover, legend): a dash, never "None" or "nan".
MISSING = "–"
_MISSING_WORDS = {"", "none", "nan", "<na>", "nat"}


def _text(v: object) -> str:
    """``v`` as figure text, :data:`MISSING` for None, NaN or their string forms."""
    if v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
        return MISSING
    t = str(v)
    return MISSING if t.strip().lower() in _MISSING_WORDS else t


#: Axis settings for values: plain numbers (0.00002, not plotly's "20µ"; 20000, not "20k").
_PLAIN_NUMBERS = {"exponentformat": "none", "separatethousands": True}


def _figure(*traces: object) -> go.Figure:
    """A figure in :data:`TEMPLATE`, assigned as plotly assigns its default template: not validated
    again (``update_layout(template=name)`` validates and copies it: about 15 ms a figure)."""
    fig = go.Figure(list(traces))
    if not hasattr(fig.layout, "_validate"):  # pragma: no cover - another plotly: the plain, slower way
        return fig.update_layout(template=TEMPLATE)
    fig.layout._validate = False
    try:
        fig.layout.template = pio.templates[TEMPLATE]
    finally:
        fig.layout._validate = True
    return fig


#: At most this many cells of a kind are drawn in a what-if map or sent to a violin (the pages'
#: choice); more are thinned to a fixed random sample, said in the figure. Tables use every cell.
MAX_DRAWN = 1000
#: Thinned in a what-if map: observed cells (thousands in a large dataset); control and predicted
#: cells are as many as the user asks for.
WHAT_IF_CAPS: Mapping[str, int] = MappingProxyType({OBSERVED: MAX_DRAWN})


def drawn_points(groups: Sequence[str], caps: Mapping[str, int] | None,
                 seed: int = 0) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """Which points of a figure to draw: ascending positions of every point of a group with no cap
    in ``caps`` or at most that many points, and of a random sample of ``caps[g]`` points of a group
    ``g`` with more (the same sample for the same group size and ``seed``); and ``{g: (drawn,
    total)}`` for the groups thinned."""
    keep, thinned = np.ones(len(groups), dtype=bool), {}
    g = np.asarray([str(x) for x in groups], dtype=object) if caps else None
    for name, cap in (caps or {}).items():
        pos, k = np.flatnonzero(g == name), max(int(cap), 1)
        if len(pos) > k:
            keep[pos] = False
            keep[pos[np.random.default_rng(seed).choice(len(pos), size=k, replace=False)]] = True
            thinned[name] = (k, len(pos))
    return np.flatnonzero(keep), thinned


def thinning_note(thinned: Mapping[str, tuple[int, int]], form: str = "{} shown (a random sample)") -> str | None:
    """``"1,000 of 1,960 observed cells shown (a random sample)"`` (``form`` around the counts) for
    :func:`drawn_points`'s thinned groups; None when none was."""
    counts = ", ".join(f"{k:,} of {n:,} {g}" + ("" if g.endswith("cells") else " cells") for g, (k, n) in thinned.items())
    return form.format(counts) if thinned else None


def _violin_rows(a: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """Rows of ``a`` (cells x genes) a violin is drawn from: all, or at most ``cap``: each gene's
    lowest and highest value (the violin spans them) and a random sample of the others."""
    n = len(a)
    if cap is None or n <= max(int(cap), 1):
        return np.arange(n)
    fin = np.isfinite(a)
    ext = np.unique(np.concatenate([np.where(fin, a, np.inf).argmin(0), np.where(fin, a, -np.inf).argmax(0)]))
    rest = np.setdiff1d(np.arange(n), ext)
    pick = np.random.default_rng(seed).choice(len(rest), size=max(int(cap) - len(ext), 0), replace=False)
    return np.sort(np.concatenate([ext, rest[pick]]))


def _with_note(title: str | None, note: str | None) -> str | None:
    return title if not note else f"{title}<br><sup>{note}</sup>" if title else f"<sup>{note}</sup>"


def embedding_scatter(
    coords: np.ndarray,
    groups: Sequence[str],
    hover: Sequence[str] | None = None,
    title: str | None = None,
    colors: Mapping[str, str] | None = None,
    axis_prefix: str = "UMAP",
    order: Sequence[str] | None = None,
    marker_size: int = 4,
    max_per_group: Mapping[str, int] | None = None,
) -> go.Figure:
    """Cells in a 2-D embedding, one WebGL trace per group (legend entry = group).

    Traces follow ``order`` (names not among ``groups`` are skipped, groups missing
    from ``order`` follow in first-appearance order), else first-appearance order;
    later traces are drawn on top. Colour: ``colors``, then :data:`KIND_COLORS`, then
    the next unused palette colour. Hover text: ``hover[i]``, else the group. A group with
    more points than ``max_per_group`` allows is drawn as a random sample of that many
    (:func:`drawn_points`), said under the title."""
    xy = _coords2(coords, len(groups), "groups")
    if hover is not None and len(hover) != len(groups):
        raise ValueError(f"hover has {len(hover)} entries but groups has {len(groups)}.")
    keep, thinned = drawn_points(groups, max_per_group)
    codes, names = pd.factorize(np.asarray(groups, dtype=object)[keep], use_na_sentinel=False)
    g = np.asarray([_text(x) for x in names], dtype=object)[codes]  # each group's name written once
    xy = xy[keep]
    text = g if hover is None else np.asarray([_text(hover[i]) for i in keep], dtype=object)
    present = list(dict.fromkeys(g.tolist()))
    names = [str(o) for o in order if str(o) in present] if order is not None else []
    names += [p for p in present if p not in names]
    cmap = _group_colors(names, colors)
    fig = _figure(*(go.Scattergl(
        x=xy[g == name, 0], y=xy[g == name, 1], mode="markers", name=name, text=text[g == name],
        marker={"color": cmap[name], "size": marker_size, "opacity": 0.8}, hovertemplate="%{text}<extra></extra>",
    ) for name in names))
    fig.update_layout(
        title=_with_note(title, thinning_note(thinned)), legend={"itemsizing": "constant"},
        xaxis_title=f"{axis_prefix} 1", yaxis_title=f"{axis_prefix} 2",
    )
    return fig


#: Drawing order of the what-if UMAP: the faint other cells underneath, predicted cells on top.
_WHAT_IF_ORDER = (OTHER_CELLS, CONTROL, OBSERVED, ADDITIVE, PREDICTED)


def what_if_scatter(
    coords: np.ndarray, groups: Sequence[str], hover: Sequence[str] | None = None, title: str | None = None,
    max_per_group: Mapping[str, int] | None = WHAT_IF_CAPS,
) -> go.Figure:
    """The what-if UMAP of :func:`pdae_core.explore.what_if_embedding`: the dataset's
    other cells in faint grey underneath, then control, observed, additive and
    predicted cells (on top), each in its kind colour. At most :data:`MAX_DRAWN` observed
    cells are drawn (``max_per_group``; None: all), a random sample said under the title."""
    return embedding_scatter(coords, groups, hover, title=title, colors={OTHER_CELLS: OTHER_CELLS_COLOR},
                             order=_WHAT_IF_ORDER, max_per_group=max_per_group)


def expression_scatter(
    coords: np.ndarray,
    values: Sequence[float],
    hover: Sequence[str] | None = None,
    gene: str = "gene",
    title: str | None = None,
    axis_prefix: str = "UMAP",
    marker_size: int = 4,
    groups: Sequence[str] | None = None,
    max_per_group: Mapping[str, int] | None = None,
) -> go.Figure:
    """Cells in a 2-D embedding coloured by one gene's expression (a continuous scale, highest
    drawn on top); cells without a value (NaN) in faint grey underneath. Hover: ``hover[i]``
    and the value. With ``groups`` (one per cell), a group with more cells than ``max_per_group``
    allows is drawn as a random sample of that many (:func:`drawn_points`), said under the title."""
    v = np.asarray(values, dtype=float).reshape(-1)
    xy = _coords2(coords, len(v), "values")
    if hover is not None and len(hover) != len(v):
        raise ValueError(f"hover has {len(hover)} entries but values has {len(v)}.")
    thinned: dict[str, tuple[int, int]] = {}
    if groups is not None:
        if len(groups) != len(v):
            raise ValueError(f"groups has {len(groups)} entries but values has {len(v)}.")
        keep, thinned = drawn_points(groups, max_per_group)
        v, xy, hover = v[keep], xy[keep], None if hover is None else [hover[i] for i in keep]
    text = np.asarray(["" if hover is None else _text(h) for h in (hover if hover is not None else v)], dtype=object)
    fig = _figure()
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
                "colorbar": {"title": {"text": gene}, **_PLAIN_NUMBERS}},
        hovertemplate="%{text}<br>" + gene + ": %{customdata:.2f}<extra></extra>", showlegend=False,
    ))
    fig.update_layout(title=_with_note(title or f"{gene} expression", thinning_note(thinned)),
                      xaxis_title=f"{axis_prefix} 1", yaxis_title=f"{axis_prefix} 2")
    return fig


#: Colours of the combinations containing the chosen target (the combination colour first; no
#: green, the single's colour, and no grey, the control's and the other cells').
_PARTNER_COLORS = ("#9467bd", "#2E91E5", "#E15F99", "#B68100", "#EB663B", "#00A08B", "#750D86", "#FB0D0D")


def latent_scatter(
    coords: np.ndarray,
    conditions: Sequence[str],
    registry: PerturbationRegistry,
    colour_by: str = "condition",
    covariate: Sequence[str] | None = None,
    held_out: Sequence[str] = (),
    title: str | None = None,
    target: str | None = None,
) -> go.Figure:
    """Cells in a 2-D embedding of a latent space, coloured by ``colour_by``:

    - ``"kind"``: control / single / combination (by the number of perturbations
      ``registry`` parses from the condition), in :data:`CONDITION_KIND_COLORS`;
    - ``"target"``: the cells of one perturbation ``target``: its single ("KLF1 alone", in
      the single colour) and every combination containing it (its own colour each, "(held
      out)" added for ``held_out`` ones) on top, control cells in the control colour, all
      other cells faint grey (:data:`OTHER_CELLS`) underneath;
    - ``"condition"`` (default): one group per condition, control first (in the control
      colour), then the others sorted by name (one colour each: for few conditions);
    - ``"covariate"``: the values of ``covariate`` (one per cell), palette colours.

    Hover: the cell's condition, marked "(held out)" when it is in ``held_out``."""
    conds = [str(c) for c in conditions]
    control = registry.control_label
    held = set(held_out)
    if colour_by == "condition":
        groups = conds
        order: list[str] | None = [control, *sorted(set(conds) - {control})]
        colors: Mapping[str, str] | None = {control: KIND_COLORS[CONTROL]}
    elif colour_by == "kind":
        n_parts = {c: len(registry.parse(c)) for c in set(conds)}
        groups = [CONTROL if n_parts[c] == 0 else "single" if n_parts[c] == 1 else "combination" for c in conds]
        order, colors = list(CONDITION_KIND_COLORS), CONDITION_KIND_COLORS
    elif colour_by == "target":
        if target is None or not str(target).strip():
            raise ValueError("colour_by='target' needs target: the name of one perturbation.")
        t = str(target).strip()
        parts = {c: registry.parse(c) for c in set(conds)}
        hits = sorted((c for c, p in parts.items() if t in p), key=lambda c: (len(parts[c]), c))
        name = {c: f"{c} alone" if len(parts[c]) == 1 else f"{c} (held out)" if c in held else c for c in hits}
        groups = [name[c] if c in name else CONTROL if not parts[c] else OTHER_CELLS for c in conds]
        order = [OTHER_CELLS, CONTROL, *name.values()]
        combos = [name[c] for c in hits if len(parts[c]) > 1]
        colors = {OTHER_CELLS: OTHER_CELLS_COLOR, CONTROL: KIND_COLORS[CONTROL],
                  **{name[c]: CONDITION_KIND_COLORS["single"] for c in hits if len(parts[c]) == 1},
                  **{g: _PARTNER_COLORS[k % len(_PARTNER_COLORS)] for k, g in enumerate(combos)}}
    elif colour_by == "covariate":
        if covariate is None or len(covariate) != len(conds):
            raise ValueError("colour_by='covariate' needs covariate: one value per cell.")
        groups = [_text(v) for v in covariate]
        order, colors = None, None
    else:
        raise ValueError(f"colour_by must be 'kind', 'target', 'condition' or 'covariate', got {colour_by!r}.")
    hover = [f"{c} (held out)" if c in held else c for c in conds]
    return embedding_scatter(coords, groups, hover, title=title, colors=colors, order=order)


def gene_violins(values: Mapping[str, np.ndarray], genes: Sequence[str], title: str | None = None,
                 max_cells: int | None = None, seed: int = 0) -> go.Figure:
    """Expression of a few genes, one violin trace per kind (``{kind: (n_cells, n_genes)}``),
    grouped by gene, with box and mean line and no points. Each density stops at its data's
    smallest and largest value (``spanmode="hard"``), so non-negative data (log1p expression)
    get no tail below 0 and an axis from 0; ticks are plain numbers (no "10µ"). A kind with more
    than ``max_cells`` cells is drawn from that many: each gene's lowest and highest value and a
    random sample of the others (``seed``), said under the title (plotly.js computes the density,
    box and mean from the values sent)."""
    genes = [str(x) for x in genes]
    if not genes:
        raise ValueError("genes is empty: give at least one gene.")
    if not values:
        raise ValueError("values is empty: give {kind: (n_cells, n_genes) array}.")
    fig = _figure()
    lowest = 0.0
    thinned: dict[str, tuple[int, int]] = {}
    for kind, arr in values.items():
        a = np.asarray(arr, dtype=float)
        if a.ndim != 2 or a.shape[1] != len(genes):
            raise ValueError(f"values[{kind!r}] has shape {a.shape}; expected (n_cells, {len(genes)}) for the genes.")
        rows = _violin_rows(a, max_cells, seed)
        if len(rows) < len(a):
            thinned[str(kind)], a = (len(rows), len(a)), a[rows]
        fig.add_trace(go.Violin(
            x=np.tile(genes, a.shape[0]), y=a.ravel(), name=str(kind), legendgroup=str(kind),
            line_color=kind_color(str(kind)), box_visible=True, meanline_visible=True, points=False,
            spanmode="hard",  # the density stops at the smallest and largest value: no tail below 0
            hovertemplate=f"{kind}<br>gene: %{{x}}<br>value: %{{y:.3f}}<extra></extra>",
        ))
        lowest = min(lowest, float(np.nanmin(a))) if a.size and np.isfinite(a).any() else lowest
    yaxis: dict[str, object] = {"title": {"text": EXPR_LABEL}, **_PLAIN_NUMBERS}
    if lowest >= 0:  # expression (log1p): the axis starts at 0
        yaxis["rangemode"] = "nonnegative"
    note = thinning_note(thinned, "violins drawn from {} (a random sample)")
    fig.update_layout(violinmode="group", title=_with_note(title, note), xaxis_title="gene", yaxis=yaxis)
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
    fig = _figure()
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
    fig.update_layout(  # the line at 0 as add_vline draws it (a tenth of its time)
        shapes=[{"type": "line", "xref": "x", "x0": 0, "x1": 0, "yref": "y domain", "y0": 0, "y1": 1,
                 "line": {"width": 1, "color": "black"}}],
        barmode="group", title=title, height=max(300, 24 * len(genes) + 140),
        xaxis={"title": {"text": "change in mean expression vs control (log1p)"}, **_PLAIN_NUMBERS},
        yaxis={"title": {"text": "gene"}, "type": "category", "categoryorder": "array", "categoryarray": genes, "autorange": "reversed"},
    )
    return fig


#: Where :func:`place_labels` may put a name around its point, in order of preference.
LABEL_POSITIONS = ("top center", "bottom center", "middle right", "middle left",
                   "top right", "top left", "bottom right", "bottom left")


def _label_box(px: float, py: float, pos: str, w: float, h: float, r: float) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in pixels (y up) of a ``w`` x ``h`` label at ``pos`` around a point."""
    vert, horiz = pos.split()
    if horiz == "center":
        x0 = px - w / 2
    elif horiz == "right":
        x0 = px + (r if vert == "middle" else r / 2)
    else:
        x0 = px - (r if vert == "middle" else r / 2) - w
    if vert == "middle":
        y0 = py - h / 2
    elif vert == "top":
        y0 = py + (r if horiz == "center" else r / 2)
    else:
        y0 = py - (r if horiz == "center" else r / 2) - h
    return x0, y0, x0 + w, y0 + h


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _padded_range(v: np.ndarray, pad: float = 0.08) -> tuple[float, float]:
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return lo - pad * span, hi + pad * span


def place_labels(
    coords: np.ndarray, labels: Sequence[str], width: float = 560, height: float = 380,
    font_size: float = 11, marker_size: float = 8,
) -> list[str | None]:
    """Where to write each label around its point so that no two labels overlap and no label
    covers a point: a position from :data:`LABEL_POSITIONS` per label, None for a label left
    out (no free position). Deterministic and greedy: points far from the centre (the most
    distinct) first, then by index; each takes the first position, in order of preference,
    whose box stays inside the plot and is clear of the boxes already placed and of every
    point. Boxes are estimated in pixels for a plot area of ``width`` x ``height`` pixels over
    the points' range padded by 8% (as :func:`perturbation_map` draws it), a character being
    0.62 ``font_size`` wide and a line 1.25 ``font_size`` high."""
    labels = [str(x) for x in labels]
    xy = _coords2(coords, len(labels), "labels")
    if not len(labels):
        return []
    (x0, x1), (y0, y1) = _padded_range(xy[:, 0]), _padded_range(xy[:, 1])
    px = (xy[:, 0] - x0) / (x1 - x0) * width
    py = (xy[:, 1] - y0) / (y1 - y0) * height
    half = marker_size / 2
    dots = [(a - half, b - half, a + half, b + half) for a, b in zip(px, py)]
    r, h = half + 2.0, 1.25 * font_size
    far = np.hypot(px - px.mean(), py - py.mean())
    placed: list[tuple[float, float, float, float]] = []
    out: list[str | None] = [None] * len(labels)
    for i in sorted(range(len(labels)), key=lambda k: (-round(float(far[k]), 6), k)):
        w = 0.62 * font_size * len(labels[i]) + 2.0
        for pos in LABEL_POSITIONS:
            box = _label_box(float(px[i]), float(py[i]), pos, w, h, r)
            inside = box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height
            if inside and not any(_overlap(box, b) for b in placed) and not any(_overlap(box, d) for d in dots):
                placed.append(box)
                out[i] = pos
                break
    return out


def perturbation_map(
    coords: np.ndarray, labels: Sequence[str], title: str | None = None, axis_prefix: str = "PC",
    width: float = 560, height: int = 560,
) -> go.Figure:
    """Perturbations as labelled points in 2-D (e.g. PCA of their latent shifts). Names go
    where :func:`place_labels` puts them (no two overlap, for a plot at least ``width``
    pixels wide and ``height`` high in all); names with no free place are left out of the
    picture, said in a note, and shown on hover like every name."""
    labels = [str(x) for x in labels]
    xy = _coords2(coords, len(labels), "labels")
    margin = {"l": 60, "r": 20, "t": 60, "b": 50}
    pos = place_labels(xy, labels, width=width - margin["l"] - margin["r"],
                       height=height - margin["t"] - margin["b"], font_size=11)
    fig = _figure(go.Scatter(
        x=xy[:, 0], y=xy[:, 1], mode="markers+text", text=[lab if p else "" for lab, p in zip(labels, pos)],
        textposition=[p or "top center" for p in pos], textfont={"size": 11}, hovertext=labels,
        marker={"color": "#444444", "size": 8}, hovertemplate="%{hovertext}<extra></extra>", showlegend=False,
    ))
    hidden = sum(p is None for p in pos)
    if hidden:
        title = _with_note(title, f"{hidden} of {len(labels)} names left out where they would overlap: hover a dot to see it")
    fig.update_layout(
        title=title, height=height, margin=margin, showlegend=False,
        xaxis={"title": {"text": f"{axis_prefix} 1"}, "range": list(_padded_range(xy[:, 0])), "zeroline": False},
        yaxis={"title": {"text": f"{axis_prefix} 2"}, "range": list(_padded_range(xy[:, 1])), "zeroline": False},
    )
    return fig


def latent_heatmap(W: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Heatmap of per-perturbation latent vectors (rows = perturbations, first on top;
    columns = latent dimensions), diverging colours centred at 0 (positive red)."""
    if W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError(f"W is empty (shape {W.shape}).")
    fig = _figure(go.Heatmap(
        z=W.to_numpy(dtype=float), x=[str(c) for c in W.columns], y=[str(i) for i in W.index],
        colorscale=DIVERGING, zmid=0, colorbar=_PLAIN_NUMBERS,
        hovertemplate="perturbation: %{y}<br>dimension: %{x}<br>value: %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(
        title=title, height=_heatmap_height(W.shape[0]),
        xaxis={"title": {"text": "latent dimension"}, "type": "category"},
        yaxis={"title": {"text": "perturbation"}, **_every_label([str(i) for i in W.index]), "autorange": "reversed"},
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
    text = [[f"{a} vs {b}: {v:.2f}" if np.isfinite(v) else f"{a} vs {b}: {MISSING}" for b, v in zip(names, row)]
            for a, row in zip(names, z)]
    fig = _figure(go.Heatmap(
        z=z, x=names, y=names, text=text, colorscale=DIVERGING, zmin=-1, zmax=1, zmid=0, colorbar=_PLAIN_NUMBERS,
        hovertemplate="%{text}<extra></extra>",
    ))
    fig.update_layout(
        title=title, height=_heatmap_height(len(names), 150),
        xaxis={**_every_label(names), "tickangle": -45 if len(names) <= 12 else -90},
        yaxis={**_every_label(names), "autorange": "reversed"},
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
    fig = _figure()
    for k in kinds:
        s = df[df["kind"] == k]
        fig.add_trace(go.Bar(
            x=s["n_cells"].to_numpy(), y=[str(c) for c in s["condition"]], orientation="h", name=str(k),
            marker_color=kind_color(str(k)), hovertemplate=f"%{{y}} ({k})<br>%{{x}} cells<extra></extra>",
        ))
    fig.update_layout(
        barmode="stack", title=title, height=max(300, 16 * len(order) + 120),
        xaxis={"title": {"text": "cells"}, **_PLAIN_NUMBERS},
        yaxis={"title": {"text": "condition"}, "type": "category", "categoryorder": "array", "categoryarray": order, "autorange": "reversed"},
    )
    return fig
