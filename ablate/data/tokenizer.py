"""Tokenizers behind one interface.

* ``ByteTokenizer``: UTF-8 bytes as ids 0..255, plus end-of-document and padding ids. No
  dependencies, no files; the default, and what the toy world uses.
* ``HFTokenizer``: any HuggingFace ``tokenizer.json`` from a local path (the ``tokenizers``
  library; nothing is downloaded).

Every tokenizer has a ``fingerprint`` that goes into each manifest entry; datasets made with
different fingerprints must never be mixed. The megatron-core dataset code reads ``eod``,
``pad``, ``vocab_size`` and ``unique_identifiers`` from the tokenizer object it is given, so the
same object serves ingestion, blending and training.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from ablate.errors import AblateError

# Megatron stores tokens as uint16 when the vocabulary fits (DType.optimal_dtype's rule).
_UINT16_LIMIT = 65500


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size < _UINT16_LIMIT else np.int32


class Tokenizer(ABC):
    kind: str
    vocab_size: int
    eod: int
    pad: int

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """A short stable id of the exact vocabulary and rules: equal ids, equal token streams."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without any special tokens."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_documents(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize many documents at once, each followed by ``eod``.

        Returns ``(tokens, lengths)``: all documents' ids concatenated (``token_dtype``), and each
        document's length including its ``eod``. Subclasses override this with a batched path;
        this per-document loop is the reference it must agree with.
        """
        flat: list[int] = []
        lengths = np.empty(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            flat.extend(ids)
            flat.append(self.eod)
            lengths[i] = len(ids) + 1
        return np.asarray(flat, dtype=self.dtype), lengths

    @property
    def dtype(self) -> type:
        return token_dtype(self.vocab_size)

    @property
    def unique_identifiers(self) -> dict:
        # megatron-core's dataset cache keys include this dict.
        return {"class": type(self).__name__, "fingerprint": self.fingerprint}

    def describe(self) -> dict:
        """What the manifest records: enough to rebuild this tokenizer and to check it."""
        return {
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "vocab_size": self.vocab_size,
            "eod": self.eod,
            "pad": self.pad,
        }


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes; id 256 ends a document, 257 pads."""

    kind = "byte"
    vocab_size = 258
    eod = 256
    pad = 257

    @property
    def fingerprint(self) -> str:
        return "byte-v1"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def encode_documents(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = [t.encode("utf-8") for t in texts]
        lengths = np.fromiter((len(b) + 1 for b in encoded), dtype=np.int64, count=len(encoded))
        body = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        tokens = np.empty(int(lengths.sum()), dtype=self.dtype)
        eod_at = np.cumsum(lengths) - 1
        is_text = np.ones(tokens.size, dtype=bool)
        is_text[eod_at] = False
        tokens[is_text] = body
        tokens[eod_at] = self.eod
        return tokens, lengths


_EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]")
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]")


class HFTokenizer(Tokenizer):
    """A HuggingFace ``tokenizer.json`` read from a local file."""

    kind = "hf"

    def __init__(self, path: str, eod_token: str | None = None, where: str = "tokenizer"):
        if not os.path.isfile(path):
            raise AblateError(f"{where}: tokenizer file {path!r} does not exist")
        from tokenizers import Tokenizer as _HF

        try:
            self._tok = _HF.from_file(path)
        except Exception as exc:  # the library's message says what is wrong with the JSON
            raise AblateError(
                f"{where}: {path!r} is not a readable tokenizer.json ({exc})"
            ) from None
        self.path = path
        with open(path, "rb") as f:
            self._fingerprint = "hf-" + hashlib.sha256(f.read()).hexdigest()[:16]
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        names = (eod_token,) if eod_token else _EOD_CANDIDATES
        found = [vocab[n] for n in names if n in vocab]
        if not found:
            raise AblateError(
                f"{where}: {path!r} has no end-of-document token "
                f"(looked for {', '.join(names)}); set 'eod_token' to one of its tokens"
            )
        self.eod = found[0]
        pads = [vocab[n] for n in _PAD_CANDIDATES if n in vocab]
        self.pad = pads[0] if pads else self.eod

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def encode_documents(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(texts))
        tokens = np.empty(int(lengths.sum()), dtype=self.dtype)
        at = 0
        for e, n in zip(encodings, lengths):
            tokens[at : at + n - 1] = e.ids
            tokens[at + n - 1] = self.eod
            at += n
        return tokens, lengths

    def describe(self) -> dict:
        return {**super().describe(), "path": self.path}


class TokenizerInfo:
    """What megatron-core's datasets read from a tokenizer (ids, vocabulary size, identity),
    from a manifest's ``tokenizer`` entry, without loading the vocabulary itself."""

    def __init__(self, description: dict):
        self.kind = description["kind"]
        self.vocab_size = description["vocab_size"]
        self.eod = description["eod"]
        self.pad = description["pad"]
        self.fingerprint = description["fingerprint"]

    @property
    def unique_identifiers(self) -> dict:
        return {"class": "Tokenizer", "fingerprint": self.fingerprint}


def load_tokenizer(spec: object, base_dir: str = ".", where: str = "tokenizer") -> Tokenizer:
    """Build a tokenizer from a recipe/corpora field.

    ``spec`` is ``"byte"``, a path to a ``tokenizer.json`` (relative to ``base_dir``), or a
    mapping ``{kind: byte|hf, path: ..., eod_token: ...}`` (a manifest's ``tokenizer`` entry is
    such a mapping).
    """
    if spec is None or spec == "byte":
        return ByteTokenizer()
    if isinstance(spec, str):
        spec = {"kind": "hf", "path": spec}
    if not isinstance(spec, dict):
        raise AblateError(
            f"{where}: expected 'byte', a tokenizer.json path or a mapping, got {spec!r}"
        )
    kind = spec.get("kind", "hf")
    if kind == "byte":
        return ByteTokenizer()
    if kind != "hf":
        raise AblateError(f"{where}.kind: {kind!r} is not a tokenizer kind (allowed: byte, hf)")
    path = spec.get("path")
    if not isinstance(path, str):
        raise AblateError(f"{where}.path: a tokenizer.json path is required for kind 'hf'")
    return HFTokenizer(os.path.join(base_dir, path), spec.get("eod_token"), where)
