"""Shared fixtures. Real data comes from PDAE_DATA_DIR (CI points it at ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PDAE_DATA_DIR", REPO.parent / "shared" / "data"))
os.environ["PDAE_DATA_DIR"] = str(DATA_DIR)  # the dashboard (AppTest, streamlit server) reads it too
if "PDAE_CACHE_DIR" not in os.environ:  # cell maps fitted by tests go to a throw-away folder, not ~/.cache
    import tempfile

    os.environ["PDAE_CACHE_DIR"] = tempfile.mkdtemp(prefix="pdae_test_cache_")

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Directory with the real datasets; the tests need it (CI provides it)."""
    if not (DATA_DIR / "perturbench_devel.h5ad").exists():
        raise FileNotFoundError(
            f"Real test data not found in {DATA_DIR}: set PDAE_DATA_DIR to the folder with perturbench_devel.h5ad"
        )
    return DATA_DIR


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
