"""How a sandboxed run ended: ``SandboxResult`` and the rules that name its status.

Contract: ``classify`` turns what the evaluator read from a run (stdout, stderr, the program's
control pipe, the supervisor's exit report) and why it may have ended the run itself into one
``SandboxResult``; the statuses and their order of precedence are documented on the class. The
launcher's exit codes ``EXIT_MEMORY``/``EXIT_LAUNCH`` come from ``launcher.py`` (one source).
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field

from ablate.evals.sandbox.isolation import Plan
from ablate.evals.sandbox.launcher import EXIT_LAUNCH, EXIT_MEMORY


@dataclass
class SandboxResult:
    """How one sandboxed run ended.

    ``status``: ``ok`` (exit 0 within every limit; for ``run_function`` also a returned value),
    ``error`` (an exception or a non-zero exit), ``blocked`` (a non-zero exit after the audit hook
    refused an operation), ``timeout`` (wall clock), ``cpu`` (CPU time), ``memory`` (address space:
    a ``MemoryError``), ``output`` (more than ``max_output`` bytes on stdout or stderr), ``procs``
    (more than ``max_procs`` processes, seen by the watchdog), ``crash`` (killed by a signal such
    as SIGSEGV, or the launcher failed), ``killed`` (SIGKILL from outside the sandbox, e.g. the
    kernel's OOM killer).

    ``stdout``/``stderr``: at most ``max_output`` bytes each, decoded as UTF-8 (invalid bytes
    replaced); ``returncode``: the program's exit status (negative: the signal), None when it was
    killed for a limit; ``value``: what ``func()`` returned (``run_function``); ``detail``: one line
    on why it failed; ``cpu_s``: CPU seconds of the program and the children it waited for;
    ``blocked``: the operations the audit hook refused, in order; ``isolation``: the layers used;
    ``run_id``: the run's ``ABLATE_SANDBOX_RUN`` marker; ``truncated``: output beyond
    ``max_output`` was discarded (``overflow="discard"``).
    """

    ok: bool
    status: str
    stdout: str
    stderr: str
    returncode: int | None
    wall_s: float
    value: object | None = None
    detail: str = ""
    cpu_s: float | None = None
    blocked: tuple[str, ...] = ()
    isolation: tuple[str, ...] = field(default_factory=tuple)
    run_id: str = ""
    truncated: bool = False


def _json_lines(data: bytes):
    for line in data.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict):
            yield msg


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def classify(
    plan: Plan,
    func,
    out: bytes,
    err: bytes,
    ctl: bytes,
    status: bytes,
    launcher_rc,
    reason,
    wall,
    limits,
    timeout_s,
    max_output,
) -> SandboxResult:
    """The ``SandboxResult`` of a run from what its pipes held: the program's reports (``ctl``),
    the supervisor's exit report (``status``), the launcher's exit status and the evaluator's own
    reason to have ended it (``timeout``, ``output``, ``procs``, ``truncated`` or None)."""
    blocked: list[str] = []
    value, have_value = None, False
    for msg in _json_lines(ctl):
        if "blocked" in msg:
            if len(blocked) < 100:
                blocked.append(str(msg["blocked"]))
        elif "value" in msg:
            value, have_value = msg["value"], True
        elif "repr" in msg:
            value, have_value = msg["repr"], True
    report = None
    for msg in _json_lines(status):
        if "rc" in msg:
            report = msg
    rc = report.get("rc") if report else None
    cpu = report.get("cpu") if report else None
    stdout, stderr = _decode(out), _decode(err)
    if reason == "timeout" or (report and report.get("supervisor_kill") == "timeout"):
        kind, detail = "timeout", f"wall-clock limit of {timeout_s:g} s exceeded"
    elif reason == "output":
        kind, detail = "output", f"more than {max_output} bytes of output"
    elif reason == "procs":
        kind, detail = "procs", f"more than {limits['procs']} processes"
    elif report is None or not isinstance(rc, int):
        kind = "crash"
        detail = f"the sandbox ended without a report (launcher exit status {launcher_rc})"
    elif rc == 0:
        if func is not None and not have_value:
            kind, detail = "error", f"the program exited before {func}() returned"
        else:
            kind, detail = "ok", ""
    elif rc == EXIT_MEMORY or (rc == -signal.SIGABRT and "MemoryError" in stderr):
        kind, detail = "memory", f"memory limit of {limits['as'] >> 20} MiB exceeded"
    elif rc == -signal.SIGXCPU or (
        rc == -signal.SIGKILL and cpu is not None and cpu >= limits["cpu"] - 0.05
    ):
        kind, detail = "cpu", f"CPU-time limit of {limits['cpu']} s exceeded"
    elif rc == -signal.SIGKILL:
        kind, detail = "killed", "killed by SIGKILL from outside the sandbox"
    elif rc < 0:
        kind, detail = "crash", f"killed by {_signal_name(-rc)}"
    elif rc == EXIT_LAUNCH:
        kind, detail = "crash", "the sandbox launcher failed (see stderr)"
    elif blocked:
        kind, detail = "blocked", "blocked: " + ", ".join(dict.fromkeys(blocked))
    else:
        kind, detail = "error", f"exit status {rc}"
    return SandboxResult(
        ok=kind == "ok",
        status=kind,
        stdout=stdout,
        stderr=stderr,
        returncode=rc,
        wall_s=wall,
        value=value if have_value else None,
        detail=detail,
        cpu_s=cpu,
        blocked=tuple(blocked),
        isolation=plan.isolation,
    )
