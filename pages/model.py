"""Model: load a checkpoint, or train a new model in the background; save and download it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

import pdae_core as pc
from pages import common
from pdae_core import explore
from pdae_core.data.contexts import PAIR_SEPARATOR, measured_pairs, training_mask
from pdae_core.data.registry import condition_column
from pdae_core.eval.calibration import calibration_doubles, deal_doubles
from pdae_core.models.archive import load_model_archive
from pdae_core.models.catalog import MODEL_TYPES, build_model
from pdae_core.plot import style
from pdae_core.plot.training import training_curves, training_notes
from pdae_core.train.jobs import JobState, training_job

common.init_state()
ss = st.session_state
st.title("Model")
with st.expander("How to read this page"):
    st.markdown(
        "- **Training** shows the model the measured cells of every condition it may see (all but the held-out "
        "ones) and adjusts it until the cells it predicts for each perturbation look like the measured ones. "
        "It learns one effect per target, which is what lets it combine targets it has only seen alone.\n"
        "- **The loss chart** follows training epoch by epoch; lower is better. The *validation* line compares "
        "predicted and measured cells of conditions kept aside: it says how good the model is, and when it "
        "flattens, more training does not help. The other lines are the parts of what training minimises.\n"
        "- **An ensemble** is several networks trained the same way from different random starts. Where they "
        "disagree about a gene's change, the prediction is uncertain; training takes that many times longer.\n"
        "- **Load a checkpoint** to use a saved model: a bundled one, a folder on the server, or a `.zip` "
        "downloaded from this page. A file changed after it was saved is refused."
    )
ds = common.current_dataset()
MAX_NETWORKS = 5
UPLOADED = "uploaded-"  # key prefix of the uploaded models in session_state.trained


def label(key: str) -> str:
    """What the loaded model is called on this page (an uploaded one by its file name)."""
    name = ss.get("model_upload_names", {}).get(key)
    return f"uploaded checkpoint {name}" if name else common.model_label(key)


def upload_checkpoint(name: str, data: bytes) -> None:
    """An uploaded checkpoint archive, handled once per file: loaded with every check of a checkpoint
    folder (digests included), it becomes the loaded model; refused, the reason is shown (while the
    file stays in the uploader) and the loaded model stays."""
    digest = hashlib.sha256(data).hexdigest()[:12]
    done = ss.get("model_upload_done")
    if done is None or done[0] != digest:
        try:
            with st.spinner(f"Checking and loading {name}…"):
                model = load_model_archive(data, name)
        except pc.PDAEError as e:
            ss.model_upload_done = done = (digest, str(e))
        else:
            keep_uploaded(name, digest, model)
            st.rerun()
    if done[1]:
        before = ss.get("model_key")
        kept = f"**{label(before)}** is still the loaded model." if before else "No model is loaded."
        st.error(f"{done[1]}\n\n{kept}")


def keep_uploaded(name: str, digest: str, model: pc.PerturbationModel) -> None:
    """Make an uploaded model the loaded one (it replaces the session's previous upload)."""
    key = f"{UPLOADED}{Path(name).stem[:40]}-{digest[:6]}"
    for old in [k for k in ss.trained if k.startswith(UPLOADED)]:  # one uploaded model per session
        del ss.trained[old]
    ss.trained[key] = model
    ss.model_key = f"trained:{key}"
    ss.model_upload_names = {f"trained:{key}": name}
    ss.model_upload_done = (digest, None)
    ss.model_upload_note = f"Loaded {name}: its digests match what was saved. It is the loaded model now."


def training_running() -> bool:
    job = ss.get("train_job")
    return job is not None and not job.snapshot().finished


def show_curves(records: list, key: str) -> None:
    """The one chart of a training run's curves, and the notes that help reading it."""
    st.plotly_chart(training_curves(records), width="stretch", config=common.PLOT_CONFIG, theme=None, key=key)
    for note in training_notes(records):
        st.caption(note)


# ---- the loaded model ------------------------------------------------------------------
if ss.get("model_error"):
    st.error(ss.pop("model_error"))
if ss.get("model_upload_note"):
    st.success(ss.pop("model_upload_note"))
loaded = common.current_model()
if loaded is None:
    st.info("No model loaded: load a checkpoint or train one below.")
else:
    key, model = loaded
    st.subheader(label(key))
    reg = model.registry
    m = st.columns(4)
    m[0].metric("Model", style.model_name(model.model_type))
    m[1].metric("Genes", reg.n_genes)
    m[2].metric("Perturbations", reg.n_perturbations)
    m[3].metric("Training conditions", len(model.train_conditions))
    networks = f" · an ensemble of {model.n_members} networks" if model.n_members > 1 else ""
    if getattr(model, "calibration", None) is not None:
        networks += f", likely ranges calibrated on {model.calibration.n} measured combinations"
    st.markdown(
        f"Held out during training: **{', '.join(model.holdout) if model.holdout else 'nothing'}** · "
        f"perturbation column `{reg.perturbation_key}`, control `{reg.control_label}`{networks}"
    )
    if ds is not None:
        why = common.compatibility(model, ds)
        if why:
            st.warning(f"This model does not fit the loaded dataset ({ds.label}): {why}")
    if training_running():  # one chart at a time: the live curves of the new run, below
        st.caption("A new model is training: its curves are shown under **Train a new model**.")
    elif model.history is not None and model.history.records:
        st.markdown("**How this model's training went**")
        show_curves(model.history.records, key=f"model_history:{key}")
        h = model.history
        if h.best_val is not None:
            st.caption(f"{h.steps} steps in {h.seconds:.0f} s on {h.device}; best validation energy distance "
                       f"{h.best_val:.4f} at epoch {h.best_epoch}")
    with st.expander("Hyperparameters"):
        st.json({"model": vars(model.config), "training": model.train_config.to_dict() if model.train_config else None},
                expanded=False)

load_tab, train_tab, save_tab = st.tabs(["Load a checkpoint", "Train a new model", "Save / download"])

# ---- load --------------------------------------------------------------------------------
with load_tab:
    bundled = common.bundled_checkpoints()
    if bundled:
        names = list(bundled)
        c1, c2 = st.columns([3, 1])
        pick = c1.selectbox("Bundled checkpoints", names, key="model_bundled")
        if c2.button("Load", key="model_load_bundled"):
            ss.model_key = f"bundled:{pick}"
            st.rerun()
    path = st.text_input("Or a checkpoint directory on the server (model.safetensors + config.json)",
                         key="model_path", placeholder="/models/my_pdae")
    if st.button("Load from path", key="model_load_path") and path.strip():
        p = Path(path.strip()).expanduser()
        try:
            pc.load_model(p)  # validate first; the cached load below shares it
            ss.model_key = f"path:{p}"
            st.rerun()
        except pc.PDAEError as e:
            st.error(str(e))
    up = st.file_uploader(
        "Or upload a checkpoint (.zip, as **Save / download** makes it)", type=None, key="model_upload",
        help="The .zip holds model.safetensors (weights) and config.json; it is checked like a checkpoint "
        "folder: a file changed after saving is refused. Nothing in it is ever run.",
    )
    if up is None:
        ss.pop("model_upload_done", None)  # the same file uploaded again is loaded again
    else:
        upload_checkpoint(up.name, up.getvalue())

# ---- train -------------------------------------------------------------------------------
with train_tab:
    job = ss.get("train_job")
    if ds is None or ds.registry is None:
        st.info("Load and set up a dataset on the Data page to train on it.")
    elif job is None or job.snapshot().finished:
        summary = explore.summarize_dataset(ds.adata, ds.registry)
        conds = summary.conditions
        testable = summary.combinations_with_parts
        with st.form("train_form"):
            st.markdown(f"Train on **{ds.label}** ({summary.n_cells:,} cells). Held-out conditions are never seen.")
            c1, c2, c3 = st.columns(3)
            mtype = c1.selectbox("Model", sorted(MODEL_TYPES), index=sorted(MODEL_TYPES).index("pdae"))
            epochs = c2.number_input("Max epochs", 1, 2000, 150)
            seed = c3.number_input("Seed", 0, 10_000, 0)
            c1, c2, c3, c4 = st.columns(4)
            latent = c1.number_input("Latent dimensions", 2, 256, 16)
            lr = c2.select_slider("Learning rate", [1e-4, 3e-4, 1e-3, 3e-3], value=1e-3)
            networks = c3.number_input(
                "Ensemble size (networks)", 1, MAX_NETWORKS, 1, key="train_networks",
                help="1 = a single network. With several networks (trained with different seeds), every "
                "prediction comes with an uncertainty: how much the networks disagree about each gene's "
                f"change. Training takes about N times as long (up to {MAX_NETWORKS} networks).",
            )
            minutes = c4.number_input("Time limit (minutes, 0 = none)", 0, 600, 0,
                                      help="For the whole run: with several networks, each network gets an "
                                      "equal share of it.")
            cross_fit = st.checkbox(
                "Calibrate likely ranges (needs 2+ networks)", key="train_cross_fit",
                help="Each network leaves a different share of the measured combinations out of its training and "
                "is then tested on them; those errors give every prediction a likely range (80%, 90%, 95%) and "
                "every pair on the Interactions page a range of its non-additivity. Needs at least as many "
                "combinations in training (both parts measured) as networks.",
            )
            holdout = st.multiselect(
                "Hold out (combinations with both parts measured are pre-selected)",
                conds.loc[conds.kind != "control", "condition"].tolist(), default=testable,
            )
            ctx_key = ds.registry.covariate_key
            if ctx_key is not None:
                pairs = {f"{c} in {x}": f"{c}{PAIR_SEPARATOR}{x}" for c, x in measured_pairs(ds.adata, ds.registry)
                         if c != ds.registry.control_label}
                chosen = st.multiselect(
                    f"Hold out in one {ctx_key.replace('_', ' ')} only", list(pairs), key="train_holdout_pairs",
                    help=f"A perturbation held out in one {ctx_key.replace('_', ' ')} stays in training everywhere "
                    "else: the model is then asked to predict it where it was never measured.",
                )
                holdout = [*holdout, *(pairs[c] for c in chosen)]
            go = st.form_submit_button("Start training", type="primary")
        if go:
            try:
                n_net = int(networks)
                if cross_fit:  # said before training starts: enough combinations to leave out?
                    if n_net < 2:
                        raise ValueError("Calibrated ranges need an ensemble: set the ensemble size to 2 or more.")
                    keep, _ = training_mask(ds.adata, ds.registry, holdout)
                    cells = condition_column(ds.adata, ds.registry.perturbation_key)[keep]
                    deal_doubles(calibration_doubles(cells, ds.registry), n_net, int(seed))
                new = build_model(mtype, ds.registry, seed=int(seed), latent_dim=int(latent),
                                  n_members=n_net if n_net > 1 else None, **({"cross_fit": True} if cross_fit else {}))
                ss.train_job = training_job(
                    new, ds.adata, holdout=holdout, max_epochs=int(epochs), lr=float(lr), seed=int(seed),
                    time_limit_s=float(minutes) * 60 or None, threads="auto",
                ).start()
                ss.train_meta = {"dataset": ds.label, "model_type": mtype, "networks": n_net, "collected": False}
                st.rerun()
            except (pc.PDAEError, ValueError) as e:
                st.error(str(e))

    @st.fragment(run_every=1.0)
    def training_progress() -> None:
        job = ss.get("train_job")
        if job is None:
            return
        snap = job.snapshot()  # one snapshot: the status line and the chart agree
        meta = ss.get("train_meta", {})
        n_net = int(meta.get("networks", 1))
        what = style.model_name(meta.get("model_type", "")) + (f" (ensemble of {n_net} networks)" if n_net > 1 else "")
        st.markdown(f"**Training {what} on {meta.get('dataset', '')}** · {snap.state.value} · {snap.elapsed_s:.0f} s")
        st.progress(min(1.0, snap.fraction), text=snap.message or "starting…")
        if not snap.finished:
            # keyed by the number of evaluations: every new evaluation draws a new chart, never a stale one
            show_curves(snap.records, key=f"train_curve:{len(snap.records)}")
            if st.button("Cancel training", key="train_cancel"):
                job.cancel()
            return
        if not meta.get("ended"):  # redraw the whole page once: the loaded model's own curves come back
            meta["ended"] = True
            if snap.state is JobState.DONE:
                key = common.new_trained_key()
                ss.trained[key] = job.result()
                ss.model_key = f"trained:{key}"
                meta["collected"] = True
            ss.train_meta = meta
            st.rerun()
        if snap.state is JobState.FAILED:
            st.error(f"Training failed: {snap.error}")
        elif snap.state is JobState.DONE:
            st.success("Done. It is the loaded model now; save it from the Save / download tab.")
        elif meta.get("collected"):
            st.success("The partly trained model is the loaded model now; save it from the Save / download tab.")
        else:
            cancelled_run(job, snap, meta)

    def cancelled_run(job, snap, meta: dict) -> None:
        """A cancelled run: the loaded model stays; the partial one only if the user asks for it."""
        before = ss.get("model_key")
        kept = f"**{label(before)}** is still the loaded model" if before else "No model is loaded"
        st.info(f"Training was cancelled. {kept}: the partly trained model was not loaded.")
        try:
            partial = job.result()
        except RuntimeError:  # cancelled before training began: nothing to offer
            return
        if not getattr(partial, "is_trained", True):
            return
        with st.expander("Curves of the cancelled run"):
            show_curves(snap.records, key=f"train_partial:{len(snap.records)}")
        if st.button("Use the partly trained model anyway", key="train_use_partial",
                     help="It stopped before the planned epochs: its predictions may be poor."):
            key = common.new_trained_key()
            ss.trained[key] = partial
            ss.model_key = f"trained:{key}"
            meta["collected"] = True
            ss.train_meta = meta
            st.rerun()

    training_progress()

# ---- save ---------------------------------------------------------------------------------
with save_tab:
    if loaded is None:
        st.info("Nothing to save yet.")
    else:
        key, model = loaded
        name = st.text_input("Checkpoint name", value=f"{model.model_type}_{key.split(':')[-1]}".replace("/", "_"),
                             key="save_name")
        st.download_button(
            "Download checkpoint (.zip)", data=common.cached_checkpoint_zip(key, model, name), file_name=f"{name}.zip",
            mime="application/zip", key="save_download",
            help="model.safetensors (weights) + config.json: no pickle, safe to share.",
        )
        target = st.text_input("Or save to a directory on the server", key="save_dir", placeholder="/models/my_pdae")
        if st.button("Save", key="save_button") and target.strip():
            try:
                model.save(Path(target.strip()).expanduser())
                st.success(f"Saved to {target.strip()}.")
            except (pc.PDAEError, OSError) as e:
                st.error(f"Could not save to {target.strip()}: {e}")
