"""Tokenizer worker pools that die with their parent.

A ``ProcessPoolExecutor``'s workers wait forever on their call queue when the parent is killed
with SIGKILL (nothing closes the queue for them). Each worker therefore asks the kernel for
SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``, Linux), and checks right after that
the parent it was started for is still its parent: one that died before the ``prctl`` would
never send the signal. Workers ignore SIGINT: a Ctrl-C reaches the whole process group, and the
parent, which owns the cleanup, stops them (``kill_workers``); a worker's own KeyboardInterrupt
would only add tracebacks to the one line the user gets.

Spawned, not forked: the parent may have torch/megatron loaded, with threads of their own. This
module is imported by the workers, so it stays free of heavy imports.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor

from ablate.faults import signal_when_parent_dies


def check_workers(workers: object) -> None:
    """``--workers``: None (every core) or an integer >= 1; anything else is one line."""
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        from ablate.errors import AblateError, show

        raise AblateError(f"--workers: must be >= 1 (got {show(workers)})")


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: SIGKILL this worker when ``parent_pid`` (its parent) dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal_when_parent_dies(signal.SIGKILL, parent_pid)
    if os.getppid() != parent_pid:  # no prctl here and the parent is gone: an orphan at start
        os._exit(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A spawn-context pool whose workers die with this process."""
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )


def kill_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's workers now (an interrupt: their half-done tasks are thrown away)."""
    if hasattr(pool, "kill_workers"):  # Python >= 3.14 says it in public
        pool.kill_workers()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.kill()
        except (OSError, ValueError):
            pass  # already gone
