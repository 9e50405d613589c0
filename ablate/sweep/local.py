"""The local executor: the points one after another on this machine, in the foreground.

Each point trains in its own process group (``ablate train`` for one process, torchrun
``--standalone`` for more), output in ``RUN_DIR/train.log``, then, if the sweep asks for it,
``ablate eval RUN_DIR`` (``eval.log``). ``local.json`` records the process, so ``status`` can
tell a live point from a dead one and ``cancel`` (or Ctrl-C, or SIGTERM to this process) can
stop it: the trainer checkpoints on SIGTERM and the remaining points are not started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Callable

from ablate.run_layout import RunLayout
from ablate.sweep.executor import Executor, mark_cancelled
from ablate.sweep.slurm_script import eval_command
from ablate.sweep.state import Job, read_json


class LocalExecutor(Executor):
    name = "local"

    def train_command(self, point) -> list[str]:
        n = self.spec.local.nproc_per_node
        train = ["-m", "ablate.cli", "train", point.recipe_path, "--resume", "auto"]
        if n == 1:
            return [sys.executable, *train]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *train]

    def jobs(self, points: list) -> dict[str, list[Job]]:
        out = {}
        for p in points:
            record = read_json(self.record_path(p.run_dir)) or {}
            if record.get("pid") and _alive(record["pid"], record.get("host"), p.recipe_path):
                out[p.name] = [Job(record["job_id"], "RUNNING")]
        return out

    def submit(self, points: list, log: Callable[[str], None], dry_run: bool = False) -> None:
        stop = {"signal": None, "child": None}

        def on_signal(signum, _frame):
            stop["signal"] = signum
            if stop["child"] is not None:  # the trainer checkpoints on SIGTERM and exits
                _signal_group(stop["child"].pid, signal.SIGTERM)

        main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
        try:
            for i, p in enumerate(points):
                if stop["signal"] is not None:
                    log(f"{p.name}: not started (stopped)")
                    continue
                cmd = self.train_command(p)
                if dry_run:
                    log(f"{p.name}: would run {' '.join(cmd)}")
                    continue
                rc = self._run(p, cmd, "train.log", stop, log, record=True)
                log(f"{p.name}: training exited {rc} ({i + 1}/{len(points)})")
                if rc == 0 and self.spec.eval and stop["signal"] is None and _completed(p.run_dir):
                    rc = self._run(p, [sys.executable, *eval_command(self.spec, p.run_dir)], "eval.log", stop, log)
                    self.update_record(p.run_dir, eval_returncode=rc)
                    log(f"{p.name}: eval exited {rc} (log: {os.path.join(p.run_dir, 'eval.log')})")
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _run(self, point, cmd: list[str], logname: str, stop: dict, log, record: bool = False) -> int:
        path = os.path.join(point.run_dir, logname)
        with open(path, "a", encoding="utf-8") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        stop["child"] = proc
        if record:
            self.write_record(point.run_dir, job_id=f"local:{proc.pid}", pid=proc.pid, host=socket.gethostname(),
                              runner_pid=os.getpid(), log=path, command=cmd)
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
            record = read_json(self.record_path(p.run_dir)) or {}
            mark_cancelled(p.run_dir)
            runner = record.get("runner_pid")
            if runner and runner != os.getpid() and _alive(runner, record.get("host"), "sweep"):
                os.kill(runner, signal.SIGTERM)  # stops the loop; it passes SIGTERM on to the trainer
            _signal_group(record["pid"], signal.SIGTERM)
            log(f"{p.name}: sent SIGTERM to process {record['pid']} (it checkpoints and stops)")


def _completed(run_dir: str) -> bool:
    return (read_json(RunLayout(run_dir).status) or {}).get("state") == "completed"


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
