"""pdae_core.data.columns: what a control label looks like (the guesses of whole set-ups
are tested in test_explore.py, their use by setup_anndata in test_registry.py)."""

from __future__ import annotations

import pytest

from pdae_core.data.columns import (
    CONTROL_CANDIDATES,
    detect_control,
    is_control_guide_target,
    is_control_label,
)
from pdae_core.errors import DataError


@pytest.mark.parametrize("label", ["control", " Control ", "CTRL", "non-targeting", "NT", "nt", "unperturbed"])
def test_control_like_labels(label):
    assert is_control_label(label)


@pytest.mark.parametrize("label", ["A", "KLF1+ctrl", "controls", "safe-targeting", "", "DMSO"])
def test_other_labels_are_not_control(label):
    assert not is_control_label(label)


def test_control_guide_targets():
    for target in ("non-targeting", "Non-Targeting", "NT", "safe-targeting", "ctrl", "control"):
        assert is_control_guide_target(target), target
    for target in ("CD274", "", "unperturbed", " non-targeting"):  # guide targets are matched as written
        assert not is_control_guide_target(target), target


def test_detect_control_prefers_exact_then_any_case_in_candidate_order():
    assert detect_control(["A", "ctrl", "control"]) == "control"  # earlier candidate wins
    assert detect_control(["A", "NT", "ctrl"]) == "ctrl"
    assert detect_control(["A", "Non-Targeting"]) == "Non-Targeting"  # other case, as written
    assert detect_control(["A", "nt"]) == "nt"


def test_detect_control_names_the_column_and_the_labels():
    with pytest.raises(DataError) as e:
        detect_control(["A", "B", "DMSO"], key="treatment")
    msg = str(e.value)
    assert "perturbation column 'treatment'" in msg and "control_label=" in msg
    assert "A, B, DMSO" in msg and str(list(CONTROL_CANDIDATES)) in msg
    with pytest.raises(DataError, match="the perturbation column"):
        detect_control(["A"])
