"""The code tagger (``ablate.data.tagging.code``) on real text: standard-library modules stripped
of docstrings and comments (code.exec) and as shipped (code.nl), ``pydoc_data`` topics (prose
about code: code.text), MBPP programs (code.exec); notebooks built here (none ship offline).
The fast comment finder is checked against ``tokenize`` on 50 standard-library modules.
About 10 s on 2 shared cores (the sandboxed runs: 2 s of it).
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import sysconfig
import tokenize

import pytest

from ablate.data.stdlib_corpus import stdlib_files, strip_docs_and_comments
from ablate.data.tagging.base import Document, SkipDocument
from ablate.data.tagging.code import (
    CodeTagger,
    comment_spans,
    comments,
    notebook_code,
    read_notebook,
)
from ablate.data.tagging.registry import build_tagger, check_thresholds
from ablate.errors import AblateError

STDLIB = sysconfig.get_paths()["stdlib"]
MBPP = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "benchmarks", "mbpp")
MBPP_FILE = os.path.join(MBPP, "mbpp.jsonl")


def tag(text, kind="auto", **options):
    tagger = CodeTagger(options)
    segments = tagger.segments(Document(text, kind))
    return [(tagger.decide(s.scores, tagger.thresholds), s.scores) for s in segments]


def read(relpath):
    with open(os.path.join(STDLIB, relpath), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def sample_modules():
    """Every 14th standard-library module (sorted): 50 or so, readable and parsing."""
    out = []
    for path in stdlib_files(STDLIB)[::14]:
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            ast.parse(source)
        except (UnicodeDecodeError, SyntaxError):
            continue
        out.append((os.path.relpath(path, STDLIB), source))
    assert len(out) >= 45
    return out


def tokenize_comments(source):
    """The reference: COMMENT tokens of the pure-Python tokenizer, as character spans."""
    starts, pos = [0], 0
    for line in source.split("\n"):
        pos += len(line) + 1
        starts.append(pos)
    return [
        (starts[t.start[0] - 1] + t.start[1], starts[t.end[0] - 1] + t.end[1])
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type == tokenize.COMMENT
    ]


def test_fast_comments_equal_tokenize_on_stdlib_modules(sample_modules):
    total = 0
    for name, source in sample_modules[:50]:
        expected = tokenize_comments(source)
        assert comment_spans(source) == expected, name
        assert comments(source) == [source[a:b] for a, b in expected], name
        total += len(expected)
    assert total > 1000  # the sample is not trivially comment-free


@pytest.mark.parametrize(
    "source",
    [
        's = "# not a comment"  # a comment\n',
        "s = '''\n# inside a string\n'''  # after\n",
        'x = ("a"  # between concatenated strings\n     "b")\n',
        "f = f\"{'#'}\" + rb'\\'#' # tail\n",
        's = "line \\\n# continued string"\n# real\n',
        "x = 1  # crlf\r\ny = '#'\r\n",
        "d = {'k': '\"#'}  # q\n# last line without newline",
        "x = u'''a\\''''  # escaped quote before the end\n",
    ],
)
def test_fast_comments_equal_tokenize_on_tricky_strings(source):
    ast.parse(source)
    assert comment_spans(source) == tokenize_comments(source)


def test_prose_counts_docstrings_and_comments_once():
    source = 'def f():\n    ("doc one"  # note\n     "doc two")\n    return 1  # one\n'
    [(domain, scores)] = tag(source, "python")
    prose = len('"docone"#note"doctwo"#one')  # non-whitespace: the note counted once
    total = len("".join(source.split()))
    assert scores["prose_ratio"] == round(prose / total, 4)
    assert scores["code_ratio"] == round(1 - prose / total, 4)
    assert domain == "code.nl"
    # no statement, no program: empty files, comments alone, a notebook without code cells
    assert tag("", "python")[0][1]["parses"] == 0.0
    assert tag("# only a comment\n", "python")[0][0] == "code.text"
    prose_only = json.dumps({"cells": [{"cell_type": "markdown", "source": "Just words."}]})
    assert tag(prose_only)[0] == (
        "code.text",
        {
            "parses": 0.0,
            "prose_ratio": 1.0,
            "code_ratio": 0.0,
            "doctest_lines": 0.0,
            "markdown_cells": 1.0,
        },
    )


def test_stdlib_modules_stripped_are_exec_and_shipped_are_nl():
    for rel in ("textwrap.py", "argparse.py", "json/decoder.py", "shlex.py", "fractions.py"):
        source = read(rel)
        stripped = strip_docs_and_comments(source, ast.parse(source))
        [(shipped_domain, shipped)] = tag(source, "python")
        [(stripped_domain, scores)] = tag(stripped, "python")
        assert (shipped_domain, stripped_domain) == ("code.nl", "code.exec"), rel
        assert shipped["parses"] == scores["parses"] == 1.0
        assert shipped["prose_ratio"] > 0.1 and scores["prose_ratio"] == 0.0
        assert scores["code_ratio"] == 1.0
    # as an "auto" row the same texts are read as Python too
    assert tag(read("shlex.py"))[0][0] == "code.nl"
    assert tag(read("fractions.py"))[0][1]["doctest_lines"] > 10


def test_pydoc_topics_are_prose_about_code():
    from pydoc_data.topics import topics

    keys = sorted(topics)[::8]
    for key in keys:
        [(domain, scores)] = tag(topics[key])
        assert domain == "code.text", key
        assert scores["parses"] == 0.0
    # the literal block after "into a program:" (the grammar rule) is code; the blocks after
    # "is equivalent to" (rendered from "to::", the colons dropped) are missed: indented prose
    # (a method's description under its signature) looks the same without the colon
    [(_, scores)] = tag(topics["assert"])
    assert 0.02 < scores["code_ratio"] < 0.1


def test_mbpp_programs_are_exec():
    if not os.path.exists(MBPP_FILE):
        pytest.skip("../shared/benchmarks/mbpp is not on this machine")
    with open(MBPP_FILE) as f:
        rows = [json.loads(line) for line in f]
    # outside the test range 11-510: programs a training corpus may hold
    programs = [r["code"] for r in rows if not 11 <= r["task_id"] <= 510][::20]
    for kind in ("auto", "text", "python"):
        decided = [tag(p, kind)[0][0] for p in programs]
        assert len(programs) >= 20 and decided.count("code.exec") == len(programs)


def test_markdown_with_fences_is_code_text_and_mostly_code_is_code():
    md = (
        "# Sorting\n\nPython sorts lists in place with `list.sort`, and returns a new list with\n"
        "`sorted`. Both take a key function and are stable, which matters when sorting\n"
        "records by several fields one after the other.\n\n"
        "```python\nxs = sorted(ys, key=len)\n```\n\nThat is all there is to it.\n"
    )
    [(domain, scores)] = tag(md, "markdown")
    assert domain == "code.text"
    assert 0.0 < scores["code_ratio"] < 0.3
    fences = "Run:\n\n```c\nint main(void) { return 0; }\nint f(int x) { return x * 2; }\n```\n"
    assert tag(fences, "markdown")[0][0] == "code"  # mostly code, but not a Python program
    rst = "Example::\n\n    for i in range(3):\n        print(i)\n\nDone.\n"
    assert tag(rst, "markdown")[0][1]["code_ratio"] > 0.5
    doctest = "Add numbers:\n\n>>> 1 + 1\n2\n>>> sum([1, 2])\n3\n\nEasy."
    [(_, scores)] = tag(doctest, "text")
    assert scores["doctest_lines"] == 2 and scores["code_ratio"] > 0.3
    # a plain-text file of another language is code, not prose (markdown must mark its code)
    c_file = '#include <stdio.h>\n\nint main(void) {\n    printf("hi\\n");\n    return 0;\n}\n'
    assert tag(c_file, "text")[0][0] == "code"
    assert tag(c_file, "markdown")[0][0] == "code.text"
    # a bare word parses as Python, but is prose
    assert tag("Hello")[0][0] == "code.text"
    # a Python file that does not parse (Python 2) is code, not a program
    assert tag("print 'hi'\nprint 'there'\n", "python")[0][0] == "code"


def cell(kind, source):
    c = {"cell_type": kind, "metadata": {}, "source": source}
    if kind == "code":
        c.update(outputs=[{"output_type": "stream", "text": ["# not code\n"]}], execution_count=1)
    return c


NOTEBOOK_CELLS = [
    cell("code", ["import math\n", "%matplotlib inline\n"]),
    cell("code", "x = math.sqrt(2)"),
    cell("markdown", ["# Areas\n", "\n", "The area of a circle is $\\pi r^2$."]),
    cell("code", ["!pip install nothing\n", "def area(r):\n", "    return math.pi * r * r\n"]),
    cell("code", "%%bash\necho not python\n"),
    cell("markdown", "Now print one."),
    cell("code", "print(area(x))"),
]


def notebook(cells=NOTEBOOK_CELLS):
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells})


def test_notebook_cells_are_read_and_magics_dropped():
    cells = read_notebook(notebook())
    assert [k for k, _ in cells] == ["code", "code", "markdown", "code", "code", "markdown", "code"]
    program = notebook_code(cells)
    assert "%" not in program and "!" not in program and "echo" not in program
    ast.parse(program)
    for kind in ("notebook", "auto"):
        [(domain, scores)] = tag(notebook(), kind)
        assert domain == "code.nl"
        assert scores["parses"] == 1.0 and scores["markdown_cells"] == 2.0
        assert 0.2 < scores["prose_ratio"] < 0.8
    # outputs are never read: the "# not code" stream text is in no segment
    assert all("not code" not in s.text for s in CodeTagger().segments(Document(notebook())))
    # nbformat 3: worksheets, code in "input"
    v3 = {"nbformat": 3, "worksheets": [{"cells": [{"cell_type": "code", "input": ["y = 1\n"]}]}]}
    [(domain, scores)] = tag(json.dumps(v3), "notebook")
    assert domain == "code.exec" and scores["markdown_cells"] == 0.0


def test_notebook_segments_keep_order_and_cover_every_cell():
    tagger = CodeTagger({"segment": "cells"})
    segments = tagger.segments(Document(notebook(), "notebook"))
    sources = ["".join(c["source"]).strip("\n") for c in NOTEBOOK_CELLS]
    expected = [sources[0:2], sources[2:5], sources[5:7]]
    assert [s.text for s in segments] == ["\n\n".join(group) for group in expected]
    assert "\n\n".join(s.text for s in segments) == "\n\n".join(sources)  # all cells, in order
    decided = [tagger.decide(s.scores, tagger.thresholds) for s in segments]
    assert decided == ["code.exec", "code.nl", "code.nl"]
    assert [s.scores["markdown_cells"] for s in segments] == [0.0, 1.0, 1.0]
    # unsegmented: one segment, the same text as all segments together
    [whole] = CodeTagger().segments(Document(notebook(), "notebook"))
    assert whole.text == "\n\n".join(s.text for s in segments)
    # python and markdown documents stay whole
    assert len(tagger.segments(Document(read("shlex.py"), "python"))) == 1
    assert len(tagger.segments(Document("Text\n\n```\nx\n```\n", "markdown"))) == 1


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        '{"cells": 3}',
        '{"metadata": {}}',
        '{"cells": [{"source": "x"}]}',
        '{"cells": [{"cell_type": "code", "source": 7}]}',
        '{"worksheets": [{"cells": 1}]}',
    ],
)
def test_invalid_notebook_is_skipped(text):
    with pytest.raises(SkipDocument, match="not valid notebook JSON"):
        CodeTagger().segments(Document(text, "notebook"))


@pytest.mark.parametrize(
    "options, fragments",
    [
        ({"segmnt": "cells"}, ["where.x", "unknown key 'segmnt'", "segment, execute, timeout_s"]),
        ({"segment": "lines"}, ["where.x.segment", "'lines'", "none, cells"]),
        ({"execute": "yes"}, ["where.x.execute", "true or false", "'yes'"]),
        ({"timeout_s": 0}, ["where.x.timeout_s", "(0, 600]"]),
        ({"timeout_s": True}, ["where.x.timeout_s", "True"]),
        ({"timeout_s": float("nan")}, ["where.x.timeout_s"]),
        ("cells", ["where.x", "expected a mapping"]),
    ],
)
def test_options_are_validated_in_one_line(options, fragments):
    with pytest.raises(AblateError) as err:
        build_tagger("code", options, "where.x")
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_thresholds_and_document_kind():
    plain = build_tagger("code", {}, "t")
    assert plain.describe()["options"] == {"segment": "none", "execute": False, "timeout_s": 5.0}
    with pytest.raises(AblateError, match="executes"):
        check_thresholds(plain, {"executes": 1.0}, "t.thresholds")
    executing = build_tagger("code", {"execute": True}, "t")
    assert check_thresholds(executing, {"executes": 0.5}, "t.th")["executes"] == 0.5
    with pytest.raises(AblateError, match="'pdf'"):
        plain.segments(Document("x", "pdf"))


DOCS = [
    (read("textwrap.py"), "python"),
    (notebook(), "auto"),
    ("Intro::\n\n    x = 1\n\nText.\n", "markdown"),
    ("def f():\n    return 1  # é\n", "auto"),
]


def _tag_all():
    out = []
    for options in ({}, {"segment": "cells"}):
        tagger = CodeTagger(options)
        for text, kind in DOCS:
            out.append([(s.text, s.scores) for s in tagger.segments(Document(text, kind))])
    return json.dumps(out, sort_keys=False)


def test_deterministic_across_taggers_and_hash_seeds():
    first = _tag_all()
    assert first == _tag_all()
    code = "import tests.test_tag_code as t; print(t._tag_all())"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    other = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    assert other.stdout.strip() == first


def _sandbox_works() -> str | None:
    try:
        from ablate.evals.sandbox import run_program

        result = run_program("print('ok')", timeout_s=10)
    except Exception as e:  # the reason is the skip message
        return f"{type(e).__name__}: {e}"
    return None if result.ok else f"the sandbox did not run print: {result.detail}"


def test_execute_option_runs_programs_in_the_sandbox():
    reason = _sandbox_works()
    if reason:
        pytest.skip(reason)
    tagger = CodeTagger({"execute": True, "timeout_s": 1})
    prints = tagger.segments(Document("for i in range(3):\n    print(i)\n", "python"))[0]
    loops = tagger.segments(Document("while True:\n    pass\n", "python"))[0]
    fails = tagger.segments(Document("raise SystemExit(3)\n", "python"))[0]
    broken = tagger.segments(Document("print 'x'\n", "python"))[0]  # does not parse: not run
    assert [s.scores["executes"] for s in (prints, loops, fails, broken)] == [1.0, 0.0, 0.0, 0.0]
    th = tagger.thresholds
    assert [tagger.decide(s.scores, th) for s in (prints, loops)] == ["code.exec", "code"]
    assert "executes" not in CodeTagger().segments(Document("print(1)\n", "python"))[0].scores
