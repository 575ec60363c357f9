"""A what-if prediction as one self-contained HTML report: figures, verdict, gene table, model card.

:func:`what_if_report` returns a single HTML document that opens offline in any browser:
plotly.js is embedded once in the head, each figure is an interactive plotly chart with
buttons that save it as PNG or SVG (drawn by the browser: no server-side image export is
needed). :func:`model_card` describes a model in memory with the fields ``pdae info`` prints
for a checkpoint; :func:`checkpoint_digest` reads the digest a saved checkpoint records.

Every name that comes from data (genes, conditions, dataset and file names) is escaped:
none can inject markup or scripts, and control or bidirectional-override characters are
written as visible escapes (:func:`pdae_core.cli.common.printable`).
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._version import __version__
from .cli.common import preview, printable
from .errors import CheckpointError
from .models.card import model_card
from .models.integrity import DIGEST_FIELD
from .plot.style import GENE_TABLE_LABELS, model_name

if TYPE_CHECKING:
    from .explore import Verdict, WhatIf
    from .models.base import PerturbationModel

__all__ = ["checkpoint_digest", "model_card", "report_filename", "what_if_report"]

#: Rows of the top changed genes table in the report (the dashboard shows as many).
TOP_GENES = 50
#: Names listed in full in the model card before they go into a collapsed list.
_SHOWN = 12

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;max-width:1100px;
margin:0 auto;padding:24px;line-height:1.45}
h1{margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #d9dee4;padding-bottom:4px}
.sub{color:#52606d;margin-top:0}
.verdict{border-left:6px solid;padding:10px 16px;border-radius:4px;margin:16px 0}
.verdict.info{border-color:#1c7ed6;background:#e7f1fb}.verdict.success{border-color:#2b8a3e;background:#e6f4ea}
.verdict.warning{border-color:#e67700;background:#fff4e0}.verdict.error{border-color:#c92a2a;background:#fdeaea}
.verdict p{margin:4px 0}
table{border-collapse:collapse;font-size:14px;margin:8px 0}
th,td{border:1px solid #d9dee4;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.card th{width:230px}
figure{margin:16px 0 28px 0}figcaption{font-size:13px;color:#52606d}
button{font-size:12px;margin-right:6px;cursor:pointer}
code{word-break:break-all}
footer{margin-top:40px;font-size:12px;color:#7b8794}
"""


# ---- text helpers ----------------------------------------------------------------------------
def _t(value: object) -> str:
    """``value`` as HTML text: markup characters escaped, control characters made visible."""
    return html.escape(printable(value), quote=True)


def _slug(text: str, limit: int = 60) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``_``, ``-`` and ``.`` only)."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", text.replace("+", "_").replace(":", "-")).strip("._-")
    return s[:limit] or "figure"


def _number(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3f}"
    return _t(v)


def _value(v: Any) -> str:
    """A hyperparameter or setting, as HTML text ("–" for none)."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return _t(", ".join(map(str, v)) or "none")
    if isinstance(v, float):
        return _t(f"{v:g}")
    return _t(v)


def _names(items: Sequence[Any], what: str) -> str:
    """A short list of names; a long one as a preview with the full list collapsed under it."""
    items = [str(x) for x in items]
    if not items:
        return "none"
    if len(items) <= _SHOWN:
        return _t(", ".join(items))
    return (f"<details><summary>{_t(preview(items, _SHOWN))}; click for all {len(items):,} {_t(what)}</summary>"
            f"<p>{_t(', '.join(items))}</p></details>")


def report_filename(target: str) -> str:
    """A file name for the report of ``target``: ``report_KLF1_MAP2K6.html``."""
    return f"report_{_slug(target)}.html"


# ---- the model card --------------------------------------------------------------------------
def checkpoint_digest(path: str | os.PathLike) -> str | None:
    """The ``checkpoint_sha256`` a saved checkpoint records in its ``config.json`` (None when the
    folder is not a readable checkpoint or records none). Not a verification: loading verifies."""
    from .models.checkpoint import read_config

    try:
        digest = read_config(path).get(DIGEST_FIELD)
    except (CheckpointError, OSError):
        return None
    return digest if isinstance(digest, str) else None


def _training_line(c: dict[str, Any]) -> str:
    if not c["trained"]:
        return "not trained"
    e, n = c["epochs_run"], c["steps"]
    line = f"{e:,} epoch{'s' * (e != 1)}, {n:,} step{'s' * (n != 1)}, {c['seconds']:.1f} s on {c['device']}"
    if c["cancelled"]:
        line += " (cancelled by the user; the best weights so far are kept)"
    elif c["stopped_early"]:
        line += " (stopped early: validation stopped improving)"
    return _t(line)


def _settings_table(d: Mapping[str, Any] | None, skip: Sequence[str] = ()) -> str:
    if not d:
        return "<p>none recorded</p>"
    rows = "".join(f"<tr><th>{_t(k)}</th><td>{_value(v)}</td></tr>" for k, v in d.items() if k not in skip)
    return f'<table class="card">{rows}</table>'


def _card_html(c: dict[str, Any], model_label: str | None) -> str:
    nets = f"an ensemble of {c['n_members']} networks" if c["n_members"] > 1 else "1 network"
    best = (f"{c['best_val_ed']:.4g} (energy distance on validation cells, at epoch {c['best_epoch']})"
            if c["best_val_ed"] is not None else "–")
    digest = (f"<code>{_t(c['checkpoint_sha256'])}</code>" if c["checkpoint_sha256"] else
              "none: this model was not loaded from a saved checkpoint (e.g. trained in this session), so "
              "there is no digest to compare with a published one")
    prep = ", ".join(f"{k}={v}" for k, v in c["preprocessing"].items()) or "none recorded"
    rows = [
        ("Model", f"{_t(model_name(c['model_type']))}, {nets}"),
        ("Which model", _t(model_label) if model_label else "–"),
        ("Networks (ensemble size)", _number(c["n_members"])),
        ("Genes", f"{c['n_genes']:,}: " + _names(c["genes"], "genes")),
        ("Perturbations it knows", f"{c['n_perturbations']:,}"),
        ("Perturbations seen in training", f"{len(c['seen_perturbations']):,}: "
         + _names(c["seen_perturbations"], "perturbations")),
        ("Conditions trained on", f"{len(c['train_conditions']):,}: " + _names(c["train_conditions"], "conditions")),
        ("Held-out conditions", (f"{len(c['holdout']):,}: " + _names(c["holdout"], "conditions"))
         if c["holdout"] else "none"),
        ("Perturbation column / control", f"{_t(c['perturbation_key'])} / {_t(c['control_label'])}"),
        ("Expression values", _t(c["x_kind"])),
        ("Preprocessing", _t(prep)),
        ("Training", _training_line(c)),
        ("Best validation score", _t(best)),
        ("Checkpoint digest (SHA-256)", digest),
    ]
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return (
        f'<table class="card" id="model-card">{body}</table>'
        "<h3>Hyperparameters</h3>" + _settings_table(c["model_config"], skip=("n_genes", "n_perturbations"))
        + "<h3>Training settings</h3>" + _settings_table(c["train_config"])
    )


# ---- tables, verdict, figures ----------------------------------------------------------------
def table_html(df: pd.DataFrame, labels: Mapping[str, str] | None = None, table_id: str | None = None) -> str:
    """``df`` as an HTML table: headers renamed by ``labels``, numbers rounded to 3 decimals,
    missing values as "–", every cell escaped."""
    labels = labels or {}
    head = "".join(f"<th>{_t(labels.get(str(c), c))}</th>" for c in df.columns)
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    rows = []
    for row in df.itertuples(index=False, name=None):
        cells = "".join(f'<td class="num">{_number(v)}</td>' if num else f"<td>{_number(v)}</td>"
                        for v, num in zip(row, numeric))
        rows.append(f"<tr>{cells}</tr>")
    ident = f' id="{_t(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _verdict_html(verdict: str | Verdict, target: str) -> str:
    if isinstance(verdict, str):
        return f'<section class="verdict info" id="verdict"><p>{_t(verdict)}</p></section>'
    # the dashboard's markdown line: escape first, then only **bold** becomes markup
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", _t(verdict.markdown(target)))
    level = verdict.level if verdict.level in ("info", "success", "warning", "error") else "info"
    details = "".join(f"<li>{_t(line)}</li>" for line in verdict.details)
    more = (f"<details><summary>Technical detail: why the model can (or cannot) predict this</summary>"
            f"<ul>{details}</ul></details>") if details else ""
    return f'<section class="verdict {level}" id="verdict"><p>{text}</p>{more}</section>'


def _figure_html(title: str, fig: Any, index: int, target: str) -> str:
    div_id = f"figure-{index}"
    name = _slug(f"{target}_{title}")
    config = {"displaylogo": False, "responsive": True,
              "toImageButtonOptions": {"format": "png", "scale": 2, "filename": name}}
    height = fig.layout.height or 480
    body = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=config,
                       default_width="100%", default_height=f"{int(height)}px")
    buttons = "".join(
        f"<button type=\"button\" onclick=\"Plotly.downloadImage('{div_id}',"
        f"{{format:'{fmt}',scale:{scale},filename:'{name}'}})\">Save as {fmt.upper()}</button>"
        for fmt, scale in (("png", 2), ("svg", 1))
    )
    return f"<figure><h3>{_t(title)}</h3>{body}<figcaption>{buttons}</figcaption></figure>"


def _composition(result: WhatIf, perturbations: Sequence[str]) -> str:
    label = np.asarray(result.label, dtype=float).reshape(-1)
    parts = [f"{p} at dose {label[k]:g}" for k, p in enumerate(perturbations) if k < label.size and label[k] != 0]
    return ", ".join(parts) or "none"


# ---- the report ------------------------------------------------------------------------------
def what_if_report(
    result: WhatIf,
    figures: Mapping[str, Any],
    verdict: str | Verdict,
    model: PerturbationModel,
    dataset_label: str,
    extra_tables: Mapping[str, pd.DataFrame] | None = None,
    *,
    model_label: str | None = None,
    checkpoint_sha256: str | None = None,
    source_condition: str | None = None,
    n_genes: int = TOP_GENES,
    created: datetime | None = None,
) -> str:
    """One self-contained HTML document (works offline) describing a what-if prediction.

    ``result``: :func:`pdae_core.explore.what_if`'s :class:`~pdae_core.explore.WhatIf`;
    ``figures``: ``{title: plotly Figure}`` in the order shown (``None`` values are skipped);
    ``verdict``: :func:`pdae_core.explore.verdict_in_words`'s :class:`~pdae_core.explore.Verdict`
    (headline and technical detail) or a plain sentence; ``model``: the model that predicted;
    ``dataset_label``: the dataset's name as shown to the user; ``extra_tables``:
    ``{title: DataFrame}`` shown after the gene table. ``model_label`` says which model it is
    (e.g. "bundled checkpoint norman19_devel"), ``checkpoint_sha256`` the digest of the checkpoint
    it was loaded from (:func:`checkpoint_digest`), ``source_condition`` the cells moved
    (control when None), ``n_genes`` the rows of the gene table, ``created`` the time stamp
    (now by default)."""
    from plotly.offline import get_plotlyjs

    created = created or datetime.now().astimezone()
    target = result.target
    reg = model.registry
    title = f"What if: {target} in {dataset_label}"
    n_obs = 0 if result.observed is None else result.observed.n_obs
    facts = [
        ("Composition", _t(_composition(result, reg.perturbations))),
        ("Predicted cells", f"{result.predicted.n_obs:,}, moved from {_t(source_condition or reg.control_label)} "
         "cells by the model"),
        ("Observed cells", f"{n_obs:,} cells of {_t(target)} in {_t(dataset_label)}" if n_obs
         else f"{_t(target)} was not measured in {_t(dataset_label)}"),
    ]
    if result.additive_note:
        facts.append(("Additive baseline", "unavailable: " + _t(result.additive_note)))
    facts_html = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)

    shown = [(str(name), fig) for name, fig in figures.items() if fig is not None]
    figs = "".join(_figure_html(name, fig, i, target) for i, (name, fig) in enumerate(shown, 1))
    genes = result.top_genes.head(n_genes)
    extra = "".join(
        f"<h2>{_t(name)}</h2>" + table_html(df, GENE_TABLE_LABELS) for name, df in (extra_tables or {}).items()
    )
    when = created.strftime("%Y-%m-%d %H:%M %Z").strip()
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_t(title)}</title>'
        f'<meta name="generator" content="pdae_core {_t(__version__)}"><style>{_CSS}</style>'
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<header><h1>{_t(title)}</h1>"
        f'<p class="sub">Created {_t(when)} with pdae_core {_t(__version__)} · model: '
        f"{_t(model_label or model_name(model.model_type))}</p></header>"
        + _verdict_html(verdict, target)
        + f'<h2>The prediction</h2><table class="card">{facts_html}</table>'
        + (f"<h2>Figures</h2>{figs}" if figs else "")
        + f"<h2>Top changed genes</h2><p>The {len(genes):,} genes (of {reg.n_genes:,}) whose predicted mean "
        "changes most from control; Δ is the change of the mean from control (on the model's expression "
        "scale), – where there is nothing to compare.</p>"
        + table_html(genes, GENE_TABLE_LABELS, table_id="top-genes")
        + extra
        + "<h2>Model card</h2>" + _card_html(model_card(model, checkpoint_sha256), model_label)
        + "<footer>Generated by pdae_core. This file is self-contained (plotly.js included): it opens "
        "offline. Each chart's camera icon or buttons save it as PNG or SVG.</footer></body></html>\n"
    )
