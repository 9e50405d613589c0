"""The code tagger: executable programs (``code.exec``) vs code with natural language
(``code.nl``) vs prose about code (``code.text``), and ``code`` (the parent tag) for code that is
not a standalone program.

Document kinds (``base.KINDS``): ``python`` is read as Python; ``notebook`` as ``.ipynb`` JSON,
cell by cell (outputs ignored; JSON that is not nbformat 3/4-shaped is ``SkipDocument``);
``markdown`` as prose with code blocks; ``auto`` (a JSONL row) is a notebook if it is a JSON
object with ``cells``, else Python if it parses and is more than bare words ("Hello" parses),
else prose with code blocks; ``text`` (any other file: ``.txt``, an unknown extension) is read
as ``auto`` is, without the notebook check.

Scores (floats rounded to 4 decimals, so that stored scores are stable byte for byte):

* ``parses``: 1.0 if the code parses as Python 3 (``ast``) and holds at least one statement (an
  empty file, or comments alone, is no program). Python: the file. Notebook: its code
  cells joined, IPython magics and shell lines (``%...``, ``!...``) dropped, and cells run by a
  non-Python cell magic (``%%bash``, ``%%html``, ...) left out. Markdown/prose: 0.0 (the
  document as a whole is not a program, whatever its code blocks hold).
* ``prose_ratio``: non-whitespace characters of natural language over all non-whitespace
  characters. Natural language is comments, docstrings and every other bare string statement (a
  string statement does nothing: it is documentation), notebook markdown/raw cells, and for
  markdown/prose the text outside code blocks.
* ``code_ratio``: non-whitespace characters of code outside comments and docstrings over all;
  for markdown/prose the characters inside code blocks (fenced ````` ``` ````` / ``~~~`` blocks,
  indented literal blocks after a line ending in ``:`` or ``::`` (rst source, and rst rendered as
  text as in ``pydoc_data``), and ``>>>`` doctest blocks); a plain-text file (``text``, or an
  ``auto`` row that is not Python) also counts lines only code writes (ending in ``;``/``{``/``}``,
  C comments, ``#include``, ``def``/``class`` headers), so that a C file is not prose.
* ``doctest_lines``: lines starting with ``>>>``; ``markdown_cells``: notebook markdown cells.
* ``executes`` (only with option ``execute: true``): 1.0 if the program ran to completion with
  exit status 0 within ``timeout_s`` in the project's sandbox (``ablate.evals.sandbox``), else
  0.0 (a program that does not parse is not run). This one score depends on the machine: a
  program near its time limit can pass on one run and fail on another.

Decision (``score >= threshold`` passes), in this order:

1. The code does not parse (``parses < 1``): it is not a Python 3 program, so neither
   ``code.exec`` nor ``code.nl`` (both say "this is Python code") can be claimed. With
   ``code_ratio < thresholds["code_ratio"]`` it is prose about code, ``code.text``; otherwise it
   is mostly code we cannot read as a program (another language, Python 2, a fragment): ``code``.
   (Prose that mentions code is the common case among texts that do not parse, and a corpus of
   code.text must not receive source files of other languages: hence the two-way cut.)
2. It parses and has notebook markdown cells or ``prose_ratio >= thresholds["prose_ratio"]``:
   ``code.nl`` (markdown cells are natural language interleaved with the code by construction).
3. It parses with little prose: ``code.exec``, unless execution is on and
   ``executes < thresholds["executes"]``: then ``code`` (code that is not standalone-executable).
   The sandbox has the standard library only: a program importing numpy does not execute.

Options: ``segment`` (``none``, default, or ``cells``: a notebook is cut into segments, each a
markdown cell with the code cells that follow it, and a run of code cells before the first
markdown cell; python and markdown documents stay whole), ``execute`` (bool, default false),
``timeout_s`` (seconds, default 5).

A notebook's segment text is its cells' sources (markdown as plain text, outputs left out) joined
with a blank line: what the model is trained on, never the JSON. Segments keep document order and
together hold every cell once, in order.

Comments are found by one regular expression that matches comments and string literals, the way
``tokenize`` reads them, at C speed (the pure-Python ``tokenize`` is the slow part of a
straightforward tagger); for code that parses the comments found are exactly ``tokenize``'s
(tested on standard-library modules; all 13,341 ``.py`` files under a 3.11 stdlib directory
agree). With ``ast`` doing the parsing this runs about 3x faster than ``ast`` + ``tokenize`` per
document. On Python >= 3.12 an f-string may nest quotes of its own kind, which this expression
does not follow; such code is rare and only miscounts its comments.

(Over 400 lines as ruff lays it out: reading Python, notebooks and Markdown, and the
scores built from what was read, are one tagger's job and change together.)
"""

from __future__ import annotations

import ast
import json
import math
import re
import warnings
from itertools import accumulate

from ablate.data.tagging.base import KINDS, Document, Segment, SkipDocument, Tagger
from ablate.errors import AblateError, show
from ablate.validate import check_choice, check_keys

# Comments and string literals (all prefixes read the same way: the prefix letters precede the
# quote and a backslash always escapes the next character, even in a raw string, as far as where
# the literal ends). A triple quote is tried before an empty string. Each literal is written as
# "normal* (special normal*)*" with disjoint normal and special characters, so that a literal
# that never ends (in text that does not parse) fails in linear time, without backtracking.
_LEXEME = re.compile(
    r"""(?P<comment>\#[^\r\n]*)"""
    r"""|'(?:''[^'\\]*(?:(?:\\.|'(?!''))[^'\\]*)*'''|[^'\\\r\n]*(?:\\.[^'\\\r\n]*)*')"""
    r'''|"(?:""[^"\\]*(?:(?:\\.|"(?!""))[^"\\]*)*"""|[^"\\\r\n]*(?:\\.[^"\\\r\n]*)*")''',
    re.S,
)
_DOCTEST_LINE = re.compile(r"^[ \t]*>>>", re.M)
# Markdown/rst code regions. A fence closes on a line of the same character (or the text ends).
_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]{0,3}\1[ \t]*$|\Z)", re.M | re.S)
# An indented block after a line ending in ':' (rst '::' literal blocks, and rst rendered as text
# where '::' became ':'), more indented than that line, after a blank line.
_LITERAL = re.compile(
    r"^(?P<lead>[ \t]*)\S[^\n]*:[ \t]*\n(?:[ \t]*\n)+"
    r"(?P<body>(?P=lead)[ \t]{2,}\S[^\n]*\n(?:(?:(?P=lead)[ \t]+\S[^\n]*|[ \t]*)\n)*)",
    re.M,
)
_DOCTEST_BLOCK = re.compile(r"^[ \t]*>>>[^\n]*\n(?:[ \t]*\S[^\n]*\n)*", re.M)
# In a plain-text file (no fences: a C or JavaScript file, a shell script) lines that only code
# writes: ending in ';', '{' or '}', starting with '}', a C comment or preprocessor line, or a
# Python def/class header. Prose wraps on such a line rarely (at most 8 lines of a pydoc topic).
_CODE_LINE = re.compile(
    r"^[ \t]*(?:\#include\b|\#define\b|//|/\*|\}|(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(.*\)[^\n]*:"
    r"|class[ \t]+\w+[^\n]*:)[^\n]*$|^[^\n]*[;{}][ \t]*$",
    re.M,
)
_MAGIC_LINE = re.compile(r"^[ \t]*[%!][^\n]*\n?", re.M)
# Cell magics whose body is Python (the cell stays, without its magic line); any other cell
# magic (%%bash, %%html, %%writefile, ...) runs something else, so the cell is not Python code.
_PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug"})

_OPTIONS = ("segment", "execute", "timeout_s")
_SEGMENTS = ("none", "cells")
_NOT_NOTEBOOK = "not valid notebook JSON"


def _nonspace(text: str) -> int:
    """Non-whitespace characters (``str.split`` runs in C; a regex sub would copy the text)."""
    return len("".join(text.split()))


def comment_spans(source: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of every comment in ``source``: for code that parses, the
    same comments, at the same places, as ``tokenize``'s COMMENT tokens."""
    return [m.span() for m in _LEXEME.finditer(source) if m.lastgroup == "comment"]


def comments(source: str) -> list[str]:
    """The text of every comment, in order (the same as ``comment_spans``; ``findall`` builds no
    match objects, which is most of the cost on a file of many short strings)."""
    return [c for c in _LEXEME.findall(source) if c]


def _line_starts(source: str) -> list[int]:
    """Character offset of each line's start; lines split on '\\n' as ``ast`` counts them (a
    '\\r\\n' line keeps its '\\r'; form feeds do not end a line)."""
    lengths = accumulate(map(len, source.split("\n")), initial=0)
    return [n + i for i, n in enumerate(lengths)]


def _offset(source: str, starts: list[int], lineno: int, col_bytes: int) -> int:
    """Character offset of ``ast``'s (lineno, UTF-8 byte column)."""
    start = starts[lineno - 1]
    line = source[start : starts[lineno]]
    if line.isascii():
        return start + col_bytes
    return start + len(line.encode("utf-8")[:col_bytes].decode("utf-8", "replace"))


# The statement lists of compound statements: only these are walked for string statements.
_BLOCKS = {
    ast.FunctionDef: ("body",),
    ast.AsyncFunctionDef: ("body",),
    ast.ClassDef: ("body",),
    ast.If: ("body", "orelse"),
    ast.For: ("body", "orelse"),
    ast.AsyncFor: ("body", "orelse"),
    ast.While: ("body", "orelse"),
    ast.With: ("body",),
    ast.AsyncWith: ("body",),
    ast.Try: ("body", "orelse", "finalbody"),
}
if hasattr(ast, "TryStar"):
    _BLOCKS[ast.TryStar] = ("body", "orelse", "finalbody")


def _string_statements(tree: ast.Module) -> list[ast.Constant]:
    """Every bare string expression statement (docstrings included), walking statement lists
    only: the expressions below them are most of a tree's nodes and hold no statements."""
    found = []
    todo = [tree.body]
    while todo:
        for stmt in todo.pop():
            kind = type(stmt)
            if kind is ast.Expr:
                value = stmt.value
                if type(value) is ast.Constant and type(value.value) is str:
                    found.append(value)
            elif kind in _BLOCKS:
                todo.extend(getattr(stmt, name) for name in _BLOCKS[kind])
                for handler in getattr(stmt, "handlers", ()):
                    todo.append(handler.body)
            elif kind.__name__ == "Match":
                todo.extend(case.body for case in stmt.cases)
    return found


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _spans_nonspace(text: str, spans: list[tuple[int, int]]) -> int:
    return _nonspace("".join(text[a:b] for a, b in _merged(spans)))


def parse_python(source: str) -> ast.Module | None:
    """The module's tree, or None if it is not Python 3 (warnings such as invalid escapes are
    not the tagger's business; null bytes and too-deep nesting are failures to parse)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def python_counts(source: str, tree: ast.Module | None) -> tuple[int, int]:
    """(prose, total) non-whitespace characters: prose = comments + string statements."""
    prose = _nonspace("".join(comments(source)))
    if tree is not None:
        nodes = _string_statements(tree)
        starts = _line_starts(source) if nodes else []
        for node in nodes:
            start = _offset(source, starts, node.lineno, node.col_offset)
            text = source[start : _offset(source, starts, node.end_lineno, node.end_col_offset)]
            prose += _nonspace(text)
            if "#" in text:  # implicitly concatenated strings with a comment between them,
                prose -= _nonspace("".join(comments(text)))  # counted once, as a comment
    return prose, _nonspace(source)


def code_block_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the code in a markdown/rst/plain-text document."""
    spans = [m.span() for m in _FENCE.finditer(text)]
    spans += [m.span("body") for m in _LITERAL.finditer(text)]
    spans += [m.span() for m in _DOCTEST_BLOCK.finditer(text)]
    return spans


def _is_program(tree: ast.Module | None) -> bool:
    return tree is not None and len(tree.body) > 0


def _bare_words(tree: ast.Module) -> bool:
    """A text that parses only because it is a bare word or number ("Hello", "42"): no
    statement does anything and none is a quoted string (quotes are deliberate Python: a module
    docstring alone is Python prose, read as Python)."""
    return all(
        isinstance(s, ast.Expr)
        and (
            isinstance(s.value, ast.Name)
            or (isinstance(s.value, ast.Constant) and not isinstance(s.value.value, str))
        )
        for s in tree.body
    )


def _cell_source(cell: dict) -> str:
    source = cell.get("source", cell.get("input"))
    if isinstance(source, list) and all(isinstance(s, str) for s in source):
        return "".join(source)
    if isinstance(source, str):
        return source
    raise SkipDocument(_NOT_NOTEBOOK)


def read_notebook(text: str) -> list[tuple[str, str]]:
    """The notebook's cells as (type, source), type "code" or "markdown" (raw and nbformat-3
    heading cells are prose, read as markdown); SkipDocument for anything not nbformat-shaped."""
    try:
        nb = json.loads(text)
    except (ValueError, RecursionError):
        raise SkipDocument(_NOT_NOTEBOOK) from None
    return notebook_cells(nb)


def notebook_cells(nb: object) -> list[tuple[str, str]]:
    """``read_notebook`` on JSON already loaded."""
    if not isinstance(nb, dict):
        raise SkipDocument(_NOT_NOTEBOOK)
    if "cells" in nb:  # nbformat 4
        cells = nb["cells"]
    elif isinstance(nb.get("worksheets"), list):  # nbformat 3
        cells = []
        for sheet in nb["worksheets"]:
            if not isinstance(sheet, dict) or not isinstance(sheet.get("cells"), list):
                raise SkipDocument(_NOT_NOTEBOOK)
            cells.extend(sheet["cells"])
    else:
        raise SkipDocument(_NOT_NOTEBOOK)
    if not isinstance(cells, list):
        raise SkipDocument(_NOT_NOTEBOOK)
    out = []
    for cell in cells:
        if not isinstance(cell, dict) or not isinstance(cell.get("cell_type"), str):
            raise SkipDocument(_NOT_NOTEBOOK)
        kind = "code" if cell["cell_type"] == "code" else "markdown"
        out.append((kind, _cell_source(cell)))
    return out


def notebook_code(cells: list[tuple[str, str]]) -> str:
    """The code cells as one program: magic and shell lines dropped, non-Python cell magics'
    cells left out, cells joined by a newline (each is top-level code)."""
    parts = []
    for kind, source in cells:
        if kind != "code":
            continue
        stripped = source.lstrip()
        if stripped.startswith("%%"):
            magic = stripped[2:].split(None, 1)[0] if stripped[2:].strip() else ""
            if magic not in _PYTHON_CELL_MAGICS:
                continue
        parts.append(_MAGIC_LINE.sub("", source).rstrip("\n"))
    return "\n".join(parts) + "\n" if parts else ""


def _notebook_json(text: str) -> dict | None:
    """An "auto" row's JSON if it is a JSON object with "cells" (or nbformat 3's "worksheets"):
    it claims to be a notebook, and is read (or skipped) as one."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        nb = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return nb if isinstance(nb, dict) and ("cells" in nb or "worksheets" in nb) else None


class CodeTagger(Tagger):
    name = "code"
    version = "1"
    domains = ("code.exec", "code.nl", "code.text", "code")
    scores = ("parses", "prose_ratio", "code_ratio", "doctest_lines", "markdown_cells")
    # prose_ratio: the standard library's modules stripped of docstrings and comments reach
    # 0.048 at most (leftover string statements), MBPP programs are 0 but for two, modules as
    # shipped are above 0.05 but for 26 of 734 (those with no docstrings or comments at all).
    # code_ratio: pydoc_data topics (prose with literal blocks) reach 0.57 at most.
    thresholds = {"prose_ratio": 0.05, "code_ratio": 0.6}

    def __init__(self, options: dict | None = None, where: str = "tagger_options"):
        opts = check_keys(options if options is not None else {}, _OPTIONS, where)  # before
        super().__init__(opts, where)  # the base copies it with dict(), which needs a mapping
        segment = check_choice(opts.get("segment", "none"), _SEGMENTS, f"{where}.segment")
        execute = opts.get("execute", False)
        if not isinstance(execute, bool):
            raise AblateError(f"{where}.execute: expected true or false, got {show(execute)}")
        timeout = opts.get("timeout_s", 5.0)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or not 0 < timeout <= 600
        ):
            raise AblateError(
                f"{where}.timeout_s: expected a number of seconds in (0, 600], got {show(timeout)}"
            )
        self.segment, self.execute, self.timeout_s = segment, execute, float(timeout)
        self.options = {"segment": segment, "execute": execute, "timeout_s": self.timeout_s}
        if execute:  # the executes score exists, and may be thresholded, only when it is made
            self.scores = (*type(self).scores, "executes")
            self.thresholds = {**type(self).thresholds, "executes": 1.0}

    # -- scoring --------------------------------------------------------------------------

    def _finish(self, scores: dict[str, float], program: str | None) -> dict[str, float]:
        if self.execute:
            ran = False
            if program is not None and scores["parses"] >= 1.0:
                from ablate.evals.sandbox import run_program  # only workers that execute

                result = run_program(program, timeout_s=self.timeout_s, overflow="discard")
                ran = result.ok and result.returncode == 0
            scores["executes"] = 1.0 if ran else 0.0
        return {k: round(float(v), 4) for k, v in scores.items()}

    def _python_scores(self, text: str, tree: ast.Module | None) -> dict[str, float]:
        prose, total = python_counts(text, tree)
        scores = {
            "parses": 1.0 if _is_program(tree) else 0.0,
            "prose_ratio": prose / total if total else 0.0,
            "code_ratio": (total - prose) / total if total else 0.0,
            "doctest_lines": len(_DOCTEST_LINE.findall(text)),
            "markdown_cells": 0,
        }
        return self._finish(scores, text)

    def _prose_scores(self, text: str, code_lines: bool) -> dict[str, float]:
        """Scores of a text read as prose with code in it; ``code_lines``: a plain-text file,
        where code lines outside any block count as code too (markdown marks its code)."""
        total = _nonspace(text)
        padded = text if text.endswith("\n") else text + "\n"
        spans = code_block_spans(padded)
        if code_lines:
            spans += [m.span() for m in _CODE_LINE.finditer(padded)]
        code = _spans_nonspace(padded, spans)
        scores = {
            "parses": 0.0,
            "prose_ratio": (total - code) / total if total else 0.0,
            "code_ratio": code / total if total else 0.0,
            "doctest_lines": len(_DOCTEST_LINE.findall(text)),
            "markdown_cells": 0,
        }
        return self._finish(scores, None)

    def _notebook_scores(self, cells: list[tuple[str, str]]) -> dict[str, float]:
        program = notebook_code(cells)
        tree = parse_python(program)
        code_prose, _ = python_counts(program, tree)
        markdown = sum(_nonspace(s) for k, s in cells if k == "markdown")
        total = sum(_nonspace(s) for _, s in cells)
        prose = min(total, markdown + code_prose)
        scores = {
            "parses": 1.0 if _is_program(tree) else 0.0,
            "prose_ratio": prose / total if total else 0.0,
            "code_ratio": (total - prose) / total if total else 0.0,
            "doctest_lines": sum(len(_DOCTEST_LINE.findall(s)) for _, s in cells),
            "markdown_cells": sum(1 for k, _ in cells if k == "markdown"),
        }
        return self._finish(scores, program)

    # -- the interface --------------------------------------------------------------------

    def segments(self, doc: Document) -> list[Segment]:
        if doc.kind not in KINDS:
            raise AblateError(
                f"{self.where}: document kind {show(doc.kind)} is not allowed "
                f"(allowed: {', '.join(KINDS)})"
            )
        text = doc.text
        kind = doc.kind
        nb = _notebook_json(text) if kind == "auto" else None
        if nb is not None:
            return self._notebook_segments(notebook_cells(nb))
        if kind == "notebook":
            return self._notebook_segments(read_notebook(text))
        if kind == "markdown":
            return [Segment(text, self._prose_scores(text, code_lines=False))]
        tree = parse_python(text)
        if kind == "python":
            return [Segment(text, self._python_scores(text, tree))]
        # auto / text: Python if it parses and does something; prose (with code blocks) else
        if tree is not None and not _bare_words(tree):
            return [Segment(text, self._python_scores(text, tree))]
        return [Segment(text, self._prose_scores(text, code_lines=True))]

    def _notebook_segments(self, cells: list[tuple[str, str]]) -> list[Segment]:
        groups: list[list[tuple[str, str]]] = []
        if self.segment == "cells":
            for cell in cells:
                if cell[0] == "markdown" or not groups:
                    groups.append([cell])
                else:
                    groups[-1].append(cell)
        else:
            groups = [cells]
        return [
            Segment("\n\n".join(s.strip("\n") for _, s in group), self._notebook_scores(group))
            for group in groups
        ] or [Segment("", self._notebook_scores([]))]

    def decide(self, scores: dict[str, float], thresholds: dict[str, float]) -> str:
        if scores["parses"] < 1.0:
            return "code.text" if scores["code_ratio"] < thresholds["code_ratio"] else "code"
        if scores["markdown_cells"] > 0 or scores["prose_ratio"] >= thresholds["prose_ratio"]:
            return "code.nl"
        if "executes" in scores and scores["executes"] < thresholds.get("executes", 1.0):
            return "code"
        return "code.exec"
