"""The training curves of a model for the dashboard: a pure figure builder, no file IO, no UI.

:func:`training_curves` takes the evaluation records of a training run (``History.records``,
or the live records of a training job) and draws one panel per scale: the validation
distance first, then the training loss terms grouped by their order of magnitude, each
panel with its own y axis, every term under a readable name (:func:`loss_label`). Axes
of quantities that cannot be negative never show negative ticks. The records of an
ensemble (a ``member`` field) give one line per network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import PALETTE, TEMPLATE

__all__ = ["LOSS_LABELS", "VALIDATION_KEYS", "loss_label", "training_curves", "training_notes"]

#: Readable names of the loss terms that the models report (``train_<term>`` in the records).
LOSS_LABELS: dict[str, str] = {
    "loss": "total training loss",
    # PDAE
    "pert": "fit to perturbed cells",
    "rec": "reconstruction",
    "prior": "latent space vs a normal distribution",
    "l21": "sparsity of perturbation effects (L2,1)",
    # SAMS-VAE, FCR
    "nll": "reconstruction (negative log-likelihood)",
    "kl_z": "cell latent vs its prior (KL)",
    "kl_embed": "perturbation embeddings vs their prior (KL)",
    "kl_mask": "perturbation masks vs their prior (KL)",
    "kl_x": "cell-state latent vs its prior (KL)",
    "kl_t": "perturbation latent vs its prior (KL)",
    "kl_tx": "interaction latent vs its prior (KL)",
    "cls_x": "cell-type classifier",
    "cls_t": "perturbation classifier",
    "adv": "independence of the latents (adversarial)",
    "sim": "structure regulariser",
    # SCCVAE
    "pred": "fit to perturbed cells",
    "kl": "latent vs its prior (KL)",
    "mmd": "fit to perturbed cells (MMD)",
    "l1": "sparsity of perturbation effects (L1)",
}
#: Validation keys of the records and their names (the distance on held-aside training cells).
VALIDATION_KEYS: dict[str, str] = {
    "val_ed": "validation: distance of predicted to held-aside cells",
    "val_score": "validation score",
}
#: Terms that cannot be negative (energy scores and distances, KL, norms, MMD).
_NON_NEGATIVE = {"pert", "rec", "prior", "l21", "kl_z", "kl_embed", "kl_mask", "kl_x", "kl_t", "kl_tx",
                 "cls_x", "cls_t", "kl", "mmd", "l1", "pred", "val_ed"}
_SKIP = {"epoch", "step", "lr", "seconds", "train_seconds", "member"}
_NOTES = {
    "l21": "The sparsity term (L2,1) usually rises during the first epochs: the perturbation effects start at "
           "zero and grow as the model learns them. This is expected; it levels off later.",
}
_PANEL_HEIGHT = 210


def loss_label(key: str) -> str:
    """Readable name of a record key: ``train_pert`` -> "fit to perturbed cells",
    ``val_ed`` -> the validation distance; unknown keys with spaces for underscores."""
    if key in VALIDATION_KEYS:
        return VALIDATION_KEYS[key]
    term = key.removeprefix("train_")
    return LOSS_LABELS.get(term, term.replace("_", " "))


def training_notes(records: Sequence[Mapping[str, object]]) -> list[str]:
    """Notes that help reading the curves of these records (e.g. why the L2,1 term rises)."""
    keys = {str(k).removeprefix("train_") for r in records for k in r}
    return [note for term, note in _NOTES.items() if term in keys]


def _number(v: object) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _series(records: Sequence[Mapping[str, object]], key: str) -> dict[int, list[tuple[float, float]]]:
    """(epoch, value) points of ``key`` per member (0 for a single network)."""
    out: dict[int, list[tuple[float, float]]] = {}
    for i, r in enumerate(records):
        x, y = _number(r.get("epoch", i + 1)), _number(r.get(key))
        if x is None or y is None:
            continue
        member = r.get("member", 0)
        out.setdefault(int(member) if _number(member) is not None else 0, []).append((x, y))
    return out


def _scale_groups(keys: Sequence[str], series: Mapping[str, dict[int, list[tuple[float, float]]]]) -> list[list[str]]:
    """Training terms grouped by order of magnitude: a term joins the group of the largest
    terms while its typical size is at least a tenth of theirs (exact zeros join the last group)."""
    size = {k: float(np.median([abs(y) for pts in series[k].values() for _, y in pts])) for k in keys}
    groups: list[list[str]] = []
    top = math.inf
    for k in sorted(keys, key=lambda k: -size[k]):
        if groups and (size[k] == 0 or size[k] >= top / 10):
            groups[-1].append(k)
        else:
            groups.append([k])
            top = size[k]
    return groups


def _axis_range(values: Sequence[float], non_negative: bool) -> list[float]:
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo) if hi > lo else max(0.1 * abs(hi), 1e-6)
    lo, hi = lo - pad, hi + pad
    if non_negative:
        lo = max(0.0, lo)
    return [lo, hi]


def training_curves(records: Sequence[Mapping[str, object]], title: str | None = None) -> go.Figure:
    """One figure of a training run's evaluations (x: epoch of each network's training).

    Panels from top to bottom: the validation distance (``val_ed`` / ``val_score``; lower is
    better), then the training terms (``train_*``) grouped by scale, one y axis per panel.
    A panel whose quantities cannot be negative (energy distances and scores, KL, norms) or
    whose values are all >= 0 has an axis starting at 0 or above. Ensembles (records with
    ``member``) draw one line per network in the term's colour, later networks darker.
    None, non-numeric and non-finite values are skipped; no points give an empty figure
    with the note "no evaluations yet"."""
    keys = list(dict.fromkeys(str(k) for r in records for k in r if k not in _SKIP))
    series = {k: s for k in keys if (s := _series(records, k))}
    val_keys = [k for k in VALIDATION_KEYS if k in series]
    train_keys = [k for k in series if k not in VALIDATION_KEYS]
    panels = ([val_keys] if val_keys else []) + (_scale_groups(train_keys, series) if train_keys else [])
    if not panels:
        fig = go.Figure()
        fig.update_layout(title=title, template=TEMPLATE, height=_PANEL_HEIGHT + 60)
        fig.add_annotation(text="no evaluations yet", xref="paper", yref="paper", x=0.5, y=0.5,
                           showarrow=False, font={"size": 16})
        return fig
    members = sorted({m for s in series.values() for m in s})
    n_train = len(panels) - bool(val_keys)
    subtitles = [
        "validation (lower is better)" if panel is val_keys else
        "training loss" if n_train == 1 else "training: " + " · ".join(loss_label(k) for k in panel)
        for panel in panels
    ]
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.22 / len(panels),
                        subplot_titles=subtitles)
    colour = {k: ("black" if k in VALIDATION_KEYS else PALETTE[j % len(PALETTE)]) for j, k in enumerate(keys)}
    for row, panel in enumerate(panels, start=1):
        values: list[float] = []
        for k in panel:
            name = loss_label(k)
            first = True
            for m in members:
                pts = series[k].get(m)
                if not pts:
                    continue
                values += [y for _, y in pts]
                net = f"network {m + 1}" if len(members) > 1 else ""
                fig.add_trace(go.Scatter(
                    x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=name,
                    legendgroup=k, showlegend=first,
                    opacity=1.0 if len(members) == 1 else 0.45 + 0.55 * (m + 1) / len(members),
                    line={"color": colour[k], "dash": "dash" if k in VALIDATION_KEYS else "solid"},
                    marker={"size": 5}, meta=k,
                    hovertemplate=f"{name}{'<br>' + net if net else ''}<br>epoch %{{x}}<br>%{{y:.4g}}<extra></extra>",
                ), row=row, col=1)
                first = False
        non_negative = all(k.removeprefix("train_") in _NON_NEGATIVE for k in panel) or min(values) >= 0
        fig.update_yaxes(range=_axis_range(values, non_negative), row=row, col=1,
                         rangemode="nonnegative" if non_negative else "normal")
    fig.update_xaxes(title_text="epoch" + (" (of each network)" if len(members) > 1 else ""), row=len(panels), col=1)
    fig.update_layout(title=title, template=TEMPLATE, height=_PANEL_HEIGHT * len(panels) + 110,
                      legend={"orientation": "v", "yanchor": "top", "y": 1, "x": 1.02},  # beside the panels
                      margin={"t": 60 if title else 40})
    return fig
