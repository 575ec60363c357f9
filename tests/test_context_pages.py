"""The dashboard with a context column (cell type): hold a perturbation out in one context on
the Model page; predict from one context's cells on Compose, with the verdict naming it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_contexts import context_data  # noqa: E402

SUBMIT = "FormSubmitter:train_form-Start training"


def ok(at: AppTest) -> AppTest:
    assert not at.exception, "\n".join(f"{e.message}\n{''.join(e.stack_trace)}" for e in at.exception)
    return at


@pytest.fixture()
def app_with_contexts(tmp_path) -> AppTest:
    path = tmp_path / "contexts.h5ad"
    context_data(n=30).write_h5ad(path)
    at = ok(AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run())
    ok(at.radio(key="data_mode").set_value("File on the server").run())
    at.text_input(key="data_path").input(str(path))
    ok(at.button(key="data_path_load").click().run())
    cov = next(s for s in at.selectbox if s.key and s.key.startswith("cov:"))
    ok(cov.set_value("cell_type").run())
    return at


def test_model_page_holds_out_a_perturbation_in_one_context_and_compose_names_it(app_with_contexts):
    at = app_with_contexts
    ok(at.switch_page("pages/model.py").run())
    pairs = at.multiselect(key="train_holdout_pairs")
    assert "stim in CD14+Mono" in pairs.options and "control in A172" not in pairs.options
    pairs.set_value(["stim in CD14+Mono"])
    next(n for n in at.number_input if n.label == "Max epochs").set_value(2)
    ok(at.button(key=SUBMIT).click().run())
    job = at.session_state["train_job"]
    deadline = time.time() + 120
    while not job.snapshot().finished:
        assert time.time() < deadline, job.snapshot()
        time.sleep(1.0)
        ok(at.run())
    assert job.snapshot().state.value == "done", job.snapshot().error
    ok(at.run())
    key = at.session_state["model_key"]
    trained = at.session_state["trained"][key.removeprefix("trained:")]
    assert "stim@CD14+Mono" in trained.holdout
    assert ["stim", "CD14+Mono"] not in trained.train_pairs

    ok(at.switch_page("pages/compose.py").run())
    ok(at.multiselect(key="compose_perts").set_value(["stim"]).run())
    ok(at.selectbox(key="compose_context").set_value("CD14+Mono").run())
    shown = "\n".join(e.value for e in [*at.success, *at.warning, *at.info, *at.error, *at.caption])
    assert "**stim** was measured in training (in A172 and T98G), but never in CD14+Mono" in shown
    assert "held out during training" in shown
    # the identity check is shown (2 epochs of training may or may not keep the cell type yet)
    assert "Predicted cells keep their cell type" in shown or "This model does not keep the cell type" in shown
    assert "from CD14+Mono cells" in shown
