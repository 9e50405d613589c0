"""Ending a sandboxed run's processes and removing its files, whatever the program did.

Contract: ``killpg(pgid)`` SIGKILLs a process group (gone already is fine);
``session_members(sid)`` lists the processes of a session (the proc watchdog counts them);
``sweep_until_gone(marker)`` SIGKILLs every process whose environment carries the run's
``ABLATE_SANDBOX_RUN=<token>`` marker, again until none is left or ``limit_s`` has passed (what
left the process group without a PID namespace, or what the kernel has not finished killing);
``rmtree(path)`` removes the run's control directory even where the program took away
permissions. None of them raises for a process or file that is already gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import time


def _proc_files(file: str):
    """(pid, contents of /proc/<pid>/<file>) for every process whose file can be read now
    (processes come and go while /proc is listed: those are passed over)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/{file}", "rb") as f:
                yield int(name), f.read()
        except OSError:
            continue


def session_members(sid: int) -> list[int]:
    pids = []
    for pid, stat in _proc_files("stat"):
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            pids.append(pid)
    return pids


def _sweep(marker: bytes) -> int:
    """SIGKILL every process whose environment carries this run's marker; return how many."""
    killed = 0
    me = os.getpid()
    for pid, env in _proc_files("environ"):
        if pid != me and marker in env.split(b"\0"):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def sweep_until_gone(marker: bytes, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    delay = 0.001
    while _sweep(marker) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def rmtree(path: str) -> None:
    def retry(func, p, _exc):
        # a program may leave a directory without permissions: restore them and try again
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)
