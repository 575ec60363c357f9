"""Issue 14: property-based fuzzing of the checkpoint loader (hypothesis).

Random edits of ``config.json`` and of the safetensors header of a small saved PDAE:

* left with the digests recorded at saving, every edited checkpoint either loads a model whose
  predictions equal the original's (an edit that changes nothing hashed, e.g. swapping equal
  elements) or raises :class:`CheckpointError`: never another exception, never a silently
  different prediction;
* with the digests recomputed (a forger's checkpoint, which no digest can catch), loading
  raises :class:`CheckpointError` or gives a model whose prediction either works or raises a
  :class:`PDAEError`: never a crash of another kind.

The examples are derandomised, so CI runs the same ones every time; set ``PDAE_FUZZ_EXAMPLES``
to run more (e.g. 3000) when changing the loader.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdae_core import PDAE, CheckpointError, PDAEError, load_model
from pdae_core.data.synthetic import make_synthetic
from pdae_core.models.integrity import seal

EXAMPLES = int(os.environ.get("PDAE_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TARGET = "P1+P4"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    adata, _ = make_synthetic(n_perturbations=4, latent_dim=3, n_genes=12, hidden=8, n_doubles=3,
                              cells_per_condition=12, seed=2)
    model = PDAE.from_anndata(adata, seed=0, latent_dim=3, hidden_dims=(8,), noise_dim=2, n_sources=4)
    model.fit(adata, holdout=[TARGET], max_epochs=1, batch_size=32, seed=0, accelerator="cpu")
    path = tmp_path_factory.mktemp("fuzz") / "ckpt"
    model.save(path)
    source = adata[adata.obs["condition"] == "control"].copy()
    reference = load_model(path).predict(source, TARGET, seed=0).X.copy()
    return path, source, reference


# ---- edits of a JSON document --------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


@st.composite
def json_edits(draw, doc: dict) -> dict:
    """``doc`` with one to three random edits (replace, delete, insert, swap, tweak, retype)."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths[1:] if len(paths) > 1 else paths))
        parent, key = (_get(doc, path[:-1]), path[-1]) if path else (None, None)
        node = _get(doc, path)
        op = draw(st.sampled_from(["replace", "delete", "insert", "swap", "tweak", "retype"]))
        if op == "replace" and parent is not None:
            parent[key] = draw(json_values)
        elif op == "delete" and parent is not None:
            del parent[key]
        elif op == "insert" and isinstance(node, dict):
            node[draw(st.text(max_size=12))] = draw(json_values)
        elif op == "insert" and isinstance(node, list):
            node.insert(draw(st.integers(0, len(node))), draw(json_values))
        elif op == "swap" and isinstance(node, list) and len(node) >= 2:
            i, j = draw(st.integers(0, len(node) - 1)), draw(st.integers(0, len(node) - 1))
            node[i], node[j] = node[j], node[i]
        elif op == "tweak" and parent is not None and isinstance(node, (int, float)) and not isinstance(node, bool):
            parent[key] = draw(st.sampled_from([node + 1, -node, 0, node * 1000, node / 2 if node else 1e-9]))
        elif op == "retype" and parent is not None:
            parent[key] = draw(st.sampled_from([str(node), [node], {"v": node}, None]))
    return doc


# ---- the checkpoint on disk ----------------------------------------------------------------


def _copy(src: Path, tmp: Path, n: list[int]) -> Path:
    n[0] += 1
    d = tmp / f"ck{n[0]}"
    shutil.copytree(src, d)
    return d


def _write_config(ckpt: Path, cfg: dict, forge: bool) -> None:
    if forge:
        try:
            seal(cfg)
        except CheckpointError:  # NaN or infinity in the edit: a forger cannot seal it either
            pass
    (ckpt / "config.json").write_text(json.dumps(cfg, indent=1))


def _split_weights(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _check(ckpt: Path, source, reference: np.ndarray, forged: bool) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(ckpt)
    except CheckpointError:
        return
    if not forged:  # the digests were kept: only a change that hashes the same can load
        np.testing.assert_array_equal(model.predict(source, TARGET, seed=0).X, reference)
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = model.predict(source, TARGET, seed=0)
    except PDAEError:
        return
    assert pred.n_obs == source.n_obs


@FUZZ
@given(data=st.data(), forge=st.booleans())
def test_random_config_edits(original, tmp_path_factory, data, forge):
    path, source, reference = original
    cfg = json.loads((path / "config.json").read_text())
    edited = data.draw(json_edits(cfg))
    ckpt = _copy(path, tmp_path_factory.mktemp("cfg"), [0])
    _write_config(ckpt, edited, forge)
    _check(ckpt, source, reference, forged=forge)


@FUZZ
@given(data=st.data(), forge=st.booleans())
def test_random_safetensors_header_edits(original, tmp_path_factory, data, forge):
    import hashlib

    path, source, reference = original
    header, body = _split_weights((path / "model.safetensors").read_bytes())
    edited = data.draw(json_edits(header))
    ckpt = _copy(path, tmp_path_factory.mktemp("hdr"), [0])
    head = json.dumps(edited).encode()
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + body)
    if forge:  # the forger also records the new weights' hash
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["weights_sha256"] = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
        _write_config(ckpt, cfg, True)
    _check(ckpt, source, reference, forged=forge)


def test_the_fuzzer_reaches_both_outcomes(original, tmp_path):
    """The properties are not vacuous: an edit that hashes the same loads, one that does not is refused."""
    path, source, reference = original
    cfg = json.loads((path / "config.json").read_text())
    same = dict(reversed(list(cfg.items())))
    ckpt = _copy(path, tmp_path, [0])
    _write_config(ckpt, same, forge=False)
    _check(ckpt, source, reference, forged=False)
    assert load_model(ckpt).is_trained
    cfg["registry"]["perturbations"].reverse()
    ckpt = _copy(path, tmp_path, [1])
    _write_config(ckpt, cfg, forge=False)
    with pytest.raises(CheckpointError):
        load_model(ckpt)
