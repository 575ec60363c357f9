"""Loading a checkpoint checks sizes and types before building anything (issue 14, items 7-8):
a config whose sizes disagree with the weights is refused from the safetensors header alone
(no huge allocation), a header claiming more bytes than the file holds is refused, malformed
fields of config.json get a CheckpointError naming the field, and a checkpoint saved by a newer
library version gives a warning naming both versions."""

from __future__ import annotations

import json
import resource
import shutil
import struct
import time
import tracemalloc
import warnings
from pathlib import Path

import pytest

from pdae_core import CheckpointError
from pdae_core.cli import main as cli_main
from pdae_core.models.checkpoint import load_checkpoint
from pdae_core.models.integrity import seal

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "norman19_devel"


@pytest.fixture()
def ckpt(tmp_path) -> Path:
    d = tmp_path / "ckpt"
    shutil.copytree(DEMO, d)
    return d


def edit_config(d: Path, fn) -> None:
    """Edit config.json and record its new digest (as a forger could), to reach the later checks."""
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(seal(cfg), indent=1))


# item 7 -------------------------------------------------------------------------------


def test_huge_hidden_dims_refused_from_header_without_allocating(ckpt):
    # a resealed config (digest recomputed) reaches the size check
    edit_config(ckpt, lambda c: c["model_config"].__setitem__("hidden_dims", [200000, 200000]))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the process's peak so far
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(ckpt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5
    assert peak < 50e6  # Python allocations
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 500_000  # peak RSS grew < 500 MB
    msg = str(e.value)
    assert "model.safetensors" in msg and "200000" in msg and "512" in msg


def test_shape_mismatch_names_tensor_and_both_shapes(ckpt):
    edit_config(ckpt, lambda c: c["model_config"].__setitem__("latent_dim", 17))
    with pytest.raises(CheckpointError, match=r"tensor '.*' has shape \(.*\) but config.json implies \(.*17"):
        load_checkpoint(ckpt)


def test_header_claiming_more_bytes_than_the_file_holds(ckpt):
    from pdae_core.models import checkpoint

    w = ckpt / "model.safetensors"
    raw = w.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [10**6, 10**6]
    new = json.dumps(header).encode()
    w.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    edit_config(ckpt, lambda c: c.__setitem__("weights_sha256", checkpoint._sha256(w)))
    with pytest.raises(CheckpointError, match="bytes"):
        load_checkpoint(ckpt)


def test_header_length_beyond_the_file(ckpt):
    from pdae_core.models import checkpoint

    w = ckpt / "model.safetensors"
    raw = w.read_bytes()
    w.write_bytes(struct.pack("<Q", 10**12) + raw[8:])
    edit_config(ckpt, lambda c: c.__setitem__("weights_sha256", checkpoint._sha256(w)))
    with pytest.raises(CheckpointError, match="header"):
        load_checkpoint(ckpt)


# item 8 -------------------------------------------------------------------------------


def test_deeply_nested_config_json(ckpt):
    (ckpt / "config.json").write_text('{"format": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_checkpoint(ckpt)


def test_history_records_not_a_list(ckpt, capsys):
    edit_config(ckpt, lambda c: c["training"]["history"].__setitem__("records", "zzz"))
    with pytest.raises(CheckpointError, match="history.records"):
        load_checkpoint(ckpt)
    assert cli_main(["info", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "history.records" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "field, value",
    [
        ("history.records", [{"epoch": "x"}]),
        ("history.records", [1, 2]),
        ("history.records", [{"step": 3}]),
        ("history.best_val", "low"),
        ("history.steps", "many"),
        ("history", "zzz"),
        ("train_conditions", "abc"),
        ("train_conditions", [1, 2]),
        ("holdout", {"a": 1}),
        ("train_labels", "zzz"),
        ("train_config", [1]),
    ],
)
def test_malformed_training_fields_named(ckpt, field, value):
    def edit(c):
        tr = c["training"]
        if field.startswith("history."):
            tr["history"][field.split(".", 1)[1]] = value
        else:
            tr[field] = value

    edit_config(ckpt, edit)
    with pytest.raises(CheckpointError, match=field.replace(".", r"\.")):
        load_checkpoint(ckpt)


def test_training_not_an_object(ckpt):
    edit_config(ckpt, lambda c: c.__setitem__("training", "zzz"))
    with pytest.raises(CheckpointError, match="training"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("field, value", [("separator", ""), ("preprocessing", "abc")])
def test_registry_fields_named(ckpt, field, value):
    edit_config(ckpt, lambda c: c["registry"].__setitem__(field, value))
    with pytest.raises(CheckpointError, match=field):
        load_checkpoint(ckpt)


def test_newer_library_version_warns_naming_both(ckpt):
    from pdae_core._version import __version__

    edit_config(ckpt, lambda c: c.__setitem__("library_version", "99.0.0"))
    with pytest.warns(UserWarning, match=r"99\.0\.0") as rec:
        load_checkpoint(ckpt)
    assert any(__version__ in str(w.message) for w in rec)


def test_same_library_version_does_not_warn(ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(ckpt)


def test_library_version_not_a_string(ckpt):
    edit_config(ckpt, lambda c: c.__setitem__("library_version", ["1"]))
    with pytest.raises(CheckpointError, match="library_version"):
        load_checkpoint(ckpt)
