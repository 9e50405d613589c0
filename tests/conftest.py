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
    "Question: Mia has 3 apples. She finds 4 more. How many apples does Mia have now?\n"
    "Step 1: 3 + 4 = 7\nAnswer: 7",
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
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SAMPLE_TEXTS * 50, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def assert_one_line_error(result: CliResult, *fragments: str) -> None:
    """The bad-input contract: exit 2, one line on stderr, no traceback, the message names the
    place."""
    assert result.rc == 2, (result.rc, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


# --- The refusal contract, table-driven (issue: nothing lost, nothing half-written) -------------


def tree_state(*roots) -> dict:
    """Every file and directory below ``roots``: path -> (kind, size, sha1). Links are recorded
    as their target, not followed, so a case that damages a shared dataset through a symlink
    is caught by watching the dataset's real directory."""
    import hashlib

    state = {}
    for root in map(str, roots):
        if not os.path.lexists(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                key = f"{root}|{rel}"
                if os.path.islink(path):
                    state[key] = ("link", os.readlink(path))
                elif os.path.isdir(path):
                    state[key] = ("dir",)
                else:
                    with open(path, "rb") as f:
                        state[key] = (
                            "file",
                            os.path.getsize(path),
                            hashlib.sha1(f.read()).hexdigest(),
                        )
    return state


def temp_leftovers() -> set:
    """Names ablate itself leaves in the temp dir (process-group stores, staging). The session's
    temp dir is its own (``private_tempdir``), so other processes on the machine do not count."""
    import tempfile

    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(("ablate-", "ablate_"))}


@pytest.fixture(scope="session", autouse=True)
def private_tempdir(tmp_path_factory):
    """Point ``tempfile`` (and, through TMPDIR, every subprocess) at a directory of this session's
    own, so "nothing left in the temp dir" means this session's ablate left nothing there."""
    import tempfile

    path = str(tmp_path_factory.mktemp("tmp"))
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = path, path
    yield path
    tempfile.tempdir = saved[0]
    if saved[1] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[1]


def assert_refused(argv, *fragments: str, watch=(), capsys=None, code: int = 2) -> str:
    """Run ``ablate ARGV`` in-process and hold it to the bad-input contract: exit ``code``, one
    line on stderr that contains every fragment and stays short, no traceback (any exception
    other than a clean refusal fails the test with its own traceback), and nothing under the
    ``watch`` roots (nor ablate's temp-dir names) created, changed or removed. Returns the line."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    before, temps_before = tree_state(*watch), temp_leftovers()
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse refusals
            rc = exc.code
    if capsys is not None:  # logging handlers may have written to the real streams
        captured = capsys.readouterr()
        err.write(captured.err)
    text = err.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    assert rc == code, (rc, text)
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    assert len(lines[0]) <= 400, f"unbounded message ({len(lines[0])} chars): {lines[0][:200]}..."
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    assert tree_state(*watch) == before, "the refusal changed files under " + ", ".join(
        map(str, watch)
    )
    assert temp_leftovers() <= temps_before, temp_leftovers() - temps_before
    return lines[0]


@pytest.fixture(scope="session")
def toyworld_root(tmp_path_factory):
    """``data/toyworld`` prepared once for the whole session (7 s each time it is built).
    Shared and read-only by convention: tests link it into their own directory
    (``link_toyworld``) and must copy it before damaging anything in it."""
    from ablate.data.prepare import prepare

    root = tmp_path_factory.mktemp("toyworld-shared")
    prepare("toyworld", str(root / "data" / "toyworld"), workers=1)
    return root


def link_toyworld(shared_root, here) -> None:
    """Make ``here/data/toyworld`` point at the session's prepared toy world."""
    os.makedirs(os.path.join(str(here), "data"), exist_ok=True)
    os.symlink(
        os.path.join(str(shared_root), "data", "toyworld"),
        os.path.join(str(here), "data", "toyworld"),
    )


@pytest.fixture(autouse=True)
def no_process_group_left_behind():
    """A command run in-process must not leave torch.distributed initialised (the next test's
    compile or training would then join a dead world: 'initialize the default process group
    twice'). Checked after every test; costs nothing where torch.distributed is not loaded."""
    import sys

    yield
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()  # so the tests after this one are not failed by it
        pytest.fail("this test left a torch.distributed process group initialised")


# --- The tiny MoE every training test runs (2 layers of 64, 4 experts, sequences of 64) ----------

TINY_MODEL = {
    "preset": "toy-moe",
    "num_layers": 2,
    "hidden_size": 64,
    "ffn_hidden_size": 128,
    "num_experts": 4,
    "max_position_embeddings": 128,
}
TINY_TRAINING = {
    "seq_length": 64,
    "global_batch_size": 8,
    "micro_batch_size": 2,
    "schedule": {"warmup_steps": 2},
}
TINY_CADENCE = {
    "log_every": 1,
    "checkpoint_every": 2,
    "routing_flush_every": 3,
    "tensorboard": False,
}


def tiny_recipe(name: str, stages: list, **sections) -> dict:
    """A recipe of the tiny model with these ``stages``; ``sections`` add or replace top-level
    sections (``cadence``, ``data``, ``training``...). A fresh copy on every call."""
    import copy

    raw = {"name": name, "seed": 7, "model": TINY_MODEL, "training": TINY_TRAINING}
    return copy.deepcopy({**raw, **sections, "stages": stages})
