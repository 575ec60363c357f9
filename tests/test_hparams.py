"""Hyperparameter declarations (pdae_core.models.hparams): help texts and choices written once,
on the config fields, and read by the configs' validation and the command line."""

from __future__ import annotations

import dataclasses

import pytest

from pdae_core.models.fcr import FCRConfig
from pdae_core.models.hparams import choice_check, field_choices, help_text, hp, hyperparameter_fields
from pdae_core.models.pdae import PDAEConfig
from pdae_core.models.samsvae import SAMSVAEConfig
from pdae_core.models.sccvae import SCCVAEConfig


@dataclasses.dataclass
class _Config:
    n_genes: int
    size: int = hp(4, "a size")
    mode: str = hp("b", "a mode", choices=("a", "b", "c"))
    pair: str = hp("x", "a pair", choices=("x", "y"))
    plain: float = 1.0


def test_hp_declares_default_help_and_choices():
    c = _Config(n_genes=2)
    assert (c.size, c.mode, c.pair, c.plain) == (4, "b", "x", 1.0)
    fields = {f.name: f for f in dataclasses.fields(_Config)}
    assert help_text(fields["size"]) == "a size" and help_text(fields["plain"]) == ""
    assert field_choices(_Config) == {"mode": ("a", "b", "c"), "pair": ("x", "y")}
    assert [f.name for f in hyperparameter_fields(_Config)] == ["size", "mode", "pair", "plain"]  # n_genes: data
    assert dataclasses.asdict(c) == {"n_genes": 2, "size": 4, "mode": "b", "pair": "x", "plain": 1.0}
    assert c == _Config(n_genes=2) and c != _Config(n_genes=2, mode="a")


def test_hp_rejects_bad_declarations():
    with pytest.raises(ValueError, match="help text"):
        hp(1, "  ")
    with pytest.raises(ValueError, match="not among the choices"):
        hp("z", "a mode", choices=("a", "b"))
    with pytest.raises(ValueError, match="mutable default"):  # dataclasses still refuse mutable defaults
        dataclasses.make_dataclass("Bad", [("xs", list, hp([1], "a list"))])


def test_choice_check_messages():
    c = _Config(n_genes=2, mode="q", pair="y")
    assert choice_check(c, "mode") == (False, "mode must be 'a', 'b' or 'c'")
    assert choice_check(c, "pair") == (True, "pair must be 'x' or 'y'")


@pytest.mark.parametrize(
    "cls, field, message",
    [
        (PDAEConfig, "grid", "PDAEConfig: grid must be 'sampled' or 'full'"),
        (PDAEConfig, "source_sampling", "PDAEConfig: source_sampling must be 'condition' or 'batch'"),
        (SAMSVAEConfig, "likelihood", "SAMSVAEConfig: likelihood must be 'gaussian' or 'nb'"),
        (SAMSVAEConfig, "mask_posterior", "SAMSVAEConfig: mask_posterior must be 'straight_through' or 'relaxed'"),
        (SCCVAEConfig, "shift_type", "SCCVAEConfig: shift_type must be 'softmax' or 'dense'"),
        (SCCVAEConfig, "graph", "SCCVAEConfig: graph must be 'full' or 'none'"),
        (SCCVAEConfig, "sources", "SCCVAEConfig: sources must be 'control' or 'all'"),
        (SCCVAEConfig, "likelihood", "SCCVAEConfig: likelihood must be 'gaussian' or 'censored'"),
        (FCRConfig, "transfer_zx", "FCRConfig: transfer_zx must be 'sample' or 'mean'"),
    ],
)
def test_configs_validate_their_declared_choices(cls, field, message):
    with pytest.raises(ValueError) as e:
        cls(n_genes=3, n_perturbations=2, **{field: "bogus"})
    assert str(e.value) == message
    for value in field_choices(cls)[field]:
        assert getattr(cls(n_genes=3, n_perturbations=2, **{field: value}), field) == value


def test_every_choice_field_of_the_configs_is_validated():
    """The fields with declared choices are exactly the ones the configs check."""
    assert {c.__name__: sorted(field_choices(c)) for c in (PDAEConfig, SAMSVAEConfig, SCCVAEConfig, FCRConfig)} == {
        "PDAEConfig": ["grid", "source_sampling"],
        "SAMSVAEConfig": ["likelihood", "mask_posterior"],
        "SCCVAEConfig": ["graph", "likelihood", "shift_type", "sources"],
        "FCRConfig": ["transfer_zx"],
    }
