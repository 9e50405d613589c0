"""Decontamination against the eval sets (``ablate.data.tagging.decontam``).

Must-shows: every eval problem planted in a corpus (verbatim, re-wrapped, re-spaced, upper-cased)
is found; the measured overlap of GSM8K train and of MBPP's other splits with their test sets;
no hit anywhere in the standard library; one-line errors. The vectorised matcher is checked
against a plain Python reference (sets of word tuples) on real text.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sysconfig
import time

import numpy as np
import pytest

from ablate.data.stdlib_corpus import stdlib_files
from ablate.data.tagging import decontam
from ablate.data.tagging.decontam import (
    Decontaminator,
    EvalSet,
    load_eval_sets,
    mbpp_text,
    ngram_hashes,
    normalize_words,
)
from ablate.errors import AblateError
from ablate.evals.tasks.mbpp import read_mbpp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(os.path.dirname(REPO), "shared", "benchmarks")
TASK_DIR = os.path.join(os.path.dirname(__file__), "data", "lm_eval_tasks")
BUILTIN = ["gsm8k", "math500", "mbpp", "humaneval"]


@pytest.fixture(scope="module")
def builtin():
    sets = load_eval_sets(BUILTIN, REPO, "decontam.against")
    return sets, Decontaminator(sets)


@pytest.fixture(scope="module")
def stdlib_texts():
    files = stdlib_files(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    return files, texts


def reference_hits(sets: list[EvalSet], texts: list[str], n: int = 13) -> list[tuple[str, ...]]:
    """The straightforward matcher: Python sets of word tuples (same rules: numbers-only grams
    dropped, items all longer than n here)."""
    grams: dict[tuple, set] = {}
    for s in sets:
        for item in s.items:
            w = normalize_words(item)
            for i in range(len(w) - n + 1):
                if not all(x.isdigit() for x in w[i : i + n]):
                    grams.setdefault(tuple(w[i : i + n]), set()).add(s.name)
    out = []
    for text in texts:
        w, found = normalize_words(text), set()
        for i in range(len(w) - n + 1):
            found |= grams.get(tuple(w[i : i + n]), set())
        out.append(tuple(sorted(found)))
    return out


def test_normalize_words_ignores_layout_case_and_punctuation_spacing():
    a = "Natalia sold clips to 48 of her friends in April,\nand then she sold half."
    b = "NATALIA   sold clips to 48 of her\tfriends in april , and then she sold half ."
    assert normalize_words(a) == normalize_words(b)
    assert normalize_words("def min_cost(m, n):") == ["def", "min", "cost", "m", "n"]
    # NFKC folds full-width forms; letters outside ASCII are letters
    assert normalize_words("Ｆｕｌｌ-width ＡＢＣ１２３, Größe Café") == [
        "full",
        "width",
        "abc123",
        "größe",
        "café",
    ]


def test_ascii_fast_path_gives_the_regex_words(stdlib_texts):
    _, texts = stdlib_texts
    samples = texts[:200] + ["x_1 = a.b(c)\n\tIF y:", "über naïve\u00a0text", "ＡＢＣ"]
    for text in samples:
        expected = decontam.word_hashes(normalize_words(text))
        got = np.array(decontam._text_word_hashes(text), dtype=np.int64).view(np.uint64)
        assert np.array_equal(got, expected)


def test_hashes_are_stable_values():
    """The values themselves are pinned: a table saved by one process is read by another
    (Python's hash() would differ per process)."""
    g = ngram_hashes("The quick brown fox jumps", n=3)
    assert g.dtype == np.uint64 and len(g) == 3
    assert [int(x) for x in g] == PINNED
    assert len(ngram_hashes("only two", n=3)) == 0


PINNED = [17467233332674452831, 17692856669674402590, 1481833238498681525]


def planted_variants(item: str) -> list[str]:
    tokens = item.split()
    rewrapped = "\n".join(" ".join(tokens[i : i + 5]) for i in range(0, len(tokens), 5))
    respaced = re.sub(r"\s+", "  \t ", re.sub(r"([,.;:()\[\]])", r" \1 ", item))
    return [item, rewrapped, respaced, item.upper()]


def test_every_eval_problem_planted_in_a_corpus_is_found(builtin, stdlib_texts):
    sets, dec = builtin
    assert [len(s.items) for s in sets] == [1319, 500, 500, 164]
    corpus, expect = [], []
    clean = stdlib_texts[1][:50]
    for s in sets:
        for i, item in enumerate(s.items):
            for variant in planted_variants(item):
                corpus.append(f"From a forum thread.\n\n{variant}\n\nThanks, that helped.")
                expect.append(s.name)
            corpus.append(clean[i % len(clean)])  # unrelated documents in the same batch
            expect.append(None)
    found = dec.hits_batch(corpus)
    missed = [(e, d[:80]) for e, d, h in zip(expect, corpus, found) if e and e not in h]
    assert not missed, missed[:5]
    assert all(h == () for e, h in zip(expect, found) if e is None)
    assert sum(e is not None for e in expect) == 4 * (1319 + 500 + 500 + 164)


def test_a_gram_across_two_documents_is_no_hit(builtin):
    sets, dec = builtin
    words = sets[0].items[0].split()
    assert dec.hits(" ".join(words[:20])) == ("gsm8k",)
    halves = [" ".join(words[:6]), " ".join(words[6:12])]  # 12 words together, fewer apart
    assert dec.hits_batch(halves) == [(), ()]
    assert dec.hits_batch([" ".join(words[:6]), " ".join(words[6:30])]) == [(), ("gsm8k",)]


def test_gsm8k_train_overlap_with_test(builtin):
    sets, dec = builtin
    with open(os.path.join(BENCH, "gsm8k", "train.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    docs = [r["question"] + "\n" + r["answer"] for r in rows]
    found = dec.hits_batch(docs)
    overlapping = sum("gsm8k" in h for h in found)
    print(f"GSM8K train documents sharing a 13-gram with GSM8K test: {overlapping}/{len(docs)}")
    assert len(docs) == 7473 and overlapping == 11  # measured; a normalisation change moves it
    assert found == reference_hits(sets, docs)


def test_mbpp_other_splits_overlap_with_test(builtin):
    sets, dec = builtin
    rows = read_mbpp(os.path.join(BENCH, "mbpp", "mbpp.jsonl"))
    counts = {}
    for split, ids in (("prompt", range(1, 11)), ("validation", range(511, 601))) + (
        ("train", range(601, 975)),
    ):
        docs = [mbpp_text(rows[i]) for i in ids]
        found = dec.hits_batch(docs)
        assert found == reference_hits(sets, docs)
        counts[split] = (sum("mbpp" in h for h in found), len(docs))
    print(f"MBPP documents sharing a 13-gram with MBPP test (overlapping, of): {counts}")
    assert counts == {"prompt": (2, 10), "validation": (18, 90), "train": (62, 374)}


def test_no_hits_in_the_standard_library(builtin, stdlib_texts):
    sets, dec = builtin
    files, texts = stdlib_texts
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    start = time.perf_counter()
    found = dec.hits_batch(texts)
    seconds = time.perf_counter() - start
    print(f"hits_batch: {mb:.1f} MB of stdlib in {seconds:.2f} s = {mb / seconds:.1f} MB/s")
    assert [(f, h) for f, h in zip(files, found) if h] == []
    # the rule that keeps them out: numbers-only grams (`0 1 2 ... 12`, IPv6 runs of zeros) are
    # not in the table, though they are in HumanEval's and MBPP's tests
    numbers = " ".join(str(i) for i in range(20))
    assert dec.hits(numbers) == ()
    assert found[:100] == reference_hits(sets, texts[:100])


def test_files_short_items_describe_and_persistence(tmp_path):
    long_item = "the lighthouse keeper counted seventeen gulls circling above the rocky harbour"
    nine = "a purple walrus sang sea shanties beside quiet docks"
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "mine.jsonl").write_text(
        json.dumps({"id": 3, "q": long_item, "tags": ["x", "y"]}) + "\n\n"
        + json.dumps({"q": nine}) + "\n"
        + json.dumps({"q": "too short"}) + "\n"
    )  # fmt: skip
    (tmp_path / "blocks.txt").write_text(f"{nine}\n\n  \n{long_item.upper()}\nsecond line\n")
    sets = load_eval_sets(["evals/mine.jsonl", "blocks.txt"], str(tmp_path), "against")
    assert [s.items for s in sets] == [
        [f"{long_item}\nx\ny", nine, "too short"],
        [nine, f"{long_item.upper()}\nsecond line"],
    ]
    dec = Decontaminator(sets)
    info = dec.describe()
    assert info["n"] == 13 and info["min_words"] == 8
    mine, blocks = info["sets"]
    assert (mine["items"], mine["short_items"], mine["skipped_items"]) == (3, 1, 1)
    assert (blocks["items"], blocks["short_items"], blocks["skipped_items"]) == (2, 1, 0)
    assert (
        mine["fingerprint"] == EvalSet.of("x", sets[0].items).fingerprint != blocks["fingerprint"]
    )
    docs = [
        f"Log: {long_item}, and so on",  # 12 words of the item: the 13-gram needs 'x' after it
        f"{long_item} X Y and more",
        f"yesterday {nine.upper()} again",  # the 9-word item matched whole
        "a purple walrus sang sea shanties beside quiet",  # 8 of its 9 words
        "this was too short",
    ]
    expected = [(), ("evals/mine.jsonl",), ("blocks.txt", "evals/mine.jsonl"), (), ()]
    assert dec.hits_batch(docs) == expected
    assert [dec.hits(d) for d in docs] == expected
    dec.save(str(tmp_path / "table"))
    loaded = Decontaminator.load(str(tmp_path / "table"))
    assert loaded.hits_batch(docs) == expected and loaded.describe() == info
    blob = pickle.dumps(dec)
    assert pickle.loads(blob).hits_batch(docs) == expected
    assert len(blob) < 4096  # small enough to send to every worker


def test_builtin_table_is_small_to_send(builtin, tmp_path):
    _, dec = builtin
    dec.save(str(tmp_path / "t.npz"))
    assert os.path.getsize(tmp_path / "t.npz") < 8 << 20
    again = Decontaminator.load(str(tmp_path / "t.npz"))
    assert again.describe() == dec.describe()
    assert [s["ngrams"] for s in dec.describe()["sets"]] == [
        s["ngrams"] for s in again.describe()["sets"]
    ]


def test_lm_eval_task_docs(tmp_path):
    pytest.importorskip("lm_eval")
    include = tmp_path / "tasks"
    shutil.copytree(TASK_DIR, include)
    for yaml_file in include.glob("*.yaml"):  # data_files are resolved from the working directory
        yaml_file.write_text(yaml_file.read_text().replace("DATA_DIR", str(include)))
    sets = load_eval_sets(
        ["lm_eval:toy_text", "lm_eval:toy_facts"], str(tmp_path), "against", lm_eval_include="tasks"
    )
    with open(include / "toy_text.jsonl") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    assert [s.items for s in sets][0] == [" " + t for t in texts]
    assert sets[1].items[0] == "The capital of Rakami is  Thalo"  # text, delimiter, right choice
    dec = Decontaminator(sets)
    facts = dec.describe()["sets"][1]
    short = sum(len(normalize_words(item)) < 8 for item in sets[1].items)
    assert facts["items"] == 8 and facts["skipped_items"] == short > 0  # below 8 words: skipped
    assert facts["short_items"] == 8 - short  # 8 to 12 words: matched whole
    # the toy text states a toy fact: "The river of Rakami is the Lymar River" (8 words, whole)
    assert dec.hits("We read: " + texts[0].lower() + " The end.") == (
        "lm_eval:toy_facts",
        "lm_eval:toy_text",
    )
    assert dec.hits("We read: " + texts[0].split(".")[0]) == ()  # 6 words: neither
    with pytest.raises(AblateError, match=r"^against\[0\]: lm-eval knows no task 'nope'"):
        load_eval_sets(["lm_eval:nope"], str(tmp_path), "against", lm_eval_include="tasks")


@pytest.mark.parametrize(
    "entry, content, message",
    [
        (
            "gsm9k",
            None,
            r"^decontam\.against\[0\]: unknown eval set 'gsm9k' \(allowed: gsm8k, humaneval, "
            r"math500, mbpp, lm_eval:<task>, or a \.jsonl/\.txt file\)$",
        ),
        (
            "evals/none.jsonl",
            None,
            r"^decontam\.against\[0\]: eval set file evals/none\.jsonl not found$",
        ),
        (
            "bad.jsonl",
            '{"q": "fine"}\n{"q": oops}\n',
            r"^decontam\.against\[0\]: eval set file bad\.jsonl: line 2: not valid JSON",
        ),
        (
            "bad.jsonl",
            '{"q": "fine"}\n[1, 2]\n',
            r"^decontam\.against\[0\]: eval set file bad\.jsonl: line 2: expected a JSON object",
        ),
        (
            "bad.jsonl",
            '{"q": "fine"}\n\n{"n": 3}\n',
            r"^decontam\.against\[0\]: eval set file bad\.jsonl: line 3: a row with no string",
        ),
    ],
)
def test_one_line_errors(tmp_path, entry, content, message):
    if content is not None:
        (tmp_path / entry).write_text(content)
    with pytest.raises(AblateError, match=message) as exc:
        load_eval_sets([entry], str(tmp_path), "decontam.against")
    assert "\n" not in str(exc.value) and str(tmp_path) not in str(exc.value)


def test_other_errors(tmp_path, monkeypatch):
    with pytest.raises(AblateError, match=r"^w: must be a non-empty list"):
        load_eval_sets([], str(tmp_path), "w")
    with pytest.raises(AblateError, match=r"^w\[1\]: eval set gsm8k is named twice$"):
        load_eval_sets(["gsm8k", "gsm8k"], REPO, "w")
    monkeypatch.setenv("ABLATE_MATH", str(tmp_path / "missing.jsonl"))
    with pytest.raises(
        AblateError, match=r"^w\[0\]: eval set math500: ABLATE_MATH=.* is not a file$"
    ):
        load_eval_sets(["math500"], REPO, "w")
    with pytest.raises(AblateError, match=r"n: must be a positive integer"):
        Decontaminator([EvalSet.of("a", ["x"])], n=0)
    with pytest.raises(AblateError, match=r"table not found"):
        Decontaminator.load(str(tmp_path / "nothing.npz"))
