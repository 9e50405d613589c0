"""``ablate eval``: score checkpoints of a run, task by task, into ``eval/step_<N>.json``.

Each task's entry records its version and a fingerprint of its data and options; a task whose
stored entry matches is skipped, so ``ablate eval`` can be re-run after more training (or
after adding a task) and only does the new work. The file is rewritten atomically after every
task, so an interrupted evaluation keeps what it finished.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

from ablate.errors import AblateError
from ablate.evals.tasks.base import EvalOptions, Task
from ablate.io import write_json_atomic, write_text_atomic

FORMAT = "ablate.eval/1"


def eval_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "eval", f"step_{step}.json")


def read_scores(run_dir: str, step: int) -> dict:
    path = eval_path(run_dir, step)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


@dataclass
class Context:
    em: object
    lm: object
    options: EvalOptions
    quiet: bool = False
    write: bool = True  # False on all but one rank when evaluating inside multi-process training
    notes: list[str] = field(default_factory=list)

    def progress(self, message: str) -> None:
        if not self.quiet:
            print(f"  {message}", file=sys.stderr, flush=True)


def evaluate(run_dir: str, tasks: list[Task], steps: list[int | None], options: EvalOptions,
             chosen: bool = False, quiet: bool = False, em=None, write: bool = True,
             backend: str = "auto") -> list[str]:
    """Score ``tasks`` at each of ``steps`` (None: latest checkpoint); returns the files written.

    ``em``: an already loaded model (training passes its own, at its current step); ``write``:
    whether this process writes the results (training evaluates on every rank in lockstep,
    since expert-parallel ranks each hold part of the model, and rank 0 writes)."""
    from ablate.evals.lm import LanguageModel
    from ablate.evals.loading import load_eval_model, read_run

    read_run(run_dir)  # a clear error before anything loads
    written = []
    for step in steps:
        model = em if em is not None else load_eval_model(run_dir, step, backend)
        ctx = Context(em=model, lm=LanguageModel(model, options.batch_size), options=options, quiet=quiet,
                      write=write)
        path = eval_path(run_dir, model.step)
        scores = read_scores(run_dir, model.step) or {"format": FORMAT, "run": model.name, "step": model.step,
                                                      "checkpoint": "init" if model.step == 0 else
                                                      f"checkpoints/step_{model.step:08d}", "tasks": {}}
        runnable = []
        for task in tasks:
            reason = task.unavailable(ctx)
            if reason:
                if chosen:
                    raise AblateError(f"task {task.name}: {reason}")
                ctx.progress(f"{task.name}: skipped ({reason})")
                continue
            runnable.append(task)
        for task in runnable:
            fingerprint = task.fingerprint(ctx)
            done = scores["tasks"].get(task.name)
            if done and done.get("version") == task.version and done.get("fingerprint") == fingerprint:
                missing = [p for p in task.outputs(run_dir, model.step) if not os.path.exists(p)]
                if not missing or not done.get("samples") or not write:
                    ctx.progress(f"{task.name}: already scored at step {model.step}")
                    continue
                ctx.progress(f"{task.name}: scored at step {model.step}, but {os.path.basename(missing[0])} "
                             "is gone: scoring it again")
            ctx.progress(f"{task.name}: scoring step {model.step} ...")
            start = time.time()
            result = task.run(ctx)
            scores["tasks"][task.name] = {
                "version": task.version, "fingerprint": fingerprint, "samples": result.samples,
                "samples_by_metric": result.samples_by_metric, "metrics": result.metrics,
                "elapsed_s": round(time.time() - start, 3)}
            if not write:
                continue
            if result.details:
                detail = os.path.join(run_dir, "eval", "details", f"step_{model.step}", f"{task.name}.jsonl")
                os.makedirs(os.path.dirname(detail), exist_ok=True)
                write_text_atomic(detail, "".join(json.dumps(d) + "\n" for d in result.details))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_json_atomic(path, scores)
        if path not in written and os.path.isfile(path):
            written.append(path)
    return written


def summary(path: str) -> str:
    with open(path) as f:
        scores = json.load(f)
    lines = [f"{scores['run']} step {scores['step']}: {path}"]
    for name, t in scores["tasks"].items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in list(t["metrics"].items())[:8])
        more = f" (+{len(t['metrics']) - 8} more)" if len(t["metrics"]) > 8 else ""
        lines.append(f"  {name} [{t['samples']:,} samples]: {shown}{more}")
    return "\n".join(lines)
