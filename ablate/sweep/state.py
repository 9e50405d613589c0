"""A point's state: its run directory's ``status.json`` plus what its scheduler says.

Training writes ``status.json`` (pending/running/completed/failed/preempted); an executor writes
its job record beside it (``slurm.json``, ``local.json``: job id, when, whether cancelled). The
two together give the point's state:

=============  ============================================================================
completed      training finished (status.json says so)
queued         a job is waiting in the scheduler (first submission or requeued)
running        a job is running
pending        never submitted (or submitted but nothing ran and no record remains)
failed         training failed, or its job ended before training started
preempted      checkpointed and stopped (signal) with no job left to resume it
interrupted    training was killed without a word (status says running, no job is left)
cancelled      stopped by ``ablate sweep cancel``
=============  ============================================================================

``ablate sweep submit`` submits pending points and, with ``--retry``, the failed, preempted,
interrupted and cancelled ones; never completed, queued or running ones.

Damaged state is refused, never guessed: both files are written atomically (a reader never sees
half of one), so a ``status.json`` or job record that is not a JSON object, or names a state
ablate never writes, is one line naming the file (a point read as ``pending`` would be run a
second time). Only ``metrics.jsonl``, appended while training runs, may end in a partial line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional

from ablate.errors import AblateError, show
from ablate.io import read_json
from ablate.run_layout import RunLayout, domain_of_tokens_key

RETRYABLE = ("failed", "preempted", "interrupted", "cancelled")
ACTIVE = ("queued", "running")
TRAINING_STATES = (
    "pending",
    "running",
    "completed",
    "failed",
    "preempted",
)  # what status.json holds
EXECUTORS = ("local", "slurm")


@dataclass
class Job:
    """A job the scheduler still knows: id, its state there, and what it runs."""

    id: str
    state: str  # the scheduler's word (PENDING, RUNNING, ...) or "RUNNING" for a live local process
    kind: str = "train"  # train | eval
    pending: bool = False


@dataclass
class PointState:
    name: str
    run_dir: str
    state: str
    executor: Optional[str] = None
    job_id: Optional[str] = None
    job_state: Optional[str] = None
    eval_job_id: Optional[str] = None
    step: Optional[int] = None
    total_steps: Optional[int] = None
    loss: Optional[float] = None
    tokens: dict = field(default_factory=dict)
    reason: Optional[str] = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def read_record(path: str, what: str) -> Optional[dict]:
    """A JSON object ablate wrote beside a run (``what`` names it), or None when there is none;
    a damaged one is one line naming the file."""
    if not os.path.lexists(path):
        return None
    body = read_json(path, what)
    if not isinstance(body, dict):
        raise AblateError(
            f"{path}: damaged {what}, expected a JSON object (got {type(body).__name__})"
        )
    return body


def read_status(run_dir: str) -> dict:
    """The run's ``status.json`` (``{}`` before training wrote one), its state checked."""
    path = RunLayout(run_dir).status
    status = read_record(path, "status file") or {}
    state = status.get("state")
    if state is not None and state not in TRAINING_STATES:
        raise AblateError(
            f"{path}: state: {show(state)} is not a training state "
            f"(allowed: {', '.join(TRAINING_STATES)})"
        )
    return status


def job_record(run_dir: str) -> Optional[dict]:
    """The newest executor record of the point (``slurm.json`` or ``local.json``)."""
    records = []
    for name in EXECUTORS:
        path = os.path.join(run_dir, f"{name}.json")
        record = read_record(path, "job record")
        if record is None:
            continue
        for key, kind in (("executor", str), ("submitted", str), ("job_id", str)):
            if key in record and not isinstance(record[key], kind):
                raise AblateError(
                    f"{path}: {key}: {show(record[key])} is not a {kind.__name__} "
                    "(damaged job record)"
                )
        if record.get("executor") not in (None, name):
            raise AblateError(
                f"{path}: executor: {show(record['executor'])} in the {name} record "
                "(damaged job record)"
            )
        records.append({**record, "executor": name})
    return max(records, key=lambda r: r.get("submitted", "")) if records else None


def last_metrics(run_dir: str) -> Optional[dict]:
    """The last complete line of ``metrics.jsonl`` (read from the end: files grow long)."""
    path = RunLayout(run_dir).metrics
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if isinstance(row, dict):
            return row
    return None


def point_state(name: str, run_dir: str, jobs: list[Job]) -> PointState:
    status = read_status(run_dir)
    record = job_record(run_dir) or {}
    trained = status.get("state")
    train_jobs = [j for j in jobs if j.kind == "train"]
    cancelled = bool(record.get("cancelled"))
    reason = status.get("exit_reason")
    if isinstance(reason, str) and reason.startswith("AblateError: "):  # training's own one line
        reason = reason[len("AblateError: ") :]
    if trained == "completed":
        state = "completed"
    elif train_jobs:
        state = "queued" if train_jobs[0].pending else "running"
    elif cancelled:
        state = "cancelled"
    elif trained in ("failed", "preempted"):
        state = trained
    elif trained == "running":
        state, reason = "interrupted", "status says running but no job is left (killed?)"
    elif record.get("job_id"):
        state = "failed"
        reason = f"job {record['job_id']} ended before training started" + (
            f" (see {record['log']})" if record.get("log") else ""
        )
    else:
        state = "pending"
    metrics = last_metrics(run_dir) or {}
    job = train_jobs[0] if train_jobs else None
    return PointState(
        name=name,
        run_dir=run_dir,
        state=state,
        executor=record.get("executor"),
        job_id=job.id if job else record.get("job_id"),
        job_state=job.state if job else None,
        eval_job_id=record.get("eval_job_id"),
        step=_int(metrics.get("step", status.get("step"))),
        total_steps=_int(status.get("total_steps")),
        loss=metrics["loss"] if isinstance(metrics.get("loss"), (int, float)) else None,
        tokens={domain_of_tokens_key(k): v for k, v in metrics.items() if domain_of_tokens_key(k)},
        reason=reason,
    )


def _int(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def status_table(states: list[PointState]) -> str:
    from ablate.recipe.budget import format_tokens

    domains = sorted({d for s in states for d in s.tokens})
    notes = any(s.reason and s.state in ("failed", "interrupted") for s in states)
    head = [
        "point",
        "state",
        "job",
        "step",
        "loss",
        *(f"tokens/{d}" for d in domains),
        *(["note"] if notes else []),
    ]
    rows = [head]
    for s in states:
        job = s.job_id or ""
        if s.job_state and s.job_state not in ("RUNNING",):
            job += f" ({s.job_state.lower()})"
        step = (
            ""
            if s.step is None
            else (f"{s.step}/{s.total_steps}" if s.total_steps else str(s.step))
        )
        loss = "" if s.loss is None else f"{s.loss:.4f}"
        note = (
            [(s.reason or "")[:80] if s.state in ("failed", "interrupted") else ""] if notes else []
        )
        rows.append(
            [
                s.name,
                s.state,
                job,
                step,
                loss,
                *(format_tokens(s.tokens[d]) if d in s.tokens else "" for d in domains),
                *note,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    left = {0, 1, 2, len(head) - 1} if notes else {0, 1, 2}
    lines = [
        "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(lines)
