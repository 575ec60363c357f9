"""Issue 16, "What users expect" 1-3 on the Compose page: colour the map by a gene, predicted versus
observed change per gene (with the additive baseline beside it), and several models side by side.

The unit tests of :mod:`pdae_core.compare` and :mod:`pdae_core.plot.compare` run on a small synthetic
dataset; the AppTests drive the page on the bundled demo like tests/test_compose_bugs.py.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pdae_core import PDAE, setup_anndata
from pdae_core import compare as cmp
from pdae_core import explore as ex
from pdae_core.data.synthetic import make_synthetic
from pdae_core.errors import DataError
from pdae_core.eval.metrics import energy_distance
from pdae_core.models.baselines import AdditiveBaseline, ScaledAdditiveBaseline
from pdae_core.plot import compare as pcmp
from pdae_core.plot.style import ADDITIVE, KIND_COLORS, OBSERVED, PREDICTED

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the pages import ``pages.common`` from the repository root
    sys.path.insert(0, str(ROOT))
TIMEOUT = 300
PAIR = {"P1": 1.0, "P2": 1.0}


# ---- pdae_core.compare ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    """control, P1-P4 and P1+P2, P2+P3, P3+P4 (40 cells each, 30 genes); a PDAE trained one epoch with
    P1+P2 held out; its what-if of P1+P2 (30 source cells, 60 predicted) with the additive baseline."""
    adata, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=30, hidden=16, n_doubles=3,
                              cells_per_condition=40, seed=1)
    reg = setup_anndata(adata, "condition", "control")
    model = PDAE(reg, hidden_dims=(16,), latent_dim=4, noise_dim=2)
    model.fit(adata, holdout=["P1+P2"], max_epochs=1, batch_size=64, seed=0, accelerator="cpu", val_fraction=0.0)
    additive = cmp.fit_baseline("additive", adata, model)
    res = ex.what_if(model, adata, PAIR, max_source_cells=30, n_cells=60, additive=additive)
    return adata, reg, model, additive, res


def test_change_correlation():
    x = np.array([0.0, 1.0, 2.0, 3.0, np.nan])
    assert cmp.change_correlation(2 * x + 1, x) == pytest.approx(1.0)
    assert cmp.change_correlation(-x, x) == pytest.approx(-1.0)
    y = np.array([1.0, 0.0, 3.0, 2.0, 5.0])
    assert cmp.change_correlation(y, x) == pytest.approx(np.corrcoef(y[:4], x[:4])[0, 1])  # NaN genes left out
    assert np.isnan(cmp.change_correlation(np.ones(5), x))  # a constant change
    assert np.isnan(cmp.change_correlation([1.0, np.nan], [np.nan, 2.0]))  # fewer than two genes
    with pytest.raises(ValueError, match="differ in length"):
        cmp.change_correlation([1, 2, 3], [1, 2])


def test_change_agreement_and_sentence(tiny):
    _, _, _, _, res = tiny
    t = res.top_genes
    r = cmp.change_agreement(t)
    assert r["predicted_delta"] == pytest.approx(np.corrcoef(t["predicted_delta"], t["observed_delta"])[0, 1])
    assert r["additive_delta"] == pytest.approx(np.corrcoef(t["additive_delta"], t["observed_delta"])[0, 1])
    no_add = cmp.change_agreement(t.assign(additive_delta=np.nan))
    assert no_add["predicted_delta"] == pytest.approx(r["predicted_delta"]) and np.isnan(no_add["additive_delta"])
    assert all(np.isnan(v) for v in cmp.change_agreement(t.drop(columns="observed_delta")).values())

    s = cmp.agreement_sentence(0.83, 0.75, 500)
    assert s.startswith("Over the 500 genes the model's changes follow the observed ones with r = 0.83, the additive "
                        "baseline's with r = 0.75: the model follows the observed pattern more closely here")
    assert "the additive baseline follows the observed pattern more closely" in cmp.agreement_sentence(0.5, 0.9, 30)
    s = cmp.agreement_sentence(0.5, float("nan"), 30)
    assert "r = 0.50" in s and "no additive baseline for this target" in s


def test_fit_baseline(tiny):
    adata, reg, model, additive, _ = tiny
    assert isinstance(additive, AdditiveBaseline) and additive.holdout == ["P1+P2"]
    np.testing.assert_allclose(additive.effects_, ex.fit_additive(adata, model).effects_)
    scaled = cmp.fit_baseline("scaled_additive", adata, model)
    assert isinstance(scaled, ScaledAdditiveBaseline) and scaled.holdout == ["P1+P2"]
    assert sorted(scaled.alpha_conditions_) == ["P2+P3", "P3+P4"]  # the held-out pair never fits the scale
    assert cmp.about(scaled).startswith(f"Combinations scaled by {scaled.alpha_:.2f}, fitted on 2 measured")
    assert cmp.about(additive) is None and cmp.about(model) is None
    with pytest.raises(ValueError, match="Unknown baseline"):
        cmp.fit_baseline("linear", adata, model)


class _Reversed:
    """A predictor whose genes come in reverse order (as a checkpoint with another gene order would)."""

    def __init__(self, inner, genes=None):
        self.inner, self.registry = inner, inner.registry
        self.genes = genes

    def predict(self, source, target, seed=0, n_draws=1):
        p = self.inner.predict(source, target, seed=seed, n_draws=n_draws)
        p = p[:, list(range(p.n_vars - 1, -1, -1))].copy()
        if self.genes is not None:
            p.var_names = self.genes
        return p


def test_compare_a_measured_target(tiny):
    adata, reg, model, additive, res = tiny
    scaled = cmp.fit_baseline("scaled_additive", adata, model)
    no_p1 = AdditiveBaseline().fit(adata, reg, ["P1", "P1+P2"])  # P1 never measured alone: cannot predict P1+P2
    predictors = {"pdae": model, "additive": additive, "scaled": scaled, "no P1": no_p1,
                  "reversed": _Reversed(additive), "other genes": _Reversed(additive, [f"x{i}" for i in range(30)])}
    c = cmp.compare_what_if(predictors, res, adata, PAIR, reg, n_cells=60, precomputed={"pdae": res.predicted})
    assert c.target == "P1+P2" and c.measured and c.genes == list(reg.gene_names)
    by = {p.name: p for p in c.predictions}
    assert by["pdae"].cells is res.predicted and by["pdae"].cells.n_obs == 60
    assert by["additive"].cells.n_obs == 30  # a baseline predicts each source cell once
    assert list(by["additive"].cells.obs["source_cell"]) == list(res.additive.obs["source_cell"])
    table = res.top_genes.set_index("gene").loc[c.genes]
    np.testing.assert_allclose(by["pdae"].delta, table["predicted_delta"], atol=1e-5)
    np.testing.assert_allclose(by["additive"].delta, table["additive_delta"], atol=1e-5)
    np.testing.assert_allclose(c.observed_delta, table["observed_delta"], atol=1e-5)
    # the scores: energy distance of the cells to the observed cells (all of them: fewer than max_cells)
    obs = reg.expression(res.observed)
    assert by["pdae"].energy_distance == pytest.approx(energy_distance(np.asarray(res.predicted.X), obs), rel=1e-6)
    assert by["additive"].pearson_delta == pytest.approx(cmp.change_correlation(by["additive"].delta, c.observed_delta))
    assert c.control_energy == pytest.approx(energy_distance(reg.expression(res.control), obs), rel=1e-6)
    assert by["pdae"].seen_in_training is False and by["scaled"].seen_in_training is False
    # genes in another order are put back in the dataset's order; other genes cannot be compared
    assert list(by["reversed"].cells.var_names) == c.genes
    np.testing.assert_allclose(by["reversed"].delta, by["additive"].delta, atol=1e-6)
    assert by["other genes"].cells is None and "other genes" in by["other genes"].note
    assert by["no P1"].cells is None and by["no P1"].delta is None and "P1" in by["no P1"].note
    assert np.isnan(by["no P1"].energy_distance)
    assert set(c.deltas()) == {"pdae", "additive", "scaled", "reversed"}

    t = c.table(n_genes=3)
    assert list(t.columns) == ["model", "energy_distance", "pearson_delta", "seen_in_training", "top_genes", "n_cells",
                               "note"]
    assert list(t["model"]) == list(predictors)
    assert list(t["n_cells"]) == [60, 30, 30, 0, 60, 0]  # not a Baseline: drawn n_cells times, like a model
    top = t.set_index("model").loc["pdae", "top_genes"].split(", ")
    assert len(top) == 3 and top[0].split()[0] == res.top_genes["gene"].iloc[0]
    assert t.set_index("model").loc["scaled", "note"].startswith("Combinations scaled by")
    best = c.closest()
    assert best.energy_distance == min(p.energy_distance for p in c.predictions if p.ok)
    assert c.summary().startswith(f"Closest to the observed cells of P1+P2: {best.name} (energy distance")
    assert "Unchanged control cells are at" in c.summary()


def test_compare_an_unmeasured_target_and_one_seen_in_training(tiny):
    adata, reg, model, additive, _ = tiny
    res = ex.what_if(model, adata, {"P1": 1.0, "P4": 1.0}, max_source_cells=20, n_cells=50, additive=additive)
    assert res.observed is None
    c = cmp.compare_what_if({"pdae": model, "additive": additive}, res, adata, {"P1": 1.0, "P4": 1.0}, reg, n_cells=50)
    assert not c.measured and c.closest() is None and np.isnan(c.control_energy)
    assert [p.cells.n_obs for p in c.predictions] == [50, 20]  # the model drew 50 cells itself
    assert list(c.table().columns) == ["model", "seen_in_training", "top_genes", "n_cells"]
    assert "was not measured in this dataset" in c.summary()
    # a pair used in training: the models saw it
    res = ex.what_if(model, adata, {"P2": 1.0, "P3": 1.0}, max_source_cells=20, n_cells=20)
    c = cmp.compare_what_if({"pdae": model, "additive": additive}, res, adata, {"P2": 1.0, "P3": 1.0}, reg)
    assert [p.seen_in_training for p in c.predictions] == [True, True]
    with pytest.raises(DataError, match="non-zero"):
        cmp.compare_what_if({"pdae": model}, res, adata, {"P2": 0.0}, reg)


# ---- pdae_core.plot.compare ---------------------------------------------------------------------
def test_change_panels_and_bars():
    genes = ["g0", "g1", "g2", "g3"]
    obs = np.array([0.1, -2.0, 0.5, 1.0])
    deltas = {"model": np.array([0.0, -1.5, 0.4, 1.2]), "additive": np.array([0.2, -1.0, 0.1, 0.3]),
              "other": np.array([0.0, 0.0, 0.0, 0.1])}
    fig = pcmp.change_panels(deltas, obs, genes, {"model": 0.91, "additive": 0.5}, colors={"model": "#d62728"},
                             n_labels=2)
    titles = [a.text for a in fig.layout.annotations if a.text.endswith(("0.91", "0.50", "–"))]
    assert titles == ["model · r = 0.91", "additive · r = 0.50", "other · r: –"]
    points = [t for t in fig.data if t.mode == "markers"]
    assert [t.name for t in points] == list(deltas) and points[0].marker.color == "#d62728"
    assert [t.xaxis for t in points] == ["x", "x2", "x3"]  # one panel each
    np.testing.assert_allclose(points[1].y, deltas["additive"])
    labels = {a.text for a in fig.layout.annotations if a.text in genes}
    assert labels == {"g1", "g3"}  # the genes of largest observed change
    with pytest.raises(ValueError, match="3 values but there are 4 genes"):
        pcmp.change_panels({"m": np.zeros(3)}, obs, genes)

    bars = pcmp.change_bars(deltas, genes, obs, n=2)
    assert [t.name for t in bars.data] == [OBSERVED, "model", "additive", "other"]
    assert list(bars.data[0].y) == ["g1", "g3"] and bars.data[0].marker.color == KIND_COLORS[OBSERVED]
    np.testing.assert_allclose(bars.data[1].x, [-1.5, 1.2])
    no_obs = pcmp.change_bars(deltas, genes, n=1)
    assert [t.name for t in no_obs.data] == list(deltas) and list(no_obs.data[0].y) == ["g1"]
    assert pcmp.r_text(float("nan")) == "r: –" and pcmp.r_text(0.123) == "r = 0.12"
    assert pcmp.colors_for(["a", "additive"], {"a": "#000000"}) == {"a": "#000000", "additive": KIND_COLORS[ADDITIVE]}


# ---- the page (AppTest on the bundled demo) -----------------------------------------------------
@pytest.fixture()
def compose(data_dir):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    _ok(at.switch_page("pages/compose.py").run())
    assert at.multiselect(key="compose_perts").value == ["KLF1", "MAP2K6"]  # the first held-out pair
    return at


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, "\n".join(e.message for e in at.exception)
    return at


def _specs(at: AppTest) -> dict[str, dict]:
    return {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def _chart(at: AppTest, title_part: str) -> dict:
    found = [s for s in _specs(at).values() if title_part in s["layout"].get("title", {}).get("text", "")]
    assert len(found) == 1, [s["layout"].get("title", {}).get("text") for s in _specs(at).values()]
    return found[0]


def _titles(at: AppTest) -> list[str]:
    return [s["layout"].get("title", {}).get("text", "") for s in _specs(at).values()]


def test_compose_how_to_read_and_colour_by_gene(compose):
    at = compose
    assert at.expander[0].label == "How to read this page" and "Glossary" in at.expander[0].markdown[0].value
    assert at.radio(key="compose_colour").value == "kind of cells"
    assert {t["name"] for t in _chart(at, "shared UMAP")["data"]} >= {PREDICTED, OBSERVED}
    _ok(at.radio(key="compose_colour").set_value("a gene's expression").run())
    top = at.text_input(key="compose_colour_gene").value
    assert top == "HBG2"  # the gene the prediction changes most
    spec = _chart(at, "HBG2 expression in one shared UMAP")
    coloured = [t for t in spec["data"] if t["marker"].get("colorbar")]
    assert len(coloured) == 1 and coloured[0]["marker"]["colorbar"]["title"]["text"] == "HBG2"
    assert len(coloured[0]["text"]) > 3000  # every cell of the map
    assert any(t.startswith("predicted KLF1+MAP2K6") for t in coloured[0]["text"])
    _ok(at.text_input(key="compose_colour_gene").input("hbz").run())  # any case
    assert _chart(at, "HBZ expression in one shared UMAP") and not at.info
    _ok(at.text_input(key="compose_colour_gene").input("GATA1").run())
    assert any(i.value.startswith("GATA1 is not among the 500 genes of this dataset") for i in at.info)
    assert {t["name"] for t in _chart(at, "cells in one shared UMAP")["data"]} >= {PREDICTED, OBSERVED}
    # remembered across pages
    _ok(at.switch_page("pages/data.py").run())
    _ok(at.switch_page("pages/compose.py").run())
    assert at.radio(key="compose_colour").value == "a gene's expression"
    assert at.text_input(key="compose_colour_gene").value == "GATA1"


def test_compose_predicted_vs_observed_change(compose, data_dir):
    import pdae_core as pc
    from pdae_core.data.datasets import load_dataset

    at = compose
    spec = _chart(at, "change from control per gene, predicted against observed")
    points = [t for t in spec["data"] if t["mode"] == "markers"]
    assert [t["name"] for t in points] == [PREDICTED, ADDITIVE] and len(points[0]["text"]) == 500
    panels = [a["text"] for a in spec["layout"]["annotations"] if " · r" in a["text"]]
    # the same numbers from pdae_core: the page's what-if (300 cells from control, additive baseline)
    model = pc.load_model(ROOT / "checkpoints" / "norman19_devel")
    adata = load_dataset("norman19_devel", data_dir=data_dir)
    res = ex.what_if(model, adata, {"KLF1": 1.0, "MAP2K6": 1.0}, source_condition="control", max_source_cells=300,
                     additive=ex.fit_additive(adata, model), n_cells=300)
    r = cmp.change_agreement(res.top_genes)
    assert panels == [f"{PREDICTED} · r = {r['predicted_delta']:.2f}", f"{ADDITIVE} · r = {r['additive_delta']:.2f}"]
    caption = next(c.value for c in at.caption if c.value.startswith("Over the 500 genes"))
    assert f"r = {r['predicted_delta']:.2f}" in caption and f"r = {r['additive_delta']:.2f}" in caption
    assert 0.5 < r["predicted_delta"] <= 1.0
    # an unmeasured target: nothing to compare with
    _ok(at.slider(key="w:KLF1").set_value(0.5).run())
    assert not any("predicted against observed" in t for t in _titles(at))


def test_compose_models_side_by_side(compose):
    at = compose
    box = at.multiselect(key="compose_models")
    assert box.value == ["bundled:norman19_devel"]
    assert box.options == ["bundled checkpoint norman19_devel (loaded)", "bundled checkpoint norman19_devel_ensemble",
                           "additive baseline", "scaled additive baseline"]
    assert any(c.value.startswith("Choose two or more models") for c in at.caption)
    _ok(box.set_value(["bundled:norman19_devel", "baseline:additive", "baseline:scaled_additive"]).run())
    tables = [d.value for d in at.dataframe if "Model" in getattr(d.value, "data", d.value).columns]
    assert len(tables) == 1
    t = getattr(tables[0], "data", tables[0]).set_index("Model")
    assert list(t.index) == ["PDAE (loaded)", "additive baseline", "scaled additive baseline"]
    ed, r = t["Energy distance to observed (lower is closer)"], t["Correlation of change with observed (r)"]
    assert (ed.notna() & (ed < 1)).all() and (r > 0.5).all()
    assert list(t["Predicted cells"]) == [300, 100, 100]
    assert list(t["Saw this target in training"]) == ["no", "no", "no"]
    assert t.loc["PDAE (loaded)", "Top predicted changes (vs control)"].startswith("HBG2 +")
    # every pair held out: no measured combination in training to scale, so it equals the additive
    assert "equals the additive baseline" in t.loc["scaled additive baseline", "Note"]
    # the loaded model's r is the one of the single scatter above
    single = _chart(at, "change from control per gene, predicted against observed")
    r_model = next(a["text"] for a in single["layout"]["annotations"] if a["text"].startswith(PREDICTED + " · r"))
    assert r_model.endswith(f"{r['PDAE (loaded)']:.2f}")
    best = t[ed == ed.min()].index[0]
    assert any(s.value.startswith(f"Closest to the observed cells of KLF1+MAP2K6: {best}") for s in at.success)
    panels = _chart(at, "predicted against observed change per gene, per model")
    titles = [a["text"] for a in panels["layout"]["annotations"] if " · r" in a["text"]]
    assert [x.split(" · ")[0] for x in titles] == list(t.index)
    bars = _chart(at, "Change of the genes that changed most")
    assert [b["name"] for b in bars["data"] if b["type"] == "bar"] == [OBSERVED, *t.index]
    # the map of one model's cells, in its colour
    assert at.selectbox(key="compose_cmp_map").value == "additive baseline"
    umap = _chart(at, "predicted cells of additive baseline, on the same map")
    drawn = {tr["name"]: tr for tr in umap["data"]}
    assert len(drawn["additive baseline"]["text"]) == 100 and PREDICTED not in drawn
    assert drawn["additive baseline"]["marker"]["color"] == KIND_COLORS[ADDITIVE]
    _ok(at.selectbox(key="compose_cmp_map").set_value("PDAE (loaded)").run())
    assert len({tr["name"]: tr for tr in _chart(at, "predicted cells of PDAE (loaded)")["data"]}["PDAE (loaded)"]["text"]) == 300
    # coloured by a gene, the model's map too
    _ok(at.radio(key="compose_colour").set_value("a gene's expression").run())
    umap = _chart(at, "predicted cells of PDAE (loaded), coloured by HBG2, on the same map")
    assert [t["marker"]["colorbar"]["title"]["text"] for t in umap["data"] if t["marker"].get("colorbar")] == ["HBG2"]
    _ok(at.radio(key="compose_colour").set_value("kind of cells").run())
    # the choice is remembered across pages; an unmeasured target is compared without scores
    _ok(at.switch_page("pages/data.py").run())
    _ok(at.switch_page("pages/compose.py").run())
    assert len(at.multiselect(key="compose_models").value) == 3
    _ok(at.slider(key="w:KLF1").set_value(0.5).run())
    tables = [getattr(d.value, "data", d.value) for d in at.dataframe if "Model" in getattr(d.value, "data", d.value)]
    assert "Energy distance to observed (lower is closer)" not in tables[0].columns and len(tables[0]) == 3
    assert any("was not measured in this dataset, so there is nothing to score" in i.value for i in at.info)
    assert not any("per model" in x and "against observed" in x for x in _titles(at))
    assert re.search(r"predicted cells of .*, on the same map", "\n".join(_titles(at)))


def test_compose_compares_a_model_trained_in_the_session(compose):
    """A model of this session (here a copy of the demo checkpoint) is offered and predicts from the same
    source cells: the same cells as the loaded model, so the same scores."""
    import pdae_core as pc

    at = compose
    at.session_state["trained"] = {"copy": pc.load_model(ROOT / "checkpoints" / "norman19_devel")}
    _ok(at.run())
    assert "trained in this session (copy)" in at.multiselect(key="compose_models").options
    _ok(at.multiselect(key="compose_models").set_value(["bundled:norman19_devel", "trained:copy"]).run())
    t = next(getattr(d.value, "data", d.value) for d in at.dataframe
             if "Model" in getattr(d.value, "data", d.value).columns).set_index("Model")
    assert list(t.index) == ["PDAE (loaded)", "PDAE (trained copy)"]
    assert t["Energy distance to observed (lower is closer)"].nunique() == 1
    assert t["Correlation of change with observed (r)"].nunique() == 1


def test_compose_offers_the_report_of_the_current_prediction():
    """The one-click report (issue 16, "What users expect" 5): the button is on the page and the file it
    would download is built by pdae_core.report (tested in tests/test_report.py)."""
    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "app.py"), default_timeout=300).run()
    at.switch_page("pages/compose.py").run()
    assert not at.exception, [e.message for e in at.exception]
    buttons = [b for b in at.get("download_button") if "report" in str(b.proto.label).lower()]
    assert len(buttons) == 1, [b.proto.label for b in at.get("download_button")]
