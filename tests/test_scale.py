"""Screens of real size: the gene cap, the gene-sampled decoder loss and the thread count."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from pdae_core import PDAE, cli, setup_anndata
from pdae_core.data.genes import cap_genes, variable_genes
from pdae_core.data.synthetic import make_synthetic
from pdae_core.errors import DataError
from pdae_core.models.checkpoint import load_checkpoint
from pdae_core.train import threads as th

SMALL = dict(latent_dim=3, hidden_dims=(16,), noise_dim=2, n_sources=4)


def wide(n_genes: int = 60, seed: int = 0) -> ad.AnnData:
    adata, _ = make_synthetic(n_perturbations=3, latent_dim=2, n_genes=n_genes, hidden=8, n_doubles=2,
                              cells_per_condition=30, seed=seed)
    return adata


# ---- the gene cap -------------------------------------------------------------------------------


def test_variable_genes_match_scanpy_seurat_on_the_chosen_cells():
    sc = pytest.importorskip("scanpy")
    adata = wide()
    cells = np.asarray(adata.obs["condition"] != "P1")
    mask = variable_genes(adata, 20, cells)
    ref = adata[cells].copy()
    sc.pp.highly_variable_genes(ref, n_top_genes=20, flavor="seurat")
    assert mask.sum() == ref.var["highly_variable"].sum() >= 20
    assert list(adata.var_names[mask]) == list(ref.var_names[ref.var["highly_variable"].to_numpy()])


def test_cap_chooses_genes_on_training_cells_only():
    """A gene that varies only in the held-out cells is never picked; it would be if every cell counted."""
    adata = wide()
    rng = np.random.default_rng(0)
    held = np.asarray(adata.obs["condition"] == "P1+P2") if "P1+P2" in set(adata.obs["condition"]) else None
    held = held if held is not None else np.asarray(adata.obs["condition"] == adata.obs["condition"].cat.categories[-1])
    X = np.asarray(adata.X).copy()
    X[:, 0] = 0.5
    X[held, 0] = rng.exponential(3.0, held.sum())  # wildly variable, but only where held out
    adata.X = X
    reg = setup_anndata(adata, "condition", "control")
    _, reg_all, _ = cap_genes(adata, reg, 10)
    assert "gene0" in reg_all.gene_names
    capped, reg_train, note = cap_genes(adata, reg, 10, ~held)
    assert "gene0" not in reg_train.gene_names
    assert capped.n_vars == reg_train.n_genes == 10 and list(capped.var_names) == reg_train.gene_names
    assert reg_train.preprocessing["gene_cap"] == {"kept": 10, "of": 60, "ranking": "seurat dispersion",
                                                   "chosen_on": "training cells"}
    assert "60 genes" in note and "10 most variable" in note and "held-out cells excluded" in note
    same, same_reg, none = cap_genes(adata, reg, 60)
    assert same is adata and same_reg is reg and none is None


def test_too_few_cells_for_the_ranking_is_a_clear_error():
    adata = wide()
    with pytest.raises(DataError, match="at least 2 training cells"):
        variable_genes(adata, 5, np.zeros(adata.n_obs, dtype=bool))


def test_train_caps_genes_and_the_model_predicts_from_the_full_file(capsys, tmp_path: Path):
    adata = wide()
    path = tmp_path / "wide.h5ad"
    adata.write_h5ad(path)
    held = sorted(c for c in adata.obs["condition"].astype(str).unique() if "+" in c)[0]
    capsys.readouterr()
    rc = cli.main(["train", "--data", str(path), "--holdout", held, "--max-genes", "25", "--epochs", "1",
                   "--batch-size", "32", "--latent-dim", "3", "--hidden-dims", "16", "--accelerator", "cpu",
                   "--threads", "1", "-q", "--out", str(tmp_path / "ckpt")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "60 genes: training on the 25 most variable" in out
    assert "(1 thread)" in out and torch.get_num_threads() == 1
    model = load_checkpoint(tmp_path / "ckpt")
    assert model.registry.n_genes == 25 and model.registry.preprocessing["gene_cap"]["of"] == 60
    rc = cli.main(["predict", str(tmp_path / "ckpt"), "--data", str(path), "--target", held, "--n-cells", "10",
                   "--out", str(tmp_path / "pred.h5ad")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert list(pred.var_names) == model.registry.gene_names
    # the same training without the cap keeps every gene
    rc = cli.main(["train", "--data", str(path), "--max-genes", "0", "--epochs", "1", "--batch-size", "32",
                   "--latent-dim", "3", "--hidden-dims", "16", "--accelerator", "cpu", "-q",
                   "--out", str(tmp_path / "all")])
    assert rc == 0 and load_checkpoint(tmp_path / "all").registry.n_genes == 60


def test_a_model_reads_its_genes_out_of_a_larger_dataset():
    adata = wide()
    model = PDAE.from_anndata(adata[:, :30].copy(), seed=0, **SMALL)
    model.fit(adata[:, :30].copy(), max_epochs=1, batch_size=32, accelerator="cpu", progress_bar=False)
    src = adata[adata.obs["condition"] == "control"]
    shuffled = src[:, np.random.default_rng(0).permutation(60)]
    a = model.predict(src, "P1", seed=3)
    b = model.predict(shuffled, "P1", seed=3)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-5)
    assert list(a.var_names) == list(adata.var_names[:30])
    with pytest.raises(DataError, match="missing"):
        model.predict(adata[:, 10:].copy(), "P1")


# ---- the decoder scores a random subset of the genes ---------------------------------------------


def test_decoding_some_genes_equals_those_columns_of_decoding_all():
    adata = wide()
    model = PDAE.from_anndata(adata, seed=0, **SMALL)
    m = model.module
    z = torch.randn(5, 4, 3)
    eps = torch.randn(5, 4, 2)
    genes = torch.tensor([3, 17, 0, 59])
    full = m.decode(z, eps=eps)
    torch.testing.assert_close(m.decode(z, eps=eps, genes=genes), full[..., genes])


def test_gene_sampled_loss_keeps_its_size_and_trains():
    adata = wide(n_genes=60)
    full = PDAE.from_anndata(adata, seed=0, gene_sample=0, **SMALL)
    part = PDAE.from_anndata(adata, seed=0, gene_sample=15, **SMALL)
    part.module.load_state_dict(full.module.state_dict())
    x = torch.as_tensor(np.asarray(adata.X[:64]))
    lab = torch.as_tensor(full.registry.label_matrix(adata[:64]))
    torch.manual_seed(0)
    with torch.no_grad():
        lf = float(full.module.loss(x, lab)["pert"])
    vals = []
    for s in range(20):
        torch.manual_seed(s)
        with torch.no_grad():
            vals.append(float(part.module.loss(x, lab)["pert"]))
    assert len(set(vals)) > 1  # a fresh subset each step
    assert 0.6 * lf < np.mean(vals) < 1.4 * lf  # scaled by sqrt(G / g): about the full loss
    hist = part.fit(adata, max_epochs=2, batch_size=32, accelerator="cpu", progress_bar=False)
    assert np.isfinite(hist.best_val)
    assert part.predict(adata[:10], "P1").n_vars == 60  # prediction decodes every gene


def test_gene_sample_is_checked():
    with pytest.raises(ValueError, match="gene_sample"):
        PDAE.from_anndata(wide(), gene_sample=1)


# ---- threads -------------------------------------------------------------------------------------


def test_set_threads_fixed_auto_and_bad_values(monkeypatch):
    old = torch.get_num_threads()
    try:
        assert th.set_threads(1) == 1 == torch.get_num_threads()
        monkeypatch.setattr(th, "usable_cpus", lambda: 4)
        monkeypatch.setattr(th, "idle_cpus", lambda window_s=0.25: 1.2)  # another job holds most of the machine
        assert th.set_threads("auto") == 1
        monkeypatch.setattr(th, "idle_cpus", lambda window_s=0.25: 3.6)
        assert th.set_threads("AUTO") == 4 == torch.get_num_threads()
        monkeypatch.setattr(th, "idle_cpus", lambda window_s=0.25: 0.1)  # busy: still at least one
        assert th.auto_threads() == 1
        monkeypatch.setattr(th, "idle_cpus", lambda window_s=0.25: None)  # no /proc/stat: every usable CPU
        assert th.auto_threads() == 4
        for bad in (0, -2, "many"):
            with pytest.raises(ValueError, match="threads"):
                th.set_threads(bad)
    finally:
        torch.set_num_threads(old)


def test_idle_cpus_reads_the_machine():
    idle = th.idle_cpus(0.05)
    if idle is not None:  # Linux
        assert 0.0 <= idle <= (__import__("os").cpu_count() or 1) + 1e-9
    assert 1 <= th.usable_cpus() <= (__import__("os").cpu_count() or 1)


@pytest.mark.parametrize("command", ["train", "predict", "interactions", "benchmark"])
def test_every_command_that_trains_or_predicts_takes_threads(capsys, command):
    with pytest.raises(SystemExit):
        cli.build_parser(commands=[command]).parse_args([command, "--help"])
    assert "--threads" in capsys.readouterr().out
    rc = cli.main([command, "--threads", "0"])
    assert rc == 2 and "positive integer" in capsys.readouterr().err




def test_building_a_model_on_thousands_of_genes_says_how_to_cap_them():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"condition": ["control"] * 6 + ["P1"] * 6}, index=[f"c{i}" for i in range(12)])
    big = ad.AnnData(X=rng.random((12, 5001)).astype(np.float32), obs=obs)
    with pytest.warns(UserWarning, match="5,001 genes.*5,000 most variable.*cap_genes"):
        PDAE.from_anndata(big, hidden_dims=(8,), latent_dim=2)


def test_keep_rows_subsamples_a_prediction_in_place():
    from pdae_core.models.prediction import keep_rows

    adata = wide()
    model = PDAE.from_anndata(adata, seed=0, **SMALL)
    src = adata[adata.obs["condition"] == "control"]
    pred = model.predict(src, "P1", n_draws=3, seed=2)
    expected = pred.X.copy()
    names = list(pred.obs_names)
    rows = np.sort(np.random.default_rng(0).choice(pred.n_obs, 50, replace=False))
    buffer = pred.X
    kept = keep_rows(pred, rows, chunk=7)  # several chunks
    np.testing.assert_array_equal(kept.X, expected[rows])
    assert list(kept.obs_names) == [names[i] for i in rows]
    assert np.shares_memory(kept.X, buffer)  # no copy of the cells x genes matrix
    with pytest.raises(ValueError, match="sorted"):
        keep_rows(model.predict(src, "P1"), np.array([3, 1]))
