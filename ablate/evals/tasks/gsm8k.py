"""GSM8K: grade-school math word problems, three ways.

* ``gsm8k_cot``: few-shot chain of thought (examples from the train split beside the test
  file), greedy, the answer read by ``answers.extract_gsm8k_answer`` (``#### N``, else the
  last number; commas, units and a trailing ``.0`` normalised) and compared numerically.
* ``gsm8k_pot``: program of thought: the model writes the body of ``def solution():``, which
  runs in the sandbox; its return value is the answer (a program that exits before returning
  has none; output beyond the limit is discarded).
* ``gsm8k_gold``: bits per byte of the reference solution given the question (calculator
  annotations ``<<48/2=24>>`` removed): the continuous signal small models show first.

The test file defaults to ``../shared/benchmarks/gsm8k/test.jsonl`` (from the current
directory, then from the repository's parent); ``--gsm8k PATH`` or ``ABLATE_GSM8K`` name another.
"""

from __future__ import annotations

import math
import os
import re

from ablate.evals.tasks.base import Task, TaskResult, file_digest, read_jsonl

_ANNOTATION = re.compile(r"<<[^>]*>>")
_REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
DEFAULT_RELATIVE = os.path.join("..", "shared", "benchmarks", "gsm8k", "test.jsonl")


def test_path(options) -> tuple[str | None, bool]:
    """(path, whether the user named it)."""
    named = options.gsm8k_path or os.environ.get("ABLATE_GSM8K")
    if named:
        return named, True
    for candidate in (DEFAULT_RELATIVE, os.path.join(_REPO, DEFAULT_RELATIVE)):
        if os.path.isfile(candidate):
            return candidate, False
    return None, False


def clean_solution(answer: str) -> str:
    return _ANNOTATION.sub("", answer)


class _GSM8K(Task):
    def unavailable(self, ctx) -> str | None:
        path, named = test_path(ctx.options)
        if path is None:
            return f"no GSM8K test file at {DEFAULT_RELATIVE} (pass --gsm8k PATH)"
        return None  # a named path that does not exist is reported by read_jsonl, as an error

    def validate(self, options) -> None:
        path, _ = test_path(options)
        if path is not None:
            read_jsonl(path, ("question", "answer"), options.limit)

    def rows(self, ctx) -> list[dict]:
        path, _ = test_path(ctx.options)
        return read_jsonl(path, ("question", "answer"), ctx.options.limit)

    def data_identity(self, ctx) -> dict:
        path, _ = test_path(ctx.options)
        return {
            "test": file_digest(path) if path and os.path.isfile(path) else None,
            "limit": ctx.options.limit,
        }


class GSM8KGold(_GSM8K):
    name = "gsm8k_gold"
    # 2: every token of a solution longer than the window is scored (1 scored only the last one)
    version = 2

    def run(self, ctx) -> TaskResult:
        tok = ctx.em.tokenizer
        rows = self.rows(ctx)
        golds = [clean_solution(r["answer"]) for r in rows]
        pairs = [
            (tok.encode(f"Question: {r['question']}\nAnswer: "), tok.encode(g))
            for r, g in zip(rows, golds)
        ]
        scored = ctx.lm.score(pairs)
        nbytes = sum(len(g.encode("utf-8")) for g in golds)
        bpb = sum(c.nll for c in scored) / nbytes / math.log(2)
        ctx.progress(f"gsm8k_gold: {bpb:.4f} bits per byte over {len(rows)} solutions")
        return TaskResult(metrics={"gold_bpb": bpb}, samples=len(rows))


class _FewShot(_GSM8K):
    generative = True

    def shots(self, ctx) -> list[dict]:
        path, _ = test_path(ctx.options)
        train = ctx.options.gsm8k_train_path or os.path.join(os.path.dirname(path), "train.jsonl")
        if ctx.options.num_shots <= 0 or not os.path.isfile(train):
            return []
        return read_jsonl(train, ("question", "answer"), ctx.options.num_shots)

    def data_identity(self, ctx) -> dict:
        return {
            **super().data_identity(ctx),
            "shots": [s["question"] for s in self.shots(ctx)],
            "max_new_tokens": ctx.options.max_new_tokens,
        }


class GSM8KChainOfThought(_FewShot):
    name = "gsm8k_cot"
    version = 1

    def run(self, ctx) -> TaskResult:
        from ablate.evals.answers import answers_match, extract_gsm8k_answer, reference_answer

        rows = self.rows(ctx)
        header = "".join(
            f"Question: {s['question']}\nAnswer: {clean_solution(s['answer'])}\n\n"
            for s in self.shots(ctx)
        )
        prompts = [f"{header}Question: {r['question']}\nAnswer:" for r in rows]
        outputs = ctx.lm.generate_text(
            prompts, ctx.options.max_new_tokens, ("\n\nQuestion:", "Question:", "\n\n\n")
        )
        details, correct = [], 0
        for r, out in zip(rows, outputs):
            predicted, gold = extract_gsm8k_answer(out), reference_answer(r)
            ok = predicted is not None and answers_match(predicted, gold)
            correct += ok
            details.append(
                {
                    "question": r["question"],
                    "output": out,
                    "predicted": predicted,
                    "answer": gold,
                    "correct": ok,
                }
            )
        ctx.progress(f"gsm8k_cot: {correct}/{len(rows)}")
        return TaskResult(
            metrics={"accuracy": correct / len(rows)}, samples=len(rows), details=details
        )


POT_PROMPT = (
    "Question: {question}\n# Python: solution() returns the answer as a number.\ndef solution():\n"
)


class GSM8KProgramOfThought(_FewShot):
    name = "gsm8k_pot"
    version = 2  # 2: what a program prints beyond the output limit is discarded, not a failure

    def shots(self, ctx) -> list[dict]:
        return []  # GSM8K has no reference programs: zero-shot

    def run(self, ctx) -> TaskResult:
        from ablate.evals.answers import answers_match, pot_value_to_answer, reference_answer
        from ablate.evals.sandbox import run_many

        rows = self.rows(ctx)
        prompts = [POT_PROMPT.format(question=r["question"]) for r in rows]
        bodies = ctx.lm.generate_text(
            prompts, ctx.options.max_new_tokens, ("\n\n\n", "\nQuestion:", "\ndef ", "\nprint(")
        )
        programs = ["def solution():\n" + body + "\n" for body in bodies]
        results = run_many(
            programs,
            workers=ctx.options.sandbox_workers,
            func="solution",
            timeout_s=ctx.options.sandbox_timeout_s,
            overflow="discard",
        )
        details, correct = [], 0
        for r, program, res in zip(rows, programs, results):
            predicted = pot_value_to_answer(res.value) if res.ok else None
            gold = reference_answer(r)
            ok = predicted is not None and answers_match(predicted, gold)
            correct += ok
            details.append(
                {
                    "question": r["question"],
                    "program": program,
                    "status": res.status,
                    "predicted": predicted,
                    "answer": gold,
                    "correct": ok,
                }
            )
        ctx.progress(
            f"gsm8k_pot: {correct}/{len(rows)} ({sum(r.ok for r in results)} programs ran)"
        )
        return TaskResult(
            metrics={
                "accuracy": correct / len(rows),
                "ran": sum(r.ok for r in results) / len(rows),
            },
            samples=len(rows),
            details=details,
        )
