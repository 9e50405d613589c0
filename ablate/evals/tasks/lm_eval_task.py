"""An lm-eval task scored through the adapter: ``--tasks lm_eval:<name>``.

Its metrics land in ``eval/step_<N>.json`` beside the built-in tasks (``acc,none`` and the
like, as lm-eval names them; standard errors dropped), so the analysis compares them the same way.

lm-eval's code tasks (``UNSAFE_CODE``: humaneval, mbpp ...) execute generated code with lm-eval's
own runner, in this process, with the user's permissions: they are refused unless the user passes
``--allow-unsandboxed-code`` (documented as unsandboxed). The built-in ``humaneval`` and ``mbpp``
run in ``ablate.evals.sandbox`` instead.
"""

from __future__ import annotations

import os

from ablate.errors import AblateError
from ablate.evals.tasks.base import Task, TaskResult, file_digest


class LmEvalTask(Task):
    version = 1

    def __init__(self, task: str):
        self.task = task
        self.name = f"lm_eval:{task}"

    def unavailable(self, ctx) -> str | None:
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            return "lm-eval is not installed (pip install 'ablate[eval]')"
        return None

    def data_identity(self, ctx) -> dict:
        include = ctx.options.lm_eval_include
        files = {}
        if include and os.path.isdir(include):
            for root, _, names in os.walk(include):
                for n in sorted(names):
                    files[os.path.relpath(os.path.join(root, n), include)] = file_digest(
                        os.path.join(root, n)
                    )
        return {"task": self.task, "include": files, "limit": ctx.options.limit}

    def run(self, ctx) -> TaskResult:
        import lm_eval
        from lm_eval.tasks import TaskManager

        from ablate.evals.lm_eval_adapter import AblateLM

        include = ctx.options.lm_eval_include
        if include and not os.path.isdir(include):
            raise AblateError(f"--lm-eval-include: {include} is not a directory")
        manager = TaskManager(include_path=include) if include else TaskManager()
        if self.task not in manager.all_tasks:
            raise AblateError(
                f"task {self.name}: lm-eval knows no task {self.task!r}"
                + ("" if include else " (local tasks: pass --lm-eval-include DIR)")
            )
        try:
            out = lm_eval.simple_evaluate(
                model=AblateLM(lm=ctx.lm),
                tasks=[self.task],
                task_manager=manager,
                limit=ctx.options.limit,
                log_samples=False,
                bootstrap_iters=0,
                confirm_run_unsafe_code=ctx.options.allow_unsandboxed_code,
            )
        except ValueError as exc:
            if "unsafe" not in str(exc):
                raise
            raise AblateError(
                f"task {self.name}: lm-eval runs this task's generated code in its own process, "
                "outside ablate's sandbox; score code with the built-in humaneval/mbpp tasks, or "
                "pass "
                "--allow-unsandboxed-code to run it unsandboxed anyway"
            ) from None
        result = out["results"][self.task]
        metrics = {
            k: float(v)
            for k, v in result.items()
            if isinstance(v, (int, float))
            and "_stderr" not in k
            and k not in ("alias", "sample_len")
        }
        samples = int(out.get("n-samples", {}).get(self.task, {}).get("effective", 0))
        ctx.progress(f"{self.name}: {metrics}")
        return TaskResult(metrics=metrics, samples=samples)
