"""GSM8K as a real structured-math corpus.

GSM8K's solutions are step-by-step with calculator annotations (``<<48/2=24>>``) and a final
``#### N`` line: structured math. Its "Socratic" variant writes each step as a sub-question and
its answer: a second, more explicit structure level. Both go in as training data from the
*train* split only; the test split is for evaluation and is refused unless asked for, since
training on it would contaminate the GSM8K scores.

Options: ``levels`` (any of ``text``, ``structured``, ``socratic``, ``prose``, ``code``; default
structured and socratic), ``splits`` (default ``[train]``). The ``text`` level strips the
annotations and the ``####`` line into prose ("The answer is N."), the same problems at the lowest
structure level. ``prose`` (``as_prose``) goes further: the steps become one paragraph, so no
line-per-step layout is left to tell it from textbook prose. ``code`` (``as_code``) renders each
step as a comment followed by the Python assignment its calculator annotation computes: the same
reasoning carried by a program (math.code).
"""

from __future__ import annotations

import ast
import os
import re
import sys
import textwrap

import orjson

from ablate.data.corpora import Source
from ablate.data.rawfiles import Materialized, write_jsonl
from ablate.errors import AblateError, DataError, show
from ablate.validate import check_keys

LEVEL_DOMAINS = {
    "text": "math.text",
    "structured": "math.structured",
    "socratic": "math.structured.socratic",
    "prose": "math.text",
    "code": "math.code",
}
_CALC = re.compile(r"<<[^>]*>>")
_FINAL = re.compile(r"\n?####\s*(.+?)\s*$")


def question_text(question: str) -> str:
    return f"Question: {question.strip()}\n"


def as_structured(question: str, answer: str) -> str:
    return question_text(question) + answer.strip()


def as_text(question: str, answer: str) -> str:
    body = _CALC.sub("", answer.strip())
    body = _FINAL.sub(lambda m: f"\nThe answer is {m.group(1)}.", body)
    return question_text(question) + body


def _steps(answer: str) -> tuple[list[str], str | None]:
    """The solution's step lines (blank lines dropped) and its final answer (the text after
    ``####``, None if the line is missing)."""
    final = None
    lines = []
    for line in answer.strip().splitlines():
        if line.strip().startswith("####"):
            final = line.strip()[4:].strip()
        elif line.strip():
            lines.append(line.strip())
    return lines, final


def _sentence(line: str) -> str:
    """A step line without its calculator annotations, spaces collapsed, ending in a full stop
    unless it already ends a sentence (``.``, ``!``, ``?``, ``:``)."""
    text = re.sub(r"\s+", " ", _CALC.sub("", line)).strip()
    return text if not text or text[-1] in ".!?:" else text + "."


def as_prose(question: str, answer: str) -> str:
    """The solution as one paragraph of prose: annotations removed, each step line made a
    sentence (``_sentence``) and the sentences joined by single spaces, ``#### N`` turned into
    "So the answer is N."; the question line as in the other levels."""
    lines, final = _steps(answer)
    sentences = [s for s in map(_sentence, lines) if s]
    if final is not None:
        sentences.append(f"So the answer is {final}.")
    return question_text(question) + " ".join(sentences) + "\n"


_ARITH = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.operator, ast.unaryop)


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def as_code(question: str, answer: str) -> str:
    """The solution as a Python program (math.code), by this rule:

    * the question as ``#`` comment lines (wrapped at 96 columns), then a blank line;
    * per step line: the sentence (annotations removed) as a comment, then one assignment
      ``step_k = <expr>`` per calculator annotation ``<<expr=result>>`` in it, where ``expr`` is
      plain arithmetic (numbers, ``+ - * / // % **``, parentheses). A number in ``expr`` equal to
      the stated result of an earlier step whose computed value matched its stated result is
      written as that step's name (the latest such), so the program carries the chain of steps
      instead of re-typing intermediate results. An annotation that is not plain arithmetic, or
      whose evaluation fails, stays in the comment only; a step without annotations is a comment;
    * the answer: ``answer = round(step_k, 4)`` for the last step whose stated result equals the
      ``#### N`` answer (else the last step), printed as an integer when it is one. With no
      assignment at all, the program prints the stated answer.
    """
    lines, final = _steps(answer)
    out = [f"# {w}" for w in textwrap.wrap(f"Question: {question.strip()}", 96)] + [""]
    names: list[tuple[str, float]] = []  # (step name, stated result) of steps that checked out
    values: dict[str, float] = {}
    steps: list[tuple[str, float | None]] = []  # (name, stated result) of every assignment
    for line in lines:
        sentence = _sentence(line)
        if sentence:
            out.append(f"# {sentence}")
        for annotation in re.findall(r"<<([^>]*)>>", line):
            expr, _, stated = annotation.rpartition("=")
            assignment = _assignment(expr, names, values)
            if assignment is None:
                continue
            code, value = assignment
            name = f"step_{len(steps) + 1}"
            out.append(f"{name} = {code}")
            result = _number(stated)
            values[name] = value
            steps.append((name, result))
            if result is not None and _close(value, result):
                names.append((name, result))
    target = _number(final) if final is not None else None
    if steps:
        chosen = next(
            (n for n, r in reversed(steps) if r is not None and target is not None and r == target),
            steps[-1][0],
        )
        out += [
            "",
            f"answer = round({chosen}, 4)",
            "print(int(answer) if answer == int(answer) else answer)",
        ]
    else:
        out += ["", f"print({final!r})" if final is not None else "print(None)"]
    return "\n".join(out) + "\n"


def _assignment(
    expr: str, names: list[tuple[str, float]], values: dict[str, float]
) -> tuple[str, float] | None:
    """``expr`` as Python source with earlier results named, and its value; None when it is not
    plain arithmetic or cannot be evaluated (division by zero, an absurd power)."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if not isinstance(node, _ARITH) or isinstance(node, ast.Name):
            return None
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.LShift, ast.RShift)):
            if isinstance(node.op, (ast.LShift, ast.RShift)):
                return None
            exponent = node.right
            if not (isinstance(exponent, ast.Constant) and abs(exponent.value) <= 64):
                return None
        if isinstance(node, (ast.BinOp)) and isinstance(
            node.op, (ast.BitAnd, ast.BitOr, ast.BitXor, ast.MatMult)
        ):
            return None

    class _Name(ast.NodeTransformer):
        def visit_Constant(self, node: ast.Constant) -> ast.AST:
            for name, result in reversed(names):
                if float(node.value) == result:
                    return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), node)
            return node

    named = ast.fix_missing_locations(_Name().visit(tree))
    try:
        value = eval(compile(named, "<step>", "eval"), {"__builtins__": {}}, dict(values))
    except (ArithmeticError, ValueError):
        return None
    if isinstance(value, complex):
        return None
    return ast.unparse(named), float(value)


_RENDERS = {"text": as_text, "structured": as_structured, "prose": as_prose, "code": as_code}


def materialize_gsm8k(source: Source, raw_dir: str, base_dir: str) -> Materialized:
    opts = check_keys(source.options, ("levels", "splits", "allow_test"), f"{source.where}.options")
    levels = opts.get("levels", ["structured", "socratic"])
    splits = opts.get("splits", ["train"])
    for lv in levels:
        if lv not in LEVEL_DOMAINS:
            raise AblateError(
                f"{source.where}.options.levels: {show(lv)} is not a level "
                f"(allowed: {', '.join(LEVEL_DOMAINS)})"
            )
    for sp in splits:
        if sp not in ("train", "test"):
            raise AblateError(
                f"{source.where}.options.splits: {sp!r} is not a split (allowed: train, test)"
            )
        if sp == "test" and not opts.get("allow_test"):
            raise AblateError(
                f"{source.where}.options.splits: 'test' is GSM8K's evaluation data; training on it "
                "contaminates GSM8K scores (set allow_test: true to do it anyway)"
            )
    root = os.path.join(base_dir, source.path or "")
    if not source.path or not os.path.isdir(root):
        raise AblateError(
            f"{source.where}.path: {source.path!r} is not a directory holding GSM8K's train.jsonl"
        )
    rows = []
    for sp in splits:
        for lv in levels:
            name = f"{sp}_socratic.jsonl" if lv == "socratic" else f"{sp}.jsonl"
            path = os.path.join(root, name)
            if not os.path.isfile(path):
                if lv == "socratic" and "levels" not in opts:
                    print(
                        f"note: {source.where}: no {name} in {source.path}; "
                        "the Socratic level is skipped",
                        file=sys.stderr,
                    )
                    continue
                raise AblateError(f"{source.where}: {path} does not exist")
            render = _RENDERS.get(lv, as_structured)
            for i, row in enumerate(_read(path)):
                if (
                    not isinstance(row, dict)
                    or not isinstance(row.get("question"), str)
                    or not isinstance(row.get("answer"), str)
                ):
                    raise DataError(
                        f"{path}: line {i + 1}: expected 'question' and 'answer' strings"
                    )
                rows.append(
                    {
                        "text": render(row["question"], row["answer"]),
                        "domain": LEVEL_DOMAINS[lv],
                        "id": f"{name}:{i + 1}:{lv}",  # provenance: file, row, rendering
                    }
                )
    out = os.path.join(raw_dir, f"{source.name}.jsonl")
    write_jsonl(out, rows)
    return Materialized([out])


def _read(path: str):
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield orjson.loads(line)
