from __future__ import annotations

import pytest

from pdae_core import DataError, setup_anndata
from pdae_core.data.datasets import load_dataset
from pdae_core.data.splits import combination_splits, seen_count

BOTH_SINGLES = {"KLF1+MAP2K6", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2", "KLF1+TGFBR2"}


def test_norman_splits_keep_singles_in_train_and_tag_seen_parts(data_dir):
    adata = load_dataset("norman19_devel", data_dir=data_dir)
    reg = setup_anndata(adata, "condition", "control")
    splits = combination_splits(adata, reg, test_fraction=1 / 3, seeds=(0, 1, 2))
    assert [s.seed for s in splits] == [0, 1, 2]
    for s in splits:
        assert len(s.test) == 5  # 15 doubles
        assert not set(s.test) & set(s.train)
        assert "control" in s.train
        assert all(len(reg.parse(c)) == 2 for c in s.test)
        assert sum(len(reg.parse(c)) == 1 for c in s.train) == 18  # every single stays in training
        for c in s.test:
            # the five doubles with both singles measured are 'seen 2'; the others have at most one single
            assert (s.seen[c] == 2) == (c in BOTH_SINGLES)
            assert s.seen[c] in (0, 1, 2)
    assert splits[0].test != splits[1].test  # seeds differ
    assert combination_splits(adata, reg, test_fraction=1 / 3, seeds=(0,))[0].test == splits[0].test


def test_seen_count_counts_parts_measured_alone(tiny_adata):
    reg = setup_anndata(tiny_adata, "condition", "control")
    assert seen_count("P1+P2", reg, ["control", "P1", "P3"]) == 1
    assert seen_count("P1+P2", reg, ["control", "P1", "P2", "P1+P3"]) == 2
    assert seen_count("P1+P2", reg, ["control", "P3+P4"]) == 0


def test_splits_need_combinations(tiny_adata):
    singles = tiny_adata[~tiny_adata.obs["condition"].astype(str).str.contains("+", regex=False)].copy()
    reg = setup_anndata(singles, "condition", "control")
    with pytest.raises(DataError, match="No combinations"):
        combination_splits(singles, reg)
    with pytest.raises(ValueError, match="test_fraction"):
        combination_splits(tiny_adata, setup_anndata(tiny_adata, "condition", "control"), test_fraction=1.5)
