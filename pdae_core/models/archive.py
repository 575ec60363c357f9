"""A checkpoint packed in a ``.zip`` (as the dashboard's Model page downloads it), loaded with
the same checks as a checkpoint directory (:func:`~.checkpoint.load_checkpoint`, digests of
:mod:`.integrity`).

The archive comes from someone else, so it is read defensively before anything is written:

* it must be a zip archive with at most :data:`MAX_ENTRIES` entries, none encrypted, none a
  symbolic link or other special file, and no two with the same name;
* every name is a plain relative path (no ``/`` or drive at the start, no ``..``, no ``.``, no
  backslash): the files of a checkpoint (``config.json``, ``model.safetensors``, optionally
  ``README.md``) either at the root or all inside one top-level folder, nothing deeper. Entries
  that macOS adds when zipping (``__MACOSX/``, ``.DS_Store``) are skipped, never written;
* the sizes recorded in the archive add up to at most ``max_bytes``, and the bytes actually
  written are counted as well, so a zip bomb stops at the cap.

Only the checkpoint's file names are written, each by name into a private temporary folder
(mode 0700) that is always removed, loaded or not. Every error is a :class:`CheckpointError`
that names the uploaded file (``name``) and says what was wrong, never the temporary folder.
"""

from __future__ import annotations

import io
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import CheckpointError
from .checkpoint import ALLOWED_FILES, CONFIG, WEIGHTS

__all__ = ["DEFAULT_MAX_BYTES", "MAX_ENTRIES", "load_model_archive", "read_archive"]

#: Cap on the total uncompressed size of an archive (and on the archive itself).
DEFAULT_MAX_BYTES = 2**30
#: Cap on the number of entries (files and folders) in an archive.
MAX_ENTRIES = 16
_SKIPPED_NAMES = {".DS_Store"}
_SKIPPED_FOLDER = "__MACOSX"
_CHUNK = 1 << 20


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB"):
        if n < 1024 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    return ""  # unreachable


def _fail(name: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"{name}: {what} A checkpoint archive holds {CONFIG} and {WEIGHTS} (and optionally README.md), "
        "at its root or in one folder, as the Model page's download button makes it."
    )


def _entry_parts(name: str, raw: str) -> tuple[str, ...]:
    """The path components of one entry name, refusing anything that is not a plain relative path."""
    shown = repr(raw[:80])
    if "\x00" in raw or "\\" in raw:
        raise _fail(name, f"the entry {shown} has a backslash or a NUL in its name; refusing to unpack it.")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise _fail(name, f"the entry {shown} is an absolute path; refusing to unpack it.")
    parts = raw.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise _fail(name, f"the entry {shown} points outside its folder (it has '..', '.' or an empty part); "
                    "refusing to unpack it.")
    return tuple(parts)


def _is_skipped(parts: tuple[str, ...]) -> bool:
    return parts[0] == _SKIPPED_FOLDER or parts[-1] in _SKIPPED_NAMES


def read_archive(data: bytes, name: str, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, zipfile.ZipInfo]:
    """Check the archive ``data`` (uploaded as ``name``) without unpacking it; returns the checkpoint's
    files (file name -> zip entry). Raises :class:`CheckpointError` naming ``name`` on anything amiss."""
    name = PurePosixPath(str(name).replace("\\", "/")).name or "the upload"
    if not data:
        raise _fail(name, "the file is empty.")
    if len(data) > max_bytes:
        raise _fail(name, f"the file is {_size(len(data))}, more than the {_size(max_bytes)} a checkpoint "
                    "archive may have.")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError):
        raise _fail(name, "this is not a zip archive (or a damaged one).") from None
    with zf:
        entries = zf.infolist()
    if len(entries) > MAX_ENTRIES:
        raise _fail(name, f"the archive has {len(entries)} entries, more than the {MAX_ENTRIES} a checkpoint "
                    "archive may have.")
    files: dict[str, zipfile.ZipInfo] = {}
    folders: set[str] = set()
    seen: set[str] = set()
    total = 0
    for info in entries:
        raw = info.filename
        if raw in seen:
            raise _fail(name, f"the entry {raw[:80]!r} appears twice; refusing an ambiguous archive.")
        seen.add(raw)
        parts = _entry_parts(name, raw)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _fail(name, f"the entry {raw[:80]!r} is a symbolic link; refusing to unpack it.")
        if info.is_dir():
            if len(parts) > 1 and not _is_skipped(parts):
                raise _fail(name, f"the folder {raw[:80]!r} is nested; the files must be at the root or in one folder.")
            if not _is_skipped(parts):
                folders.add(parts[0])
            continue
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise _fail(name, f"the entry {raw[:80]!r} is not a regular file; refusing to unpack it.")
        if _is_skipped(parts):
            continue
        if info.flag_bits & 0x1:
            raise _fail(name, f"the entry {raw[:80]!r} is encrypted; upload an archive without a password.")
        if len(parts) > 2:
            raise _fail(name, f"the entry {raw[:80]!r} is nested too deep; the files must be at the root or in "
                        "one folder.")
        if parts[-1] not in ALLOWED_FILES:
            raise _fail(name, f"it holds {raw[:80]!r}, which is not a checkpoint file; refusing it "
                        "(pickles and other executable formats are never loaded).")
        if len(parts) == 2:
            folders.add(parts[0])
        else:
            folders.add("")
        if parts[-1] in files:
            raise _fail(name, f"it holds {parts[-1]} twice; refusing an ambiguous archive.")
        total += info.file_size
        if total > max_bytes:
            raise _fail(name, f"its files unpack to more than {_size(max_bytes)}; refusing to unpack it.")
        files[parts[-1]] = info
    if len(folders) > 1:
        shown = sorted("(the root)" if f == "" else f"{f}/" for f in folders)
        raise _fail(name, f"its files are spread over several places ({', '.join(shown)}).")
    for need in (CONFIG, WEIGHTS):
        if need not in files:
            raise _fail(name, f"{need} is missing from the archive.")
    return files


def _unpack(data: bytes, name: str, files: dict[str, zipfile.ZipInfo], into: Path, max_bytes: int) -> None:
    """Write the checked entries ``files`` into the folder ``into`` by their file name, counting bytes."""
    written = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for fname, info in files.items():
                with zf.open(info) as src, open(into / fname, "xb") as dst:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise _fail(name, f"its files unpack to more than {_size(max_bytes)}; "
                                        "refusing to unpack it.")
                        dst.write(chunk)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, ValueError) as e:
        raise _fail(name, f"the archive is damaged or uses an unsupported compression ({e}).") from None
    except OSError as e:
        raise CheckpointError(f"{name}: could not unpack it to a temporary folder ({e.strerror or e}).") from None


def _renamed(message: str, folder: Path, name: str) -> str:
    """A message about the temporary checkpoint folder, naming the uploaded file instead."""
    return message.replace(f"{folder}/", f"{name}: ").replace(str(folder), name)


def load_model_archive(
    data: bytes, name: str, accelerator: str = "cpu", trust_modified: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Any:
    """Load the checkpoint in the zip archive ``data`` (uploaded as ``name``).

    The archive is checked (:func:`read_archive`), its checkpoint files are written to a private
    temporary folder, always removed, and loaded with every check of a checkpoint directory: a
    checkpoint modified after saving is refused unless ``trust_modified``. Raises
    :class:`CheckpointError` with a message that names ``name``."""
    from .checkpoint import load_checkpoint

    shown = PurePosixPath(str(name).replace("\\", "/")).name or "the upload"
    files = read_archive(data, shown, max_bytes=max_bytes)
    with tempfile.TemporaryDirectory(prefix="pdae_archive_", ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp) / "checkpoint"
        folder.mkdir(mode=0o700)
        _unpack(data, shown, files, folder, max_bytes)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = load_checkpoint(folder, accelerator=accelerator, trust_modified=trust_modified)
        except CheckpointError as e:
            raise CheckpointError(_renamed(str(e), folder, shown)) from None
        for w in caught:  # say them again, about the uploaded file
            warnings.warn(_renamed(str(w.message), folder, shown), w.category, stacklevel=2)
    return model
