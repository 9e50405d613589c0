"""``ablate sweep expand|submit|status|cancel``: the sweep's verbs, on top of the pieces.

``expand``: points -> run directories with resolved recipes -> every blend pre-compiled.
``submit``: expand, then start the points whose state calls for it (pending; with ``retry``
also failed, preempted, interrupted and cancelled), never a completed, queued or running one.
Submissions of one sweep are serialized by a lock file in its root, so two ``submit`` calls
cannot both start the same point.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Callable

from ablate.errors import AblateError
from ablate.sweep.expand import Point, build_points, plan_points, points_table, started, verify_points, write_points
from ablate.sweep.spec import SweepSpec
from ablate.sweep.state import RETRYABLE, PointState, job_record, point_state


def expand(spec: SweepSpec, log: Callable[[str], None], compile: bool = True) -> list[Point]:
    points = build_points(spec)
    plan_points(spec, points, verify=False)  # budgets first: the blends depend on nothing else
    todo = [p for p in points if not started(p.run_dir)] if compile else []
    background = contextlib.nullcontext()
    if todo:  # the points' blends are computed in the background from here on, while the
        # datasets' files are checked and, in precompile, their shared indices built
        from ablate.recipe.blend_prefetch import prefetching
        from ablate.recipe.compile import blend_jobs

        background = prefetching(blend_jobs([p.plan for p in todo]))
    with background:
        verify_points(spec, points)
        write_points(spec, points)
        if compile:
            from ablate.sweep.precompile import precompile

            precompile(todo, log)
    return points


def expand_table(spec: SweepSpec, points: list[Point]) -> str:
    return (f"sweep {spec.name}: {len(points)} point(s) in {spec.resolved_root}\n" + points_table(points))


def states(spec: SweepSpec, points: list[Point], also: str | None = None) -> list[PointState]:
    """Each point's state; asks every executor that any point was submitted with (and ``also``)."""
    from ablate.sweep.executor import get_executor

    used = {r["executor"] for r in (job_record(p.run_dir) for p in points) if r and r.get("executor")}
    if also:
        used.add(also)
    jobs: dict[str, list] = {}
    for name in sorted(used):
        for point, js in get_executor(name, spec).jobs(points).items():
            jobs.setdefault(point, []).extend(js)
    return [point_state(p.name, p.run_dir, jobs.get(p.name, [])) for p in points]


def submit(spec: SweepSpec, executor: str, log: Callable[[str], None], retry: bool = False,
           dry_run: bool = False) -> list[Point]:
    from ablate.sweep.executor import get_executor

    os.makedirs(spec.resolved_root, exist_ok=True)
    with open(os.path.join(spec.resolved_root, ".submit.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AblateError(f"{spec._path}: another `ablate sweep submit` of this sweep is running "
                              f"(lock {lock.name})") from None
        points = expand(spec, log, compile=False)
        current = states(spec, points, also=None if dry_run else executor)  # a dry run needs no scheduler
        todo, skipped = [], {}
        for p, s in zip(points, current):
            if s.state == "pending" or (retry and s.state in RETRYABLE):
                todo.append(p)
            else:
                key = s.state if s.state not in RETRYABLE else f"{s.state} (--retry resubmits)"
                skipped[key] = skipped.get(key, 0) + 1
        if skipped:
            log("skipped: " + ", ".join(f"{n} {state}" for state, n in skipped.items()))
        if not todo:
            log("nothing to submit")
            return []
        from ablate.sweep.precompile import precompile

        precompile(todo, log)
        get_executor(executor, spec).submit(todo, log, dry_run=dry_run)
        return todo


def status(spec: SweepSpec, executor: str | None = None) -> list[PointState]:
    return states(spec, build_points(spec), also=executor)


def cancel(spec: SweepSpec, log: Callable[[str], None]) -> int:
    from ablate.sweep.executor import get_executor

    points = build_points(spec)
    by_executor: dict[str, list[Point]] = {}
    for p in points:
        record = job_record(p.run_dir)
        if record and record.get("executor"):
            by_executor.setdefault(record["executor"], []).append(p)
    count = 0
    for name, group in sorted(by_executor.items()):
        ex = get_executor(name, spec)
        jobs = ex.jobs(group)
        ex.cancel(group, jobs, log)
        count += sum(1 for p in group if jobs.get(p.name))
    if not count:
        log("nothing to cancel")
    return count
