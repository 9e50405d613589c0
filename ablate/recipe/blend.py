"""A stage's exhaustive blend: exact per-dataset counts, every prefix within one sample of its share.

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
in O(S) (O(S log D) at worst) instead of O(S x D): the greedy visits every dataset for every
sample. The loop is a small C extension (``_blend.c``, built by setup.py as an optional
extension); where it could not be built, the pure-Python reference below gives the identical
order, only slower (a few microseconds a sample instead of ~35 ns).

The bound is per dataset. A domain with several datasets is within the sum of its datasets'
deviations, not within one sample (nor is it with the greedy: on 64 datasets, ~10 per leaf
domain, the greedy's domains drift up to ~9 samples from their shares and these up to ~15).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import uuid
from fractions import Fraction

import numpy as np
import torch

from megatron.core.datasets.blended_dataset import BlendedDataset

BLEND_FORMAT = 1  # bump when the interleaving changes: blends cached under the old key are never used

log = logging.getLogger(__name__)

try:
    from ablate.recipe import _blend
except ImportError:  # the optional extension was not built: same order from the reference, slower
    _blend = None


def interleave(counts, use_extension: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(dataset_index int16, dataset_sample_index int64)`` drawing exactly ``counts[d]`` of each."""
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if counts.ndim != 1 or len(counts) == 0 or len(counts) >= 32767 or (counts <= 0).any():
        raise ValueError(f"interleave: need 1 to 32766 positive counts, got {counts!r}")
    total = int(counts.sum())
    dataset_index = np.empty(total, dtype=np.int16)
    dataset_sample_index = np.empty(total, dtype=np.int64)
    if use_extension and _blend is not None:
        misplaced = _blend.wf2q(counts, dataset_index, dataset_sample_index)
    else:
        misplaced = _wf2q_python(counts, dataset_index, dataset_sample_index)
    if misplaced:  # -1: at some slot no dataset was eligible. Neither can happen (module doc).
        from megatron.core.datasets import helpers

        log.warning("blend: the interleaving failed its check (%d); using megatron-core's exhaustive greedy "
                    "blend instead", misplaced)
        helpers.build_exhaustive_blending_indices(dataset_index, dataset_sample_index, counts, len(counts))
    return dataset_index, dataset_sample_index


def _wf2q_python(counts: np.ndarray, dataset_index: np.ndarray, dataset_sample_index: np.ndarray) -> int:
    """The reference for ``_blend.wf2q``: the same rule, keys, tie-breaks and checks, in Python.

    Returns how many samples were placed more than one sample off their share, or -1 if at
    some slot no dataset was eligible."""
    n = [int(x) for x in counts]
    S = sum(n)
    taken = [0] * len(n)
    waiting = [(0, d) for d in range(len(n))]  # (slot at which d's next sample starts, d)
    ready: list[tuple[int, Fraction, int]] = []  # (its finish S(k+1)/n as integer part, fraction, d)
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
    dataset_sample_index[:] = out_k
    return misplaced


class ExactBlendedDataset(BlendedDataset):
    """megatron-core's ``BlendedDataset`` in its exhaustive form (``weights`` = sample counts,
    ``size=None``) with the interleaving above. Cached as megatron-core caches a blend
    (``<hash>-<class>-<split>-{description.txt,dataset_index.npy,dataset_sample_index.npy}``
    in ``path_to_cache``), the hash also covering ``BLEND_FORMAT``; files are written under
    temporary names and renamed, the description last, so a reader never sees half a blend."""

    def __init__(self, datasets, counts, config):
        for i, (ds, c) in enumerate(zip(datasets, counts)):
            if len(ds) < c:  # megatron-core's own check, before any index is built
                raise IndexError(f"blend: asks dataset {i} ({ds.dataset_path}) for {c} samples, it has {len(ds)}")
        super().__init__(datasets, [int(c) for c in counts], None, config)

    def _build_indices(self):
        # megatron-core's description (a JSON object, indent 4) plus the interleaving's version
        body = self.unique_description.rstrip()
        assert body.endswith("}"), "megatron-core's blend description is no longer a JSON object"
        self.unique_description = body[:-1].rstrip() + f',\n    "interleave": "wf2q/{BLEND_FORMAT}"\n}}'
        self.unique_description_hash = hashlib.md5(self.unique_description.encode("utf-8"),
                                                   usedforsecurity=False).hexdigest()
        cache = self.config.path_to_cache
        if not cache:
            return interleave(self.weights)
        stem = os.path.join(cache, f"{self.unique_description_hash}-{type(self).__name__}-{self.split.name}-")
        paths = {name: stem + name for name in ("description.txt", "dataset_index.npy", "dataset_sample_index.npy")}
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 0 and not all(os.path.isfile(p) for p in paths.values()):
            dataset_index, dataset_sample_index = interleave(self.weights)
            os.makedirs(cache, exist_ok=True)
            tag = f".tmp-{uuid.uuid4().hex[:8]}"
            for name, arr in (("dataset_index.npy", dataset_index), ("dataset_sample_index.npy", dataset_sample_index)):
                with open(paths[name] + tag, "wb") as f:
                    np.save(f, arr)
                os.replace(paths[name] + tag, paths[name])
            with open(paths["description.txt"] + tag, "w") as f:
                f.write(self.unique_description)
            os.replace(paths["description.txt"] + tag, paths["description.txt"])
            return dataset_index, dataset_sample_index
        return (np.load(paths["dataset_index.npy"], mmap_mode="r"),
                np.load(paths["dataset_sample_index.npy"], mmap_mode="r"))
