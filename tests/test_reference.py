"""The shared map of a dataset's cells (pdae_core.reference): stratified sample, every cell
placed, kept on disk by fingerprint (issue 16, "Real size")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pdae_core import reference as refmod
from pdae_core.data.synthetic import make_synthetic
from pdae_core.errors import DataError
from pdae_core.reference import ReferenceEmbedding, cached_reference, fingerprint, stratified_sample


@pytest.fixture()
def cells():
    adata, _ = make_synthetic(n_perturbations=4, n_doubles=2, n_genes=30, cells_per_condition=60, seed=3)
    # a large control population, as in real screens
    big, _ = make_synthetic(n_perturbations=4, n_doubles=2, n_genes=30, cells_per_condition=400, seed=4)
    ctrl = big[big.obs.condition == "control"].copy()
    ctrl.obs_names = [f"ctrl{i}" for i in range(ctrl.n_obs)]
    import anndata as ad

    out = ad.concat([adata, ctrl])
    out.obs["condition"] = out.obs["condition"].astype(str)
    return out


@pytest.fixture()
def fits(monkeypatch):
    """UMAP replaced by PCA (fast, deterministic); counts the fits."""
    calls = []

    def fake(X, seed=0):
        calls.append(len(X))
        return refmod.pca(np.asarray(X), 2)[0]

    monkeypatch.setattr(refmod, "umap_2d", fake)
    return calls


def test_stratified_sample_keeps_small_conditions_and_caps_large_ones():
    conds = ["control"] * 1000 + ["A"] * 50 + ["B"] * 20 + ["A+B"] * 5
    pick = stratified_sample(conds, 200, seed=0)
    kept = np.asarray(conds)[pick]
    n = {c: int((kept == c).sum()) for c in ("control", "A", "B", "A+B")}
    assert len(pick) == 200 and n["A+B"] == 5 and n["B"] == 20 and n["A"] == 50  # small ones whole
    assert n["control"] == 125  # the large one capped to what is left
    conds2 = ["control"] * 1000 + ["A"] * 300 + ["B"] * 20
    kept2 = np.asarray(conds2)[stratified_sample(conds2, 200, seed=1)]
    assert (kept2 == "control").sum() == (kept2 == "A").sum() == 90  # large conditions capped alike
    assert np.array_equal(pick, np.sort(pick)) and len(set(pick)) == len(pick)
    assert np.array_equal(pick, stratified_sample(conds, 200, seed=0))
    assert len(stratified_sample(conds, None)) == len(conds) == len(stratified_sample(conds, 10**6))


def test_every_cell_is_placed_and_sampled_cells_keep_their_coordinates(cells, fits):
    ref = ReferenceEmbedding(cells, "condition", max_cells=300)
    assert fits == [len(ref.obs_names)] and len(ref.obs_names) <= 300
    assert ref.all_coords.shape == (cells.n_obs, 2) and np.isfinite(ref.all_coords).all()
    np.testing.assert_array_equal(ref.coords_of(ref.obs_names), ref.coords)
    # an unsampled cell lands where transform puts it
    other = next(n for n in cells.obs_names if n not in set(ref.obs_names))
    np.testing.assert_allclose(ref.coords_of([other])[0], ref.transform(cells[[other]].X)[0], rtol=1e-5)
    assert len(ref.coords_of(["no such cell", other])) == 1
    # the control population no longer dominates the background
    assert (ref.conditions == "control").sum() < 0.25 * len(ref.conditions)


def test_save_load_round_trip_and_tampering(cells, fits, tmp_path):
    ref = ReferenceEmbedding(cells, "condition", max_cells=300)
    ref.save(tmp_path / "m")
    back = ReferenceEmbedding.load(tmp_path / "m")
    np.testing.assert_array_equal(back.all_coords, ref.all_coords)
    X = np.asarray(cells.X[:7])
    np.testing.assert_array_equal(back.transform(X), ref.transform(X))
    assert back.fingerprint == ref.fingerprint == fingerprint(cells, "condition")
    raw = bytearray((tmp_path / "m" / "reference.safetensors").read_bytes())
    raw[-3] ^= 0xFF
    (tmp_path / "m" / "reference.safetensors").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="does not match the digest"):
        ReferenceEmbedding.load(tmp_path / "m")
    with pytest.raises(DataError, match="no readable reference map"):
        ReferenceEmbedding.load(tmp_path / "nothing")


def test_cached_reference_fits_once_then_reads_the_cache(cells, fits, tmp_path):
    a = cached_reference(cells, "condition", cache_dir=tmp_path, max_cells=300)
    b = cached_reference(cells, "condition", cache_dir=tmp_path, max_cells=300)
    assert len(fits) == 1
    np.testing.assert_array_equal(a.all_coords, b.all_coords)
    assert [p.name for p in tmp_path.iterdir()] == [a.fingerprint]
    # another dataset (one value changed) has another fingerprint: fitted again
    changed = cells.copy()
    changed.X[0, 0] += 1.0
    assert fingerprint(changed, "condition") != a.fingerprint
    cached_reference(changed, "condition", cache_dir=tmp_path, max_cells=300)
    assert len(fits) == 2


def test_a_shipped_map_is_found_first_and_a_bad_one_is_skipped(cells, fits, tmp_path):
    shipped = tmp_path / "shipped"
    ref = ReferenceEmbedding(cells, "condition", max_cells=300)
    ref.save(shipped / ref.fingerprint)
    got = cached_reference(cells, "condition", search=[shipped], cache_dir=tmp_path / "cache")
    assert len(fits) == 1 and not (tmp_path / "cache").exists()
    np.testing.assert_array_equal(got.all_coords, ref.all_coords)
    meta = shipped / ref.fingerprint / "reference.json"
    m = json.loads(meta.read_text())
    m["arrays_sha256"] = "0" * 64
    meta.write_text(json.dumps(m))
    cached_reference(cells, "condition", search=[shipped], cache_dir=tmp_path / "cache", max_cells=300)
    assert len(fits) == 2  # the bad shipped map was not used, and it was left as it was
    assert json.loads(meta.read_text())["arrays_sha256"] == "0" * 64


def test_an_unwritable_cache_only_costs_a_refit(cells, fits, tmp_path):
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("keep me")
    cached_reference(cells, "condition", cache_dir=blocked / "cache", max_cells=300)
    cached_reference(cells, "condition", cache_dir=blocked / "cache", max_cells=300)
    assert len(fits) == 2 and blocked.read_text() == "keep me"
