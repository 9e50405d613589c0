"""Verdicts on generated code: did the tests run to the end and pass, and if not, why.

A program's exit status is no proof that its tests ran: ``import sys; sys.exit(0)`` (or
``raise SystemExit``, ``os._exit(0)``) before or inside the tests exits 0 with nothing checked.
So every code task (HumanEval, MBPP) runs its candidate through ``check_programs``: the sandbox
runs a small driver that ``exec``s the candidate and then the tests, inside a function, and only
when the last test has passed does that function return a fresh per-run nonce, which comes back
over the sandbox's value channel (not stdout). A run passes only if that exact nonce came back.
Anything else is a failure with a reason:

============== ============================================================================
``passed``     the tests ran to the end and the driver returned this run's nonce
``assertion``  an ``assert`` failed (``AssertionError``)
``exception``  another exception; ``exception`` names its type (``SyntaxError``, ``NameError``...)
``no-proof``   the process exited (status 0 or otherwise) before the tests finished: ``sys.exit``,
               ``SystemExit``, ``os._exit``, a value that is not the nonce
``timeout``    the wall-clock or CPU-time limit
``memory``     the address-space limit (``MemoryError``)
``killed``     killed by a signal or a limit of the sandbox (``SIGKILL``, ``SIGSEGV``, too many
               processes)
``blocked``    the sandbox refused an operation (process creation, network, writes outside) and
               the program failed because of it
============== ============================================================================

What the program prints is not scored: stdout and stderr beyond ``max_output`` bytes are
discarded (the sandbox's ``overflow="discard"``), so a correct solution that prints a lot still
passes. An infinite print loop ends at the time limit like any other infinite loop.

The nonce defeats early exits, not a program written to forge it (one that walks up to the
driver's frame to read it and writes it to the value channel itself): that needs intent, not
a model's mistake, and the sandbox's limits still hold.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass

from ablate.evals.sandbox import SandboxResult, run_many

REASONS = ("passed", "assertion", "exception", "no-proof", "timeout", "memory", "killed", "blocked")

_DRIVER = """\
_ABLATE_CANDIDATE = {candidate!r}
_ABLATE_TESTS = {tests!r}


def _ablate_verdict():
    namespace = {{"__name__": "__main__", "__builtins__": __builtins__}}
    try:
        exec(compile(_ABLATE_CANDIDATE, "candidate.py", "exec"), namespace)
        exec(compile(_ABLATE_TESTS, "tests.py", "exec"), namespace)
    except MemoryError:
        raise
    except AssertionError as e:
        return ["assertion", "AssertionError", str(e)[:200]]
    except Exception as e:
        return ["exception", type(e).__name__, str(e)[:200]]
    return ["passed", {nonce!r}]
"""


@dataclass
class Verdict:
    passed: bool
    reason: str  # one of REASONS
    exception: str | None = None  # the exception type for "assertion" / "exception"
    detail: str = ""  # one line: the exception message or the sandbox's reason
    wall_s: float = 0.0
    truncated: bool = False  # output beyond the limit was discarded

    def to_dict(self) -> dict:
        return asdict(self)


def driver_program(candidate: str, tests: str, nonce: str) -> str:
    """The sandboxed source: the candidate and the tests as strings, run by ``_ablate_verdict``."""
    return _DRIVER.format(candidate=candidate, tests=tests, nonce=nonce)


def verdict_of(result: SandboxResult, nonce: str) -> Verdict:
    """Read one sandbox run of ``driver_program`` as a verdict."""
    common = {"wall_s": round(result.wall_s, 4), "truncated": result.truncated}
    status = result.status
    if status == "ok":
        value = result.value
        if isinstance(value, list) and len(value) == 2 and value == ["passed", nonce]:
            return Verdict(True, "passed", **common)
        if isinstance(value, list) and len(value) == 3 and value[0] in ("assertion", "exception"):
            if value[0] == "exception" and result.blocked:
                return Verdict(
                    False,
                    "blocked",
                    exception=str(value[1]),
                    detail="blocked: " + ", ".join(dict.fromkeys(result.blocked)),
                    **common,
                )
            return Verdict(
                False, str(value[0]), exception=str(value[1]), detail=str(value[2]), **common
            )
        return Verdict(
            False,
            "no-proof",
            detail="the program returned something other than this run's nonce",
            **common,
        )
    if status in ("timeout", "cpu"):
        return Verdict(False, "timeout", detail=result.detail, **common)
    if status == "memory":
        return Verdict(False, "memory", detail=result.detail, **common)
    if status == "blocked":
        return Verdict(False, "blocked", detail=result.detail, **common)
    if status in ("killed", "crash", "procs", "output"):
        return Verdict(False, "killed", detail=f"{status}: {result.detail}", **common)
    # "error": the process ended without the driver returning. Exit status 0 is the hostile case
    # (sys.exit(0), raise SystemExit, os._exit(0)); a non-zero status is an exit too.
    rc = result.returncode
    why = (
        "exited with status 0 before the tests finished"
        if rc == 0
        else f"exited with status {rc} before the tests finished"
    )
    if result.blocked:
        return Verdict(
            False,
            "blocked",
            detail="blocked: " + ", ".join(dict.fromkeys(result.blocked)),
            **common,
        )
    return Verdict(False, "no-proof", detail=why, **common)


def check_programs(
    cases: list[tuple[str, str]],
    *,
    workers: int = 2,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_output: int = 64_000,
) -> list[Verdict]:
    """Run each ``(candidate, tests)`` pair in the sandbox; a verdict per pair, in order.

    ``candidate`` is the program under test (prompt + completion), ``tests`` the code that checks
    it (asserts, or ``check(fn)``); both run as ``__main__`` in one namespace.
    """
    nonces = [secrets.token_hex(16) for _ in cases]
    sources = [driver_program(c, t, n) for (c, t), n in zip(cases, nonces)]
    results = run_many(
        sources,
        workers=workers,
        func="_ablate_verdict",
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        max_output=max_output,
        overflow="discard",
    )
    return [verdict_of(r, n) for r, n in zip(results, nonces)]


def reason_counts(verdicts: list[Verdict]) -> dict[str, int]:
    counts = {r: 0 for r in REASONS}
    for v in verdicts:
        counts[v.reason] = counts.get(v.reason, 0) + 1
    return {r: n for r, n in counts.items() if n}
