"""Benchmark files read as training corpora: MBPP's programs and MATH-format solutions.

Both are evaluation data first. ``mbpp`` reads only the splits that are not scored (train
611-974, validation 511-600, prompt 1-10; the test split 11-510 needs ``allow_test: true``, as
GSM8K's does), and decontamination (``ablate.data.tagging.decontam``) checks every document
against the test sets anyway. ``hendrycks_math`` reads any MATH-format JSONL (``problem``,
``solution``): pointed at MATH-500 it is test data, which decontamination then drops and counts
(the real-data study does exactly that, to show the guard works).

Rows carry a default domain (``code.exec`` for MBPP programs, ``math.text`` for MATH solutions)
for sources without a tagger; a ``tagger:`` on the source decides instead.
"""

from __future__ import annotations

import os

from ablate.data.corpora import Source
from ablate.data.rawfiles import Materialized, write_jsonl
from ablate.errors import AblateError, DataError, show
from ablate.validate import check_keys

MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}


def _input_file(source: Source, base_dir: str, what: str) -> str:
    path = os.path.join(base_dir, source.path or "")
    if not source.path or not os.path.isfile(path):
        raise AblateError(f"{source.where}.path: {show(source.path)} is not {what}")
    return path


def _rows(path: str):
    from ablate.evals.tasks.base import jsonl_objects

    for n, where, row in jsonl_objects(path):
        yield n, where, row


def materialize_mbpp(source: Source, raw_dir: str, base_dir: str) -> Materialized:
    opts = check_keys(
        source.options, ("splits", "allow_test", "with_prompt"), f"{source.where}.options"
    )
    splits = opts.get("splits", ["train", "validation", "prompt"])
    if not isinstance(splits, list) or not splits:
        raise AblateError(
            f"{source.where}.options.splits: expected a list of splits "
            f"(allowed: {', '.join(MBPP_SPLITS)})"
        )
    for sp in splits:
        if sp not in MBPP_SPLITS:
            raise AblateError(
                f"{source.where}.options.splits: {show(sp)} is not a split "
                f"(allowed: {', '.join(MBPP_SPLITS)})"
            )
        if sp == "test" and opts.get("allow_test") is not True:
            raise AblateError(
                f"{source.where}.options.splits: 'test' (task_ids 11-510) is MBPP's evaluation "
                "data; training on it contaminates MBPP scores (set allow_test: true to do it "
                "anyway)"
            )
    path = _input_file(source, base_dir, "MBPP's mbpp.jsonl")
    ranges = [MBPP_SPLITS[sp] for sp in splits]
    rows = []
    for _, where, row in _rows(path):
        task_id, code, text = row.get("task_id"), row.get("code"), row.get("text")
        if not isinstance(task_id, int) or not isinstance(code, str) or not isinstance(text, str):
            raise DataError(f"{where}: expected 'task_id' (integer), 'text' and 'code' strings")
        if not any(lo <= task_id <= hi for lo, hi in ranges):
            continue
        program = code.replace("\r\n", "\n").strip("\n") + "\n"
        if opts.get("with_prompt"):
            program = f"# {text.strip()}\n{program}"
        rows.append({"text": program, "domain": "code.exec", "task_id": task_id, "kind": "python"})
    out = os.path.join(raw_dir, f"{source.name}.jsonl")
    write_jsonl(out, rows)
    return Materialized([out])


def materialize_hendrycks_math(source: Source, raw_dir: str, base_dir: str) -> Materialized:
    opts = check_keys(source.options, ("with_problem",), f"{source.where}.options")
    path = _input_file(source, base_dir, "a MATH-format JSONL (problem, solution)")
    rows = []
    for _, where, row in _rows(path):
        problem, solution = row.get("problem"), row.get("solution")
        if not isinstance(problem, str) or not isinstance(solution, str):
            raise DataError(f"{where}: expected 'problem' and 'solution' strings")
        text = solution.strip() + "\n"
        if opts.get("with_problem", True):
            text = f"Problem: {problem.strip()}\nSolution: {text}"
        rows.append({"text": text, "domain": "math.text", "id": row.get("unique_id", where)})
    out = os.path.join(raw_dir, f"{source.name}.jsonl")
    write_jsonl(out, rows)
    return Materialized([out])
