"""A small tmpfs for disk-full and read-only tests: mounted by the test, always unmounted.

``mounted_tmpfs(path, size)`` mounts a tmpfs of ``size`` (``"2m"``) at ``path`` and yields it;
``remount(path, "ro")`` makes it read-only. Mounting needs root (CAP_SYS_ADMIN): where it is not
allowed the test is skipped with the reason. The ``tmpfs`` fixture gives a function that mounts
one below the test's ``tmp_path``::

    from tmpfs import tmpfs_fixture  # noqa: F401  (provides the ``tmpfs`` fixture)

    def test_full_disk(tmpfs):
        small = tmpfs("2m")
"""

from __future__ import annotations

import os
import subprocess
from contextlib import ExitStack, contextmanager

import pytest


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)


@contextmanager
def mounted_tmpfs(path, size: str = "2m"):
    path = str(path)
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    r = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {(r.stderr or r.stdout).strip()[:200]}")
    try:
        yield path
    finally:
        if _run("umount", path).returncode != 0:
            _run("umount", "-l", path)  # busy (a file left open): detach it anyway


def remount(path, mode: str) -> None:
    """``mode``: ``ro`` or ``rw``."""
    r = _run("mount", "-o", f"remount,{mode}", str(path))
    assert r.returncode == 0, r.stderr


@pytest.fixture(name="tmpfs")
def tmpfs_fixture(tmp_path):
    """``tmpfs(size, name="tmpfs")`` -> the path of a fresh tmpfs, unmounted after the test."""
    with ExitStack() as stack:

        def mount(size: str = "2m", name: str = "tmpfs") -> str:
            return stack.enter_context(mounted_tmpfs(tmp_path / name, size))

        yield mount
