"""A stage's exhaustive blend: exact per-dataset counts, each prefix within one sample of its share.

Given each dataset's sample count ``n_d`` (``S`` in all, shares ``w_d = n_d / S``), the stage's
order is the order in which WF2Q (worst-case fair weighted fair queueing, Bennett & Zhang 1996)
serves one sample per slot. The fluid reference serves every dataset at once, at rate ``w_d``,
so the ``k``-th sample of ``d`` (1-based) *starts* at ``(k - 1) / w_d`` and *finishes* at
``k / w_d``. At slot ``s`` (0-based), the samples that have started are eligible, and the
eligible one that finishes first is taken (ties: the lower dataset index). So:

* some sample is always eligible: if none were, every dataset would have taken more than
  ``w_d * s`` samples, more than ``s`` in all, but ``s`` were taken;
* no dataset runs ahead: its ``k``-th sample is taken at a slot ``s >= (k - 1) / w_d``, so the
  prefix of ``s + 1`` samples holds ``k <= w_d * (s + 1) + 1 - w_d`` of them;
* none falls behind: WF2Q's delay bound takes every sample by its fluid finish plus one slot,
  so a prefix of ``N`` samples holds at least ``w_d * N - 1``;
* counts are exact by construction: a dataset stops being offered after its ``n_d``-th sample.

Each placement is also checked in exact integer arithmetic as it is made (a sample at slot
``s`` with ``k`` before it: ``(k + 1) S - n_d (s + 1) <= S`` and ``k S - n_d s >= -S``; between
a dataset's samples its error only moves toward the next check, so these points cover every
prefix). If a check ever failed, megatron-core's exhaustive greedy blend would be used instead.

This is the guarantee megatron-core's greedy blend (``helpers.build_blending_indices``) gives,
in O(S) with timing wheels (O(S log D) at worst) instead of the greedy's O(S x D), which visits
every dataset for every sample. (For up to 40 datasets, a stage's domains or one domain's
datasets, a branch-free pass over all of them per slot is faster still.) The loops are a small
C extension (``_blend.c``, built by setup.py as an optional extension); where it could not be
built, the pure-Python reference below gives the identical order, only slower (a few
microseconds a sample instead of 5-30 ns).

A stage blends by domain first (``blend_order``): the interleaving above runs over the
stage's domains (their sample counts), and again inside each domain over its datasets; slot
``s`` then takes the next sample of the next dataset of its domain. So every prefix holds each
**domain** within one sample of its share (the shares a recipe states); each dataset is within
``1 + v_d`` of its share (``v_d``: its part of its domain; below 2), the one level's error plus
its part of the other's. A flat interleaving over the datasets
(``interleave``) holds each dataset within one, but not its domain: on 64 datasets, ~10 per
domain, domains drifted up to ~15 samples from their shares (megatron-core's greedy: ~9).
Where every domain has one dataset, both are the same order. The levels are independent, so
the extension steps them two at a time, side by side in one thread.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import uuid
from fractions import Fraction

import numpy as np
import torch

from megatron.core.datasets.blended_dataset import BlendedDataset

from ablate.io import os_errors, remove_path, remove_stale_temporaries, tmp_name

BLEND_FORMAT = (
    2  # bump when the interleaving changes: blends cached under the old key are never used
)
# 2: by domain, then dataset; dataset_sample_index int32 where the counts allow

log = logging.getLogger(__name__)

try:
    from ablate.recipe import _blend
except ImportError:  # the optional extension was not built: same order from the reference, slower
    _blend = None


def _checked_counts(counts) -> np.ndarray:
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if counts.ndim != 1 or len(counts) == 0 or len(counts) >= 32767 or (counts <= 0).any():
        raise ValueError(f"interleave: need 1 to 32766 positive counts, got {counts!r}")
    return counts


def interleave(counts, use_extension: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(dataset_index int16, dataset_sample_index int64)``: exactly ``counts[d]`` of each."""
    counts = _checked_counts(counts)
    total = int(counts.sum())
    dataset_index = np.empty(total, dtype=np.int16)
    dataset_sample_index = np.empty(total, dtype=np.int64)
    _fill(counts, dataset_index, dataset_sample_index, use_extension)
    return dataset_index, dataset_sample_index


def _fill(
    counts: np.ndarray,
    dataset_index: np.ndarray,
    dataset_sample_index: np.ndarray | None,
    use_extension: bool,
) -> None:
    if use_extension and _blend is not None:
        misplaced = _blend.wf2q(counts, dataset_index, dataset_sample_index)
    else:
        misplaced = _wf2q_python(counts, dataset_index, dataset_sample_index)
    _check(misplaced, counts, dataset_index, dataset_sample_index)


def _check(
    misplaced: int,
    counts: np.ndarray,
    dataset_index: np.ndarray,
    dataset_sample_index: np.ndarray | None,
) -> None:
    if misplaced:  # -1: at some slot no dataset was eligible. Neither can happen (module doc).
        from megatron.core.datasets import helpers

        log.warning(
            "blend: the interleaving failed its check (%d); using megatron-core's exhaustive "
            "greedy "
            "blend instead",
            misplaced,
        )
        if dataset_sample_index is None:
            dataset_sample_index = np.empty(len(dataset_index), dtype=np.int64)
        helpers.build_exhaustive_blending_indices(
            dataset_index, dataset_sample_index, counts, len(counts)
        )


def _orders(jobs: list[tuple[np.ndarray, np.ndarray]], use_extension: bool) -> None:
    """Fill each job's ``out`` (int16) with the interleaving of its ``counts`` (dataset_index
    alone). The extension steps two interleavings side by side in one thread (wf2q_lanes):
    each is a chain of dependent steps that leaves the core mostly waiting, so two at once cost
    little more than one; the orders are the same as one at a time."""
    if use_extension and _blend is not None:
        for (counts, out), misplaced in zip(jobs, _blend.wf2q_lanes(jobs)):
            _check(misplaced, counts, out, None)
    else:
        for counts, out in jobs:
            _fill(counts, out, None, use_extension)


def sample_index_dtype(counts) -> type:
    """int32 where every count fits (4 bytes a sample instead of megatron-core's 8), else int64."""
    return np.int32 if int(np.max(counts)) < 2**31 else np.int64


def blend_order(counts, groups, use_extension: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(dataset_index int16, dataset_sample_index)``: exactly ``counts[d]`` of each dataset,
    interleaved by group (a stage's domains) first, then by dataset inside each group (module doc).
    ``groups[d]`` labels dataset ``d``'s group; groups are numbered by first appearance."""
    counts = _checked_counts(counts)
    if len(groups) != len(counts):
        raise ValueError(f"blend_order: {len(groups)} group labels for {len(counts)} counts")
    ids: dict = {}
    group_of = np.array([ids.setdefault(g, len(ids)) for g in groups], dtype=np.int64)
    members = np.argsort(group_of, kind="stable").astype(np.int16)  # datasets by group, in order
    sizes = np.bincount(group_of, minlength=len(ids))
    start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # members[start[g]:start[g+1]]
    group_counts = np.bincount(group_of, weights=counts, minlength=len(ids)).astype(np.int64)
    total = int(counts.sum())
    dataset_index = np.empty(total, dtype=np.int16)
    dataset_sample_index = np.empty(total, dtype=sample_index_dtype(counts))
    # the groups' slots, and inside each group its datasets' own order (a group of one: all 0);
    # the levels do not depend on each other
    slot_start = np.concatenate([[0], np.cumsum(group_counts)]).astype(np.int64)
    group_index = np.empty(total, dtype=np.int16)
    local = np.zeros(total, dtype=np.int16)
    jobs = [(group_counts, group_index)] + [
        (
            np.ascontiguousarray(counts[members[start[g] : start[g + 1]]]),
            local[slot_start[g] : slot_start[g + 1]],
        )
        for g in range(len(ids))
        if sizes[g] > 1
    ]
    _orders(jobs, use_extension)
    args = (group_index, local, slot_start, start, members, dataset_index, dataset_sample_index)
    if use_extension and _blend is not None:
        _blend.gather(*args)
    else:
        _gather_numpy(*args)
    return dataset_index, dataset_sample_index


def _gather_numpy(
    group_index, local, slot_start, member_start, members, dataset_index, dataset_sample_index
):
    """The reference for ``_blend.gather``: slot s is its group's r-th, so it takes that group's
    r-th member in the group's own order; its sample is how many of that dataset came before."""
    g = group_index.astype(np.int64)
    r = _ranks(group_index, len(slot_start) - 1)
    dataset_index[:] = members[member_start[g] + local[slot_start[g] + r]]
    dataset_sample_index[:] = _ranks(dataset_index, len(members))


def _ranks(labels: np.ndarray, n: int) -> np.ndarray:
    """For each position, how many earlier positions carry the same label."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.empty(len(labels), dtype=np.int64)
    out[order] = np.arange(len(labels)) - np.repeat(starts, counts)
    return out


def _wf2q_python(
    counts: np.ndarray, dataset_index: np.ndarray, dataset_sample_index: np.ndarray
) -> int:
    """The reference for ``_blend.wf2q``: the same rule, keys, tie-breaks and checks, in Python.

    Returns how many samples were placed more than one sample off their share, or -1 if at
    some slot no dataset was eligible."""
    n = [int(x) for x in counts]
    S = sum(n)
    taken = [0] * len(n)
    waiting = [(0, d) for d in range(len(n))]  # (slot at which d's next sample starts, d)
    ready: list[
        tuple[int, Fraction, int]
    ] = []  # (its finish S(k+1)/n as integer part, fraction, d)
    misplaced = 0
    out_d, out_k = [0] * S, [0] * S
    push, pop = heapq.heappush, heapq.heappop
    for s in range(S):
        while waiting and waiting[0][0] <= s:
            _, d = pop(waiting)
            q, r = divmod((taken[d] + 1) * S, n[d])
            push(ready, (q, Fraction(r, n[d]), d))
        if not ready:
            return -1
        _, _, d = pop(ready)
        k, nd = taken[d], n[d]
        out_d[s], out_k[s] = d, k
        if (k + 1) * S - nd * (s + 1) > S or k * S - nd * s < -S:
            misplaced += 1
        taken[d] = k + 1
        if k + 1 < nd:
            push(waiting, (-(-(k + 1) * S // nd), d))
    dataset_index[:] = out_d
    if dataset_sample_index is not None:
        dataset_sample_index[:] = out_k
    return misplaced


class ExactBlendedDataset(BlendedDataset):
    """megatron-core's ``BlendedDataset`` in its exhaustive form (``weights`` = sample counts,
    ``size=None``) with the interleaving above, by ``groups`` (each dataset's domain; default:
    each dataset its own group, the flat interleaving). Cached as megatron-core caches a blend
    (``<hash>-<class>-<split>-{description.txt,dataset_index.npy,dataset_sample_index.npy}``
    in ``path_to_cache``), the hash also covering ``BLEND_FORMAT``; files are written under
    temporary names and renamed, the description last, so a reader never sees half a blend."""

    def __init__(self, datasets, counts, config, groups=None):
        for i, (ds, c) in enumerate(zip(datasets, counts)):
            if len(ds) < c:  # megatron-core's own check, before any index is built
                raise IndexError(
                    f"blend: asks dataset {i} ({ds.dataset_path}) for {c} samples, it has {len(ds)}"
                )
        self.groups = (
            [str(g) for g in groups]
            if groups is not None
            else [str(i) for i in range(len(datasets))]
        )
        super().__init__(datasets, [int(c) for c in counts], None, config)

    def _build_indices(self):
        # megatron-core's description (a JSON object, indent 4) plus the interleaving's version
        body = self.unique_description.rstrip()
        assert body.endswith("}"), "megatron-core's blend description is no longer a JSON object"
        self.unique_description = (
            body[:-1].rstrip() + f',\n    "interleave": "wf2q/{BLEND_FORMAT}",\n'
            f'    "groups": {json.dumps(self.groups)}\n}}'
        )
        self.unique_description_hash = hashlib.md5(
            self.unique_description.encode("utf-8"), usedforsecurity=False
        ).hexdigest()
        from ablate.recipe.blend_prefetch import active

        prefetch = active()  # a compile may have computed it already, in the background

        def order():
            ready = prefetch.take(self.weights, self.groups) if prefetch else None
            return ready or blend_order(self.weights, self.groups)

        cache = self.config.path_to_cache
        if not cache:
            return order()
        stem = os.path.join(
            cache, f"{self.unique_description_hash}-{type(self).__name__}-{self.split.name}-"
        )
        paths = {
            name: stem + name
            for name in ("description.txt", "dataset_index.npy", "dataset_sample_index.npy")
        }
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        cached = (
            self._read_cached(paths) if all(os.path.isfile(p) for p in paths.values()) else None
        )
        if rank == 0 and cached is None:  # missing or damaged: (re)built
            dataset_index, dataset_sample_index = order()
            with os_errors(cache):
                os.makedirs(cache, exist_ok=True)
            write = lambda: self._write(paths, dataset_index, dataset_sample_index)  # noqa: E731
            if prefetch:
                prefetch.write_behind(
                    write, dataset_index.nbytes + dataset_sample_index.nbytes
                )  # waited for at the end
            else:
                write()  # the other ranks read these files right after
            return dataset_index, dataset_sample_index
        if prefetch:
            prefetch.take(self.weights, self.groups, want=False)  # cached: not needed
        if cached is None:
            raise OSError(f"{stem}*: the blend rank 0 wrote does not read back")
        return cached

    def _read_cached(self, paths: dict):
        """The cached arrays (memory-mapped), or None if a file is damaged or of the wrong length
        (a blend of ``sum(weights)`` samples)."""
        try:
            arrays = tuple(
                np.load(paths[n], mmap_mode="r")
                for n in ("dataset_index.npy", "dataset_sample_index.npy")
            )
        except (OSError, ValueError, EOFError):
            return None
        total = int(sum(int(w) for w in self.weights))
        return arrays if all(a.ndim == 1 and len(a) == total for a in arrays) else None

    def _write(
        self, paths: dict, dataset_index: np.ndarray, dataset_sample_index: np.ndarray
    ) -> None:
        """The arrays, then the description, each under an owned temporary name and renamed
        (removed on any error; the next writer removes those of a killed one)."""
        remove_stale_temporaries(os.path.dirname(paths["description.txt"]))
        for name, body in (
            ("dataset_index.npy", dataset_index),
            ("dataset_sample_index.npy", dataset_sample_index),
            ("description.txt", self.unique_description),
        ):
            tmp = tmp_name(
                paths[name], uuid.uuid4().hex[:8]
            )  # two stages may write one blend at once
            try:
                with os_errors(paths[name]):
                    if isinstance(body, str):
                        with open(tmp, "w") as f:
                            f.write(body)
                    else:
                        with open(tmp, "wb") as f:
                            np.save(f, body)
                    os.replace(tmp, paths[name])
            finally:
                remove_path(tmp)
