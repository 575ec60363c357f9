"""Issue 16, what-if latency at 100,000 cells: figures draw at most ``MAX_DRAWN`` cells of a kind (a fixed
random sample, said under the title) while tables and statistics use every cell; figures get their
template without plotly validating it again; the shared map places cells as before, faster.

The unit tests use small synthetic arrays; one AppTest drives the Compose page on the bundled demo with
the cap lowered, so that the demo's observed cells are thinned.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from streamlit.testing.v1 import AppTest

from pdae_core.plot import cells as cf
from pdae_core.plot.style import ADDITIVE, CONTROL, OBSERVED, OTHER_CELLS, PREDICTED, TEMPLATE
from pdae_core.reference import ReferenceEmbedding

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the pages import ``pages.common`` from the repository root
    sys.path.insert(0, str(ROOT))

SIZES = {OTHER_CELLS: 300, CONTROL: 200, OBSERVED: 2000, PREDICTED: 200, ADDITIVE: 150}


@pytest.fixture()
def what_if_map():
    """Coordinates, groups and hover of a what-if map with 2,000 observed cells (hover = the row number)."""
    rng = np.random.default_rng(0)
    groups = [g for g, n in SIZES.items() for _ in range(n)]
    return rng.normal(size=(len(groups), 2)), groups, [f"cell {i}" for i in range(len(groups))]


def _trace(fig: go.Figure, name: str):
    (t,) = [t for t in fig.data if t.name == name]
    return t


def _title(fig: go.Figure) -> str:
    return fig.layout.title.text or ""


# ---- drawn_points ----------------------------------------------------------------------------
def test_drawn_points_caps_only_the_named_groups():
    groups = ["a"] * 50 + ["b"] * 30 + ["a"] * 50
    keep, thinned = cf.drawn_points(groups, {"a": 40, "b": 40})
    g = np.asarray(groups)[keep]
    assert (g == "a").sum() == 40 and (g == "b").sum() == 30  # b is within its cap: all kept
    assert thinned == {"a": (40, 100)}
    assert np.array_equal(keep, np.sort(keep)) and len(set(keep)) == len(keep)  # drawing order kept
    again, _ = cf.drawn_points(groups, {"a": 40})
    assert np.array_equal(again, keep)  # a fixed sample: the map does not flicker between what-ifs
    other, _ = cf.drawn_points(groups, {"a": 40}, seed=1)
    assert not np.array_equal(other, keep)
    everything, none = cf.drawn_points(groups, None)
    assert np.array_equal(everything, np.arange(len(groups))) and none == {}
    assert cf.thinning_note(thinned) == "40 of 100 a cells shown (a random sample)"
    assert cf.thinning_note({}) is None


# ---- the what-if map --------------------------------------------------------------------------
def test_what_if_scatter_draws_at_most_max_drawn_observed_cells(what_if_map):
    xy, groups, hover = what_if_map
    assert cf.MAX_DRAWN == 1000 and dict(cf.WHAT_IF_CAPS) == {OBSERVED: 1000}
    fig = cf.what_if_scatter(xy, groups, hover, title="KLF1: cells")
    obs = _trace(fig, OBSERVED)
    assert len(obs.x) == 1000
    assert sum(len(t.x) for t in fig.data) == len(groups) - 1000  # every other cell drawn
    assert all(len(_trace(fig, g).x) == n for g, n in SIZES.items() if g != OBSERVED)
    rows = [int(h.split()[1]) for h in obs.text]  # the points drawn are observed cells, with their own place
    assert all(groups[i] == OBSERVED for i in rows) and len(set(rows)) == 1000
    np.testing.assert_allclose(np.c_[obs.x, obs.y], xy[rows])
    assert _title(fig) == "KLF1: cells<br><sup>1,000 of 2,000 observed cells shown (a random sample)</sup>"
    assert [t.name for t in fig.data] == [OTHER_CELLS, CONTROL, OBSERVED, ADDITIVE, PREDICTED]
    full = cf.what_if_scatter(xy, groups, hover, title="KLF1: cells", max_per_group=None)
    assert len(_trace(full, OBSERVED).x) == 2000 and _title(full) == "KLF1: cells"


def test_what_if_scatter_few_observed_cells_unchanged(what_if_map):
    xy, groups, hover = what_if_map
    few = [g for g in groups if g != OBSERVED] + [OBSERVED] * 10
    fig = cf.what_if_scatter(xy[: len(few)], few, hover[: len(few)])
    assert len(_trace(fig, OBSERVED).x) == 10 and fig.layout.title.text is None


def test_embedding_scatter_and_expression_scatter_thin_on_request(what_if_map):
    xy, groups, hover = what_if_map
    assert len(_trace(cf.embedding_scatter(xy, groups, hover), OBSERVED).x) == 2000  # no cap by default
    fig = cf.embedding_scatter(xy, groups, hover, max_per_group={OBSERVED: 300, OTHER_CELLS: 100})
    assert len(_trace(fig, OBSERVED).x) == 300 and len(_trace(fig, OTHER_CELLS).x) == 100
    assert "300 of 2,000 observed cells, 100 of 300 other cells shown" in _title(fig)

    values = np.arange(len(groups), dtype=float)  # a cell's value is its row
    values[:5] = np.nan
    fig = cf.expression_scatter(xy, values, hover, gene="HBG1", groups=groups, max_per_group=cf.WHAT_IF_CAPS)
    drawn = np.concatenate([np.asarray(t.text) for t in fig.data])
    assert len(drawn) == len(groups) - 1000
    rows = [int(h.split()[1]) for h in drawn]
    assert sum(groups[i] == OBSERVED for i in rows) == 1000
    coloured = fig.data[-1]
    assert list(coloured.customdata) == sorted(float(i) for i in rows if i >= 5)  # each keeps its own value
    assert _title(fig) == "HBG1 expression<br><sup>1,000 of 2,000 observed cells shown (a random sample)</sup>"
    assert len(cf.expression_scatter(xy, values, hover, gene="HBG1").data[-1].x) == len(groups) - 5
    with pytest.raises(ValueError, match="groups"):
        cf.expression_scatter(xy, values, hover, groups=groups[:3], max_per_group=cf.WHAT_IF_CAPS)


# ---- violins ----------------------------------------------------------------------------------
def test_gene_violins_capped_keep_each_genes_range():
    rng = np.random.default_rng(2)
    obs = np.where(rng.random((2000, 3)) < 0.5, 0.0, rng.gamma(2.0, 1.0, (2000, 3)))
    ctrl = rng.random((300, 3))
    fig = cf.gene_violins({CONTROL: ctrl, OBSERVED: obs}, ["G1", "G2", "G3"], title="v", max_cells=500)
    c, o = fig.data
    assert len(c.y) == 300 * 3 and np.allclose(c.y, ctrl.ravel())  # within the cap: every cell
    assert len(o.y) == 500 * 3 and list(o.x[:3]) == ["G1", "G2", "G3"]
    y = np.asarray(o.y).reshape(500, 3)
    assert np.allclose(y.min(0), obs.min(0)) and np.allclose(y.max(0), obs.max(0))  # spans the data's range
    assert {tuple(r) for r in y} <= {tuple(r) for r in obs}  # whole cells, not values mixed across cells
    assert _title(fig) == "v<br><sup>violins drawn from 500 of 2,000 observed cells (a random sample)</sup>"
    again = cf.gene_violins({CONTROL: ctrl, OBSERVED: obs}, ["G1", "G2", "G3"], title="v", max_cells=500)
    assert np.array_equal(again.data[1].y, o.y)
    full = cf.gene_violins({OBSERVED: obs}, ["G1", "G2", "G3"])
    assert len(full.data[0].y) == 6000 and full.layout.title.text is None


def test_gene_violins_cap_with_missing_values():
    a = np.random.default_rng(3).random((50, 2))
    a[:, 1] = np.nan  # a gene with no value at all
    fig = cf.gene_violins({OBSERVED: a}, ["G1", "G2"], max_cells=10)
    y = np.asarray(fig.data[0].y, dtype=float).reshape(10, 2)
    assert np.nanmin(y[:, 0]) == a[:, 0].min() and np.nanmax(y[:, 0]) == a[:, 0].max()


# ---- the template -------------------------------------------------------------------------------
def test_figures_get_the_template_without_sharing_it():
    trace = go.Bar(x=[1.0, 2.0], y=["a", "b"], orientation="h")
    by_name = go.Figure(trace, layout={"template": TEMPLATE})  # the plain, slower way
    assert json.loads(cf._figure(trace).to_json()) == json.loads(by_name.to_json())
    fig = cf.delta_bars(pd.DataFrame({"gene": ["a", "b"], "predicted_delta": [1.0, -1.0]}))
    assert fig.layout.template.to_plotly_json() == pio.templates[TEMPLATE].to_plotly_json()
    fig.layout.template.layout.font.size = 99  # a copy: the registered template is untouched
    assert pio.templates[TEMPLATE].layout.font.size != 99
    assert cf.what_if_scatter(np.zeros((1, 2)), [PREDICTED]).layout.template.layout.plot_bgcolor == "white"


# ---- the shared map ----------------------------------------------------------------------------
def test_reference_transform_places_cells_at_the_weighted_mean_of_their_nearest():
    rng = np.random.default_rng(4)
    ref = ReferenceEmbedding.__new__(ReferenceEmbedding)  # a fitted map's arrays, without fitting a UMAP
    ref.k, ref.coords = 4, rng.normal(size=(300, 2)).astype(np.float32)
    ref._scores = rng.normal(size=(300, 5)).astype(np.float32)
    ref._components, ref._mean = np.linalg.qr(rng.normal(size=(40, 5)))[0].T, rng.random(40)
    X = rng.random((50, 40)) * 2
    S = (X - ref._mean) @ ref._components.T  # the placement written out in float64, brute force
    d = np.sqrt(((S[:, None, :] - ref._scores[None].astype(np.float64)) ** 2).sum(-1))
    nn = np.argsort(d, axis=1)[:, :4]
    w = 1.0 / (np.take_along_axis(d, nn, 1) + 1e-6)
    want = np.einsum("nk,nkd->nd", w / w.sum(1, keepdims=True), ref.coords[nn])
    np.testing.assert_allclose(ref.transform(X), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ref.transform(X[:7]), ref.transform(X)[:7], rtol=1e-6)  # row by row, whatever the batch


# ---- the Compose page ----------------------------------------------------------------------------
def test_compose_page_thins_drawing_not_tables(data_dir, monkeypatch):
    """With the cap lowered to 20, the demo's held-out pair draws 20 observed cells in the map (said in the
    caption and under the title) and in the violins, while the gene table is the one computed from all."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    at.switch_page("pages/compose.py").run()
    assert not at.exception
    table = at.dataframe[0].value.copy()
    monkeypatch.setattr(cf, "MAX_DRAWN", 20)
    monkeypatch.setattr(cf, "WHAT_IF_CAPS", {OBSERVED: 20})
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    umap = next(s for s in specs if "shared UMAP" in s["layout"]["title"]["text"])
    (obs,) = [t for t in umap["data"] if t["name"] == OBSERVED]
    assert len(obs["text"]) == 20
    n = int(next(c.value for c in at.caption if "observed cells of" in c.value).split(" observed cells of")[0]
            .split("· ")[-1].replace(",", ""))
    assert n > 20 and f"20 of {n:,} observed cells shown" in umap["layout"]["title"]["text"]
    assert any(f"{n:,} observed cells of KLF1+MAP2K6 (20 of them" in c.value for c in at.caption)
    violins = next(s for s in specs if "expression per group" in s["layout"]["title"]["text"])
    assert f"20 of {n:,} observed cells" in violins["layout"]["title"]["text"]
    assert at.dataframe[0].value.equals(table)  # the gene table: every cell, as before
