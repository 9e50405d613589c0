"""The exported tokenizer encodes and decodes exactly as the run's (byte, or a local
tokenizer.json)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from ablate.data.tokenizer import ByteTokenizer, HFTokenizer  # noqa: E402
from ablate.evals.export_tokenizer import hf_tokenizer  # noqa: E402

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "  two  spaces and\ttabs\r\n",
    "Zürich 東京 🙂 naïve",
    "The answer is 42.",
    "",
    "\x00\x7f control",
]


def _roundtrip(ours, theirs, tmp_path):
    theirs.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for t in TEXTS:
        ids = ours.encode(t)
        assert loaded(t, add_special_tokens=False)["input_ids"] == ids, t
        assert loaded.decode(ids) == ours.decode(ids) == t, t
    assert loaded.eos_token_id == ours.eod and loaded.pad_token_id == ours.pad


def test_byte_tokenizer_exports_as_one_token_per_byte(tmp_path):
    ours = ByteTokenizer()
    _roundtrip(ours, hf_tokenizer(ours), tmp_path)


def test_tokenizer_json_exports_with_its_end_of_document_token(tmp_path, bpe_tokenizer_json):
    ours = HFTokenizer(bpe_tokenizer_json)
    _roundtrip(ours, hf_tokenizer(ours), tmp_path)
