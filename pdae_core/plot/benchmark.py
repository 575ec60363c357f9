"""Plotly figures of benchmark results: pure functions, no file IO, no UI framework.

Every function takes tables (as written by :mod:`pdae_core.eval.benchmark`) or arrays
and returns a :class:`plotly.graph_objects.Figure`; the caller shows it
(``fig.show()``, Streamlit's ``st.plotly_chart``) or saves it
(``fig.write_html(path, include_plotlyjs="cdn")``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .style import METRIC_LABELS, NOISE, metric_label, model_colors

#: METRIC_LABELS and metric_label are re-exported for pages/benchmark.py (defined in :mod:`.style`).
__all__ = ["METRIC_LABELS", "metric_label", "condition_bars", "delta_scatter", "summary_bars"]


def _models_in(df: pd.DataFrame, models: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(df["model"]))
    if models is None:
        return [m for m in present if m != NOISE] + ([NOISE] if NOISE in present else [])
    missing = [m for m in models if m not in present]
    if missing:
        raise ValueError(f"Model(s) {missing} are not in the table (models: {present}).")
    return list(models)


def condition_bars(
    per_condition: pd.DataFrame,
    metric: str = "energy_distance",
    models: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Grouped bars: one group per held-out condition, one bar per model (the noise
    floor included, in grey), height the mean over seeds where the condition was
    held out. Error bars: the standard deviation over those seeds when there are
    several; with one seed, the 95% bootstrap interval when the table has it
    (columns ``{metric}_lo`` and ``{metric}_hi``). The hover says which.

    ``per_condition`` needs the columns ``model``, ``condition`` and ``metric``
    (``seen`` and ``seed`` are used when present). Conditions are ordered by seen tag
    (highest first), then name."""
    for col in ("model", "condition", metric):
        if col not in per_condition.columns:
            raise ValueError(f"per_condition has no column {col!r}.")
    models = _models_in(per_condition, models)
    df = per_condition[per_condition["model"].isin(models)]
    stats = df.groupby(["model", "condition"], sort=False)[metric].agg(["mean", "std", "count"])
    lo_col, hi_col = f"{metric}_lo", f"{metric}_hi"
    if lo_col in df.columns and hi_col in df.columns:
        bounds = df.groupby(["model", "condition"], sort=False)[[lo_col, hi_col]].mean()
        stats = stats.join(bounds.rename(columns={lo_col: "lo", hi_col: "hi"}))
    else:
        stats = stats.assign(lo=np.nan, hi=np.nan)
    if "seen" in df.columns:
        seen = df.groupby("condition", sort=False)["seen"].first()
        order = sorted(seen.index, key=lambda c: (-int(seen[c]) if pd.notna(seen[c]) else 1, str(c)))
    else:
        order = sorted(df["condition"].unique(), key=str)
    colors = model_colors(models)
    fig = go.Figure()
    for m in models:
        s = stats.loc[m].reindex(order) if m in stats.index.get_level_values(0) else pd.DataFrame(
            index=order, columns=["mean", "std", "count", "lo", "hi"], dtype=float)
        mean = s["mean"].to_numpy(dtype=float)
        several = s["count"].fillna(0).to_numpy() > 1
        boot = ~several & s["lo"].notna().to_numpy() & s["hi"].notna().to_numpy()
        up = np.where(several, s["std"].fillna(0.0).to_numpy(dtype=float),
                      np.where(boot, s["hi"].to_numpy(dtype=float) - mean, 0.0))
        down = np.where(several, s["std"].fillna(0.0).to_numpy(dtype=float),
                        np.where(boot, mean - s["lo"].to_numpy(dtype=float), 0.0))
        what = np.where(several, "± sd over seeds", np.where(boot, "95% bootstrap interval", "no interval"))
        fig.add_trace(go.Bar(
            name=m, x=order, y=mean, marker_color=colors[m],
            error_y={"type": "data", "symmetric": False, "array": np.clip(up, 0, None),
                     "arrayminus": np.clip(down, 0, None), "visible": bool((several | boot).any())},
            customdata=np.stack([s["count"].fillna(0).to_numpy(), what], axis=-1),
            hovertemplate=f"{m}<br>%{{x}}<br>{metric_label(metric)}: %{{y:.3f}}<br>seeds: %{{customdata[0]}}"
            "<br>error bar: %{customdata[1]}<extra></extra>",
        ))
    fig.update_layout(
        barmode="group", title=title or f"{metric_label(metric)} per held-out condition",
        xaxis_title="held-out condition", yaxis_title=metric_label(metric), legend_title="model",
        xaxis_tickangle=-45 if len(order) > 8 else 0,
    )
    return fig


def delta_scatter(
    pred_delta: np.ndarray | Mapping[str, np.ndarray],
    obs_delta: np.ndarray,
    gene_names: Sequence[str],
    title: str = "",
    highlight: Sequence[str] | None = None,
    n_labels: int = 10,
) -> go.Figure:
    """Predicted versus observed change from control, one point per gene.

    ``pred_delta``: one vector (length = genes) or ``{model: vector}`` for several
    models (one trace each). A dashed ``y = x`` line marks perfect predictions.
    Labelled genes: ``highlight`` (gene names, e.g. the top DE genes) if given, else
    the ``n_labels`` genes with the largest observed change; labels sit on the
    first model's points."""
    obs = np.asarray(obs_delta, dtype=float).reshape(-1)
    genes = [str(g) for g in gene_names]
    preds = dict(pred_delta) if isinstance(pred_delta, Mapping) else {"predicted": pred_delta}
    if not preds:
        raise ValueError("pred_delta is empty: give one vector or {model: vector}.")
    preds = {k: np.asarray(v, dtype=float).reshape(-1) for k, v in preds.items()}
    for name, v in preds.items():
        if v.shape != obs.shape or len(genes) != obs.shape[0]:
            raise ValueError(
                f"Lengths differ: {name} has {v.shape[0]} values, obs_delta {obs.shape[0]}, gene_names {len(genes)}."
            )
    colors = model_colors(list(preds))
    fig = go.Figure()
    for name, v in preds.items():
        fig.add_trace(go.Scatter(
            x=obs, y=v, mode="markers", name=name, text=genes, marker={"color": colors[name], "size": 6, "opacity": 0.7},
            hovertemplate="%{text}<br>observed %{x:.3f}<br>predicted %{y:.3f}<extra>" + name + "</extra>",
        ))
    vals = np.concatenate([obs, *preds.values()])
    vals = vals[np.isfinite(vals)]
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (-1.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    fig.add_trace(go.Scatter(
        x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines", name="y = x",
        line={"dash": "dash", "color": "black", "width": 1}, hoverinfo="skip",
    ))
    if highlight is not None:
        pos = {g: i for i, g in enumerate(genes)}
        idx = [pos[g] for g in highlight if g in pos]
    else:
        idx = list(np.argsort(-np.abs(obs), kind="stable")[: max(0, int(n_labels))])
    first = next(iter(preds.values()))
    for i in idx:
        fig.add_annotation(x=obs[i], y=first[i], text=genes[i], showarrow=True, arrowhead=0, ax=15, ay=-15,
                           font={"size": 10})
    fig.update_layout(
        title=title or "Predicted versus observed change from control",
        xaxis_title="observed change from control", yaxis_title="predicted change from control",
        legend_title="model",
    )
    return fig


def summary_bars(
    summary: pd.DataFrame,
    metric: str = "energy_distance",
    view: str = "seeds",
    models: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Bars per section (all test conditions, then each seen tag) and model, from the
    long summary table of :func:`pdae_core.eval.benchmark.summarize`. ``view="seeds"``:
    mean over seeds with sd error bars; ``view="pooled"``: mean over conditions with
    its bootstrap interval."""
    if view not in ("seeds", "pooled"):
        raise ValueError(f"view must be 'seeds' or 'pooled', got {view!r}.")
    df = summary[(summary["view"] == view) & (summary["metric"] == metric)]
    if df.empty:
        raise ValueError(f"The summary has no rows for metric {metric!r} and view {view!r}.")
    models = _models_in(df, models)
    sections = list(dict.fromkeys(df["section"]))
    colors = model_colors(models)
    fig = go.Figure()
    for m in models:
        s = df[df["model"] == m].set_index("section").reindex(sections)
        y = s["value"].to_numpy(dtype=float)
        if view == "seeds":
            err = {"type": "data", "array": s["spread"].fillna(0.0).to_numpy(dtype=float),
                   "visible": bool(s["spread"].notna().any())}
        else:
            err = {"type": "data", "symmetric": False, "array": (s["hi"] - s["value"]).to_numpy(dtype=float),
                   "arrayminus": (s["value"] - s["lo"]).to_numpy(dtype=float), "visible": True}
        fig.add_trace(go.Bar(name=m, x=sections, y=y, marker_color=colors[m], error_y=err))
    what = "mean +- sd over seeds" if view == "seeds" else "mean over conditions, 95% bootstrap interval"
    fig.update_layout(barmode="group", title=title or f"{metric_label(metric)} ({what})",
                      yaxis_title=metric_label(metric), legend_title="model")
    return fig
