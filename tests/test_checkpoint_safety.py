"""No data loss when saving (issue 14, items 2-5 and 14): saving never deletes a file it did not
write, an output is locked for a whole run, output problems surface before training, saves killed
at any point leave the previous checkpoint loadable and no leftovers, and `pdae train` refuses
holding out the control or an empty separator.

Processes that hold a lock or get killed midway are forked from the test process (an import of
torch per process would take seconds).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from pdae_core import PDAE, CheckpointError, cli, load_model
from pdae_core.cli import train as cli_train
from pdae_core.models import checkpoint
from pdae_core.models.checkpoint import check_output_dir, read_config
from pdae_core.models.output_lock import lock_path, output_lock, pid_alive

SMALL = dict(latent_dim=3, hidden_dims=(16,), noise_dim=2, n_sources=4)
FAST = ["--epochs", "1", "--batch-size", "32", "--latent-dim", "3", "--hidden-dims", "16", "--noise-dim", "2",
        "--accelerator", "cpu", "-q"]


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def run_cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def in_child(fn) -> int:
    """Fork; the child runs ``fn`` and exits (0, or 1 on an exception) without returning. Returns its PID."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return status


def dead_pid() -> int:
    pid = in_child(lambda: None)
    wait(pid)
    return pid


@pytest.fixture()
def model(tiny_adata) -> PDAE:
    return PDAE.from_anndata(tiny_adata, seed=0, **SMALL)


@pytest.fixture()
def data_file(tmp_path, tiny_adata) -> Path:
    path = tmp_path / "data" / "cells.h5ad"
    path.parent.mkdir()
    tiny_adata.write_h5ad(path)
    return path


@pytest.fixture()
def no_training(monkeypatch):
    """`pdae train` must stop before reading its data."""
    def refuse(args):
        raise AssertionError("data loaded: the output problem was not found before training")

    monkeypatch.setattr(cli_train, "_prepare_data", refuse)


@pytest.fixture()
def lock_holder():
    """Start a process holding the output lock of a path; yields a function path -> PID."""
    pids = []

    def hold(path: Path) -> int:
        r, w = os.pipe()

        def child():
            os.close(r)
            with output_lock(path):
                os.write(w, b"x")
                time.sleep(120)

        pid = in_child(child)
        os.close(w)
        assert os.read(r, 1) == b"x"
        os.close(r)
        pids.append(pid)
        return pid

    yield hold
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        wait(pid)


# ---- item 2: saving never deletes a file it did not write --------------------------------------------


def test_resave_keeps_readme(tmp_path, model, tiny_adata):
    path = tmp_path / "ckpt"
    model.save(path)
    (path / "README.md").write_text("trained on the March data; ask Ana before deleting")
    PDAE.from_anndata(tiny_adata, seed=1, **SMALL).save(path)  # default overwrite=True
    assert (path / "README.md").read_text() == "trained on the March data; ask Ana before deleting"
    assert load_model(path).init_seed == 1
    assert siblings(tmp_path) == ["ckpt"]


def test_foreign_files_are_refused_by_name_and_kept(tmp_path, model):
    path = tmp_path / "ckpt"
    model.save(path)
    (path / "notes.txt").write_text("months of work")
    (path / "README.md").mkdir()  # a folder named like a checkpoint file is not ours either
    with pytest.raises(CheckpointError, match=r"not a pdae_core checkpoint \(it holds \['README\.md', 'notes\.txt'\]\)"):
        model.save(path, overwrite=True)
    assert (path / "notes.txt").read_text() == "months of work" and (path / "README.md").is_dir()


def test_train_overwrite_onto_readme_only_folder_keeps_it(capsys, tmp_path, data_file):
    out = tmp_path / "ck"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    rc, _, err = run_cli(capsys, "train", "--data", data_file, "--out", out, *FAST)
    assert rc == 2 and "--overwrite" in err and "README.md" in err
    rc, _, err = run_cli(capsys, "train", "--data", data_file, "--out", out, "--overwrite", *FAST)
    assert rc == 0, err
    assert (out / "README.md").read_text() == "my notes"
    assert read_config(out)["model_type"] == "pdae"


# ---- item 3: one run per output -----------------------------------------------------------------------


def test_second_train_to_a_locked_output_is_refused_at_start(capsys, tmp_path, data_file, lock_holder, no_training):
    out = tmp_path / "ck"
    holder = lock_holder(out)
    rc, _, err = run_cli(capsys, "train", "--data", data_file, "--out", out, *FAST)
    assert rc == 2 and "Traceback" not in err
    assert f"in use by process {holder} on host {socket.gethostname()!r}" in err and str(lock_path(out)) in err
    assert not out.exists()


def test_save_respects_a_lock_held_by_another_process(tmp_path, model, lock_holder):
    path = tmp_path / "ckpt"
    lock_holder(path)
    with pytest.raises(CheckpointError, match="in use by process"):
        model.save(path)
    assert not path.exists()


def test_train_holds_the_lock_for_the_whole_run(capsys, tmp_path, data_file, monkeypatch):
    out = tmp_path / "ck"
    seen = []
    real = cli_train._prepare_data

    def prepare(args):
        seen.append(json.loads(lock_path(out).read_text())["pid"])
        return real(args)

    monkeypatch.setattr(cli_train, "_prepare_data", prepare)
    rc, _, err = run_cli(capsys, "train", "--data", data_file, "--out", out, *FAST)
    assert rc == 0, err
    assert seen == [os.getpid()]
    assert siblings(tmp_path) == ["ck", "data"]  # released: the lock file is gone


def test_stale_locks_are_taken_over(tmp_path, model):
    path = tmp_path / "ckpt"
    lock = lock_path(path)
    # the owner was killed: its PID no longer runs
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    model.save(path)
    assert siblings(tmp_path) == ["ckpt"]
    # the PID now belongs to another process (its start time differs)
    assert pid_alive(os.getppid())
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "start": "1"}))
    model.save(path)
    assert siblings(tmp_path) == ["ckpt"]
    # a lock file left empty by a crash while creating it, long ago
    lock.write_text("")
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    model.save(path)
    assert siblings(tmp_path) == ["ckpt"]


def test_live_or_foreign_host_locks_are_not_taken_over(tmp_path, model):
    path = tmp_path / "ckpt"
    lock = lock_path(path)
    for info in ({"pid": os.getppid(), "host": socket.gethostname()}, {"pid": 1, "host": "another-node"}):
        lock.write_text(json.dumps(info))
        with pytest.raises(CheckpointError, match=f"in use by process {info['pid']} on host '{info['host']}'"):
            model.save(path)
        assert json.loads(lock.read_text()) == info and not path.exists()
    lock.write_text("")  # being written right now by its owner
    with pytest.raises(CheckpointError, match="in use by another process"):
        model.save(path)


def test_lock_is_reentrant_in_its_thread_and_released(tmp_path, model):
    path = tmp_path / "ckpt"
    with output_lock(path):
        model.save(path)  # train holds the lock, then saves under it
        assert lock_path(path).exists()
    assert siblings(tmp_path) == ["ckpt"]


# ---- item 4: output problems surface before training ---------------------------------------------------


def test_train_checks_the_output_before_training(capsys, tmp_path, data_file, no_training, monkeypatch):
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("months of work")
    rc, _, err = run_cli(capsys, "train", "--data", data_file, "--out", foreign, "--overwrite", *FAST)
    assert rc == 2 and "notes.txt" in err and "Traceback" not in err
    assert siblings(foreign) == ["notes.txt"]

    (tmp_path / "afile").write_text("x")
    rc, _, err = run_cli(capsys, "train", "--data", data_file, "--out", tmp_path / "afile" / "ck", *FAST)
    assert rc == 2 and "is a file, not a folder" in err

    rc, _, err = run_cli(capsys, "train", "--data", data_file, "--out", tmp_path / "afile", *FAST)
    assert rc == 2 and "is not a directory" in err

    def read_only(self, *a, **k):  # a read-only folder (chmod does not stop root, who runs CI)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    rc, _, err = run_cli(capsys, "train", "--data", data_file, "--out", tmp_path / "ro", *FAST)
    assert rc == 2 and f"Cannot write to folder {tmp_path} (Permission denied)" in err


def test_train_finds_a_checkpoint_put_back_before_training(capsys, tmp_path, data_file, model, tiny_adata, no_training):
    """A save killed between its renames leaves no --out: without --overwrite, `pdae train` must not
    find that out after training, when the save puts the previous checkpoint back."""
    out = tmp_path / "ck"
    model.save(out)
    _killed_save(PDAE.from_anndata(tiny_adata, seed=1, **SMALL), out, "between renames")
    assert not out.exists()
    rc, _, err = run_cli(capsys, "train", "--data", data_file, "--out", out, *FAST)
    assert rc == 2 and "pass --overwrite" in err
    assert load_model(out).init_seed == 0


def test_save_refuses_the_current_folder(tmp_path, model, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for target in (".", tmp_path):
        with pytest.raises(CheckpointError, match="is the current folder or holds it"):
            model.save(target)
    assert siblings(tmp_path) == ["work"] and siblings(tmp_path / "work") == []


def test_check_output_dir_returns_the_files_kept(tmp_path):
    assert check_output_dir(tmp_path / "new", overwrite=False) == []
    (tmp_path / "ck").mkdir()
    assert check_output_dir(tmp_path / "ck", overwrite=False) == []  # empty: nothing to replace
    (tmp_path / "ck" / "README.md").write_text("x")
    with pytest.raises(CheckpointError, match=r"already exists and holds \['README\.md'\]; pass --overwrite"):
        check_output_dir(tmp_path / "ck", overwrite=False, flag="--overwrite")
    assert check_output_dir(tmp_path / "ck", overwrite=True) == ["README.md"]
    assert siblings(tmp_path) == ["ck"]  # the write probe leaves nothing


# ---- item 5: killed saves ----------------------------------------------------------------------------


def _killed_save(model, path, where: str) -> None:
    """Save in a child process that SIGKILLs itself at ``where``."""
    def child():
        real_replace, real_rmtree = os.replace, shutil.rmtree
        calls = []

        def replace(src, dst):
            calls.append(src)
            if where == "between renames" and len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)

        def rmtree(p, *a, **k):
            if where == "after swap" and ".old-" in str(p):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_rmtree(p, *a, **k)

        def save_file(*a, **k):
            if where == "while writing":
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace, shutil.rmtree = replace, rmtree
        import safetensors.torch
        if where == "while writing":
            safetensors.torch.save_file = save_file
        model.save(path)

    status = wait(in_child(child))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_save_killed_between_renames_is_recovered_on_load(tmp_path, model, tiny_adata):
    path = tmp_path / "ckpt"
    model.save(path)
    before = files(path)
    _killed_save(PDAE.from_anndata(tiny_adata, seed=1, **SMALL), path, "between renames")
    left = siblings(tmp_path)
    assert "ckpt" not in left and {n.split("-")[0] for n in left} == {".ckpt.old", ".ckpt.tmp", ".ckpt.lock"}
    assert load_model(path).init_seed == 0
    assert files(path) == before and siblings(tmp_path) == ["ckpt"]


def test_checkpoint_deleted_after_a_killed_save_is_not_resurrected(tmp_path, model, tiny_adata):
    path = tmp_path / "ckpt"
    model.save(path)
    _killed_save(PDAE.from_anndata(tiny_adata, seed=1, **SMALL), path, "after swap")
    assert json.loads((path / "config.json").read_text())["init_seed"] == 1  # the swap was done
    assert any(n.startswith(".ckpt.old-") for n in siblings(tmp_path))  # holding the previous checkpoint
    shutil.rmtree(path)  # the user deletes the checkpoint on purpose
    with pytest.raises(CheckpointError, match="not found"):
        load_model(path)
    assert not path.exists()
    model.save(tmp_path / "other")
    assert siblings(tmp_path) == ["other"]


def test_leftovers_are_cleaned_by_the_next_save_and_load(tmp_path, model, tiny_adata):
    path = tmp_path / "ckpt"
    model.save(path)
    _killed_save(model, path, "while writing")
    assert any(n.startswith(".ckpt.tmp-") for n in siblings(tmp_path))
    load_model(path)  # its process is gone: the load cleans it
    assert siblings(tmp_path) == ["ckpt"]
    # names of earlier versions (no PID) are left to the next save, which holds the lock
    for name in (".ckpt.tmp-0123456789ab", ".ckpt.old-k2_x9abc"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"x" * 1000)
    # never touched: other names, another checkpoint's, a file, a live process's
    keep = [".ckpt.tmp-mine", ".ckpt.old-0123456789abc", ".other.tmp-0123456789ab", "ckpt.tmp-0123456789ab"]
    for name in keep:
        (tmp_path / name).mkdir()
    (tmp_path / ".ckpt.tmp-fedcba987654").write_text("a file")
    live = tmp_path / f".ckpt.tmp-{os.getppid()}-0123456789ab"
    live.mkdir()
    load_model(path)
    assert live.exists() and (tmp_path / ".ckpt.tmp-0123456789ab").exists()
    PDAE.from_anndata(tiny_adata, seed=1, **SMALL).save(path)
    assert siblings(tmp_path) == sorted(["ckpt", ".ckpt.tmp-fedcba987654", *keep])


def test_twenty_saves_killed_at_random_points(tmp_path, tiny_adata):
    """Each save (a forked process, ~20 MB of weights) is killed (SIGKILL) after a random delay within
    the duration of a save: the previous checkpoint (or, if the kill came after the swap, the new one)
    always loads, and after the next normal save no leftover folder remains."""
    big = dict(latent_dim=8, hidden_dims=(1536, 1536), noise_dim=2, n_sources=4)
    models = [PDAE.from_anndata(tiny_adata, seed=s, **big) for s in (0, 1)]
    path = tmp_path / "ckpt"
    models[1].save(path)
    valid = {read_config(path)["weights_sha256"]}
    models[0].save(path)
    valid.add(read_config(path)["weights_sha256"])
    durations = []
    for m in models + models[:1]:
        start = time.perf_counter()
        assert wait(in_child(lambda m=m: m.save(path))) == 0
        durations.append(time.perf_counter() - start)
    duration = sorted(durations)[1]
    rng = random.Random(0)
    src = tiny_adata[:5]
    expected = {m.predict(src, "P1", seed=0).X.tobytes() for m in models}
    interrupted = 0
    for i in range(20):
        pid = in_child(lambda i=i: models[i % 2].save(path))
        time.sleep(rng.uniform(0, duration))
        os.kill(pid, signal.SIGKILL)
        wait(pid)
        interrupted += any(n != "ckpt" for n in siblings(tmp_path)) or not path.exists()
        if i % 2:  # check half of the kills at once; let the others' leftovers pile up for the next save
            assert read_config(path)["weights_sha256"] in valid
            assert load_model(path).predict(src, "P1", seed=0).X.tobytes() in expected
    assert interrupted > 0  # some kills did hit a save midway
    models[0].save(path)
    assert siblings(tmp_path) == ["ckpt"]
    np.testing.assert_array_equal(load_model(path).predict(src, "P1", seed=0).X, models[0].predict(src, "P1", seed=0).X)


# ---- item 14 (CLI part) --------------------------------------------------------------------------------


def test_train_refuses_holding_out_the_control(capsys, tmp_path, data_file):
    rc, _, err = run_cli(capsys, "train", "--data", data_file, "--out", tmp_path / "ck", "--holdout", "control", *FAST)
    assert rc == 2 and "the control condition ('control') cannot be held out" in err
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("flag", ["--separator", "--control", "--perturbation-key"])
def test_train_refuses_empty_keys(capsys, tmp_path, data_file, flag, no_training):
    rc, _, err = run_cli(capsys, "train", "--data", data_file, "--out", tmp_path / "ck", flag, "", *FAST)
    assert rc == 2 and f"{flag} is empty" in err


def test_module_docstring_documents_the_save_sequence():
    doc = checkpoint.__doc__
    assert ".NAME.tmp-PID-TOKEN" in doc and ".NAME.old-PID-TOKEN" in doc and "never put back" in doc
