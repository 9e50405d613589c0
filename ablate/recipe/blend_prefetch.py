"""Compile-time background work for stage blends: computed ahead, written behind.

A stage's interleaving (``blend_order``) depends only on its plan: each dataset's sample count
and domain. The per-dataset indices, which the blend's ``BlendedDataset`` needs before it can
be made, take longer to build, and building them runs on one core (Python, numpy and
megatron-core's helpers holding the GIL). So a compile lists the blends it will need and a
background thread computes them meanwhile (the C loops release the GIL); when megatron-core
constructs the blend, ``ExactBlendedDataset`` takes the ready arrays instead of computing them.
``ablate compile`` does this for a recipe's stages, ``ablate sweep expand`` for every point of a
sweep while it builds their shared indices.

The thread works through the jobs in order and holds at most ``max_bytes`` of finished,
untaken blends (at 1T tokens one blend is ~1.5 GB), so it never runs far ahead of its consumer.
A job asked for out of order, or not at all, costs nothing but the thread's time: asking for a
job gives up every earlier one not yet taken. The result is the same arrays the blend would
compute itself (the same function on the same inputs); a failure in the thread only means the
blend is computed where it is needed, as without prefetching.

Written behind: a blend's files (~6 bytes a sample) are written by two writer threads while
the compile goes on to its next blend; leaving the ``prefetching`` block waits for every write and
raises the first failure. Each file is still written under a temporary name and renamed, the
description last, so a reader never sees half a blend; a compile that dies before its writes
finish leaves a blend missing, which the next build of it computes again (the cache is keyed
by content).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable

import numpy as np

from ablate.recipe.blend import blend_order, sample_index_dtype

_active: BlendPrefetch | None = None


def _key(counts, groups) -> tuple:
    return tuple(int(c) for c in counts), tuple(str(g) for g in groups)


class BlendPrefetch:
    def __init__(self, jobs: list[tuple[list[int], list[str]]], max_bytes: int = 1 << 30):
        self.keys = [_key(c, g) for c, g in jobs]
        self.max_bytes = max_bytes
        self.state = ["queued"] * len(self.keys)  # queued -> running -> done | dropped
        self.results: dict[int, tuple] = {}
        self.held = 0  # bytes of finished blends not yet taken
        self.cursor = 0  # jobs before this one were taken or given up
        self.stopped = False
        self.cv = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="blend-prefetch", daemon=True)
        self.thread.start()
        self.writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="blend-write")
        self.writes: list[tuple[Future, int]] = []

    @staticmethod
    def _bytes(key) -> int:
        counts = key[0]
        return sum(counts) * (2 + np.dtype(sample_index_dtype(counts)).itemsize)

    def _run(self) -> None:
        for i, key in enumerate(self.keys):
            size = self._bytes(key)
            with self.cv:
                while (
                    not self.stopped
                    and self.state[i] == "queued"
                    and self.held
                    and self.held + size > self.max_bytes
                ):
                    self.cv.wait()
                if self.stopped:
                    return
                if self.state[i] != "queued":
                    continue
                self.state[i] = "running"
            try:
                result = blend_order(np.array(key[0], dtype=np.int64), list(key[1]))
            except Exception:  # noqa: BLE001  (the consumer computes it itself and sees the error)
                result = None
            with self.cv:
                if self.state[i] == "running" and result is not None:
                    self.results[i] = result
                    self.held += size
                    self.state[i] = "done"
                else:
                    self.state[i] = "dropped"
                self.cv.notify_all()

    def _drop(self, i: int) -> None:
        if i in self.results:
            del self.results[i]
            self.held -= self._bytes(self.keys[i])
        self.state[i] = "dropped"  # a running job is discarded when it finishes

    def take(self, counts, groups, want: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
        """The blend of (counts, groups) if it is a job (waiting for it if need be), else None.
        ``want=False`` gives it up (the blend was found in the cache)."""
        key = _key(counts, groups)
        with self.cv:
            i = next((j for j in range(self.cursor, len(self.keys)) if self.keys[j] == key), None)
            if i is None:
                return None
            for j in range(
                self.cursor, i
            ):  # asked for a later job: the earlier ones are not needed
                self._drop(j)
            self.cursor = i + 1
            if not want:
                self._drop(i)
                self.cv.notify_all()
                return None
            while self.state[i] in ("queued", "running"):
                self.cv.wait()
            result = self.results.get(i)
            self._drop(i)
            self.cv.notify_all()
            return result

    def write_behind(self, write: Callable[[], None], nbytes: int = 0) -> None:
        """Run ``write`` on a writer thread. Two run at once (a sweep's blends queue up behind
        its shared indices, and one writer alone would set the pace); each holds its arrays
        (``nbytes``) until written, so new writes wait while ``max_bytes`` are queued."""
        pending = [(f, n) for f, n in self.writes if not f.done()]
        while pending and sum(n for _, n in pending) + nbytes > self.max_bytes:
            pending[0][0].exception()  # wait for the oldest
            pending = [(f, n) for f, n in pending if not f.done()]
        self.writes.append((self.writer.submit(write), nbytes))

    def close(self, raise_errors: bool = True) -> None:
        with self.cv:
            self.stopped = True
            for i in range(len(self.keys)):
                self._drop(i)
            self.cv.notify_all()
        self.thread.join()
        self.writer.shutdown(wait=True)
        for f, _ in self.writes if raise_errors else ():
            f.result()  # the first failed write raises here


def _several_ranks() -> bool:
    """With several ranks the others read the blend files as soon as rank 0 has built them, so
    nothing may be written behind: prefetching is for one process."""
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_world_size() > 1


def active() -> BlendPrefetch | None:
    return _active


@contextmanager
def prefetching(jobs: list[tuple[list[int], list[str]]]):
    """Compute these (counts, domains) blends in the background for the duration, and write
    blends behind; on leaving, wait for the writes. Inside an active prefetch (a sweep's, which
    already lists every point's blends) this adds nothing."""
    global _active
    if _active is not None or not jobs or _several_ranks():
        yield _active
        return
    _active = BlendPrefetch(jobs)
    try:
        yield _active
    except BaseException:
        done, _active = _active, None
        done.close(raise_errors=False)  # the block's own error is the one to see
        raise
    done, _active = _active, None
    done.close()
