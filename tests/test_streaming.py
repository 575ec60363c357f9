"""Training from rows read per batch: sparse X and backed (on-disk) .h5ad give the same
model as dense in-memory X; preprocessing streamed from disk equals scanpy's; the
precision and compile flags train."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from pdae_core import PDAE, preprocess
from pdae_core.cli import main as cli_main
from pdae_core.data.registry import read_h5ad
from pdae_core.data.streaming import BackedRows, SparseRows, prefetch, preprocess_on_disk, row_source
from pdae_core.data.synthetic import make_synthetic
from pdae_core.errors import DataError


@pytest.fixture(scope="module")
def data():
    adata, _ = make_synthetic(n_perturbations=4, n_genes=40, n_doubles=2, cells_per_condition=70, seed=3)
    adata.X[adata.X < 0.4] = 0.0  # sparse-looking, like log-normalised expression
    return adata


def _fit(adata, **kw):
    model = PDAE.from_anndata(adata, "condition", "control", seed=0, hidden_dims=(64,), latent_dim=4)
    hist = model.fit(adata, holdout=["P1+P2"] if "P1+P2" in set(adata.obs["condition"]) else [], max_epochs=3,
                     accelerator="cpu", eval_every=1, **kw)
    return model, hist


def _same(m1, m2, h1, h2):
    for k, v in m1.module.state_dict().items():
        assert torch.equal(v, m2.module.state_dict()[k]), k
    strip = ("seconds", "train_seconds")
    assert [{k: v for k, v in r.items() if k not in strip} for r in h1.records] == [
        {k: v for k, v in r.items() if k not in strip} for r in h2.records
    ]


@pytest.fixture(scope="module")
def dense_run(data):
    torch.set_num_threads(2)  # several threads: the run must still be deterministic
    return _fit(data)


def test_same_seed_is_bit_identical_with_two_threads(data, dense_run):
    m2, h2 = _fit(data)
    _same(dense_run[0], m2, dense_run[1], h2)


def test_sparse_x_trains_exactly_like_dense(data, dense_run):
    sparse = data.copy()
    sparse.X = sp.csr_matrix(sparse.X)
    m, h = _fit(sparse)
    _same(dense_run[0], m, dense_run[1], h)


def test_backed_h5ad_streams_and_trains_exactly_like_in_memory(data, dense_run, tmp_path):
    for fmt in ("dense", "csr"):
        a = data.copy()
        if fmt == "csr":
            a.X = sp.csr_matrix(a.X)
        a.write_h5ad(tmp_path / f"{fmt}.h5ad")
        backed = read_h5ad(tmp_path / f"{fmt}.h5ad", backed=True)
        assert backed.isbacked
        for prefetch_depth in (0, 2):
            m, h = _fit(backed, prefetch=prefetch_depth)
            _same(dense_run[0], m, dense_run[1], h)
        # latent of a backed file, read chunk by chunk, equals the in-memory one
        np.testing.assert_array_equal(m.latent(backed, batch_size=64), m.latent(data))
        backed.file.close()


def test_backed_training_never_reads_x_whole(data, tmp_path, monkeypatch):
    """Every read of X during a streamed fit is at most one batch (or the capped
    validation / initialisation sets), never the whole matrix."""
    data.write_h5ad(tmp_path / "d.h5ad")
    backed = read_h5ad(tmp_path / "d.h5ad", backed=True)
    sizes = []
    orig = BackedRows.rows

    def spy(self, idx):
        sizes.append(len(idx))
        return orig(self, idx)

    monkeypatch.setattr(BackedRows, "rows", spy)
    model = PDAE.from_anndata(backed, "condition", "control", seed=0, hidden_dims=(16,), latent_dim=3)
    model.fit(backed, max_epochs=1, accelerator="cpu", batch_size=64, val_max_cells=5, init_max_cells=100)
    n_cond = backed.obs["condition"].nunique()
    assert sizes and max(sizes) <= max(64 + 8, 5 * n_cond, 100)
    assert max(sizes) < backed.n_obs / 3
    backed.file.close()


def test_row_sources_return_rows_in_the_requested_order(data, tmp_path):
    X = np.asarray(data.X)
    idx = np.array([7, 3, 3, 0, len(X) - 1])
    data.write_h5ad(tmp_path / "d.h5ad")
    backed = ad.read_h5ad(tmp_path / "d.h5ad", backed="r")
    for src in (row_source(X), SparseRows(sp.csr_matrix(X)), BackedRows(backed.X)):
        np.testing.assert_array_equal(src.rows(idx), X[idx])
    sub = BackedRows(backed.X, subset=np.array([10, 5, 2]))
    assert sub.shape == (3, X.shape[1])
    np.testing.assert_array_equal(sub.rows(np.array([2, 0])), X[[2, 10]])
    backed.file.close()


def test_backed_rows_name_the_rows_with_nan(tmp_path):
    X = np.ones((6, 3), dtype=np.float32)
    X[4, 1] = np.nan
    ad.AnnData(X).write_h5ad(tmp_path / "nan.h5ad")
    backed = ad.read_h5ad(tmp_path / "nan.h5ad", backed="r")
    with pytest.raises(DataError, match=r"row\(s\) \[4\]"):
        BackedRows(backed.X, where="X of nan.h5ad").rows(np.array([0, 4]))
    backed.file.close()


def test_prefetch_yields_in_order_and_passes_errors_on():
    src = row_source(np.arange(20, dtype=np.float32).reshape(10, 2))
    batches = [np.array([1, 2]), np.array([0]), np.array([9, 8])]
    got = list(prefetch(src, batches, depth=2))
    assert [g[:, 0].tolist() for g in got] == [[2.0, 4.0], [0.0], [18.0, 16.0]]
    with pytest.raises(IndexError):
        list(prefetch(src, [np.array([0]), np.array([99])], depth=1))


def _raw_counts(n=1500, genes=200, seed=0):
    rng = np.random.default_rng(seed)
    rates = rng.gamma(0.5, 2.0, size=(1, genes)) * rng.gamma(5, 0.2, size=(n, 1))
    obs = pd.DataFrame({"condition": rng.choice(["control", "A", "B", "A+B"], n)}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(sp.csr_matrix(rng.poisson(rates).astype(np.float32)), obs=obs,
                      var=pd.DataFrame(index=[f"g{i}" for i in range(genes)]))


@pytest.mark.parametrize("n_top", [None, 60])
def test_preprocess_on_disk_matches_scanpy_in_memory(tmp_path, n_top):
    raw = _raw_counts()
    raw.write_h5ad(tmp_path / "raw.h5ad")
    steps = preprocess_on_disk(tmp_path / "raw.h5ad", tmp_path / "pp.h5ad", n_top_genes=n_top, chunk_size=333)
    got = ad.read_h5ad(tmp_path / "pp.h5ad")
    ref = preprocess(raw, n_top_genes=n_top)
    assert list(got.var_names) == list(ref.var_names)
    assert list(got.obs_names) == list(ref.obs_names)
    assert (got.obs["condition"] == ref.obs["condition"]).all()
    np.testing.assert_allclose(got.X.toarray(), ref.X.toarray(), atol=1e-5)
    assert steps["log1p"] and got.uns["pdae_preprocessing"]["normalize_total"] == 1e4


def test_preprocess_on_disk_refuses_non_counts_and_its_own_input(tmp_path):
    a = _raw_counts(n=50, genes=10)
    a.X = a.X * 0.5
    a.write_h5ad(tmp_path / "lognorm.h5ad")
    with pytest.raises(DataError, match="raw counts"):
        preprocess_on_disk(tmp_path / "lognorm.h5ad", tmp_path / "out.h5ad")
    with pytest.raises(ValueError, match="must differ"):
        preprocess_on_disk(tmp_path / "lognorm.h5ad", tmp_path / "lognorm.h5ad")


def test_cli_preprocess_then_train_backed(tmp_path, capsys):
    raw = _raw_counts(n=800, genes=60)
    raw.write_h5ad(tmp_path / "raw.h5ad")
    assert cli_main(["preprocess", str(tmp_path / "raw.h5ad"), str(tmp_path / "pp.h5ad"), "--n-top-genes", "40"]) == 0
    assert "800 cells x 40 genes" in capsys.readouterr().out
    assert cli_main(["preprocess", str(tmp_path / "raw.h5ad"), str(tmp_path / "pp.h5ad")]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    code = cli_main(["train", "--data", str(tmp_path / "pp.h5ad"), "--backed", "--out", str(tmp_path / "ck"),
                     "--epochs", "2", "--hidden-dims", "16", "--accelerator", "cpu", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "streamed from disk" in out
    assert cli_main(["train", "--data", str(tmp_path / "raw.h5ad"), "--backed", "--preprocess", "--out",
                     str(tmp_path / "ck2"), "-q"]) == 2
    assert "pdae preprocess" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_with_float32_losses(data, precision):
    model, hist = _fit(data, precision=precision)
    assert hist.steps > 0 and np.isfinite(hist.best_val)
    assert all(v.dtype == torch.float32 for v in model.module.state_dict().values() if v.is_floating_point())


def test_compile_flag_trains(data):
    model = PDAE.from_anndata(data, "condition", "control", seed=0, hidden_dims=(16,), latent_dim=3)
    # three epochs: the batches differ in how many sources each target gets (a data-dependent
    # size under the default source_sampling="condition"), which forces a recompilation
    hist = model.fit(data, max_epochs=3, accelerator="cpu", compile=True, eval_every=3)
    assert hist.steps > 4 and np.isfinite(hist.records[-1]["val_ed"])


def test_train_config_rejects_unknown_precision():
    from pdae_core.train.loop import TrainConfig

    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="8")


def test_preprocess_keeps_torch_thread_count():
    """scanpy's numba kernels reset OpenMP's thread count; preprocess must not leave
    torch oversubscribing the cores for the training that follows."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        preprocess(_raw_counts(n=300, genes=50), n_top_genes=20)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
