"""MBPP (Austin et al. 2021, "Program Synthesis with Large Language Models"), full version.

Read from ``../shared/benchmarks/mbpp/mbpp.jsonl`` (``--mbpp PATH`` or ``ABLATE_MBPP`` name
another file of the same format: ``task_id``, ``text``, ``code``, ``test_list``, optional
``test_setup_code``). The test split is task_ids 11-510; the few-shot examples are task_ids 2,
3 and 4, in the paper's prompt (its first line wrapped here)::

    You are an expert Python programmer, and here is your task: {text} Your code should
    pass these tests:

    {test 1}
    {test 2}
    {test 3}
    [BEGIN]
    {code}
    [DONE]

* ``mbpp``: pass@k (greedy pass@1 by default; ``--samples N`` for more): each completion (cut at
  ``[DONE]``) runs in the sandbox through ``ablate.evals.execution`` (a pass needs proof that the
  last assert ran), then ``test_setup_code``, then the ``test_list`` asserts. The code goes before
  the setup code: tasks 367 and 927 set up objects of a class the solution defines.
* ``mbpp_gold``: bits per byte of the reference ``code`` given the zero-shot prompt (the task
  with its tests and ``[BEGIN]``).
"""

from __future__ import annotations

import math
import os

from ablate.errors import AblateError
from ablate.evals.tasks.base import Task, TaskResult, benchmark_path, file_digest, jsonl_objects

DEFAULT_RELATIVE = os.path.join("..", "shared", "benchmarks", "mbpp", "mbpp.jsonl")
TEST_IDS = range(11, 511)
SHOT_IDS = (2, 3, 4)
STOPS = ("[DONE]", "\n[BEGIN]", "\nYou are an expert")


def read_mbpp(path: str) -> dict[int, dict]:
    """Rows by task_id, each checked: one clear line naming the file, line and field."""
    rows: dict[int, dict] = {}
    for _, where, row in jsonl_objects(path):
        if not isinstance(row.get("task_id"), int) or isinstance(row.get("task_id"), bool):
            raise AblateError(f"{where}: field 'task_id' must be an integer")
        for key in ("text", "code"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise AblateError(f"{where}: field {key!r} must be a non-empty string")
        tests = row.get("test_list")
        if (
            not isinstance(tests, list)
            or not tests
            or not all(isinstance(t, str) and t.strip() for t in tests)
        ):
            raise AblateError(
                f"{where}: field 'test_list' must be a non-empty list of test strings "
                f"(task {row['task_id']} has {tests!r:.40})"
            )
        if not isinstance(row.get("test_setup_code", ""), str):
            raise AblateError(f"{where}: field 'test_setup_code' must be a string")
        rows[row["task_id"]] = row
    if not rows:
        raise AblateError(f"{path}: no rows")
    return rows


def _lines(code: str) -> str:
    return code.replace("\r\n", "\n").strip("\n")


def prompt(row: dict, with_code: bool = False) -> str:
    tests = "\n".join(row["test_list"])
    text = (
        f"You are an expert Python programmer, and here is your task: {row['text']} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
    )
    return text + (f"{_lines(row['code'])}\n[DONE]\n\n" if with_code else "")


def few_shot_header(rows: dict[int, dict], path: str) -> str:
    missing = [i for i in SHOT_IDS if i not in rows]
    if missing:
        raise AblateError(
            f"{path}: the 3-shot prompt needs task_ids 2, 3 and 4 (missing: "
            f"{', '.join(map(str, missing))})"
        )
    return "".join(prompt(rows[i], with_code=True) for i in SHOT_IDS)


def execution_case(row: dict, completion: str) -> tuple[str, str]:
    """(candidate, tests) for ``execution.check_programs``: the code, then the setup, then the
    asserts."""
    setup = row.get("test_setup_code") or ""
    return completion, (setup + "\n" if setup.strip() else "") + "\n".join(row["test_list"]) + "\n"


class _MBPP(Task):
    def path(self, ctx) -> str | None:
        return benchmark_path(ctx.options.mbpp_path, "ABLATE_MBPP", DEFAULT_RELATIVE)[0]

    def unavailable(self, ctx) -> str | None:
        if self.path(ctx) is None:
            return f"no MBPP file at {DEFAULT_RELATIVE} (pass --mbpp PATH)"
        return None

    def validate(self, options) -> None:
        path = benchmark_path(options.mbpp_path, "ABLATE_MBPP", DEFAULT_RELATIVE)[0]
        if path is not None:
            rows = read_mbpp(path)
            if self.generative:
                few_shot_header(rows, path)

    def data_identity(self, ctx) -> dict:
        path = self.path(ctx)
        return {
            "data": file_digest(path) if path and os.path.isfile(path) else None,
            "limit": ctx.options.limit,
        }

    def rows(self, ctx) -> tuple[list[dict], dict[int, dict]]:
        path = self.path(ctx)
        rows = read_mbpp(path)
        test = [rows[i] for i in TEST_IDS if i in rows]
        if not test:
            raise AblateError(f"{path}: has no rows of the test split (task_ids 11-510)")
        return test[: ctx.options.limit] if ctx.options.limit else test, rows


class MBPPGold(_MBPP):
    name = "mbpp_gold"
    version = 2  # 2: every token of a solution longer than the window is scored

    def run(self, ctx) -> TaskResult:
        tok = ctx.em.tokenizer
        test, _ = self.rows(ctx)
        golds = [_lines(r["code"]) + "\n[DONE]" for r in test]
        scored = ctx.lm.score([(tok.encode(prompt(r)), tok.encode(g)) for r, g in zip(test, golds)])
        nbytes = sum(len(g.encode("utf-8")) for g in golds)
        bpb = sum(c.nll for c in scored) / nbytes / math.log(2)
        ctx.progress(f"mbpp_gold: {bpb:.4f} bits per byte over {len(test)} solutions")
        return TaskResult(metrics={"gold_bpb": bpb}, samples=len(test))


class MBPP(_MBPP):
    name = "mbpp"
    version = 1
    generative = True

    def data_identity(self, ctx) -> dict:
        from ablate.evals.samples import sampling_identity

        return {**super().data_identity(ctx), **sampling_identity(ctx.options)}

    def run(self, ctx) -> TaskResult:
        from ablate.evals.samples import generate_samples, resolve_ks
        from ablate.evals.tasks.humaneval import score_code

        ks = resolve_ks(ctx.options.samples, ctx.options.pass_k)
        test, rows = self.rows(ctx)
        header = few_shot_header(rows, self.path(ctx))
        completions = generate_samples(
            ctx, [header + prompt(r) for r in test], ctx.options.max_new_tokens, STOPS
        )
        cases = [[execution_case(r, c) for c in cs] for r, cs in zip(test, completions)]
        return score_code(ctx, self.name, [r["task_id"] for r in test], cases, completions, ks)
