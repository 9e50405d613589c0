"""What runs a sweep's points: one interface, two executors (``local``, ``slurm``).

An executor knows three things about the points it is given: which of them have a job the
scheduler still holds (``jobs``), how to start the given ones (``submit``), and how to stop
their jobs (``cancel``). Which points to start is decided once, above it, from each point's
state (``ablate.sweep.state``): the same rules whatever runs them.
"""

from __future__ import annotations

import time
from typing import Callable

from ablate.io import write_json_atomic
from ablate.sweep.spec import SweepSpec
from ablate.sweep.state import Job, job_record, read_json


class Executor:
    name = ""

    def __init__(self, spec: SweepSpec):
        self.spec = spec

    def jobs(self, points: list) -> dict[str, list[Job]]:
        """Jobs the scheduler still holds, per point name (points without any may be absent)."""
        raise NotImplementedError

    def submit(self, points: list, log: Callable[[str], None], dry_run: bool = False) -> None:
        """Start ``points`` (each expanded and compiled); record each job in its run directory."""
        raise NotImplementedError

    def cancel(self, points: list, jobs: dict[str, list[Job]], log: Callable[[str], None]) -> None:
        """Stop these points' jobs; mark their records cancelled."""
        raise NotImplementedError

    # ------------------------------------------------------------------ records

    def record_path(self, run_dir: str) -> str:
        import os

        return os.path.join(run_dir, f"{self.name}.json")

    def write_record(self, run_dir: str, **fields) -> dict:
        """A new submission: the previous job ids move to ``history``."""
        path = self.record_path(run_dir)
        old = read_json(path) or {}
        history = old.get("history", [])
        if old.get("job_id"):
            history = history + [{k: old.get(k) for k in ("job_id", "eval_job_id", "submitted", "cancelled")
                                  if old.get(k) is not None}]
        body = {"executor": self.name, **fields, "submitted": now(), "history": history}
        write_json_atomic(path, body)
        return body

    def update_record(self, run_dir: str, **fields) -> None:
        path = self.record_path(run_dir)
        body = read_json(path)
        if body is not None:
            write_json_atomic(path, {**body, **fields})


def mark_cancelled(run_dir: str) -> None:
    import os

    record = job_record(run_dir)
    if record:
        path = os.path.join(run_dir, f"{record['executor']}.json")
        write_json_atomic(path, {**record, "cancelled": True, "cancelled_at": now()})


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def get_executor(name: str, spec: SweepSpec) -> Executor:
    if name == "slurm":
        from ablate.sweep.slurm import SlurmExecutor

        return SlurmExecutor(spec)
    from ablate.sweep.local import LocalExecutor

    return LocalExecutor(spec)
