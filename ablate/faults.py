"""Faults of the machine, not of the input, each turned into one line (``ablate.io`` does the
writes themselves; this module finds the fault behind other libraries' wrapping).

- ``user_os_error(exc)``: the full disk, read-only file system or missing permission behind an
  exception, however deep: megatron-core re-raises a dataset builder's ``OSError`` as a bare
  ``Exception`` ("write access"); dist_checkpointing's writer process sends its ``OSError``
  back to be wrapped in a ``RuntimeError`` inside torch's ``CheckpointException``.
- ``terminated_as_exception()``: SIGTERM raises ``Terminated`` for the block, so a run stopped
  before its own preemption handler exists still unwinds (status ``failed``, temporaries
  removed) instead of vanishing.
"""

from __future__ import annotations

import errno
import signal
import threading
from contextlib import contextmanager

USER_FIXABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def user_os_error(exc: BaseException | None, depth: int = 10) -> OSError | None:
    """The first ``OSError`` a user can fix in ``exc``'s chain (itself, its cause, its context,
    and the per-rank failures torch's ``CheckpointException`` carries), else None."""
    if exc is None or depth <= 0:
        return None
    if isinstance(exc, OSError) and exc.errno in USER_FIXABLE:
        return exc
    for failure in (
        (getattr(exc, "failures", None) or {}).values()
        if isinstance(getattr(exc, "failures", None), dict)
        else ()
    ):
        inner = failure[0] if isinstance(failure, tuple) and failure else failure
        if isinstance(inner, BaseException):
            found = user_os_error(inner, depth - 1)
            if found is not None:
                return found
    return user_os_error(exc.__cause__ or exc.__context__, depth - 1)


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException: no ``except Exception`` swallows it)."""


@contextmanager
def terminated_as_exception():
    """Within the block (main thread only), SIGTERM raises ``Terminated``; the previous handler
    is restored after. A handler installed inside the block (the trainer's preemption) wins."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Terminated(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
