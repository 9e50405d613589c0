"""GSM8K as a real structured-math corpus.

GSM8K's solutions are step-by-step with calculator annotations (``<<48/2=24>>``) and a final
``#### N`` line: structured math. Its "Socratic" variant writes each step as a sub-question and
its answer: a second, more explicit structure level. Both go in as training data from the
*train* split only; the test split is for evaluation and is refused unless asked for, since
training on it would contaminate the GSM8K scores.

Options: ``levels`` (any of ``text``, ``structured``, ``socratic``; default structured and
socratic), ``splits`` (default ``[train]``). The ``text`` level strips the annotations and the
``####`` line into prose ("The answer is N."), the same problems at the lowest structure level.
"""

from __future__ import annotations

import os
import re
import sys

import orjson

from ablate.data.corpora import Source
from ablate.data.rawfiles import Materialized, write_jsonl
from ablate.errors import AblateError, DataError, show
from ablate.validate import check_keys

LEVEL_DOMAINS = {
    "text": "math.text",
    "structured": "math.structured",
    "socratic": "math.structured.socratic",
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
            render = as_text if lv == "text" else as_structured
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
                    {"text": render(row["question"], row["answer"]), "domain": LEVEL_DOMAINS[lv]}
                )
    out = os.path.join(raw_dir, f"{source.name}.jsonl")
    write_jsonl(out, rows)
    return Materialized([out])


def _read(path: str):
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield orjson.loads(line)
