"""The look of every figure and dashboard page in one place: the names of the cell
groups and of the noise floor, one colour per model and per kind of cells, readable
metric and model names, the plotly template and colour scales.

Plain data and small functions with no third-party import (plotly included), so the
evaluation (:mod:`pdae_core.eval.heldout` takes :data:`NOISE` from here) and the
analysis code can use the names without loading plotly. The palettes are copies of
plotly's qualitative palettes (a test checks they still match).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

__all__ = [
    "ADDITIVE",
    "CONDITION_KIND_COLORS",
    "CONTROL",
    "DIVERGING",
    "EXPR_LABEL",
    "FIXED_MODEL_COLORS",
    "GENE_TABLE_LABELS",
    "KIND_COLORS",
    "METRIC_LABELS",
    "NOISE",
    "NOISE_COLOR",
    "OBSERVED",
    "OTHER_CELLS",
    "OTHER_CELLS_COLOR",
    "PALETTE",
    "PREDICTED",
    "TEMPLATE",
    "kind_color",
    "metric_label",
    "model_colors",
    "model_name",
]

# ---- names ------------------------------------------------------------------------------
#: The noise floor's "model" name in the benchmark and held-out tables (two random
#: halves of the observed cells compared with each other).
NOISE = "noise floor"
#: Kinds of cell populations shown side by side (what-if UMAP, violins, delta bars).
CONTROL = "control"
PREDICTED = "predicted"
OBSERVED = "observed"
ADDITIVE = "additive (gene space)"
#: The dataset's remaining cells, drawn faintly behind a what-if.
OTHER_CELLS = "other cells"
EXPR_LABEL = "expression (log1p normalised counts)"

#: Readable names of the metric columns of ``per_condition.csv`` offered as metrics.
METRIC_LABELS: dict[str, str] = {
    "energy_distance": "energy distance",
    "energy_distance_de": "energy distance (top 20 DE genes)",
    "mmd_rbf": "MMD (RBF)",
    "mean_l2": "L2 distance of mean profiles",
    "pearson_delta": "Pearson r of change from control",
    "pearson_delta_de": "Pearson r of change from control (top 20 DE genes)",
    "r2_delta": "R2 of change from control",
    "r2_delta_de": "R2 of change from control (top 20 DE genes)",
    "direction_accuracy_de": "direction accuracy (top 20 DE genes)",
}
#: Readable names of the other numeric columns of ``per_condition.csv`` (bounds and
#: references of the energy distance; not offered as metrics of their own).
_COLUMN_LABELS: dict[str, str] = {
    "energy_distance_lo": "energy distance (bootstrap lower bound)",
    "energy_distance_hi": "energy distance (bootstrap upper bound)",
    "energy_distance_ctrl": "energy distance of the control cells",
    "noise_floor": "noise floor (energy distance between halves)",
}
#: Column headers of the what-if gene table (:func:`pdae_core.explore.top_changed_genes`).
GENE_TABLE_LABELS: dict[str, str] = {
    "control_mean": "control mean",
    "predicted_mean": "predicted mean",
    "predicted_delta": "predicted Δ",
    "observed_delta": "observed Δ",
    "additive_delta": "additive Δ",
}


def metric_label(metric: str) -> str:
    """Readable name of a metric column (the column name with spaces if unknown)."""
    return METRIC_LABELS.get(metric) or _COLUMN_LABELS.get(metric, metric.replace("_", " "))


def model_name(model_type: str) -> str:
    """Display name of a model type: ``"pdae"`` -> ``"PDAE"``, ``"samsvae"`` -> ``"SAMSVAE"``."""
    return model_type.upper()


# ---- plotly settings and palettes ----------------------------------------------------------
TEMPLATE = "plotly_white"
#: Diverging colour scale (reversed RdBu): negative blue, positive red.
DIVERGING = "RdBu_r"

_PLOTLY = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880", "#FF97FF",
           "#FECB52"]  # plotly.colors.qualitative.Plotly
_SAFE = ["rgb(136, 204, 238)", "rgb(204, 102, 119)", "rgb(221, 204, 119)", "rgb(17, 119, 51)",
         "rgb(51, 34, 136)", "rgb(170, 68, 153)", "rgb(68, 170, 153)", "rgb(153, 153, 51)", "rgb(136, 34, 85)",
         "rgb(102, 17, 0)", "rgb(136, 136, 136)"]  # plotly.colors.qualitative.Safe
_DARK24 = ["#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86", "#EB663B",
           "#511CFB", "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1",
           "#620042", "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038"]  # qualitative.Dark24
_LIGHT24 = ["#FD3216", "#00FE35", "#6A76FC", "#FED4C4", "#FE00CE", "#0DF9FF", "#F6F926", "#FF9616", "#479B55",
            "#EEA6FB", "#DC587D", "#D626FF", "#6E899C", "#00B5F7", "#B68E00", "#C9FBE5", "#FF0092", "#22FFA7",
            "#E3EE9E", "#86CE00", "#BC7196", "#7E7DCD", "#FC6955", "#E48F72"]  # qualitative.Light24
#: Colours of groups without a fixed colour (conditions, covariates, loss curves).
PALETTE: list[str] = _DARK24 + _LIGHT24

# ---- colours of cells ------------------------------------------------------------------------
#: One colour per kind of cell population, the same on every page.
KIND_COLORS: dict[str, str] = {CONTROL: "#8c8c8c", PREDICTED: "#d62728", OBSERVED: "#1f77b4", ADDITIVE: "#ff7f0e"}
#: Colours of the condition kinds (control / single / combination).
CONDITION_KIND_COLORS: dict[str, str] = {CONTROL: KIND_COLORS[CONTROL], "single": "#2ca02c", "combination": "#9467bd"}
OTHER_CELLS_COLOR = "#e6e6e6"


def kind_color(kind: str) -> str:
    """Colour of a kind: :data:`KIND_COLORS`, then :data:`CONDITION_KIND_COLORS`, else a
    palette colour chosen by a stable hash of the name (the same in every process)."""
    if kind in KIND_COLORS:
        return KIND_COLORS[kind]
    if kind in CONDITION_KIND_COLORS:
        return CONDITION_KIND_COLORS[kind]
    return PALETTE[zlib.crc32(str(kind).encode()) % len(PALETTE)]


# ---- colours of models ---------------------------------------------------------------------
NOISE_COLOR = "#cfcfcf"
#: Fixed colours of the usual models, the same as the cell kinds: PDAE = predicted,
#: additive = additive, control / no change = control, oracle = observed.
FIXED_MODEL_COLORS: dict[str, str] = {
    "pdae": KIND_COLORS[PREDICTED],
    "additive": KIND_COLORS[ADDITIVE],
    "control": KIND_COLORS[CONTROL],
    "no change": KIND_COLORS[CONTROL],
    "oracle": KIND_COLORS[OBSERVED],
}
#: The other models' colours, in order: plotly's palette without its red and blue
#: (too close to predicted and observed), then the colour-blind-safe palette.
_MODEL_PALETTE: list[str] = [
    c for c in [*_PLOTLY, *_SAFE]
    if c.lower() not in {"#ef553b", "#636efa"} and c.lower() not in set(FIXED_MODEL_COLORS.values())
]


def model_colors(models: Sequence[str]) -> dict[str, str]:
    """A fixed colour per model: the usual ones from :data:`FIXED_MODEL_COLORS`, the
    noise floor light grey, the rest from a palette (in order, skipping those colours)."""
    out: dict[str, str] = {}
    k = 0
    for m in models:
        if m == NOISE:
            out[m] = NOISE_COLOR
        elif m in FIXED_MODEL_COLORS:
            out[m] = FIXED_MODEL_COLORS[m]
        else:
            out[m] = _MODEL_PALETTE[k % len(_MODEL_PALETTE)]
            k += 1
    return out
