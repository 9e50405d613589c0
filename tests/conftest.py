"""Shared test helpers: running the CLI in-process, writing corpora, a locally trained BPE."""

from __future__ import annotations

import json
import os

import pytest

from ablate.cli import main


class CliResult:
    def __init__(self, rc: int, out: str, err: str):
        self.rc, self.out, self.err = rc, out, err


@pytest.fixture
def cli(capsys):
    """Run ``ablate ARGS...`` in-process; returns rc, stdout, stderr."""

    def run(*args: str) -> CliResult:
        rc = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(rc, captured.out, captured.err)

    return run


def write_jsonl(path, rows) -> str:
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)


def write_spec(path, sources, **top) -> str:
    import yaml

    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump({**top, "sources": sources}, f)
    return str(path)


SAMPLE_TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "Question: Mia has 3 apples. She finds 4 more. How many apples does Mia have now?\nStep 1: 3 + 4 = 7\nAnswer: 7",
    "Zürich liegt am See. 東京は大きい。 Emoji: 🙂",
    "The capital of Velmora is Tarsk.",
    "x = 5\nfor _ in range(3):\n    x = x + 2\nassert x == 11\n",
]


@pytest.fixture(scope="session")
def bpe_tokenizer_json(tmp_path_factory) -> str:
    """A real byte-level BPE tokenizer.json, trained here on local text (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SAMPLE_TEXTS * 50, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def assert_one_line_error(result: CliResult, *fragments: str) -> None:
    """The bad-input contract: exit 2, one line on stderr, no traceback, the message names the place."""
    assert result.rc == 2, (result.rc, result.err)
    lines = [l for l in result.err.splitlines() if l.strip()]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
