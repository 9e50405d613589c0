"""Per-dataset sample order that any recipe can reuse: a prefix-stable ``GPTDataset``.

Stock megatron-core builds each dataset's document / sample / shuffle indices for exactly the
number of samples a blend asks for, and the shuffle depends on that number, so every new
mixture rebuilds every dataset's indices (minutes per launch on hundreds of prefixes). Here the
order of a dataset's samples does not depend on how many are asked for:

* the document index is one independent permutation per epoch, concatenated;
* samples are packed from it with megatron-core's own ``build_sample_idx``;
* samples are shuffled within fixed blocks (one epoch's worth), one permutation per block.

Each permutation is seeded by (the plan's seed, dataset content fingerprint, epoch or block); the
plan's seed is the recipe's data-order seed (``data_seed``, else ``seed``). So the first N
samples are the same whether the cache was built for N or for 10N, and a recipe takes a prefix
(or, in a later stage, the next slice) of the one cached order. The cache key is (content
fingerprint, sequence length, seed, index format version); a request beyond what is
cached extends it: the cached arrays are kept and the new epochs, blocks and samples appended,
exactly what a build from nothing would give. A cache whose metadata does not match its key is
rebuilt, never used; so is one whose metadata is damaged or whose arrays do not have the
lengths it records (a truncated file).

Writers: one entry is built under an exclusive ``flock`` on ``<entry>.lock`` (concurrent compiles
of one entry wait, then find it built), into ``<entry>.tmp-<host>-<pid>`` renamed into place;
the writer removes its temporary on any error, and the next writer removes temporaries left by
a killed one (``ablate.io.remove_stale_temporaries``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from ablate.io import os_errors, remove_path, remove_stale_temporaries, tmp_name

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


def _signature(path: str) -> tuple | None:
    """What identifies one version of a file: a rebuilt or replaced file has another."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


# Per process, what was already opened: a sweep compiles many mixtures over the same datasets
# in one process, and each would otherwise re-open every .idx and cached index (~0.5 ms each).
# Entries are keyed by file signatures, so a rebuilt or extended file is opened afresh.
_LOW_LEVEL: dict = {}
_INDICES: dict = {}


def forget_opened() -> None:
    """Drop what this process has open, as a new process would start (for benchmarks)."""
    _LOW_LEVEL.clear()
    _INDICES.clear()


class ReusableGPTDataset(GPTDataset):
    """``GPTDataset`` whose indices come from the prefix-stable cache (see the module doc)."""

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: GPTDatasetConfig):
        """megatron-core's, opened once per process per version of the .idx/.bin files."""
        key = (
            dataset_path,
            config.mmap_bin_files,
            _signature(dataset_path + ".idx"),
            _signature(dataset_path + ".bin"),
        )
        if (
            key[2] is None or config.sequences_per_dataset
        ):  # let megatron-core report / handle these
            return GPTDataset.build_low_level_dataset(dataset_path, config)
        if key not in _LOW_LEVEL:
            _LOW_LEVEL[key] = GPTDataset.build_low_level_dataset(dataset_path, config)
        return _LOW_LEVEL[key]

    def _build_document_sample_shuffle_indices(self):
        fingerprint, offset = self.config.dataset_slices[self.dataset_path]
        self.sample_offset = offset
        cache = IndexCache(
            self.config.index_cache_dir,
            self.dataset,
            self.indices,
            fingerprint,
            self.config.sequence_length,
            self.config.random_seed,
            self.config.add_extra_token_to_sequence,
        )
        document_index, sample_index, shuffle_index = cache.get(offset + self.num_samples)
        self.cache_key = cache.key
        return document_index, sample_index, shuffle_index[offset : offset + self.num_samples]

    def __len__(self) -> int:
        return int(self.shuffle_index.shape[0])


class IndexCache:
    def __init__(
        self,
        root: str,
        dataset,
        indices: np.ndarray | range,
        fingerprint: str,
        seq_length: int,
        seed: int,
        extra_token: bool,
    ):
        self.dataset, self.indices = dataset, indices
        self.fingerprint, self.seq_length, self.seed, self.extra = (
            fingerprint,
            seq_length,
            seed,
            extra_token,
        )
        self.key = index_key(fingerprint, seq_length, seed, extra_token)
        self.dir = os.path.join(root, "indices", self.key)
        self.meta = {
            "format": INDEX_FORMAT,
            "fingerprint": fingerprint,
            "seq_length": seq_length,
            "seed": seed,
            "add_extra_token": bool(extra_token),
            "documents": int(len(indices)),
        }

    def get(self, samples_needed: int):
        # Already open in this process and long enough: the same arrays (its meta.json unchanged;
        # an extension replaces the directory, and its prefix is the same samples anyway).
        hit = _INDICES.get(self.dir)
        if (
            hit
            and hit[1] >= samples_needed
            and hit[0] == _signature(os.path.join(self.dir, "meta.json"))
        ):
            return hit[2]
        with os_errors(os.path.dirname(self.dir)):
            os.makedirs(os.path.dirname(self.dir), exist_ok=True)
            # A file lock, not only rank 0: several jobs of a sweep may compile into one cache.
            lock = open(self.dir + ".lock", "a")
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            remove_stale_temporaries(os.path.dirname(self.dir))  # of killed writers
            cached = self._read_meta()
            if cached is None or cached["samples_built"] < samples_needed:
                self._build(max(samples_needed, cached["samples_built"] if cached else 0), cached)
                cached = self._read_meta()
            arrays = self._open(cached)
            if arrays is None:  # damaged files under valid metadata: rebuild from nothing
                self._build(samples_needed, None)
                cached = self._read_meta()
                arrays = self._open(cached)
                if arrays is None:
                    raise OSError(f"{self.dir}: the index just built does not read back")
            _INDICES[self.dir] = (
                _signature(os.path.join(self.dir, "meta.json")),
                cached["samples_built"],
                arrays,
            )
            return arrays

    def _open(self, cached: dict | None):
        """The entry's arrays (memory-mapped), or None where a file is damaged or the lengths
        are not the ones its metadata records."""
        if cached is None:
            return None
        try:
            doc, sample, shuffle = (
                np.load(os.path.join(self.dir, f"{name}.npy"), mmap_mode="r")
                for name in ("document_index", "sample_index", "shuffle_index")
            )
        except (OSError, ValueError, EOFError):
            return None
        return (doc, sample, shuffle) if _lengths_match(cached, doc, sample, shuffle) else None

    def _load_for_extension(self, cached: dict | None, block: int, epochs: int, samples: int):
        """The cached arrays, if they are a prefix of what is to be built (else None: rebuild)."""
        if (
            cached is None
            or cached.get("block") != block
            or not 0 < cached.get("samples_built", 0) < samples
            or cached["samples_built"] % block
            or not 0 < cached.get("epochs", 0) <= epochs
        ):
            return None
        try:
            arrays = tuple(
                np.load(os.path.join(self.dir, f"{name}.npy"))
                for name in ("document_index", "sample_index", "shuffle_index")
            )
        except (OSError, ValueError):
            return None
        return arrays if _lengths_match(cached, *arrays) else None

    def _read_meta(self) -> dict | None:
        path = os.path.join(self.dir, "meta.json")
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):  # missing, or damaged (invalid JSON or UTF-8): rebuild
            return None
        # Anything that does not match the key exactly is stale: rebuild, never use.
        if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in self.meta.items()):
            return None
        if not all(
            isinstance(meta.get(k), int) and meta[k] >= 0
            for k in ("samples_built", "epochs", "block")
        ):
            return None
        if not all(
            os.path.isfile(os.path.join(self.dir, f"{n}.npy"))
            for n in ("document_index", "sample_index", "shuffle_index")
        ):
            return None
        return meta

    def _build(self, samples_needed: int, cached: dict | None = None) -> None:
        """Build the first ``samples_needed`` samples (rounded up to whole blocks); where a valid
        cache holds fewer, keep its arrays and append: the epochs and blocks after it, and the
        samples packed on from where its last one starts. The result is the same as building
        from nothing (each epoch's and block's permutation is seeded on its own, and packing
        depends only on the document order), at the cost of the new part only."""
        from megatron.core.datasets import helpers

        seq = self.seq_length
        sizes = np.asarray(self.dataset.sequence_lengths, dtype=np.int32)
        # every document, passed as a range (no per-compile array), or a subset as an array
        documents = (
            np.arange(self.indices.start, self.indices.stop, dtype=np.int32)
            if isinstance(self.indices, range)
            else np.asarray(self.indices, dtype=np.int32)
        )
        tokens_per_epoch = int(sizes[documents].sum(dtype=np.int64))
        block = max(1, (tokens_per_epoch - self.extra) // seq)  # samples per epoch
        blocks = -(-samples_needed // block)
        samples = blocks * block
        epochs = -(-(samples * seq + self.extra) // tokens_per_epoch)
        # one epoch can hold one sample fewer than `block` when packing leaves a remainder
        while (epochs * tokens_per_epoch - self.extra) // seq < samples:
            epochs += 1
        old = self._load_for_extension(cached, block, epochs, samples)
        if old is None:
            old_doc, old_sample, old_shuffle, old_epochs, old_blocks = None, None, None, 0, 0
        else:
            old_doc, old_sample, old_shuffle = old
            old_epochs, old_blocks = cached["epochs"], cached["samples_built"] // block
        document_index = np.concatenate(
            ([old_doc] if old is not None else [])
            + [
                np.random.RandomState(_seed(self.seed, self.fingerprint, "epoch", e))
                .permutation(documents)
                .astype(np.int32)
                for e in range(old_epochs, epochs)
            ]
        ).astype(np.int32)
        # megatron-core's build_sample_idx picks its dtype from these; a fresh build would too
        sample_dtype = (
            np.int32
            if max(len(document_index), int(sizes.max())) <= np.iinfo(np.int32).max
            else np.int64
        )
        if old is None:
            sample_index = helpers.build_sample_idx(
                sizes, document_index, seq, epochs, tokens_per_epoch, True, self.extra
            )
            sample_index = np.ascontiguousarray(sample_index[: samples + 1], dtype=sample_dtype)
        else:
            # Pack on from where the cached last sample starts (document position `at`, token
            # `offset`): the same packer over the rest of the document order, its first
            # document stood in for by one `offset` tokens shorter (an extra id past the end).
            at, offset = (int(x) for x in old_sample[-1])
            rest = document_index[at:].copy()
            rest_sizes = np.append(sizes, sizes[rest[0]] - offset).astype(np.int32)
            rest[0] = len(sizes)
            rest_tokens = int(rest_sizes[rest].sum(dtype=np.int64))
            more = helpers.build_sample_idx(
                rest_sizes, rest, seq, 1, rest_tokens, True, self.extra
            ).astype(np.int64)
            more = more[1 : samples - len(old_sample) + 2]
            more[more[:, 0] == 0, 1] += offset
            more[:, 0] += at
            sample_index = np.concatenate([np.asarray(old_sample, dtype=np.int64), more]).astype(
                sample_dtype
            )
        dtype = np.uint32 if samples < 2**32 - 1 else np.int64
        shuffle_index = np.concatenate(
            ([np.asarray(old_shuffle, dtype=dtype)] if old is not None else [])
            + [
                np.random.RandomState(_seed(self.seed, self.fingerprint, "block", b))
                .permutation(block)
                .astype(dtype)
                + dtype(b * block)
                for b in range(old_blocks, blocks)
            ]
        )
        tmp, old = tmp_name(self.dir), tmp_name(self.dir, "old")
        try:
            with os_errors(self.dir):
                os.makedirs(tmp)
                for name, arr in (
                    ("document_index", document_index),
                    ("sample_index", sample_index),
                    ("shuffle_index", shuffle_index),
                ):
                    np.save(os.path.join(tmp, f"{name}.npy"), arr)
                with open(os.path.join(tmp, "meta.json"), "w") as f:
                    json.dump(
                        {
                            **self.meta,
                            "samples_built": int(samples),
                            "epochs": int(epochs),
                            "block": int(block),
                        },
                        f,
                        indent=1,
                    )
                if os.path.exists(self.dir):
                    os.rename(
                        self.dir, old
                    )  # readers holding the old mmaps keep them; the prefix is the same
                os.rename(tmp, self.dir)
        finally:
            if os.path.isdir(old) and not os.path.exists(self.dir):
                os.rename(old, self.dir)  # the new one failed: keep the old, still valid
            remove_path(tmp)  # only left when something failed
            remove_path(old)


def _lengths_match(cached: dict, doc, sample, shuffle) -> bool:
    """The three index arrays have the lengths the entry's metadata records (a truncated or
    mismatched file is a damaged entry, rebuilt)."""
    return (
        len(doc) == cached["epochs"] * int(cached["documents"])
        and sample.ndim == 2
        and len(sample) == cached["samples_built"] + 1
        and len(shuffle) == cached["samples_built"]
    )
