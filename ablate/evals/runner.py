"""``ablate eval``: score checkpoints of a run, task by task, into ``eval/step_<N>.json``.

Each task's entry records its version and a fingerprint of its data and options; a task whose
stored entry matches is skipped, so ``ablate eval`` can be re-run after more training (or
after adding a task) and only does the new work.

Faults:

* **Nothing lost.** The scores file is rewritten atomically (temporary name + rename) after
  every task, merged with what is on disk at that moment, so an interrupted or killed
  evaluation keeps every task it finished and a rerun scores only the rest; temporaries a
  killed evaluation left are removed when the next one starts.
* **Writable first.** Before any model is loaded, the place the scores go (``eval/``, or the
  run directory that will hold it) is checked by creating and removing a file there: a
  read-only or full file system is one line naming it, exit 2, with nothing written and no
  minutes spent scoring first.
* **A damaged scores file is a cache miss.** ``eval/step_<N>.json`` holds nothing that cannot
  be recomputed, so one that is not valid JSON or not shaped like a scores file (a killed
  older version, a damaged disk) is reported in one warning line and scored again from
  scratch, replacing it. Refusing would leave the user to delete it by hand for no benefit.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field

from ablate.errors import AblateError
from ablate.evals.tasks.base import EvalOptions, Task
from ablate.io import (
    directory_lock,
    os_error_line,
    os_errors,
    remove_path,
    remove_stale_temporaries,
    tmp_name,
    write_json_atomic,
    write_text_atomic,
)

FORMAT = "ablate.eval/1"


def eval_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "eval", f"step_{step}.json")


def read_scores(run_dir: str, step: int, warn: bool = True) -> dict:
    """The stored scores at ``step`` ({} when there are none); a damaged file counts as none,
    with a warning line (see the module docstring)."""
    path = eval_path(run_dir, step)
    if os.path.isdir(path):
        raise AblateError(f"{path}: is a directory, expected the scores file (move it away)")
    if not os.path.exists(path):
        return {}
    problem = None
    try:
        with open(path, encoding="utf-8") as f:
            scores = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        problem = f"not valid JSON ({str(exc)[:60]})"
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or type(exc).__name__})"
    else:
        if (
            not isinstance(scores, dict)
            or not isinstance(scores.get("tasks"), dict)
            or not all(isinstance(t, dict) for t in scores["tasks"].values())
        ):
            problem = "not a scores file"
    if problem is not None:
        if warn:
            print(
                f"warning: {path}: damaged scores file, {problem}: scoring step {step} again",
                file=sys.stderr,
                flush=True,
            )
        return {}
    return scores


def check_writable(run_dir: str) -> None:
    """Refuse in one line, before anything is scored, when the scores cannot be written: a file
    is created and removed in ``eval/`` (or in the run directory, when ``eval/`` does not exist
    yet: it is made only when the first score is written)."""
    eval_dir = os.path.join(run_dir, "eval")
    if os.path.lexists(eval_dir) and not os.path.isdir(eval_dir):
        raise AblateError(f"{eval_dir}: is not a directory (the scores go there: move it away)")
    if os.path.isdir(eval_dir):
        for name in sorted(os.listdir(eval_dir)):
            if (
                name.startswith("step_")
                and name.endswith(".json")
                and os.path.isdir(os.path.join(eval_dir, name))
            ):
                raise AblateError(
                    f"{os.path.join(eval_dir, name)}: is a directory, expected a "
                    "scores file (move it away)"
                )
    where = eval_dir if os.path.isdir(eval_dir) else run_dir
    probe = tmp_name(os.path.join(where, ".write-check"))
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.remove(probe)
    except OSError as exc:
        remove_path(probe)
        raise AblateError(
            os_error_line(eval_dir, OSError(exc.errno, exc.strerror))
            + ": the scores cannot be saved there"
        ) from None


def _remove_stale(eval_dir: str) -> None:
    """What a killed evaluation left half-written: temporaries beside the scores, the routing
    arrays and the per-sample details (``details/step_<N>/``)."""
    remove_stale_temporaries(eval_dir)
    details = os.path.join(eval_dir, "details")
    if os.path.isdir(details):
        remove_stale_temporaries(details)
        for name in os.listdir(details):
            remove_stale_temporaries(os.path.join(details, name))


def _save(path: str, scores: dict, task_name: str) -> None:
    """Write ``scores`` with this task's entry merged into what is on disk now (another
    evaluation of the same step may have added tasks since this one read the file)."""
    current = read_scores(os.path.dirname(os.path.dirname(path)), scores["step"], warn=False)
    if current.get("tasks"):
        merged = dict(current["tasks"])
        merged.update({task_name: scores["tasks"][task_name]})
        scores = {**scores, "tasks": {**scores["tasks"], **merged}}
    with os_errors(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, scores)


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


def evaluate(
    run_dir: str,
    tasks: list[Task],
    steps: list[int | None],
    options: EvalOptions,
    chosen: bool = False,
    quiet: bool = False,
    em=None,
    write: bool = True,
    backend: str = "auto",
) -> list[str]:
    """Score ``tasks`` at each of ``steps`` (None: latest checkpoint); returns the files written.

    ``em``: an already loaded model (training passes its own, at its current step); ``write``:
    whether this process writes the results (training evaluates on every rank in lockstep,
    since expert-parallel ranks each hold part of the model, and rank 0 writes)."""
    from ablate.evals.loading import group_for_this_call, read_run

    read_run(run_dir)  # a clear error before anything loads
    with contextlib.ExitStack() as held:
        if em is None:  # the models are loaded here: so is the process group they need
            held.enter_context(group_for_this_call())
        if write and em is None:
            # one ``ablate eval`` of a run at a time (training's own evaluations run in the
            # trainer, which holds the run directory's lock)
            held.enter_context(directory_lock(run_dir, f"evaluation of {run_dir}"))
            check_writable(run_dir)
            _remove_stale(os.path.join(run_dir, "eval"))
        return _evaluate_steps(run_dir, tasks, steps, options, chosen, quiet, em, write, backend)


def _evaluate_steps(
    run_dir: str,
    tasks: list[Task],
    steps: list[int | None],
    options: EvalOptions,
    chosen: bool,
    quiet: bool,
    em,
    write: bool,
    backend: str,
) -> list[str]:
    from ablate.evals.lm import LanguageModel
    from ablate.evals.loading import load_eval_model

    written = []
    for step in steps:
        model = em if em is not None else load_eval_model(run_dir, step, backend)
        ctx = Context(
            em=model,
            lm=LanguageModel(model, options.batch_size),
            options=options,
            quiet=quiet,
            write=write,
        )
        path = eval_path(run_dir, model.step)
        scores = read_scores(run_dir, model.step) or {
            "format": FORMAT,
            "run": model.name,
            "step": model.step,
            "checkpoint": "init" if model.step == 0 else f"checkpoints/step_{model.step:08d}",
            "tasks": {},
        }
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
            if (
                done
                and done.get("version") == task.version
                and done.get("fingerprint") == fingerprint
            ):
                missing = [p for p in task.outputs(run_dir, model.step) if not os.path.exists(p)]
                if not missing or not done.get("samples") or not write:
                    ctx.progress(f"{task.name}: already scored at step {model.step}")
                    continue
                ctx.progress(
                    f"{task.name}: scored at step {model.step}, but {os.path.basename(missing[0])} "
                    "is gone: scoring it again"
                )
            ctx.progress(f"{task.name}: scoring step {model.step} ...")
            start = time.time()
            result = task.run(ctx)
            scores["tasks"][task.name] = {
                "version": task.version,
                "fingerprint": fingerprint,
                "samples": result.samples,
                "samples_by_metric": result.samples_by_metric,
                "metrics": result.metrics,
                "elapsed_s": round(time.time() - start, 3),
            }
            if not write:
                continue
            if result.details:
                detail = os.path.join(
                    run_dir, "eval", "details", f"step_{model.step}", f"{task.name}.jsonl"
                )
                with os_errors(os.path.dirname(detail)):
                    os.makedirs(os.path.dirname(detail), exist_ok=True)
                write_text_atomic(detail, "".join(json.dumps(d) + "\n" for d in result.details))
            _save(path, scores, task.name)
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
