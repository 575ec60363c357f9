"""Issue 16, "Speak biology" on the Data page: the expression kind in full (no truncated metric),
"distinct targets" rather than "perturbations", a per-condition table with human headers and
"–" for what does not apply, the chart with control on top, and a "How to read this page".
The Model page gets its "How to read this page" too."""

from __future__ import annotations

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
from pdae_core import explore  # noqa: E402

HEADERS = ["Condition", "Cells", "Kind", "Number of targets", "Every target also measured alone"]


@pytest.fixture(autouse=True)
def _no_umap_warmup(data_dir, monkeypatch):
    """The demo data; the Compose page's UMAP warm-up is not started (not needed here, and it
    would hold the CPU for half a minute)."""
    monkeypatch.setattr(common, "warm_reference_embedding", lambda ds: None)


def ok(at: AppTest) -> AppTest:
    assert not at.exception, "\n".join(f"{e.message}\n{''.join(e.stack_trace)}" for e in at.exception)
    assert not any("unexpected error" in e.value for e in at.error), [e.value for e in at.error]
    return at


def start() -> AppTest:
    return ok(AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run())


def joined(elements) -> str:
    return "\n".join(e.value for e in elements)


def test_data_page_speaks_biology():
    at = start()
    assert at.expander[0].label == "How to read this page"  # first thing under the title
    guide = joined(at.expander[0].markdown)
    assert "distinct targets" in guide and "control" in guide and "hold them out" in guide
    m = {x.label: x.value for x in at.metric}
    assert list(m) == ["Cells", "Genes", "Distinct targets", "Singles", "Combinations"]
    assert "Perturbations" not in m and "Expression" not in m  # a metric cuts long values short
    singles, combos = int(m["Singles"]), int(m["Combinations"])
    assert int(m["Distinct targets"]) == 31 and singles + combos + 1 == len(at.dataframe[0].value)  # + control
    # the expression kind in full, in text that wraps
    assert "**Expression values:** log-normalised (counts scaled to the same total per cell, then log(1 + x))" in (
        joined(at.markdown))


def test_conditions_table_has_human_headers_control_first_and_dashes():
    at = start()
    (table,) = at.dataframe
    df = table.value
    assert list(df.columns) == HEADERS
    assert not any("_" in c for c in df.columns)
    first = df.iloc[0]
    assert first["Condition"] == "control" and first["Kind"] == "control"
    assert first["Every target also measured alone"] == "–"  # does not apply to control
    rest = df.iloc[1:]
    assert set(rest["Every target also measured alone"]) == {"yes", "no"}
    cells = rest["Cells"].astype(int).to_numpy()
    assert (np.diff(cells) <= 0).all()  # then the largest conditions first
    text = df.astype(str).to_numpy().ravel().tolist()
    assert not {"None", "nan", "NaN", "True", "False"} & set(text)
    # the chart: control on top
    (chart,) = at.get("plotly_chart")
    yaxis = json.loads(chart.proto.spec)["layout"]["yaxis"]
    assert yaxis["categoryarray"][0] == "control" and yaxis["autorange"] == "reversed"
    assert sorted(yaxis["categoryarray"]) == sorted(df["Condition"])


def test_missing_values_show_a_dash_and_any_column_gets_words(monkeypatch):
    real = explore.summarize_dataset

    def with_gaps(adata, registry):  # a summary with a column that has gaps (None and NaN)
        s = real(adata, registry)
        n = len(s.conditions)
        s.conditions["guide_id"] = [None if i % 3 == 0 else np.nan if i % 3 == 1 else f"g{i}" for i in range(n)]
        s.conditions["mean_umi"] = [np.nan] + [1.5] * (n - 1)
        return s

    monkeypatch.setattr(explore, "summarize_dataset", with_gaps)
    df = start().dataframe[0].value
    assert list(df.columns) == [*HEADERS, "Guide id", "Mean umi"]
    assert set(df["Guide id"]) - {"–"} and "–" in set(df["Guide id"])
    assert not {"None", "nan", "NaN"} & set(df.astype(str).to_numpy().ravel().tolist())
    assert (df["Mean umi"].astype(str) == "–").sum() == 1


def test_raw_counts_are_said_in_full(tmp_path, tiny_adata):
    counts = tiny_adata.copy()
    x = counts.X.toarray() if hasattr(counts.X, "toarray") else np.asarray(counts.X)
    counts.X = np.random.default_rng(0).poisson(np.expm1(x) * 5).astype(np.float32)
    counts.write_h5ad(tmp_path / "counts.h5ad")
    at = start()
    ok(at.radio(key="data_mode").set_value("File on the server").run())
    at.text_input(key="data_path").input(str(tmp_path / "counts.h5ad"))
    ok(at.button(key="data_path_load").click().run())
    assert "**Expression values:** raw counts (not yet normalised)" in joined(at.markdown)
    assert "X holds raw counts" in joined(at.warning)


def test_model_page_has_how_to_read():
    at = start()
    ok(at.switch_page("pages/model.py").run())
    assert at.expander[0].label == "How to read this page"
    guide = joined(at.expander[0].markdown)
    assert "**Training**" in guide and "**The loss chart**" in guide and "**An ensemble**" in guide
    assert "validation" in guide and "disagree" in guide and ".zip" in guide
