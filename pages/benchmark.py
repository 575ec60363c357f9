"""Benchmark: how good is the loaded model on conditions it never saw? Held-out test
of the loaded model, saved benchmark results, and new benchmark runs in the background."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from pages import common
from pdae_core.errors import PDAEError
from pdae_core.eval.benchmark import (
    BenchmarkSpec,
    available_models,
    has_results,
    read_results,
    results_folders,
)
from pdae_core.eval.heldout import NOISE, heldout_comparison, plain_summary
from pdae_core.models.baselines import NoChange
from pdae_core.plot import benchmark as figures
from pdae_core.train.jobs import JobState, benchmark_job

common.init_state()
ss = st.session_state
st.title("Benchmark")
with st.expander("How to read this page"):
    st.markdown(
        "A model is tested on combinations it **never saw** during training (held out). Its predicted cells are "
        "compared with the measured cells by the *energy distance* (0 = indistinguishable, lower is better). The "
        "same is done for simple baselines: adding the two single effects (*additive*), the same scaled down or "
        "up (*scaled additive*), and no change at all. The grey *noise floor* is two halves of the measured cells "
        "compared with each other: no prediction can be expected to do better. A model is worth using where it "
        "beats the baselines by more than its error bars. Words are explained on the Glossary page."
    )
ds = common.require_dataset()


@st.cache_resource(show_spinner="Scoring the held-out conditions (energy distance, bootstrap)…", max_entries=8)
def _heldout_table(data_key: str, model_key: str, conditions: tuple[str, ...], _model, _adata) -> pd.DataFrame:
    reg = _model.registry
    predictors = {
        _model.model_type: _model,
        "additive": common.additive_baseline(data_key, model_key, _model, _adata),
        "no change": NoChange().fit(_adata, reg, list(conditions)),
    }
    table = heldout_comparison(_adata, reg, predictors, list(conditions), n_boot=100)
    return table.rename(columns={"method": "model", "ed": "energy_distance", "ed_lo": "energy_distance_lo",
                                 "ed_hi": "energy_distance_hi"})


def _say(per_condition: pd.DataFrame, metric: str, model: str | None = None) -> None:
    """The result in one plain sentence, above its chart."""
    model = model or ("pdae" if "pdae" in set(per_condition["model"]) else None)
    if model is None:
        return
    higher = metric.startswith(("pearson", "r2", "direction"))
    sentence = plain_summary(per_condition, model, metric=metric, lower_is_better=not higher)
    if sentence:
        st.markdown(f"**{sentence}**")


def _show_results(folder: Path, key: str) -> None:
    res = read_results(folder)
    if res.per_condition is not None:
        metrics = res.metrics(figures.METRIC_LABELS)
        metric = st.selectbox("Metric", metrics, format_func=figures.metric_label, key=f"{key}_metric")
        _say(res.per_condition, metric)
        if res.track == "cells":
            st.plotly_chart(figures.condition_bars(res.per_condition, metric=metric), width="stretch",
                            config=common.PLOT_CONFIG, theme=None, key=f"{key}_bars")
            st.caption("Bars: mean over the seeds in which a condition was held out; error bars: ± one standard "
                       "deviation over those seeds (the 95% bootstrap interval over cells when there is one seed). "
                       "The grey bar is the noise floor: two random halves of the observed cells compared, the best "
                       "any prediction can reach.")
        elif res.track == "pseudobulk":  # one value per double
            st.dataframe(res.mean_per_model(metric).style.format(precision=3, na_rep="–"), width="stretch")
    if res.summary_text is not None:
        with st.expander("Summary tables", expanded=res.per_condition is None):
            st.markdown(res.summary_text)


tab_model, tab_saved, tab_run = st.tabs(["Loaded model on its held-out conditions", "Saved results", "Run a benchmark"])

with tab_model:
    m = common.current_model()
    if m is None:
        st.info("Load or train a model on the Model page to test it here.")
    else:
        model_key, model = m
        why = common.compatibility(model, ds)
        present = set(ds.adata.obs[model.registry.perturbation_key].astype(str)) if not why else set()
        held = [c for c in model.holdout if c in present]
        table = None
        if why:
            st.warning(f"The loaded model does not fit {ds.label}: {why}")
        elif not held:
            st.info("The loaded model held nothing out of this dataset, so there is nothing unseen to test it on. "
                    "Train one with held-out conditions on the Model page.")
        else:
            st.markdown(
                f"Energy distance between predicted and observed cells for the **{len(held)} conditions the model "
                "never saw**, with 95% bootstrap intervals over cells; lower is better. The noise floor is the "
                "distance between two random halves of the observed cells: nothing can do better."
            )
            try:
                table = _heldout_table(ds.key, model_key, tuple(held), model, ds.adata)
            except PDAEError as e:
                st.error(str(e))
                table = None
        if table is not None:
            _say(table, "energy_distance", model.model_type)
            st.plotly_chart(figures.condition_bars(table), width="stretch", config=common.PLOT_CONFIG,
                            theme=None, key="bench_model_bars")
            wide = table.pivot(index="condition", columns="model", values="energy_distance")
            cols = [c for c in wide.columns if c != NOISE] + [NOISE]
            st.dataframe(wide[cols].style.format(precision=4, na_rep="–"), width="stretch")

with tab_saved:
    folders = results_folders(common.RESULTS_DIR)
    extra = ss.get("bench_out")
    if extra and has_results(extra) and Path(extra) not in folders:
        folders.append(Path(extra))
    if not folders:
        st.info("No saved results: run `pdae benchmark` or use the Run tab.")
    else:
        names = [f.name if f.parent == common.RESULTS_DIR else str(f) for f in folders]
        base = ds.source_key.split(":", 1)[-1]
        pick = st.selectbox("Results", names, index=names.index(base) if base in names else 0, key="bench_saved")
        _show_results(folders[names.index(pick)], "saved")

with tab_run:
    job = ss.get("bench_job")
    if job is None or job.snapshot().finished:
        with st.form("bench_form"):
            st.markdown(f"Benchmark on **{ds.label}**: random held-out doubles per seed, every model trained "
                        "without them. Trained models (pdae) take minutes per seed on a CPU.")
            models = st.multiselect("Models", available_models(), default=["additive", "linear", "control", "pool"])
            c1, c2, c3 = st.columns(3)
            seeds = c1.number_input("Seeds", 1, 10, 1)
            frac = c2.slider("Share of testable doubles held out", 0.1, 0.9, 0.3, 0.05)
            epochs = c3.number_input("Epochs for trained models", 1, 1000, 30)
            go = st.form_submit_button("Run", type="primary")
        if go:
            try:
                reg = ds.registry
                spec = BenchmarkSpec(models=models, seeds=list(range(int(seeds))), test_fraction=float(frac),
                                     train={"max_epochs": int(epochs)}, perturbation_key=reg.perturbation_key,
                                     control_label=reg.control_label)
                out = ss.get("bench_out") or tempfile.mkdtemp(prefix="pdae_benchmark_")
                ss.bench_out = out
                ss.bench_job = benchmark_job(ds.label, spec, out, adata=ds.adata, overwrite=True).start()
                st.rerun()
            except PDAEError as e:
                st.error(str(e))

    @st.fragment(run_every=1.0)
    def bench_progress() -> None:
        job = ss.get("bench_job")
        if job is None:
            return
        snap = job.snapshot()
        st.progress(min(1.0, snap.fraction), text=f"{snap.state.value} · {snap.elapsed_s:.0f} s · {snap.message}")
        if not snap.finished:
            if st.button("Cancel", key="bench_cancel"):
                job.cancel()
        elif snap.state is JobState.FAILED:
            st.error(f"The benchmark failed: {snap.error}")
        elif snap.state is JobState.DONE:
            st.success(f"Done; results in {ss.bench_out}.")
            _show_results(Path(ss.bench_out), "run")

    bench_progress()
