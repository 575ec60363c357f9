"""Shared fixtures and the test set-up.

Real data: the folder named by ``$PDAE_DATA_DIR`` (CI sets it), else ``../shared/data`` next to
the clone, else the library's user cache folder (:func:`pdae_core.data.datasets.default_data_dir`),
where the files with a public source are downloaded (and checksummed) on first use.

Screenshots of the browser tests go to a temporary folder; ``--update-screenshots`` (or
``PDAE_UPDATE_SCREENSHOTS=1``) writes the committed ones in ``docs/screenshots/`` instead.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "docs" / "screenshots"
UPDATE_SCREENSHOTS_ENV = "PDAE_UPDATE_SCREENSHOTS"


def pick_data_dir(repo: Path = REPO) -> tuple[Path, str]:
    """The folder the tests read real data from, and where it came from (``"env"``, ``"shared"``,
    ``"cache"``): ``$PDAE_DATA_DIR`` when set (and not blank), else ``<repo>/../shared/data`` when it
    exists, else the library's default data folder (the user cache)."""
    env = os.environ.get("PDAE_DATA_DIR", "").strip()
    if env:
        return Path(env).expanduser(), "env"
    shared = Path(repo).parent / "shared" / "data"
    if shared.is_dir():
        return shared, "shared"
    from pdae_core.data.datasets.download import default_data_dir

    return default_data_dir(), "cache"


def data_dir_line(folder: Path, source: str) -> str:
    """The one line the test session prints about its data."""
    where = {"env": " ($PDAE_DATA_DIR)", "shared": " (../shared/data next to the clone)",
             "cache": " (the user cache)"}[source]
    return (f"pdae tests: real data from {folder}{where}; missing files are downloaded from their public "
            "sources on first use")


def public_files() -> list:
    """The :class:`RemoteFile` s the tests read, as the loaders fetch them: a file converted by the
    project has no public copy, so its public originals stand in for it (the loaders rebuild it)."""
    from pdae_core.data.datasets import papalexi, perturbench, schraivogel
    from pdae_core.data.datasets.norman_pseudobulk import PSEUDOBULK

    return [perturbench.DEVEL, PSEUDOBULK,
            (schraivogel.SCHRAIVOGEL_CONVERTED,
             [schraivogel.CRISPAT_EXPRESSION, schraivogel.CRISPAT_ASSIGNMENTS, schraivogel.CRISPAT_GRNA_COUNTS]),
            (papalexi.PAPALEXI_CONVERTED, [papalexi.SCEPTREDATA_LOWMOI])]


def fetch_missing(folder: Path, files: list) -> list[str]:
    """Download into ``folder`` each file of ``files`` that is missing there (through the loaders'
    checked download); an entry ``(converted, originals)`` fetches the originals only when the
    converted file is missing. Files already present are left alone. Returns the names fetched."""
    from pdae_core.data.datasets.download import fetch_remote, is_present

    fetched = []
    for entry in files:
        converted, originals = entry if isinstance(entry, tuple) else (None, [entry])
        if converted is not None and is_present(folder, converted):
            continue
        for rf in originals:
            if not is_present(folder, rf):
                fetch_remote(rf, folder, download=True)
                fetched.append(rf.filename)
    return fetched


def screenshot_dir(update: bool, environ: Mapping[str, str], tmp: Path) -> Path:
    """Where the browser tests save screenshots: the committed ``docs/screenshots`` when asked
    (``--update-screenshots`` or ``PDAE_UPDATE_SCREENSHOTS=1``), else the throw-away ``tmp``."""
    if update or environ.get(UPDATE_SCREENSHOTS_ENV, "").strip() == "1":
        return SCREENSHOTS
    return tmp


DATA_DIR, DATA_SOURCE = pick_data_dir()
os.environ["PDAE_DATA_DIR"] = str(DATA_DIR)  # the dashboard (AppTest, streamlit server) reads it too
if "PDAE_CACHE_DIR" not in os.environ:  # cell maps fitted by tests go to a throw-away folder, not ~/.cache
    os.environ["PDAE_CACHE_DIR"] = tempfile.mkdtemp(prefix="pdae_test_cache_")

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-screenshots", action="store_true", default=False,
                     help="browser tests: rewrite the committed docs/screenshots/*.png (default: a temporary "
                          f"folder; ${UPDATE_SCREENSHOTS_ENV}=1 does the same)")


def pytest_sessionstart(session: pytest.Session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:  # absent in xdist workers and with -p no:terminal
        reporter.write_line(data_dir_line(DATA_DIR, DATA_SOURCE))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Directory with the real datasets; missing files with a public source are downloaded there."""
    fetch_missing(DATA_DIR, public_files())
    if not (DATA_DIR / "perturbench_devel.h5ad").exists():
        raise FileNotFoundError(
            f"Real test data not found in {DATA_DIR}: set PDAE_DATA_DIR to the folder with perturbench_devel.h5ad"
        )
    return DATA_DIR


@pytest.fixture(scope="session")
def screenshots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder for the browser tests' screenshots (see :func:`screenshot_dir`)."""
    folder = screenshot_dir(request.config.getoption("--update-screenshots"), os.environ,
                            tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture()
def tiny_adata():
    """A small synthetic dataset (control, 4 singles, 3 doubles, 40 cells each, 30 genes)."""
    from pdae_core.data.synthetic import make_synthetic

    adata, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=30, hidden=16, n_doubles=3,
                              cells_per_condition=40, seed=1)
    return adata


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _no_background_umap_left():
    """A dashboard test may leave the reference-UMAP warm-up thread (pages/common.py) running;
    wait for it, so that it cannot share the CPU, BLAS or numba with the next test (a
    byte-identical benchmark summary differed in its last digit while one was running)."""
    yield
    import threading

    for t in threading.enumerate():
        if t.name == "umap-warmup":
            t.join(timeout=600)
