"""Dataset registry, file fetching and the loaders (real files from the shared data dir,
public-source formats rebuilt in miniature in tmp_path)."""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pdae_core.data.datasets import (
    RemoteFile,
    build_schraivogel20,
    default_data_dir,
    download,
    fetch_file,
    list_datasets,
    load_dataset,
    norman19_from_gears,
    norman_full,
    papalexi,
    papalexi21_from_r_objects,
    perturbench,
    rda,
    read_lowmoi_rda,
    schraivogel,
)
from pdae_core.data.registry import PerturbationRegistry, setup_anndata
from pdae_core.errors import DataError, DatasetUnavailableError

EXPECTED = {
    "norman19_devel", "mcfaline23_devel", "norman19_pseudobulk", "schraivogel20", "papalexi21",
    "norman19_full", "synthetic", "kang18",
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _setup(adata: ad.AnnData) -> PerturbationRegistry:
    d = adata.uns["pdae_dataset"]
    return setup_anndata(adata, perturbation_key=d["perturbation_key"], control_label=d["control_label"],
                         covariate_key=d["covariate_key"])


def _no_unused_categories(adata: ad.AnnData) -> None:
    for col in adata.obs.columns:
        s = adata.obs[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            assert set(s.cat.categories) == set(s.astype(str).unique()), col


def _conditions(adata: ad.AnnData, key: str) -> pd.Series:
    return adata.obs[key].astype(str)


# ---------------------------------------------------------------------------------------
# registry of names, data directory


def test_list_datasets_names_and_one_line_descriptions():
    names = list_datasets()
    assert set(names) == EXPECTED
    for name, desc in names.items():
        assert isinstance(desc, str) and desc.strip() and "\n" not in desc, name


def test_unknown_dataset_name_lists_known_ones(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("norman2019", data_dir=tmp_path)
    msg = str(e.value)
    assert "'norman2019'" in msg
    assert all(n in msg for n in EXPECTED)


def test_unknown_option_is_a_data_error(data_dir):
    with pytest.raises(DataError, match="keep_unassigned"):
        load_dataset("schraivogel20", data_dir=data_dir, drop_unassigned=True)
    with pytest.raises(DataError, match="no options"):
        load_dataset("norman19_devel", data_dir=data_dir, foo=1)
    with pytest.raises(DataError, match="n_perturbations"):
        load_dataset("synthetic", n_perturbation=3)


def test_default_data_dir_precedence(tmp_path, monkeypatch):
    import platformdirs

    env_dir, arg_dir = tmp_path / "from_env", tmp_path / "from_arg"
    monkeypatch.setenv("PDAE_DATA_DIR", str(env_dir))
    assert default_data_dir(arg_dir) == arg_dir
    assert default_data_dir(str(arg_dir)) == arg_dir
    assert default_data_dir() == env_dir
    monkeypatch.setenv("PDAE_DATA_DIR", "")
    assert default_data_dir() == Path(platformdirs.user_cache_dir("pdae_core"))
    monkeypatch.delenv("PDAE_DATA_DIR")
    assert default_data_dir() == Path(platformdirs.user_cache_dir("pdae_core"))


def test_load_dataset_uses_env_data_dir(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PDAE_DATA_DIR", str(data_dir))
    adata = load_dataset("mcfaline23_devel", download=False)
    assert adata.n_obs == 2586
    # an explicit data_dir wins over the environment
    with pytest.raises(DatasetUnavailableError, match="perturbench_devel.h5ad"):
        load_dataset("mcfaline23_devel", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------------------------------
# fetch_file: checksums and downloads


def test_sha256_mismatch_names_file_and_both_hashes(tmp_path):
    f = tmp_path / "thing.bin"
    f.write_bytes(b"not what you expected")
    wrong = "0" * 64
    with pytest.raises(DataError) as e:
        fetch_file("thing.bin", "https://example.org/thing.bin", wrong, data_dir=tmp_path)
    msg = str(e.value)
    assert "thing.bin" in msg and wrong in msg and _sha(f) in msg and "delete" in msg
    assert f.exists()  # never deletes a user's file
    assert fetch_file("thing.bin", None, _sha(f).upper(), data_dir=tmp_path) == f


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="plain file name"):
        fetch_file("../escape.h5ad", None, None, data_dir=tmp_path)
    with pytest.raises(DataError, match="64 hexadecimal"):
        fetch_file("a.h5ad", None, "abc", data_dir=tmp_path)


def test_missing_file_without_download_says_where_to_put_it(tmp_path):
    url = "https://example.org/data/a.h5ad"
    with pytest.raises(DatasetUnavailableError) as e:
        fetch_file("a.h5ad", url, None, data_dir=tmp_path, download=False)
    assert url in str(e.value) and str(tmp_path / "a.h5ad") in str(e.value)
    with pytest.raises(DatasetUnavailableError, match="no public download"):
        fetch_file("a.h5ad", None, None, data_dir=tmp_path)


def test_download_from_file_url_into_empty_dir(tmp_path, monkeypatch):
    src = tmp_path / "remote" / "payload.bin"
    src.parent.mkdir()
    payload = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # several read chunks
    src.write_bytes(payload)
    dest_dir = tmp_path / "cache" / "nested"  # does not exist yet
    path = fetch_file("local.bin", src.as_uri(), _sha(src), data_dir=dest_dir)
    assert path == dest_dir / "local.bin"
    assert path.read_bytes() == payload
    assert sorted(p.name for p in dest_dir.iterdir()) == ["local.bin"]  # no temp file left

    def no_network(url, timeout=None):
        raise AssertionError("a present, valid file must not be downloaded again")

    monkeypatch.setattr(download, "_urlopen", no_network)
    assert fetch_file("local.bin", src.as_uri(), _sha(src), data_dir=dest_dir) == path


class _FlakyResponse:
    """Sends ``good`` bytes, then fails (connection drop) or ends early."""

    def __init__(self, good: bytes, fail: bool, length: int | None = None):
        self.chunks = [good]
        self.fail = fail
        self.headers = {"Content-Length": str(length)} if length is not None else {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, n=-1):
        if self.chunks:
            return self.chunks.pop()
        if self.fail:
            raise ConnectionResetError("connection reset by peer")
        return b""


def test_failed_download_leaves_no_partial_file(tmp_path, monkeypatch):
    url = "https://example.org/big.h5ad"
    monkeypatch.setattr(download, "_urlopen", lambda u, timeout=None: _FlakyResponse(b"x" * 1000, fail=True))
    with pytest.raises(DatasetUnavailableError) as e:
        fetch_file("big.h5ad", url, None, data_dir=tmp_path)
    assert url in str(e.value) and str(tmp_path / "big.h5ad") in str(e.value)
    assert "ConnectionResetError" in str(e.value)
    assert list(tmp_path.iterdir()) == []

    # a response shorter than its Content-Length is a failure too
    monkeypatch.setattr(download, "_urlopen",
                        lambda u, timeout=None: _FlakyResponse(b"x" * 10, fail=False, length=100))
    with pytest.raises(DatasetUnavailableError, match="cut short"):
        fetch_file("big.h5ad", url, None, data_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_with_wrong_hash_or_bad_url_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "dest"
    with pytest.raises(DatasetUnavailableError) as e:
        fetch_file("f.bin", src.as_uri(), "1" * 64, data_dir=dest)
    assert "1" * 64 in str(e.value) and _sha(src) in str(e.value)
    assert list(dest.iterdir()) == []
    missing = (tmp_path / "nope.bin").as_uri()
    with pytest.raises(DatasetUnavailableError, match="Could not download f.bin"):
        fetch_file("f.bin", missing, None, data_dir=dest)
    assert list(dest.iterdir()) == []


def test_load_dataset_downloads_a_missing_file(data_dir, tmp_path, monkeypatch):
    real = data_dir / perturbench.DEVEL.filename
    monkeypatch.setattr(perturbench, "DEVEL",
                        RemoteFile(perturbench.DEVEL.filename, real.as_uri(), perturbench.DEVEL.sha256))
    adata = load_dataset("norman19_devel", data_dir=tmp_path)
    assert adata.n_obs == 3375
    assert _sha(tmp_path / "perturbench_devel.h5ad") == perturbench.DEVEL.sha256


# ---------------------------------------------------------------------------------------
# real datasets (shared data dir)


def test_norman19_devel(data_dir):
    adata = load_dataset("norman19_devel", data_dir=data_dir, download=False)
    assert adata.shape == (3375, 500)
    d = adata.uns["pdae_dataset"]
    assert d == {**d, "name": "norman19_devel", "perturbation_key": "condition", "control_label": "control",
                 "covariate_key": None, "values": "log1p"}
    assert "altoslabs/perturbench" in d["source"]
    conds = _conditions(adata, "condition")
    assert conds.nunique() == 34 and "control" in set(conds)
    singles = {c for c in conds.unique() if c != "control" and "+" not in c}
    doubles = {c for c in conds.unique() if "+" in c}
    assert (len(singles), len(doubles)) == (18, 15)
    with_both = {c for c in doubles if set(c.split("+")) <= singles}
    assert with_both == {"KLF1+MAP2K6", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2", "KLF1+TGFBR2"}
    assert list(adata.obs["dataset"].cat.categories) == ["norman19"]
    assert list(adata.obs["cell_type"].cat.categories) == ["k562"]
    _no_unused_categories(adata)
    reg = _setup(adata)
    assert reg.x_kind == "log1p" and reg.n_perturbations == 31 and reg.n_genes == 500


def test_mcfaline23_devel(data_dir):
    adata = load_dataset("mcfaline23_devel", data_dir=data_dir, download=False)
    assert adata.shape == (2586, 500)
    d = adata.uns["pdae_dataset"]
    assert (d["perturbation_key"], d["control_label"], d["covariate_key"]) == ("condition", "control", "cell_type")
    assert adata.obs["cell_type"].value_counts().to_dict() == {"T98G": 871, "U87MG": 865, "A172": 850}
    conds = _conditions(adata, "condition")
    # 10 conditions: control + 9 singles (the data README says "10 singles + control")
    assert conds.nunique() == 10 and "control" in set(conds) and not any("+" in c for c in conds)
    _no_unused_categories(adata)
    reg = _setup(adata)
    assert reg.covariate_key == "cell_type" and reg.n_perturbations == 9


def test_norman19_pseudobulk(data_dir):
    adata = load_dataset("norman19_pseudobulk", data_dir=data_dir, download=False)
    assert adata.shape == (234, 2000)
    d = adata.uns["pdae_dataset"]
    assert d["values"] == "lfc_vs_control" and d["perturbation_key"] == "condition"
    with np.load(data_dir / "norman2019_pseudobulk.npz") as z:
        np.testing.assert_array_equal(adata.X, np.concatenate([z["lfc_s"], z["lfc_d"]]))
        assert list(adata.var_names) == [str(g) for g in z["genes_hvg"]]
        np.testing.assert_array_equal(adata.layers["zscore"], np.concatenate([z["Es"], z["Ed"]]))
    obs = adata.obs
    assert (obs["n_perturbations"] == 1).sum() == 104 and (obs["n_perturbations"] == 2).sum() == 130
    assert obs.loc[obs["n_perturbations"] == 1, "both_singles_present"].all()
    assert obs.loc[obs["n_perturbations"] == 2, "both_singles_present"].sum() == 126
    singles = set(obs.index[obs["n_perturbations"] == 1])
    for cond, ok in obs.loc[obs["n_perturbations"] == 2, "both_singles_present"].items():
        assert ok == set(cond.split("+")).issubset(singles), cond
    # labels follow the registry's A+B convention (LFC values are not expression: no setup_anndata)
    reg = PerturbationRegistry("condition", "control", sorted(singles | {p for c in obs.index for p in c.split("+")}),
                               list(adata.var_names))
    L = reg.label_matrix(adata)
    np.testing.assert_array_equal(L.sum(axis=1), obs["n_perturbations"].to_numpy())


def test_schraivogel20(data_dir):
    adata = load_dataset("schraivogel20", data_dir=data_dir, download=False)
    assert adata.shape == (21977 - 662, 72)
    pert = _conditions(adata, "perturbation")
    assert "unassigned" not in set(pert) and "unassigned" not in adata.obs["perturbation"].cat.categories
    assert (pert == "control").sum() == 8118
    singles = {c for c in pert.unique() if c != "control" and "+" not in c}
    doubles = {c for c in pert.unique() if c.count("+") == 1}
    assert len(singles) == 14 and "HS2" in singles and len(doubles) == 89
    assert pert[pert.str.count(r"\+") == 1].size == 731
    assert pert[pert.str.count(r"\+") >= 2].size == 73
    d = adata.uns["pdae_dataset"]
    assert (d["perturbation_key"], d["control_label"], d["values"]) == ("perturbation", "control", "counts")
    _no_unused_categories(adata)
    reg = _setup(adata)
    assert reg.x_kind == "counts" and reg.n_perturbations == 14

    everything = load_dataset("schraivogel20", data_dir=data_dir, download=False, keep_unassigned=True)
    assert everything.n_obs == 21977
    assert (_conditions(everything, "perturbation") == "unassigned").sum() == 662


def test_schraivogel_guide_rule_reproduces_converted_labels(data_dir):
    """The builder's rule (guides -> targets -> label) gives the converted file's labels for every cell."""
    adata = ad.read_h5ad(data_dir / "schraivogel2020_tapseq.h5ad")
    got = [schraivogel._crispat_condition([g for g in s.split(";") if g]) for s in adata.obs["gRNAs"].astype(str)]
    assert [p for p, _ in got] == list(adata.obs["perturbation"].astype(str))
    assert [n for _, n in got] == list(adata.obs["n_targets"])


def test_papalexi21(data_dir):
    adata = load_dataset("papalexi21", data_dir=data_dir, download=False)
    assert adata.shape == (20729, 299)
    pert = _conditions(adata, "perturbation")
    assert pert.nunique() == 26 and (pert == "control").sum() == 2386 and not any("+" in c for c in pert)
    assert sorted(adata.obs["bio_rep"].cat.categories) == ["rep_1", "rep_2", "rep_3"]
    d = adata.uns["pdae_dataset"]
    assert (d["perturbation_key"], d["control_label"], d["covariate_key"]) == ("perturbation", "control", "bio_rep")
    reg = _setup(adata)
    assert reg.x_kind == "counts" and reg.n_perturbations == 25 and reg.covariate_key == "bio_rep"


def test_papalexi_converter_reproduces_converted_file(data_dir):
    """papalexi21_from_r_objects on the converted file's own matrices gives back its labels."""
    a = ad.read_h5ad(data_dir / "papalexi2021_eccite.h5ad")
    guides = [str(g) for g in a.uns["grna_names"]]
    seen = a.obs.groupby("grna_top", observed=True)["target"].first().astype(str).to_dict()
    gtdf = pd.DataFrame({"grna_id": guides, "grna_target": [seen.get(g, "CD274") for g in guides]})
    covs = a.obs[["bio_rep"]].reset_index(drop=True)
    b = papalexi21_from_r_objects(
        sp.csc_matrix(a.layers["counts"].T), a.obsm["grna_counts"].T.tocsc(), gtdf, covs,
        gene_names=list(a.var_names), grna_names=guides, cell_names=list(a.obs_names),
    )
    assert b.shape == a.shape and list(b.obs_names) == list(a.obs_names)
    for col in ("grna_top", "bio_rep", "target", "perturbation"):
        assert list(b.obs[col].astype(str)) == list(a.obs[col].astype(str)), col
    for col in ("grna_top_umi", "grna_total_umi", "grna_top_frac"):
        np.testing.assert_allclose(b.obs[col].to_numpy(), a.obs[col].to_numpy(), err_msg=col)
    assert (b.X != a.X).nnz == 0


def test_loaded_dataset_round_trips_through_h5ad(data_dir, tmp_path):
    adata = load_dataset("norman19_devel", data_dir=data_dir, download=False)
    out = tmp_path / "n.h5ad"
    adata.write_h5ad(out)
    back = ad.read_h5ad(out)
    assert back.uns["pdae_dataset"]["covariate_key"] is None
    assert back.uns["pdae_dataset"]["perturbation_key"] == "condition"


def test_synthetic():
    adata = load_dataset("synthetic", n_perturbations=3, n_genes=12, n_doubles=2, cells_per_condition=10,
                         latent_dim=2, hidden=8)
    assert adata.shape == ((1 + 3 + 2) * 10, 12)
    assert adata.uns["pdae_dataset"]["name"] == "synthetic"
    assert "n_perturbations=3" in adata.uns["pdae_dataset"]["source"]
    reg = _setup(adata)
    assert reg.perturbations == ["P1", "P2", "P3"]


# ---------------------------------------------------------------------------------------
# Schraivogel originals (crispat example-data format)

_GENES = ["GATA1", "MYC", "HBE1"]
_G_A, _G_B = "CROPseq_dCas9_DS_GATA1-A", "CROPseq_dCas9_DS_GATA1-B"
_G_MYC = "CROPseq_dCas9_DS_MYC-D"
_G_CCNE2 = "CROPseq_dCas9_DS_CCNE2_+_95907328.23-P1P2"
_G_NT1, _G_NT2 = "CROPseq_dCas9_DS_non-targeting_00001", "CROPseq_dCas9_DS_non-targeting_00002"


def _write_crispat_files(folder: Path, with_grna_h5ad: bool = True) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cells = ["TAP1-AAA", "TAP1-CCC", "TAP2-GGG", "TAP2-TTT", "TAP2-ACG", "TAP1-GTA"]
    counts = np.arange(len(cells) * len(_GENES)).reshape(len(cells), len(_GENES)) % 7
    expr = pd.DataFrame(counts, index=pd.Index(cells, name="gene"), columns=_GENES)  # crispat's header: "gene"
    paths = {"expr": folder / schraivogel.CRISPAT_EXPRESSION.filename,
             "asg": folder / schraivogel.CRISPAT_ASSIGNMENTS.filename,
             "grna": folder / schraivogel.CRISPAT_GRNA_COUNTS.filename}
    expr.to_csv(paths["expr"])
    rows = [  # sorted by gRNA like crispat's output; TAP9-XXX is not in the expression table
        ("TAP2-GGG", _G_CCNE2, 12.0), ("TAP1-AAA", _G_A, 40.0), ("TAP1-CCC", _G_A, 9.0),
        ("TAP1-CCC", _G_B, 8.0), ("TAP2-GGG", _G_MYC, 30.0), ("TAP1-CCC", _G_MYC, 7.0),
        ("TAP2-TTT", _G_NT1, 22.0), ("TAP2-TTT", _G_NT2, 6.0), ("TAP2-ACG", _G_NT2, 5.0),
        ("TAP2-ACG", _G_MYC, 15.0), ("TAP9-XXX", _G_MYC, 5.0),
    ]
    pd.DataFrame(rows, columns=["cell", "gRNA", "UMI_counts"]).to_csv(paths["asg"], index=False)
    if with_grna_h5ad:
        guides = sorted([_G_A, _G_B, _G_MYC, _G_CCNE2, _G_NT1, _G_NT2])
        grna_cells = cells[::-1] + ["TAP9-XXX"]  # other order, one extra cell, like any separate table
        G = np.zeros((len(grna_cells), len(guides)), dtype=np.float32)
        for cell, guide, umi in rows:
            G[grna_cells.index(cell), guides.index(guide)] = umi
        g = ad.AnnData(X=sp.csr_matrix(G), obs=pd.DataFrame(index=grna_cells), var=pd.DataFrame(index=guides))
        g.obs["batch"] = 1  # crispat's create_anndata_from_csv
        g.write_h5ad(paths["grna"])
    return paths


def test_build_schraivogel20_from_crispat_files(tmp_path):
    p = _write_crispat_files(tmp_path)
    adata = build_schraivogel20(p["expr"], p["asg"], p["grna"])
    assert list(adata.obs_names) == ["TAP1-AAA", "TAP1-CCC", "TAP2-GGG", "TAP2-TTT", "TAP2-ACG", "TAP1-GTA"]
    assert list(adata.var_names) == _GENES
    obs = adata.obs
    assert list(obs["perturbation"].astype(str)) == ["GATA1", "GATA1+MYC", "CCNE2+MYC", "control", "MYC",
                                                     "unassigned"]
    assert list(obs["n_targets"]) == [1, 2, 2, 0, 1, 0]
    assert obs.loc["TAP1-CCC", "gRNAs"] == ";".join(sorted([_G_A, _G_B, _G_MYC]))
    assert obs.loc["TAP1-GTA", "gRNAs"] == ""
    assert list(obs["batch"].astype(str)) == ["1"] * 6
    expr = pd.read_csv(p["expr"], index_col=0)
    np.testing.assert_array_equal(adata.X.toarray(), expr.to_numpy())
    guides = list(adata.uns["grna_names"])
    G = adata.obsm["grna_counts"].toarray()
    assert G[0, guides.index(_G_A)] == 40 and G[2, guides.index(_G_CCNE2)] == 12 and G[5].sum() == 0
    assert "1 assigned cells absent" in adata.uns["source"]

    without = build_schraivogel20(p["expr"], p["asg"])
    assert "grna_counts" not in without.obsm and "batch" not in without.obs.columns
    assert list(without.obs["perturbation"]) == list(obs["perturbation"])


def test_build_schraivogel20_rejects_malformed_files(tmp_path):
    p = _write_crispat_files(tmp_path, with_grna_h5ad=False)
    bad = tmp_path / "bad_asg.csv"
    pd.DataFrame({"barcode": ["TAP1-AAA"], "guide": [_G_A]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"bad_asg\.csv lacks the column\(s\) \['cell', 'gRNA'\]"):
        build_schraivogel20(p["expr"], bad)
    text = tmp_path / "text.csv"
    text.write_text("gene,GATA1\nTAP1-AAA,lots\n")
    with pytest.raises(DataError, match="not numeric"):
        build_schraivogel20(text, p["asg"])
    with pytest.raises(DataError, match="not found"):
        build_schraivogel20(tmp_path / "absent.csv", p["asg"])


def test_schraivogel20_built_from_originals_when_converted_file_is_absent(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    p = _write_crispat_files(remote)
    for attr, key in (("CRISPAT_EXPRESSION", "expr"), ("CRISPAT_ASSIGNMENTS", "asg"), ("CRISPAT_GRNA_COUNTS", "grna")):
        rf = getattr(schraivogel, attr)
        monkeypatch.setattr(schraivogel, attr, RemoteFile(rf.filename, p[key].as_uri(), None))
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailableError, match="schraivogel2020_tapseq.h5ad"):
        load_dataset("schraivogel20", data_dir=cache, download=False)
    adata = load_dataset("schraivogel20", data_dir=cache)  # downloads the three originals and builds
    assert sorted(f.name for f in cache.iterdir()) == sorted(f.name for f in p.values())
    assert "unassigned" not in set(adata.obs["perturbation"].astype(str))
    assert adata.n_obs == 5 and "built from crispat" in adata.uns["pdae_dataset"]["source"]
    reg = _setup(adata)
    assert reg.perturbations == ["CCNE2", "GATA1", "MYC"] and reg.x_kind == "counts"
    # now offline: the cached originals are enough
    again = load_dataset("schraivogel20", data_dir=cache, download=False, keep_unassigned=True)
    assert again.n_obs == 6


# ---------------------------------------------------------------------------------------
# Papalexi originals (sceptredata lowmoi_example_data.rda)


def _dgc_slots(dense: np.ndarray, rownames: list[str]) -> SimpleNamespace:
    """What the ``rdata`` reader returns for an R dgCMatrix without a constructor."""
    m = sp.csc_matrix(dense)
    return SimpleNamespace(
        i=m.indices.astype(np.int32), p=m.indptr.astype(np.int32), Dim=np.array(dense.shape, dtype=np.int32),
        Dimnames=[np.array(rownames), None], x=m.data.astype(np.float64), factors=[],
        **{"class": np.array(["dgCMatrix"])},
    )


def _lowmoi_parts():
    resp = np.array([[2, 2, 3, 5, 0, 1], [0, 5, 6, 4, 1, 1], [3, 1, 0, 1, 2, 0]], dtype=float)  # genes x cells
    grna = np.array([[9, 0, 0, 1, 5, 0], [0, 7, 0, 0, 0, 0], [0, 0, 8, 0, 1, 0], [1, 0, 1, 6, 0, 0]], dtype=float)
    gtdf = pd.DataFrame({"grna_id": ["AAg1", "AAg2", "BBg1", "NTg1"],
                         "grna_target": pd.Categorical(["AA", "AA", "BB", "non-targeting"])},
                        index=["1", "2", "3", "4"])
    covs = pd.DataFrame({"bio_rep": pd.Categorical(["rep_1", "rep_1", "rep_2", "rep_2", "rep_3", "rep_3"])},
                        index=[str(i) for i in range(1, 7)])
    return resp, grna, gtdf, covs


def test_papalexi21_from_rdata_objects():
    resp, grna, gtdf, covs = _lowmoi_parts()
    adata = papalexi21_from_r_objects(
        _dgc_slots(resp, ["G1", "G2", "G3"]), _dgc_slots(grna, ["AAg1", "AAg2", "BBg1", "NTg1"]), gtdf, covs,
    )
    assert adata.shape == (6, 3) and list(adata.var_names) == ["G1", "G2", "G3"]
    assert list(adata.obs_names) == [f"cell{i}" for i in range(6)]
    np.testing.assert_array_equal(adata.X.toarray(), resp.T)
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), resp.T)
    np.testing.assert_array_equal(adata.obsm["grna_counts"].toarray(), grna.T)
    obs = adata.obs
    assert list(obs["grna_top"].astype(str)) == ["AAg1", "AAg2", "BBg1", "NTg1", "AAg1", ""]
    assert list(obs["perturbation"].astype(str)) == ["AA", "AA", "BB", "control", "AA", "unassigned"]
    assert list(obs["target"].astype(str)) == ["AA", "AA", "BB", "non-targeting", "AA", ""]
    np.testing.assert_allclose(obs["grna_top_frac"], [0.9, 1.0, 8 / 9, 6 / 7, 5 / 6, 0.0])
    assert list(obs["bio_rep"].astype(str)) == ["rep_1", "rep_1", "rep_2", "rep_2", "rep_3", "rep_3"]

    # pandas frames (names from index) and the reader's own sparse wrapper give the same result
    wrapped = rda._rsparse_constructor("C")(None, vars(_dgc_slots(resp, ["G1", "G2", "G3"])))
    frame = pd.DataFrame(grna, index=["AAg1", "AAg2", "BBg1", "NTg1"], columns=[f"c{i}" for i in range(6)])
    other = papalexi21_from_r_objects(wrapped, frame, gtdf, covs, cell_names=[f"c{i}" for i in range(6)])
    assert list(other.obs["perturbation"]) == list(obs["perturbation"])
    assert list(other.obs_names) == [f"c{i}" for i in range(6)]


def test_papalexi21_from_r_objects_rejects_inconsistent_parts():
    resp, grna, gtdf, covs = _lowmoi_parts()
    with pytest.raises(DataError, match="not in grna_target_data_frame"):
        papalexi21_from_r_objects(resp, grna, gtdf.iloc[:3], covs,
                                  gene_names=["G1", "G2", "G3"], grna_names=["AAg1", "AAg2", "BBg1", "NTg1"])
    with pytest.raises(DataError, match="extra_covariates has 5 rows"):
        papalexi21_from_r_objects(resp, grna, gtdf, covs.iloc[:5],
                                  gene_names=["G1", "G2", "G3"], grna_names=["AAg1", "AAg2", "BBg1", "NTg1"])
    with pytest.raises(DataError, match="grna_names="):
        papalexi21_from_r_objects(resp, grna, gtdf, covs)


def test_rda_reader_missing_gives_install_hint(tmp_path, monkeypatch):
    rda_file = tmp_path / papalexi.SCEPTREDATA_LOWMOI.filename
    rda_file.write_bytes(b"RDX3\n")
    monkeypatch.setitem(sys.modules, "rdata", None)  # makes `import rdata` fail
    with pytest.raises(DataError, match=r"pip install rdata") as e:
        read_lowmoi_rda(rda_file)
    assert str(rda_file) in str(e.value) and "pyreadr" in str(e.value)
    with pytest.raises(DataError, match=r"pip install rdata"):
        load_dataset("papalexi21", data_dir=tmp_path, download=False)
    with pytest.raises(DataError, match="not found"):
        read_lowmoi_rda(tmp_path / "absent.rda")


def test_papalexi21_offline_without_any_file(tmp_path):
    with pytest.raises(DatasetUnavailableError) as e:
        load_dataset("papalexi21", data_dir=tmp_path, download=False)
    assert "papalexi2021_eccite.h5ad" in str(e.value) and papalexi.SCEPTREDATA_LOWMOI.url in str(e.value)


# ---------------------------------------------------------------------------------------
# full Norman 2019: scPerturb and GEARS formats


def _counts(n_cells: int, n_genes: int, seed: int = 0) -> sp.csr_matrix:
    return sp.csr_matrix(np.random.default_rng(seed).poisson(2.0, (n_cells, n_genes)).astype(np.float32))


def _write_scperturb(path: Path) -> None:
    labels = (["control"] * 4 + ["KLF1"] * 3 + ["MAP2K6"] * 3 + ["KLF1_MAP2K6"] * 3 + ["SET_KLF1"] * 2
              + ["KLF1_SET"] + [None])
    n = len(labels)
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(labels, categories=sorted({x for x in labels if x}) + ["UNUSED"]),
            "guide_id": pd.Categorical([f"g{i}" for i in range(n)]),
            "nperts": [0 if x == "control" else (x.count("_") + 1 if x else 0) for x in labels],
            "cell_line": pd.Categorical(["K562"] * n),
            "perturbation_type": pd.Categorical(["CRISPRa"] * n),
        },
        index=[f"AAAC{i}-1" for i in range(n)],
    )
    var = pd.DataFrame({"ensemble_id": [f"ENSG0000{i}" for i in range(5)]},
                       index=["KLF1", "MAP2K6", "SET", "CEBPE", "HBG1"])
    ad.AnnData(X=_counts(n, 5), obs=obs, var=var).write_h5ad(path)


def test_norman19_full_from_scperturb_file(tmp_path):
    _write_scperturb(tmp_path / "NormanWeissman2019_filtered.h5ad")
    adata = load_dataset("norman19_full", data_dir=tmp_path, download=False)
    assert adata.n_obs == 16  # the cell with no label is dropped
    assert "g16" not in adata.obs["guide_id"].cat.categories  # its category too
    conds = _conditions(adata, "condition")
    # scPerturb's order kept; a pair seen in both orders is merged under its sorted name
    assert conds.value_counts().to_dict() == {"control": 4, "KLF1": 3, "MAP2K6": 3, "KLF1+MAP2K6": 3, "KLF1+SET": 3}
    assert list(adata.obs["n_perturbations"][conds == "KLF1+MAP2K6"]) == [2, 2, 2]
    d = adata.uns["pdae_dataset"]
    assert (d["name"], d["values"], d["control_label"]) == ("norman19_full", "counts", "control")
    assert "zenodo" in d["source"]
    _no_unused_categories(adata)
    reg = _setup(adata)
    assert reg.perturbations == ["KLF1", "MAP2K6", "SET"] and reg.x_kind == "counts"


def _gears_adata() -> ad.AnnData:
    conds = ["ctrl"] * 4 + ["KLF1+ctrl"] * 3 + ["ctrl+MAP2K6"] * 2 + ["KLF1+MAP2K6"] * 3
    n = len(conds)
    obs = pd.DataFrame({
        "condition": pd.Categorical(conds), "cell_type": pd.Categorical(["K562"] * n),
        "dose_val": ["1" if c == "ctrl" else "1+1" for c in conds],
        "control": [int(c == "ctrl") for c in conds],
        "condition_name": [f"K562_{c}_1+1" for c in conds],
    }, index=[f"cell{i}" for i in range(n)])
    var = pd.DataFrame({"gene_name": ["KLF1", "MAP2K6", "HBG1", "HBG1"]},
                       index=[f"ENSG0000{i}" for i in range(4)])
    X = _counts(n, 4, seed=1)
    X.data = np.log1p(X.data)
    return ad.AnnData(X=X, obs=obs, var=var)


def test_norman19_full_from_gears_file(tmp_path):
    (tmp_path / "norman").mkdir()
    _gears_adata().write_h5ad(tmp_path / "norman" / "perturb_processed.h5ad")
    adata = load_dataset("norman19_full", data_dir=tmp_path, download=False)
    conds = _conditions(adata, "condition")
    assert conds.value_counts().to_dict() == {"control": 4, "KLF1": 3, "MAP2K6": 2, "KLF1+MAP2K6": 3}
    assert set(adata.obs["condition_gears"].astype(str)) == {"ctrl", "KLF1+ctrl", "ctrl+MAP2K6", "KLF1+MAP2K6"}
    assert list(adata.var_names) == ["KLF1", "MAP2K6", "HBG1", "HBG1-1"]
    assert list(adata.var["gene_id"]) == [f"ENSG0000{i}" for i in range(4)]
    assert adata.uns["pdae_dataset"]["values"] == "log1p"
    reg = _setup(adata)
    assert reg.perturbations == ["KLF1", "MAP2K6"] and reg.x_kind == "log1p"


def test_norman19_full_downloads_and_unpacks_gears_zip(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    remote.mkdir()
    _gears_adata().write_h5ad(remote / "perturb_processed.h5ad")
    archive = remote / "norman.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(remote / "perturb_processed.h5ad", "norman/perturb_processed.h5ad")
        zf.writestr("norman/go.csv", "source,target\n")
    monkeypatch.setattr(norman_full, "NORMAN_GEARS_ZIP", RemoteFile("norman.zip", archive.as_uri(), None))
    cache = tmp_path / "cache"
    adata = load_dataset("norman19_full", data_dir=cache, source="gears")
    assert (cache / "norman" / "perturb_processed.h5ad").is_file()
    assert sorted(p.name for p in (cache / "norman").iterdir()) == ["perturb_processed.h5ad"]
    assert set(_conditions(adata, "condition")) == {"control", "KLF1", "MAP2K6", "KLF1+MAP2K6"}


def test_norman19_full_missing_or_bad_option(tmp_path):
    with pytest.raises(DatasetUnavailableError) as e:
        load_dataset("norman19_full", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert "NormanWeissman2019_filtered.h5ad" in msg and "perturb_processed.h5ad" in msg and "zenodo" in msg
    with pytest.raises(DataError, match="source must be"):
        load_dataset("norman19_full", data_dir=tmp_path, source="geo")
    bad = _gears_adata()
    bad.obs = bad.obs.drop(columns=["condition"])
    with pytest.raises(DataError, match="no obs\\['condition'\\]"):
        norman19_from_gears(bad)
