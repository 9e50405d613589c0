"""What runs a sweep's points: one interface, two executors (``local``, ``slurm``).

An executor knows three things about the points it is given: which of them have a job the
scheduler still holds (``jobs``), how to start the given ones (``submit``), and how to stop
their jobs (``cancel``). Which points to start is decided once, above it, from each point's
state (``ablate.sweep.state``): the same rules whatever runs them.

``submit`` returns one ``Outcome`` per point: what became of it. For Slurm that is
``submitted`` (the job runs later); the local executor runs the points in the foreground, so
its outcomes are final: ``completed``, ``failed`` (training or eval exited non-zero or was
killed by a signal; ``detail`` says which, ``log`` names the log file), ``stopped``
(checkpointed on request: ``sweep cancel``, Ctrl-C) or ``not started``. A dry run starts
nothing and writes nothing: its outcomes are ``rendered``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from ablate.io import utc_timestamp, write_json_atomic
from ablate.sweep.spec import SweepSpec
from ablate.sweep.state import Job, job_record, read_record


@dataclass
class Outcome:
    """What ``submit`` did with one point."""

    point: str
    state: str  # submitted | rendered | completed | failed | stopped | not started
    detail: str = ""
    log: Optional[str] = None

    @property
    def failed(self) -> bool:
        return self.state == "failed"


class Executor:
    name = ""

    def __init__(self, spec: SweepSpec):
        self.spec = spec

    def jobs(self, points: list) -> dict[str, list[Job]]:
        """Jobs the scheduler still holds, per point name (points without any may be absent)."""
        raise NotImplementedError

    def submit(
        self, points: list, log: Callable[[str], None], dry_run: bool = False
    ) -> list[Outcome]:
        """Start ``points`` (each expanded and compiled); record each job in its run directory.
        With ``dry_run``, say what would run (compiled or not) and write nothing."""
        raise NotImplementedError

    def cancel(self, points: list, jobs: dict[str, list[Job]], log: Callable[[str], None]) -> None:
        """Stop these points' jobs; mark their records cancelled."""
        raise NotImplementedError

    # ------------------------------------------------------------------ records

    def record_path(self, run_dir: str) -> str:
        return os.path.join(run_dir, f"{self.name}.json")

    def read_record(self, run_dir: str) -> dict:
        return read_record(self.record_path(run_dir), "job record") or {}

    def write_record(self, run_dir: str, **fields) -> dict:
        """A new submission: the previous job ids move to ``history``."""
        old = self.read_record(run_dir)
        history = old.get("history", [])
        if old.get("job_id"):
            history = history + [
                {
                    k: old.get(k)
                    for k in ("job_id", "eval_job_id", "submitted", "cancelled")
                    if old.get(k) is not None
                }
            ]
        body = {"executor": self.name, **fields, "submitted": utc_timestamp(), "history": history}
        write_json_atomic(self.record_path(run_dir), body)
        return body

    def update_record(self, run_dir: str, **fields) -> None:
        body = self.read_record(run_dir)
        if body:
            write_json_atomic(self.record_path(run_dir), {**body, **fields})


def mark_cancelled(run_dir: str) -> None:
    record = job_record(run_dir)
    if record:
        path = os.path.join(run_dir, f"{record['executor']}.json")
        write_json_atomic(path, {**record, "cancelled": True, "cancelled_at": utc_timestamp()})


def get_executor(name: str, spec: SweepSpec) -> Executor:
    if name == "slurm":
        from ablate.sweep.slurm import SlurmExecutor

        return SlurmExecutor(spec)
    from ablate.sweep.local import LocalExecutor

    return LocalExecutor(spec)
