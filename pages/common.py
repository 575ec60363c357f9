"""Dashboard plumbing shared by the pages: caching, per-session state, messages.

No science here: everything computed comes from ``pdae_core``. Data and models
loaded from disk are cached read-only with ``st.cache_resource`` and shared by all
sessions; what one user chooses, uploads, trains or composes lives in
``st.session_state`` and is private to that browser tab.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import streamlit as st

import pdae_core as pc
from pdae_core import explore
from pdae_core.data.columns import guess_columns
from pdae_core.data.datasets import default_data_dir, load_dataset
from pdae_core.data.defaults import dataset_defaults
from pdae_core.errors import DatasetUnavailableError, PDAEError
from pdae_core.reference import cached_reference

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_CHECKPOINTS = ROOT / "checkpoints"
RESULTS_DIR = ROOT / "benchmarks" / "results"
BUILTIN_DATASETS = ("norman19_devel", "mcfaline23_devel", "synthetic")
DEMO_DATASET = "norman19_devel"
#: Uploads above this are refused (``server.maxUploadSize`` in .streamlit/config.toml matches).
MAX_UPLOAD_MB = int(os.environ.get("PDAE_MAX_UPLOAD_MB", "1024"))
#: Every chart's toolbar: the camera icon saves the chart as SVG (vector, for figures in papers and slides),
#: at its size on screen. A plotly toolbar offers one image format, so PNG comes from the HTML report
#: (:func:`report_download`), whose charts save as PNG (camera icon, 2x resolution) or SVG (buttons).
PLOT_CONFIG = {
    "displaylogo": False,
    "toImageButtonOptions": {"format": "svg", "filename": "pdae_figure", "scale": 1},
}


def report_download(result: Any, figures: dict[str, Any], verdict: Any, model_key: str,
                    model: pc.PerturbationModel, ds: Dataset, extra_tables: dict[str, Any] | None = None,
                    source_condition: str | None = None, key: str = "dl_report") -> None:
    """A button that downloads the what-if report of ``result`` as one HTML file (figures, verdict,
    gene table, model card; :func:`pdae_core.report.what_if_report`). The file is built only when
    the button is clicked, and the click does not rerun the page."""
    from pdae_core.report import checkpoint_digest, report_filename, what_if_report

    kind, _, rest = model_key.partition(":")
    label = model_label(model_key)  # reads the session: here, not in build()

    def build() -> str:  # runs on click, on another thread: no st.* or session state there
        digest = None if kind == "trained" else checkpoint_digest(
            BUNDLED_CHECKPOINTS / rest if kind == "bundled" else Path(rest))
        return what_if_report(result, figures, verdict, model, ds.label, extra_tables,
                              model_label=label, checkpoint_sha256=digest,
                              source_condition=source_condition)

    st.download_button("Download report (.html)", build, file_name=report_filename(result.target),
                       mime="text/html", key=key, on_click="ignore", icon=":material/description:",
                       help="One HTML file with these charts (interactive; each saves as PNG or SVG), the verdict, "
                       "the gene table and the model card. Opens offline in any browser.")


# ---- loading (cached, shared by all sessions) -------------------------------------------
@st.cache_resource(show_spinner="Loading dataset…", max_entries=8)
def _builtin(name: str, download: bool, data_dir: str) -> ad.AnnData:
    return load_dataset(name, data_dir=data_dir, download=download)


@st.cache_resource(show_spinner="Reading the file…", max_entries=4)
def _from_bytes(digest: str, filename: str, _data: bytes) -> ad.AnnData:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / (Path(filename).name or "upload.h5ad")
        path.write_bytes(_data)
        try:
            adata = pc.read_h5ad(path)
        except PDAEError as e:  # name the user's file, not the temporary copy
            raise type(e)(str(e).replace(str(path), filename)) from None
    return _checked(adata, filename)


@st.cache_resource(show_spinner="Reading the file…", max_entries=4)
def _from_path(path: str, mtime: float) -> ad.AnnData:
    return _checked(pc.read_h5ad(path), path)


def _checked(adata: ad.AnnData, what: str) -> ad.AnnData:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise pc.DataError(f"{what}: the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    if len(adata.obs.columns) == 0:
        raise pc.DataError(f"{what}: obs has no columns, so there is no perturbation column to use.")
    return adata


@st.cache_resource(show_spinner="Preprocessing (normalize_total + log1p)…", max_entries=4)
def _preprocessed(key: str, n_top_genes: int | None, _adata: ad.AnnData) -> ad.AnnData:
    return pc.preprocess(_adata, n_top_genes=n_top_genes)


@st.cache_resource(max_entries=16)
def _registry(
    key: str, perturbation_key: str, control: str | None, covariate: str | None, _adata: ad.AnnData
) -> pc.PerturbationRegistry:
    return pc.setup_anndata(_adata, perturbation_key, control, covariate_key=covariate)


@st.cache_resource(show_spinner="Loading checkpoint…", max_entries=16)
def _checkpoint(path: str, mtime: float) -> pc.PerturbationModel:
    return pc.load_model(path)


#: Cell maps shipped with the repository (the bundled demo's), searched before the user's cache.
SHIPPED_MAPS = BUNDLED_CHECKPOINTS / "embeddings"


@st.cache_resource(show_spinner="Drawing the map of the dataset's cells (UMAP, once per dataset; kept on disk)…",
                   max_entries=8)
def reference_embedding(data_key: str, perturbation_key: str, _adata: ad.AnnData) -> explore.ReferenceEmbedding:
    return cached_reference(_adata, perturbation_key, search=[SHIPPED_MAPS])


_warming: set[str] = set()
_warming_lock = threading.Lock()


def warm_reference_embedding(ds: Dataset) -> None:
    """Start fitting the dataset's shared UMAP on a background thread (once per
    dataset and process), so the Compose page is ready when the user gets there."""
    if ds.registry is None:
        return
    with _warming_lock:
        if ds.key in _warming:
            return
        _warming.add(ds.key)
    key, pk, adata = ds.key, ds.registry.perturbation_key, ds.adata
    threading.Thread(target=lambda: reference_embedding(key, pk, adata), daemon=True, name="umap-warmup").start()


@st.cache_resource(show_spinner="Embedding the latent space (UMAP, once per dataset and model)…", max_entries=16)
def latent_umap(data_key: str, model_key: str, which: str, _model: pc.PerturbationModel, _adata: ad.AnnData) -> Any:
    return explore.umap_2d(explore.latent_embedding(_model, _adata, which))


@st.cache_resource(max_entries=32)
def identity(data_key: str, model_key: str, context: str, condition: str, _model: pc.PerturbationModel,
             _adata: ad.AnnData) -> Any:
    """Does the model keep ``context``'s cells in their context (pdae_core.identity.identity_check)?"""
    from pdae_core.identity import identity_check

    return identity_check(_model, _adata, context, condition)


@st.cache_resource(max_entries=8)
def additive_baseline(data_key: str, model_key: str, _model: pc.PerturbationModel, _adata: ad.AnnData) -> Any:
    return explore.fit_additive(_adata, _model)


#: Settings of the pair screen (widget key -> default), shared by the Interactions and Compose pages.
PAIR_DEFAULTS: dict[str, Any] = {"ia_cells": 512, "ia_genes": "expressed", "ia_kappa": 1.0}


def pair_settings() -> tuple[int, str, float]:
    """The session's pair-screen settings (control cells, gene set, kappa), also when the
    Interactions page, whose widgets hold them, is not shown."""
    kept = st.session_state.get("_kept", {})
    n, genes, kappa = (st.session_state.get(k, kept.get(k, d)) for k, d in PAIR_DEFAULTS.items())
    return int(n), str(genes), float(kappa)


@st.cache_resource(show_spinner="Predicting and scoring every pair of single perturbations…", max_entries=8)
def pair_screen(data_key: str, model_key: str, n_cells: int, genes: str, kappa: float,
                _model: pc.PerturbationModel, _adata: ad.AnnData, cells: int = 0) -> Any:
    """:func:`pdae_core.eval.pair_screen.screen_pairs` once per (dataset, model, settings); read-only.
    ``cells``: the cells per pair of a planned experiment (0: none)."""
    from pdae_core.eval.pair_screen import screen_pairs

    return screen_pairs(_model, _adata, n_cells=n_cells, genes=genes, kappa=kappa, progress_bar=False,  # the spinner
                        cells=cells or None)


@st.cache_resource(max_entries=64)
def pair_interaction(data_key: str, model_key: str, a: str, b: str, n_cells: int, genes: str,
                     _model: pc.PerturbationModel, _adata: ad.AnnData) -> Any:
    """:func:`pdae_core.eval.pair_screen.pair_interaction` with the screen's settings; read-only."""
    from pdae_core.eval.pair_screen import pair_interaction as one_pair

    return one_pair(_model, _adata, a, b, n_cells=n_cells, genes=genes)


# ---- per-session state -----------------------------------------------------------------
@dataclass
class Dataset:
    key: str  # identifies the AnnData in the caches
    label: str  # shown to the user
    adata: ad.AnnData
    registry: pc.PerturbationRegistry | None  # None until set up successfully
    setup_error: str | None = None
    source_key: str = ""  # key of ``session_state.data_setup`` (before preprocessing)


def bundled_checkpoints() -> dict[str, Path]:
    if not BUNDLED_CHECKPOINTS.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_CHECKPOINTS.iterdir()) if (p / "config.json").is_file()}


@st.cache_resource(show_spinner=False, max_entries=16)
def _bundle_summary(path: str, mtime: float) -> tuple[int, tuple[str, ...], tuple[str, ...]] | None:
    """(networks, genes, perturbations) of a checkpoint's ``config.json``, checked as on loading;
    None when it does not read. Cached per file version: Compose asks on every rerun."""
    from pdae_core.models.checkpoint import read_config

    try:
        cfg = read_config(path)
        reg = pc.PerturbationRegistry.from_dict(cfg["registry"])
    except (PDAEError, TypeError, KeyError):
        return None  # a broken bundle is reported when someone loads it, not here
    ens = cfg.get("ensemble")
    n = ens.get("n_members") if isinstance(ens, dict) else None
    return (n if type(n) is int else 1), tuple(reg.gene_names), tuple(reg.perturbations)


def bundled_ensemble(model: pc.PerturbationModel, model_key: str) -> tuple[str, int] | None:
    """A bundled checkpoint, other than the loaded one (``model_key``), that is an ensemble over the
    same genes and perturbations as ``model`` (its pairs are the same pairs): (name, networks),
    None when there is none or ``model`` is itself an ensemble. Reads only the checkpoints'
    ``config.json`` (:func:`_bundle_summary`)."""
    if model.n_members > 1:
        return None
    reg = model.registry
    for name, path in bundled_checkpoints().items():
        if model_key == f"bundled:{name}":
            continue
        info = _bundle_summary(str(path), (path / "config.json").stat().st_mtime)
        if (info is not None and info[0] > 1 and list(info[1]) == list(reg.gene_names)
                and list(info[2]) == list(reg.perturbations)):
            return name, info[0]
    return None


def freeze_imported() -> None:
    """Once per server process: move every object alive now (the imported libraries: torch,
    scanpy, plotly, Streamlit, pdae_core; about 600,000 objects) out of reach of Python's full
    garbage collections (``gc.freeze``). Such a collection walked them all and took 0.4 s, and
    one could fall inside a what-if change (``benchmarks/dashboard_latency.py``); after the freeze
    it walks only what was created since. Nothing is collected first, and nothing is frozen
    later (freezing datasets and models as they were loaded made script runs hang). UMAP and
    scanpy, which the cell map and preprocessing import anyway, are imported first (3 s) so
    that their 200,000 objects are frozen too."""
    import gc

    if not getattr(freeze_imported, "done", False):
        freeze_imported.done = True  # type: ignore[attr-defined]
        import scanpy  # noqa: F401
        import umap  # noqa: F401

        gc.freeze()


def init_state() -> None:
    """Defaults for a new session: the demo dataset and the bundled demo model."""
    ss = st.session_state
    if "initialised" in ss:
        return
    ss.initialised = True
    ss.data_source = ("builtin", DEMO_DATASET)
    ss.data_setup = {}
    ss.data_note = None
    ss.trained = {}  # key -> model trained in this session
    ss.model_key = None
    ss.train_job = None
    ss.bench_job = None
    demo = bundled_checkpoints().get(DEMO_DATASET)
    if demo is not None:
        ss.model_key = f"bundled:{DEMO_DATASET}"


def load_source(source: tuple[str, ...]) -> tuple[str, str, ad.AnnData]:
    """(cache key, label, AnnData) of a data source; raises PDAEError with a clear message."""
    kind = source[0]
    if kind == "builtin":
        name = source[1]
        offline = st.session_state.setdefault("offline", set())
        try:  # downloads a missing file once per session; offline, fails fast and says how to get it
            return f"builtin:{name}", name, _builtin(name, name not in offline, str(default_data_dir()))
        except DatasetUnavailableError:
            offline.add(name)
            raise
    if kind == "upload":
        _, digest, filename = source
        data = st.session_state.get("upload_bytes", {}).get(digest)
        if data is None:
            raise pc.DataError(f"The upload {filename} is no longer in this session; upload it again.")
        return f"upload:{digest}", filename, _from_bytes(digest, filename, data)
    if kind == "path":
        path = source[1]
        if not os.path.exists(path):
            raise pc.DataError(f"File not found: {path}")
        return f"path:{path}", Path(path).name, _from_path(path, os.path.getmtime(path))
    raise ValueError(f"unknown data source {source!r}")


def current_dataset() -> Dataset | None:
    """The session's dataset, set up with its chosen columns; None (and a message in
    ``session_state.data_note``) when it cannot be loaded."""
    ss = st.session_state
    try:
        key, label, adata = load_source(ss.data_source)
    except DatasetUnavailableError as e:  # a missing data file also names itself and its folder (download.py)
        ss.data_note = ("unavailable", str(e), getattr(e, "filename", None), str(getattr(e, "folder", "")))
        return None
    except PDAEError as e:
        ss.data_note = ("error", str(e))
        return None
    ss.data_note = None
    setup = ss.data_setup.get(key)
    if setup is None:
        setup = default_setup(adata)
        ss.data_setup[key] = setup
    source_key = key
    try:
        if setup.get("preprocess"):
            adata = _preprocessed(key, setup.get("n_top_genes"), adata)
            key = f"{key}|pp{setup.get('n_top_genes')}"
        pk, ctrl = setup.get("perturbation_key"), setup.get("control_label")
        reg, err = None, None
        if not pk:
            err = (guess_columns(adata).reason or "No perturbation column is set.") + (
                " Choose the perturbation column on the Data page.")
        else:  # no control label set: setup_anndata detects a control-like one, or says there is none
            reg = _registry(key, pk, ctrl, setup.get("covariate_key"), adata)
    except PDAEError as e:
        reg, err = None, str(e)
    return Dataset(key, label, adata, reg, err, source_key)


def default_setup(adata: ad.AnnData) -> dict[str, Any]:
    """The set-up the dataset records (:func:`dataset_defaults`), else the guessed columns:
    ``perturbation_key`` None when no column looks like perturbation labels (the Data page
    then asks the user to choose, with :attr:`~pdae_core.data.columns.ColumnGuess.reason`)."""
    d = dataset_defaults(adata)
    if "perturbation_key" in d:
        return {
            "perturbation_key": d["perturbation_key"],
            "control_label": d.get("control_label"),
            "covariate_key": d.get("covariate_key"),
        }
    g = guess_columns(adata)
    return {"perturbation_key": g.perturbation_key, "control_label": g.control_label, "covariate_key": g.covariate_key}


def add_upload(filename: str, data: bytes) -> str | None:
    """Register uploaded bytes; returns an error message when refused."""
    size_mb = len(data) / 2**20
    if size_mb > MAX_UPLOAD_MB:
        return f"{filename} is {size_mb:.0f} MB; uploads are limited to {MAX_UPLOAD_MB} MB. Give its path on the server instead."
    if not filename.lower().endswith(".h5ad"):
        return f"{filename} is not an .h5ad file (expected an AnnData saved with adata.write_h5ad())."
    digest = hashlib.sha256(data).hexdigest()[:16]
    if st.session_state.get("data_source") == ("upload", digest, filename):
        return None
    try:
        _from_bytes(digest, filename, data)
    except PDAEError as e:
        return f"Could not use {filename}: {e}"
    st.session_state.setdefault("upload_bytes", {})[digest] = data
    st.session_state.data_source = ("upload", digest, filename)
    return None


def model_of(key: str) -> pc.PerturbationModel | None:
    """The model a key names: ``trained:NAME`` from this session (None when gone), ``bundled:NAME``
    or a checkpoint path, loaded once per file version (cached); raises PDAEError for a bad checkpoint."""
    kind, _, rest = key.partition(":")
    if kind == "trained":
        return st.session_state.get("trained", {}).get(rest)
    path = BUNDLED_CHECKPOINTS / rest if kind == "bundled" else Path(rest)
    cfg = path / "config.json"
    return _checkpoint(str(path), cfg.stat().st_mtime if cfg.exists() else 0.0)


def current_model() -> tuple[str, pc.PerturbationModel] | None:
    ss = st.session_state
    key = ss.get("model_key")
    if not key:
        return None
    try:
        model = model_of(key)
        return None if model is None else (key, model)
    except PDAEError as e:
        ss.model_error = str(e)
        ss.model_key = None
        return None


def model_label(key: str) -> str:
    kind, _, rest = key.partition(":")
    uploaded = st.session_state.get("model_upload_names", {})  # pages/model.py: trained:uploaded-<name>-<hash>
    if key in uploaded:
        return f"uploaded checkpoint {uploaded[key]}"
    return {"bundled": f"bundled checkpoint {rest}", "trained": f"trained in this session ({rest})"}.get(
        kind, f"checkpoint {rest}"
    )


def compatibility(model: pc.PerturbationModel, ds: Dataset) -> str | None:
    """Why ``model`` cannot be used on ``ds`` (None when it can)."""
    try:
        model.registry.check_genes(ds.adata)
    except PDAEError as e:
        return str(e)
    if model.registry.perturbation_key not in ds.adata.obs.columns:
        return (
            f"The model reads perturbations from column {model.registry.perturbation_key!r}, "
            f"which {ds.label} does not have."
        )
    return None


def new_trained_key() -> str:
    return uuid.uuid4().hex[:8]


def checkpoint_zip(model: pc.PerturbationModel, name: str) -> bytes:
    """A zip of the model's checkpoint directory (model.safetensors + config.json)."""
    with tempfile.TemporaryDirectory() as d:
        model.save(Path(d) / name)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted((Path(d) / name).iterdir()):
                z.write(f, f"{name}/{f.name}")
    return buf.getvalue()


def cached_checkpoint_zip(model_key: str, model: pc.PerturbationModel, name: str) -> bytes:
    """:func:`checkpoint_zip`, made once per (model, name) in this session rather than on every rerun."""
    cache = st.session_state.setdefault("_zips", {})
    if (model_key, name) not in cache:
        cache.clear()  # keep one zip only
        cache[(model_key, name)] = checkpoint_zip(model, name)
    return cache[(model_key, name)]


def h5ad_bytes(adata: ad.AnnData) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "predicted.h5ad"
        adata.write_h5ad(path)
        return path.read_bytes()


# ---- page helpers ----------------------------------------------------------------------
def require_dataset() -> Dataset:
    """The set-up dataset, or stop the page with a pointer to the Data page."""
    ds = current_dataset()
    if ds is None or ds.registry is None:
        st.info("Load and set up a dataset on the **Data** page first.")
        if st.session_state.get("data_note"):
            st.caption(st.session_state.data_note[1])
        elif ds is not None and ds.setup_error:
            st.caption(ds.setup_error)
        st.page_link("pages/data.py", label="Go to Data", icon=":material/dataset:")
        st.stop()
    return ds


def require_model(ds: Dataset | None = None) -> tuple[str, pc.PerturbationModel]:
    m = current_model()
    if m is None:
        st.info("Load or train a model on the **Model** page first.")
        st.page_link("pages/model.py", label="Go to Model", icon=":material/model_training:")
        st.stop()
    if ds is not None:
        why = compatibility(m[1], ds)
        if why:
            st.error(f"The loaded model does not fit {ds.label}: {why}")
            st.page_link("pages/model.py", label="Choose another model", icon=":material/model_training:")
            st.stop()
    return m


def data_dir_hint() -> str:
    return (
        f"Demo data is looked up in {default_data_dir()} (set PDAE_DATA_DIR to change it); "
        "it is downloaded from its public source when missing and the machine is online."
    )


def _job_line(job: Any, what: str) -> str | None:
    if job is None:
        return None
    snap = job.snapshot()
    if snap.finished:
        return None
    return f"{what}: {snap.fraction:.0%} · {snap.message}"


@st.fragment(run_every=2.0)
def _running_jobs() -> None:
    for what, name in (("Training", "train_job"), ("Benchmark", "bench_job")):
        line = _job_line(st.session_state.get(name), what)
        if line:
            st.caption(f":material/pending: {line}")


def sidebar_status() -> None:
    """What is loaded, in the sidebar of every page."""
    ss = st.session_state
    with st.container():
        src = ss.get("data_source", ("builtin", DEMO_DATASET))
        data_label = {"builtin": src[1], "upload": src[-1], "path": Path(src[1]).name}.get(src[0], "?")
        st.markdown(f"**Data** · {data_label}")
        key = ss.get("model_key")
        st.markdown(f"**Model** · {model_label(key) if key else 'none loaded'}")
        if any(ss.get(n) is not None for n in ("train_job", "bench_job")):
            _running_jobs()
        st.caption(f"pdae_core {pc.__version__}")


def restore_widgets(*keys: str, prefix: str | None = None) -> None:
    """Streamlit forgets a widget's value when its page is not shown; put back what
    :func:`remember_widgets` kept, so selections survive page switches."""
    kept = st.session_state.setdefault("_kept", {})
    names = list(keys) + ([k for k in kept if k.startswith(prefix)] if prefix else [])
    for k in names:
        if k not in st.session_state and k in kept:
            st.session_state[k] = kept[k]


def remember_widgets(*keys: str, prefix: str | None = None) -> None:
    kept = st.session_state.setdefault("_kept", {})
    names = list(keys) + ([k for k in st.session_state if str(k).startswith(prefix)] if prefix else [])
    for k in names:
        if k in st.session_state:
            kept[k] = st.session_state[k]
