"""Checkpoints: round trip, config.json, no unpickling, tamper detection, atomic save and recovery."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import stat

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch

import pdae_core
from pdae_core import PDAE, CheckpointError, DataError, PerturbationModel, load_model
from pdae_core.models.integrity import config_digest, seal

SMALL = dict(latent_dim=3, hidden_dims=(16,), noise_dim=2, n_sources=4)



def trained(adata, seed=0, separator="+", **fit) -> PDAE:
    model = PDAE.from_anndata(adata, seed=seed, separator=separator, **SMALL)
    model.fit(adata, **{"holdout": ["P1+P2"], "max_epochs": 1, "batch_size": 64, "seed": seed, "accelerator": "cpu", **fit})
    return model


def controls(adata):
    return adata[adata.obs["condition"] == "control"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def siblings(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def edit_config(ckpt, edit) -> None:
    """Edit config.json and record its new digest, as a forger would: the checks after the
    integrity check must still refuse what is inconsistent (test_checkpoint_integrity.py
    covers edits that keep the old digest)."""
    cfg = json.loads((ckpt / "config.json").read_text())
    edit(cfg)
    (ckpt / "config.json").write_text(json.dumps(seal(cfg)))


class CreatesFile:
    """Pickles to a call of ``open(path, 'w')``: unpickling it creates ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture()
def ckpt(tmp_path, tiny_adata):
    path = tmp_path / "ckpt"
    trained(tiny_adata).save(path)
    return path


# ---- round trip -----------------------------------------------------------------------------------------


def test_save_load_predict_identical(tmp_path, tiny_adata):
    model = trained(tiny_adata)
    src = controls(tiny_adata)
    before = model.predict(src, "P1+P2", seed=3, n_draws=2)
    z = model.latent(tiny_adata)
    model.save(tmp_path / "ckpt")
    for loaded in (PDAE.load(tmp_path / "ckpt"), load_model(tmp_path / "ckpt"),
                   PerturbationModel.load(str(tmp_path / "ckpt"), adata=tiny_adata)):
        assert type(loaded) is PDAE and not loaded.module.training
        after = loaded.predict(src, "P1+P2", seed=3, n_draws=2)
        np.testing.assert_array_equal(after.X, before.X)
        assert after.obs.equals(before.obs)
        assert after.uns["pdae_prediction"] == before.uns["pdae_prediction"]
        np.testing.assert_array_equal(loaded.latent(tiny_adata), z)
        assert loaded.registry == model.registry
        assert loaded.config == model.config
        assert loaded.train_config == model.train_config
        assert loaded.history.to_dict() == model.history.to_dict()
        assert loaded.holdout == ["P1+P2"] and loaded.train_conditions == model.train_conditions
        np.testing.assert_array_equal(loaded.train_labels, model.train_labels)
        assert loaded.extrapolation_check("P1+P2") == model.extrapolation_check("P1+P2")
    assert siblings(tmp_path) == ["ckpt"]


def test_untrained_model_round_trip(tmp_path, tiny_adata):
    model = PDAE.from_anndata(tiny_adata, seed=4, **SMALL)
    model.save(tmp_path / "u")
    loaded = PDAE.load(tmp_path / "u")
    assert not loaded.is_trained and loaded.train_config is None
    src = tiny_adata[:10]
    np.testing.assert_array_equal(loaded.predict(src, "P3").X, model.predict(src, "P3").X)


def test_config_json_contents(tmp_path, tiny_adata):
    adata = tiny_adata.copy()
    conds = adata.obs["condition"].astype(str).str.replace("+", "_").replace("control", "ctrl")
    adata.obs["condition"] = conds.to_numpy()
    prep = {"input": "counts", "normalize_total": 1e4, "log1p": True}
    adata.uns["pdae_preprocessing"] = prep
    model = trained(adata, separator="_", holdout=["P1_P2"])
    model.save(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["format"] == "pdae_core.checkpoint" and cfg["format_version"] == 2
    assert cfg["library_version"] == pdae_core.__version__
    assert cfg["model_type"] == "pdae"
    reg = cfg["registry"]
    assert reg["gene_names"] == list(adata.var_names)
    assert reg["perturbations"] == ["P1", "P2", "P3", "P4"]
    assert reg["separator"] == "_" and reg["control_label"] == "ctrl"
    assert reg["perturbation_key"] == "condition" and reg["x_kind"] == "log1p"
    assert reg["preprocessing"] == prep
    mc = cfg["model_config"]
    assert (mc["n_genes"], mc["n_perturbations"], mc["latent_dim"], mc["hidden_dims"]) == (30, 4, 3, [16])
    assert cfg["weights_sha256"] == sha256(tmp_path / "ckpt" / "model.safetensors")
    assert cfg["checkpoint_sha256"] == config_digest(cfg)
    assert cfg["training"]["holdout"] == ["P1_P2"]
    assert cfg["training"]["train_config"]["max_epochs"] == 1
    assert len(cfg["training"]["history"]["records"]) == 1
    assert PDAE.load(tmp_path / "ckpt").registry.separator == "_"


def test_preprocessed_h5ad_to_checkpoint(tmp_path):
    """preprocess -> write_h5ad -> read_h5ad -> fit -> save: the preprocessing record survives
    (h5ad hands it back with numpy scalar types) and the checkpoint loads against the data."""
    rng = np.random.default_rng(0)
    conds = ["control"] * 20 + ["A"] * 20 + ["B"] * 20 + ["A+B"] * 20
    obs = pd.DataFrame({"condition": conds}, index=[f"c{i}" for i in range(80)])
    raw = ad.AnnData(X=rng.poisson(3, size=(80, 30)), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(30)]))
    pdae_core.preprocess(raw, n_top_genes=20).write_h5ad(tmp_path / "cells.h5ad")
    adata = pdae_core.read_h5ad(tmp_path / "cells.h5ad")
    model = PDAE.from_anndata(adata, **SMALL)
    model.fit(adata, max_epochs=1, batch_size=32, accelerator="cpu")
    model.save(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["registry"]["preprocessing"] == {
        "input": "counts", "normalize_total": 1e4, "log1p": True, "highly_variable_genes": 20,
    }
    loaded = load_model(tmp_path / "ckpt", adata=adata)
    assert loaded.registry == model.registry and loaded.registry.n_genes == 20


# ---- never unpickle -------------------------------------------------------------------------------------


def test_payload_is_live(tmp_path):
    """The payload used below really runs code when unpickled (so the tests below can fail)."""
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(CreatesFile(probe))).close()
    assert probe.exists()


@pytest.mark.parametrize("name", ["model.pkl", "pytorch_model.bin", "model.pt"])
def test_pickle_file_in_checkpoint_is_rejected(ckpt, tmp_path, name):
    marker = tmp_path / "PWNED"
    (ckpt / name).write_bytes(pickle.dumps(CreatesFile(marker)))
    with pytest.raises(CheckpointError, match=rf"unexpected file\(s\) \['{name}'\].*Pickle .* never loaded"):
        PDAE.load(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("fix_hash", [False, True])
def test_pickle_in_place_of_weights_is_rejected(ckpt, tmp_path, fix_hash):
    marker = tmp_path / "PWNED"
    weights = ckpt / "model.safetensors"
    weights.write_bytes(pickle.dumps(CreatesFile(marker)))
    if fix_hash:
        edit_config(ckpt, lambda c: c.update(weights_sha256=sha256(weights)))
    pattern = "not a valid safetensors file" if fix_hash else "does not match the SHA-256"
    with pytest.raises(CheckpointError, match=pattern):
        PDAE.load(ckpt)
    assert not marker.exists()


def test_loading_calls_no_unpickler(ckpt, tiny_adata, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the loader unpickled something")

    for mod, attr in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, attr, refuse)
    model = PDAE.load(ckpt)
    assert model.is_trained


# ---- tampering and corruption -------------------------------------------------------------------------


def _set(section, key, value):
    return lambda c: c[section].__setitem__(key, value)


TAMPER = [
    ("latent_dim", _set("model_config", "latent_dim", 5), r"tensor '.*' has shape .* config\.json implies"),
    ("latent_dim_zero", _set("model_config", "latent_dim", 0), r"invalid model_config .*latent_dim"),
    ("gene_added", lambda c: c["registry"]["gene_names"].append("EXTRA"), r"30 genes .* registry lists 31"),
    ("genes_removed_consistently",
     lambda c: (c["registry"]["gene_names"].pop(), c["model_config"].__setitem__("n_genes", 29)), r"has shape"),
    ("format", lambda c: c.update(format="something.else"), r"not a pdae_core checkpoint \(format='something\.else'\)"),
    ("format_version", lambda c: c.update(format_version=3), r"format_version 3; this library reads 1 and 2"),
    ("weights_hash", lambda c: c.update(weights_sha256="0" * 64), r"does not match the SHA-256"),
    ("model_type", lambda c: c.update(model_type="scgen"), r"unknown model type 'scgen'"),
    ("missing_field", lambda c: c.pop("registry"), r"missing the field 'registry'"),
    ("duplicate_vocabulary", lambda c: c["registry"]["perturbations"].__setitem__(1, "P1"), r"invalid registry.*duplicates"),
    ("unknown_hyperparameter", _set("model_config", "depth", 3), r"invalid model_config"),
    ("bad_training_section", _set("training", "train_config", [1, 2]), r"invalid training section"),
    ("bad_train_labels", _set("training", "train_labels", [[1, 0, 0]]), r"invalid training section"),
]


@pytest.mark.parametrize("name,edit,pattern", TAMPER, ids=[t[0] for t in TAMPER])
def test_tampered_config_is_rejected(ckpt, name, edit, pattern):
    edit_config(ckpt, edit)
    with pytest.raises(CheckpointError, match=pattern):
        PDAE.load(ckpt)


@pytest.mark.parametrize(
    "text,pattern",
    [("{not json", r"config\.json is not valid JSON"), ("[1, 2]", "must hold a JSON object"),
     ("", "not valid JSON"), ("\udcff", "not valid JSON")],
)
def test_unparsable_config_is_rejected(ckpt, text, pattern):
    (ckpt / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=pattern):
        PDAE.load(ckpt)


def test_truncated_or_garbage_weights_are_rejected(ckpt):
    weights = ckpt / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        PDAE.load(ckpt)
    cases = [
        good[: len(good) // 2],
        good[:5],
        bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8)),
        b"",
    ]
    for data in cases:  # with a matching hash, so the safetensors parser itself must refuse them
        weights.write_bytes(data)
        edit_config(ckpt, lambda c: c.update(weights_sha256=sha256(weights)))
        with pytest.raises(CheckpointError, match=r"model\.safetensors is not a valid safetensors file"):
            PDAE.load(ckpt)


def test_weights_of_another_architecture_are_rejected(ckpt):
    weights = ckpt / "model.safetensors"
    safetensors.torch.save_file({"W.weight": torch.zeros(3, 4)}, str(weights))
    edit_config(ckpt, lambda c: c.update(weights_sha256=sha256(weights)))
    with pytest.raises(CheckpointError, match=r"does not fit a 'pdae' model.*missing \['decoder"):
        PDAE.load(ckpt)


def test_missing_or_incomplete_checkpoint(tmp_path, ckpt):
    with pytest.raises(CheckpointError, match="Checkpoint not found"):
        PDAE.load(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is not a checkpoint directory"):
        PDAE.load(tmp_path / "file")
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: config\.json is missing"):
        PDAE.load(ckpt)
    (ckpt / "config.json").mkdir()
    with pytest.raises(CheckpointError, match=r"config\.json is not a regular file"):
        PDAE.load(ckpt)


def test_loading_with_other_genes_is_refused(ckpt, tiny_adata):
    with pytest.raises(DataError, match=r"expects 30 genes, the dataset has 25; 5 of the model's genes are missing"):
        PDAE.load(ckpt, adata=tiny_adata[:, :25])
    renamed = tiny_adata.copy()
    renamed.var_names = [f"G{i}" for i in range(30)]
    with pytest.raises(DataError, match=r"30 of the model's genes are missing \(gene0.*30 are extra \(G0"):
        load_model(ckpt, adata=renamed)
    with pytest.raises(DataError, match="different order"):
        PDAE.load(ckpt, adata=tiny_adata[:, ::-1])
    assert PDAE.load(ckpt, adata=tiny_adata).registry.n_genes == 30


# ---- atomic save --------------------------------------------------------------------------------------


def _crash_save_file(*args, **kwargs):
    raise OSError("No space left on device (simulated)")


def _crash_json_dump(obj, fp, **kwargs):
    fp.write(json.dumps(obj)[:100])  # half-written config, then the crash
    raise OSError("No space left on device (simulated)")


@pytest.mark.parametrize("target,attr,crash", [(safetensors.torch, "save_file", _crash_save_file),
                                               (json, "dump", _crash_json_dump)], ids=["save_file", "json_dump"])
def test_crash_during_save_keeps_previous_checkpoint(tmp_path, tiny_adata, monkeypatch, target, attr, crash):
    path = tmp_path / "ckpt"
    first = trained(tiny_adata, seed=0)
    first.save(path)
    before = files(path)
    expected = first.predict(controls(tiny_adata), "P3+P4", seed=1).X
    second = trained(tiny_adata, seed=1)
    monkeypatch.setattr(target, attr, crash)
    with pytest.raises(OSError, match="simulated"):
        second.save(path)
    monkeypatch.undo()
    assert siblings(tmp_path) == ["ckpt"]  # no temp directory left behind
    assert files(path) == before
    np.testing.assert_array_equal(PDAE.load(path).predict(controls(tiny_adata), "P3+P4", seed=1).X, expected)
    second.save(path)  # a later save works and replaces it
    assert files(path) != before and siblings(tmp_path) == ["ckpt"]


def test_crash_during_first_save_leaves_nothing(tmp_path, tiny_adata, monkeypatch):
    model = trained(tiny_adata)
    monkeypatch.setattr(safetensors.torch, "save_file", _crash_save_file)
    with pytest.raises(OSError):
        model.save(tmp_path / "ckpt")
    assert siblings(tmp_path) == []


def _fail_second_replace(monkeypatch):
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("killed between the two renames (simulated)")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_exception_between_the_renames_rolls_back(tmp_path, tiny_adata, monkeypatch):
    """(issue 14, item 5: an exception between the two renames no longer leaves the previous
    checkpoint in a hidden ``.old-*`` folder to be resurrected later: the save puts it back itself.
    A save *killed* there is recovered on load: tests/test_checkpoint_safety.py.)"""
    path = tmp_path / "ckpt"
    first = trained(tiny_adata, seed=0)
    first.save(path)
    before = files(path)
    _fail_second_replace(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        trained(tiny_adata, seed=1).save(path)
    monkeypatch.undo()
    assert siblings(tmp_path) == ["ckpt"] and files(path) == before
    loaded = PDAE.load(path)
    src = controls(tiny_adata)
    np.testing.assert_array_equal(loaded.predict(src, "P1", seed=2).X, first.predict(src, "P1", seed=2).X)


def test_lone_old_directory_is_not_resurrected(tmp_path, ckpt, tiny_adata):
    """(issue 14, item 5; this test used to expect the opposite) A lone ``.NAME.old-*`` folder is what a
    save killed after its swap leaves: the checkpoint it holds was replaced, or deleted by the user since,
    and must not come back. The next save removes the folder."""
    os.rename(ckpt, tmp_path / ".ckpt.old-x1y2z3ab")
    with pytest.raises(CheckpointError, match="not found"):
        PDAE.load(ckpt)
    assert not ckpt.exists()
    trained(tiny_adata, seed=1).save(ckpt)
    assert siblings(tmp_path) == ["ckpt"]


def test_recovery_ignores_stale_old_directories(tmp_path, tiny_adata, monkeypatch):
    """A save killed after its swap leaves ``.NAME.old-*`` behind; a later interrupted swap
    must not resurrect that older checkpoint instead of the one it displaced."""
    path = tmp_path / "ckpt"
    trained(tiny_adata, seed=0).save(tmp_path / "v1")
    v2 = trained(tiny_adata, seed=1)
    v2.save(path)
    v2_files = files(path)
    shutil.move(tmp_path / "v1", tmp_path / ".ckpt.old-~stale")  # sorts after any random suffix
    _fail_second_replace(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        trained(tiny_adata, seed=2).save(path)
    monkeypatch.undo()
    PDAE.load(path)
    assert files(path) == v2_files


# ---- what save refuses, and what it creates ----------------------------------------------------------


def test_save_refuses_to_replace_other_directories(tmp_path, tiny_adata):
    model = trained(tiny_adata)
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("months of work")
    with pytest.raises(CheckpointError, match=r"not a pdae_core checkpoint \(it holds \['notes\.txt'\]\)"):
        model.save(project)
    assert (project / "notes.txt").read_text() == "months of work"
    assert siblings(tmp_path) == ["project"]
    empty = tmp_path / "empty"
    empty.mkdir()
    model.save(empty)  # an empty directory is fine
    assert PDAE.load(empty).is_trained
    with pytest.raises(CheckpointError, match="already exists"):
        model.save(empty, overwrite=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="is not a directory"):
        model.save(tmp_path / "afile")


def test_saved_directory_follows_umask(tmp_path, tiny_adata):
    model = trained(tiny_adata)
    old = os.umask(0o022)
    try:
        model.save(tmp_path / "ckpt")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "ckpt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o755


def test_saving_twice_gives_byte_identical_weights(tiny_adata, tmp_path):
    model = PDAE.from_anndata(tiny_adata, "condition", "control", **SMALL)
    model.save(tmp_path / "a")
    model.save(tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
