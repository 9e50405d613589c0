"""Faults of the machine, not of the input, each turned into one line (``ablate.io`` does the
writes themselves; this module finds the fault behind other libraries' wrapping).

- ``user_os_error(exc)``: the full disk, read-only file system or missing permission behind an
  exception, however deep: megatron-core re-raises a dataset builder's ``OSError`` as a bare
  ``Exception`` ("write access"); dist_checkpointing's writer process sends its ``OSError``
  back to be wrapped in a ``RuntimeError`` inside torch's ``CheckpointException``.
- ``terminated_as_exception()``: SIGTERM raises ``Terminated`` (once) for the block, so a
  prepare or a run stopped before its own preemption handler exists still unwinds (status
  ``failed``, temporaries removed) instead of vanishing; the CLI prints its one line, exit 143.
- ``disk_full(path)``: whether a failed write was a full disk when the library reported it
  without an errno (torch's zip writer: "unexpected pos"; numpy: "N requested and M written").
- ``signal_when_parent_dies(sig, parent_pid)``: the kernel sends ``sig`` to this process when
  its parent dies (Linux ``PR_SET_PDEATHSIG``): prepare's tokenizer workers, torchrun workers.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

from ablate.io import OS_REASONS

USER_FIXABLE = set(OS_REASONS)  # full disk, quota, read-only, permissions
FULL_BELOW = 64 << 20  # a write that failed with less free space than this was a full disk
_PR_SET_PDEATHSIG = 1


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


_RETRY_S = 0.05


def _in_import(frame) -> bool:
    """Whether ``frame`` is inside an ``import``. An exception raised there can cross a C++
    frame that calls back into Python (torch's ``import torch.distributed`` runs pybind11 code
    that imports): pybind11 cannot carry it and the process aborts ("terminate called after
    throwing an instance of 'pybind11::error_already_set'") instead of unwinding."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class _RaiseOnce:
    """The SIGTERM handler: raises ``Terminated`` the first time; ``armed = False`` (set by a
    block's cleanup) keeps a second SIGTERM from cutting that cleanup short. A SIGTERM that
    lands inside an import is sent again a moment later (a timer thread), until the main thread
    is out of it: the import finishes, then the block unwinds as usual."""

    armed = True

    def __call__(self, signum, frame):
        if not self.armed:
            return
        if _in_import(frame):
            timer = threading.Timer(_RETRY_S, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        self.armed = False
        _quiet_half_built_destructors()
        raise Terminated(f"signal {signal.Signals(signum).name}")


def _quiet_half_built_destructors() -> None:
    """From here on, drop the ``AttributeError`` of a ``__del__`` instead of printing "Exception
    ignored in ..." with a traceback. SIGTERM can cut an ``__init__`` short (megatron-core's
    ``IndexedDataset`` reading its index); the half-built object's destructor then reaches for
    an attribute that was never set. The process is stopping anyway: that is noise beside the
    one line that says why."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, AttributeError) and (
            getattr(unraisable.object, "__name__", None) == "__del__"
        ):
            return
        previous(unraisable)

    sys.unraisablehook = hook


@contextmanager
def terminated_as_exception():
    """Within the block (main thread only), SIGTERM raises ``Terminated``; the previous handler
    is restored after. A handler installed inside the block (the trainer's preemption) wins.
    Yields the handler (``.armed``)."""
    handler = _RaiseOnce()
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def signal_when_parent_dies(sig: int, parent_pid: int) -> bool:
    """Ask the kernel for ``sig`` when ``parent_pid`` (this process's parent) dies. Returns
    whether the request was made (Linux only). A parent that died before the request would never
    send it, so that case sends ``sig`` at once."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid or parent_pid == 1:
        os.kill(os.getpid(), sig)
    return True


def disk_full(path: str) -> bool:
    """Whether the file system holding ``path`` (or its nearest existing parent) is nearly full."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path or ".")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_BELOW
