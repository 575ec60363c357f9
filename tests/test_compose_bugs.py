"""Issue 16 on the Compose page: the additive-baseline overlay of the UMAP (bug 1), a re-added
perturbation's dose slider (bug 2) and the extrapolation verdict in plain words.

The unit tests run on a small synthetic dataset (the UMAP replaced by its first two principal
components, so nothing is compiled); the AppTests drive the page on the bundled demo like
tests/test_app_pages.py (the first one in a process pays for the demo's UMAP).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pdae_core import PDAE, setup_anndata
from pdae_core import explore as ex
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.base import ExtrapolationCheck
from pdae_core.plot import cells as cf
from pdae_core.plot.style import ADDITIVE, PREDICTED

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the pages import ``pages.common`` from the repository root
    sys.path.insert(0, str(ROOT))
TIMEOUT = 300


# ---- bug 1: the additive cells of the what-if UMAP -------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    """control, P1, P2, P3 and their three doubles (30 cells each, 12 genes); a PDAE trained one
    epoch with P2+P3 held out, and the additive baseline fitted on the same cells."""
    adata, _ = make_synthetic(n_perturbations=3, latent_dim=2, n_genes=12, hidden=8, n_doubles=3,
                              cells_per_condition=30, seed=3)
    reg = setup_anndata(adata, "condition")
    model = PDAE(reg, hidden_dims=(8,), latent_dim=3)
    model.fit(adata, holdout=["P2+P3"], max_epochs=1, batch_size=64, seed=0, accelerator="cpu")
    return adata, model, ex.fit_additive(adata, model)


def test_what_if_embedding_additive_cells_fewer_than_predicted(tiny, monkeypatch):
    adata, model, additive = tiny
    monkeypatch.setattr(ex, "umap_2d", lambda X, seed=0: np.asarray(X, dtype=np.float32)[:, :2])
    ref = ex.ReferenceEmbedding(adata, "condition", n_pcs=4)
    # 25 source cells, 60 predicted cells: each source cell decoded up to 3 times; the additive
    # baseline predicts each source cell once
    r = ex.what_if(model, adata, {"P2": 1, "P3": 1}, max_source_cells=25, additive=additive, n_cells=60)
    assert r.predicted.n_obs == 60 and r.additive is not None and r.additive.n_obs == 25
    coords, groups, hover = ex.what_if_embedding(ref, r, include_additive=True)
    assert len(coords) == len(groups) == len(hover)
    add_hover = [h for g, h in zip(groups, hover) if g == ADDITIVE]
    assert len(add_hover) == 25 and groups.count(PREDICTED) == 60
    assert add_hover == [f"additive P2+P3 from cell {s}" for s in r.additive.obs["source_cell"]]
    fig = cf.what_if_scatter(coords, groups, hover)
    assert sum(len(t.x) for t in fig.data if t.name == ADDITIVE) == 25


# ---- the verdict in words (pure) --------------------------------------------------------------
def _check(target, in_span=True, unseen=(), measured=False, outside=None, message="technical message"):
    outside = outside or {}
    return ExtrapolationCheck(target, in_span, 0.0 if in_span else 0.5, 28, 28 if in_span else 29, list(unseen),
                              measured, message, list(outside), outside)


def test_verdict_pair_measured_alone_held_out():
    v = ex.verdict_in_words(_check("KLF1+MAP2K6", message="KLF1+MAP2K6 lies in the span ..."),
                            {"KLF1": 1.0, "MAP2K6": 1.0}, ["KLF1", "MAP2K6", "TGFBR2"], held_out=True)
    assert v.level == "success"
    assert v.headline.startswith("Both KLF1 and MAP2K6 were measured alone, so the model can combine them: "
                                 "this is the kind of prediction it is built for.")
    assert "held out during training" in v.headline
    assert "KLF1+MAP2K6" not in v.headline and "span" not in v.headline and "rank" not in v.headline
    assert v.details[0] == "KLF1+MAP2K6 lies in the span ..." and "rank of the training labels 28" in v.details[1]
    line = v.markdown("KLF1+MAP2K6")
    assert line.startswith("**KLF1+MAP2K6**: Both KLF1") and line.count("KLF1+MAP2K6") == 1


def test_verdict_dose_beyond_training():
    v = ex.verdict_in_words(_check("KLF1+MAP2K6:3", outside={"MAP2K6": [0.0, 1.0]}),
                            {"KLF1": 1.0, "MAP2K6": 3.0}, ["KLF1", "MAP2K6"])
    assert v.level == "warning"
    assert v.headline.startswith("MAP2K6 at dose 3 is beyond anything measured (measured doses 0 to 1")
    assert "treat with caution" in v.headline and "held out" not in v.headline
    assert v.headline.endswith("Each part was measured alone, so the combination itself is one the model is built for.")
    v = ex.verdict_in_words(_check("KLF1:-1", outside={"KLF1": [0.0, 1.0]}), {"KLF1": -1.0}, ["KLF1"])
    assert v.level == "warning" and v.headline == ("KLF1 at dose -1 is beyond anything measured (measured doses 0 "
                                                   "to 1, control counting as 0): treat with caution.")
    assert v.markdown("KLF1:-1").startswith("**KLF1** at dose -1 is beyond")


def test_verdict_target_outside_the_span():
    v = ex.verdict_in_words(_check("KLF1+NEW", in_span=False, unseen=["NEW"]), {"KLF1": 1, "NEW": 1}, ["KLF1"])
    assert v.level == "error"
    assert v.headline == ("NEW was never measured, alone or in a combination, so the model knows nothing about its "
                          "effect: this prediction is not supported.")
    # seen only together with B, never alone: the data cannot separate A's shift
    v = ex.verdict_in_words(_check("A", in_span=False), {"A": 1.0}, [])
    assert v.level == "error" and v.headline.startswith("A was never measured alone")
    assert "not supported" in v.headline


def test_verdict_single_measured_perturbation():
    v = ex.verdict_in_words(_check("TGFBR2", measured=True), {"TGFBR2": 1.0}, ["TGFBR2"])
    assert v.level == "info"
    assert v.headline.startswith("TGFBR2 was measured alone and used in training: the model reproduces cells")
    assert v.markdown("TGFBR2").startswith("**TGFBR2** was measured alone") and v.markdown("TGFBR2").count("TGFBR2") == 1
    # the same single at a dose inside the measured range: a prediction it is built for
    v = ex.verdict_in_words(_check("TGFBR2:0.5"), {"TGFBR2": 0.5}, ["TGFBR2"])
    assert v.level == "success" and v.headline.startswith("TGFBR2 was measured alone, so the model can scale its "
                                                          "effect to dose 0.5: this is the kind of prediction")


def test_verdict_and_presets_from_a_trained_model(tiny):
    adata, model, _ = tiny
    assert ex.measured_alone(model) == ["P1", "P2", "P3"]
    v = ex.verdict_in_words(model.extrapolation_check({"P2": 1, "P3": 1}), {"P2": 1, "P3": 1},
                            ex.measured_alone(model), held_out=True)
    assert v.level == "success" and v.headline.startswith("Both P2 and P3 were measured alone")
    v = ex.verdict_in_words(model.extrapolation_check({"P1": 1, "P3": 2.5}), {"P1": 1, "P3": 2.5},
                            ex.measured_alone(model))
    assert v.level == "warning" and v.headline.startswith("P3 at dose 2.5 is beyond anything measured")
    reg = model.registry
    assert ex.matching_condition(reg, {"P3": 1.0, "P2": 1.0}, ["P1+P2", "P2+P3"]) == "P2+P3"
    assert ex.matching_condition(reg, {"P3": 1.0, "P2": 0.5}, ["P1+P2", "P2+P3"]) is None
    assert ex.matching_condition(reg, {"P2": 1.0, "P3": 0.0}, ["P2+P3"]) is None
    assert ex.matching_condition(reg, {}, ["P2+P3"]) is None


# ---- the page (AppTest on the bundled demo) ---------------------------------------------------
@pytest.fixture()
def compose(data_dir):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    _ok(at.switch_page("pages/compose.py").run())
    assert at.multiselect(key="compose_perts").value == ["KLF1", "MAP2K6"]  # the first held-out pair
    return at


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, "\n".join(e.message for e in at.exception)
    return at


def _umap(at: AppTest) -> dict:
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    umaps = [s for s in specs if "shared UMAP" in s["layout"].get("title", {}).get("text", "")]
    assert len(umaps) == 1, [s["layout"].get("title") for s in specs]
    return umaps[0]


def _traces(spec: dict) -> dict[str, int]:
    """Points per trace, counted by their hover texts (one per point)."""
    return {t["name"]: len(t["text"]) for t in spec["data"]}


def test_compose_additive_cells_in_the_umap(compose):
    at = compose
    assert ADDITIVE not in _traces(_umap(at))
    _ok(at.toggle(key="compose_show_add").set_value(True).run())
    traces = _traces(_umap(at))
    # 300 predicted cells from the demo's 100 control cells; the additive baseline predicts each once
    assert traces[PREDICTED] == 300 and traces[ADDITIVE] == 100
    assert not at.error
    # the remembered toggle: an unmeasured target, and back from another page
    _ok(at.slider(key="w:KLF1").set_value(0.5).run())
    assert ADDITIVE in _traces(_umap(at))
    _ok(at.switch_page("pages/data.py").run())
    _ok(at.switch_page("pages/compose.py").run())
    assert at.toggle(key="compose_show_add").value is True and ADDITIVE in _traces(_umap(at))


def test_compose_additive_overlay_failure_leaves_the_page_usable(compose, monkeypatch):
    """Whatever goes wrong with the additive cells, the remembered toggle cannot break the page again:
    the UMAP is drawn without them and a caption says why."""
    drawn = ex.what_if_embedding

    def failing(reference, result, include_additive=False):
        if include_additive:
            raise ValueError("hover has 3975 entries but groups has 3775.")
        return drawn(reference, result)

    monkeypatch.setattr(ex, "what_if_embedding", failing)
    at = _ok(compose.toggle(key="compose_show_add").set_value(True).run())
    assert ADDITIVE not in _traces(_umap(at)) and PREDICTED in _traces(_umap(at))
    assert any("additive baseline cells could not be drawn" in c.value for c in at.caption)
    assert not at.error


def _mounted(at: AppTest, key: str) -> float:
    """The dose a browser shows when this slider appears: the value the server sent with it, else
    the slider's default (its minimum, -1). The browser keeps it and sends it with the next action."""
    p = at.slider(key=key).proto
    return float((p.value if p.set_value else p.default)[0])


def test_compose_readded_perturbation_starts_at_dose_one(compose):
    at = compose
    _ok(at.slider(key="w:KLF1").set_value(0.5).run())
    _ok(at.multiselect(key="compose_perts").set_value([]).run())
    assert "w:KLF1" not in [s.key for s in at.slider]
    _ok(at.multiselect(key="compose_perts").set_value(["KLF1"]).run())
    klf1 = _mounted(at, "w:KLF1")
    assert klf1 == 1.0 and at.slider(key="w:KLF1").value == 1.0
    _ok(at.multiselect(key="compose_perts").set_value(["KLF1", "MAP2K6"]).run())
    map2k6 = _mounted(at, "w:MAP2K6")
    assert map2k6 == 1.0
    # the next action sends what the browser shows: the held-out pair at dose 1
    at.slider(key="w:KLF1").set_value(klf1)
    at.slider(key="w:MAP2K6").set_value(map2k6)
    _ok(at.toggle(key="compose_show_add").set_value(True).run())
    assert "**KLF1+MAP2K6**" in "\n".join(s.value for s in at.success)
    assert "KLF1:-1" not in "\n".join(e.value for e in [*at.success, *at.warning, *at.info, *at.error])


def test_compose_verdict_in_plain_words_and_preset_box(compose):
    at = compose
    assert at.selectbox(key="compose_preset").value == "KLF1+MAP2K6 (held out)"
    assert "Choose your own combination" in at.selectbox(key="compose_preset").options
    verdict = "\n".join(s.value for s in at.success)
    assert verdict.startswith("**KLF1+MAP2K6**: Both KLF1 and MAP2K6 were measured alone, so the model can "
                              "combine them: this is the kind of prediction it is built for.")
    assert verdict.count("KLF1+MAP2K6") == 1 and "span" not in verdict and "held out during training" in verdict
    detail = [e for e in at.expander if e.label.startswith("Technical detail")]
    assert len(detail) == 1 and "lies in the span" in "\n".join(c.value for c in detail[0].caption)
    _ok(at.slider(key="w:MAP2K6").set_value(3.0).run())
    warning = "\n".join(w.value for w in at.warning)
    assert "MAP2K6 at dose 3 is beyond anything measured" in warning and "treat with caution" in warning
    assert at.selectbox(key="compose_preset").value == "Choose your own combination"
    _ok(at.slider(key="w:MAP2K6").set_value(1.0).run())  # back to the measured pair: the box names it
    assert at.selectbox(key="compose_preset").value == "KLF1+MAP2K6 (held out)"
    _ok(at.selectbox(key="compose_preset").set_value("Choose your own combination").run())
    assert at.selectbox(key="compose_preset").value == "Choose your own combination"
    _ok(at.multiselect(key="compose_perts").set_value(["KLF1"]).run())
    assert at.selectbox(key="compose_preset").value == "Choose your own combination"
    assert "**KLF1** was measured alone and used in training" in "\n".join(i.value for i in at.info)
