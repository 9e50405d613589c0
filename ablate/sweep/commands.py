"""``ablate sweep expand|submit|status|cancel``: the sweep's verbs, on top of the pieces.

``expand``: points -> run directories with resolved recipes -> every blend pre-compiled.
``submit``: expand, then start the points whose state calls for it (pending; with ``retry``
also failed, preempted, interrupted and cancelled), never a completed, queued or running one.
``submit --dry-run`` does the checks of an expansion (every point's recipe, budgets and
dataset files; a started point whose recipe would change) and reads the points' states, then
says what it would start; it writes nothing at all: no recipe, no compiled blend, no cache
entry, no lock file.

Commands that write a sweep's files (``expand``, ``submit``) hold a lock in its root for as long
as they run (the local executor runs its points inside it): a second one of the same sweep is
refused in one line naming the holder, so two ``submit`` calls cannot both start a point.
``status`` and ``cancel`` take no lock: they must work while a local ``submit`` runs.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

from ablate.errors import AblateError
from ablate.io import exclusive_lock, os_errors
from ablate.sweep.executor import Outcome
from ablate.sweep.expand import (
    Point,
    build_points,
    plan_points,
    points_table,
    started,
    verify_points,
    write_points,
)
from ablate.sweep.spec import SweepSpec
from ablate.sweep.state import RETRYABLE, PointState, job_record, point_state, read_status

LOCK = ".submit.lock"  # in the sweep's root


@contextlib.contextmanager
def sweep_lock(spec: SweepSpec) -> Iterator[None]:
    """Hold the sweep's lock; refuse in one line when another ``expand``/``submit`` holds it."""
    with os_errors(spec.resolved_root):
        os.makedirs(spec.resolved_root, exist_ok=True)
    lock = os.path.join(spec.resolved_root, LOCK)
    with exclusive_lock(lock, f"{spec._path or spec.name}: sweep {spec.name} (lock {lock})"):
        yield


def expand(spec: SweepSpec, log: Callable[[str], None], compile: bool = True) -> list[Point]:
    """Write every point's recipe and ``sweep.json``; with ``compile``, compile the points that
    have not started. Everything is checked before the lock is taken and anything written."""
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
        with sweep_lock(spec):
            write_points(spec, points)
            if compile:
                from ablate.sweep.precompile import precompile

                precompile(todo, log)
    return points


def expand_table(spec: SweepSpec, points: list[Point]) -> str:
    return f"sweep {spec.name}: {len(points)} point(s) in {spec.resolved_root}\n" + points_table(
        points
    )


def states(spec: SweepSpec, points: list[Point], also: str | None = None) -> list[PointState]:
    """Each point's state; asks every executor that any point was submitted with (and ``also``)."""
    from ablate.sweep.executor import get_executor

    used = {
        r["executor"] for r in (job_record(p.run_dir) for p in points) if r and r.get("executor")
    }
    if also:
        used.add(also)
    jobs: dict[str, list] = {}
    for name in sorted(used):
        for point, js in get_executor(name, spec).jobs(points).items():
            jobs.setdefault(point, []).extend(js)
    return [point_state(p.name, p.run_dir, jobs.get(p.name, [])) for p in points]


def submit(
    spec: SweepSpec,
    executor: str,
    log: Callable[[str], None],
    retry: bool = False,
    dry_run: bool = False,
) -> list[Outcome]:
    """Start the points whose state calls for it; one ``Outcome`` per point started (or, with
    ``dry_run``, that would be)."""
    from ablate.sweep.executor import get_executor

    points = build_points(spec)
    plan_points(spec, points)  # and the datasets' files
    if dry_run:  # checks and reads only: no lock, no recipe, no compile
        _refuse_changed_started_points(spec, points)
        todo = _todo(points, states(spec, points), retry, log)  # a dry run asks no new scheduler
        return get_executor(executor, spec).submit(todo, log, dry_run=True) if todo else []
    for p in points:  # damaged state is refused before anything is written (read again, locked)
        read_status(p.run_dir), job_record(p.run_dir)
    with sweep_lock(spec):
        write_points(spec, points)
        todo = _todo(points, states(spec, points, also=executor), retry, log)
        if not todo:
            return []
        from ablate.sweep.precompile import precompile

        precompile(todo, log)
        return get_executor(executor, spec).submit(todo, log)


def _todo(points: list[Point], current: list[PointState], retry: bool, log) -> list[Point]:
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
    return todo


def _refuse_changed_started_points(spec: SweepSpec, points: list[Point]) -> None:
    """What ``write_points`` refuses, checked without writing (for a dry run)."""
    for p in points:
        if os.path.isfile(p.recipe_path) and started(p.run_dir):
            with open(p.recipe_path, encoding="utf-8") as f:
                if f.read() != p.text:
                    raise AblateError(
                        f"{spec._path or spec.name}: point {p.name}: {p.run_dir} holds a started "
                        "run "
                        "of a different recipe; give the sweep another root (or name), or remove "
                        "that run directory"
                    )


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
