"""The dashboard's pages under Streamlit's AppTest (no browser), on the real demo data.

``AppTest.from_file("app.py")`` runs the entry point, which shows the Data page; because a
``pages/`` directory sits next to app.py, ``at.switch_page("pages/x.py").run()`` then runs
that page script directly (each page calls ``common.init_state()`` itself), and so does
every later ``at.run()``. Each test starts its own AppTest (a fresh session); the
``st.cache_resource`` caches (datasets, checkpoint, UMAPs) are per process, so only the
first visit to Compose or Embeddings pays for a UMAP fit (~20-30 s with numba compiling).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the pages import ``pages.common`` from the repository root
    sys.path.insert(0, str(ROOT))

from pages import common  # noqa: E402

TIMEOUT = 300  # seconds per script run: the first UMAP of a dataset compiles numba
DEMO_CELLS, DEMO_GENES = "3,375", "500"
HELDOUT = ["KLF1+MAP2K6", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2", "KLF1+TGFBR2"]
SUBMIT_TRAINING = "FormSubmitter:train_form-Start training"


@pytest.fixture(autouse=True)
def _real_data(data_dir):
    """Every test here needs the real demo data (conftest points PDAE_DATA_DIR at it)."""
    return data_dir


# ---- helpers ------------------------------------------------------------------------------
def ok(at: AppTest) -> AppTest:
    assert not at.exception, "\n".join(f"{e.message}\n{''.join(e.stack_trace)}" for e in at.exception)
    return at


def start(page: str | None = None) -> AppTest:
    """A new session on app.py (the Data page), optionally switched to ``pages/<page>.py``."""
    at = ok(AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run())
    if page is not None:
        ok(at.switch_page(f"pages/{page}.py").run())
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def joined(elements) -> str:
    return "\n".join(texts(elements))


def control_selectbox(at: AppTest):
    boxes = [s for s in at.selectbox if s.key and s.key.startswith("ctrl:")]
    assert len(boxes) == 1, [s.key for s in at.selectbox]
    return boxes[0]


def load_path(at: AppTest, path: str | Path) -> AppTest:
    if at.radio(key="data_mode").value != "File on the server":
        ok(at.radio(key="data_mode").set_value("File on the server").run())
    at.text_input(key="data_path").input(str(path))
    return ok(at.button(key="data_path_load").click().run())


def upload(at: AppTest, filename: str, data: bytes) -> AppTest:
    if at.radio(key="data_mode").value != "Upload an .h5ad":
        ok(at.radio(key="data_mode").set_value("Upload an .h5ad").run())
    uploaders = at.get("file_uploader")
    assert [u.key for u in uploaders] == ["data_upload"]
    uploaders[0].set_value((filename, data, "application/octet-stream"))
    return ok(at.run())


# ---- Data ---------------------------------------------------------------------------------
def test_data_page_shows_the_demo():
    at = start()
    m = metrics(at)
    assert m["Cells"] == DEMO_CELLS and m["Genes"] == DEMO_GENES
    assert "**Expression values:** log-normalised" in joined(at.markdown)
    assert at.selectbox(key="data_builtin").value == common.DEMO_DATASET
    text = joined(at.markdown)
    assert "5 combination(s) have every part measured alone" in text
    for combo in HELDOUT:
        assert combo in text
    # app.py's sidebar: the demo data and the bundled checkpoint are loaded by default
    sidebar = joined(at.sidebar.markdown)
    assert "norman19_devel" in sidebar and "bundled checkpoint norman19_devel" in sidebar
    assert at.session_state["model_key"] == "bundled:norman19_devel"
    assert not at.error
    assert len(at.get("plotly_chart")) == 1 and len(at.dataframe) == 1


def test_data_page_switches_builtin_dataset():
    at = start()
    ok(at.selectbox(key="data_builtin").set_value("synthetic").run())
    m = metrics(at)
    assert m["Cells"] != DEMO_CELLS and m["Genes"] != DEMO_GENES
    assert at.session_state["data_source"] == ("builtin", "synthetic")
    assert control_selectbox(at).key.startswith("ctrl:builtin:synthetic:")
    ok(at.selectbox(key="data_builtin").set_value("norman19_devel").run())
    assert metrics(at)["Cells"] == DEMO_CELLS


def test_data_page_control_label_changes_the_summary():
    at = start()
    before = metrics(at)
    box = control_selectbox(at)
    assert box.value == "control"
    new = "BPGM+SAMD1"  # a measured double: used as control it stops counting as a combination
    assert new in box.options
    ok(box.set_value(new).run())
    assert control_selectbox(at).value == new
    assert at.session_state["data_setup"]["builtin:norman19_devel"]["control_label"] == new
    after = metrics(at)
    assert int(after["Combinations"]) == int(before["Combinations"]) - 1
    assert after != before
    # and back: the original summary returns
    ok(control_selectbox(at).set_value("control").run())
    assert metrics(at) == before


def test_data_page_missing_path():
    at = load_path(start(), "/nonexistent/dir/screen.h5ad")
    assert "File not found: /nonexistent/dir/screen.h5ad" in joined(at.error)
    assert not at.metric


def test_data_page_garbage_h5ad(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"definitely not HDF5\x00\x01\x02" * 64)
    at = load_path(start(), bad)
    err = joined(at.error)
    assert "bad.h5ad" in err and "not an .h5ad file" in err
    assert not at.metric


def test_data_page_h5ad_without_obs_columns(tmp_path):
    path = tmp_path / "no_obs.h5ad"
    ad.AnnData(np.ones((6, 4), dtype=np.float32)).write_h5ad(path)
    at = load_path(start(), path)
    assert "obs has no columns" in joined(at.error)
    assert not at.metric


def test_data_page_bad_path_then_good_path(tmp_path, tiny_adata):
    at = load_path(start(), tmp_path / "missing.h5ad")
    assert "File not found" in joined(at.error)
    good = tmp_path / "tiny.h5ad"
    tiny_adata.write_h5ad(good)
    at = load_path(at, good)
    assert not at.error
    assert metrics(at)["Cells"] == f"{tiny_adata.n_obs:,}"
    assert at.session_state["data_source"] == ("path", str(good))


def test_data_page_raw_counts_preprocess(tmp_path, tiny_adata):
    counts = tiny_adata.copy()
    x = counts.X.toarray() if hasattr(counts.X, "toarray") else np.asarray(counts.X)
    counts.X = np.random.default_rng(0).poisson(np.expm1(x) * 5).astype(np.float32)
    counts.write_h5ad(tmp_path / "counts.h5ad")
    at = load_path(start(), tmp_path / "counts.h5ad")
    assert "**Expression values:** raw counts" in joined(at.markdown)
    assert "X holds raw counts" in joined(at.warning)
    at.number_input[0].set_value(20)
    at.checkbox[0].check()
    ok(at.button(key="FormSubmitter:preprocess-Apply").click().run())
    m = metrics(at)
    assert "**Expression values:** log-normalised" in joined(at.markdown)
    assert m["Genes"] == "20" and m["Cells"] == f"{counts.n_obs:,}"
    assert not at.warning
    setup = at.session_state["data_setup"][f"path:{tmp_path / 'counts.h5ad'}"]
    assert setup["preprocess"] is True and setup["n_top_genes"] == 20


def test_upload_over_the_size_limit_is_refused(monkeypatch):
    monkeypatch.setattr(common, "MAX_UPLOAD_MB", 0)
    at = upload(start(), "big.h5ad", b"\0" * (3 * 2**20))
    err = joined(at.error)
    assert "big.h5ad is 3 MB" in err and "uploads are limited to 0 MB" in err
    assert "at most 0 MB" in joined(at.caption)
    assert at.session_state["data_source"] == ("builtin", common.DEMO_DATASET)  # unchanged
    assert not at.metric


def test_upload_with_wrong_name_or_bytes(tiny_adata, tmp_path):
    at = upload(start(), "notes.txt", b"hello")
    assert "notes.txt is not an .h5ad file" in joined(at.error)
    at = upload(at, "broken.h5ad", b"not hdf5 at all" * 10)
    assert "Could not use broken.h5ad" in joined(at.error)
    assert at.session_state["data_source"] == ("builtin", common.DEMO_DATASET)
    # a real AnnData upload replaces the data source
    tiny_adata.write_h5ad(tmp_path / "tiny.h5ad")
    at = upload(at, "tiny.h5ad", (tmp_path / "tiny.h5ad").read_bytes())
    assert not at.error
    assert metrics(at)["Cells"] == f"{tiny_adata.n_obs:,}"
    source = at.session_state["data_source"]
    assert source[0] == "upload" and source[2] == "tiny.h5ad"


def _add_upload_script(cases):
    import streamlit as st

    from pages import common

    for name, data in cases:
        st.write(f"{name}: {common.add_upload(name, data)}")


def test_add_upload_messages(monkeypatch):
    """pages.common.add_upload on its own (it needs a Streamlit session for session_state)."""
    monkeypatch.setattr(common, "MAX_UPLOAD_MB", 1)
    cases = [("huge.h5ad", b"\0" * (2 * 2**20 + 1)), ("small.csv", b"a,b\n1,2\n"), ("SMALL.H5AD", b"junk")]
    at = AppTest.from_function(_add_upload_script, args=(cases,), default_timeout=60).run()
    ok(at)
    lines = texts(at.markdown)
    assert len(lines) == 3, lines
    assert lines[0].startswith("huge.h5ad: huge.h5ad is 2 MB; uploads are limited to 1 MB")
    assert "small.csv is not an .h5ad file" in lines[1]
    assert lines[2].startswith("SMALL.H5AD: Could not use SMALL.H5AD")  # the suffix check ignores case
    assert "upload_bytes" not in at.session_state


# ---- Model --------------------------------------------------------------------------------
def test_model_page_shows_the_bundled_model():
    at = start("model")
    assert "bundled checkpoint norman19_devel" in joined(at.subheader)
    held = next(t for t in texts(at.markdown) if t.startswith("Held out during training"))
    for combo in HELDOUT:
        assert combo in held
    assert metrics(at)["Genes"] == DEMO_GENES
    assert [n.label for n in at.number_input][:2] == ["Max epochs", "Seed"]
    assert at.button(key=SUBMIT_TRAINING).label == "Start training"
    assert len(at.get("download_button")) == 1  # the checkpoint zip


def test_model_page_load_from_path_and_save(tmp_path):
    at = start("model")
    at.text_input(key="model_path").input(str(tmp_path / "nothing_here"))
    ok(at.button(key="model_load_path").click().run())
    assert f"Checkpoint not found: {tmp_path / 'nothing_here'}" in joined(at.error)
    assert at.session_state["model_key"] == "bundled:norman19_devel"
    at.text_input(key="model_path").input(str(ROOT / "checkpoints" / "norman19_devel"))
    ok(at.button(key="model_load_path").click().run())
    assert at.session_state["model_key"] == f"path:{ROOT / 'checkpoints' / 'norman19_devel'}"
    assert not at.error
    at.text_input(key="save_dir").input(str(tmp_path / "saved"))
    ok(at.button(key="save_button").click().run())
    assert f"Saved to {tmp_path / 'saved'}" in joined(at.success)
    assert (tmp_path / "saved" / "config.json").is_file()


@pytest.mark.slow
def test_model_page_trains_a_model():
    at = start("model")
    next(n for n in at.number_input if n.label == "Max epochs").set_value(1)
    ok(at.button(key=SUBMIT_TRAINING).click().run())
    job = at.session_state["train_job"]
    assert job is not None
    deadline = time.time() + 120
    while not job.snapshot().finished:
        assert time.time() < deadline, f"training did not finish in 120 s: {job.snapshot()}"
        time.sleep(1.0)
        ok(at.run())  # what the page's progress fragment does every second
    snap = job.snapshot()
    assert snap.state.value == "done", snap.error
    ok(at.run())
    key = at.session_state["model_key"]
    assert key.startswith("trained:")
    trained = at.session_state["trained"][key.removeprefix("trained:")]
    assert sorted(trained.holdout) == sorted(HELDOUT)  # the form pre-selects the testable doubles
    assert any("It is the loaded model now" in s for s in texts(at.success))
    assert "trained in this session" in joined(at.subheader)
    # the new model is what the other pages use
    ok(at.switch_page("pages/benchmark.py").run())
    assert at.session_state["model_key"] == key


# ---- Compose ------------------------------------------------------------------------------
def test_compose_page_default_and_changes():
    at = start("compose")
    assert at.multiselect(key="compose_perts").value == ["KLF1", "MAP2K6"]  # the first held-out double
    verdict = joined(at.success)
    assert "**KLF1+MAP2K6**: Both KLF1 and MAP2K6 were measured alone" in verdict and "span" not in verdict
    assert "held out during training" in verdict
    assert len(at.get("plotly_chart")) >= 3
    assert [b.key for b in at.get("download_button")] == ["dl_departure", "dl_h5ad", "dl_csv", "dl_report"]
    assert "observed cells of KLF1+MAP2K6" in joined(at.caption)

    ok(at.multiselect(key="compose_perts").set_value(["KLF1", "TGFBR2"]).run())
    verdict = joined(at.success)
    assert "**KLF1+TGFBR2**: Both KLF1 and TGFBR2 were measured alone" in verdict
    assert "KLF1+MAP2K6" not in verdict

    ok(at.slider(key="w:KLF1").set_value(0.5).run())
    verdict = joined(at.success)
    assert "**KLF1:0.5+TGFBR2**" in verdict and "held out" not in verdict
    assert "KLF1:0.5+TGFBR2 was not measured in this dataset" in joined(at.caption)

    ok(at.slider(key="w:KLF1").set_value(0.0).run())
    assert "**TGFBR2**" in joined(at.info)  # a measured single: seen in training
    ok(at.slider(key="w:TGFBR2").set_value(0.0).run())
    assert "Choose at least one perturbation with a non-zero dose" in joined(at.info)
    assert not at.success and not at.get("plotly_chart") and not at.get("download_button")

    ok(at.multiselect(key="compose_perts").set_value([]).run())
    assert "Choose at least one perturbation" in joined(at.info)


def test_compose_page_preset_and_page_switch():
    at = start("compose")
    preset = at.selectbox(key="compose_preset")
    assert preset.value == "KLF1+MAP2K6 (held out)" and preset.options[0] == "Choose your own combination"
    assert [o for o in preset.options if o.endswith("(held out)")] == [f"{c} (held out)" for c in HELDOUT]
    ok(preset.set_value("MAP2K3+MAP2K6 (held out)").run())
    assert at.multiselect(key="compose_perts").value == ["MAP2K3", "MAP2K6"]
    assert "**MAP2K3+MAP2K6**" in joined(at.success)
    # the choice survives a visit to another page
    ok(at.slider(key="w:MAP2K3").set_value(1.5).run())
    ok(at.switch_page("pages/data.py").run())
    ok(at.switch_page("pages/compose.py").run())
    assert at.multiselect(key="compose_perts").value == ["MAP2K3", "MAP2K6"]
    assert at.slider(key="w:MAP2K3").value == 1.5
    # MAP2K3 was measured at dose 1 only: in the span, but flagged as beyond the measured doses
    assert "**MAP2K3:1.5+MAP2K6**" in joined(at.warning)
    assert "MAP2K3 at dose 1.5 is beyond anything measured" in joined(at.warning)
    assert at.selectbox(key="compose_preset").value == "Choose your own combination"
    assert "MAP2K3:1.5" not in joined(at.success)


def test_compose_page_without_a_model():
    at = start()
    at.session_state["model_key"] = None
    ok(at.switch_page("pages/compose.py").run())
    assert "Load or train a model on the **Model** page first." in joined(at.info)
    assert len(at.get("page_link")) == 1
    assert not at.get("plotly_chart") and not at.multiselect


def test_compose_page_model_does_not_fit_the_data():
    at = start()
    ok(at.selectbox(key="data_builtin").set_value("synthetic").run())
    ok(at.switch_page("pages/compose.py").run())
    assert "The loaded model does not fit synthetic" in joined(at.error)
    assert not at.get("plotly_chart")


# ---- Embeddings ---------------------------------------------------------------------------
def test_embeddings_page():
    at = start("embeddings")
    assert len(at.get("plotly_chart")) >= 4
    assert at.radio(key="emb_which").value == "z_base"
    ok(at.radio(key="emb_which").set_value("z").run())
    assert at.radio(key="emb_which").value == "z"
    assert len(at.get("plotly_chart")) >= 4
    colour = at.radio(key="emb_colour")
    ok(colour.set_value(colour.options[1]).run())
    assert len(at.get("plotly_chart")) >= 4


def test_embeddings_page_without_a_model():
    at = start()
    at.session_state["model_key"] = None
    ok(at.switch_page("pages/embeddings.py").run())
    assert "Load or train a model" in joined(at.info)
    assert not at.get("plotly_chart")


# ---- Benchmark ----------------------------------------------------------------------------
def test_benchmark_page():
    at = start("benchmark")
    held = [d.value for d in at.dataframe if set(map(str, d.value.index)) == set(HELDOUT)]
    assert len(held) == 1, [list(d.value.index) for d in at.dataframe]
    table = held[0]
    assert {"pdae", "additive", "no change"} <= set(table.columns)
    assert np.isfinite(table.to_numpy(dtype=float)).all()
    assert "5 conditions the model never saw" in joined(at.markdown)
    saved = at.selectbox(key="bench_saved")
    assert saved.value == "norman19_devel"
    assert "synthetic" in saved.options


def test_benchmark_page_runs_a_benchmark(tmp_path):
    at = start("benchmark")
    out = tmp_path / "bench"
    at.session_state["bench_out"] = str(out)  # instead of a fresh mkdtemp
    models = next(m for m in at.multiselect if m.label == "Models")
    models.set_value(["additive", "control"])  # untrained models: a second or two
    ok(at.button(key="FormSubmitter:bench_form-Run").click().run())
    job = at.session_state["bench_job"]
    deadline = time.time() + 120
    while not job.snapshot().finished:
        assert time.time() < deadline, f"benchmark did not finish in 120 s: {job.snapshot()}"
        time.sleep(0.5)
        ok(at.run())
    assert job.snapshot().state.value == "done", job.snapshot().error
    ok(at.run())
    assert f"Done; results in {out}." in joined(at.success)
    assert (out / "summary.md").is_file() and (out / "per_condition.csv").is_file()
    assert str(out) in at.selectbox(key="bench_saved").options
    assert at.selectbox(key="run_metric").value == "energy_distance"


def test_offline_without_demo_data_opens_with_bundled_model_and_offers_synthetic(tmp_path, monkeypatch):
    """No demo file and no network: the Data page says in one line where to get the data
    and offers the synthetic dataset; the bundled model still loads."""
    import urllib.error

    import pdae_core.data.datasets.download as download

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setenv("PDAE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(download, "_urlopen", offline)
    at = start()
    warning = joined(at.warning)
    assert "norman19_devel is not on this machine and could not be downloaded" in warning
    assert str(tmp_path) in warning and "PDAE_DATA_DIR" in warning
    assert not at.metric  # no dataset summary
    assert at.session_state["model_key"] == "bundled:norman19_devel"
    ok(at.button(key="data_use_synthetic").click().run())
    assert metrics(at)["Cells"] != DEMO_CELLS and not at.warning
    ok(at.switch_page("pages/model.py").run())
    assert "bundled checkpoint norman19_devel" in joined(at.subheader)


def test_unexpected_error_shows_a_message_not_a_traceback(monkeypatch):
    """app.py turns an error no page anticipated into one message; the session survives."""
    from pdae_core import explore

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(explore, "summarize_dataset", broken)
    at = start()  # the Data page, through app.py
    assert not at.exception
    assert any("unexpected error (RuntimeError: simulated failure)" in e.value for e in at.error)
    assert "bundled checkpoint norman19_devel" in joined(at.sidebar.markdown)  # the sidebar still renders


@pytest.mark.parametrize("model_type", ["samsvae", "sccvae", "fcr"])
def test_every_page_works_with_a_peer_model(model_type, data_dir, tmp_path):
    """A peer model (briefly trained on the demo, saved, loaded from its path on the Model
    page) drives Compose, Embeddings and Benchmark like the PDAE."""
    import pdae_core as pc
    from pdae_core.data.datasets import load_dataset
    from pdae_core.models.catalog import MODEL_TYPES

    adata = load_dataset("norman19_devel", data_dir=data_dir)
    reg = pc.setup_anndata(adata, "condition", "control")
    model = MODEL_TYPES[model_type](reg, seed=0)
    model.fit(adata, holdout=HELDOUT, accelerator="cpu", max_steps=10, seed=0)
    model.save(tmp_path / model_type)
    at = start("model")
    at.text_input(key="model_path").input(str(tmp_path / model_type))
    ok(at.button(key="model_load_path").click().run())
    assert at.session_state["model_key"] == f"path:{tmp_path / model_type}"
    ok(at.switch_page("pages/compose.py").run())
    assert any("were measured alone" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) >= 3
    ok(at.switch_page("pages/embeddings.py").run())
    assert len(at.get("plotly_chart")) >= 4
    ok(at.switch_page("pages/benchmark.py").run())
    table = at.dataframe[0].value
    assert sorted(table.index) == sorted(HELDOUT) and model_type in table.columns


# ---- Interactions ---------------------------------------------------------------------------
def _spec(chart) -> dict:
    import json

    return json.loads(chart.proto.spec)


def _pairs_table(at: AppTest):
    tables = [d.value for d in at.dataframe if "Pair" in d.value.columns]
    assert len(tables) == 1, [list(d.value.columns) for d in at.dataframe]
    table = tables[0]
    return table.data if hasattr(table, "data") else table  # a Styler: its DataFrame


def test_interactions_page_ranks_every_pair_of_the_demo():
    at = start("interactions")
    assert not at.error
    m = metrics(at)
    assert m["Pairs"] == "153" and m["Singles"] == "18" and m["Measured pairs"] == "5" and m["Networks"] == "1"
    labels = [e.label for e in at.expander]  # two help boxes, told apart by their names
    assert labels[:2] == ["How to read this page", "What the numbers mean"] and len(set(labels)) == len(labels)
    assert "One network: no uncertainty" in joined(at.caption) and "load the bundled ensemble" in joined(at.caption)
    assert at.button(key="ia_load_ensemble").label == "Load the ensemble of 5 networks"
    score = at.selectbox(key="ia_score")
    assert score.value == "test_next" and "uncertain" not in score.options  # no spread with one network
    charts = at.get("plotly_chart")
    heat = _spec(charts[0])
    assert [t["type"] for t in heat["data"]].count("heatmap") == 1  # no spread panel
    assert len(heat["data"][0]["x"]) == 18
    assert any(t.get("name") == "measured, held out (a true test)" for t in heat["data"])
    assert any("predicted vs observed magnitude" in _spec(c)["layout"]["title"]["text"] for c in charts[1:])
    table = _pairs_table(at)
    assert len(table) == 153 and table["Pair"].is_unique
    assert set(table.loc[table["Measured?"] == "held out", "Pair"]) == set(HELDOUT)
    assert table["Non-additivity"].is_monotonic_decreasing  # test next = non-additivity for one network
    assert "± magnitude" not in table.columns
    # which genes each pair moves most from the sum of its parts: as Compose lists them for the pair
    import pdae_core as pc
    from pdae_core.data.datasets import load_dataset
    from pdae_core.eval.pair_screen import pair_interaction

    first = table.iloc[0]
    genes = pair_interaction(pc.load_model(ROOT / "checkpoints" / "norman19_devel"), load_dataset("norman19_devel"),
                             *first["Pair"].split("+")).genes_table
    assert first["Genes departing most from the sum"].split(";")[0].split()[0] == genes["gene"].iloc[0]
    top, order = table["Pair"].iloc[0], list(table["Pair"])
    assert at.selectbox(key="ia_pair").value == top
    # another score reorders the table and starts from its own first pair
    ok(score.set_value("buffering").run())
    table = _pairs_table(at)
    assert table["Magnitude"].is_monotonic_increasing and list(table["Pair"]) != order
    assert at.selectbox(key="ia_pair").value == table["Pair"].iloc[0]
    assert "Ranked pairs: strongest buffering" in joined(at.subheader)
    ok(at.selectbox(key="ia_score").set_value("synergy").run())
    assert _pairs_table(at)["Magnitude"].is_monotonic_decreasing
    ok(at.button(key="ia_load_ensemble").click().run())  # one click to the bundled ensemble: now with a spread
    assert at.session_state["model_key"] == "bundled:norman19_devel_ensemble"
    assert metrics(at)["Networks"] == "5" and "One network" not in joined(at.caption)
    assert not [b for b in at.button if b.key == "ia_load_ensemble"]
    assert (_pairs_table(at)["± non-additivity"] > 0).all()


def test_interactions_page_opens_a_pair_in_compose():
    import pdae_core as pc
    from pdae_core.data.datasets import load_dataset
    from pdae_core.eval.pair_screen import screen_pairs

    at = start("interactions")
    ok(at.selectbox(key="ia_pair").set_value("MAPK1+TGFBR2").run())
    assert at.button(key="ia_open").label == "Open MAPK1+TGFBR2 in Compose"
    ok(at.button(key="ia_open").click().run())
    assert at.session_state["compose_perts"] == ["MAPK1", "TGFBR2"]
    assert at.session_state["w:MAPK1"] == at.session_state["w:TGFBR2"] == 1.0
    assert at.multiselect(key="compose_perts").value == ["MAPK1", "TGFBR2"]  # Compose now shows the pair
    assert "**MAPK1+TGFBR2**" in joined(at.success)
    # its interaction box: the same numbers as the pair's row of the screen
    model = pc.load_model(ROOT / "checkpoints" / "norman19_devel")
    row = screen_pairs(model, load_dataset("norman19_devel")).set_index("pair").loc["MAPK1+TGFBR2"]
    box = joined(at.markdown)
    assert "**Interaction of MAPK1 + TGFBR2** · Predicted " in box
    assert f"| **predicted** | {row['magnitude']:.2f} | {row['normalised_residual']:.2f} |" in box
    assert (f"| **observed** (held out from training: a true test) | {row['observed_magnitude']:.2f} | "
            f"{row['observed_normalised_residual']:.2f} |") in box
    assert "Observed in norman19_devel: " in box
    assert "against the parts as measured" in joined(at.caption)  # the demo measured every single


def test_compose_interaction_box_only_for_a_pair_of_singles_at_dose_one():
    at = start("compose")  # the first held-out double, KLF1+MAP2K6
    box = joined(at.markdown)
    assert "**Interaction of KLF1 + MAP2K6** · Predicted " in box
    assert "| **predicted** | " in box and "| **observed** (held out from training: a true test) | " in box
    assert "One network: no uncertainty" in joined(at.caption) and " ± " not in box
    assert "load the bundled ensemble norman19_devel_ensemble" in joined(at.caption)  # where the spread is
    ok(at.multiselect(key="compose_perts").set_value(["KLF1", "MAPK1"]).run())  # never measured together
    box = joined(at.markdown)
    assert "**Interaction of KLF1 + MAPK1** · Predicted " in box
    assert "| **observed** | not measured in norman19_devel | |" in box and "Observed in" not in box
    ok(at.slider(key="w:KLF1").set_value(0.5).run())  # a dose other than 1: the screen does not score it
    assert not any("Interaction of" in t or "| **predicted** |" in t for t in texts(at.markdown))
    assert not any("departs from the sum" in t for t in texts(at.subheader))


def _departure_table(at: AppTest):
    tables = [d.value for d in at.dataframe if "Predicted departure from the sum" in d.value.columns]
    assert len(tables) == 1, [list(d.value.columns) for d in at.dataframe]
    return tables[0].data if hasattr(tables[0], "data") else tables[0]


def test_compose_shows_where_a_pair_departs_from_the_sum_of_its_parts():
    """Gene by gene: the library's departures of the pair, the chart of the largest, and for a
    measured pair how the predicted departure agrees with the observed one."""
    import pdae_core as pc
    from pdae_core.data.datasets import load_dataset
    from pdae_core.eval.departure import agreement_in_words, departure_agreement
    from pdae_core.eval.pair_screen import pair_interaction

    at = start("compose")  # KLF1+MAP2K6, held out and measured
    assert "Where KLF1 + MAP2K6 departs from the sum of its parts" in joined(at.subheader)
    model = pc.load_model(ROOT / "checkpoints" / "norman19_devel")
    want = pair_interaction(model, load_dataset("norman19_devel"), "KLF1", "MAP2K6").genes_table
    shown = _departure_table(at)
    assert list(shown["Gene"]) == list(want["gene"].head(len(shown)))
    np.testing.assert_allclose(shown["Predicted departure from the sum"], want["departure"].head(len(shown)), rtol=1e-6)
    np.testing.assert_allclose(shown["Observed departure from the sum"],
                               want["observed_departure"].head(len(shown)), rtol=1e-6)
    assert agreement_in_words(departure_agreement(want)) in joined(at.markdown)
    chart = [c for c in at.get("plotly_chart") if "departs from the sum" in _spec(c)["layout"]["title"]["text"]]
    assert len(chart) == 1
    bars = _spec(chart[0])["data"][0]
    assert bars["y"][-1] == want["gene"].iloc[0] and len(bars["y"]) == 20  # the largest on top
    assert "error_x" not in bars or not bars["error_x"]  # one network: no range, no spread
    assert "Error bars: none (one network)." in joined(at.caption)
    ok(at.multiselect(key="compose_perts").set_value(["KLF1", "MAPK1"]).run())  # never measured together
    assert "Where KLF1 + MAPK1 departs from the sum of its parts" in joined(at.subheader)
    assert "Observed departure from the sum" not in _departure_table(at).columns
    assert "Predicted and observed departures agree" not in joined(at.markdown)
    # the bundled ensemble: its networks' spread as error bars, said not to be a likely range
    ok(at.switch_page("pages/model.py").run())
    at.selectbox(key="model_bundled").set_value("norman19_devel_ensemble")
    ok(at.button(key="model_load_bundled").click().run())
    ok(at.switch_page("pages/compose.py").run())
    assert at.session_state["model_key"] == "bundled:norman19_devel_ensemble"
    chart = [c for c in at.get("plotly_chart") if "departs from the sum" in _spec(c)["layout"]["title"]["text"]]
    assert "not a likely range" in _spec(chart[0])["data"][0]["name"]
    assert "This is not a likely range" in joined(at.caption)
    assert (_departure_table(at)["± across networks"] > 0).all()


def test_interactions_page_with_an_ensemble(data_dir, tmp_path):
    """An ensemble brings the spread: the second heatmap, ± columns, the Most uncertain ranking,
    and on Compose the spread and how many networks agree."""
    import pdae_core as pc
    from pdae_core.data.datasets import load_dataset

    adata = load_dataset("norman19_devel", data_dir=data_dir)
    model = pc.PDAE.from_anndata(adata, "condition", "control", seed=0, n_members=2)
    model.fit(adata, holdout=HELDOUT, accelerator="cpu", max_steps=5, seed=0)
    model.save(tmp_path / "ens")
    at = start("model")
    at.text_input(key="model_path").input(str(tmp_path / "ens"))
    ok(at.button(key="model_load_path").click().run())
    ok(at.switch_page("pages/interactions.py").run())
    assert metrics(at)["Networks"] == "2"
    assert "One network" not in joined(at.caption)
    assert at.toggle(key="ia_spread").value is True
    heat = _spec(at.get("plotly_chart")[0])
    assert [t["type"] for t in heat["data"]].count("heatmap") == 2
    table = _pairs_table(at)
    assert {"± magnitude", "± non-additivity", "Test-next score"} <= set(table.columns)
    assert (table["± magnitude"] > 0).all()
    ok(at.selectbox(key="ia_score").set_value("uncertain").run())
    table = _pairs_table(at)
    assert table["± non-additivity"].is_monotonic_decreasing
    ok(at.toggle(key="ia_spread").set_value(False).run())
    assert [t["type"] for t in _spec(at.get("plotly_chart")[0])["data"]].count("heatmap") == 1
    ok(at.selectbox(key="ia_pair").set_value("KLF1+MAP2K6").run())
    ok(at.button(key="ia_open").click().run())
    assert re.search(r"\| \*\*predicted\*\* \| \d+\.\d\d ± \d+\.\d\d \| ", joined(at.markdown))
    assert " of 2 networks call it " in joined(at.caption)


def test_the_app_freezes_its_imports_once_so_full_collections_stay_short():
    """app.py moves the objects of its imports (torch, plotly, Streamlit, pdae_core...) out of reach
    of Python's full garbage collections once (issue 16: such a collection took 0.4 s inside a
    what-if change): the frozen set is the imported world, and later runs add nothing to it."""
    import gc

    start()
    frozen = gc.get_freeze_count()
    assert frozen > 100_000 and "torch" in sys.modules and "plotly.graph_objects" in sys.modules
    start("compose")
    assert gc.get_freeze_count() <= frozen  # once per process (frozen objects freed since leave the count)
    gc.collect()
    assert len(gc.get_objects()) < frozen  # what a full collection still walks: much less than before


def _interactions_with(data: Path, checkpoint: Path) -> AppTest:
    """The Interactions page with the data file ``data`` and the checkpoint folder ``checkpoint`` loaded."""
    at = start()
    load_path(at, data)
    ok(at.switch_page("pages/model.py").run())
    at.text_input(key="model_path").input(str(checkpoint))
    ok(at.button(key="model_load_path").click().run())
    ok(at.switch_page("pages/interactions.py").run())
    return at


def test_interactions_page_with_the_corrected_estimate(tmp_path):
    """A cross-fitted ensemble whose training pairs are measured in the loaded data: the page offers
    the corrected (stacked) estimate by default, says how it fared on the training pairs, ranks and
    colours by it, and switches back to the model alone."""
    from test_stacking import stacked_profile_model

    model, profiles = stacked_profile_model()
    profiles.write_h5ad(tmp_path / "profiles.h5ad")
    model.save(tmp_path / "ens")
    at = _interactions_with(tmp_path / "profiles.h5ad", tmp_path / "ens")
    assert at.radio(key="ia_estimate").value == "stacked"
    # profiles (one row per condition) have no cell-to-cell noise: no planned-experiment input
    assert not any(n.key == "ia_plan_cells" for n in at.number_input)
    assert re.search(r"Corrected by \d+ measured training pairs.*Spearman ρ -?\d\.\d\d", joined(at.caption))
    ok(at.selectbox(key="ia_score").set_value("least_additive").run())
    table = _pairs_table(at)
    assert {"Non-additivity, corrected", "Corrected non-additivity, likely range", "Non-additivity"} <= set(table.columns)
    assert table["Non-additivity, corrected"].is_monotonic_decreasing
    heat = _spec(at.get("plotly_chart")[0])
    assert "non-additivity, corrected" in json_text(heat)
    top = table["Pair"].iloc[0]
    ok(at.radio(key="ia_estimate").set_value("model").run())
    table = _pairs_table(at)
    assert "Non-additivity, corrected" not in table.columns and table["Non-additivity"].is_monotonic_decreasing
    # Compose shows the pair's corrected estimate beside the model's prediction
    ok(at.selectbox(key="ia_pair").set_value(top).run())
    ok(at.button(key="ia_open").click().run())
    assert re.search(r"\| \*\*corrected\*\* by measured pairs \(likely range\) \| \d+\.\d\d \(\d+\.\d\d to \d+\.\d\d\)",
                     joined(at.markdown))
    # ... and each gene's departure reweighted by how the networks fared on the training pairs they did not see
    from pdae_core.eval.departure import recalibration_in_words

    dep = model.calibration.departure
    assert dep is not None
    assert recalibration_in_words({"doubles": float(dep.n_doubles), "pearson": dep.pearson,
                                   "pearson_networks": dep.pearson_networks}) in joined(at.caption)
    shown = _departure_table(at).set_index("Gene")
    pos = [model.registry.gene_names.index(g) for g in shown.index]
    np.testing.assert_allclose(shown["Predicted departure from the sum"],
                               dep.weight[pos] * shown["The networks' own departure (before reweighting)"]
                               + dep.sum_weight[pos] * shown["Sum of the parts"], rtol=1e-5, atol=1e-6)


def test_interactions_page_plans_an_experiment_with_a_number_of_cells(tmp_path):
    """A cross-fitted ensemble trained on cells: the page asks how many cells per pair a follow-up
    experiment would measure, and the table adds the non-additivity such an experiment would show."""
    import pdae_core as pc
    from pdae_core.data.synthetic import make_synthetic

    adata, _ = make_synthetic(n_perturbations=6, latent_dim=3, n_genes=24, hidden=16, n_doubles=10,
                              cells_per_condition=30, seed=4)
    ens = pc.PDAE.from_anndata(adata, seed=1, n_members=2, cross_fit=True, latent_dim=3, hidden_dims=(16,),
                               noise_dim=2, n_sources=4)
    ens.fit(adata, holdout=["P1+P2"], max_epochs=2, batch_size=64, accelerator="cpu")
    assert ens.calibration.cell_noise is not None
    adata.write_h5ad(tmp_path / "cells.h5ad")
    ens.save(tmp_path / "ens")
    at = _interactions_with(tmp_path / "cells.h5ad", tmp_path / "ens")
    plan = at.number_input(key="ia_plan_cells")
    assert plan.value == 0 and "noise" in plan.help
    label = "Non-additivity your experiment would show"
    assert label not in _pairs_table(at).columns
    ok(plan.set_value(5).run())
    few = _pairs_table(at).set_index("Pair")[label]
    assert few.str.fullmatch(r"\d+\.\d\d to \d+\.\d\d").all()
    assert "ranges for 5 cells per pair" in joined(at.markdown)
    ok(at.number_input(key="ia_plan_cells").set_value(500).run())
    many = _pairs_table(at).set_index("Pair")[label]

    def top(text):
        return float(text.split(" to ")[1])

    # fewer cells: noise widens the range and lifts it (it makes a pair look less additive)
    assert all(top(few[p]) >= top(many[p]) for p in few.index) and any(top(few[p]) > top(many[p]) for p in few.index)


def json_text(spec: dict) -> str:
    import json

    return json.dumps(spec)


def test_bundled_ensemble_is_found_only_for_the_same_genes_and_perturbations(tmp_path, monkeypatch):
    """The Interactions page offers a bundled ensemble in place of a single network only when it
    predicts the same pairs (same genes and perturbations); a broken bundle is passed over, and an
    ensemble is never offered another."""
    import pdae_core as pc
    from pdae_core.data.synthetic import make_synthetic

    adata, _ = make_synthetic(n_perturbations=4, latent_dim=2, n_genes=12, hidden=8, n_doubles=2,
                              cells_per_condition=10, seed=0)
    small = dict(latent_dim=2, hidden_dims=[8], noise_dim=2)

    def trained(data, members=1):
        m = pc.PDAE.from_anndata(data, "condition", "control", seed=0, n_members=members, **small)
        m.fit(data, accelerator="cpu", max_steps=1, seed=0)
        return m

    single = trained(adata)
    bundles = tmp_path / "checkpoints"
    single.save(bundles / "a_single")
    monkeypatch.setattr(common, "BUNDLED_CHECKPOINTS", bundles)
    assert common.bundled_ensemble(single, "bundled:a_single") is None  # no ensemble bundled
    trained(adata[:, 1:].copy(), members=2).save(bundles / "b_other_genes")
    (bundles / "c_broken").mkdir()
    (bundles / "c_broken" / "config.json").write_text("{not json")
    assert common.bundled_ensemble(single, "bundled:a_single") is None
    ensemble = trained(adata, members=3)
    ensemble.save(bundles / "d_ensemble")
    assert common.bundled_ensemble(single, "bundled:a_single") == ("d_ensemble", 3)
    assert common.bundled_ensemble(ensemble, "bundled:d_ensemble") is None
