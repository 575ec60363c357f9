"""Issue 16 on the Embeddings page (AppTest, no browser, the demo data and bundled model): the
cell map coloured by single / double / control by default, by one target, or by a gene's
expression (with the "not among the genes" hint), plain titles with the technical names kept
for help texts, and a "How to read this page" first."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the pages import ``pages.common`` from the repository root
    sys.path.insert(0, str(ROOT))

from pages import common  # noqa: E402
from pdae_core import reference as refmod  # noqa: E402
from pdae_core.plot.style import CONTROL, OTHER_CELLS  # noqa: E402

N_CELLS = 3375
PAGE_KIND, PAGE_TARGET, PAGE_GENE = "single / double / control", "one target", "a gene's expression"


@pytest.fixture(autouse=True)
def _fast_maps(data_dir, monkeypatch):
    """The demo data; the cell map is a PCA of the latent codes (a UMAP would compile numba for
    half a minute) and the Compose page's warm-up is not started."""
    monkeypatch.setattr(common, "warm_reference_embedding", lambda ds: None)
    monkeypatch.setattr(common, "latent_umap",
                        lambda data_key, model_key, which, _model, _adata:
                        refmod.pca(common.explore.latent_embedding(_model, _adata, which), 2)[0])


def ok(at: AppTest) -> AppTest:
    assert not at.exception, "\n".join(f"{e.message}\n{''.join(e.stack_trace)}" for e in at.exception)
    assert not any("unexpected error" in e.value for e in at.error), [e.value for e in at.error]
    return at


def start() -> AppTest:
    at = ok(AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run())
    return ok(at.switch_page("pages/embeddings.py").run())


def charts(at: AppTest) -> dict[str, dict]:
    """The page's plotly figures by title (the first line of it)."""
    out = {}
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        title = spec["layout"].get("title", {}).get("text") or ""
        out[title.split("<br>")[0]] = spec
    return out


def cell_map(at: AppTest) -> dict:
    maps = [s for t, s in charts(at).items() if t.startswith("Each cell as the model describes it")]
    assert len(maps) == 1, list(charts(at))
    return maps[0]


def _array(v) -> np.ndarray:
    if isinstance(v, dict) and "bdata" in v:  # plotly's typed-array encoding
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


def test_the_page_reads_plainly_and_colours_cells_by_kind():
    at = start()
    assert at.expander[0].label == "How to read this page"
    assert "each dot is one cell" in at.expander[0].markdown[0].value
    colour = at.radio(key="emb_colour")
    assert colour.value == PAGE_KIND and "condition" not in colour.options  # 34 conditions: no confetti
    assert [t["name"] for t in cell_map(at)["data"]] == [CONTROL, "single", "combination"]
    assert sum(len(_array(t["x"])) for t in cell_map(at)["data"]) == N_CELLS
    heads = [h.value for h in at.subheader]
    assert heads == ["How the model sees each cell", "How the model represents each perturbation"]
    titles = list(charts(at))
    assert "Map of the perturbations: similar effects lie close together" in titles
    shown = " ".join([*heads, *titles, *(c.value for c in at.caption), at.radio(key="emb_which").label,
                      *(str(o) for o in at.radio(key="emb_which").options)])
    for jargon in ("z_base", "columns of W", "Perturbation embedding"):
        assert jargon not in shown
    # ... the technical names stay in the detail
    technical = [e for e in at.expander if e.label == "Technical detail"]
    assert len(technical) == 1 and "columns of **W**" in technical[0].markdown[0].value


def test_colour_by_target_highlights_its_cells():
    at = start()
    ok(at.radio(key="emb_colour").set_value(PAGE_TARGET).run())
    target = at.selectbox(key="emb_target")
    assert target.value == "KLF1"  # a part of the first held-out pair, KLF1+MAP2K6
    names = [t["name"] for t in cell_map(at)["data"]]
    assert names[:3] == [OTHER_CELLS, CONTROL, "KLF1 alone"] and "KLF1+MAP2K6 (held out)" in names
    assert all("KLF1" in n for n in names[2:])
    ok(target.set_value("MAP2K6").run())
    names = [t["name"] for t in cell_map(at)["data"]]
    assert "MAP2K6 alone" in names and "MAP2K3+MAP2K6 (held out)" in names and "KLF1 alone" not in names
    assert sum(len(_array(t["x"])) for t in cell_map(at)["data"]) == N_CELLS


def test_colour_by_gene_and_the_hint_for_an_unknown_gene():
    at = start()
    ok(at.radio(key="emb_colour").set_value(PAGE_GENE).run())
    ok(at.text_input(key="emb_gene").input("tmsb4x").run())  # any case
    assert not at.warning
    fig = cell_map(at)
    assert fig["layout"]["title"]["text"].endswith("TMSB4X expression")
    (trace,) = fig["data"]
    values = _array(trace["marker"]["color"])
    assert len(values) == N_CELLS and trace["marker"]["colorbar"]["title"]["text"] == "TMSB4X"
    adata = common.load_source(("builtin", common.DEMO_DATASET))[2]
    x = adata[:, "TMSB4X"].X
    expected = np.asarray(x.todense() if hasattr(x, "todense") else x, dtype=float).ravel()
    assert expected.std() > 0  # a gene that varies: the colours mean something
    np.testing.assert_allclose(np.sort(values), np.sort(expected), rtol=1e-5)
    ok(at.text_input(key="emb_gene").input("GATA1").run())
    hint = " ".join(w.value for w in at.warning)
    assert "GATA1 is not among the 500 genes of this dataset" in hint
    assert [t["name"] for t in cell_map(at)["data"]] == [CONTROL, "single", "combination"]
