"""Latency of the dashboard's what-if page on a dataset (default: the bundled demo).

``--dataset`` names the data: ``norman19_devel`` with the bundled checkpoint, another built-in
dataset (e.g. ``papalexi21``: 20,729 cells, counts, preprocessed as the Data page does) or
``synthetic:100000`` (synthetic cells); those get a PDAE trained for ``--train-steps`` steps
first (reported apart). Peak resident memory is printed at the end.

Part 1 (always): the work one change of a what-if selection triggers, without the
browser: ``explore.what_if`` (prediction, verdict, observed cells, additive
baseline, gene table), placing the cells in the cached shared UMAP, building the
three figures as the Compose page does (at most ``MAX_DRAWN`` observed cells drawn in the
map and cells per violin) and serialising them to JSON (what Streamlit sends), and the two
downloads (h5ad, CSV; the page writes them only when a button is clicked). Random
selections of 1-3 seen perturbations with random doses, fixed seed; the targets measured in
the data (observed cells drawn too, the slowest case) are also summarised apart.

Part 2 (``--browser``, needs /usr/bin/chromium and playwright): a real
``streamlit run app.py`` server and headless Chromium. Measures the time from
loading the URL to the first page being interactive, and, on the Compose page,
from changing a dose slider (keyboard) until the new verdict is on screen.

    PDAE_DATA_DIR=../shared/data python benchmarks/dashboard_latency.py [--dataset papalexi21] [--browser] \\
        [--n 30] [--out benchmarks/results/dashboard_latency.md]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _report import emit  # noqa: E402


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def _synthetic(n_cells: int):
    """About ``n_cells`` synthetic cells: control, 20 singles and 30 doubles, 1,000 genes."""
    from pdae_core.data.synthetic import make_synthetic

    adata, _ = make_synthetic(n_perturbations=20, n_doubles=30, n_genes=1000, latent_dim=8,
                              cells_per_condition=max(2, n_cells // 51), seed=0)
    adata.uns["pdae_dataset"] = {"name": f"synthetic:{n_cells}", "perturbation_key": "condition",
                                 "control_label": "control", "values": "log1p"}
    return adata


def _load(dataset: str, train_steps: int):
    """The dataset as the Data page leaves it (preprocessed when it holds counts) and a model:
    the bundled checkpoint for the demo, else a PDAE trained for ``train_steps`` steps (its time
    is reported apart: a user trains once, then explores)."""
    import pdae_core as pc
    from pdae_core.data.datasets import load_dataset
    from pdae_core.data.defaults import dataset_defaults

    t0 = time.perf_counter()
    adata = _synthetic(int(dataset.split(":", 1)[1])) if dataset.startswith("synthetic:") else load_dataset(dataset)
    d = dataset_defaults(adata)
    if adata.uns.get("pdae_dataset", {}).get("values") == "counts":
        adata = pc.preprocess(adata)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    if dataset == "norman19_devel":
        model = pc.load_model(ROOT / "checkpoints" / "norman19_devel")
        how = "bundled checkpoint"
    else:
        model = pc.PDAE.from_anndata(adata, perturbation_key=d.get("perturbation_key", "condition"),
                                     control_label=d.get("control_label"), seed=0)
        model.fit(adata, max_steps=train_steps, val_fraction=0.0, accelerator="cpu")
        how = f"PDAE trained for {train_steps} steps (not part of the page's wait)"
    return adata, model, t_load, time.perf_counter() - t0, how


def compute_path(dataset: str, n: int, seed: int, cells: int = 1000, train_steps: int = 30,
                 freeze: bool = True) -> None:
    import torch

    import pdae_core as pc  # noqa: F401  (imports timed apart from the work)
    from pdae_core import compare, explore
    from pdae_core.plot import cells as cf
    from pdae_core.plot import compare as pcmp
    from pdae_core.plot import style

    threads = torch.get_num_threads()  # as the process started (OMP_NUM_THREADS): kept for every step below
    if freeze:  # as app.py does once its imports are done (pages/common.py: freeze_imported)
        import gc

        import plotly.graph_objects  # noqa: F401  (imported by the pages before the freeze)
        import scanpy  # noqa: F401
        import umap  # noqa: F401

        gc.freeze()
    adata, model, t_load, t_model, how = _load(dataset, train_steps)
    t0 = time.perf_counter()
    additive = explore.fit_additive(adata, model)
    t_add = time.perf_counter() - t0
    from pdae_core.reference import ReferenceEmbedding, cached_reference

    pk = model.registry.perturbation_key
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: the first visit fits and saves the map
        t0 = time.perf_counter()
        ref = cached_reference(adata, pk, cache_dir=cache)
        t_umap = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached_reference(adata, pk, cache_dir=cache)  # a restarted server reads it back
        t_cached = time.perf_counter() - t0
    shipped, t_shipped = ROOT / "checkpoints" / "embeddings" / ref.fingerprint, None
    if shipped.is_dir():
        t0 = time.perf_counter()
        ReferenceEmbedding.load(shipped)
        t_shipped = time.perf_counter() - t0
    seen = [p for p, u in zip(model.registry.perturbations, np.abs(model.train_labels).sum(0) > 0) if u]
    torch.set_num_threads(threads)  # a library may have changed the OpenMP thread count meanwhile
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {k: [] for k in ("what_if", "embed", "figures", "interactive", "downloads", "total")}
    measured: list[bool] = []
    points: list[int] = []
    change: list[float] = []
    first = None
    # a running server has drawn this chart before: pay plotly's first-use cost here, not in a timing
    pcmp.change_panels({style.PREDICTED: np.zeros(3)}, np.arange(3.0), ["a", "b", "c"]).to_json()

    import gc

    full: list[float] = []  # full garbage collections during the what-if changes, and how long each took
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started[:] = [time.perf_counter()]
            elif started:
                full.append(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    for i in range(n + 1):
        k = int(rng.integers(1, 4))
        weights = {str(p): float(rng.choice([0.5, 1.0, 1.0, 1.5])) for p in rng.choice(seen, size=min(k, len(seen)),
                                                                                       replace=False)}
        t = [time.perf_counter()]
        r = explore.what_if(model, adata, weights, max_source_cells=cells, n_cells=cells, additive=additive)
        assert r.predicted.n_obs == cells
        t.append(time.perf_counter())
        coords, groups, hover = explore.what_if_embedding(ref, r, include_additive=True)
        t.append(time.perf_counter())
        genes = r.top_genes["gene"].head(3).tolist()
        figs = [  # as pages/compose.py draws them
            cf.what_if_scatter(coords, groups, hover),
            cf.gene_violins(explore.gene_values(r, genes, model.registry), genes, max_cells=cf.MAX_DRAWN),
            cf.delta_bars(r.top_genes, n=15),
        ]
        for f in figs:
            f.to_json()
        t.append(time.perf_counter())
        with tempfile.TemporaryDirectory() as d:
            r.predicted.write_h5ad(Path(d) / "p.h5ad")
        r.top_genes.to_csv(index=False)
        t.append(time.perf_counter())
        if r.observed is not None:  # a measured target: the page also draws the change per gene (timed apart)
            t0 = time.perf_counter()
            agree, tab = compare.change_agreement(r.top_genes), r.top_genes
            deltas = {style.PREDICTED: tab["predicted_delta"].to_numpy()}
            if r.additive is not None:
                deltas[style.ADDITIVE] = tab["additive_delta"].to_numpy()
            pcmp.change_panels(deltas, tab["observed_delta"].to_numpy(), tab["gene"],
                               {style.PREDICTED: agree["predicted_delta"], style.ADDITIVE: agree["additive_delta"]},
                               colors=style.KIND_COLORS).to_json()
            if i:
                change.append(time.perf_counter() - t0)
        if i == 0:
            first = t[3] - t[0]
            continue  # warm-up
        measured.append(r.observed is not None)
        points.append(sum(len(tr.x) for tr in figs[0].data))
        for key, a, b in (("what_if", 0, 1), ("embed", 1, 2), ("figures", 2, 3), ("interactive", 0, 3),
                          ("downloads", 3, 4), ("total", 0, 4)):
            times[key].append(t[b] - t[a])
    print(f"dataset: {dataset}, {adata.n_obs:,} cells x {adata.n_vars:,} genes, "
          f"{len(seen)} perturbations seen in training; model: {how}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {__import__('torch').get_num_threads()}")
    print("imported objects frozen before loading, as app.py does (gc.freeze): "
          + ("yes" if freeze else "no (--no-freeze)"))
    print(f"load (and preprocess) the data: {t_load:.2f} s; model: {t_model:.1f} s; additive baseline: {t_add:.2f} s "
          "(each cached by the app)")
    print(f"shared map: UMAP of a stratified sample of {len(ref.coords):,} cells and all {adata.n_obs:,} cells placed, "
          f"incl. numba compile in a fresh process: {t_umap:.1f} s the first time; read back from the disk cache "
          f"(a restarted server): {t_cached:.2f} s" + (f"; the map shipped with the repository: {t_shipped:.2f} s"
                                                       if t_shipped is not None else ""))
    print(f"from loading to an interactive Compose page (load + additive + map + first what-if): "
          f"{t_load + t_add + t_umap + (first or 0.0):.1f} s with no cached map, "
          f"{t_load + t_add + (t_shipped if t_shipped is not None else t_cached) + (first or 0.0):.1f} s with one")
    print(f"\nper what-if change, {n} random selections, {cells} predicted cells each, additive cells shown (seconds; "
          "'interactive' = what_if + embed + figures, what the page waits for before drawing):")
    print("| step | median | p95 | max |\n|---|---|---|---|")
    for key, v in times.items():
        a = np.asarray(v)
        print(f"| {key} | {np.median(a):.3f} | {np.percentile(a, 95):.3f} | {a.max():.3f} |")
    m = np.asarray(measured)
    if m.any():
        a = np.asarray(times["interactive"])[m]
        print(f"| interactive, the {int(m.sum())} measured targets (observed cells shown) | {np.median(a):.3f} | "
              f"{np.percentile(a, 95):.3f} | {a.max():.3f} |")
    if change:
        a = np.asarray(change)
        print(f"| not in 'interactive': a measured target's predicted-versus-observed change per gene (built + JSON, "
              f"{len(a)} targets) | {np.median(a):.3f} | {np.percentile(a, 95):.3f} | {a.max():.3f} |")
        if m.any() and m.sum() == len(a):
            a = np.asarray(times["interactive"])[m] + a
            print(f"| interactive + that chart, the {len(a)} measured targets (all the page draws) | {np.median(a):.3f} | "
                  f"{np.percentile(a, 95):.3f} | {a.max():.3f} |")
    gc.callbacks.remove(on_gc)
    t0 = time.perf_counter()
    gc.collect()
    t_full = time.perf_counter() - t0
    print(f"\nfull garbage collections during the {n + 1} changes (warm-up included): {len(full)}"
          + (f", the longest {max(full):.3f} s" if full else "")
          + f"; a full collection now walks {len(gc.get_objects()):,} objects ({gc.get_freeze_count():,} frozen) "
          f"and took {t_full:.3f} s")
    print(f"\npoints drawn in the map: median {int(np.median(points)):,}, max {max(points):,} (at most "
          f"{cf.MAX_DRAWN:,} observed cells drawn; every cell counted in the tables); 'downloads' is paid only when "
          "a download button is clicked")
    print(f"\npeak resident memory of the process: {_peak_rss_gib():.2f} GiB")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_path(n: int, dwell: float = 0.0) -> None:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        t_up = time.perf_counter() - t0
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(300_000)
            t0 = time.perf_counter()
            page.goto(url)
            page.get_by_text("combination(s) have every part measured alone").wait_for()
            t_first = time.perf_counter() - t0
            page.wait_for_timeout(dwell * 1000)  # a user reading the Data page; the UMAP fits meanwhile
            t0 = time.perf_counter()
            page.get_by_test_id("stSidebarNav").get_by_text("Compose (what-if)", exact=True).click()
            page.wait_for_function(
                "document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .main-svg').length >= 3")
            t_compose = time.perf_counter() - t0
            slider = page.get_by_role("slider").first
            lat = []
            for i in range(n):
                before = page.get_by_test_id("stAlertContentSuccess").first.inner_text()
                slider.focus()
                page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
                t0 = time.perf_counter()
                page.wait_for_function(
                    "b => { const e = document.querySelector('[data-testid=\"stAlertContentSuccess\"]');"
                    " return e && e.innerText !== b; }", arg=before)
                t1 = time.perf_counter()
                page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached")
                page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
                lat.append((t1 - t0, time.perf_counter() - t0))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    a = np.asarray(lat)
    print(f"\nbrowser (headless Chromium on the same 2 cores, software WebGL): server healthy after {t_up:.1f} s; "
          f"first page interactive {t_first:.1f} s after loading the URL")
    print(f"Compose page first visit, {dwell:.0f} s after the Data page appeared (the shared UMAP is fitted "
          f"in the background from then on): {t_compose:.1f} s")
    print(f"\ndose change (keyboard) in the browser, {n} changes (seconds):")
    print("| until | median | p95 | max |\n|---|---|---|---|")
    for i, what in enumerate(("new verdict on screen", "script run finished and frame painted")):
        print(f"| {what} | {np.median(a[:, i]):.2f} | {np.percentile(a[:, i], 95):.2f} | {a[:, i].max():.2f} |")
    print("per change:", " ".join(f"{x:.2f}" for x in a[:, 1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="norman19_devel",
                    help="norman19_devel (the bundled demo), a built-in dataset (papalexi21, ...) or synthetic:N "
                    "(N synthetic cells)")
    ap.add_argument("--train-steps", type=int, default=30, help="training steps of the model of other datasets")
    ap.add_argument("--n", type=int, default=30, help="number of what-if changes to time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells", type=int, default=1000, help="predicted cells per what-if")
    ap.add_argument("--no-freeze", action="store_true",
                    help="do not freeze the imported objects as app.py does (gc.freeze), to see what it changes")
    ap.add_argument("--browser", action="store_true", help="also time the real app in headless Chromium")
    ap.add_argument("--dwell", type=float, default=0.0, help="seconds on the Data page before opening Compose")
    ap.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = ap.parse_args()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        compute_path(args.dataset, args.n, args.seed, args.cells, args.train_steps, freeze=not args.no_freeze)
        if args.browser and args.dataset == "norman19_devel":
            browser_path(min(args.n, 20), args.dwell)
    emit(buf.getvalue().rstrip(), args.out)


if __name__ == "__main__":
    main()
