"""The generated corpora: the toy world, GSM8K and the Python standard library."""

from __future__ import annotations

import ast
import json
import os
import re

import pytest

from ablate.data.gsm8k import as_structured, as_text
from ablate.data.prepare import prepare
from ablate.data.stdlib_corpus import strip_docs_and_comments
from ablate.data.toyworld import DOMAINS, ToyWorldConfig, generate
from ablate.data.toyworld.world import apply

from conftest import write_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GSM8K = os.environ.get("ABLATE_GSM8K", os.path.join(REPO, "..", "shared", "benchmarks", "gsm8k"))


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------- toy world

SMALL = ToyWorldConfig(documents_per_domain=300, probes_per_task=60, entities=10)


def test_toyworld_is_deterministic_in_its_seed():
    rows_a, probes_a = generate(SMALL)
    rows_b, probes_b = generate(ToyWorldConfig(**{**SMALL.__dict__}))
    assert rows_a == rows_b and probes_a == probes_b
    rows_c, _ = generate(ToyWorldConfig(**{**SMALL.__dict__, "seed": 99}))
    assert rows_c != rows_a


def test_toyworld_has_six_domains_and_the_requested_sizes():
    cfg = ToyWorldConfig(
        documents_per_domain=100,
        domain_documents={"math.structured": 250},
        probes_per_task=5,
        entities=4,
    )
    rows, probes = generate(cfg)
    counts = {d: sum(r["domain"] == d for r in rows) for d in DOMAINS}
    assert counts == {**{d: 100 for d in DOMAINS}, "math.structured": 250}
    assert len(probes["math_answer"]) == len(probes["program_output"]) == 5
    assert len(probes["fact_recall"]) == 4 * 4  # every fact of every entity


def test_toyworld_probes_are_held_out_and_their_answers_are_right():
    rows, probes = generate(SMALL)
    train_text = "\n".join(r["text"] for r in rows)
    for p in probes["math_answer"]:
        assert p["prompt"] not in train_text  # the question never appears in training
        steps = re.findall(
            r"Step \d+: (\d+) ([-+*]) (\d+) = (\d+)", p["solutions"]["math.structured"]
        )
        assert steps, p
        for a, op, b, c in steps:
            assert apply({"+": "add", "-": "sub", "*": "mul"}[op], int(a), int(b)) == int(c)
        assert steps[-1][3] == p["answer"]
        # the math.code solution really computes the answer
        code = p["solutions"]["math.code"].rsplit("Answer:", 1)[0].replace("print(", "result = (")
        scope: dict = {}
        exec(code, scope)
        assert str(scope["result"]) == p["answer"]
    for p in probes["program_output"]:
        assert p["prompt"] + p["answer"] not in train_text
        scope = {}
        exec(
            p["prompt"] + p["answer"], scope
        )  # the assert holds: the answer is the program's value
    for p in probes["fact_recall"]:
        assert p["prompt"] + p["gold"] in train_text  # recall: the fact was stated in training


def test_toyworld_domains_share_the_same_arithmetic_and_programs_run():
    rows, _ = generate(SMALL)
    by = {d: [r["text"] for r in rows if r["domain"] == d] for d in DOMAINS}
    for text in by["code.exec"]:
        exec(text, {})  # every program is standalone and its assert holds
    for text in by["code.nl"][:50]:
        import doctest

        scope: dict = {}
        exec(text, scope)
        fn = next(v for k, v in scope.items() if callable(v) and not k.startswith("__"))
        test = doctest.DocTestParser().get_doctest(
            fn.__doc__, {fn.__name__: fn}, fn.__name__, None, 0
        )
        result = doctest.DocTestRunner(verbose=False).run(test)
        assert result.failed == 0 and result.attempted >= 1
    for d in ("math.text", "math.structured", "math.code"):
        assert all(t.startswith("Question: ") for t in by[d])
    assert all("Question" not in t and "Step" not in t for t in by["code.exec"])


def test_toyworld_prepare_writes_probes_and_six_datasets(tmp_path, cli):
    spec = write_spec(
        tmp_path / "tw.yaml",
        [
            {
                "reader": "toyworld",
                "eval_fraction": 0.05,
                "options": {"documents_per_domain": 200, "probes_per_task": 20, "entities": 5},
            }
        ],
    )
    m = prepare(spec, str(tmp_path / "tw"), workers=1).manifest
    assert sorted(e.domain for e in m.datasets) == sorted(DOMAINS)
    assert {e.domain for e in m.eval_datasets} <= set(DOMAINS) and m.eval_datasets
    assert set(m.probes) == {"math_answer", "program_output", "fact_recall"}
    for info in m.probes.values():
        assert len(read_jsonl(os.path.join(m.root, info["path"]))) == info["count"]
    assert os.path.isfile(os.path.join(m.root, "raw", "toyworld.jsonl"))


# ---------------------------------------------------------------- GSM8K

needs_gsm8k = pytest.mark.skipif(
    not os.path.isfile(os.path.join(GSM8K, "train.jsonl")),
    reason="GSM8K files not found beside the repo (set ABLATE_GSM8K)",
)


def test_gsm8k_renderings():
    q, a = "Tom has 3 cats and buys 2. How many?", "He has 3+2=<<3+2=5>>5 cats.\n#### 5"
    assert (
        as_structured(q, a)
        == "Question: Tom has 3 cats and buys 2. How many?\nHe has 3+2=<<3+2=5>>5 cats.\n#### 5"
    )
    assert (
        as_text(q, a)
        == "Question: Tom has 3 cats and buys 2. How many?\nHe has 3+2=5 cats.\nThe answer is 5."
    )


@needs_gsm8k
def test_gsm8k_train_split_becomes_structured_math(tmp_path, capsys):
    spec = write_spec(
        tmp_path / "g.yaml",
        [{"reader": "gsm8k", "path": os.path.abspath(GSM8K), "eval_fraction": 0.0}],
    )
    m = prepare(spec, str(tmp_path / "g"), workers=2).manifest
    train_rows = sum(1 for line in open(os.path.join(GSM8K, "train.jsonl")) if line.strip())
    by_domain = {e.domain: e for e in m.datasets}
    # decontamination (on by default) drops the 11 train problems sharing a 13-gram with test
    caught = m.decontamination["sources"]["gsm8k"]
    assert caught["dropped"] == caught["by_eval_set"]["gsm8k"] == 11
    assert by_domain["math.structured"].documents == train_rows - 11 == 7462
    if not os.path.isfile(os.path.join(GSM8K, "train_socratic.jsonl")):
        assert "math.structured.socratic" not in by_domain
        assert "Socratic level is skipped" in capsys.readouterr().err
    test_questions = {
        json.loads(line)["question"] for line in open(os.path.join(GSM8K, "test.jsonl"))
    }
    raw = read_jsonl(os.path.join(m.root, "raw", "gsm8k.jsonl"))
    assert not any(r["text"].split("\n", 1)[0][len("Question: ") :] in test_questions for r in raw)


@needs_gsm8k
def test_gsm8k_levels_are_selectable(tmp_path):
    spec = write_spec(
        tmp_path / "g.yaml",
        [
            {
                "reader": "gsm8k",
                "path": os.path.abspath(GSM8K),
                "eval_fraction": 0.0,
                "options": {"levels": ["text", "structured"]},
            }
        ],
        decontaminate=False,  # the levels alone: every train problem in both
    )
    m = prepare(spec, str(tmp_path / "g"), workers=1).manifest
    docs = {e.domain: e.documents for e in m.datasets}
    assert docs == {"math.text": 7473, "math.structured": 7473}
    raw = read_jsonl(os.path.join(m.root, "raw", "gsm8k.jsonl"))
    text_rows = [r["text"] for r in raw if r["domain"] == "math.text"]
    assert not any("<<" in t or "####" in t for t in text_rows)
    assert all(re.search(r"The answer is .+\.$", t) for t in text_rows)


# ---------------------------------------------------------------- stdlib


def test_stripping_keeps_code_and_drops_docstrings_and_comments():
    src = (
        '"""Module doc."""\n'
        "import os  # why\n"
        "\n"
        "\n"
        "def f(x):\n"
        '    """Doc\n'
        '    more."""\n'
        "    # note\n"
        "    return x  # tail\n"
        "\n"
        "class C:\n"
        '    """Only a docstring."""\n'
    )
    out = strip_docs_and_comments(src, ast.parse(src))
    assert out == "import os\n\ndef f(x):\n    return x\n\nclass C:\n    pass\n"


def test_stdlib_reader_makes_real_code_corpora(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", [{"reader": "stdlib", "eval_fraction": 0.0}])
    m = prepare(spec, str(tmp_path / "s"), workers=2).manifest
    docs = {e.domain: e for e in m.datasets}
    assert set(docs) == {"code.exec", "code.nl"}
    assert docs["code.exec"].documents > 500 and docs["code.exec"].tokens > 5_000_000
    assert docs["code.nl"].documents > 3000
    raw = read_jsonl(os.path.join(m.root, "raw", "stdlib.jsonl"))
    programs = [r["text"] for r in raw if r["domain"] == "code.exec"]
    for text in programs[::25]:
        tree = ast.parse(text)  # still valid Python
        assert ast.get_docstring(tree) is None
        assert all(
            ast.get_docstring(n) is None
            for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.ClassDef))
        )
    assert sum('"""' in t for t in programs) < len(programs) * 0.2  # docstrings went to code.nl
    assert any(">>>" in r["text"] for r in raw if r["domain"] == "code.nl")  # doctests kept there
