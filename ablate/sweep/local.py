"""The local executor: the points one after another on this machine, in the foreground.

Each point trains in its own process group (``ablate train`` for one process, torchrun
``--standalone`` for more), output in ``RUN_DIR/train.log``, then, if the sweep asks for it,
``ablate eval RUN_DIR`` (``eval.log``). ``local.json`` records the process, so ``status`` can
tell a live point from a dead one and ``cancel`` (or Ctrl-C, or SIGTERM to this process) can
stop it: the trainer checkpoints on SIGTERM and the remaining points are not started.

Because the points run in the foreground, ``submit`` knows how each ended: ``completed`` only
when training (and eval, if asked) exited 0 and ``status.json`` says completed; ``stopped``
when the stop was asked for (this process got SIGTERM/SIGINT, or ``sweep cancel`` marked the
point); ``failed`` for anything else: a non-zero exit, a kill by a signal (the OOM killer's
SIGKILL), a status that is not completed. ``ablate sweep submit`` exits 1 when any point failed.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from typing import Callable

from ablate.errors import AblateError
from ablate.sweep.executor import Executor, Outcome, mark_cancelled
from ablate.sweep.slurm_script import eval_command
from ablate.sweep.state import Job, read_status


class LocalExecutor(Executor):
    name = "local"

    def train_command(self, point) -> list[str]:
        n = self.spec.local.nproc_per_node
        train = ["-m", "ablate.cli", "train", point.recipe_path, "--resume", "auto"]
        if n == 1:
            return [sys.executable, *train]
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={n}",
            *train,
        ]

    def jobs(self, points: list) -> dict[str, list[Job]]:
        out = {}
        for p in points:
            record = self.read_record(p.run_dir)
            if record.get("pid") and _alive(record["pid"], record.get("host"), p.recipe_path):
                out[p.name] = [Job(record["job_id"], "RUNNING")]
        return out

    def submit(
        self, points: list, log: Callable[[str], None], dry_run: bool = False
    ) -> list[Outcome]:
        if dry_run:
            for p in points:
                log(f"{p.name}: would run {shlex.join(self.train_command(p))}")
            return [Outcome(p.name, "rendered") for p in points]
        stop = {"signal": None, "child": None}

        def on_signal(signum, _frame):
            stop["signal"] = signum
            if stop["child"] is not None:  # the trainer checkpoints on SIGTERM and exits
                _signal_group(stop["child"].pid, signal.SIGTERM)

        main = (
            threading.current_thread() is threading.main_thread()
        )  # signal handlers live there only
        previous = (
            {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
            if main
            else {}
        )
        outcomes = []
        try:
            for i, p in enumerate(points):
                if stop["signal"] is not None:
                    log(f"{p.name}: not started (stopped)")
                    outcomes.append(Outcome(p.name, "not started", "the sweep was stopped"))
                    continue
                rc = self._run(p, self.train_command(p), "train.log", stop, log, record=True)
                log(f"{p.name}: training {exit_words(rc)} ({i + 1}/{len(points)})")
                outcome = self._training_outcome(p, rc, stop)
                if outcome.state == "completed" and self.spec.eval and stop["signal"] is None:
                    rc = self._run(
                        p,
                        [sys.executable, *eval_command(self.spec, p.run_dir)],
                        "eval.log",
                        stop,
                        log,
                    )
                    self.update_record(p.run_dir, eval_returncode=rc)
                    eval_log = os.path.join(p.run_dir, "eval.log")
                    log(f"{p.name}: eval {exit_words(rc)} (log: {eval_log})")
                    if rc != 0:
                        outcome = Outcome(
                            p.name,
                            "stopped" if self._asked_to_stop(p, stop) else "failed",
                            f"eval {exit_words(rc)}",
                            eval_log,
                        )
                outcomes.append(outcome)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return outcomes

    def _asked_to_stop(self, point, stop: dict) -> bool:
        """This runner got SIGTERM/SIGINT, or ``ablate sweep cancel`` marked the point."""
        if stop["signal"] is not None:
            return True
        try:
            return bool(self.read_record(point.run_dir).get("cancelled"))
        except AblateError:
            return False

    def _training_outcome(self, point, rc: int, stop: dict) -> Outcome:
        """Completed only when training exited 0 and its status says so; a stop that was asked
        for is ``stopped``; anything else failed."""
        log = os.path.join(point.run_dir, "train.log")
        asked = self._asked_to_stop(point, stop)
        if rc != 0:
            return Outcome(
                point.name, "stopped" if asked else "failed", f"training {exit_words(rc)}", log
            )
        try:
            status = read_status(point.run_dir)
        except AblateError as exc:
            return Outcome(point.name, "failed", f"training exited 0 but {exc}", log)
        state = status.get("state")
        if state == "completed":
            return Outcome(point.name, "completed", log=log)
        if state == "preempted" and asked:
            return Outcome(point.name, "stopped", f"checkpointed at step {status.get('step')}", log)
        return Outcome(
            point.name,
            "failed",
            f"training exited 0 with status {state or 'missing'}"
            + (
                " (stopped by a signal this sweep did not send; --retry resumes)"
                if state == "preempted"
                else ""
            ),
            log,
        )

    def _run(
        self, point, cmd: list[str], logname: str, stop: dict, log, record: bool = False
    ) -> int:
        path = os.path.join(point.run_dir, logname)
        with open(path, "a", encoding="utf-8") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        stop["child"] = proc
        if record:
            self.write_record(
                point.run_dir,
                job_id=f"local:{proc.pid}",
                pid=proc.pid,
                host=socket.gethostname(),
                runner_pid=os.getpid(),
                log=path,
                command=cmd,
            )
        log(f"{point.name}: running ({logname}: {path})")
        rc = proc.wait()
        stop["child"] = None
        if record:
            self.update_record(point.run_dir, returncode=rc)
        return rc

    def cancel(self, points: list, jobs: dict[str, list[Job]], log: Callable[[str], None]) -> None:
        for p in points:
            if not jobs.get(p.name):
                continue
            record = self.read_record(p.run_dir)
            mark_cancelled(p.run_dir)
            runner = record.get("runner_pid")
            if runner and runner != os.getpid() and _alive(runner, record.get("host"), "sweep"):
                os.kill(
                    runner, signal.SIGTERM
                )  # stops the loop; it passes SIGTERM on to the trainer
            _signal_group(record["pid"], signal.SIGTERM)
            log(f"{p.name}: sent SIGTERM to process {record['pid']} (it checkpoints and stops)")


def exit_words(rc: int) -> str:
    """``exited 2``, or ``killed by SIGKILL`` for a process a signal ended."""
    if rc >= 0:
        return f"exited {rc}"
    try:
        return f"killed by {signal.Signals(-rc).name}"
    except ValueError:
        return f"killed by signal {-rc}"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int, host: str | None, marker: str) -> bool:
    """``pid`` runs on this host and its command line mentions ``marker`` (not a reused pid)."""
    if host != socket.gethostname():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return False
    return marker in cmdline
