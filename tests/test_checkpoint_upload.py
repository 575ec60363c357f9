"""Issue 16, "what users expect" 4: upload a checkpoint (the ``.zip`` the Model page downloads)
with the same integrity checks as loading it from disk.

The archive loader (:mod:`pdae_core.models.archive`) is tested on a tiny model: a good archive
round-trips to identical predictions, a tampered config or weights file is refused, and
hostile archives (paths out of the folder, links, bombs, too many entries, other files) are
refused before anything is written; the temporary folder is always removed. Then the Model
page under AppTest: a good upload becomes the loaded model, a tampered one shows the reason
and leaves the loaded model alone.
"""

from __future__ import annotations

import io
import json
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pdae_core import PDAE, CheckpointError, load_model
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models import archive
from pdae_core.models.archive import load_model_archive, read_archive

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the pages import ``pages.common`` from the repository root
    sys.path.insert(0, str(ROOT))

from pages import common  # noqa: E402

BUNDLED = ROOT / "checkpoints" / "norman19_devel"


# ---- fixtures and helpers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    """(adata, trained tiny model, its archive as the Model page's download button makes it)."""
    adata, _ = make_synthetic(n_perturbations=3, latent_dim=3, n_genes=12, hidden=8, n_doubles=1,
                              cells_per_condition=12, seed=1)
    model = PDAE.from_anndata(adata, seed=0, latent_dim=2, hidden_dims=(8,), noise_dim=2, n_sources=2)
    model.fit(adata, max_epochs=1, batch_size=32, seed=0, accelerator="cpu")
    return adata, model, common.checkpoint_zip(model, "tiny")


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Where the loader's temporary folders go, to check that none is left behind."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def make_zip(entries: dict[str, bytes] | list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in (entries.items() if isinstance(entries, dict) else entries):
            z.writestr(name, data)
    return buf.getvalue()


def files_of(data: bytes) -> dict[str, bytes]:
    """The archive's checkpoint files by file name (whatever folder they are in)."""
    return {Path(k).name: v for k, v in members(data).items() if not k.endswith("/")}


def refused(data: bytes, *words: str, name: str = "upload.zip", **kw) -> str:
    with pytest.raises(CheckpointError) as e:
        load_model_archive(data, name, **kw)
    msg = str(e.value)
    assert msg.startswith(name), msg
    for w in words:
        assert w in msg, msg
    assert "pdae_archive_" not in msg and tempfile.gettempdir() not in msg, msg  # never the temporary folder
    return msg


def predictions(model, adata) -> np.ndarray:
    ctrl = adata[adata.obs["condition"] == "control"]
    pred = model.predict(ctrl, "P1+P2", seed=3)
    return np.asarray(pred.X)


# ---- the archive loader -----------------------------------------------------------------------
def test_good_archive_round_trips_to_identical_predictions(tiny, private_tmp):
    adata, model, data = tiny
    assert sorted(members(data)) == ["tiny/config.json", "tiny/model.safetensors"]
    loaded = load_model_archive(data, "tiny.zip")
    assert loaded is not model and loaded.model_type == model.model_type
    assert loaded.registry.perturbations == model.registry.perturbations
    assert loaded.holdout == model.holdout and loaded.train_conditions == model.train_conditions
    np.testing.assert_array_equal(predictions(loaded, adata), predictions(model, adata))
    assert list(private_tmp.iterdir()) == []  # the temporary folder is gone


@pytest.mark.parametrize("layout", ["folder", "root", "folder_with_entry", "readme", "macos"])
def test_folder_or_root_layouts_are_accepted(tiny, layout, private_tmp):
    adata, model, data = tiny
    files = files_of(data)
    entries = {
        "folder": {f"my model/{k}": v for k, v in files.items()},
        "root": files,
        "folder_with_entry": {"ckpt/": b"", **{f"ckpt/{k}": v for k, v in files.items()}},
        "readme": {**{f"ckpt/{k}": v for k, v in files.items()}, "ckpt/README.md": b"# my model\n"},
        # what macOS's "Compress" adds: skipped, never written
        "macos": {**{f"ckpt/{k}": v for k, v in files.items()}, "__MACOSX/": b"", "__MACOSX/ckpt/._config.json": b"x",
                  "ckpt/.DS_Store": b"\0\0"},
    }[layout]
    loaded = load_model_archive(make_zip(entries), "m.zip")
    np.testing.assert_array_equal(predictions(loaded, adata), predictions(model, adata))
    assert list(private_tmp.iterdir()) == []


def test_tampered_config_is_refused_naming_the_upload(tiny, private_tmp):
    entries = members(tiny[2])
    cfg = json.loads(entries["tiny/config.json"])
    cfg["registry"]["perturbations"].reverse()  # the model would answer for the wrong perturbation
    entries["tiny/config.json"] = json.dumps(cfg, indent=1).encode()
    msg = refused(make_zip(entries), "norman.zip was modified after saving", "config.json no longer matches",
                  "Refusing to load it", name="norman.zip")
    assert "model.safetensors" not in msg  # the weights are intact
    assert list(private_tmp.iterdir()) == []  # removed after a failed load too


def test_tampered_weights_are_refused(tiny, private_tmp):
    entries = members(tiny[2])
    w = bytearray(entries["tiny/model.safetensors"])
    w[-3] ^= 0xFF  # one byte of the last tensor
    entries["tiny/model.safetensors"] = bytes(w)
    refused(make_zip(entries), "norman.zip was modified after saving",
            "model.safetensors does not match the SHA-256 recorded", name="norman.zip")
    assert list(private_tmp.iterdir()) == []


def test_trust_modified_loads_with_a_warning_about_the_upload(tiny):
    from pdae_core.models.integrity import ModifiedCheckpointWarning

    entries = members(tiny[2])
    cfg = json.loads(entries["tiny/config.json"])
    assert cfg["training"]["holdout"] == []
    cfg["training"]["holdout"] = ["P1+P2"]
    entries["tiny/config.json"] = json.dumps(cfg).encode()
    with pytest.warns(ModifiedCheckpointWarning, match=r"^edited\.zip was modified after saving"):
        loaded = load_model_archive(make_zip(entries), "edited.zip", trust_modified=True)
    assert loaded.holdout == ["P1+P2"]


def _link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("entry, words", [
    ("../config.json", "points outside its folder"),
    ("ckpt/../../config.json", "points outside its folder"),
    ("./config.json", "points outside its folder"),
    ("/etc/config.json", "is an absolute path"),
    ("C:/Users/config.json", "is an absolute path"),
    ("..\\config.json", "backslash"),
    (_link("ckpt/config.json"), "is a symbolic link"),
])
def test_hostile_paths_are_refused_before_anything_is_written(tiny, entry, words, private_tmp, tmp_path):
    files = files_of(tiny[2])
    data = make_zip([("ckpt/model.safetensors", files["model.safetensors"]), (entry, files["config.json"])])
    refused(data, words, name="evil.zip")
    assert list(private_tmp.iterdir()) == []
    assert not (tmp_path / "config.json").exists() and not Path("/etc/config.json").exists()


def test_other_files_and_bad_layouts_are_refused(tiny):
    files = files_of(tiny[2])
    folder = {f"ckpt/{k}": v for k, v in files.items()}
    refused(make_zip({**folder, "ckpt/model.pkl": b"\x80\x04"}), "'ckpt/model.pkl'", "not a checkpoint file")
    refused(make_zip({**folder, "ckpt/run.sh": b"rm -rf /"}), "not a checkpoint file")
    refused(make_zip({f"a/b/{k}": v for k, v in files.items()}), "nested too deep")
    refused(make_zip({"a/config.json": files["config.json"], "b/model.safetensors": files["model.safetensors"]}),
            "spread over several places", "a/", "b/")
    refused(make_zip({"config.json": files["config.json"], "ckpt/model.safetensors": files["model.safetensors"]}),
            "spread over several places", "(the root)")
    refused(make_zip({"ckpt/config.json": files["config.json"]}), "model.safetensors is missing")
    refused(make_zip({"ckpt/model.safetensors": files["model.safetensors"]}), "config.json is missing")
    with pytest.warns(UserWarning, match="Duplicate name"):  # zipfile writes it, with a warning
        twice = make_zip([("ckpt/config.json", files["config.json"]), ("ckpt/config.json", b"{}"),
                          ("ckpt/model.safetensors", files["model.safetensors"])])
    refused(twice, "appears twice")
    refused(make_zip({**folder, "other/config.json": files["config.json"]}), "config.json twice")


def test_encrypted_entries_are_refused(tiny):
    files = files_of(tiny[2])
    data = bytearray(make_zip({"ckpt/config.json": files["config.json"],
                               "ckpt/model.safetensors": files["model.safetensors"]}))
    # zipfile cannot write encrypted entries: set the "encrypted" flag of config.json's directory record
    at = data.index(b"PK\x01\x02")  # the first central directory record: ckpt/config.json
    assert data[at + 46:at + 46 + 16] == b"ckpt/config.json"
    data[at + 8] |= 0x1
    refused(bytes(data), "'ckpt/config.json' is encrypted", "without a password")


def test_not_a_zip_empty_and_too_many_entries(tiny):
    refused(b"this is not a zip file", "this is not a zip archive", name="model.safetensors")
    refused(b"", "the file is empty", name="empty.zip")
    truncated = tiny[2][: len(tiny[2]) // 2]
    refused(truncated, "not a zip archive", name="half.zip")
    files = files_of(tiny[2])
    many = {f"ckpt/{k}": v for k, v in files.items()} | {f"__MACOSX/ckpt/._{i}": b"" for i in range(15)}
    refused(make_zip(many), "17 entries", f"more than the {archive.MAX_ENTRIES}")


def test_too_large_and_zip_bombs_are_refused(tiny, private_tmp):
    data = tiny[2]
    refused(data, "more than the 1000 bytes", max_bytes=1000)  # the archive itself
    files = files_of(data)
    # 8 MB of zeros compress to a few KB: the sizes recorded in the archive give it away
    bomb = make_zip({"ckpt/config.json": files["config.json"], "ckpt/model.safetensors": b"\0" * (8 << 20)})
    assert len(bomb) < 64 << 10
    refused(bomb, "unpack to more than 1 MB", max_bytes=1 << 20)
    assert list(private_tmp.iterdir()) == []


def test_bytes_written_are_counted_whatever_the_archive_says(tiny, tmp_path):
    """A second guard behind the recorded sizes: unpacking stops at the cap."""
    files = read_archive(tiny[2], "t.zip")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError, match="unpack to more than"):
        archive._unpack(tiny[2], "t.zip", files, out, max_bytes=100)
    archive._unpack(tiny[2], "t.zip", files, tmp_path, max_bytes=1 << 20)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["config.json", "model.safetensors"]


def test_bundled_checkpoint_round_trips_through_its_download():
    model = load_model(BUNDLED)
    again = load_model_archive(common.checkpoint_zip(model, "norman19_devel"), "norman19_devel.zip")
    assert again.registry.gene_names == model.registry.gene_names
    for (k, a), (_, b) in zip(model.module.state_dict().items(), again.module.state_dict().items()):
        assert (a == b).all(), k


# ---- the Model page ------------------------------------------------------------------------------
def ok(at: AppTest) -> AppTest:
    assert not at.exception, "\n".join(f"{e.message}\n{''.join(e.stack_trace)}" for e in at.exception)
    assert not any("unexpected error" in e.value for e in at.error), [e.value for e in at.error]
    return at


@pytest.fixture()
def model_page(data_dir, monkeypatch) -> AppTest:
    """The Model page of a new session (demo data, bundled model). The Compose page's UMAP warm-up
    is not started: nothing here needs it, and it would hold the CPU for half a minute."""
    monkeypatch.setattr(common, "warm_reference_embedding", lambda ds: None)
    at = ok(AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run())
    ok(at.switch_page("pages/model.py").run())
    assert at.session_state["model_key"] == "bundled:norman19_devel"
    return at


def upload_checkpoint(at: AppTest, name: str, data: bytes) -> AppTest:
    (uploader,) = [u for u in at.get("file_uploader") if u.key == "model_upload"]
    uploader.set_value((name, data, "application/zip"))
    return ok(at.run())


def joined(elements) -> str:
    return "\n".join(e.value for e in elements)


@pytest.fixture(scope="module")
def bundled_zip() -> bytes:
    return common.checkpoint_zip(load_model(BUNDLED), "norman19_devel")


def test_model_page_good_upload_becomes_the_loaded_model(model_page, bundled_zip):
    at = upload_checkpoint(model_page, "norman.zip", bundled_zip)
    key = at.session_state["model_key"]
    assert key.startswith("trained:uploaded-norman-")
    assert "uploaded checkpoint norman.zip" in joined(at.subheader)
    assert "Loaded norman.zip: its digests match" in joined(at.success)
    assert not at.error and not at.warning  # it fits the demo data
    uploaded = at.session_state["trained"][key.removeprefix("trained:")]
    assert uploaded.registry.gene_names == load_model(BUNDLED).registry.gene_names
    # the next runs (the file still in the uploader) do not load it again; choosing another model wins
    ok(at.button(key="model_load_bundled").click().run())
    assert at.session_state["model_key"] == "bundled:norman19_devel"
    ok(at.run())
    assert at.session_state["model_key"] == "bundled:norman19_devel"


def test_model_page_tampered_upload_shows_why_and_keeps_the_model(model_page, bundled_zip):
    entries = members(bundled_zip)
    cfg = json.loads(entries["norman19_devel/config.json"])
    cfg["registry"]["gene_names"][:2] = cfg["registry"]["gene_names"][1::-1]  # two genes swapped
    entries["norman19_devel/config.json"] = json.dumps(cfg).encode()
    at = upload_checkpoint(model_page, "norman.zip", make_zip(entries))
    err = joined(at.error)
    assert "norman.zip was modified after saving" in err and "config.json no longer matches" in err
    assert "**bundled checkpoint norman19_devel** is still the loaded model." in err
    assert "Traceback" not in err and "pdae_archive_" not in err
    assert at.session_state["model_key"] == "bundled:norman19_devel"
    assert "bundled checkpoint norman19_devel" in joined(at.subheader)
    ok(at.run())  # the reason stays while the file is in the uploader; the model still stays
    assert "norman.zip was modified after saving" in joined(at.error)
    assert at.session_state["model_key"] == "bundled:norman19_devel"
    at = upload_checkpoint(at, "notes.zip", b"just some text")
    assert "notes.zip: this is not a zip archive" in joined(at.error)
    assert at.session_state["model_key"] == "bundled:norman19_devel"


def test_model_page_upload_of_a_model_for_other_data_warns(model_page, tiny):
    at = upload_checkpoint(model_page, "tiny.zip", tiny[2])
    assert at.session_state["model_key"].startswith("trained:uploaded-tiny-")
    assert "uploaded checkpoint tiny.zip" in joined(at.subheader)
    assert "This model does not fit the loaded dataset (norman19_devel)" in joined(at.warning)
