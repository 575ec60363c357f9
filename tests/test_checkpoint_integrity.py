"""Issue 14 item 6: one digest protects everything that gives the weights their meaning.

Before the digest, only the weights were hashed: permuting the perturbation list or the gene
order in config.json loaded silently and the model then answered for the wrong perturbation.
Each edit below (without recomputing the digest) must now be refused; ``trust_modified=True``
loads it with a warning; formatting changes nothing."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from pdae_core import PDAE, CheckpointError, load_model
from pdae_core.cli import main as cli_main
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.integrity import ModifiedCheckpointWarning, config_digest

SMALL = dict(latent_dim=3, hidden_dims=(16,), noise_dim=2, n_sources=4)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    adata, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=30, hidden=16, n_doubles=3,
                              cells_per_condition=40, seed=1)
    model = PDAE.from_anndata(adata, seed=0, **SMALL)
    model.fit(adata, holdout=["P1+P2"], max_epochs=2, batch_size=64, seed=0, accelerator="cpu")
    path = tmp_path_factory.mktemp("integrity") / "ckpt"
    model.save(path)
    return adata, path


@pytest.fixture()
def ckpt(saved, tmp_path) -> Path:
    d = tmp_path / "ckpt"
    shutil.copytree(saved[1], d)
    return d


def controls(adata):
    return adata[adata.obs["condition"] == "control"]


def rewrite(ckpt: Path, edit) -> None:
    """Edit config.json by hand, leaving the recorded digest as it was."""
    cfg = json.loads((ckpt / "config.json").read_text())
    edit(cfg)
    (ckpt / "config.json").write_text(json.dumps(cfg, indent=1))


def _reverse(section, key):
    return lambda c: c[section][key].reverse()


EDITS = [
    ("perturbation_order", _reverse("registry", "perturbations")),
    ("gene_order", _reverse("registry", "gene_names")),
    ("gene_renamed", lambda c: c["registry"]["gene_names"].__setitem__(0, "GATA1")),
    ("separator", lambda c: c["registry"].__setitem__("separator", "_")),
    ("control_label", lambda c: c["registry"].__setitem__("control_label", "P3")),
    ("preprocessing", lambda c: c["registry"].__setitem__("preprocessing", {"input": "counts", "log1p": True})),
    ("hyperparameter", lambda c: c["model_config"].__setitem__("n_sources", 8)),
    ("train_labels", lambda c: c["training"]["train_labels"].reverse()),
    ("holdout", lambda c: c["training"].__setitem__("holdout", [])),
    ("weights_hash", lambda c: c.__setitem__("weights_sha256", "0" * 64)),
]


@pytest.mark.parametrize("name,edit", EDITS, ids=[e[0] for e in EDITS])
def test_hand_edited_config_is_refused(ckpt, name, edit):
    rewrite(ckpt, edit)
    with pytest.raises(CheckpointError, match="modified after saving.*trust_modified=True"):
        load_model(ckpt)


def test_permuted_vocabulary_would_answer_for_another_perturbation(saved, ckpt):
    # what the digest prevents: loaded anyway, the edited model predicts P4 where P1 was asked
    adata, original = saved
    good = load_model(original)
    rewrite(ckpt, _reverse("registry", "perturbations"))
    with pytest.warns(ModifiedCheckpointWarning, match="modified after saving"):
        bad = load_model(ckpt, trust_modified=True)
    src = controls(adata)
    np.testing.assert_allclose(bad.predict(src, "P1", seed=0).X, good.predict(src, "P4", seed=0).X, atol=1e-6)
    assert not np.allclose(bad.predict(src, "P1", seed=0).X, good.predict(src, "P1", seed=0).X, atol=1e-3)


def test_changed_weights_are_refused_and_trusted_only_on_request(ckpt):
    w = ckpt / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-3] ^= 0x40  # one bit of one weight
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the SHA-256"):
        load_model(ckpt)
    with pytest.warns(ModifiedCheckpointWarning, match="weights were replaced or altered"):
        assert load_model(ckpt, trust_modified=True).is_trained


def test_formatting_and_readme_are_not_modifications(saved, ckpt):
    adata, original = saved
    cfg = json.loads((ckpt / "config.json").read_text())
    shuffled = dict(reversed(list(cfg.items())))  # other key order, no indentation
    (ckpt / "config.json").write_text(json.dumps(shuffled, separators=(",", ":")))
    (ckpt / "README.md").write_text("# notes by the user\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_model(ckpt)
    src = controls(adata)
    np.testing.assert_array_equal(model.predict(src, "P1+P2", seed=3).X,
                                  load_model(original).predict(src, "P1+P2", seed=3).X)


def test_trusted_checkpoint_saved_again_records_new_digests(saved, ckpt, tmp_path):
    rewrite(ckpt, lambda c: c["registry"].__setitem__("preprocessing", {"note": "edited"}))
    with pytest.warns(ModifiedCheckpointWarning):
        model = load_model(ckpt, trust_modified=True)
    model.save(tmp_path / "resaved")
    cfg = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert cfg["checkpoint_sha256"] == config_digest(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_model(tmp_path / "resaved").registry.preprocessing == {"note": "edited"}


def test_format_1_checkpoint_without_digest_needs_trust(ckpt):
    rewrite(ckpt, lambda c: (c.pop("checkpoint_sha256"), c.__setitem__("format_version", 1)))
    with pytest.raises(CheckpointError, match=r"earlier pdae_core \(checkpoint format 1\).*cannot be verified"):
        load_model(ckpt)
    with pytest.warns(ModifiedCheckpointWarning, match="cannot be verified"):
        assert load_model(ckpt, trust_modified=True).is_trained


def test_digest_field_of_wrong_type(ckpt):
    rewrite(ckpt, lambda c: c.__setitem__("checkpoint_sha256", [1, 2]))
    with pytest.raises(CheckpointError, match="'checkpoint_sha256' must be a hex string"):
        load_model(ckpt)


def test_cli_refuses_modified_checkpoint_and_trusts_on_request(ckpt, saved, tmp_path, capsys):
    assert cli_main(["info", str(ckpt)]) == 0
    digest = json.loads((ckpt / "config.json").read_text())["checkpoint_sha256"]
    assert f"Digest (SHA-256): {digest}" in capsys.readouterr().out
    rewrite(ckpt, _reverse("registry", "gene_names"))
    assert cli_main(["info", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "modified after saving" in err and "--trust-modified" in err
    assert cli_main(["info", str(ckpt), "--trust-modified"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: ") and "modified after saving" in captured.err
    assert "Traceback" not in captured.err
    data = tmp_path / "cells.h5ad"
    saved[0].write_h5ad(data)
    out = tmp_path / "pred.h5ad"
    assert cli_main(["predict", str(ckpt), "--data", str(data), "--target", "P1", "--out", str(out)]) == 2
    assert not out.exists()
    assert cli_main(["predict", str(ckpt), "--data", str(data), "--target", "P1", "--out", str(out),
                     "--trust-modified"]) == 0
    assert out.exists()


def test_bundled_demo_checkpoint_verifies():
    demo = Path(__file__).resolve().parents[1] / "checkpoints" / "norman19_devel"
    cfg = json.loads((demo / "config.json").read_text())
    assert cfg["format_version"] == 2 and cfg["checkpoint_sha256"] == config_digest(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModifiedCheckpointWarning)
        assert load_model(demo).is_trained
