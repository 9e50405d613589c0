"""The math tagger: structured math vs prose math vs math with code, from measurable features.

The study this serves (arXiv 2605.19762) varies the density of *structured* math inside a math
budget: step-by-step solutions with one computation per line, calculator annotations
(``<<48/2=24>>``), Socratic sub-question/answer pairs, chains of display equations; against
*prose* math, the same reasoning written as flowing paragraphs with inline math. A third domain,
``math.code``, is reasoning paired with the program that computes it (MathCoder /
program-of-thought: prose or comment steps plus Python).

Features (each a score in [0, 1], rounded to 4 decimals, computed by whole-text regexes).
Lines are the document's non-blank lines with ``[asy]`` figure code and detected Python code
left out, and display math set on lines of its own, one per rendered row (MATH writes
``\\]Hence,`` on one source line); shares of lines are taken over at least ``MIN_LINES`` = 3
lines, since a one-line answer is trivially "one short line":

``equation_lines``
    share of lines that are equation lines (short, one sentence, holding a relation ``=``,
    ``\\le``, ... or display math), times the share of equations that have a line to
    themselves (equation lines / sentences holding a relation). Structured math puts one
    computation per line; prose packs k computations into one paragraph line, which is not
    short, is several sentences, and would count 1/k anyway.
``numbered_steps``
    share of lines opening with a step label (``Step 2``, ``1.``, ``(a)``, a bullet, an ordinal
    word: ``First``, ``Then``, ``Finally``) plus lines holding a Socratic sub-question and its
    answer (``How many ...? ** ...``), capped at 1. Labels exist only where a line break
    separates steps. (A bulleted list of prose items counts too: os.py's docstring is the one
    stdlib docstring of 51 that reaches math.structured.)
``calc_annotations``
    share of lines carrying a GSM8K calculator annotation ``<<expr=result>>``: the computation
    written out again in machine-checkable form, one per step.
``align_envs``
    rows of multi-row display math (``align``, ``eqnarray``, ``gather``, ``\\\\`` row breaks
    inside ``\\[..\\]`` / ``$$..$$``) as a share of lines, capped at 1: a derivation laid out
    one relation per row.
``equation_prose_ratio``
    share of non-blank characters that are math: inline and display LaTeX, annotations, and
    outside LaTeX the digits and operators of plain-text computations. ``$`` delimits math only
    in a text holding a backslash (elsewhere it is a currency sign, as in GSM8K). Dense math is
    more often laid out than narrated; weak alone (prose math with many inline formulas scores
    high too), hence its small weight.
``final_answer``
    1.0 if the document marks a final answer (``#### N``, ``\\boxed{}``, "The answer is",
    "Answer:"): solutions written to a template carry one; prose narrations often do too, so
    it is weak evidence.
``line_structure``
    share of lines that are short (at most ``SHORT_LINE`` = 160 characters) *and* end a unit
    (a sentence end, a number, closing math, a ``\\\\`` row break): the layout of one step
    per line. Hard-wrapped prose fails the second condition on most lines, paragraph prose the
    first.

``structure_score`` combines them as independent pieces of evidence (a noisy-OR):
``1 - prod(1 - WEIGHTS[f] * f)``. A document with one feature at 1.0 and every other at 0
scores that feature's weight, so the weight of a feature is how much that feature alone proves
structure; several features together push the score towards 1, and no single weak feature
(``final_answer``, ``equation_prose_ratio``) can decide on its own. The structured styles are
alternatives (GSM8K uses annotations and no labels; MATH uses ``align*`` and no annotations), so
a weighted mean, which would demand every style at once, does not fit.

Code: ``code_ratio`` is the share of non-blank characters in code: fenced ``` blocks, and runs
of consecutive lines that parse as Python (``ast``, one parse per top-level statement group),
spanning two lines at least and holding a statement that is not a bare name or constant (a
lone ``x = 3`` in a math page is an equation; a prose word parses as a name). Comment lines
belong to the program they sit in. ``reasoning_ratio`` is the share of non-blank characters
that are reasoning: prose outside the code plus ``#`` comments inside it (and docstrings, for
kind ``python``). Plain-text algebra can parse as Python (``x = 270 - 95 - 80`` then
``x = 95``): 1 of GSM8K's 7473 ``as_text`` renders is math.code for that reason.

Decision (``score >= threshold``)::

    math.code        if code_ratio >= t[code_ratio] and reasoning_ratio >= t[reasoning_ratio]
    math.structured  elif structure_score >= t[structure_score]
    math.text        otherwise

Default thresholds, from GSM8K train and the labelled set's dev split (never its test split):
``structure_score`` 0.45 (GSM8K structured renders: 5th percentile 0.55; the same solutions as
one prose paragraph: 95th percentile 0.32; dev errors flat between 0.42 and 0.48);
``code_ratio`` 0.04 (no GSM8K or MATH-500 text has any code; a prose solution followed by a
fenced program holds 5-15% code); ``reasoning_ratio`` 0.05 (a program with no comment and no
prose is code, not reasoning paired with code).

Options: ``segment`` (``none``, default: the document is one segment; ``paragraphs``: split at
blank lines outside fenced code and display math, consecutive blocks merged until each holds at
least ``min_chars`` characters, a short tail joining the segment before it) and ``min_chars``
(integer >= 1, default 200). Segments are substrings of the document in document order, the
separators between them blank-line runs only (``paragraph_spans``); the driver keeps the order
by the segment's index.

Document kinds: ``python`` is all code (its comments and docstrings are the reasoning);
``notebook`` is read cell by cell (markdown cells are text, code cells fenced code; invalid JSON
raises ``SkipDocument``); every other kind is read as text with markdown fences.

Speed: every pattern starts with a literal character (see the note above the patterns), the
few per-line checks left (length, one sentence) run only on lines a pattern found; about
12 MB/s on GSM8K + MATH-500 text on one core, 1.5x a per-line loop computing the same
features.

(Over 400 lines as ruff lays it out: the features, their weights and the decision are one
definition of "structured", tuned and versioned together.)
"""

from __future__ import annotations

import ast
import json
import re
import textwrap

from ablate.data.tagging.base import Document, Segment, SkipDocument, Tagger
from ablate.validate import check_choice, check_keys, check_number, field_where

# Weight of each feature in the noisy-OR (see the module docstring): the structure score a
# document would get from that feature alone at 1.0.
WEIGHTS = {
    "equation_lines": 0.55,  # one computation per line: the defining layout
    "numbered_steps": 0.55,  # explicit step labels / Socratic sub-questions
    "calc_annotations": 0.6,  # GSM8K calculator annotations: only written step by step
    "align_envs": 0.6,  # multi-row display derivations
    "line_structure": 0.35,  # short self-contained lines: supports the above, not alone
    "equation_prose_ratio": 0.1,  # math density: prose math can be dense too
    "final_answer": 0.1,  # a template marker, common in prose solutions as well
}
FEATURES = tuple(WEIGHTS)
# Line shares are taken over at least MIN_LINES lines: a layout of one step per line needs a few
# lines to show (a one-line answer is trivially "one line, short, ends a sentence").
MIN_LINES = 3
SHORT_LINE = 160  # characters: the 99th percentile of GSM8K step lines is ~170 with annotations

SEGMENT_MODES = ("none", "paragraphs")
OPTIONS = ("segment", "min_chars")
DEFAULT_MIN_CHARS = 200

# ------------------------------------------------------------------------------- patterns
_M = re.M

# Delimited spans never scan past the next opening delimiter, so that text with many unclosed
# openers costs linear time, not quadratic (a lazy ".*?" from each opener runs to the end).
_ASY = re.compile(r"\[asy\](?:[^\[]|\[(?!/?asy\]))*\[/asy\]")
# a fence: an opening ``` line, lines not starting with ```, a closing ``` line alone
_FENCE = re.compile(r"^[ \t]*```[^\n]*\n(?:(?![ \t]*```)[^\n]*\n)*?[ \t]*```[ \t]*$", _M)
_CALC = re.compile(r"<<[^<>\n]*>>")
# display math: environments, \[..\], $$..$$ (non-greedy, DOTALL)
_DISPLAY = re.compile(
    r"\\begin\{(align|eqnarray|gather|multline|equation|flalign|alignat|split|gathered|aligned"
    r"|array|cases)(\*?)\}(?:[^\\]|\\(?!begin\{\1\2\}|end\{\1\2\}))*\\end\{\1\2\}"
    r"|\\\[(?:[^\\]|\\(?![\[\]]))*\\\]"
    r"|\$\$(?:[^$]|\$(?!\$))*\$\$"
)
_MULTIROW_ENV = re.compile(r"\\begin\{(?:align|eqnarray|gather|multline|flalign|alignat)")
# Speed: CPython's regex engine skips quickly to a literal (or one-character-class) first
# character, but tries a pattern starting with ``^``, a lookbehind or an optional part at every
# position. So every pattern starts with a literal: line patterns run on the text with a
# newline put in front and start at that newline ("\n" + line), and "lines holding X" patterns
# are X followed by the rest of its line (a second X on that line is consumed, not counted).
# inline math: $...$ (escaped \$ inside allowed; the body read greedily, not lazily) or \(...\)
_INLINE = re.compile(
    r"\$(?<![\\$]\$)(?!\$)[^$\n\\]*(?:\\[^\n][^$\n\\]*)*\$|\\\((?:[^\\\n]|\\(?![()]))*\\\)"
)
# outside LaTeX, plain-text computations ("48/2 = 24") count by their digits and operators
# (one C-level pass: the length lost when they are deleted)
_ARITH_CHARS = "0123456789+-*/=×÷%^"
_DROP_ARITH = str.maketrans("", "", _ARITH_CHARS)
_DISPLAY_MARK = "\x01"  # a line of display math, in the skeleton text
_RELATION = (
    r"(?:=(?<![<>=!]=)(?![=>])|\\(?:leq?|geq?|neq?|equiv|approx|cong|lt|gt)(?![A-Za-z])|\x01)"
)
_NONBLANK = re.compile(r"\n[ \t]*[^\s]")
# lines holding a relation: the relation and the rest of its line (a second relation on the
# line is consumed, not counted); whether the line is short and one sentence is checked on
# these few lines only
_RELATION_LINE = re.compile(_RELATION + r"[^\n]*")
# a sentence end with more text after it on the same line: two sentences on a line are a
# paragraph, however short
_TWO_SENTENCES = re.compile(r"[.!?]\$?[ \t]+[^\s*]")
# sentences holding a relation: a relation and the rest of its sentence (to . ! ? before a
# space or tab, or to the end of the line), so one match per such sentence
_EQ_SENTENCE = re.compile(_RELATION + r"[^\n.!?]*(?:[.!?](?![ \t])[^\n.!?]*)*")
_STEP = re.compile(
    r"\n[ \t]*(?:"
    r"(?:Step|STEP|Part)[ \t]*\d+"
    r"|\d{1,2}[.)](?=[ \t])"
    r"|\([a-hA-H1-9]\)(?=[ \t])|[a-h]\)(?=[ \t])"
    r"|\((?:i{1,3}|iv|vi{0,3}|ix|x)\)(?=[ \t])"
    r"|[-*\u2022](?=[ \t])"
    r"|(?:First|Second|Third|Fourth|Fifth|Next|Then|Finally|Lastly)\b"
    r"|[QA]\d*[:.](?=[ \t])"
    r")"
)
_SOCRATIC = re.compile(r"\?[ \t]*\*\*[^\n]*")  # "How many ...? ** answer": once per line
_CALC_LINE = re.compile(r"<<[^<>\n]*=[^<>\n]*>>[^\n]*")
_FINAL_LINE = re.compile(r"\n(?:####[ \t]*\S|(?:Final )?[Aa]nswer[ \t]*:)")
_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is\b")
# a line ending a unit: the newline after a sentence end, a number, closing math or a row
# break (up to two blanks before the newline); long lines are taken out after
_UNIT_END = re.compile(
    r"\n(?:(?<=[.!?:;$})\]\d\x01]\n)|(?<=[.!?:;$})\]\d\x01][ \t]\n)"
    r"|(?<=[.!?:;$})\]\d\x01][ \t][ \t]\n)|(?<=\\\\\n)|(?<=\\\\[ \t]\n))"
)
_LONG_LINE = re.compile(r"\n[^\n]{%d}[^\n]*" % (SHORT_LINE + 1))
_UNIT_TAIL = re.compile(r"(?:[.!?:;$})\]\d\x01][ \t]{0,2}|\\\\[ \t]?)\Z")  # as _UNIT_END

# Python candidate lines: a statement keyword, an assignment, a call, a comment (not GSM8K's
# "#### N" answer line), or indentation. "(?=(X))\1" matches X atomically (no atomic groups
# before Python 3.11): a prose line's first word is read once, not backtracked letter by letter
# for each alternative.


def _py_line(group: int) -> str:
    """The candidate-line pattern; ``group``: the number its identifier group has in the
    compiled pattern (the line pattern appears twice in ``_PY_RUN``)."""
    return (
        r"[ \t]*(?:#(?!###)|(?:def|class|for|while|if|elif|else|try|except|finally|with|return"
        r"|import|from|print|assert|raise|yield|async|await)\b"
        r"|(?=([A-Za-z_][\w.]*))\%d(?:"
        % group
        + r"(?:\[[^\]\n]*\])?(?:[ \t]*,[ \t]*[A-Za-z_][\w.]*)*[ \t]*(?:[-+*/%]|//|\*\*)?=(?!=)"
        r"|\(.*\)[ \t]*(?=\n|\Z)))"
        r"|[ \t]+\S"
    )


# a run of candidate lines (blank lines inside it included), each line matched from the newline
# before it (the text is scanned with a newline put in front); the first line is spelled out
# so that the pattern starts with a literal (a repeated group first is tried at every position)
_PY_RUN_LINE = r"\n(?:%s)[^\n]*(?:\n[ \t]*(?=\n))*"
_PY_RUN = re.compile(_PY_RUN_LINE % _py_line(1) + "(?:" + _PY_RUN_LINE % _py_line(2) + ")*")
_INDENT = re.compile(r"^([ \t]*)(\S?)", _M)
_NONBLANK_LINE = re.compile(r"^[ \t]*\S", _M)
_COMMENT = re.compile(r"(?<![\w'\"])#[^\n]*")
_BLANK_SEP = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


class MathTagger(Tagger):
    name = "math"
    version = "1"
    domains = ("math.structured", "math.text", "math.code")
    scores = ("structure_score", "code_ratio", "reasoning_ratio", *FEATURES)
    thresholds = {"structure_score": 0.45, "code_ratio": 0.04, "reasoning_ratio": 0.05}

    def __init__(self, options: dict | None = None, where: str = "tagger_options"):
        # checked before the base class copies it (dict() of a list is a TypeError, not a line)
        check_keys({} if options is None else options, OPTIONS, where)
        super().__init__(options, where)
        segment = self.options.get("segment", "none")
        check_choice(segment, SEGMENT_MODES, field_where(where, "segment"))
        min_chars = self.options.get("min_chars", DEFAULT_MIN_CHARS)
        check_number(min_chars, field_where(where, "min_chars"), integer=True, ge=1)
        self.options = {"segment": segment, "min_chars": min_chars}

    def segments(self, doc: Document) -> list[Segment]:
        text = doc.text
        if doc.kind == "notebook":
            text = notebook_text(text)
        if self.options["segment"] == "none":
            pieces = [text]
        else:
            pieces = [text[a:b] for a, b in paragraph_spans(text, self.options["min_chars"])]
        return [Segment(p, score_text(p, doc.kind)) for p in pieces]

    def decide(self, scores: dict[str, float], thresholds: dict[str, float]) -> str:
        if (
            scores["code_ratio"] >= thresholds["code_ratio"]
            and scores["reasoning_ratio"] >= thresholds["reasoning_ratio"]
        ):
            return "math.code"
        if scores["structure_score"] >= thresholds["structure_score"]:
            return "math.structured"
        return "math.text"


# ------------------------------------------------------------------------------- scoring


def _nonspace(text: str) -> int:
    """Characters other than spaces, tabs and newlines (three C-level counts)."""
    return len(text) - text.count(" ") - text.count("\n") - text.count("\t")


def structure_features(text: str) -> dict[str, float]:
    """The seven structure features of ``text`` (code and figures already taken out),
    unrounded."""
    nonspace = _nonspace(text)
    math_chars = calc_lines = 0
    if "<<" in text:  # cheap tests first: most texts have no annotation, display or "**"
        math_chars = _nonspace("".join(_CALC.findall(text)))
        calc_lines = len(_CALC_LINE.findall(text))
        text = _CALC.sub("", text)

    rows = 0

    def mark(m: re.Match) -> str:
        # a display block becomes one marker line per rendered row: display math is set on
        # lines of its own whatever the source layout (MATH writes "\\]Hence," on one line)
        nonlocal rows, math_chars
        block = m.group(0)
        math_chars += _nonspace(block)
        breaks = block.count("\\\\")
        if breaks or _MULTIROW_ENV.match(block):
            rows += breaks + 1
        return "\n" + (_DISPLAY_MARK + "\n") * (breaks + 1)

    # the skeleton starts with a newline: line patterns start at the newline before a line
    skeleton = "\n" + (_DISPLAY.sub(mark, text) if "\\" in text or "$$" in text else text)
    plain = skeleton
    # "$" delimits math only in LaTeX text: without any backslash it is a currency sign
    # (GSM8K's "$12 an hour ... $10"), and the inline-math scan is skipped
    if "\\" in skeleton:
        math_chars += _nonspace("".join(_INLINE.findall(skeleton)))
        plain = _INLINE.sub("", skeleton)
    math_chars += len(plain) - len(plain.translate(_DROP_ARITH))

    nonblank = len(_NONBLANK.findall(skeleton))
    if nonblank == 0:
        return dict.fromkeys(FEATURES, 0.0)
    lines = max(nonblank, MIN_LINES)
    eq_lines = 0
    for m in _RELATION_LINE.finditer(skeleton):
        line = skeleton[skeleton.rfind("\n", 0, m.start()) + 1 : m.end()]
        eq_lines += len(line) <= SHORT_LINE and not _TWO_SENTENCES.search(line)
    eq_sentences = len(_EQ_SENTENCE.findall(skeleton))
    own_line = min(1.0, eq_lines / eq_sentences) if eq_sentences else 0.0
    ended = skeleton + "\n"
    unit_lines = len(_UNIT_END.findall(ended))
    if len(skeleton) > SHORT_LINE:
        unit_lines -= sum(
            _UNIT_TAIL.search(line) is not None for line in _LONG_LINE.findall(skeleton)
        )
    steps = len(_STEP.findall(skeleton))
    if "**" in skeleton:
        steps += len(_SOCRATIC.findall(skeleton))
    final = (
        "\\boxed{" in skeleton
        or "\\fbox{" in skeleton
        or _FINAL_LINE.search(skeleton) is not None
        or ("nswer is" in skeleton and _ANSWER_IS.search(skeleton) is not None)
    )
    return {
        "equation_lines": eq_lines / lines * own_line,
        "numbered_steps": min(1.0, steps / lines),
        "calc_annotations": min(1.0, calc_lines / lines),
        "align_envs": min(1.0, rows / lines),
        "equation_prose_ratio": min(1.0, math_chars / nonspace) if nonspace else 0.0,
        "final_answer": 1.0 if final else 0.0,
        "line_structure": unit_lines / lines,
    }


def structure_score(features: dict[str, float]) -> float:
    """The noisy-OR of the features under ``WEIGHTS`` (module docstring)."""
    keep = 1.0
    for name, weight in WEIGHTS.items():
        keep *= 1.0 - weight * features[name]
    return 1.0 - keep


def score_text(text: str, kind: str = "auto") -> dict[str, float]:
    """Every score of one segment, rounded to 4 decimals (stable in JSON, and the decision is
    made on the rounded values, so re-thresholding stored scores decides the same). MATH's
    ``[asy]`` figure code is neither reasoning nor computation and is left out first."""
    if kind != "python" and "[asy]" in text:
        text = _ASY.sub("", text)
    code_spans, comment_chars = code_regions(text, kind)
    nonspace = _nonspace(text)
    code_chars = sum(_nonspace(text[a:b]) for a, b in code_spans)
    if code_spans:
        parts, pos = [], 0
        for a, b in code_spans:
            parts.append(text[pos:a])
            pos = b
        parts.append(text[pos:])
        prose = "\n".join(parts)
    else:
        prose = text
    features = structure_features(prose)
    scores = {
        "structure_score": structure_score(features),
        "code_ratio": code_chars / nonspace if nonspace else 0.0,
        "reasoning_ratio": (nonspace - code_chars + comment_chars) / nonspace if nonspace else 0.0,
        **features,
    }
    # in the declared order, whatever order the features were computed in (every score is
    # built within [0, 1]: shares of lines capped at 1, a noisy-OR of weights <= 1)
    return {k: round(scores[k], 4) for k in MathTagger.scores}


# ------------------------------------------------------------------------------- code


def _is_program(source: str) -> tuple[bool, int]:
    """Whether ``source`` parses as Python, and its number of statements that are not a bare
    name or constant (a prose word parses as a name). Comments and blank lines alone parse,
    with no statement: they may sit inside a program."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False, 0
    statements = sum(
        not (isinstance(s, ast.Expr) and isinstance(s.value, (ast.Name, ast.Constant)))
        for s in ast.walk(tree)
        if isinstance(s, ast.stmt)
    )
    return statements > 0 or not tree.body, statements


def _comment_chars(code: str) -> int:
    return sum(_nonspace(c) for c in _COMMENT.findall(code))


def code_regions(text: str, kind: str) -> tuple[list[tuple[int, int]], int]:
    """The code spans of ``text`` in order (fenced blocks, parsing Python runs) and the
    non-blank characters of ``#`` comments inside them."""
    if kind == "python":
        ok, _ = _is_program(text)
        if ok:
            docstrings = 0
            try:
                for node in ast.walk(ast.parse(text)):
                    body = getattr(node, "body", None)
                    if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                        value = body[0].value
                        if isinstance(value, ast.Constant) and isinstance(value.value, str):
                            docstrings += _nonspace(value.value)
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                docstrings = 0
            return [(0, len(text))], _comment_chars(text) + docstrings
    spans: list[tuple[int, int]] = []
    comments = 0
    fences = [(m.start(), m.end()) for m in _FENCE.finditer(text)] if "```" in text else []
    for a, b in fences:
        comments += _comment_chars(text[a:b])
    bounds = [0]
    for a, b in fences:
        bounds += [a, b]
    bounds.append(len(text))
    lined = "\n" + text  # lined[i + 1] is text[i]
    for gap in range(0, len(bounds), 2):
        lo, hi = bounds[gap], bounds[gap + 1]
        for m in _PY_RUN.finditer(lined, lo, hi + 1):
            start, run = m.start(), lined[m.start() + 1 : m.end()]
            if "\n" not in run.strip():
                continue  # one line: no program (see _program_spans)
            for a, b, n_comments in _program_spans(run):
                spans.append((start + a, start + b))
                comments += n_comments
    spans += fences
    spans.sort()
    return spans, comments


def _program_spans(run: str) -> list[tuple[int, int, int]]:
    """The parts of a run of Python-looking lines that are programs: the run is cut before
    each line at its least indentation (one top-level statement group each, so an indented
    prose paragraph costs one failing parse per line, not a quadratic search); maximal
    sequences of groups that parse (comment-only groups included) are programs when they hold
    a real statement and two non-blank lines. Returns
    ``(start, end, comment characters)`` within ``run``."""
    indent = min((len(m.group(1)) for m in _INDENT.finditer(run) if m.group(2)), default=0)
    top = re.compile(r"^[ \t]{%d}(?=\S)" % indent, _M)
    cuts = [g.start() for g in top.finditer(run)]
    if not cuts or cuts[0] != 0:
        cuts.insert(0, 0)
    cuts.append(len(run))
    found, start, statements = [], None, 0
    for i in range(len(cuts) - 1):
        good, n = _is_program(textwrap.dedent(run[cuts[i] : cuts[i + 1]]))
        if good:
            start = cuts[i] if start is None else start
            statements += n
        if start is not None and (not good or i == len(cuts) - 2):
            end = cuts[i + 1] if good else cuts[i]
            part = run[start:end]
            # a program: one real statement at least, over two lines at least (a lone "x = 3"
            # line in a math page is an equation, not a program)
            if statements and _NONBLANK_LINE.subn("", part)[1] >= 2:
                found.append((start, end, _comment_chars(part)))
            start, statements = None, 0
    return found


def notebook_text(source: str) -> str:
    """A notebook as text: markdown cells as they are, code cells as fenced Python, in cell
    order, separated by blank lines."""
    try:
        nb = json.loads(source)
    except ValueError as e:
        raise SkipDocument("notebook is not valid JSON") from e
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list):
        raise SkipDocument("notebook has no cell list")
    parts = []
    for cell in cells:
        if not isinstance(cell, dict):
            raise SkipDocument("notebook cell is not an object")
        body = cell.get("source", "")
        body = "".join(body) if isinstance(body, list) else body
        if not isinstance(body, str):
            raise SkipDocument("notebook cell source is not text")
        if cell.get("cell_type") == "code":
            parts.append("```python\n" + body.rstrip("\n") + "\n```")
        elif cell.get("cell_type") == "markdown":
            parts.append(body)
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------- segments


def paragraph_spans(text: str, min_chars: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each segment of ``text``: blocks split at blank-line runs that lie
    outside fenced code and display math, consecutive blocks merged until a segment holds at
    least ``min_chars`` characters, a shorter tail merged into the segment before it. The
    spans are in order and the text between two spans (and before the first, after the last)
    is whitespace holding a blank line, or nothing."""
    protected = [(m.start(), m.end()) for m in _FENCE.finditer(text)]
    protected += [(m.start(), m.end()) for m in _DISPLAY.finditer(text)]
    protected.sort()
    blocks, pos, p = [], 0, 0
    for m in _BLANK_SEP.finditer(text):
        while p < len(protected) and protected[p][1] <= m.start():
            p += 1
        if p < len(protected) and protected[p][0] < m.end() and m.start() < protected[p][1]:
            continue  # inside a fence or a display block: not a separator
        if m.start() > pos:
            blocks.append((pos, m.start()))
        pos = m.end()
    if pos < len(text):
        blocks.append((pos, len(text)))
    blocks = [(a, b) for a, b in blocks if text[a:b].strip()] or [(0, len(text))]
    spans: list[tuple[int, int]] = []
    start = None
    for a, b in blocks:
        start = a if start is None else start
        if b - start >= min_chars:
            spans.append((start, b))
            start = None
    if start is not None:
        if spans:
            spans[-1] = (spans[-1][0], blocks[-1][1])
        else:
            spans.append((start, blocks[-1][1]))
    return spans
