"""The what-if HTML report (pdae_core.report) and the dashboard's figure export settings.

A tiny synthetic dataset whose gene and perturbation names are markup (``<script>...``,
``<img onerror=...>``) checks that nothing from the data reaches the report unescaped.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from pdae_core import PDAE, setup_anndata
from pdae_core import explore as ex
from pdae_core.data.synthetic import make_synthetic
from pdae_core.plot.style import GENE_TABLE_LABELS
from pdae_core.report import checkpoint_digest, model_card, report_filename, what_if_report

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the pages import ``pages.common`` from the repository root
    sys.path.insert(0, str(ROOT))

EVIL_GENE = "<script>alert(1)</script>"
EVIL_PERT = "<img src=x onerror=alert(2)>"
EVIL_LABEL = "<i>my</i> data.h5ad"
WEIGHTS = {"P1": 1.0, EVIL_PERT: 1.0}
HELD_OUT = f"P1+{EVIL_PERT}"
WHEN = datetime(2025, 3, 4, 5, 6, tzinfo=timezone.utc)
VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


# ---- a strict parser: every element closed in order -----------------------------------------
class Checked(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.starts.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if not self.stack or self.stack[-1] != "script":
            self.text.append(data)


def parse(doc: str) -> Checked:
    p = Checked()
    p.feed(doc)
    p.close()
    return p


class Tables(HTMLParser):
    """Rows of the table with id ``ident``: a list of cell texts per row (header row first)."""

    def __init__(self, ident: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ident, self.depth, self.rows, self.cell = ident, 0, [], None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table" and (self.depth or dict(attrs).get("id") == self.ident):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def table_rows(doc: str, ident: str) -> list[list[str]]:
    t = Tables(ident)
    t.feed(doc)
    return t.rows


# ---- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evil():
    """control, P1, P2, P3 and their pairs (30 cells each, 12 genes), with gene0 renamed to a
    script tag and P2 to an img tag."""
    adata, _ = make_synthetic(n_perturbations=3, latent_dim=3, n_genes=12, hidden=16, n_doubles=3,
                              cells_per_condition=30, seed=0)
    adata.var_names = [EVIL_GENE, *adata.var_names[1:]]
    adata.obs["condition"] = adata.obs["condition"].astype(str).str.replace("P2", EVIL_PERT)
    return adata


def _trained(adata, **kw) -> PDAE:
    reg = setup_anndata(adata, "condition")
    if kw.get("n_members"):
        from pdae_core.models.catalog import ensemble_class

        m = ensemble_class(PDAE)(reg, hidden_dims=(16,), latent_dim=3, **kw)
    else:
        m = PDAE(reg, hidden_dims=(16,), latent_dim=3)
    m.fit(adata, holdout=[HELD_OUT], max_epochs=1, batch_size=64, seed=0, accelerator="cpu")
    return m


@pytest.fixture(scope="module")
def model(evil) -> PDAE:
    return _trained(evil)


@pytest.fixture(scope="module")
def ensemble(evil) -> PDAE:
    return _trained(evil, n_members=2)


def _parts(m, adata):
    result = ex.what_if(m, adata, WEIGHTS, max_source_cells=20, additive=ex.fit_additive(adata, m))
    verdict = ex.verdict_in_words(result.check, WEIGHTS, ex.measured_alone(m), held_out=result.target in m.holdout)
    genes = result.top_genes["gene"].tolist()
    figures = {
        f"Top genes of {result.target}": go.Figure(go.Bar(x=result.top_genes["predicted_delta"], y=genes,
                                                          orientation="h"), layout={"title": result.target}),
        "Cells": go.Figure(go.Scatter(x=np.arange(len(genes)), y=np.arange(len(genes)), text=genes, mode="markers")),
        "not drawn": None,  # e.g. no gene chosen for the violins
    }
    return result, verdict, figures


@pytest.fixture(scope="module")
def parts(model, evil):
    return _parts(model, evil)


@pytest.fixture(scope="module")
def report(parts, model) -> str:
    result, verdict, figures = parts
    return what_if_report(result, figures, verdict, model, EVIL_LABEL, created=WHEN, source_condition="control")


# ---- the report ------------------------------------------------------------------------------
def test_report_is_valid_html(report):
    p = parse(report)
    assert p.doctype
    assert p.errors == []
    assert p.stack == []  # everything opened was closed
    assert [t for t, _ in p.starts][:2] == ["html", "head"]
    assert sum(t == "title" for t, _ in p.starts) == 1


def test_report_title_date_version_and_verdict(report, parts, model):
    from pdae_core import __version__

    result, verdict, _ = parts
    text = " ".join(parse(report).text)
    assert f"What if: {result.target} in {EVIL_LABEL}" in text
    assert "2025-03-04 05:06" in text and f"pdae_core {__version__}" in text
    assert verdict.level == "success" and f'class="verdict {verdict.level}"' in report
    assert verdict.headline in text  # the plain sentence, then the technical detail
    assert all(line in text for line in verdict.details) and "Technical detail" in text
    # a plain sentence works as well
    plain = what_if_report(result, {}, "Treat with caution.", model, "d")
    assert "Treat with caution." in " ".join(parse(plain).text)


def test_report_has_every_figure_once_with_png_and_svg_export(report, parts):
    _, _, figures = parts
    drawn = [name for name, fig in figures.items() if fig is not None]
    assert report.count('class="plotly-graph-div"') == len(drawn) == 2
    starts = parse(report).starts
    h3 = [i for i, (t, _) in enumerate(starts) if t == "h3"]
    assert len(h3) >= 2
    for i in range(1, len(drawn) + 1):
        assert f'id="figure-{i}"' in report
        assert report.count(f"Plotly.downloadImage('figure-{i}',{{format:'png'") == 1
        assert report.count(f"Plotly.downloadImage('figure-{i}',{{format:'svg'") == 1
    text = " ".join(parse(report).text)
    assert all(name in text for name in drawn) and "not drawn" not in text
    # download file names are slugs: nothing from the data can break out of the onclick attribute
    for name in re.findall(r"filename:'([^']*)'", report):
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", name)
    assert report_filename(f"{EVIL_PERT}+P1") == "report_img_src_x_onerror_alert_2__P1.html"


def test_plotly_js_embedded_exactly_once_and_offline(report):
    assert report.count(get_plotlyjs()) == 1
    assert report.count("plotly.js v") == 1
    scripts = [a for t, a in parse(report).starts if t == "script"]
    assert all("src" not in a for a in scripts)  # nothing fetched from the network
    assert len(scripts) == 1 + 2  # plotly.js, then one per figure


def test_gene_table_has_human_headers_and_rounded_numbers(report, parts):
    result, _, _ = parts
    rows = table_rows(report, "top-genes")
    header = rows[0]
    assert header == [GENE_TABLE_LABELS.get(c, c) for c in result.top_genes.columns]
    assert {"control mean", "predicted Δ", "observed Δ", "additive Δ"} <= set(header)
    assert "predicted_delta" not in header
    body = rows[1:]
    assert len(body) == len(result.top_genes) == 12  # fewer genes than the 50 shown at most
    col = header.index("predicted Δ")
    for r, (_, row) in zip(body, result.top_genes.iterrows()):
        assert r[header.index("gene")] == row["gene"]
        assert r[col] == f"{row['predicted_delta']:.3f}"
    assert EVIL_GENE in [r[header.index("gene")] for r in body]  # shown as text


def test_gene_table_rows_capped_and_missing_values_dashed(parts, model):
    result, verdict, _ = parts
    top = result.top_genes.copy()
    top.loc[0, "observed_delta"] = np.nan
    capped = what_if_report(type(result)(**{**vars(result), "top_genes": top}), {}, verdict, model, "d", n_genes=5)
    rows = table_rows(capped, "top-genes")
    assert len(rows) == 1 + 5
    assert rows[1][rows[0].index("observed Δ")] == "–"


def test_model_card_fields(report, model):
    rows = dict((r[0], r[1]) for r in table_rows(report, "model-card"))
    assert rows["Model"] == "PDAE, 1 network"
    assert rows["Networks (ensemble size)"] == "1"
    assert rows["Genes"].startswith("12: ") and EVIL_GENE in rows["Genes"]
    assert rows["Perturbations seen in training"].startswith("3: ") and EVIL_PERT in rows["Perturbations seen in training"]
    assert rows["Held-out conditions"] == f"1: {HELD_OUT}"
    assert rows["Conditions trained on"].startswith("6: ")
    assert re.fullmatch(r"1 epoch, \d+ steps?, \d+\.\d s on cpu", rows["Training"])
    assert rows["Checkpoint digest (SHA-256)"].startswith("none")  # never saved
    text = " ".join(parse(report).text)
    assert "Hyperparameters" in text and "latent_dim" in text and "Training settings" in text
    card = model_card(model)
    assert card["n_members"] == 1 and card["holdout"] == [HELD_OUT] and card["checkpoint_sha256"] is None
    assert json.loads(json.dumps(card)) == card  # JSON-ready


def test_no_markup_from_data_reaches_the_report(report):
    assert EVIL_GENE not in report and EVIL_PERT not in report and EVIL_LABEL not in report
    assert "<img" not in report.lower() and "alert(1)</script>" not in report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report  # escaped, so shown as text
    p = parse(report)
    assert not any(t == "img" for t, _ in p.starts)
    assert not any(k.startswith("on") and k != "onclick" for _, a in p.starts for k in a)
    # the only scripts: plotly.js and the figures' (whose JSON escapes "<" as \u003c)
    assert sum(t == "script" for t, _ in p.starts) == 3
    assert "\\u003cscript\\u003ealert(1)" in report


def test_control_characters_are_made_visible(parts, model):
    result, verdict, _ = parts
    doc = what_if_report(result, {}, verdict, model, "data\x1b[31m\u202e.h5ad")
    assert "\x1b" not in doc and "\u202e" not in doc and "\\x1b" in doc


def test_report_for_a_saved_ensemble_shows_networks_and_digest(ensemble, evil, tmp_path):
    assert checkpoint_digest(tmp_path / "nothing") is None
    result, verdict, figures = _parts(ensemble, evil)
    path = tmp_path / "ens"
    ensemble.save(path)
    digest = checkpoint_digest(path)
    recorded = json.loads((path / "config.json").read_text())["checkpoint_sha256"]
    assert digest == recorded and re.fullmatch(r"[0-9a-f]{64}", digest)
    doc = what_if_report(result, figures, verdict, ensemble, "demo", model_label="checkpoint ens",
                         checkpoint_sha256=digest)
    assert parse(doc).errors == []
    rows = dict((r[0], r[1]) for r in table_rows(doc, "model-card"))
    assert rows["Model"] == "PDAE, an ensemble of 2 networks"
    assert rows["Networks (ensemble size)"] == "2"
    assert rows["Checkpoint digest (SHA-256)"] == digest
    assert rows["Which model"] == "checkpoint ens"
    assert doc.count(get_plotlyjs()) == 1 and doc.count('class="plotly-graph-div"') == 2


def test_extra_tables_are_escaped_with_human_headers(parts, model):
    import pandas as pd

    result, verdict, _ = parts
    extra = {"Interaction <b>score</b>": pd.DataFrame({"gene": [EVIL_GENE], "predicted_delta": [0.12345]})}
    doc = what_if_report(result, {}, verdict, model, "d", extra)
    text = " ".join(parse(doc).text)
    assert "Interaction <b>score</b>" in text and "<b>score" not in doc
    assert "<th>predicted Δ</th>" in doc and "<td class=\"num\">0.123</td>" in doc


# ---- the dashboard ---------------------------------------------------------------------------
def test_plot_config_exports_svg():
    from pages import common

    opts = common.PLOT_CONFIG["toImageButtonOptions"]
    assert opts["format"] == "svg"
    assert opts["filename"] and re.fullmatch(r"[A-Za-z0-9_.-]+", opts["filename"])
    assert opts["scale"] >= 1
    assert common.PLOT_CONFIG["displaylogo"] is False


def test_report_download_builds_the_report_on_click(parts, model, monkeypatch):
    """pages.common.report_download: one button; the file (with the bundled checkpoint's digest)
    is built by the callable Streamlit runs on click."""
    from pages import common

    result, verdict, figures = parts
    seen = {}
    monkeypatch.setattr(common, "model_label", lambda key: f"label of {key}")
    monkeypatch.setattr(common.st, "download_button", lambda label, data, **kw: seen.update(label=label, data=data, **kw))
    demo = common.BUNDLED_CHECKPOINTS / common.DEMO_DATASET
    ds = common.Dataset("k", EVIL_LABEL, None, model.registry)
    common.report_download(result, figures, verdict, f"bundled:{common.DEMO_DATASET}", model, ds)
    assert seen["file_name"] == report_filename(result.target) and seen["mime"] == "text/html"
    assert seen["on_click"] == "ignore" and callable(seen["data"])
    doc = seen["data"]()
    rows = dict((r[0], r[1]) for r in table_rows(doc, "model-card"))
    assert rows["Checkpoint digest (SHA-256)"] == checkpoint_digest(demo) is not None
    assert rows["Which model"] == f"label of bundled:{common.DEMO_DATASET}"
    common.report_download(result, figures, verdict, "trained:abc", model, ds)
    assert dict((r[0], r[1]) for r in table_rows(seen["data"](), "model-card"))[
        "Checkpoint digest (SHA-256)"].startswith("none")


def test_long_name_lists_collapse_with_every_name_kept():
    from pdae_core.report import _names

    short = _names(["a", EVIL_GENE], "genes")
    assert short == "a, &lt;script&gt;alert(1)&lt;/script&gt;"
    names = [f"g{i}" for i in range(30)] + [EVIL_GENE]
    long = _names(names, "genes")
    p = parse(f"<div>{long}</div>")
    assert p.errors == [] and [t for t, _ in p.starts] == ["div", "details", "summary", "p"]
    text = "".join(p.text)
    assert "click for all 31 genes" in text and "(31 in all)" in text
    assert all(n in text for n in names) and EVIL_GENE not in long
