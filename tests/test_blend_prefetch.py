"""Blends computed ahead and written behind (ablate.recipe.blend_prefetch): the same arrays as
computing them in place, in any order of asking, within the memory bound, and every write done
(or its failure raised) when the block ends."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ablate.recipe import blend_prefetch
from ablate.recipe.blend import blend_order
from ablate.recipe.blend_prefetch import BlendPrefetch, prefetching

JOBS = [
    ([5, 9, 2], ["a", "b", "a"]),
    ([40, 7, 13, 1], ["x", "x", "y", "z"]),
    ([3, 3], ["p", "q"]),
    ([100, 250, 75], ["m", "n", "m"]),
]


def same(got, counts, groups) -> None:
    want = blend_order(counts, groups)
    assert got is not None and all(np.array_equal(g, w) for g, w in zip(got, want))


def test_each_job_is_the_blend_computed_in_place():
    p = BlendPrefetch(JOBS)
    try:
        for counts, groups in JOBS:
            same(p.take(counts, groups), counts, groups)
    finally:
        p.close()


def test_asking_for_a_later_job_gives_up_the_earlier_ones_and_unknown_jobs_are_none():
    p = BlendPrefetch(JOBS)
    try:
        same(p.take(*JOBS[2]), *JOBS[2])
        assert p.take(*JOBS[0]) is None  # given up: the caller computes it itself
        assert p.take([1, 2], ["u", "v"]) is None
        assert p.take(*JOBS[3], want=False) is None
        assert p.held == 0 and not p.results
    finally:
        p.close()


def test_a_memory_bound_smaller_than_one_blend_still_delivers_every_job_in_order():
    p = BlendPrefetch(JOBS, max_bytes=1)  # never more than one finished blend held
    try:
        for counts, groups in JOBS:
            with p.cv:
                assert len(p.results) <= 1  # the thread waits while one finished blend is untaken
            same(p.take(counts, groups), counts, groups)
    finally:
        p.close()


def test_the_block_waits_for_writes_and_raises_a_failed_one(tmp_path):
    written = []
    with prefetching(JOBS) as p:
        assert blend_prefetch.active() is p
        with prefetching(JOBS[:1]) as inner:  # nested: the outer one serves
            assert inner is p
        for i in range(3):
            p.write_behind(lambda i=i: written.append(i))
    assert (
        sorted(written) == [0, 1, 2] and blend_prefetch.active() is None
    )  # two writers: any order

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with prefetching(JOBS) as p:
            p.write_behind(fail)
    assert blend_prefetch.active() is None
    with pytest.raises(ValueError, match="the compile's own error"):  # not hidden by a failed write
        with prefetching(JOBS) as p:
            p.write_behind(fail)
            raise ValueError("the compile's own error")
    assert blend_prefetch.active() is None


def test_a_write_waits_while_the_queued_writes_hold_the_memory_bound():
    """Each queued write holds its blend's arrays until written: at most ``max_bytes`` of them."""
    p = BlendPrefetch(JOBS, max_bytes=10)
    release, returned = threading.Event(), threading.Event()
    try:
        p.write_behind(release.wait, nbytes=8)
        second = threading.Thread(
            target=lambda: (p.write_behind(lambda: None, nbytes=8), returned.set())
        )
        second.start()
        time.sleep(0.3)
        assert not returned.is_set()  # 8 + 8 > 10: it waits for the first write
        release.set()
        second.join(timeout=10)
        assert returned.is_set()
        p.write_behind(
            lambda: None, nbytes=100
        )  # larger than the bound alone: written, not refused
    finally:
        release.set()
        p.close()
