"""Writing and fingerprinting megatron-core ``IndexedDataset`` files (``.bin`` + ``.idx``).

We write with megatron-core's own ``IndexedDatasetBuilder`` so the files are exactly what its
readers expect; the subclass only adds appending a whole shard of documents in one call (the
stock builder takes one document per call, which is what makes Megatron-LM's preprocessing
slow), and hashes the data as it is written so the content fingerprint costs no second pass.
One sequence per document: that is how megatron-core's ``GPTDataset`` treats documents.

megatron-core is imported only when a builder or reader is made (``sharded_builder``,
``open_indexed``): hashing and verifying files (compile's checks, ``inspect --verify``) and
starting ``prepare``'s workers need none of it, and importing it takes seconds.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

_COPY_BLOCK = 8 << 20
_BUILDER_CLASS: list = []


def sharded_builder(path_prefix: str, dtype: type):
    """A ``ShardedIndexedDatasetBuilder`` writing ``path_prefix.bin``/``.idx``."""
    return _builder_class()(path_prefix, dtype)


def __getattr__(name: str):
    # ``from ablate.data.indexed import ShardedIndexedDatasetBuilder`` still works, lazily
    if name == "ShardedIndexedDatasetBuilder":
        return _builder_class()
    raise AttributeError(name)


def _builder_class():
    if not _BUILDER_CLASS:
        _BUILDER_CLASS.append(_define_builder())
    return _BUILDER_CLASS[0]


def _define_builder():
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    class ShardedIndexedDatasetBuilder(IndexedDatasetBuilder):
        """megatron-core's builder, plus ``add_shard`` (many documents at once) and a
        running hash."""

        def __init__(self, path_prefix: str, dtype: type):
            super().__init__(path_prefix + ".bin", dtype=dtype)
            self.path_prefix = path_prefix
            self._bin_hash = hashlib.sha256()

        def add_shard(self, tokens_path: str, lengths: np.ndarray) -> None:
            """Append the documents in a raw token file whose per-document lengths are
            ``lengths``."""
            expected = int(lengths.sum()) * np.dtype(self.dtype).itemsize
            copied = 0
            with open(tokens_path, "rb") as f:
                while block := f.read(_COPY_BLOCK):
                    self.data_file.write(block)
                    self._bin_hash.update(block)
                    copied += len(block)
            if copied != expected:  # a shard whose two halves disagree is a bug, never silent
                raise RuntimeError(f"shard {tokens_path}: {copied} bytes, lengths say {expected}")
            first = len(self.sequence_lengths)
            self.sequence_lengths.extend(lengths.tolist())
            self.document_indices.extend(range(first + 1, first + len(lengths) + 1))

        def finalize(self) -> tuple[str, str]:
            """Write the ``.idx``; return (content fingerprint of the pair, sha256 of the
            ``.idx``)."""
            super().finalize(self.path_prefix + ".idx")
            idx_sha256 = file_sha256(self.path_prefix + ".idx")
            return combine_fingerprint(self._bin_hash.hexdigest(), idx_sha256), idx_sha256

    return ShardedIndexedDatasetBuilder


def combine_fingerprint(bin_sha256: str, idx_sha256: str) -> str:
    return "sha256-" + hashlib.sha256(f"{bin_sha256}:{idx_sha256}".encode()).hexdigest()[:32]


def content_fingerprint(path_prefix: str) -> str:
    """Recompute a dataset's fingerprint from its files (for verifying a manifest)."""
    return combine_fingerprint(file_sha256(path_prefix + ".bin"), file_sha256(path_prefix + ".idx"))


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_COPY_BLOCK):
            h.update(block)
    return h.hexdigest()


def open_indexed(path_prefix: str):
    """megatron-core's reader over a prefix (memory-mapped)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    if not (os.path.exists(path_prefix + ".bin") and os.path.exists(path_prefix + ".idx")):
        raise FileNotFoundError(path_prefix)
    return IndexedDataset(path_prefix, multimodal=False, mmap=True)
