"""Per-dataset sample order that any recipe can reuse: a prefix-stable ``GPTDataset``.

Stock megatron-core builds each dataset's document / sample / shuffle indices for exactly the
number of samples a blend asks for, and the shuffle depends on that number, so every new
mixture rebuilds every dataset's indices (minutes per launch on hundreds of prefixes). Here the
order of a dataset's samples does not depend on how many are asked for:

* the document index is one independent permutation per epoch, concatenated;
* samples are packed from it with megatron-core's own ``build_sample_idx``;
* samples are shuffled within fixed blocks (one epoch's worth), one permutation per block.

Each permutation is seeded by (recipe seed, dataset content fingerprint, epoch or block). So
the first N samples are the same whether the cache was built for N or for 10N, and a recipe
takes a prefix (or, in a later stage, the next slice) of the one cached order. The cache key is
(content fingerprint, sequence length, seed, index format version); a request beyond what is
cached extends it, which leaves the existing prefix unchanged. A cache whose metadata does not
match its key is rebuilt, never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field

import numpy as np

from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

INDEX_FORMAT = 1  # bump when the construction below changes: old caches then never match


def index_key(fingerprint: str, seq_length: int, seed: int, extra_token: bool) -> str:
    body = f"{fingerprint}|{seq_length}|{seed}|{int(extra_token)}|v{INDEX_FORMAT}"
    return hashlib.sha256(body.encode()).hexdigest()[:24]


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "little")


@dataclass
class AblateGPTDatasetConfig(GPTDatasetConfig):
    """megatron-core's config plus where the reusable indices live and each dataset's slice."""

    index_cache_dir: str = ""
    # dataset path prefix -> (content fingerprint, sample offset of this stage)
    dataset_slices: dict = field(default_factory=dict)


class ReusableGPTDataset(GPTDataset):
    """``GPTDataset`` whose indices come from the prefix-stable cache (see the module doc)."""

    def _build_document_sample_shuffle_indices(self):
        fingerprint, offset = self.config.dataset_slices[self.dataset_path]
        self.sample_offset = offset
        cache = IndexCache(self.config.index_cache_dir, self.dataset, self.indices, fingerprint,
                           self.config.sequence_length, self.config.random_seed,
                           self.config.add_extra_token_to_sequence)
        document_index, sample_index, shuffle_index = cache.get(offset + self.num_samples)
        self.cache_key = cache.key
        return document_index, sample_index, shuffle_index[offset : offset + self.num_samples]

    def __len__(self) -> int:
        return int(self.shuffle_index.shape[0])


class IndexCache:
    def __init__(self, root: str, dataset, indices: np.ndarray, fingerprint: str, seq_length: int,
                 seed: int, extra_token: bool):
        self.dataset, self.indices = dataset, indices
        self.fingerprint, self.seq_length, self.seed, self.extra = fingerprint, seq_length, seed, extra_token
        self.key = index_key(fingerprint, seq_length, seed, extra_token)
        self.dir = os.path.join(root, "indices", self.key)
        self.meta = {"format": INDEX_FORMAT, "fingerprint": fingerprint, "seq_length": seq_length,
                     "seed": seed, "add_extra_token": bool(extra_token), "documents": int(len(indices))}

    def get(self, samples_needed: int):
        os.makedirs(os.path.dirname(self.dir), exist_ok=True)
        # A file lock, not only rank 0: several jobs of a sweep may compile into one cache.
        with open(self.dir + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cached = self._read_meta()
            if cached is None or cached["samples_built"] < samples_needed:
                self._build(max(samples_needed, cached["samples_built"] if cached else 0))
            return tuple(np.load(os.path.join(self.dir, f"{name}.npy"), mmap_mode="r")
                         for name in ("document_index", "sample_index", "shuffle_index"))

    def _read_meta(self) -> dict | None:
        path = os.path.join(self.dir, "meta.json")
        try:
            with open(path) as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError):
            return None
        # Anything that does not match the key exactly is stale: rebuild, never use.
        if any(meta.get(k) != v for k, v in self.meta.items()):
            return None
        if not all(os.path.isfile(os.path.join(self.dir, f"{n}.npy")) for n in ("document_index", "sample_index", "shuffle_index")):
            return None
        return meta

    def _build(self, samples_needed: int) -> None:
        from megatron.core.datasets import helpers

        seq = self.seq_length
        sizes = self.dataset.sequence_lengths
        tokens_per_epoch = int(sizes[self.indices].sum())
        block = max(1, (tokens_per_epoch - self.extra) // seq)  # samples per epoch
        blocks = -(-samples_needed // block)
        samples = blocks * block
        epochs = -(-(samples * seq + self.extra) // tokens_per_epoch)
        # one epoch can hold one sample fewer than `block` when packing leaves a remainder
        while (epochs * tokens_per_epoch - self.extra) // seq < samples:
            epochs += 1
        documents = np.asarray(self.indices, dtype=np.int32)
        document_index = np.concatenate([
            np.random.RandomState(_seed(self.seed, self.fingerprint, "epoch", e)).permutation(documents)
            for e in range(epochs)]).astype(np.int32)
        sample_index = helpers.build_sample_idx(np.asarray(sizes, dtype=np.int32), document_index, seq,
                                                epochs, tokens_per_epoch, True, self.extra)
        sample_index = np.ascontiguousarray(sample_index[: samples + 1])
        dtype = np.uint32 if samples < 2**32 - 1 else np.int64
        shuffle_index = np.concatenate([
            np.random.RandomState(_seed(self.seed, self.fingerprint, "block", b)).permutation(block).astype(dtype) + dtype(b * block)
            for b in range(blocks)])
        tmp = f"{self.dir}.tmp-{uuid.uuid4().hex[:8]}"
        os.makedirs(tmp)
        for name, arr in (("document_index", document_index), ("sample_index", sample_index),
                          ("shuffle_index", shuffle_index)):
            np.save(os.path.join(tmp, f"{name}.npy"), arr)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({**self.meta, "samples_built": int(samples), "epochs": int(epochs), "block": int(block)}, f, indent=1)
        old = f"{self.dir}.old-{uuid.uuid4().hex[:8]}"
        if os.path.exists(self.dir):
            os.rename(self.dir, old)  # readers holding the old mmaps keep them; the prefix is the same
        os.rename(tmp, self.dir)
        shutil.rmtree(old, ignore_errors=True)
