"""Latency of the dashboard's what-if page on norman19_devel with the bundled checkpoint.

Part 1 (always): the work one change of a what-if selection triggers, without the
browser: ``explore.what_if`` (prediction, verdict, observed cells, additive
baseline, gene table), placing the cells in the cached shared UMAP, building the
three figures and serialising them to JSON (what Streamlit sends), and the two
downloads (h5ad, CSV). Random selections of 1-3 seen perturbations with random
doses, fixed seed.

Part 2 (``--browser``, needs /usr/bin/chromium and playwright): a real
``streamlit run app.py`` server and headless Chromium. Measures the time from
loading the URL to the first page being interactive, and, on the Compose page,
from changing a dose slider (keyboard) until the new verdict is on screen.

    PDAE_DATA_DIR=../shared/data python benchmarks/dashboard_latency.py [--browser] [--n 30] \\
        [--out benchmarks/results/dashboard_latency.md]
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


def compute_path(n: int, seed: int, cells: int = 1000) -> None:
    import pdae_core as pc
    from pdae_core import explore
    from pdae_core.data.datasets import load_dataset
    from pdae_core.plot import cells as cf

    t0 = time.perf_counter()
    adata = load_dataset("norman19_devel")
    model = pc.load_model(ROOT / "checkpoints" / "norman19_devel")
    additive = explore.fit_additive(adata, model)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = explore.ReferenceEmbedding(adata, model.registry.perturbation_key)
    t_umap = time.perf_counter() - t0
    seen = [p for p, u in zip(model.registry.perturbations, np.abs(model.train_labels).sum(0) > 0) if u]
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {k: [] for k in ("what_if", "embed", "figures", "interactive", "downloads", "total")}
    for i in range(n + 1):
        k = int(rng.integers(1, 4))
        weights = {str(p): float(rng.choice([0.5, 1.0, 1.0, 1.5])) for p in rng.choice(seen, size=k, replace=False)}
        t = [time.perf_counter()]
        r = explore.what_if(model, adata, weights, max_source_cells=cells, n_cells=cells, additive=additive)
        assert r.predicted.n_obs == cells
        t.append(time.perf_counter())
        coords, groups, hover = explore.what_if_embedding(ref, r)
        t.append(time.perf_counter())
        genes = r.top_genes["gene"].head(3).tolist()
        figs = [
            cf.embedding_scatter(coords, groups, hover, colors={explore.OTHER_CELLS: "#e6e6e6"}),
            cf.gene_violins(explore.gene_values(r, genes, model.registry), genes),
            cf.delta_bars(r.top_genes, n=15),
        ]
        for f in figs:
            f.to_json()
        t.append(time.perf_counter())
        with tempfile.TemporaryDirectory() as d:
            r.predicted.write_h5ad(Path(d) / "p.h5ad")
        r.top_genes.to_csv(index=False)
        t.append(time.perf_counter())
        if i == 0:
            continue  # warm-up
        for key, a, b in (("what_if", 0, 1), ("embed", 1, 2), ("figures", 2, 3), ("interactive", 0, 3),
                          ("downloads", 3, 4), ("total", 0, 4)):
            times[key].append(t[b] - t[a])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {__import__('torch').get_num_threads()}")
    print(f"load data + checkpoint + additive baseline: {t_load:.2f} s (cached by the app)")
    print(f"first shared UMAP fit (3,375 cells, incl. numba compile in a fresh process): {t_umap:.1f} s (cached per dataset)")
    print(f"\nper what-if change, {n} random selections, {cells} predicted cells each (seconds; "
          "'interactive' = what_if + embed + figures, what the page waits for before drawing):")
    print("| step | median | p95 | max |\n|---|---|---|---|")
    for key, v in times.items():
        a = np.asarray(v)
        print(f"| {key} | {np.median(a):.3f} | {np.percentile(a, 95):.3f} | {a.max():.3f} |")


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
    ap.add_argument("--n", type=int, default=30, help="number of what-if changes to time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells", type=int, default=1000, help="predicted cells per what-if")
    ap.add_argument("--browser", action="store_true", help="also time the real app in headless Chromium")
    ap.add_argument("--dwell", type=float, default=0.0, help="seconds on the Data page before opening Compose")
    ap.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = ap.parse_args()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        compute_path(args.n, args.seed, args.cells)
        if args.browser:
            browser_path(min(args.n, 20), args.dwell)
    emit(buf.getvalue().rstrip(), args.out)


if __name__ == "__main__":
    main()
