"""Files on disk, the one way every writer and reader in ablate handles them.

- **Atomic writes**: everything a later stage reads is written to a temporary name beside its
  final path and renamed into place (``os.replace`` is atomic on one file system), so readers
  and resumed runs never see half a file.
- **Owned temporaries**: a temporary's name carries its writer (``<final>.tmp-<host>-<pid>``).
  A killed process cannot clean up after itself, so the next writer of the same place removes
  the temporaries whose owner is a dead process on this host (``remove_stale_temporaries``).
  Temporaries from another host, or from a live process, are never touched.
- **Locks**: ``exclusive_lock`` takes an advisory ``flock`` on a lock file and refuses, in one
  line, when another process holds it (two ``ablate train`` of one run directory).
- **OS errors as user errors**: ``os_errors(path)`` turns a full disk, a read-only file system
  or a missing permission into one line naming the path (an ``AblateError``).
- **Reading JSON** that ablate wrote: ``read_json`` names the file when it is missing or damaged.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ablate.errors import AblateError

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"
_TMP_RE = re.compile(r"\.tmp-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)(?:-[0-9a-f]+)?$")


def tmp_name(path: str, unique: str = "") -> str:
    """The temporary name beside ``path`` owned by this process (``unique`` for several at once)."""
    return f"{path}.tmp-{_HOST}-{os.getpid()}" + (f"-{unique}" if unique else "")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def is_stale_temporary(name: str) -> bool:
    """Whether ``name`` is an ablate temporary whose owner is a dead process on this host."""
    m = _TMP_RE.search(name)
    return (
        bool(m)
        and m["host"] == _HOST
        and int(m["pid"]) != os.getpid()
        and not _pid_alive(int(m["pid"]))
    )


def remove_stale_temporaries(directory: str) -> list[str]:
    """Remove the temporaries in ``directory`` (not below it) left by dead processes; returns
    them."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if is_stale_temporary(name):
            path = os.path.join(directory, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    continue
            removed.append(path)
    return removed


def remove_path(path: str) -> None:
    """Remove a file or directory tree if it is there (used for this process's own temporaries)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except OSError:
            pass


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path to write; on success it becomes ``path``, on error it is removed."""
    tmp = tmp_name(path)
    try:
        with os_errors(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        remove_path(tmp)


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(path: str, body, indent: int | None = 1) -> None:
    write_text_atomic(path, json.dumps(body, indent=indent) + "\n")


OS_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def os_error_line(path: str, exc: OSError) -> str:
    """One line for an ``OSError`` met while writing under ``path``."""
    reason = OS_REASONS.get(exc.errno) or (exc.strerror or type(exc).__name__).lower()
    where = exc.filename if isinstance(exc.filename, str) and exc.filename else path
    return f"{where}: cannot write ({reason})"


@contextmanager
def os_errors(path: str) -> Iterator[None]:
    """Turn the OS errors a user can fix (full disk, read-only, permissions) into one line."""
    try:
        yield
    except OSError as exc:
        if exc.errno in OS_REASONS:
            raise AblateError(os_error_line(path, exc)) from None
        raise


@contextmanager
def exclusive_lock(lock_path: str, what: str) -> Iterator[None]:
    """Hold an advisory lock on ``lock_path`` for the block; refuse in one line if it is held.

    ``what`` names the thing locked in the message ("run directory runs/x"). The lock file
    records the holder's host and pid (for the message); it is left in place, since removing
    it would race with a process about to lock it.
    """
    with os_errors(lock_path):
        os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise AblateError(
                f"{what}: in use by {holder} (wait for it to finish, or stop it)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"ablate pid {os.getpid()} on {_HOST}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def directory_lock(directory: str, what: str) -> Iterator[None]:
    """``exclusive_lock`` on a directory itself (``flock`` on its descriptor): nothing is written
    into it, so a refusal or a failure leaves the directory exactly as it was."""
    with os_errors(directory):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AblateError(
                f"{what}: in use by another ablate process (wait for it to finish, or stop it)"
            ) from None
        yield
    finally:
        os.close(fd)


def read_json(path: str, what: str = "file") -> Any:
    """Parse a JSON file ablate wrote; a missing or damaged one is one line naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise AblateError(f"{path}: no such {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AblateError(f"{path}: damaged {what}, not valid JSON ({str(exc)[:80]})") from None
    except IsADirectoryError:
        raise AblateError(f"{path}: is a directory, expected a {what}") from None


def utc_timestamp(seconds: float | None = None) -> str:
    """ISO-8601 UTC to the second (``2026-12-04T20:32:19Z``): the one timestamp in ablate's
    files."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
