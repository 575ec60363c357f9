"""A lock on an output path, held for a whole run, so that two runs never write the same output.

The lock is a file ``.NAME.lock`` next to the output ``NAME``, created atomically
(``O_CREAT | O_EXCL``) and holding ``{"pid", "host", "start", "created"}`` of its owner.
It is removed when the owner releases it. A lock whose owner is gone (same host, and
the PID is not running, or runs another process than the one recorded, by its start
time) is stale and taken over; a lock of a live process, or of another host, is refused
with a :class:`~pdae_core.errors.CheckpointError` naming the owner and the lock file.

Taking over a stale lock is serialised by ``flock`` on the stale file, and the stale
file is unlinked only while the path still names that very file, so two processes
taking over the same stale lock cannot both win. Within one process the lock is
re-entrant for the thread that holds it (``pdae train`` holds it for the whole run, and
the save it ends with takes it again).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CheckpointError

try:  # not on Windows: there, taking over a stale lock is not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

_HELD: dict[str, tuple[int, int, int]] = {}  # lock path -> (process id, thread id, depth)
_HELD_GUARD = threading.Lock()
_UNREADABLE_GRACE_S = 10.0  # a lock file without valid content older than this is stale (crash while creating it)


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of output ``path``: ``.NAME.lock`` in the same folder."""
    path = Path(os.path.abspath(path))
    return path.with_name(f".{path.name}.lock")


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: /proc), to tell a reused PID from its first owner."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs (and, if ``start`` is given, is the one that started then)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    if start is not None:
        now = _start_time(pid)
        if now is not None and now != start:
            return False
    return True


def _owner_info() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
            "created": time.time()}


def _read(lock: Path) -> dict | None:
    try:
        info = json.loads(lock.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or not isinstance(info.get("host"), str):
        return None
    return info


def _describe(info: dict | None) -> str:
    if info is None:
        return "another process"
    when = info.get("created")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else ""
    return f"process {info['pid']} on host {info['host']!r}{since}"


def _is_stale(lock: Path, info: dict | None) -> bool:
    if info is None:
        try:
            return time.time() - lock.stat().st_mtime > _UNREADABLE_GRACE_S
        except OSError:
            return False
    if info["host"] != socket.gethostname():
        return False  # cannot tell whether a process on another machine still runs
    start = info.get("start") if isinstance(info.get("start"), str) else None
    return not pid_alive(info["pid"], start)


def _remove_if_same(lock: Path) -> None:
    """Unlink the stale ``lock``, unless another process replaced it meanwhile."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return
        if same and _is_stale(lock, _read(lock)):
            os.unlink(lock)
    finally:
        os.close(fd)  # releases the flock


def _acquire(lock: Path, what: str) -> None:
    info: dict | None = None
    for _ in range(50):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = _read(lock)
            if info is None:  # being written right now, or left by a crash while being written
                time.sleep(0.02)
                info = _read(lock)
            if _is_stale(lock, info):
                _remove_if_same(lock)
                continue
            raise CheckpointError(
                f"{what} is in use by {_describe(info)} (lock file {lock}): two runs must not write the same "
                "output; wait for the other run to finish or choose another output. If no such run is active, "
                "delete the lock file."
            ) from None
        except FileNotFoundError:
            raise CheckpointError(f"Cannot lock {what}: folder {lock.parent} does not exist.") from None
        except PermissionError:
            raise CheckpointError(
                f"Cannot write to {lock.parent} (permission denied): cannot create the lock file for {what}."
            ) from None
        except OSError as e:
            raise CheckpointError(f"Cannot create the lock file {lock} for {what}: {e.strerror or e}.") from None
        try:
            os.write(fd, json.dumps(_owner_info()).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    raise CheckpointError(f"Could not lock {what} (lock file {lock} keeps changing).")


@contextmanager
def output_lock(path: str | os.PathLike, what: str | None = None) -> Iterator[Path]:
    """Hold the lock on output ``path`` for the duration of the ``with`` block.

    Raises :class:`CheckpointError` if another live process (or another thread of this
    process) holds it. The folder of ``path`` must exist. Yields the lock file's path.
    """
    lock = lock_path(path)
    what = what or f"Output {path}"
    key = str(lock)
    me = threading.get_ident()
    pid = os.getpid()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and held[0] != pid:  # inherited through fork: the parent holds it, not us
            held = None
            del _HELD[key]
        if held is not None:
            if held[1] != me:
                raise CheckpointError(f"{what} is being written by another thread of this process.")
            _HELD[key] = (pid, me, held[2] + 1)
    if held is None:
        _acquire(lock, what)
        with _HELD_GUARD:
            _HELD[key] = (pid, me, 1)
    try:
        yield lock
    finally:
        with _HELD_GUARD:
            _, tid, depth = _HELD[key]
            if depth > 1:
                _HELD[key] = (pid, tid, depth - 1)
            else:
                del _HELD[key]
                info = _read(lock)
                if info is not None and info.get("pid") == os.getpid():
                    try:
                        lock.unlink()
                    except FileNotFoundError:
                        pass



def remove_stale_lock(path: str | os.PathLike) -> None:
    """Delete the lock file of output ``path`` if its owner no longer runs (best effort)."""
    lock = lock_path(path)
    try:
        if lock.is_file() and _is_stale(lock, _read(lock)):
            _remove_if_same(lock)
    except OSError:
        pass
