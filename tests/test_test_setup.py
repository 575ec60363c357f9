"""The test set-up of conftest.py: which folder the real data comes from, what is downloaded
there, and where the browser tests' screenshots go (issue 18: tests anyone can run)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import platformdirs
import pytest
from conftest import (
    REPO,
    SCREENSHOTS,
    data_dir_line,
    fetch_missing,
    pick_data_dir,
    public_files,
    screenshot_dir,
)

from pdae_core.data.datasets.download import RemoteFile, default_data_dir


def _clone(tmp_path: Path, shared: bool) -> Path:
    """A fake clone ``tmp_path/clone``, with ``tmp_path/shared/data`` next to it when ``shared``."""
    repo = tmp_path / "clone"
    repo.mkdir()
    if shared:
        (tmp_path / "shared" / "data").mkdir(parents=True)
    return repo


def test_env_var_wins_over_shared_data(tmp_path, monkeypatch):
    repo = _clone(tmp_path, shared=True)
    monkeypatch.setenv("PDAE_DATA_DIR", str(tmp_path / "mine"))
    assert pick_data_dir(repo) == (tmp_path / "mine", "env")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PDAE_DATA_DIR", " ~/data ")
    assert pick_data_dir(repo) == (tmp_path / "data", "env")


@pytest.mark.parametrize("value", [None, "", "  "])
def test_shared_data_next_to_the_clone_when_no_env_var(tmp_path, monkeypatch, value):
    repo = _clone(tmp_path, shared=True)
    if value is None:
        monkeypatch.delenv("PDAE_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("PDAE_DATA_DIR", value)
    assert pick_data_dir(repo) == (tmp_path / "shared" / "data", "shared")


def test_user_cache_in_a_lone_clone(tmp_path, monkeypatch):
    repo = _clone(tmp_path, shared=False)
    monkeypatch.delenv("PDAE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # platformdirs follows it on Linux
    folder, source = pick_data_dir(repo)
    assert source == "cache"
    assert folder == default_data_dir() == Path(platformdirs.user_cache_dir("pdae_core"))
    assert not (tmp_path / "shared").exists() and not folder.exists()  # choosing creates nothing


def test_the_session_line_names_the_folder_and_the_downloads(tmp_path):
    for source in ("env", "shared", "cache"):
        line = data_dir_line(tmp_path, source)
        assert line.startswith(f"pdae tests: real data from {tmp_path}") and "\n" not in line
        assert "downloaded from their public sources on first use" in line
    assert "user cache" in data_dir_line(tmp_path, "cache") and "$PDAE_DATA_DIR" in data_dir_line(tmp_path, "env")
    with pytest.raises(KeyError):
        data_dir_line(tmp_path, "elsewhere")


def _remote(src: Path, name: str) -> RemoteFile:
    return RemoteFile(name, src.as_uri(), hashlib.sha256(src.read_bytes()).hexdigest())


def test_fetch_missing_downloads_only_what_is_missing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.bin", "orig1.csv", "orig2.csv"):
        (src / name).write_bytes(name.encode() * 10)
    dest = tmp_path / "cache"
    a, o1, o2 = _remote(src / "a.bin", "a.bin"), _remote(src / "orig1.csv", "o1.csv"), _remote(src / "orig2.csv", "o2.csv")
    converted = RemoteFile("converted.h5ad", None, "0" * 64)
    files = [a, (converted, [o1, o2])]
    assert fetch_missing(dest, files) == ["a.bin", "o1.csv", "o2.csv"]
    assert (dest / "o1.csv").read_bytes() == (src / "orig1.csv").read_bytes()
    assert fetch_missing(dest, files) == []  # all there: nothing downloaded again
    (dest / "o2.csv").unlink()
    (dest / "a.bin").write_bytes(b"a local copy is left alone")
    assert fetch_missing(dest, files) == ["o2.csv"]
    assert (dest / "a.bin").read_bytes() == b"a local copy is left alone"
    # the converted file present: its originals are not needed
    (dest / "o1.csv").unlink()
    (dest / "converted.h5ad").write_bytes(b"x")
    assert fetch_missing(dest, files) == [] and not (dest / "o1.csv").exists()


def test_the_shared_data_needs_no_download(data_dir):
    """Every file the tests read with a public source is listed and present in the test data."""
    names = [e.filename if not isinstance(e, tuple) else e[0].filename for e in public_files()]
    assert names == ["perturbench_devel.h5ad", "norman2019_pseudobulk.npz", "schraivogel2020_tapseq.h5ad",
                     "papalexi2021_eccite.h5ad"]
    assert all(e.url for e in public_files() if not isinstance(e, tuple))
    assert all(rf.url for e in public_files() if isinstance(e, tuple) for rf in e[1])
    assert fetch_missing(data_dir, public_files()) == []


def test_screenshots_go_to_a_temporary_folder_unless_asked(tmp_path, request):
    assert request.config.getoption("--update-screenshots") is False  # the option exists, off by default
    assert screenshot_dir(False, {}, tmp_path) == tmp_path
    assert screenshot_dir(False, {"PDAE_UPDATE_SCREENSHOTS": "0"}, tmp_path) == tmp_path
    assert screenshot_dir(True, {}, tmp_path) == SCREENSHOTS
    assert screenshot_dir(False, {"PDAE_UPDATE_SCREENSHOTS": "1"}, tmp_path) == SCREENSHOTS
    assert SCREENSHOTS == REPO / "docs" / "screenshots" and (SCREENSHOTS / "glossary.png").is_file()


def test_the_screenshots_fixture_is_outside_the_repository(screenshots):
    assert screenshots.is_dir() and not screenshots.resolve().is_relative_to(REPO)
