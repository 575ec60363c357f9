"""Issue 16 bugs 3-5 and the ensemble size of the Model page (issue 15).

- Bug 3 (Data): a valid .h5ad with no perturbation-like column must not get a guessed
  one (``total_counts`` with control "52.0", ``batch`` with control "b1"): the page says
  why none was picked and asks the user to choose; the other pages do not crash.
- Bug 4 (Model): cancelling a training run keeps the loaded model unless the user
  chooses the partly trained one.
- Bug 5 (Model): one loss chart while training, no negative ticks for non-negative
  quantities, readable names, and the chart holds the evaluation the status line reports.
- Ensembles: the form's "Ensemble size", progress per network, the time limit covering
  the whole ensemble, a cancel that keeps the networks trained so far.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from pdae_core import PDAE
from pdae_core.data.columns import guess_columns
from pdae_core.data.synthetic import make_synthetic
from pdae_core.train.jobs import JobState, Reporter, TrainingCallback, training_job
from pdae_core.train.loop import Callback

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the pages import ``pages.common`` from the repository root
    sys.path.insert(0, str(ROOT))

TIMEOUT = 300
SUBMIT_TRAINING = "FormSubmitter:train_form-Start training"


# ---- helpers ------------------------------------------------------------------------------
def obs_adata(obs: dict, n_genes: int = 4, seed: int = 0) -> ad.AnnData:
    df = pd.DataFrame(obs)
    df.index = [f"c{i}" for i in range(len(df))]
    X = np.random.default_rng(seed).uniform(0.1, 2.0, size=(len(df), n_genes)).astype(np.float32)
    return ad.AnnData(X, obs=df, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def h5ad_bytes(adata: ad.AnnData) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        adata.write_h5ad(Path(d) / "x.h5ad")
        return (Path(d) / "x.h5ad").read_bytes()


def no_pert_column(n: int = 24) -> ad.AnnData:
    """A valid file whose obs holds QC numbers and a batch: nothing names a perturbation."""
    return obs_adata({
        "total_counts": np.linspace(52.0, 900.0, n),
        "n_genes_by_counts": np.arange(n) % 7 + 3,
        "batch": ["b1", "b2"] * (n // 2),
    })


def ok(at: AppTest) -> AppTest:
    assert not at.exception, "\n".join(f"{e.message}\n{''.join(e.stack_trace)}" for e in at.exception)
    assert not any("unexpected error" in e.value for e in at.error), [e.value for e in at.error]
    return at


def start(page: str | None = None) -> AppTest:
    at = ok(AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run())
    if page is not None:
        ok(at.switch_page(f"pages/{page}.py").run())
    return at


def upload(at: AppTest, filename: str, data: bytes) -> AppTest:
    if at.radio(key="data_mode").value != "Upload an .h5ad":
        ok(at.radio(key="data_mode").set_value("Upload an .h5ad").run())
    at.get("file_uploader")[0].set_value((filename, data, "application/octet-stream"))
    return ok(at.run())


def joined(elements) -> str:
    return "\n".join(e.value for e in elements)


def box(at: AppTest, prefix: str):
    boxes = [s for s in at.selectbox if s.key and s.key.startswith(prefix)]
    assert len(boxes) == 1, [s.key for s in at.selectbox]
    return boxes[0]


def spec(chart) -> dict:
    return json.loads(chart.proto.spec)


# ---- bug 3: column detection ---------------------------------------------------------------
def test_numeric_and_unnamed_columns_are_never_picked():
    g = guess_columns(no_pert_column())
    assert g.perturbation_key is None and g.control_label is None
    assert g.perturbation_candidates == ["batch"]  # offered to choose from, not picked
    assert set(g.numeric_columns) == {"total_counts", "n_genes_by_counts"}
    assert "No column of this dataset looks like perturbation labels" in g.reason
    assert "total_counts" in g.reason and "never perturbation labels" in g.reason
    assert "batch (2 values)" in g.reason


def test_numeric_categories_and_only_numbers():
    adata = obs_adata({"total_counts": [52.0, 60.0, 71.0] * 4,
                       "dose": pd.Categorical([1, 2, 3] * 4),  # categories that are numbers
                       "sample": ["s1"] * 12})
    g = guess_columns(adata)
    assert g.perturbation_key is None and g.perturbation_candidates == []
    assert set(g.numeric_columns) == {"total_counts", "dose"}
    assert "No text column has two or more values" in g.reason


@pytest.mark.parametrize("obs, key, control", [
    ({"batch": ["b1", "b2"] * 6, "treatment": ["DMSO", "drugA", "drugB"] * 4}, "treatment", None),  # a name
    ({"batch": ["b1", "b2"] * 6, "sample_group": ["ctrl", "A", "B"] * 4}, "sample_group", "ctrl"),  # a control
    ({"gRNAs": ["g1", "g2", "g3"] * 4, "lane": ["x", "y"] * 6}, "gRNAs", None),
    ({"perturbation_raw": ["NT", "A", "A+B"] * 4, "replicate": ["r1", "r2"] * 6}, "perturbation_raw", "NT"),
])
def test_qualifying_column_is_picked_over_others(obs, key, control):
    g = guess_columns(obs_adata(obs))
    assert g.perturbation_key == key and g.control_label == control and g.reason is None
    assert g.perturbation_candidates[0] == key


def test_helpers():
    from pdae_core.data.columns import is_numeric_column, perturbation_like_name

    assert perturbation_like_name("condition") and perturbation_like_name("target_gene")
    assert perturbation_like_name("Guide_Identity") and perturbation_like_name("perturbation_raw")
    assert not perturbation_like_name("batch") and not perturbation_like_name("n_genes_by_counts")
    assert not perturbation_like_name("cell_type") and not perturbation_like_name("total_counts")
    assert is_numeric_column(pd.Series([1.0, 2.0])) and is_numeric_column(pd.Series([True, False]))
    assert not is_numeric_column(pd.Series(["a", "b"]))


def test_real_files_keep_their_perturbation_column(data_dir):
    """The raw files of the shared data (no recorded set-up) are still recognised."""
    expected = {"perturbench_devel.h5ad": ("condition", "control"),
                "schraivogel2020_tapseq.h5ad": ("perturbation", "control"),
                "papalexi2021_eccite.h5ad": (None, None)}
    for name, (key, control) in expected.items():
        adata = ad.read_h5ad(data_dir / name, backed="r")
        g = guess_columns(adata)
        assert g.reason is None, name
        if key is None:  # two equally good columns ('target', 'perturbation'): either, with its control
            assert g.perturbation_key in ("target", "perturbation") and g.control_label in ("non-targeting", "control")
        else:
            assert (g.perturbation_key, g.control_label) == (key, control), name
        assert not set(g.numeric_columns) & set(g.perturbation_candidates)


# ---- bug 3: the Data page ------------------------------------------------------------------
def test_data_page_asks_for_the_column_when_none_qualifies():
    at = upload(start(), "qc_only.h5ad", h5ad_bytes(no_pert_column()))
    assert at.session_state["data_source"][2] == "qc_only.h5ad"
    warning = joined(at.warning)
    assert "No column of this dataset looks like perturbation labels" in warning
    assert "total_counts" in warning and "Choose the column that names each cell's perturbation" in warning
    pk = box(at, "pk:")
    assert pk.value is None and pk.options == ["batch"]  # numbers are not offered
    assert not [s for s in at.selectbox if s.key and s.key.startswith("ctrl:")]
    assert not at.metric  # no "Perturbations: 35" from a guessed column
    # choosing a column without a control-like label asks for the control too
    ok(pk.set_value("batch").run())
    ctrl = box(at, "ctrl:")
    assert ctrl.value is None and sorted(ctrl.options) == ["b1", "b2"]
    assert "None of the labels of column 'batch' looks like a control" in joined(at.warning)
    assert not at.metric
    # the other pages say what is missing instead of crashing
    ok(at.switch_page("pages/compose.py").run())
    assert "Load and set up a dataset on the **Data** page first." in joined(at.info)
    ok(at.switch_page("pages/model.py").run())
    assert "Load and set up a dataset on the Data page to train on it." in joined(at.info)


def test_data_page_user_chooses_column_and_control():
    adata = obs_adata({"total_counts": np.linspace(52.0, 900.0, 36),
                       "sample_group": ["DMSO", "drugA", "drugB", "drugA+drugB"] * 9})
    at = upload(start(), "drugs.h5ad", h5ad_bytes(adata))
    ok(box(at, "pk:").set_value("sample_group").run())
    assert box(at, "ctrl:").value is None
    ok(box(at, "ctrl:").set_value("DMSO").run())
    m = {x.label: x.value for x in at.metric}
    assert m["Cells"] == "36" and m["Combinations"] == "1" and m["Singles"] == "2"
    setup = next(iter(v for k, v in at.session_state["data_setup"].items() if k.startswith("upload:")))
    assert setup["perturbation_key"] == "sample_group" and setup["control_label"] == "DMSO"


def test_data_page_file_with_only_numbers_says_it_cannot_be_used():
    adata = obs_adata({"total_counts": np.linspace(52.0, 900.0, 12), "pct_mt": np.linspace(0, 5, 12)})
    at = upload(start(), "numbers.h5ad", h5ad_bytes(adata))
    err = joined(at.error)
    assert "This file cannot be used as it is" in err and "total_counts" in err
    assert not [s for s in at.selectbox if s.key and s.key.startswith(("pk:", "ctrl:"))]
    assert not at.metric


# ---- bug 5: the loss figure ----------------------------------------------------------------
RECORDS = [
    {"epoch": 2, "step": 20, "seconds": 1.0, "train_loss": 0.80, "train_pert": 0.40, "train_rec": 0.35,
     "train_prior": 0.010, "train_l21": 30.0, "val_ed": 0.050},
    {"epoch": 4, "step": 40, "seconds": 2.0, "train_loss": 0.60, "train_pert": 0.30, "train_rec": 0.25,
     "train_prior": 0.008, "train_l21": 35.0, "val_ed": 0.040},
]


def _axes(fig) -> dict[str, dict]:
    layout = fig.layout.to_plotly_json()
    return {k: v for k, v in layout.items() if k.startswith("yaxis")}


def test_training_curves_readable_names_one_axis_per_scale():
    from pdae_core.plot.training import loss_label, training_curves

    fig = training_curves(RECORDS)
    names = [t.name for t in fig.data]
    assert names[0] == loss_label("val_ed") and "validation" in names[0]
    assert {"fit to perturbed cells", "reconstruction", "total training loss"} <= set(names)
    assert not any(n.startswith("train_") or n in ("pert", "rec", "l21", "val_ed") for n in names)
    by_name = {t.name: t.yaxis for t in fig.data}
    # similar sizes share an axis, other scales get their own
    assert by_name["fit to perturbed cells"] == by_name["reconstruction"] == by_name["total training loss"]
    assert len({by_name[loss_label("train_l21")], by_name["fit to perturbed cells"],
                by_name[loss_label("train_prior")], by_name[names[0]]}) == 4
    for name, axis in _axes(fig).items():
        assert axis["range"][0] >= 0, (name, axis["range"])  # no negative ticks
        assert axis["rangemode"] == "nonnegative"


def test_training_curves_single_point_and_signed_terms():
    from pdae_core.plot.training import training_curves

    fig = training_curves(RECORDS[:1])  # one evaluation: autorange would pad below zero
    assert all(a["range"][0] >= 0 for a in _axes(fig).values())
    assert fig.data[0].x == (2,)
    signed = training_curves([{"epoch": 1, "train_sim": -0.2}, {"epoch": 2, "train_sim": 0.1}])
    (axis,) = _axes(signed).values()
    assert axis["range"][0] < -0.2 and axis["rangemode"] == "normal"  # a term that can be negative
    empty = training_curves([])
    assert not empty.data and [a.text for a in empty.layout.annotations] == ["no evaluations yet"]


def test_training_curves_of_an_ensemble_and_notes():
    from pdae_core.plot.training import LOSS_LABELS, loss_label, training_curves, training_notes

    recs = [{**r, "member": m} for m in (0, 1) for r in RECORDS]
    fig = training_curves(recs)
    val = [t for t in fig.data if t.name == loss_label("val_ed")]
    assert len(val) == 2 and [t.showlegend for t in val] == [True, False]
    assert "network 2" in val[1].hovertemplate
    layout = fig.layout.to_plotly_json()
    titles = [v.get("title", {}).get("text", "") for k, v in layout.items() if k.startswith("xaxis")]
    assert "epoch (of each network)" in titles
    (note,) = training_notes(RECORDS)
    assert "L2,1" in note and "expected" in note
    assert training_notes([{"epoch": 1, "train_nll": 1.0}]) == []
    assert LOSS_LABELS["pert"] == "fit to perturbed cells" and loss_label("train_unknown_term") == "unknown term"


# ---- jobs: ensembles, progress, cancel -------------------------------------------------------
@pytest.fixture(scope="module")
def small_adata():
    adata, _ = make_synthetic(n_perturbations=3, latent_dim=3, n_genes=20, hidden=8, n_doubles=2,
                              cells_per_condition=30, seed=2)
    return adata


def tiny(adata, n_members=None):
    return PDAE.from_anndata(adata, "condition", "control", n_members=n_members, hidden_dims=(16,), latent_dim=4,
                             noise_dim=2, n_sources=4)


def wait_for(cond, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        time.sleep(0.005)


def test_ensemble_job_reports_each_network(small_adata):
    model = tiny(small_adata, n_members=2)
    seen: list[str] = []

    class Spy(TrainingCallback):  # extra callback: reads the job's status after each evaluation
        def on_evaluation(self, record):
            seen.append(job.snapshot().message)

    job = training_job(model, small_adata, max_epochs=3, eval_every=1, accelerator="cpu",
                       callbacks=[Spy(Reporter())])
    assert "×2" in job.name
    assert job.start().join(60)
    snap = job.snapshot()
    assert snap.state is JobState.DONE, snap.error
    assert any(m.startswith("network 1 of 2, epoch 3/3") for m in seen), seen
    assert any(m.startswith("network 2 of 2, epoch 1/3") for m in seen), seen
    assert [r["member"] for r in snap.records] == [0, 0, 0, 1, 1, 1]
    assert [r["epoch"] for r in snap.records] == [1, 2, 3, 1, 2, 3]
    result = job.result()
    assert result is model and result.n_members == 2 and result.is_trained
    assert snap.message.startswith("network 2 of 2, finished at")


def test_callback_fraction_and_message_over_the_ensemble():
    r = Reporter()
    cb = TrainingCallback(r, n_members=2, min_interval_s=0.0)
    cb.on_train_start(max_epochs=10, steps_per_epoch=4)
    cb.on_step(5, 20, {"loss": 0.5})
    assert r._fraction == pytest.approx(0.25) and r._message.startswith("network 1 of 2, epoch 5/10")
    cb.on_evaluation({"epoch": 6, "step": 24, "train_loss": 0.4, "val_ed": 0.125})
    cb.on_step(7, 25, {"loss": 0.3})
    # the status line names the epoch of the value the chart shows last
    assert r._message == "network 1 of 2, epoch 7/10 · loss 0.3000 · val ED 0.1250 at epoch 6"
    assert r._records[-1]["epoch"] == 6 and r._records[-1]["member"] == 0
    cb.on_train_start(max_epochs=10, steps_per_epoch=4)
    assert r._fraction == pytest.approx(0.5) and r._message.startswith("network 2 of 2, training")
    cb.on_step(10, 40, {"loss": 0.2})
    assert r._fraction == pytest.approx(1.0)


def test_time_limit_covers_the_whole_ensemble(small_adata, monkeypatch):
    from pdae_core.models import ensemble as ens_mod

    limits = []
    original = ens_mod.train_module

    def spy(module, X, labels, groups, cfg, callbacks):
        limits.append(cfg.time_limit_s)
        return original(module, X, labels, groups, cfg, callbacks)

    monkeypatch.setattr(ens_mod, "train_module", spy)
    job = training_job(tiny(small_adata, n_members=2), small_adata, max_epochs=2, time_limit_s=60.0,
                       accelerator="cpu").start()
    assert job.join(60) and job.snapshot().state is JobState.DONE, job.snapshot().error
    assert limits == [30.0, 30.0]


def test_cancelled_ensemble_keeps_the_previous_model_and_the_networks_trained(small_adata):
    previous = tiny(small_adata)  # the model the user has loaded
    previous.fit(small_adata, max_epochs=1, accelerator="cpu")
    state = {k: v.clone() for k, v in previous.module.state_dict().items()}
    model = tiny(small_adata, n_members=2)

    class CancelInSecondNetwork(Callback):  # the user presses Cancel while network 2 trains
        starts = 0

        def on_train_start(self, max_epochs, steps_per_epoch):
            self.starts += 1

        def on_evaluation(self, record):
            if self.starts == 2:
                job.cancel()

    job = training_job(model, small_adata, max_epochs=6, eval_every=1, accelerator="cpu",
                       callbacks=[CancelInSecondNetwork()])
    assert job.start().join(60)
    snap = job.snapshot()
    assert snap.state is JobState.CANCELLED and "network 2 of 2" in snap.message
    partial = job.result()
    assert partial is model and partial is not previous and partial.n_members == 2
    members = [r["member"] for r in snap.records]
    assert partial.history.cancelled and members[:7] == [0] * 6 + [1] and len(members) < 12  # stopped early
    assert all((previous.module.state_dict()[k] == v).all() for k, v in state.items())  # untouched


def test_status_line_and_records_come_together():
    """A snapshot never reports an evaluation (status line) that its records lack."""
    r = Reporter()
    r.add_record({"epoch": 2, "val_ed": 0.1}, fraction=0.5, message="epoch 2/4 · val ED 0.1000")
    assert r._records == [{"epoch": 2, "val_ed": 0.1}] and r._fraction == 0.5 and r._message.endswith("0.1000")


# ---- Model page: bugs 4 and 5, the ensemble size ---------------------------------------------
def _chart_epochs(chart) -> list[float]:
    return [x for t in spec(chart)["data"] for x in t.get("x", [])]


def load_file(at: AppTest, path: Path) -> AppTest:
    ok(at.radio(key="data_mode").set_value("File on the server").run())
    at.text_input(key="data_path").input(str(path))
    return ok(at.button(key="data_path_load").click().run())


def start_training(epochs: int = 2000, data: Path | None = None) -> tuple[AppTest, object]:
    """The Model page with the bundled model loaded, a training run started (on ``data``
    when given, a small file that trains fast; else on the demo)."""
    at = start() if data is None else load_file(start(), data)
    ok(at.switch_page("pages/model.py").run())
    assert at.session_state["model_key"] == "bundled:norman19_devel"
    assert len(at.get("plotly_chart")) == 1  # the loaded model's curves
    next(n for n in at.number_input if n.label == "Max epochs").set_value(epochs)
    ok(at.button(key=SUBMIT_TRAINING).click().run())
    return at, at.session_state["train_job"]


def test_model_page_one_live_chart_with_the_latest_evaluation(tmp_path, tiny_adata):
    tiny_adata.write_h5ad(tmp_path / "tiny.h5ad")
    at, job = start_training(data=tmp_path / "tiny.h5ad")
    try:
        wait_for(lambda: len(job.snapshot().records) >= 1, timeout=180)
        ok(at.run())
        charts = at.get("plotly_chart")
        assert len(charts) == 1, "one chart while training"  # not the loaded model's and the live one
        assert "its curves are shown under **Train a new model**" in joined(at.caption)
        first = job.snapshot().records[0]
        assert max(_chart_epochs(charts[0])) >= first["epoch"]  # the evaluation the status line reports
        layout = spec(charts[0])["layout"]
        assert all(v["range"][0] >= 0 for k, v in layout.items() if k.startswith("yaxis"))
        names = {t["name"] for t in spec(charts[0])["data"]}
        assert "fit to perturbed cells" in names and "train_pert" not in names
        assert any("L2,1" in c.value and "expected" in c.value for c in at.caption)
    finally:
        job.cancel()
        job.join(60)


def test_model_page_cancel_keeps_the_loaded_model(tmp_path, tiny_adata):
    tiny_adata.write_h5ad(tmp_path / "tiny.h5ad")
    at, job = start_training(data=tmp_path / "tiny.h5ad")
    wait_for(lambda: job.snapshot().message.startswith("epoch"), timeout=120)  # training has begun
    ok(at.run())
    ok(at.button(key="train_cancel").click().run())
    wait_for(lambda: job.snapshot().finished, timeout=60)
    ok(at.run())
    assert job.snapshot().state is JobState.CANCELLED
    assert at.session_state["model_key"] == "bundled:norman19_devel"  # kept
    assert "bundled checkpoint norman19_devel** is still the loaded model" in joined(at.info)
    assert "bundled checkpoint norman19_devel" in joined(at.subheader)
    ok(at.run())  # later reruns do not load it either
    assert at.session_state["model_key"] == "bundled:norman19_devel"
    ok(at.button(key="train_use_partial").click().run())
    key = at.session_state["model_key"]
    assert key.startswith("trained:") and at.session_state["trained"][key.removeprefix("trained:")] is job.result()
    assert "partly trained model is the loaded model now" in joined(at.success)


def test_model_page_trains_an_ensemble(tmp_path, tiny_adata):
    tiny_adata.write_h5ad(tmp_path / "tiny.h5ad")
    at = load_file(start(), tmp_path / "tiny.h5ad")
    ok(at.switch_page("pages/model.py").run())
    size = at.number_input(key="train_networks")
    assert size.label == "Ensemble size (networks)" and size.value == 1 and size.max == 5
    assert "uncertainty" in size.help and "N times" in size.help
    next(n for n in at.number_input if n.label == "Max epochs").set_value(2)
    size.set_value(2)
    ok(at.button(key=SUBMIT_TRAINING).click().run())
    job = at.session_state["train_job"]
    assert job.join(120) and job.snapshot().state is JobState.DONE, job.snapshot().error
    ok(at.run())
    key = at.session_state["model_key"]
    model = at.session_state["trained"][key.removeprefix("trained:")]
    assert model.n_members == 2 and {r["member"] for r in model.history.records} == {0, 1}
    assert "an ensemble of 2 networks" in joined(at.markdown)


def test_model_page_trains_a_cross_fitted_ensemble_with_calibrated_ranges(tmp_path, tiny_adata):
    tiny_adata.write_h5ad(tmp_path / "tiny.h5ad")
    at = load_file(start(), tmp_path / "tiny.h5ad")
    ok(at.switch_page("pages/model.py").run())
    box = at.checkbox(key="train_cross_fit")
    assert "likely range" in box.help
    next(n for n in at.number_input if n.label == "Max epochs").set_value(2)
    box.check()
    ok(at.button(key=SUBMIT_TRAINING).click().run())  # one network: refused before training
    assert "set the ensemble size to 2 or more" in joined(at.error) and at.session_state["train_job"] is None
    at.number_input(key="train_networks").set_value(2)
    ok(at.button(key=SUBMIT_TRAINING).click().run())  # every combination held out (the default): none left
    assert "needs at least 2 training doubles" in joined(at.error) and at.session_state["train_job"] is None
    next(m for m in at.multiselect if m.label.startswith("Hold out (")).set_value([])
    ok(at.button(key=SUBMIT_TRAINING).click().run())
    job = at.session_state["train_job"]
    assert job.join(120) and job.snapshot().state is JobState.DONE, job.snapshot().error
    ok(at.run())
    model = at.session_state["trained"][at.session_state["model_key"].removeprefix("trained:")]
    assert model.n_members == 2 and model.calibration is not None and model.calibration.n == 3
    assert "an ensemble of 2 networks, likely ranges calibrated on 3 measured combinations" in joined(at.markdown)
    ok(at.switch_page("pages/compose.py").run())  # a pair of two singles: its interaction with a calibrated range
    a, b = model.calibration.doubles[0].split("+")
    ok(at.multiselect(key="compose_perts").set_value([a, b]).run())
    box = joined(at.markdown)
    assert f"**Interaction of {a} + {b}**" in box and "Likely range (80%): magnitude **" in box
    # a measured pair: the range an experiment with its number of cells would show, and the verdict
    cells = int((tiny_adata.obs["condition"].isin([f"{a}+{b}", f"{b}+{a}"])).sum())
    assert f"With the **{cells} cells** this pair was measured with, an experiment would show (80%)" in box
    assert "fall inside both ranges" in box or "falls outside" in box
    assert "used in training, so this is not a test of the model" in box  # a calibration pair trained the others
