"""MATH (Hendrycks et al. 2021) on MATH-500, or any MATH-format file, three ways.

Rows need ``problem`` and ``solution`` (with a ``\\boxed{}`` answer); ``answer`` defaults to the
solution's last boxed answer, ``level`` is ``3`` or ``"Level 3"``, ``subject`` (or Hendrycks'
``type``) names the subject. The default file is ``../shared/benchmarks/math500/test.jsonl``;
``--math PATH`` or ``ABLATE_MATH`` name another.

* ``math_cot``: the standard 4-shot Minerva prompt (Lewkowycz et al. 2022, as lm-eval's
  ``minerva_math`` uses it: ``Problem:\\n...\\n\\nSolution: ...Final Answer: The final answer is
  $X$. I hope it is correct.``), generation cut at the next ``Problem:``, the answer read by
  ``math_answers.extract_math_answer`` (last ``\\boxed{}``, else the final-answer sentence) and
  judged by ``math_answers.math_equal``. Accuracy overall, per level (``accuracy/level_N``) and
  per subject (``accuracy/subject/<name>``); with ``--samples N``, ``accuracy`` is the mean over
  samples and ``pass@k`` is reported too.
* ``math_pot``: program of thought, zero-shot as for GSM8K: the model writes the body of
  ``def solution():``, which runs in the sandbox; the value it returns (a number, a tuple, a
  LaTeX string; a ``Fraction`` as ``\\frac{p}{q}``) is the answer.
* ``math_gold``: bits per byte of the reference solution given ``Problem: ...\\n\\nSolution:``.

The four prompt examples are the ones published with Minerva, not taken from the benchmark
file; none of them is a MATH-500 problem.
"""

from __future__ import annotations

import math
import os
import re

from ablate.errors import AblateError
from ablate.evals.tasks.base import Task, TaskResult, benchmark_path, file_digest, jsonl_objects

DEFAULT_RELATIVE = os.path.join("..", "shared", "benchmarks", "math500", "test.jsonl")
STOPS = ("\nProblem:", "Problem:\n", "\n\n\n")

# Minerva's 4-shot prompt (Lewkowycz et al. 2022, appendix; the same four in lm-eval's minerva_math)
MINERVA_SHOTS = (
    (
        "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
        "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, "
        "so $x\\ge2$, and "
        "$5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so "
        "$5-x>0$, which gives $x<5$. "
        "Therefore, the domain of the expression is $\\boxed{[2,5)}$.\nFinal Answer: The final "
        "answer is $[2,5)$. "
        "I hope it is correct.",
    ),
    (
        "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} "
        "\\mathbf{B}).$",
        "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = "
        "(2)(12) = "
        "\\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct.",
    ),
    (
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights "
        "instead, how many times "
        "must Terrell lift them in order to lift the same total weight?",
        "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot "
        "12\\cdot20=480$ pounds of "
        "weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of "
        "$2\\cdot15\\cdot "
        "n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for "
        "$n$:\n\\begin{align*}\n"
        "30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\nFinal Answer: "
        "The final answer is "
        "$16$. I hope it is correct.",
    ),
    (
        "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x "
        "&=b.\n\\end{align*}has a solution "
        "$(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is "
        "nonzero.",
        "If we multiply the first equation by $-\\frac{3}{2}$, we "
        "obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we also "
        "know that $6y-9x=b$, we "
        "have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
        "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.",
    ),
)

POT_PROMPT = (
    "Problem: {problem}\n# Python: solution() returns the final answer (a number, a tuple, "
    "or a LaTeX string).\ndef solution():\n"
)
_LEVEL = re.compile(r"^(?:Level\s*)?(\d+)$")


def cot_prompt(problem: str, shots: bool = True) -> str:
    header = (
        "".join(f"Problem:\n{p}\n\nSolution: {s}\n\n" for p, s in MINERVA_SHOTS) if shots else ""
    )
    return f"{header}Problem:\n{problem}\n\nSolution:"


def read_math(path: str, limit: int | None = None) -> list[dict]:
    """MATH rows, each with ``problem``, ``solution``, ``answer``, ``level`` (int or None) and
    ``subject`` (str or None); one clear line naming the file, line and field on a bad row."""
    from ablate.evals.math_answers import last_boxed

    rows = []
    for n, where, raw in jsonl_objects(path):
        for key in ("problem", "solution"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise AblateError(
                    f"{where}: field {key!r} must be a non-empty string (a MATH row has "
                    "problem, solution[, answer, level, subject])"
                )
        answer = raw.get("answer")
        if answer is None:
            answer = last_boxed(raw["solution"])
            if answer is None:
                raise AblateError(
                    f"{where}: no 'answer' field and no \\boxed{{}} answer in 'solution'"
                )
        if not isinstance(answer, str) or not answer.strip():
            raise AblateError(f"{where}: field 'answer' must be a non-empty string")
        level = raw.get("level")
        if level is not None:
            m = _LEVEL.match(str(level).strip())
            if not m or isinstance(level, bool):
                raise AblateError(
                    f"{where}: field 'level' must be a number 1-5 or 'Level N', got {level!r}"
                )
            level = int(m.group(1))
        subject = raw.get("subject", raw.get("type"))
        if subject is not None and not isinstance(subject, str):
            raise AblateError(f"{where}: field 'subject' must be a string")
        rows.append(
            {
                "problem": raw["problem"],
                "solution": raw["solution"],
                "answer": answer.strip(),
                "level": level,
                "subject": subject,
                "id": raw.get("unique_id", n),
            }
        )
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise AblateError(f"{path}: no rows")
    return rows


class _MATH(Task):
    def path(self, ctx) -> str | None:
        return benchmark_path(ctx.options.math_path, "ABLATE_MATH", DEFAULT_RELATIVE)[0]

    def unavailable(self, ctx) -> str | None:
        if self.path(ctx) is None:
            return f"no MATH file at {DEFAULT_RELATIVE} (pass --math PATH)"
        return None

    def validate(self, options) -> None:
        path = benchmark_path(options.math_path, "ABLATE_MATH", DEFAULT_RELATIVE)[0]
        if path is not None:
            read_math(path, options.limit)

    def data_identity(self, ctx) -> dict:
        path = self.path(ctx)
        return {
            "data": file_digest(path) if path and os.path.isfile(path) else None,
            "limit": ctx.options.limit,
        }

    def rows(self, ctx) -> list[dict]:
        return read_math(self.path(ctx), ctx.options.limit)


class MATHGold(_MATH):
    name = "math_gold"
    version = 2  # 2: every token of a solution longer than the window is scored

    def run(self, ctx) -> TaskResult:
        tok = ctx.em.tokenizer
        rows = self.rows(ctx)
        golds = [" " + r["solution"] for r in rows]
        scored = ctx.lm.score(
            [
                (tok.encode(cot_prompt(r["problem"], shots=False)), tok.encode(g))
                for r, g in zip(rows, golds)
            ]
        )
        nbytes = sum(len(g.encode("utf-8")) for g in golds)
        bpb = sum(c.nll for c in scored) / nbytes / math.log(2)
        ctx.progress(f"math_gold: {bpb:.4f} bits per byte over {len(rows)} solutions")
        return TaskResult(metrics={"gold_bpb": bpb}, samples=len(rows))


def _score(
    ctx,
    name: str,
    rows: list[dict],
    predictions: list[list[str | None]],
    outputs: list[list[str]],
    extra: dict | None = None,
) -> TaskResult:
    """Accuracy (mean over samples) overall, per level and per subject; pass@k with samples."""
    from ablate.evals.math_answers import math_equal
    from ablate.evals.samples import pass_metrics, resolve_ks

    n = ctx.options.samples
    correct = [[math_equal(p, r["answer"]) for p in preds] for r, preds in zip(rows, predictions)]
    per_row = [sum(c) / n for c in correct]
    metrics = {"accuracy": sum(per_row) / len(rows)}
    per_metric = {"accuracy": len(rows)}
    groups: dict[str, list[float]] = {}
    for r, acc in zip(rows, per_row):
        if r["level"] is not None:
            groups.setdefault(f"accuracy/level_{r['level']}", []).append(acc)
        if r["subject"]:
            groups.setdefault(f"accuracy/subject/{r['subject']}", []).append(acc)
    for key in sorted(groups):
        metrics[key] = sum(groups[key]) / len(groups[key])
        per_metric[key] = len(groups[key])
    if n > 1:
        metrics.update(pass_metrics(correct, resolve_ks(n, ctx.options.pass_k)))
    metrics.update(extra or {})
    details = [
        {
            "id": r["id"],
            "sample": j,
            "output": out,
            "predicted": p,
            "answer": r["answer"],
            "correct": ok,
            "level": r["level"],
            "subject": r["subject"],
        }
        for r, outs, preds, oks in zip(rows, outputs, predictions, correct)
        for j, (out, p, ok) in enumerate(zip(outs, preds, oks))
    ]
    ctx.progress(
        f"{name}: accuracy {metrics['accuracy']:.4f} over {len(rows)} problems x {n} samples"
    )
    return TaskResult(
        metrics=metrics, samples=len(rows), samples_by_metric=per_metric, details=details
    )


class _Judged(_MATH):
    """The generative MATH tasks: their answers are judged with math-verify."""

    generative = True

    def unavailable(self, ctx) -> str | None:
        try:
            import math_verify  # noqa: F401
        except ImportError:
            return "math-verify is not installed (pip install 'ablate[eval]')"
        return super().unavailable(ctx)


class MATHChainOfThought(_Judged):
    name = "math_cot"
    version = 1

    def data_identity(self, ctx) -> dict:
        from ablate.evals.samples import sampling_identity

        return {
            **super().data_identity(ctx),
            **sampling_identity(ctx.options),
            "prompt": "minerva-4shot",
        }

    def run(self, ctx) -> TaskResult:
        from ablate.evals.math_answers import extract_math_answer
        from ablate.evals.samples import generate_samples, resolve_ks

        resolve_ks(ctx.options.samples, ctx.options.pass_k)
        rows = self.rows(ctx)
        outputs = generate_samples(
            ctx, [cot_prompt(r["problem"]) for r in rows], ctx.options.max_new_tokens, STOPS
        )
        predictions = [[extract_math_answer(o) for o in outs] for outs in outputs]
        return _score(ctx, self.name, rows, predictions, outputs)


class MATHProgramOfThought(_Judged):
    name = "math_pot"
    version = 1

    def data_identity(self, ctx) -> dict:
        from ablate.evals.samples import sampling_identity

        return {
            **super().data_identity(ctx),
            **sampling_identity(ctx.options),
            "prompt": POT_PROMPT,
        }

    def run(self, ctx) -> TaskResult:
        from ablate.evals.math_answers import pot_value_to_latex
        from ablate.evals.samples import generate_samples, resolve_ks
        from ablate.evals.sandbox import run_many

        resolve_ks(ctx.options.samples, ctx.options.pass_k)
        rows = self.rows(ctx)
        bodies = generate_samples(
            ctx,
            [POT_PROMPT.format(problem=r["problem"]) for r in rows],
            ctx.options.max_new_tokens,
            ("\n\n\n", "\nProblem:", "\ndef ", "\nprint("),
        )
        programs = [["def solution():\n" + b + "\n" + _POT_WRAPPER for b in bs] for bs in bodies]
        flat = run_many(
            [p for ps in programs for p in ps],
            workers=ctx.options.sandbox_workers,
            func="_ablate_answer",
            timeout_s=ctx.options.sandbox_timeout_s,
            overflow="discard",
        )
        n = ctx.options.samples
        results = [flat[i * n : (i + 1) * n] for i in range(len(rows))]
        predictions = [
            [pot_value_to_latex(r.value) if r.ok else None for r in rs] for rs in results
        ]
        outputs = [
            [f"{p}\n# status: {r.status}" for p, r in zip(ps, rs)]
            for ps, rs in zip(programs, results)
        ]
        ran = sum(r.ok for rs in results for r in rs) / (len(rows) * n)
        return _score(ctx, self.name, rows, predictions, outputs, extra={"ran": ran})


# called instead of solution(): an exact fraction comes back as LaTeX, not as a rounded float
_POT_WRAPPER = """
def _ablate_answer():
    value = solution()
    from fractions import Fraction
    if isinstance(value, Fraction):
        if value.denominator == 1:
            return str(value.numerator)
        sign = "-" if value < 0 else ""
        return sign + "\\\\frac{%d}{%d}" % (abs(value.numerator), value.denominator)
    return value
"""
