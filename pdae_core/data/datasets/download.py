"""The data directory and checked downloads of the files the datasets are read from.

Files live in a data directory (:func:`default_data_dir`: the ``data_dir`` argument,
else ``$PDAE_DATA_DIR``, else the user cache ``platformdirs.user_cache_dir("pdae_core")``).
A missing file is downloaded from its public source (``download=True``) into a
temporary file in that directory, checked against its pinned sha256 and only then
moved into place, so an interrupted download never leaves a half-written file under
the real name. Files already present are checked against the same hash.

A file that is missing and not downloaded raises :class:`DataFileUnavailableError`: its first
sentence (``problem``) names the file and the data folder, the rest says what to do from
Python; the command line and the dashboard word that remedy for their own controls from the
error's ``filename``, ``folder`` and ``url``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import DataError, DatasetUnavailableError

__all__ = ["ENV_VAR", "DataFileUnavailableError", "RemoteFile", "default_data_dir", "fetch_file", "fetch_remote",
           "is_present"]

log = logging.getLogger(__name__)

#: Environment variable naming the data directory.
ENV_VAR = "PDAE_DATA_DIR"

#: Bytes read or written at a time.
CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class DataFileUnavailableError(DatasetUnavailableError):
    """A file of the data folder is missing and was not downloaded (downloads off, no address,
    or the download failed). ``problem``: one sentence naming the file and the folder, and why;
    the message is ``problem`` followed by what to do from Python (``remedy``)."""

    def __init__(self, filename: str, folder: Path, url: str | None, problem: str, remedy: str) -> None:
        super().__init__(f"{problem} {remedy}")
        self.filename, self.folder, self.url, self.problem = filename, Path(folder), url, problem


@dataclass(frozen=True)
class RemoteFile:
    """A file of the data directory and the public address it is downloaded from."""

    filename: str
    url: str | None
    sha256: str | None
    note: str = ""


def default_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$PDAE_DATA_DIR``, else the user cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("pdae_core"))


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_args(filename: str, sha256: str | None) -> str | None:
    if not filename or Path(filename).name != filename or filename in (".", ".."):
        raise DataError(f"Dataset file name {filename!r} must be a plain file name (no directories).")
    if sha256 is None:
        return None
    sha = str(sha256).strip().lower()
    if not _SHA256_RE.match(sha):
        raise DataError(f"sha256 for {filename!r} must be 64 hexadecimal digits, got {sha256!r}.")
    return sha


def _urlopen(url: str, timeout: float = _TIMEOUT_S) -> Any:
    """Open ``url`` (http, https or file); a seam for tests."""
    req = urllib.request.Request(url, headers={"User-Agent": "pdae_core (python urllib)"})
    return urllib.request.urlopen(req, timeout=timeout)


def _remedy(filename: str, url: str | None, path: Path, first: str = "") -> str:
    """What to do from Python about a missing ``filename`` (to be saved as ``path``): one sentence,
    starting with the option ``first`` (e.g. ``"try again, "``) when given."""
    where = f"download it from {url} and save it as {path}" if url else f"place it at {path}"
    text = f"{first}{where}, or point data_dir= or ${ENV_VAR} at a folder that has {filename}."
    return text[0].upper() + text[1:]


def _unavailable(dest: Path, url: str | None, problem: str, first: str = "") -> DataFileUnavailableError:
    return DataFileUnavailableError(dest.name, dest.parent, url, problem, _remedy(dest.name, url, dest, first))


def _download(url: str, dest: Path, sha256: str | None) -> None:
    """Download ``url`` to ``dest`` through a temporary file in the same folder."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise DataFileUnavailableError(
            dest.name, dest.parent, url,
            f"Cannot write to the data folder {dest.parent} ({e}) to download {dest.name} from {url}.",
            f"Choose a writable folder with data_dir= or ${ENV_VAR}, or save the file there yourself.",
        ) from e
    tmp = Path(tmp_name)
    log.info("Downloading %s from %s", dest.name, url)
    try:
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as out, _urlopen(url) as resp:
            expected_len = None
            headers = getattr(resp, "headers", None)
            if headers is not None and headers.get("Content-Length"):
                try:
                    expected_len = int(headers.get("Content-Length"))
                except ValueError:
                    expected_len = None
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if expected_len is not None and n != expected_len:
            raise _unavailable(dest, url, f"The download of {dest.name} from {url} into the data folder "
                               f"{dest.parent} was cut short ({n} of {expected_len} bytes).", "try again, ")
        if n == 0:
            raise _unavailable(dest, url, f"The download of {dest.name} from {url} into the data folder "
                               f"{dest.parent} returned no data.")
        actual = h.hexdigest()
        if sha256 is not None and actual != sha256:
            raise _unavailable(dest, url, f"{dest.name} was downloaded from {url} into the data folder {dest.parent} "
                               f"but its sha256 is {actual}, expected {sha256} (the server sent a different or "
                               "damaged file, which was not kept).")
        os.replace(tmp, dest)
    except DatasetUnavailableError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as e:  # URLError, HTTPError, timeouts, OSError, bad URLs (ValueError)
        tmp.unlink(missing_ok=True)
        raise _unavailable(dest, url, f"Could not download {dest.name} from {url} into the data folder {dest.parent} "
                           f"({type(e).__name__}: {e}).") from e
    except BaseException:  # KeyboardInterrupt: leave nothing half-written behind
        tmp.unlink(missing_ok=True)
        raise


def fetch_file(
    filename: str,
    url: str | None,
    sha256: str | None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Path:
    """Local path of ``filename`` in the data directory, downloading it from ``url`` if missing.

    A file that is present is checked against ``sha256`` (skipped when ``sha256`` is
    None); a mismatch raises :class:`DataError` naming the file and both hashes. A
    missing file is downloaded when ``download`` is true (to a temporary file in the
    same folder, hash-checked, then atomically renamed), otherwise, or when the
    download fails, :class:`DatasetUnavailableError` says where to put it by hand.
    """
    sha = _check_args(filename, sha256)
    root = default_data_dir(data_dir)
    path = root / filename
    if path.is_dir():
        raise DataError(f"{path} is a directory; expected the data file {filename}.")
    if path.exists():
        if sha is not None:
            actual = _sha256_of(path)
            if actual != sha:
                raise DataError(
                    f"{path} does not match the expected checksum: sha256 expected {sha}, found {actual}. "
                    "It is damaged, incomplete or another version; delete it"
                    + (f" to download it again from {url}" if url else "")
                    + " or replace it with the right file."
                )
        return path
    if not download:
        raise _unavailable(path, url, f"{filename} is not in the data folder {root}, and downloads are turned off.",
                           "call again with download=True, " if url else "")
    if not url:
        raise _unavailable(path, None, f"{filename} is not in the data folder {root} and has no public download "
                           "address.")
    _download(url, path, sha)
    return path


def fetch_remote(rf: RemoteFile, data_dir: Path, download: bool) -> Path:
    """:func:`fetch_file` of a :class:`RemoteFile`."""
    return fetch_file(rf.filename, rf.url, rf.sha256, data_dir=data_dir, download=download)


def is_present(root: Path, rf: RemoteFile) -> bool:
    """True when ``rf`` is already a file of the data directory ``root``."""
    return (root / rf.filename).is_file()
