"""The one reader of a dataset's recorded set-up (pdae_core.data.defaults), the loaders
that write it, and the dashboard's default set-up built on it."""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pdae_core.data.datasets import load_dataset
from pdae_core.data.defaults import DATASET_KEY, dataset_defaults, dataset_info, holds_profiles

ROOT = Path(__file__).resolve().parents[1]


def _adata(**obs: list) -> ad.AnnData:
    n = len(next(iter(obs.values())))
    return ad.AnnData(X=np.ones((n, 3), dtype=np.float32),
                      obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(n)]))


def _cells() -> ad.AnnData:
    return _adata(guide=["NT", "A", "B", "A+B"], line=["x", "y", "x", "y"], dose=["1", "1", "1", "1"])


def test_dataset_info_absent_or_not_a_mapping_is_empty():
    a = _cells()
    assert dataset_info(a) == {}
    a.uns[DATASET_KEY] = "not a mapping"
    assert dataset_info(a) == {}
    a.uns[DATASET_KEY] = {"name": "custom", "values": "counts"}
    info = dataset_info(a)
    assert info == {"name": "custom", "values": "counts"}
    info["name"] = "changed"  # a copy: the AnnData keeps its record
    assert a.uns[DATASET_KEY]["name"] == "custom"


def test_dataset_defaults_keeps_recorded_fields_whose_columns_exist():
    a = _cells()
    assert dataset_defaults(a) == {}
    a.uns[DATASET_KEY] = {
        "name": "custom", "perturbation_key": "guide", "control_label": "NT", "covariate_key": "line",
        "dose_key": "dose", "separator": "+", "values": "counts", "source": "here",
    }
    assert dataset_defaults(a) == {
        "perturbation_key": "guide", "control_label": "NT", "covariate_key": "line", "dose_key": "dose",
        "separator": "+",
    }


def test_dataset_defaults_drops_empty_and_absent_columns():
    a = _cells()
    a.uns[DATASET_KEY] = {"perturbation_key": "condition", "control_label": "", "covariate_key": None,
                          "dose_key": "dose", "separator": None}
    # 'condition' is not a column of obs; an empty control label and None are left out
    assert dataset_defaults(a) == {"dose_key": "dose"}
    a.uns[DATASET_KEY] = {"perturbation_key": "guide", "control_label": 0, "covariate_key": "cell_type"}
    d = dataset_defaults(a)
    assert d == {"perturbation_key": "guide", "control_label": "0"}
    assert all(isinstance(v, str) for v in d.values())


def test_holds_profiles_only_for_log_fold_changes():
    a = _cells()
    assert not holds_profiles(a)
    for values, expected in (("counts", False), ("log1p", False), ("lfc_vs_control", True)):
        a.uns[DATASET_KEY] = {"values": values}
        assert holds_profiles(a) is expected


def test_loaders_record_their_set_up_under_the_dataset_key(tmp_path):
    adata = load_dataset("synthetic", n_perturbations=2, n_genes=6, n_doubles=1, cells_per_condition=5,
                         latent_dim=2, hidden=4)
    assert DATASET_KEY in adata.uns
    assert dataset_defaults(adata) == {"perturbation_key": "condition", "control_label": "control"}
    assert dataset_info(adata)["values"] == "synthetic" and not holds_profiles(adata)
    # the record survives a round trip through .h5ad (covariate_key None included)
    adata.write_h5ad(tmp_path / "s.h5ad")
    back = ad.read_h5ad(tmp_path / "s.h5ad")
    assert dataset_defaults(back) == {"perturbation_key": "condition", "control_label": "control"}


def test_real_datasets_defaults(data_dir):
    mc = load_dataset("mcfaline23_devel", data_dir=data_dir, download=False)
    assert dataset_defaults(mc) == {"perturbation_key": "condition", "control_label": "control",
                                    "covariate_key": "cell_type"}
    pb = load_dataset("norman19_pseudobulk", data_dir=data_dir, download=False)
    assert holds_profiles(pb)


@pytest.fixture(scope="module")
def page_common():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from pages import common

    return common


def test_dashboard_default_setup_reads_the_record(page_common):
    a = _cells()
    a.uns[DATASET_KEY] = {"perturbation_key": "guide", "control_label": "NT", "covariate_key": "cell_type"}
    # the recorded column and label; a recorded covariate that obs lacks is dropped
    assert page_common.default_setup(a) == {"perturbation_key": "guide", "control_label": "NT",
                                            "covariate_key": None}
    a.uns[DATASET_KEY] = {"perturbation_key": "guide", "covariate_key": "line"}
    assert page_common.default_setup(a) == {"perturbation_key": "guide", "control_label": None,
                                            "covariate_key": "line"}


def test_dashboard_default_setup_guesses_without_a_usable_record(page_common):
    a = _adata(treatment=["ctrl", "A", "B", "A+B"] * 3, cell_type=["K562", "RPE1"] * 6)
    guessed = {"perturbation_key": "treatment", "control_label": "ctrl", "covariate_key": "cell_type"}
    assert page_common.default_setup(a) == guessed
    a.uns[DATASET_KEY] = {"perturbation_key": "condition", "control_label": "control"}  # no such column
    assert page_common.default_setup(a) == guessed
