"""The one style module (pdae_core.plot.style): names, colours and labels of every figure."""

from __future__ import annotations

import re
import subprocess
import sys

from plotly.colors import qualitative

from pdae_core import explore
from pdae_core.eval import heldout
from pdae_core.eval.benchmark import METRIC_COLUMNS, available_models
from pdae_core.models.catalog import MODEL_TYPES
from pdae_core.plot import benchmark as bench_figures
from pdae_core.plot import style
from pdae_core.plot.style import (
    ADDITIVE,
    CONDITION_KIND_COLORS,
    CONTROL,
    EXPR_LABEL,
    KIND_COLORS,
    NOISE,
    NOISE_COLOR,
    OBSERVED,
    PREDICTED,
    kind_color,
    metric_label,
    model_colors,
)

_COLOR = re.compile(r"^(#[0-9a-fA-F]{6}|rgb\(\d+, \d+, \d+\))$")


def test_names_and_all():
    assert (NOISE, CONTROL, PREDICTED, OBSERVED, ADDITIVE) == (
        "noise floor", "control", "predicted", "observed", "additive (gene space)")
    assert EXPR_LABEL == "expression (log1p normalised counts)"
    assert heldout.NOISE is NOISE  # the tables' noise-floor rows carry the name figures look for
    assert style.OTHER_CELLS == explore.OTHER_CELLS
    for name in style.__all__:
        assert hasattr(style, name), name
    assert bench_figures.metric_label is metric_label and bench_figures.METRIC_LABELS is style.METRIC_LABELS


def test_style_imports_no_plotly():
    code = "import sys, pdae_core.plot.style, pdae_core.eval.heldout; print('plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_palettes_match_plotly():
    assert style.PALETTE == list(qualitative.Dark24) + list(qualitative.Light24)
    expected = [c for c in qualitative.Plotly if c.lower() not in {"#ef553b", "#636efa"}] + list(qualitative.Safe)
    expected = [c for c in expected if c.lower() not in set(style.FIXED_MODEL_COLORS.values())]
    assert style._MODEL_PALETTE == expected


def test_kind_colors_distinct():
    assert KIND_COLORS == {CONTROL: "#8c8c8c", PREDICTED: "#d62728", OBSERVED: "#1f77b4", ADDITIVE: "#ff7f0e"}
    kinds = {**KIND_COLORS, **CONDITION_KIND_COLORS, style.OTHER_CELLS: style.OTHER_CELLS_COLOR, NOISE: NOISE_COLOR}
    assert len(set(kinds.values())) == len(kinds) == 8
    assert CONDITION_KIND_COLORS[CONTROL] == KIND_COLORS[CONTROL]
    assert all(_COLOR.match(c) for c in kinds.values())


def test_kind_color():
    assert kind_color(PREDICTED) == "#d62728"
    assert kind_color("single") == "#2ca02c"
    assert kind_color("combination") == "#9467bd"
    c = kind_color("some other kind")
    assert c.startswith("#") and c == kind_color("some other kind")
    assert c not in KIND_COLORS.values()


def test_every_model_gets_a_distinct_colour():
    models = [*available_models(), NOISE, "no change"]
    assert set(MODEL_TYPES) <= set(models)
    colors = model_colors(models)
    assert list(colors) == models
    assert all(_COLOR.match(c) for c in colors.values())
    distinct = {m: c for m, c in colors.items() if m != "no change"}  # "no change" is the control baseline
    assert len(set(distinct.values())) == len(distinct), colors
    assert colors["no change"] == colors["control"] == KIND_COLORS[CONTROL]
    assert colors["pdae"] == KIND_COLORS[PREDICTED] and colors[NOISE] == NOISE_COLOR
    assert model_colors(models) == colors  # the same every call


def test_model_colors_in_order_of_appearance():
    a = model_colors(["linear", "pool", "pdae"])
    assert a["pdae"] == "#d62728"
    assert a["linear"] == "#00CC96" and a["pool"] == "#AB63FA"
    assert model_colors(["pool"])["pool"] == "#00CC96"


def test_metric_labels_readable():
    labels = [metric_label(c) for c in METRIC_COLUMNS]
    assert all("_" not in lab for lab in labels), labels
    assert len(set(labels)) == len(labels), labels
    for col in METRIC_COLUMNS:  # an explicit label, not the fallback
        assert col in style.METRIC_LABELS or col in style._COLUMN_LABELS, col
    assert metric_label("energy_distance") == "energy distance"
    assert metric_label("pearson_delta_de") == "Pearson r of change from control (top 20 DE genes)"
    assert metric_label("some_new_metric") == "some new metric"
    assert "energy_distance_lo" not in style.METRIC_LABELS  # bounds are not offered as metrics


def test_model_name():
    assert style.model_name("pdae") == "PDAE" and style.model_name("samsvae") == "SAMSVAE"
