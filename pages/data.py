"""Data: choose a dataset, set up its columns, see what it holds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from pages import common
from pdae_core import explore
from pdae_core.data.columns import control_candidates, guess_columns, is_control_label
from pdae_core.errors import PDAEError
from pdae_core.plot import cells as cf

common.init_state()
ss = st.session_state
st.title("Data")
st.caption("Pick a dataset, tell the app which column holds the perturbations, and see what was measured.")
with st.expander("How to read this page"):
    st.markdown(
        "- **Source**: the demo (a slice of the Norman et al. 2019 CRISPRa screen), your own `.h5ad` file, "
        "or a file on the server.\n"
        "- **Set-up**: which column of the file names each cell's perturbation (combinations written `A+B`), and "
        "which of its labels marks the unperturbed *control* cells.\n"
        "- **The numbers**: cells and genes measured; *distinct targets* are the genes (or compounds) perturbed "
        "in at least one condition; *singles* are conditions with one target, *combinations* two or more "
        "together.\n"
        "- **Combinations with every part measured alone** are the ones a model can be checked on: hold them "
        "out when training (Model page), then compare its prediction with the measured cells.\n"
        "- **Cells per condition**: control on top, then the largest conditions. A condition with few cells "
        "gives a noisier picture of its effect."
    )

#: How the expression values are shown (summary.x_kind -> words).
EXPRESSION_WORDS = {
    "log1p": "log-normalised (counts scaled to the same total per cell, then log(1 + x))",
    "counts": "raw counts (not yet normalised)",
    "change": "changes from control (not expression levels)",
}
#: Human headers of the per-condition table; any other column gets its name in words.
HEADERS = {
    "condition": "Condition",
    "n_cells": "Cells",
    "kind": "Kind",
    "n_parts": "Number of targets",
    "parts_measured": "Every target also measured alone",
}
MISSING = "–"


def control_first(conditions: pd.DataFrame) -> pd.DataFrame:
    """The conditions with control first, then the most cells first (ties by name)."""
    order = conditions.assign(_ctrl=conditions["kind"] != "control")
    return order.sort_values(["_ctrl", "n_cells", "condition"], ascending=[True, False, True],
                             kind="stable").drop(columns="_ctrl")


def readable_table(conditions: pd.DataFrame) -> pd.DataFrame:
    """The per-condition table as shown: control first, human headers, yes/no, and "–" where a value
    does not apply (a control has no targets to measure alone) or is missing."""
    df = control_first(conditions).reset_index(drop=True)
    if "parts_measured" in df:
        df["parts_measured"] = [MISSING if k == "control" else "yes" if bool(v) else "no"
                                for k, v in zip(df["kind"], df["parts_measured"])]
    for c in df.columns:  # only columns with a gap become text: numbers stay numbers
        gap = df[c].isna() | df[c].astype(str).str.strip().isin(["None", "nan", "NaN", "<NA>", ""])
        if gap.any():
            df[c] = df[c].astype(object).where(~gap, MISSING)
    return df.rename(columns=lambda c: HEADERS.get(c, str(c).replace("_", " ").capitalize()))


def condition_chart(conditions: pd.DataFrame):
    """Cells per condition, with the control bar on top."""
    return cf.condition_count_bars(conditions)


SOURCES = ("Built-in dataset", "Upload an .h5ad", "File on the server")
src = ss.data_source
default_mode = {"builtin": 0, "upload": 1, "path": 2}[src[0]]
mode = st.radio("Source", SOURCES, index=default_mode, horizontal=True, key="data_mode")

if mode == SOURCES[0]:
    names = list(common.BUILTIN_DATASETS)
    current = src[1] if src[0] == "builtin" else common.DEMO_DATASET
    name = st.selectbox(
        "Dataset", names, index=names.index(current) if current in names else 0, key="data_builtin",
        help="norman19_devel: K562 CRISPRa, Norman et al. 2019 (the demo). mcfaline23_devel: "
        "McFaline-Figueroa et al. 2023 chemical-genetic slice. synthetic: generated from the PDAE model with known truth.",
    )
    if src[0] != "builtin" or src[1] != name:
        ss.data_source = ("builtin", name)
elif mode == SOURCES[1]:
    st.caption(f"An AnnData saved with `adata.write_h5ad()`, at most {common.MAX_UPLOAD_MB} MB.")
    up = st.file_uploader("Upload an .h5ad file", type=None, key="data_upload")
    if up is not None:
        err = common.add_upload(up.name, up.getvalue())
        if err:
            st.error(err)
            st.stop()
else:
    path = st.text_input("Path to an .h5ad file on the server", key="data_path", placeholder="/data/screen.h5ad")
    if st.button("Load file", key="data_path_load") and path.strip():
        ss.data_source = ("path", str(Path(path.strip()).expanduser()))

ds = common.current_dataset()
note = ss.get("data_note")
if ds is None:
    if note and note[0] == "unavailable":
        if len(note) > 2 and note[2]:  # the missing file and its folder, in one sentence
            st.warning(f"{ss.data_source[1]} is not on this machine and could not be downloaded: its file {note[2]} "
                       f"is not in {note[3]}. Save {note[2]} there, or set PDAE_DATA_DIR to a folder that has it "
                       "and restart the app.")
        else:
            st.warning(f"{ss.data_source[1]} is not on this machine and could not be downloaded. {common.data_dir_hint()}")
        st.caption(note[1])
        c1, c2 = st.columns(2)
        if c1.button("Try to download it again", key="data_download"):
            ss.offline.discard(ss.data_source[1])
            st.rerun()
        def use_synthetic() -> None:  # a callback runs before the widgets, so it may set the selectbox too
            ss.data_source = ("builtin", "synthetic")
            ss.data_builtin = "synthetic"
            ss.data_mode = SOURCES[0]

        c2.button("Use the synthetic dataset", key="data_use_synthetic", on_click=use_synthetic)
    else:
        st.error(note[1] if note else "The dataset could not be loaded.")
    st.stop()

# ---- set-up ----------------------------------------------------------------------------
adata = ds.adata
setup = dict(ss.data_setup.get(ds.source_key, {}))
guess = guess_columns(adata)
st.subheader("Set-up")
cols = list(guess.perturbation_candidates)  # text columns only: numbers are never perturbation labels
pk = setup.get("perturbation_key")
if pk and pk not in cols:
    cols = [pk, *cols]
if not cols:
    st.error(f"{guess.reason} This file cannot be used as it is: add a column naming each cell's perturbation "
             "(with a label such as 'control' for the unperturbed cells) and load it again.")
    st.stop()
if pk is None:
    st.warning(f"{guess.reason or 'No perturbation column is set.'} **Choose the column that names each "
               "cell's perturbation** below.")
c1, c2, c3 = st.columns(3)
pk = c1.selectbox("Perturbation column", cols, index=cols.index(pk) if pk in cols else None,
                  key=f"pk:{ds.source_key}", placeholder="Choose the perturbation column",
                  help="The obs column naming each cell's perturbation; combinations written A+B.")
if pk is None:
    st.stop()
try:
    controls = control_candidates(adata, pk)
except PDAEError as e:
    st.error(str(e))
    st.stop()
ctrl = setup.get("control_label") if setup.get("perturbation_key") == pk else None
if ctrl not in controls:  # nothing chosen yet: a control-like label if there is one, else the user chooses
    ctrl = controls[0] if is_control_label(controls[0]) else None
if ctrl is None:
    st.warning(f"None of the labels of column '{pk}' looks like a control (control, ctrl, non-targeting, ...). "
               "**Choose the label of the unperturbed cells** below.")
ctrl = c2.selectbox("Control label", controls, index=controls.index(ctrl) if ctrl in controls else None,
                    key=f"ctrl:{ds.source_key}:{pk}", placeholder="Choose the control label",
                    help="Cells with this label are unperturbed (label vector 0).")
covs = ["(none)", *[c for c in guess.covariate_candidates if c != pk]]
cov = setup.get("covariate_key") or "(none)"
cov = c3.selectbox("Context (cell type / line)", covs, index=covs.index(cov) if cov in covs else 0,
                   key=f"cov:{ds.source_key}",
                   help="Optional: the column saying which cell type, cell line or donor each cell comes from. "
                   "Models that use it (PDAE, FCR) learn how each context differs, so a perturbation can be "
                   "predicted in a context where it was never measured; the Model page can hold a perturbation "
                   "out in one context only, and Compose can predict from one context's cells.")
new = {**setup, "perturbation_key": pk, "control_label": ctrl, "covariate_key": None if cov == "(none)" else cov}
if new != setup:
    ss.data_setup[ds.source_key] = new
    st.rerun()
if ctrl is None:
    st.stop()

if ds.registry is None:
    st.error(ds.setup_error or "The dataset could not be set up.")
    st.stop()

summary = explore.summarize_dataset(adata, ds.registry)
common.warm_reference_embedding(ds)  # the Compose page's UMAP, fitted while the user reads this page
if summary.x_kind == "counts" or setup.get("preprocess"):
    if not setup.get("preprocess"):
        st.warning("X holds raw counts. Models expect log-normalised expression: preprocess it first.")
    with st.form("preprocess"):
        hvg = st.number_input("Keep the top N highly variable genes (0 = all genes)", 0, 20000,
                              int(setup.get("n_top_genes") or 2000), step=500)
        on = st.checkbox("normalize_total + log1p (+ HVG selection)", value=bool(setup.get("preprocess")))
        if st.form_submit_button("Apply"):
            ss.data_setup[ds.source_key] = {**new, "preprocess": on, "n_top_genes": int(hvg) or None}
            st.rerun()

# ---- summary ---------------------------------------------------------------------------
st.subheader(f"{ds.label}")
m = st.columns(5)
m[0].metric("Cells", f"{summary.n_cells:,}")
m[1].metric("Genes", f"{summary.n_genes:,}", help="Genes whose expression was measured in every cell.")
m[2].metric("Distinct targets", summary.n_perturbations,
            help="Genes (or compounds) perturbed in at least one condition, alone or in a combination.")
m[3].metric("Singles", summary.n_singles, help="Conditions with one target.")
m[4].metric("Combinations", summary.n_combinations, help="Conditions with two or more targets together.")
st.markdown(f"**Expression values:** {EXPRESSION_WORDS.get(summary.x_kind, summary.x_kind)}")
both = summary.combinations_with_parts
if both:
    st.markdown(
        f"**{len(both)} combination(s) have every part measured alone**, so a model can be checked on them "
        f"(hold them out when training): {', '.join(both)}"
    )
elif summary.n_combinations:
    st.markdown("No combination has all of its parts measured alone.")
t1, t2 = st.tabs(["Cells per condition", "Table"])
with t1:
    st.plotly_chart(condition_chart(summary.conditions), width="stretch", config=common.PLOT_CONFIG, theme=None)
with t2:
    st.dataframe(readable_table(summary.conditions), hide_index=True, width="stretch")
