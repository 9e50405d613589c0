"""The one-process ``torch.distributed`` group, and following a torchrun agent that dies.

megatron-core's dataset builders and the trainer need a process group even in a plain
process (``ablate compile``, ``ablate train`` without torchrun, ``ablate eval``). Such a group
is a world of one over a gloo/NCCL ``FileStore`` in the temp dir. Its store file is named like
any ablate temporary, ``ablate-pg.tmp-<host>-<pid>-<n>``, so that:

* it is removed when the group is destroyed, and at interpreter exit (an exception);
* a store left by a SIGKILLed process (nothing of it runs) is recognised by its dead owner pid
  and removed by the next process that starts a group (``remove_stale_stores``).

``follow_parent_under_torchrun`` asks Linux to send a torchrun worker SIGTERM when its agent
dies (``prctl(PR_SET_PDEATHSIG)``): a SIGKILLed agent cannot stop its workers, which trained on
alone. SIGTERM is the trainer's preemption signal, so the worker checkpoints and exits.

Importing this module imports nothing heavy (torch is imported where a group is made).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import signal
import sys
import tempfile

from ablate.io import is_stale_temporary, remove_path, tmp_name

STORE_PREFIX = "ablate-pg"
_counter = itertools.count()
_OWN: list[str] = []  # this process's store files, removed when its group is destroyed


def remove_stale_stores(directory: str | None = None) -> list[str]:
    """Remove the group stores in the temp dir whose owner process is dead (on this host)."""
    directory = directory or tempfile.gettempdir()
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name.startswith(STORE_PREFIX) and is_stale_temporary(name):
                remove_path(os.path.join(directory, name))
                removed.append(name)
    return removed


def new_store_path() -> str:
    """A fresh store file name owned by this process (stale ones of dead processes removed)."""
    remove_stale_stores()
    path = tmp_name(os.path.join(tempfile.gettempdir(), STORE_PREFIX), str(next(_counter)))
    remove_path(path)  # a pid reused after a crash: never join a store with old contents
    if not _OWN:
        atexit.register(remove_own_stores)  # an exit that skipped the shutdown
    _OWN.append(path)
    return path


def remove_own_stores() -> None:
    """Remove the store files this process made (after its group is destroyed)."""
    while _OWN:
        remove_path(_OWN.pop())


def init_single_process_group(backend: str = "gloo") -> str:
    """``dist.init_process_group`` as a world of one; returns its store's path."""
    import torch.distributed as dist

    path = new_store_path()
    dist.init_process_group(backend, init_method=f"file://{path}", rank=0, world_size=1)
    return path


@contextlib.contextmanager
def single_process_group(backend: str = "gloo"):
    """A one-process group for the block when none exists (else the existing one is used);
    destroyed, and its store removed, when the block ends however it ends."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    path = init_single_process_group(backend)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        remove_path(path)
        if path in _OWN:
            _OWN.remove(path)


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def follow_parent_under_torchrun() -> bool:
    """Under torchrun on Linux: SIGTERM this process when its parent (the agent) dies. Returns
    whether it was set. If the agent is already gone, SIGTERM is sent at once."""
    if not under_torchrun() or not sys.platform.startswith("linux"):
        return False
    from ablate.faults import signal_when_parent_dies

    return signal_when_parent_dies(signal.SIGTERM, os.getppid())
