"""Colour a map by one gene (issue 16, "What users expect" 1): finding the gene a user typed,
one value per drawn point, and the figure."""

from __future__ import annotations

import numpy as np
import pytest

from pdae_core import explore as ex
from pdae_core import reference as refmod
from pdae_core.plot.cells import expression_scatter
from pdae_core.plot.style import ADDITIVE, CONTROL, OBSERVED, OTHER_CELLS, PREDICTED


@pytest.fixture()
def fitted(tiny_adata, monkeypatch):
    import pdae_core as pc

    monkeypatch.setattr(refmod, "umap_2d", lambda X, seed=0: refmod.pca(np.asarray(X), 2)[0])
    adata = tiny_adata
    reg = pc.setup_anndata(adata, "condition", "control")
    m = pc.PDAE.from_anndata(adata, perturbation_key="condition", hidden_dims=(16,), latent_dim=4, noise_dim=2)
    m.fit(adata, max_epochs=1, val_fraction=0.0)
    ref = refmod.ReferenceEmbedding(adata, "condition", n_pcs=4, max_cells=100)
    return adata, reg, m, ref


def test_find_gene_exact_case_and_hint(fitted):
    _, reg, _, _ = fitted
    g0 = reg.gene_names[0]
    assert ex.find_gene(reg, g0) == (g0, "")
    assert ex.find_gene(reg, f"  {g0.upper()} ") == (g0, "")
    gene, msg = ex.find_gene(reg, "GATA1")
    assert gene is None and msg.startswith(f"GATA1 is not among the {reg.n_genes} genes of this dataset")
    _, msg = ex.find_gene(reg, g0 + "x")
    assert f"close: {g0}" in msg


def test_one_value_per_point_of_the_what_if_map(fitted):
    adata, reg, model, ref = fitted
    res = ex.what_if(model, adata, {"P1": 1.0, "P2": 1.0}, max_source_cells=30, n_cells=30,
                     additive=ex.fit_additive(adata, model))
    coords, groups, hover = ex.what_if_embedding(ref, res, include_additive=True)
    gene = reg.gene_names[3]
    v = ex.embedding_gene_values(ref, adata, res, groups, gene, reg)
    g = np.asarray(groups)
    assert v.shape == (len(groups),) and np.isfinite(v).all()
    j = 3
    np.testing.assert_allclose(v[g == PREDICTED], np.asarray(res.predicted.X)[:, j], rtol=1e-6)
    np.testing.assert_allclose(v[g == ADDITIVE], np.asarray(res.additive.X)[:, j], rtol=1e-6)
    np.testing.assert_allclose(v[g == CONTROL], np.asarray(res.control.X)[:, j], rtol=1e-6)
    if res.observed is not None:
        np.testing.assert_allclose(v[g == OBSERVED], np.asarray(res.observed.X)[:, j], rtol=1e-6)
    # the background cells, in the map's order
    other = [n for n in ref.obs_names if n not in set(res.control.obs_names) | set(
        [] if res.observed is None else res.observed.obs_names)]
    np.testing.assert_allclose(v[g == OTHER_CELLS], np.asarray(adata[other].X)[:, j], rtol=1e-6)


def test_expression_scatter():
    coords = np.arange(10, dtype=float).reshape(5, 2)
    fig = expression_scatter(coords, [0.5, np.nan, 2.0, 0.0, 1.0], hover=list("abcde"), gene="KLF1")
    assert [t.name for t in fig.data] == ["no value", "KLF1"]
    np.testing.assert_array_equal(fig.data[1].marker.color, [0.0, 0.5, 1.0, 2.0])  # highest on top
    assert list(fig.data[1].text) == ["d", "a", "e", "c"] and list(fig.data[0].text) == ["b"]
    assert fig.data[1].marker.colorbar.title.text == "KLF1"
    with pytest.raises(ValueError, match="hover has 2"):
        expression_scatter(coords, [1, 2, 3, 4, 5], hover=["a", "b"])
