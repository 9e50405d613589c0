"""The Slurm executor: plain ``sbatch`` of one rendered script per point.

Plain ``sbatch`` rather than submitit: a point is a multi-node torchrun launch, which is a
shell pipeline (srun -> torchrun per node) rather than a pickled Python callable; preemption is
already the trainer's own (checkpoint on USR1, ``--resume auto``), which submitit's own USR1
handling and requeue-by-pickle would duplicate; and a rendered script can be read, diffed, run
by hand and checked with ``sbatch --test-only``. One job per point (not an array), so every
point has its own job id, state, retry and eval dependency.

Job state comes from ``squeue`` by job name (``<point>.<hash of run dir>``): one call for the
whole sweep, and it also finds a job whose id never made it into ``slurm.json``.

``--dry-run`` prints each script (after a ``#### sbatch script <path> (not written)`` line)
instead of writing it: a dry run leaves the working directory as it was.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from typing import Callable

from ablate.errors import AblateError
from ablate.sweep.executor import Executor, Outcome, mark_cancelled
from ablate.sweep.slurm_script import eval_script, job_name, train_script
from ablate.sweep.state import Job

RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING")
# a dry run prints each script after a line "<mark> <path it would have> (not written)"
DRY_RUN_MARK = "#### sbatch script"
ENDED_STATES = (
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
    "SPECIAL_EXIT",
    "REVOKED",
)


# a busy controller answers queries with these now and then; asking again a moment later works
_TRANSIENT = ("socket", "timed out", "unable to contact slurm controller", "try again")


def slurm(*args: str, timeout: float = 120, attempts: int | None = None) -> str:
    """Run a Slurm command; any failure is one line naming the command and what it said.

    Queries (squeue, sinfo, sacct) are retried on transient controller errors; commands that
    change state (sbatch, scancel, scontrol) run once, so a job is never submitted twice."""
    if shutil.which(args[0]) is None:
        raise AblateError(
            f"slurm: {args[0]} not found on PATH (is this a Slurm login node? "
            "run the sweep with --executor local otherwise)"
        )
    attempts = attempts or (4 if args[0] in ("squeue", "sinfo", "sacct") else 1)
    for attempt in range(attempts):
        try:
            r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AblateError(
                f"slurm: `{shlex.join(args)}` did not answer in {timeout:g} s"
            ) from None
        said_lower = (r.stderr + r.stdout).lower()
        if (
            r.returncode == 0
            or attempt == attempts - 1
            or not any(t in said_lower for t in _TRANSIENT)
        ):
            break
        time.sleep(2**attempt)
    if r.returncode != 0:
        said = " | ".join(
            line.strip() for line in (r.stderr + r.stdout).splitlines() if line.strip()
        )
        raise AblateError(
            f"slurm: `{shlex.join(args)}` failed (exit {r.returncode}): {said[:800] or 'no output'}"
        )
    return r.stdout


class SlurmExecutor(Executor):
    name = "slurm"

    def jobs(self, points: list) -> dict[str, list[Job]]:
        names = {}
        for p in points:
            names[job_name(p.run_dir, p.name)] = (p.name, "train")
            names[job_name(p.run_dir, p.name) + ".eval"] = (p.name, "eval")
        if not names:
            return {}
        out: dict[str, list[Job]] = {}
        text = slurm("squeue", "--noheader", "--format=%i|%T|%j", f"--name={','.join(names)}")
        for line in text.splitlines():
            parts = line.strip().split("|", 2)
            if len(parts) != 3 or parts[2] not in names or parts[1] in ENDED_STATES:
                continue
            point, kind = names[parts[2]]
            out.setdefault(point, []).append(
                Job(parts[0], parts[1], kind, pending=parts[1] not in RUNNING_STATES)
            )
        return out

    def submit(
        self, points: list, log: Callable[[str], None], dry_run: bool = False
    ) -> list[Outcome]:
        cwd = os.getcwd()
        outcomes = []
        for p in points:
            folder = os.path.join(p.run_dir, "slurm")
            scripts = [
                (
                    os.path.join(folder, "train.sbatch"),
                    train_script(self.spec, p.run_dir, p.name, cwd),
                )
            ]
            if self.spec.eval:
                scripts.append(
                    (
                        os.path.join(folder, "eval.sbatch"),
                        eval_script(self.spec, p.run_dir, p.name, cwd),
                    )
                )
            if dry_run:  # the scripts go to stdout: a dry run writes nothing
                for path, text in scripts:
                    log(f"{DRY_RUN_MARK} {path} (not written)\n{text.rstrip()}")
                outcomes.append(Outcome(p.name, "rendered"))
                continue
            os.makedirs(folder, exist_ok=True)
            for path, text in scripts:
                _write(path, text)
            script = scripts[0][0]
            eval_path = scripts[1][0] if len(scripts) > 1 else None
            job_id = slurm("sbatch", "--parsable", script).strip().split(";")[0]
            # the id is on record before anything else can fail
            self.write_record(
                p.run_dir,
                job_id=job_id,
                job_name=job_name(p.run_dir, p.name),
                script=script,
                log=os.path.join(folder, f"train-{job_id}.out"),
            )
            msg = f"{p.name}: submitted job {job_id}"
            if eval_path:
                eval_id = (
                    slurm(
                        "sbatch",
                        "--parsable",
                        f"--dependency=afterok:{job_id}",
                        "--kill-on-invalid-dep=yes",
                        eval_path,
                    )
                    .strip()
                    .split(";")[0]
                )
                self.update_record(p.run_dir, eval_job_id=eval_id, eval_script=eval_path)
                msg += f", eval job {eval_id} after it"
            log(msg)
            outcomes.append(Outcome(p.name, "submitted", f"job {job_id}"))
        return outcomes

    def cancel(self, points: list, jobs: dict[str, list[Job]], log: Callable[[str], None]) -> None:
        ids = [j.id for p in points for j in jobs.get(p.name, [])]
        if ids:
            slurm("scancel", *ids)
        for p in points:
            if jobs.get(p.name):
                mark_cancelled(p.run_dir)
                log(f"{p.name}: cancelled job(s) {', '.join(j.id for j in jobs[p.name])}")


def _write(path: str, text: str) -> None:
    from ablate.io import write_text_atomic

    write_text_atomic(path, text)
    os.chmod(path, 0o755)
