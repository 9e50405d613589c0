"""The math tagger on real text: GSM8K solutions in their structured, prose, Socratic and code
renders, MATH-500 solutions, the standard library's prose; its segmentation, options,
determinism and re-thresholding.

The bars are set just below what the tagger reaches on the real data (figures in each test's
docstring, observed with the default thresholds), so a change that makes it worse fails."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from ablate.data.gsm8k import as_code, as_prose, as_structured
from ablate.data.tagging.base import Document, SkipDocument
from ablate.data.tagging.math import MathTagger, paragraph_spans, score_text
from ablate.data.tagging.registry import build_tagger, check_thresholds
from ablate.errors import AblateError

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
GSM8K = BENCH / "gsm8k"
MATH500 = BENCH / "math500" / "test.jsonl"
needs_gsm8k = pytest.mark.skipif(not (GSM8K / "train.jsonl").is_file(), reason="no GSM8K")
needs_math = pytest.mark.skipif(not MATH500.is_file(), reason="no MATH-500")


def _rows(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _domains(texts, tagger=None, kind="auto") -> Counter:
    tagger = tagger or MathTagger()
    out = Counter()
    for text in texts:
        (seg,) = tagger.segments(Document(text, kind))
        out[tagger.decide(seg.scores, tagger.thresholds)] += 1
    return out


@pytest.fixture(scope="module")
def gsm8k_train():
    return _rows(GSM8K / "train.jsonl", limit=3000)


# --------------------------------------------------------------------------- interface


def test_declared_interface_and_score_ranges():
    t = MathTagger()
    assert t.name == "math" and t.version == "1"
    assert set(t.domains) == {"math.structured", "math.text", "math.code"}
    assert set(t.thresholds) <= set(t.scores)
    text = "Question: 2 apples and 3 more?\nHe has 2 + 3 = <<2+3=5>>5 apples.\n#### 5"
    (seg,) = t.segments(Document(text))
    assert seg.text == text
    assert tuple(seg.scores) == t.scores
    for name, value in seg.scores.items():
        assert isinstance(value, float) and 0.0 <= value <= 1.0, name
        assert value == round(value, 4), name
    assert seg.scores["calc_annotations"] > 0 and seg.scores["final_answer"] == 1.0
    built = build_tagger("math", {"segment": "paragraphs"}, "corpora.yaml: sources.m.tagger")
    assert isinstance(built, MathTagger)
    assert built.describe() == {
        "name": "math",
        "version": "1",
        "options": {"segment": "paragraphs", "min_chars": 200},
    }
    merged = check_thresholds(built, {"structure_score": 0.6}, "corpora.yaml: thresholds")
    assert merged["structure_score"] == 0.6 and merged["code_ratio"] == t.thresholds["code_ratio"]


@pytest.mark.parametrize(
    "options, pieces",
    [
        ({"segmnt": "none"}, ["tagger_options", "'segmnt'", "allowed: segment, min_chars"]),
        ({"segment": "lines"}, ["tagger_options", "segment", "'lines'", "none, paragraphs"]),
        ({"segment": 1}, ["tagger_options", "segment", "none, paragraphs"]),
        ({"min_chars": "200"}, ["tagger_options", "min_chars", "integer"]),
        ({"min_chars": 0}, ["tagger_options", "min_chars", ">= 1"]),
        ({"min_chars": True}, ["tagger_options", "min_chars", "integer"]),
        ([1, 2], ["tagger_options", "mapping"]),
    ],
)
def test_bad_options_are_one_line_naming_where_key_and_allowed(options, pieces):
    with pytest.raises(AblateError) as e:
        MathTagger(options, "corpora.yaml: sources.gsm.tagger_options")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("corpora.yaml: sources.gsm.tagger_options")
    for piece in pieces:
        assert piece in msg, (piece, msg)


# --------------------------------------------------------------------------- real data


@needs_gsm8k
def test_gsm8k_structured_and_prose_renders(gsm8k_train):
    """First 3000 train problems: structured 2978 (99.3%) -> math.structured, the same solutions
    as one prose paragraph (``as_prose``) 3000 -> math.text (all 7473: 99.4% and 100%)."""
    n = len(gsm8k_train)
    structured = _domains(as_structured(r["question"], r["answer"]) for r in gsm8k_train)
    prose = _domains(as_prose(r["question"], r["answer"]) for r in gsm8k_train)
    assert structured["math.structured"] / n >= 0.985, structured
    assert prose["math.text"] / n >= 0.995, prose
    assert structured["math.code"] == prose["math.code"] == 0


@needs_gsm8k
def test_gsm8k_socratic_is_structured():
    """test_socratic (sub-question ** answer per line): 1318 of 1319 -> math.structured;
    the sub-question markers show in numbered_steps."""
    rows = _rows(GSM8K / "test_socratic.jsonl")
    t = MathTagger()
    got = Counter()
    steps = 0.0
    for r in rows:
        (seg,) = t.segments(Document(as_structured(r["question"], r["answer"])))
        got[t.decide(seg.scores, t.thresholds)] += 1
        steps += seg.scores["numbered_steps"]
    assert got["math.structured"] / len(rows) >= 0.995, got
    assert steps / len(rows) >= 0.5  # observed mean 0.61


def _fenced_program(question: str, answer: str) -> str:
    """Program-of-thought in markdown: the reasoning as prose, then a fenced Python block that
    recomputes each calculator annotation (the shape MathCoder-style data takes)."""
    body = re.sub(r"<<[^>]*>>", "", answer.split("####")[0]).strip()
    exprs = re.findall(r"<<([^=<>]*)=", answer)
    code = [f"v{i} = {e}" for i, e in enumerate(exprs)] + [f"print(v{len(exprs) - 1})"]
    return f"Question: {question}\n\n{body}\n\n```python\n" + "\n".join(code) + "\n```\n"


@needs_gsm8k
def test_program_of_thought_is_math_code(gsm8k_train):
    """``as_code`` (comments + one assignment per step): 100% -> math.code (all 7473 too);
    prose followed by a fenced program (code 5-15% of the characters): 7371 of 7378 (99.9%;
    a long question can outweigh a short program)."""
    rows = [r for r in gsm8k_train if "<<" in r["answer"]]
    commented = _domains(as_code(r["question"], r["answer"]) for r in gsm8k_train)
    fenced = _domains(_fenced_program(r["question"], r["answer"]) for r in rows)
    assert commented["math.code"] == len(gsm8k_train), commented
    assert fenced["math.code"] / len(rows) >= 0.995, fenced
    # the same program without its reasoning (no comments, no prose) is not math.code
    bare = "x = 48 / 2\ny = 48 + x\nprint(y)\n"
    (seg,) = MathTagger().segments(Document(bare))
    assert seg.scores["code_ratio"] == 1.0 and seg.scores["reasoning_ratio"] == 0.0
    assert MathTagger().decide(seg.scores, MathTagger.thresholds) != "math.code"


@needs_math
def test_math500_layouts():
    """MATH-500 solutions: every one with an align environment of >= 3 rows (71) ->
    math.structured; every one that is a single paragraph with no display math (178) ->
    math.text; the rest is the mix the hand-labelled set measures."""
    aligned, paragraphs = [], []
    for r in _rows(MATH500):
        s = r["solution"]
        if s.count("\\\\") >= 3 and "\\begin{align" in s:
            aligned.append(s)
        if "\n" not in s.strip() and not re.search(r"\\\[|\$\$|\\begin\{|\[asy\]", s):
            paragraphs.append(s)
    assert len(aligned) >= 50 and len(paragraphs) >= 150
    assert _domains(aligned)["math.structured"] == len(aligned)
    assert _domains(paragraphs)["math.text"] == len(paragraphs)


def test_ordinary_prose_scores_low():
    """pydoc topics (79 texts): structure score at most 0.30 (mean 0.14). Module docstrings of
    the first 120 stdlib modules (51 over 300 characters): mean 0.20, one reaches
    math.structured (os.py's, a bulleted list: labelled lines are structure, math or not).
    Docstrings with indented code examples are math.code by the decision rule (prose paired
    with code); the math tagger is meant for math sources, where that is reasoning + code."""
    import pydoc_data.topics as topics

    scores = [score_text(v)["structure_score"] for v in topics.topics.values()]
    assert max(scores) < 0.35 and sum(scores) / len(scores) < 0.2
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(stdlib.glob("*.py"))[:120]:
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError):
            continue
        if doc and len(doc) > 300:
            docs.append(doc)
    assert len(docs) >= 30
    got = _domains(docs)
    assert got["math.structured"] <= 1, got
    mean = sum(score_text(d)["structure_score"] for d in docs) / len(docs)
    assert mean < 0.25


# --------------------------------------------------------------------------- decisions


def test_rethreshold_same_scores_other_domain():
    t = MathTagger()
    text = "Question: How many?\nShe has 3 * 4 = <<3*4=12>>12 pens.\nThen 12 - 5 = 7.\n#### 7"
    (seg,) = t.segments(Document(text))
    s = seg.scores
    assert t.decide(s, t.thresholds) == "math.structured"
    above = dict(t.thresholds, structure_score=min(1.0, s["structure_score"] + 0.01))
    assert t.decide(s, above) == "math.text"
    code = as_code("How many pens?", "She has 3 * 4 = <<3*4=12>>12 pens.\n#### 12")
    (seg,) = t.segments(Document(code))
    assert t.decide(seg.scores, t.thresholds) == "math.code"
    assert t.decide(seg.scores, dict(t.thresholds, code_ratio=1.01)) != "math.code"
    assert t.decide(seg.scores, dict(t.thresholds, reasoning_ratio=1.01)) != "math.code"


def test_kinds_python_and_notebook():
    t = MathTagger()
    program = "# half of 48 sold in May\nmay = 48 / 2\n# both months\nprint(48 + may)\n"
    (seg,) = t.segments(Document(program, "python"))
    assert seg.scores["code_ratio"] == 1.0 and t.decide(seg.scores, t.thresholds) == "math.code"
    nb = {
        "cells": [
            {"cell_type": "markdown", "source": ["Natalia sold half as many clips in May.\n"]},
            {"cell_type": "code", "source": ["may = 48 / 2\n", "total = 48 + may\n", "total"]},
        ]
    }
    (seg,) = t.segments(Document(json.dumps(nb), "notebook"))
    assert t.decide(seg.scores, t.thresholds) == "math.code"
    with pytest.raises(SkipDocument, match="not valid JSON"):
        t.segments(Document("{not json", "notebook"))


# --------------------------------------------------------------------------- segments


def _page() -> str:
    """A textbook-like page: prose paragraphs, a display derivation with a blank line inside,
    a fenced program with a blank line inside, short headings."""
    return (
        "\n\nSection 2. Sums\n\n"
        "We want the sum of the first n odd numbers. Writing a few cases out suggests that the "
        "sum is always a perfect square, and a picture of nested squares makes that plausible; "
        "here we prove it by pairing the terms from both ends of the sum, which is the trick "
        "Gauss is said to have used.\n\n"
        "Example.\n\n"
        "\\begin{align*}\n1 + 3 + 5 &= 9 \\\\\n\n&= 3^2 \\\\\n1 + 3 + 5 + 7 &= 16 \\\\\n"
        "&= 4^2\n\\end{align*}\n\n"
        "```python\ndef odd_sum(n):\n    total = 0\n\n    for k in range(n):\n"
        "        total += 2 * k + 1\n    return total\n```\n\n"
        "Remark.\n  \n\n"
    )


def test_paragraph_spans_cover_the_document_in_order():
    text = _page()
    for min_chars in (1, 40, 200, 10_000):
        spans = paragraph_spans(text, min_chars)
        assert spans and all(a < b for a, b in spans)
        rebuilt, pos = [], 0
        for a, b in spans:
            gap = text[pos:a]
            assert gap.strip() == "" and (pos == 0 or "\n\n" in gap.replace(" ", ""))
            rebuilt += [gap, text[a:b]]
            pos = b
        assert text[pos:].strip() == ""
        assert "".join(rebuilt) + text[pos:] == text
        # a fence or a display block is never cut at its inner blank line
        for a, b in spans:
            seg = text[a:b]
            assert seg.count("```") % 2 == 0
            assert seg.count("\\begin{align*}") == seg.count("\\end{align*}")
        # every segment but the last reaches min_chars (the last absorbs a short tail)
        assert all(b - a >= min_chars for a, b in spans[:-1])
    assert len(paragraph_spans(text, 1)) == 6  # heading, prose, "Example.", align, code, tail
    assert len(paragraph_spans(text, 10_000)) == 1


def test_segments_are_tagged_on_their_own():
    t = MathTagger({"segment": "paragraphs", "min_chars": 120})
    prose = (
        "Prime factorising gives $196=2^2\\cdot 7^2$, so a divisor chooses an exponent of 2 "
        "and an exponent of 7 independently. There are three choices each, so there are "
        "$3\\times 3=9$ divisors, which we can also check by listing them in pairs."
    )
    steps = (
        "Step 1. 48 / 2 = 24 clips in May.\nStep 2. 48 + 24 = 72 clips in all.\n"
        "Step 3. 72 / 8 = 9 boxes.\nStep 4. 9 * 3 = 27 dollars.\n#### 27"
    )
    text = prose + "\n\n" + steps + "\n"
    segs = t.segments(Document(text))
    assert [s.text for s in segs] == [prose, steps + "\n"]
    got = [t.decide(s.scores, t.thresholds) for s in segs]
    assert got == ["math.text", "math.structured"]
    assert MathTagger().segments(Document(text))[0].text == text


# --------------------------------------------------------------------------- determinism

_SCRIPT = """
import json, sys
from ablate.data.tagging.base import Document
from ablate.data.tagging.math import MathTagger
t = MathTagger({"segment": "paragraphs", "min_chars": 50})
out = [[s.text, s.scores] for d in json.load(sys.stdin) for s in t.segments(Document(d))]
sys.stdout.write(json.dumps(out, sort_keys=False))
"""


@needs_gsm8k
@needs_math
def test_deterministic_across_processes_and_hash_seeds(gsm8k_train):
    docs = [as_structured(r["question"], r["answer"]) for r in gsm8k_train[:40]]
    docs += [r["solution"] for r in _rows(MATH500, limit=40)] + [_page()]
    outs = []
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run(
            [sys.executable, "-c", _SCRIPT],
            input=json.dumps(docs),
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            check=True,
        )
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
    here = [
        [s.text, s.scores]
        for d in docs
        for s in MathTagger({"min_chars": 50, "segment": "paragraphs"}).segments(Document(d))
    ]
    assert json.dumps(here) == outs[0]


def _per_line_features(text: str) -> dict[str, float]:
    """The line features of a text without LaTeX, computed the plain way (a loop over its
    lines), to check the whole-text regexes' bookkeeping (a pattern that consumes the newline
    after a line silently skips the next one)."""
    from ablate.data.tagging import math as m

    calc_lines = sum(1 for line in text.split("\n") if re.search(r"<<[^<>\n]*=[^<>\n]*>>", line))
    lines = [line for line in m._CALC.sub("", text).split("\n") if line.strip(" \t")]
    rel = re.compile(m._RELATION)
    step = re.compile(m._STEP.pattern[2:])  # the label patterns, less their leading r"\n"
    n = max(len(lines), m.MIN_LINES)
    eq = sum(
        len(line) <= m.SHORT_LINE and not m._TWO_SENTENCES.search(line) and bool(rel.search(line))
        for line in lines
    )
    sentences = sum(
        bool(rel.search(s)) for line in lines for s in re.split(r"(?<=[.!?])[ \t]+", line)
    )
    unit = 0
    for line in lines:
        body = line[:-1] if line.endswith((" ", "\t")) else line
        body = body[:-1] if body.endswith((" ", "\t")) and not body.endswith("\\\\ ") else body
        unit += len(line) <= m.SHORT_LINE and (
            body[-1:] in set(".!?:;$})]0123456789") or body.endswith("\\\\")
        )
    steps = sum(bool(step.match(line)) or "?" in line and "**" in line for line in lines)
    return {
        "equation_lines": eq / n * min(1.0, eq / sentences) if sentences else 0.0,
        "numbered_steps": min(1.0, steps / n),
        "calc_annotations": min(1.0, calc_lines / n),
        "line_structure": unit / n,
    }


@needs_gsm8k
def test_whole_text_counts_match_a_per_line_loop(gsm8k_train):
    from ablate.data.tagging.math import structure_features

    rows = gsm8k_train[:400] + _rows(GSM8K / "test_socratic.jsonl", limit=200)
    texts = [as_structured(r["question"], r["answer"]) for r in rows]
    texts += [as_prose(r["question"], r["answer"]) for r in rows[:100]]
    texts += ["Step 1. 3 + 4 = 7.  \n\n(a) 7 * 2 = 14\n- then 14 - 1 = 13\nSo: 13"]
    for text in texts:
        got = structure_features(text)
        for name, value in _per_line_features(text).items():
            assert got[name] == pytest.approx(value, abs=1e-12), (name, text)


@pytest.mark.parametrize(
    "opener", ["\\[ x = 1 ", "\\( y ", "\\begin{align} x \\\\ ", "[asy] draw ", "```py\nx = 1\n"]
)
def test_unclosed_delimiters_cost_linear_time(opener):
    """20000 unclosed openers: a lazy '.*?' from each one ran to the end of the text (17-24 s
    for \\[ and \\( before the spans stopped at the next opener); now ~0.02 s."""
    import time

    text = opener * 20000
    start = time.perf_counter()
    score_text(text)
    paragraph_spans(text, 200)
    assert time.perf_counter() - start < 3.0
