"""Which isolation layers a sandboxed run gets on this machine, and how to start its launcher.

Contract: ``plan_isolation(namespaces, drop_privileges, audit)`` returns a ``Plan``: the
command prefix (``unshare`` with the namespaces this machine permits, probed once per
configuration by running the launcher's own namespace setup), whether a read-only mount
namespace is used, the uid/gid to drop to, how the process limit is applied, and the names of
the layers (``isolation``) that ``SandboxResult.isolation`` reports; ``sandbox_isolation`` is
its public face. ``launcher_command(cfg)`` is the interpreter command line running
``launcher.py`` with its JSON configuration; ``mount_config`` and ``base_env`` are the
launcher's mount instructions and the program's whole environment. Refusals (a layer required
with ``True`` that the machine does not allow) are ``AblateError`` lines.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

from ablate.errors import AblateError

# the child program, a script run by path (see its docstring)
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")

_PROBE_LOCK = threading.Lock()
_PROBES: dict[tuple, tuple[str, ...] | None] = {}
_SYSTEM_BIN = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SYSTEM_BIN))


@functools.cache
def _nobody() -> tuple[int, int]:
    try:
        import pwd

        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def _unshare_prefix(userns: bool, mount: bool) -> list[str] | None:
    """The ``unshare`` command line for the wanted namespaces, or None where it is not permitted.

    Probed once per configuration by running the launcher's namespace setup in them.
    """
    key = ("unshare", userns, mount)
    with _PROBE_LOCK:
        if key in _PROBES:
            cached = _PROBES[key]
            return None if cached is None else list(cached)
        unshare = _which("unshare")
        prefix: list[str] | None = None
        if unshare:
            cmd = [unshare] + (["--user", "--map-root-user"] if userns else [])
            cmd += (["--mount"] if mount else []) + ["--net", "--pid", "--fork", "--kill-child"]
            probe_dir = tempfile.mkdtemp(prefix="ablate-sandbox-probe-")
            try:
                mounts = mount_config(probe_dir, "size=1m,mode=0700")[1] if mount else None
                cfg = {"probe": True, "mount": mounts}
                r = subprocess.run(
                    cmd + launcher_command(cfg),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=20,
                    env=base_env("/"),
                    cwd="/",
                )
                if r.returncode == 0:
                    prefix = cmd
            except (OSError, subprocess.SubprocessError):
                prefix = None
            finally:
                os.rmdir(probe_dir)
        _PROBES[key] = None if prefix is None else tuple(prefix)
        return prefix


# Inside a mount namespace the whole file tree is read-only, the world-writable places are
# replaced by small private tmpfs mounts and the program works in a size-limited tmpfs: at
# /tmp/work under a private /tmp (nothing of the evaluator's /tmp, the control directory
# included, is visible), or, where the interpreter itself lives under /tmp (a virtual
# environment there), on the control directory's work/.
NS_WORK = "/tmp/work"
_SCRATCH = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")


def interpreter() -> str:
    # the real file: a virtual environment adds nothing under -S, and its directory may be hidden
    return os.path.realpath(sys.executable)


@functools.cache
def _scratch_dirs() -> tuple[str, ...]:
    """The world-writable directories to hide: those that exist and hold nothing the run needs."""
    import sysconfig

    paths = sysconfig.get_paths()
    needed = [
        os.path.realpath(p)
        for p in (
            interpreter(),
            sys.base_prefix,
            paths.get("stdlib", ""),
            paths.get("platstdlib", ""),
        )
        if p
    ]
    hidden = []
    for d in _SCRATCH:
        inside = any(p == d or p.startswith(d + "/") for p in needed)
        if os.path.isdir(d) and not os.path.islink(d) and not inside:
            hidden.append(d)
    return tuple(hidden)


def mount_config(control_work: str, work_options: str) -> tuple[str, dict]:
    """The working directory and the launcher's mount instructions."""
    scratch = _scratch_dirs()
    work = NS_WORK if "/tmp" in scratch else control_work
    return work, {"scratch": list(scratch), "work": work, "opts": work_options}


def base_env(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home,
    }


@dataclass(frozen=True)
class Plan:
    prefix: list[str]
    mount: bool
    drop: tuple[int, int] | None
    # RLIMIT_NPROC: "ns" counted in the user namespace, "count" current tasks + max_procs;
    # "watchdog" (root keeping uid 0, where the kernel never applies it)
    nproc: str
    isolation: tuple[str, ...]


def plan_isolation(namespaces: bool | None, drop_privileges: bool | None, audit: bool) -> Plan:
    root = os.geteuid() == 0
    if drop_privileges and not root:
        raise AblateError(
            "sandbox: drop_privileges=True needs root (a user's programs already run as that user)"
        )
    drop = _nobody() if root and drop_privileges is not False else None
    prefix, mount, userns = None, False, False
    if namespaces is not False:
        # a user namespace where no uid change happens: a user (who may create namespaces only
        # in one), or root keeping uid 0 (root there has no capabilities over the machine's
        # namespaces); root dropping to nobody needs none
        userns = not root or drop is None
        for want_mount in (True, False):
            prefix = _unshare_prefix(userns, want_mount)
            if prefix is not None:
                mount = want_mount
                break
        if prefix is None and namespaces:
            raise AblateError(
                "sandbox: namespaces=True but this machine does not permit them "
                "(unshare missing or refused; unprivileged user namespaces "
                "disabled?)"
            )
    isolation = ["process-group", "rlimits", "clean-env"]
    if prefix is not None:
        isolation += (
            (["userns"] if userns else []) + ["netns", "pidns"] + (["mountns-ro"] if mount else [])
        )
    if drop is not None:
        isolation.append(f"uid:{drop[0]}")
    if audit:
        isolation.append("audit-hook")
    if root and drop is None:
        # the kernel never applies RLIMIT_NPROC to real uid 0, not even inside a user namespace
        nproc = "watchdog"
        isolation.append("proc-watchdog")
    elif prefix is not None and userns:
        nproc = "ns"
    else:
        nproc = "count"
    return Plan(prefix or [], mount, drop, nproc, tuple(isolation))


def sandbox_isolation(
    *, namespaces: bool | None = None, drop_privileges: bool | None = None, audit: bool = True
) -> tuple[str, ...]:
    """The layers a run with these options gets on this machine (see the module docstring)."""
    return plan_isolation(namespaces, drop_privileges, audit).isolation


def launcher_command(cfg: dict) -> list[str]:
    """The interpreter running the launcher with ``cfg``: ``-I -S -B`` (no site-packages, no
    ``PYTHON*`` variables, no import path, no bytecode writes)."""
    return [interpreter(), "-I", "-S", "-B", LAUNCHER, json.dumps(cfg)]
