"""kang18 (Kang et al. 2018 PBMC, control vs IFN-beta, cell types as contexts): pertpy's and
scGen's file layouts rebuilt in miniature in tmp_path, offline errors, bad files."""

from __future__ import annotations

import urllib.error

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pdae_core.data.datasets import download, kang, kang18_from_adata, list_datasets, load_dataset
from pdae_core.data.defaults import dataset_defaults
from pdae_core.data.registry import setup_anndata
from pdae_core.errors import DataError, DatasetUnavailableError

PERTPY_TYPES = ["CD4 T cells", "CD14+ Monocytes", "B cells"]
SCGEN_TYPES = ["CD4T", "CD14+Mono", "B"]
N_PER_GROUP = 40  # cells per (cell type, condition): 240 cells per file
# reading pertpy's miniature (a duplicated gene symbol, as in real files) warns; the loader fixes it
pytestmark = pytest.mark.filterwarnings("ignore:Variable names are not unique:UserWarning")


def _obs_grid(types: list[str], conds: tuple[str, str]) -> tuple[list[str], list[str]]:
    ct, cond = [], []
    for t in types:
        for c in conds:
            ct += [t] * N_PER_GROUP
            cond += [c] * N_PER_GROUP
    return ct, cond


def _counts(n: int, g: int, seed: int) -> sp.csr_matrix:
    return sp.csr_matrix(np.random.default_rng(seed).poisson(1.5, (n, g)).astype(np.float32))


def _pertpy_adata() -> ad.AnnData:
    """pertpy's layout: label ctrl/stim, cell_type, replicate; raw counts; symbols plus var['name']."""
    ct, label = _obs_grid(PERTPY_TYPES, ("ctrl", "stim"))
    n = len(ct)
    obs = pd.DataFrame({
        "nCount_RNA": np.full(n, 100.0), "tsne1": np.zeros(n), "label": pd.Categorical(label),
        "cluster": np.ones(n, dtype=np.int64), "cell_type": pd.Categorical(ct),
        "replicate": pd.Categorical([f"patient_{1015 + i % 4}" for i in range(n)]),
    }, index=[f"AAAC{i}-1" for i in range(n)])
    genes = ["ISG15", "IFI6", "CD14", "LYZ", "MS4A1", "CD3E", "HLA-A", "HLA-A"]  # one duplicated symbol
    var = pd.DataFrame({"name": genes}, index=genes)
    with pytest.warns(UserWarning, match="not unique"):
        adata = ad.AnnData(X=_counts(n, len(genes), 0), obs=obs, var=var)
    return adata


def _scgen_adata() -> ad.AnnData:
    """scGen's layout: condition control/stimulated, cell_type; log-normalised (dense)."""
    ct, cond = _obs_grid(SCGEN_TYPES, ("control", "stimulated"))
    n = len(ct)
    obs = pd.DataFrame({
        "condition": pd.Categorical(cond), "n_counts": np.full(n, 1e3), "n_genes": np.full(n, 50),
        "mt_frac": np.zeros(n), "cell_type": pd.Categorical(ct),
    }, index=[f"cell{i}-{c}" for i, c in enumerate(cond)])
    genes = ["ISG15", "IFI6", "CD14", "LYZ", "MS4A1", "CD3E"]
    X = np.log1p(_counts(n, len(genes), 1).toarray())
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame({"gene_symbol": genes}, index=genes))


def _no_network(monkeypatch) -> None:
    def refuse(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download, "_urlopen", refuse)


def _check_common(adata: ad.AnnData, types: list[str]) -> None:
    d = adata.uns["pdae_dataset"]
    assert (d["name"], d["perturbation_key"], d["control_label"], d["covariate_key"]) == (
        "kang18", "perturbation", "control", "cell_type")
    pert = adata.obs["perturbation"]
    assert isinstance(pert.dtype, pd.CategoricalDtype)
    assert pert.astype(str).value_counts().to_dict() == {"control": 3 * N_PER_GROUP, "IFNB": 3 * N_PER_GROUP}
    cell_type = adata.obs["cell_type"]
    assert isinstance(cell_type.dtype, pd.CategoricalDtype)
    assert sorted(cell_type.cat.categories) == sorted(types)  # '+' kept verbatim
    assert dataset_defaults(adata) == {"perturbation_key": "perturbation", "control_label": "control",
                                       "covariate_key": "cell_type"}
    reg = setup_anndata(adata, **dataset_defaults(adata))
    # the '+' of a cell-type name is never read as a combination: IFNB is the only perturbation
    assert reg.perturbations == ["IFNB"] and reg.covariate_key == "cell_type"
    assert reg.x_kind == d["values"]


def test_kang18_is_in_the_catalogue():
    desc = list_datasets()["kang18"]
    assert "Kang" in desc and "24,673" in desc and "\n" not in desc


def test_kang18_pertpy_layout(tmp_path, monkeypatch):
    _pertpy_adata().write_h5ad(tmp_path / "kang_2018.h5ad")
    _no_network(monkeypatch)  # a present file is never downloaded again
    adata = load_dataset("kang18", data_dir=tmp_path)
    _check_common(adata, PERTPY_TYPES)
    d = adata.uns["pdae_dataset"]
    assert (d["values"], d["layout"], d["original_key"], d["file"]) == ("counts", "pertpy", "label", "kang_2018.h5ad")
    assert "figshare.com/ndownloader/files/34464122" in d["source"]
    # the original column and the patients are kept; stim -> IFNB, ctrl -> control
    assert set(adata.obs["label"].astype(str)) == {"ctrl", "stim"}
    assert (adata.obs["label"].astype(str).map({"ctrl": "control", "stim": "IFNB"})
            == adata.obs["perturbation"].astype(str)).all()
    assert adata.obs["replicate"].nunique() == 4
    assert adata.var_names.is_unique and list(adata.var_names[-2:]) == ["HLA-A", "HLA-A-1"]
    assert "pdae_preprocessing" not in adata.uns


def test_kang18_scgen_layout(tmp_path):
    _scgen_adata().write_h5ad(tmp_path / "train_kang.h5ad")
    adata = load_dataset("kang18", data_dir=tmp_path, download=False)  # auto finds scGen's file
    _check_common(adata, SCGEN_TYPES)
    d = adata.uns["pdae_dataset"]
    assert (d["values"], d["layout"], d["original_key"], d["file"]) == ("log1p", "scgen", "condition", "train_kang.h5ad")
    assert "drive.google.com" in d["source"]
    assert set(adata.obs["condition"].astype(str)) == {"control", "stimulated"}
    assert adata.uns["pdae_preprocessing"]["input"] == "log1p"
    # source= picks a file; asking for the absent one is an offline error naming it
    assert load_dataset("kang18", data_dir=tmp_path, download=False, source="scgen").n_obs == adata.n_obs
    with pytest.raises(DatasetUnavailableError, match="kang_2018.h5ad"):
        load_dataset("kang18", data_dir=tmp_path, download=False, source="pertpy")


def test_kang18_prefers_pertpy_and_reads_aliases(tmp_path):
    _scgen_adata().write_h5ad(tmp_path / "kang_count.h5ad")
    assert load_dataset("kang18", data_dir=tmp_path, download=False).uns["pdae_dataset"]["layout"] == "scgen"
    _pertpy_adata().write_h5ad(tmp_path / "kang_counts_25k.h5ad")
    d = load_dataset("kang18", data_dir=tmp_path, download=False).uns["pdae_dataset"]
    assert (d["layout"], d["file"]) == ("pertpy", "kang_counts_25k.h5ad")
    assert "kang_counts_25k.h5ad" in d["source"] and "34464122" in d["source"]


def test_kang18_drops_cells_without_labels(tmp_path):
    a = _pertpy_adata()
    a.obs["label"] = a.obs["label"].cat.add_categories(["UNUSED"])
    a.obs.iloc[0, a.obs.columns.get_loc("label")] = np.nan
    a.obs.iloc[1, a.obs.columns.get_loc("cell_type")] = np.nan
    a.write_h5ad(tmp_path / "kang_2018.h5ad")
    adata = load_dataset("kang18", data_dir=tmp_path, download=False)
    assert adata.n_obs == a.n_obs - 2 and adata.uns["pdae_dataset"]["n_dropped"] == 2
    assert "UNUSED" not in adata.obs["label"].cat.categories


def test_kang18_missing_file_offline_is_one_sentence(tmp_path, monkeypatch):
    folder = tmp_path / "empty"
    with pytest.raises(DatasetUnavailableError) as e:
        load_dataset("kang18", data_dir=folder, download=False)
    msg = str(e.value)
    assert "kang_2018.h5ad" in msg and "train_kang.h5ad" in msg and str(folder) in msg
    assert ". " not in msg and msg.endswith(".")

    _no_network(monkeypatch)
    with pytest.raises(DatasetUnavailableError) as e:
        load_dataset("kang18", data_dir=folder)
    msg = str(e.value)
    assert "kang_2018.h5ad" in msg and str(folder) in msg and "no network" in msg
    assert ". " not in msg and msg.endswith(".")
    assert not folder.exists() or list(folder.iterdir()) == []  # nothing half-written left behind


def test_kang18_download_that_is_not_h5ad_is_discarded(tmp_path, monkeypatch):
    page = tmp_path / "remote" / "page.html"
    page.parent.mkdir()
    page.write_text("<html><body>Please verify you are a human</body></html>")
    monkeypatch.setattr(kang, "_REMOTE", {**kang._REMOTE, "pertpy": download.RemoteFile(
        "kang_2018.h5ad", page.as_uri(), None)})
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailableError, match="did not send an .h5ad file") as e:
        load_dataset("kang18", data_dir=cache)
    assert str(cache) in str(e.value)
    assert list(cache.iterdir()) == []


def test_kang18_downloads_a_missing_file(tmp_path, monkeypatch):
    remote = tmp_path / "remote" / "34464122"
    remote.parent.mkdir()
    _pertpy_adata().write_h5ad(remote)
    monkeypatch.setattr(kang, "_REMOTE", {**kang._REMOTE, "pertpy": download.RemoteFile(
        "kang_2018.h5ad", remote.as_uri(), None)})
    cache = tmp_path / "cache"
    adata = load_dataset("kang18", data_dir=cache)
    assert (cache / "kang_2018.h5ad").is_file() and adata.uns["pdae_dataset"]["layout"] == "pertpy"


def test_kang18_bad_files_name_the_file_and_column(tmp_path):
    path = tmp_path / "kang_2018.h5ad"
    path.write_text("<html>not a file</html>")
    with pytest.raises(DataError, match="not an HDF5") as e:
        load_dataset("kang18", data_dir=tmp_path, download=False)
    assert str(path) in str(e.value) and path.exists()  # a user's file is never deleted

    a = _pertpy_adata()
    a.obs = a.obs.drop(columns=["label"])
    a.write_h5ad(path)
    with pytest.raises(DataError) as e:
        load_dataset("kang18", data_dir=tmp_path, download=False)
    assert str(path) in str(e.value) and "'label'" in str(e.value) and "'condition'" in str(e.value)

    b = _scgen_adata()
    b.obs = b.obs.drop(columns=["cell_type"])
    path.unlink()
    b.write_h5ad(tmp_path / "train_kang.h5ad")
    with pytest.raises(DataError, match="no obs\\['cell_type'\\]") as e:
        load_dataset("kang18", data_dir=tmp_path, download=False)
    assert "train_kang.h5ad" in str(e.value)

    c = _scgen_adata()
    c.obs["condition"] = c.obs["condition"].astype(str).replace({"stimulated": "LPS"})
    with pytest.raises(DataError, match="'LPS'"):
        kang18_from_adata(c, what="x.h5ad")
    c.obs["condition"] = "control"
    with pytest.raises(DataError, match="no stimulated cells"):
        kang18_from_adata(c, what="x.h5ad")
    with pytest.raises(DataError, match="source must be"):
        load_dataset("kang18", data_dir=tmp_path, source="figshare")


def test_kang18_loader_called_directly(tmp_path, monkeypatch):
    _scgen_adata().write_h5ad(tmp_path / "train_kang.h5ad")
    monkeypatch.setenv("PDAE_DATA_DIR", str(tmp_path))
    adata = kang.load_kang18()  # data_dir=None: the data directory from the environment
    assert adata.uns["pdae_dataset"]["name"] == "kang18"
    assert adata.uns["pdae_dataset"]["file"] == "train_kang.h5ad"
