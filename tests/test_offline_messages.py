"""Clear offline messages (issue 18 part 5): when a dataset file is missing and cannot be
downloaded, the message's first sentence names the file and the data folder; the command line
words the remedy with its own options (no Python ``data_dir=`` / ``download=True``, no
'(command line' fragment), and the dashboard's Data page names the file too."""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

import pytest

from pdae_core import cli
from pdae_core.data.datasets import download
from pdae_core.data.datasets.download import DataFileUnavailableError, fetch_file
from pdae_core.errors import DatasetUnavailableError

ROOT = Path(__file__).resolve().parents[1]
FILE = "perturbench_devel.h5ad"  # the file of norman19_devel and mcfaline23_devel


def first_sentence(text: str) -> str:
    return text.split(". ")[0]


@pytest.fixture()
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(download, "_urlopen", refuse)


def cli_error(capsys, *args: str) -> str:
    capsys.readouterr()
    assert cli.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err[len("error: "):].strip()


# ---------------------------------------------------------------------------------
# the library


def test_missing_file_without_download(tmp_path):
    url = "https://example.org/data/a.h5ad"
    with pytest.raises(DataFileUnavailableError) as e:
        fetch_file("a.h5ad", url, None, data_dir=tmp_path, download=False)
    err = e.value
    assert isinstance(err, DatasetUnavailableError)
    assert (err.filename, err.folder, err.url) == ("a.h5ad", tmp_path, url)
    assert first_sentence(str(err)) == f"a.h5ad is not in the data folder {tmp_path}, and downloads are turned off"
    assert str(err) == (
        f"{err.problem} Call again with download=True, download it from {url} and save it as {tmp_path / 'a.h5ad'}, "
        "or point data_dir= or $PDAE_DATA_DIR at a folder that has a.h5ad."
    )
    assert "(command line" not in str(err)


def test_missing_file_that_cannot_be_downloaded(tmp_path, offline):
    url = "https://example.org/data/a.h5ad"
    with pytest.raises(DataFileUnavailableError) as e:
        fetch_file("a.h5ad", url, None, data_dir=tmp_path)
    first = first_sentence(str(e.value))
    assert first.startswith(f"Could not download a.h5ad from {url} into the data folder {tmp_path} (URLError")
    assert str(e.value).count(". ") == 1 and str(e.value).endswith("at a folder that has a.h5ad.")
    with pytest.raises(DataFileUnavailableError) as e:
        fetch_file("b.h5ad", None, None, data_dir=tmp_path)
    assert first_sentence(str(e.value)) == f"b.h5ad is not in the data folder {tmp_path} and has no public download address"
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------
# the command line


def test_cli_no_download_names_file_and_folder(capsys, tmp_path):
    empty = tmp_path / "empty"
    for command in (["train", "--out", tmp_path / "ck"], ["benchmark", "--out", tmp_path / "bench"]):
        err = cli_error(capsys, *command, "--dataset", "norman19_devel", "--data-dir", empty, "--no-download")
        assert first_sentence(err) == f"{FILE} is not in the data folder {empty}, and downloads are turned off", err
        assert f"save it in {empty}, drop --no-download to let pdae fetch it, or pass --data-dir DIR" in err
        assert "(command line" not in err and "data_dir=" not in err and "download=True" not in err
        assert err.endswith(".") and err.count(". ") == 1
    assert not (tmp_path / "ck").exists() and not (tmp_path / "bench").exists()


def test_cli_failed_download_names_file_and_folder(capsys, tmp_path, offline):
    empty = tmp_path / "empty"
    err = cli_error(capsys, "train", "--dataset", "mcfaline23_devel", "--data-dir", empty, "--out", tmp_path / "ck")
    first = first_sentence(err)
    assert first.startswith(f"Could not download {FILE} from https://") and f"into the data folder {empty} (URLError" in first
    assert err.endswith(f"and save it in {empty}, or pass --data-dir DIR (or set $PDAE_DATA_DIR) for a folder that has it.")
    assert "--no-download" not in err and "(command line" not in err and "data_dir=" not in err


def test_cli_adds_its_options_to_a_loaders_own_message(capsys, tmp_path):
    err = cli_error(capsys, "train", "--dataset", "papalexi21", "--data-dir", tmp_path, "--no-download",
                    "--out", tmp_path / "ck")
    assert err.startswith(f"papalexi21 needs papalexi2021_eccite.h5ad or sceptredata's public file in {tmp_path}")
    assert err.endswith("On the command line, drop --no-download to fetch it, pass --data-dir DIR for a folder that "
                        "holds it, or set $PDAE_DATA_DIR.")
    assert "(command line" not in err


# ---------------------------------------------------------------------------------
# the dashboard


def test_data_page_names_the_missing_file_and_its_folder(tmp_path, monkeypatch, offline):
    from streamlit.testing.v1 import AppTest

    if str(ROOT) not in sys.path:  # app.py imports pages.common from the repository root
        monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("PDAE_DATA_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    warning = at.warning[0].value
    assert first_sentence(warning) == (
        f"norman19_devel is not on this machine and could not be downloaded: its file {FILE} is not in {tmp_path}"
    )
    assert "PDAE_DATA_DIR" in warning and "(command line" not in warning
