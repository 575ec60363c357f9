"""Tests of the dashboard figure builders (small synthetic inputs, no data files)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from pdae_core.data.registry import PerturbationRegistry
from pdae_core.plot import cells as cf
from pdae_core.plot.cells import (
    condition_count_bars,
    delta_bars,
    embedding_scatter,
    gene_violins,
    latent_heatmap,
    latent_scatter,
    perturbation_map,
    similarity_heatmap,
    what_if_scatter,
)
from pdae_core.plot.style import (
    ADDITIVE,
    CONDITION_KIND_COLORS,
    CONTROL,
    EXPR_LABEL,
    KIND_COLORS,
    OBSERVED,
    OTHER_CELLS,
    OTHER_CELLS_COLOR,
    PREDICTED,
    kind_color,
)


def _title(ax) -> str | None:
    return ax.title.text


def test_all():
    for name in cf.__all__:
        assert hasattr(cf, name), name
    for fn in ("embedding_scatter", "gene_violins", "delta_bars", "perturbation_map", "place_labels",
               "latent_heatmap", "similarity_heatmap", "condition_count_bars", "what_if_scatter", "latent_scatter"):
        assert fn in cf.__all__
    # the kind names stay importable from here (pdae_core.explore imports them from plot.cells)
    assert (cf.CONTROL, cf.PREDICTED, cf.OBSERVED, cf.ADDITIVE) == (CONTROL, PREDICTED, OBSERVED, ADDITIVE)


# ---------------------------------------------------------------- embedding_scatter
@pytest.fixture()
def cells():
    rng = np.random.default_rng(0)
    groups = ["B", CONTROL, "B", PREDICTED, CONTROL, "A", "B"]
    return rng.normal(size=(len(groups), 2)), groups


def test_embedding_scatter_traces_and_colors(cells):
    xy, groups = cells
    fig = embedding_scatter(xy, groups, title="cells", colors={"A": "#123456"})
    assert isinstance(fig, go.Figure)
    assert [t.type for t in fig.data] == ["scattergl"] * 4
    assert [t.name for t in fig.data] == ["B", CONTROL, PREDICTED, "A"]
    cols = {t.name: t.marker.color for t in fig.data}
    assert cols[CONTROL] == KIND_COLORS[CONTROL] and cols[PREDICTED] == KIND_COLORS[PREDICTED]
    assert cols["A"] == "#123456"
    assert cols["B"] not in KIND_COLORS.values()
    b = fig.data[0]
    assert len(b.x) == 3 and np.allclose(b.x, xy[[0, 2, 6], 0]) and np.allclose(b.y, xy[[0, 2, 6], 1])
    assert list(b.text) == ["B", "B", "B"]
    assert _title(fig.layout.xaxis) == "UMAP 1" and _title(fig.layout.yaxis) == "UMAP 2"
    assert fig.layout.legend.itemsizing == "constant"
    assert fig.layout.title.text == "cells"
    assert fig.layout.template.layout.paper_bgcolor == "white"


def test_embedding_scatter_order_hover_prefix(cells):
    xy, groups = cells
    hover = [f"cell {i}" for i in range(len(groups))]
    fig = embedding_scatter(xy, groups, hover=hover, axis_prefix="PC", order=[PREDICTED, "missing", CONTROL],
                            marker_size=7)
    assert [t.name for t in fig.data] == [PREDICTED, CONTROL, "B", "A"]
    assert list(fig.data[1].text) == ["cell 1", "cell 4"]
    assert "%{text}" in fig.data[0].hovertemplate
    assert fig.data[0].marker.size == 7
    assert _title(fig.layout.xaxis) == "PC 1"


def test_embedding_scatter_palette_is_deterministic(cells):
    xy, groups = cells
    a = [t.marker.color for t in embedding_scatter(xy, groups).data]
    b = [t.marker.color for t in embedding_scatter(xy, groups).data]
    assert a == b
    assert a[0] != a[3]  # "B" and "A" get different palette colours


@pytest.mark.parametrize("bad", [np.zeros((7, 3)), np.zeros(7), np.zeros((6, 2))])
def test_embedding_scatter_bad_coords(cells, bad):
    _, groups = cells
    with pytest.raises(ValueError, match="coords"):
        embedding_scatter(bad, groups)


def test_embedding_scatter_bad_hover(cells):
    xy, groups = cells
    with pytest.raises(ValueError, match="hover"):
        embedding_scatter(xy, groups, hover=["x"])


# ---------------------------------------------------------------- gene_violins
def test_gene_violins():
    rng = np.random.default_rng(1)
    genes = ["G1", "G2", "G3"]
    values = {CONTROL: rng.random((5, 3)), PREDICTED: rng.random((4, 3)), "mine": rng.random((2, 3))}
    fig = gene_violins(values, genes, title="v")
    assert [t.type for t in fig.data] == ["violin"] * 3
    assert [t.name for t in fig.data] == [CONTROL, PREDICTED, "mine"]
    ctrl = fig.data[0]
    assert list(ctrl.x[:4]) == ["G1", "G2", "G3", "G1"] and len(ctrl.x) == 15
    assert np.allclose(ctrl.y, values[CONTROL].ravel())
    assert ctrl.line.color == KIND_COLORS[CONTROL] and fig.data[1].line.color == KIND_COLORS[PREDICTED]
    assert fig.data[2].line.color == kind_color("mine")
    assert ctrl.box.visible and ctrl.meanline.visible and ctrl.points is False
    assert CONTROL in ctrl.hovertemplate and "%{x}" in ctrl.hovertemplate and "%{y" in ctrl.hovertemplate
    assert fig.layout.violinmode == "group"
    assert _title(fig.layout.yaxis) == EXPR_LABEL and _title(fig.layout.xaxis) == "gene"


def test_gene_violins_errors():
    with pytest.raises(ValueError, match="shape"):
        gene_violins({CONTROL: np.zeros((4, 2))}, ["G1", "G2", "G3"])
    with pytest.raises(ValueError, match="genes is empty"):
        gene_violins({CONTROL: np.zeros((4, 0))}, [])
    with pytest.raises(ValueError, match="values is empty"):
        gene_violins({}, ["G1"])


# ---------------------------------------------------------------- delta_bars
def test_delta_bars():
    table = pd.DataFrame({
        "gene": [f"g{i}" for i in range(5)],
        "predicted_delta": [1.0, -0.5, 0.2, 0.1, 0.0],
        "observed_delta": [0.8, np.nan, 0.3, 0.0, 0.1],
        "additive_delta": [np.nan] * 5,
        "other": 1,
    })
    fig = delta_bars(table, n=3, title="d")
    assert [t.type for t in fig.data] == ["bar", "bar"]
    assert [t.name for t in fig.data] == ["predicted", "observed"]
    assert all(t.orientation == "h" for t in fig.data)
    assert [t.marker.color for t in fig.data] == [KIND_COLORS[PREDICTED], KIND_COLORS[OBSERVED]]
    assert list(fig.data[0].y) == ["g0", "g1", "g2"] and list(fig.data[0].x) == [1.0, -0.5, 0.2]
    assert list(fig.data[1].y) == ["g0", "g2"]  # NaN left out
    assert list(fig.layout.yaxis.categoryarray) == ["g0", "g1", "g2"]
    assert fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.barmode == "group"
    assert _title(fig.layout.xaxis) == "change in mean expression vs control (log1p)"
    assert "%{y}" in fig.data[0].hovertemplate


def test_delta_bars_additive_legend_name():
    table = pd.DataFrame({"gene": ["a"], "additive_delta": [0.3]})
    fig = delta_bars(table)
    assert fig.data[0].name == "additive (gene space)" and fig.data[0].marker.color == KIND_COLORS[ADDITIVE]


def test_delta_bars_errors():
    with pytest.raises(ValueError, match="gene"):
        delta_bars(pd.DataFrame({"predicted_delta": [1.0]}))
    with pytest.raises(ValueError, match="delta"):
        delta_bars(pd.DataFrame({"gene": ["a"], "x": [1.0]}))


# ---------------------------------------------------------------- perturbation_map
def test_perturbation_map():
    xy = np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, -1.0]])
    fig = perturbation_map(xy, ["A", "B", "A+B"], title="map")
    assert len(fig.data) == 1
    t = fig.data[0]
    assert t.type == "scatter" and t.mode == "markers+text"
    assert list(t.text) == ["A", "B", "A+B"] and list(t.hovertext) == ["A", "B", "A+B"]
    assert all(p in cf.LABEL_POSITIONS for p in t.textposition)
    assert "%{hovertext}" in t.hovertemplate
    assert _title(fig.layout.xaxis) == "PC 1" and _title(fig.layout.yaxis) == "PC 2"


def test_perturbation_map_errors():
    with pytest.raises(ValueError, match="labels"):
        perturbation_map(np.zeros((3, 2)), ["A", "B"])
    with pytest.raises(ValueError, match="shape"):
        perturbation_map(np.zeros((3, 3)), ["A", "B", "C"])


# ---------------------------------------------------------------- heatmaps
def _red_at_top(colorscale) -> bool:
    lo, hi = colorscale[0][1], colorscale[-1][1]
    r_lo, _, b_lo = (int(v) for v in lo[4:-1].split(","))
    r_hi, _, b_hi = (int(v) for v in hi[4:-1].split(","))
    return b_lo > r_lo and r_hi > b_hi


def test_latent_heatmap():
    W = pd.DataFrame(np.arange(12, dtype=float).reshape(3, 4) - 5, index=["A", "B", "C"],
                     columns=[f"z{i}" for i in range(4)])
    fig = latent_heatmap(W, title="W")
    t = fig.data[0]
    assert len(fig.data) == 1 and t.type == "heatmap"
    assert list(t.x) == ["z0", "z1", "z2", "z3"] and list(t.y) == ["A", "B", "C"]
    assert t.zmid == 0 and _red_at_top(t.colorscale)
    assert "%{y}" in t.hovertemplate and "%{x}" in t.hovertemplate and "%{z" in t.hovertemplate
    assert _title(fig.layout.xaxis) == "latent dimension" and _title(fig.layout.yaxis) == "perturbation"
    assert fig.layout.height == 300
    big = pd.DataFrame(np.zeros((40, 2)), index=[f"p{i}" for i in range(40)], columns=["z0", "z1"])
    assert latent_heatmap(big).layout.height == 18 * 40 + 120


def test_latent_heatmap_empty():
    with pytest.raises(ValueError, match="empty"):
        latent_heatmap(pd.DataFrame())


def test_similarity_heatmap():
    names = ["A", "B", "C"]
    sim = pd.DataFrame([[1.0, 0.83, -0.2], [0.83, 1.0, np.nan], [-0.2, np.nan, 1.0]], index=names, columns=names)
    fig = similarity_heatmap(sim)
    t = fig.data[0]
    assert t.type == "heatmap" and t.zmin == -1 and t.zmax == 1 and t.zmid == 0
    assert _red_at_top(t.colorscale)
    assert t.text[0][1] == "A vs B: 0.83" and t.text[2][0] == "C vs A: -0.20"
    assert t.text[1][2] == "B vs C: –"
    assert "%{text}" in t.hovertemplate


def test_similarity_heatmap_errors():
    with pytest.raises(ValueError, match="square"):
        similarity_heatmap(pd.DataFrame(np.zeros((2, 3)), index=["A", "B"], columns=["A", "B", "C"]))
    with pytest.raises(ValueError, match="index == columns"):
        similarity_heatmap(pd.DataFrame(np.zeros((2, 2)), index=["A", "B"], columns=["B", "A"]))


# ---------------------------------------------------------------- condition_count_bars
@pytest.fixture()
def counts():
    return pd.DataFrame({
        "condition": ["ctrl", "A", "B", "A+B", "C"],
        "n_cells": [500, 120, 300, 80, 200],
        "kind": ["control", "single", "single", "combination", "single"],
    })


def test_condition_count_bars(counts):
    fig = condition_count_bars(counts)
    assert [t.name for t in fig.data] == ["control", "single", "combination"]
    assert [t.marker.color for t in fig.data] == [KIND_COLORS[CONTROL], "#2ca02c", "#9467bd"]
    assert all(t.type == "bar" and t.orientation == "h" for t in fig.data)
    assert list(fig.layout.yaxis.categoryarray) == ["ctrl", "B", "C", "A", "A+B"]
    assert fig.layout.yaxis.autorange == "reversed"
    assert list(fig.data[1].y) == ["B", "C", "A"] and list(fig.data[1].x) == [300, 200, 120]
    assert _title(fig.layout.xaxis) == "cells"
    assert "showing" not in fig.layout.title.text


def test_condition_count_bars_truncates(counts):
    fig = condition_count_bars(counts, title="cells", max_conditions=2)
    assert fig.layout.title.text == "cells (showing the 2 largest of 5 conditions)"
    assert list(fig.layout.yaxis.categoryarray) == ["ctrl", "B"]
    assert [t.name for t in fig.data] == ["control", "single"]


def test_condition_count_bars_errors(counts):
    with pytest.raises(ValueError, match="kind"):
        condition_count_bars(counts.drop(columns="kind"))
    with pytest.raises(ValueError, match="max_conditions"):
        condition_count_bars(counts, max_conditions=0)


# ---------------------------------------------------------------- what_if_scatter / latent_scatter
def test_what_if_scatter_order_and_colors():
    rng = np.random.default_rng(1)
    groups = [PREDICTED, OTHER_CELLS, CONTROL, ADDITIVE, OBSERVED, OTHER_CELLS, PREDICTED]
    fig = what_if_scatter(rng.normal(size=(len(groups), 2)), groups, title="what if")
    assert [t.name for t in fig.data] == [OTHER_CELLS, CONTROL, OBSERVED, ADDITIVE, PREDICTED]
    cols = {t.name: t.marker.color for t in fig.data}
    assert cols[OTHER_CELLS] == OTHER_CELLS_COLOR == "#e6e6e6"
    assert all(cols[k] == KIND_COLORS[k] for k in (CONTROL, OBSERVED, ADDITIVE, PREDICTED))
    assert fig.layout.title.text == "what if" and list(fig.data[1].text) == [CONTROL]


@pytest.fixture()
def latent_cells():
    reg = PerturbationRegistry(perturbation_key="condition", control_label="ctrl", perturbations=["A", "B", "C"],
                               gene_names=["g1", "g2"])
    conds = ["B", "ctrl", "A+B", "A", "ctrl", "C"]
    return np.random.default_rng(2).normal(size=(len(conds), 2)), conds, reg


def test_latent_scatter_by_condition(latent_cells):
    xy, conds, reg = latent_cells
    fig = latent_scatter(xy, conds, reg, held_out=["A+B"], title="UMAP of z_base")
    assert [t.name for t in fig.data] == ["ctrl", "A", "A+B", "B", "C"]
    assert fig.data[0].marker.color == KIND_COLORS[CONTROL]
    assert list(fig.data[2].text) == ["A+B (held out)"] and list(fig.data[1].text) == ["A"]
    assert np.allclose(fig.data[0].x, xy[[1, 4], 0])
    assert fig.layout.title.text == "UMAP of z_base"


def test_latent_scatter_by_kind_and_covariate(latent_cells):
    xy, conds, reg = latent_cells
    fig = latent_scatter(xy, conds, reg, colour_by="kind")
    assert [t.name for t in fig.data] == ["control", "single", "combination"]
    assert [t.marker.color for t in fig.data] == [CONDITION_KIND_COLORS[k] for k in ("control", "single", "combination")]
    assert list(fig.data[1].text) == ["B", "A", "C"] and list(fig.data[2].text) == ["A+B"]
    cov = ["x", "y", "x", "y", "x", "z"]
    fig = latent_scatter(xy, conds, reg, colour_by="covariate", covariate=cov)
    assert [t.name for t in fig.data] == ["x", "y", "z"] and list(fig.data[0].text) == ["B", "A+B", "ctrl"]
    with pytest.raises(ValueError, match="covariate"):
        latent_scatter(xy, conds, reg, colour_by="covariate")
    with pytest.raises(ValueError, match="colour_by"):
        latent_scatter(xy, conds, reg, colour_by="batch")


def test_condition_count_bars_put_control_on_top():
    import pandas as pd

    from pdae_core.plot.cells import condition_count_bars

    counts = pd.DataFrame({"condition": ["A", "control", "A+B", "B"], "n_cells": [500, 100, 50, 900],
                           "kind": ["single", "control", "combination", "single"]})
    fig = condition_count_bars(counts)
    assert list(fig.layout.yaxis.categoryarray) == ["control", "B", "A", "A+B"]
    assert "control" in list(condition_count_bars(counts, max_conditions=2).layout.yaxis.categoryarray)


# ---------------------------------------------------------------- issue 16: figures a biologist reads
def test_latent_scatter_by_target(latent_cells):
    xy, conds, reg = latent_cells
    conds = [*conds, "A+C"]
    xy = np.vstack([xy, [[0.0, 0.0]]])
    fig = latent_scatter(xy, conds, reg, colour_by="target", target="A", held_out=["A+B"])
    assert [t.name for t in fig.data] == [OTHER_CELLS, CONTROL, "A alone", "A+B (held out)", "A+C"]
    cols = {t.name: t.marker.color for t in fig.data}
    assert cols[OTHER_CELLS] == OTHER_CELLS_COLOR and cols[CONTROL] == KIND_COLORS[CONTROL]
    assert cols["A alone"] == CONDITION_KIND_COLORS["single"]
    combo = {cols["A+B (held out)"], cols["A+C"]}
    assert len(combo) == 2 and not combo & {OTHER_CELLS_COLOR, KIND_COLORS[CONTROL], CONDITION_KIND_COLORS["single"]}
    assert sorted(fig.data[0].text) == ["B", "C"]  # the rest, grey, drawn first (underneath)
    assert list(fig.data[3].text) == ["A+B (held out)"]
    assert sorted(len(t.x) for t in fig.data) == [1, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="target"):
        latent_scatter(xy, conds, reg, colour_by="target")


def test_missing_values_read_as_a_dash(latent_cells):
    xy, conds, reg = latent_cells
    fig = embedding_scatter(xy[:3], ["a", "b", "a"], hover=[None, float("nan"), "x"])
    assert list(fig.data[0].text) == [cf.MISSING, "x"] and list(fig.data[1].text) == [cf.MISSING]
    fig = latent_scatter(xy, conds, reg, colour_by="covariate", covariate=["x", None, "None", "nan", "x", "y"])
    assert [t.name for t in fig.data] == ["x", cf.MISSING, "y"] and cf.MISSING == "–"
    assert "None" not in str(fig.to_plotly_json()["data"])


def test_gene_violins_start_at_zero_for_expression():
    rng = np.random.default_rng(3)
    expr = np.where(rng.random((50, 2)) < 0.6, 0.0, rng.random((50, 2)) * 3)  # log1p: many zeros
    fig = gene_violins({CONTROL: expr, PREDICTED: expr[:20] + 0.1}, ["G1", "G2"])
    assert all(t.spanmode == "hard" for t in fig.data)  # the density ends at the data: no tail below 0
    assert fig.layout.yaxis.rangemode == "nonnegative"
    changes = gene_violins({CONTROL: expr - 1.0}, ["G1", "G2"])  # negative values: the axis is free
    assert changes.layout.yaxis.rangemode is None and changes.data[0].spanmode == "hard"


def test_small_numbers_read_plainly():
    """No SI prefixes ("10µ", "20k") on value axes and colour bars."""
    tiny = {CONTROL: np.full((5, 1), 2e-5)}
    table = pd.DataFrame({"gene": ["a", "b"], "predicted_delta": [1e-5, -2e-5]})
    counts = pd.DataFrame({"condition": ["ctrl", "A"], "n_cells": [20000, 12000], "kind": ["control", "single"]})
    axes = [gene_violins(tiny, ["G"]).layout.yaxis, delta_bars(table).layout.xaxis,
            condition_count_bars(counts).layout.xaxis,
            cf.expression_scatter(np.zeros((2, 2)), [1e-5, 2e-5], gene="G").data[0].marker.colorbar]
    assert [a.exponentformat for a in axes] == ["none"] * 4


def _names(n: int) -> list[str]:
    return [f"GENE{i}" for i in range(n)]


def test_heatmaps_write_every_name():
    names = _names(40)
    W = pd.DataFrame(np.random.default_rng(4).normal(size=(40, 8)), index=names, columns=[f"z{i}" for i in range(8)])
    y = latent_heatmap(W).layout.yaxis
    assert y.tickmode == "array" and list(y.tickvals) == names and list(y.ticktext) == names
    sim = pd.DataFrame(np.eye(40), index=names, columns=names)
    fig = similarity_heatmap(sim)
    for ax in (fig.layout.xaxis, fig.layout.yaxis):
        assert ax.tickmode == "array" and list(ax.tickvals) == names
    assert fig.layout.height >= 18 * 40  # the rows grow with the count: room for every name
    assert fig.layout.xaxis.tickangle == -90


def _boxes(xy, labels, pos, width=560, height=380, font=11, marker=8):
    """The label boxes in pixels as place_labels estimates them (independent re-derivation)."""
    x0, x1 = cf._padded_range(xy[:, 0])
    y0, y1 = cf._padded_range(xy[:, 1])
    px, py = (xy[:, 0] - x0) / (x1 - x0) * width, (xy[:, 1] - y0) / (y1 - y0) * height
    r, h = marker / 2 + 2, 1.25 * font
    out = {}
    for i, p in enumerate(pos):
        if p is not None:
            out[i] = cf._label_box(px[i], py[i], p, 0.62 * font * len(labels[i]) + 2, h, r)
    return out, px, py


def test_place_labels_never_overlap_and_are_deterministic():
    rng = np.random.default_rng(5)
    xy = np.vstack([rng.normal(0, 0.05, size=(25, 2)), rng.normal(3, 1.0, size=(10, 2))])  # a crowded cluster
    labels = _names(35)
    pos = cf.place_labels(xy, labels)
    assert pos == cf.place_labels(xy, labels)  # deterministic
    assert all(p is None or p in cf.LABEL_POSITIONS for p in pos)
    boxes, px, py = _boxes(xy, labels, pos)
    assert 0 < len(boxes) < 35  # some labelled, the crowd partly left out
    items = list(boxes.items())
    for a, (i, bi) in enumerate(items):
        assert bi[0] >= 0 and bi[1] >= 0 and bi[2] <= 560 and bi[3] <= 380
        for j, bj in items[a + 1:]:
            assert not cf._overlap(bi, bj), (labels[i], labels[j])
            if pos[i] == pos[j]:  # same side of their points: the points are at least a label apart
                assert abs(px[i] - px[j]) >= 6 or abs(py[i] - py[j]) >= 1.25 * 11
        for k in range(len(xy)):  # no name covers a dot
            assert not cf._overlap(bi, (px[k] - 4, py[k] - 4, px[k] + 4, py[k] + 4))


def test_place_labels_simple_cases():
    far = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    assert cf.place_labels(far, ["A", "B", "C", "D"]) == ["top center"] * 4
    same = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    pos = cf.place_labels(same, ["KLF1", "MAP2K6", "X"])
    assert pos[2] is not None and sum(p is None for p in pos[:2]) <= 1
    side = np.array([[0.0, 0.0], [0.02, 0.0], [5.0, 5.0]])  # two names that would collide at "top center"
    pa, pb, _ = cf.place_labels(side, ["MAP2K3", "MAP2K6", "X"])
    assert pa is not None and pb is not None and pa != pb


def test_perturbation_map_hides_crowded_names_in_hover_only():
    rng = np.random.default_rng(6)
    xy = rng.normal(0, 0.02, size=(30, 2))
    labels = _names(30)
    fig = perturbation_map(xy, labels, title="map")
    t = fig.data[0]
    shown = [x for x in t.text if x]
    assert 0 < len(shown) < 30 and list(t.hovertext) == labels
    assert f"{30 - len(shown)} of 30 names left out" in fig.layout.title.text
    assert fig.layout.height == 560
