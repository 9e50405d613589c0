"""The sandbox for generated code: normal programs work, hostile ones are contained and reported.

Every hostile program runs in up to three modes: ``full`` (every layer this machine allows),
``hook-only`` (no namespaces, no change of user: the audit hook and the resource limits) and
``kernel-only`` (no audit hook: namespaces, ``nobody``, resource limits). After each run no process
of it may be alive; at the end the canary beside the sandboxes is intact, nothing was left in
their root, and the hostile runs took bounded time.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import tempfile
import textwrap
import time

import pytest

from ablate.errors import AblateError
from ablate.evals.sandbox import run_function, run_many, run_program, sandbox_isolation

ROOT = os.geteuid() == 0
MODES = {
    "full": {},
    "hook-only": {"namespaces": False, "drop_privileges": False if ROOT else None},
    "kernel-only": {"audit": False},
}
AUDITED = ["full", "hook-only"]
ISOLATION = {name: sandbox_isolation(**kw) for name, kw in MODES.items()}

_RUN_IDS: list[str] = []
_HOSTILE_WALL: list[float] = []


@pytest.fixture(scope="module")
def box():
    """The sandboxes' temporary root (traversable, like /tmp) with a canary file in it. Made in
    /tmp itself: the session's own temp dir sits below pytest's 0700 base, which the sandbox's
    unprivileged uid could not pass through."""
    root = tempfile.mkdtemp(
        prefix="ablate-sandbox-test-", dir="/tmp" if os.path.isdir("/tmp") else None
    )
    os.chmod(root, 0o755)
    canary = os.path.join(root, "canary.txt")
    content = secrets.token_hex(16)
    with open(canary, "w") as f:
        f.write(content)
    os.chmod(canary, 0o644)
    yield {"root": root, "canary": canary, "content": content}
    shutil.rmtree(root, ignore_errors=True)


def _live(run_id: str) -> list[int]:
    """Processes (not zombies) whose environment carries this run's marker."""
    marker = f"ABLATE_SANDBOX_RUN={run_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if state != b"Z" and marker in env:
            found.append(int(name))
    return found


def kernel_layers(mode: str) -> None:
    """Skip a kernel-only containment check where the kernel isolates nothing from the user."""
    iso = set(ISOLATION[mode])
    if mode == "kernel-only" and not (
        {"pidns", "mountns-ro"} & iso or any(x.startswith("uid:") for x in iso)
    ):
        pytest.skip(
            "no namespaces and no other uid here (a user without user namespaces): "
            "only the audit hook protects the user's files, processes and environment"
        )


def run(box, source, mode="full", hostile=True, func=None, **kw):
    # generous by default: a loaded CI machine can take seconds to start an interpreter; tests
    # about time limits pass their own
    kw = {"timeout_s": 15.0, **MODES[mode], **kw, "tmp_root": box["root"]}
    source = textwrap.dedent(source)
    r = run_program(source, **kw) if func is None else run_function(source, func, **kw)
    _RUN_IDS.append(r.run_id)
    if hostile:
        _HOSTILE_WALL.append(r.wall_s)
    assert r.wall_s < kw["timeout_s"] + 3.0, r
    assert not _live(r.run_id), f"processes of run {r.run_id} survived it"
    assert sorted(os.listdir(box["root"])) == ["canary.txt"], "the run's directory was not removed"
    with open(box["canary"]) as f:
        assert f.read() == box["content"]
    return r


def test_isolation_layers_reported():
    assert "audit-hook" in ISOLATION["full"] and "audit-hook" not in ISOLATION["kernel-only"]
    assert not {"netns", "pidns", "userns"} & set(ISOLATION["hook-only"])
    if ROOT:
        # as root the default drops to nobody: RLIMIT_NPROC binds without a watchdog
        assert any(layer.startswith("uid:") for layer in ISOLATION["full"])
        assert "proc-watchdog" in ISOLATION["hook-only"]


# --- normal programs


@pytest.mark.parametrize("mode", MODES)
def test_print_exit_status_and_stdin(box, mode):
    r = run(
        box,
        "import sys\nprint('h\u00e9llo', sys.stdin.read().upper())\n",
        mode,
        hostile=False,
        stdin="abc",
    )
    assert (r.ok, r.status, r.returncode, r.stdout, r.stderr) == (
        True,
        "ok",
        0,
        "h\u00e9llo ABC\n",
        "",
    )
    r = run(
        box,
        "import sys\nprint('out'); print('err', file=sys.stderr); sys.exit(3)",
        mode,
        hostile=False,
    )
    assert (r.ok, r.status, r.returncode, r.stdout, r.stderr) == (
        False,
        "error",
        3,
        "out\n",
        "err\n",
    )
    r = run(box, "x = 1 +", mode, hostile=False)
    assert r.status == "error" and "SyntaxError" in r.stderr


@pytest.mark.parametrize("mode", MODES)
def test_stdlib_and_files_inside_the_working_directory(box, mode):
    r = run(
        box,
        """
        import calendar, collections, datetime, decimal, encodings.idna, fractions, hashlib, heapq
        import itertools, json, math, os, re, statistics, tempfile
        with open("data.txt", "w") as f:
            f.write("12,30")
        os.mkdir("sub")
        os.rename("data.txt", "sub/data.txt")
        with tempfile.NamedTemporaryFile(dir=".") as t:
            t.write(b"x")
        numbers = [int(x) for x in open("sub/data.txt").read().split(",")]
        print(statistics.mean(numbers), fractions.Fraction(3, 4), hashlib.md5(b"a").hexdigest()[:6],
              calendar.isleap(2024), sorted(os.listdir(".")), os.environ["HOME"] == os.getcwd())
        """,
        mode,
        hostile=False,
    )
    assert r.ok, r
    assert r.stdout == "21 3/4 0cc175 True ['sub'] True\n"


def test_run_function_values(box):
    cases = [
        ("return 18", 18),
        ("return 18.5", 18.5),
        ("return (1, [2, 3])", [1, [2, 3]]),
        ("return {'a': None}", {"a": None}),
        ("return 'text'", "text"),
        ("return None", None),
        ("from fractions import Fraction\n    return Fraction(3, 4)", 0.75),
        ("from decimal import Decimal\n    return Decimal('2.5')", 2.5),
        ("return {1, 2}", "{1, 2}"),
        ("return 10 ** 30", 10**30),
    ]
    for body, value in cases:
        r = run(
            box,
            f"import math\ndef solution():\n    {body}\nprint('side output')",
            func="solution",
            hostile=False,
        )
        assert (r.ok, r.value, r.stdout) == (True, value, "side output\n"), (body, r)


def test_run_function_failures(box):
    r = run(box, "def other():\n    return 1", func="solution", hostile=False)
    assert r.status == "error" and "solution" in r.stderr and r.value is None
    r = run(box, "def solution():\n    return 1 / 0", func="solution", hostile=False)
    assert r.status == "error" and "ZeroDivisionError" in r.stderr and r.value is None
    r = run(
        box,
        "import sys\ndef solution():\n    return 1\nsys.exit(0)",
        func="solution",
        hostile=False,
    )
    assert r.status == "error" and "exited before solution()" in r.detail
    r = run(box, "def answer():\n    return 7", func="answer", hostile=False)
    assert r.ok and r.value == 7


def test_run_many_keeps_order_and_runs_in_parallel(box):
    sources = [f"import time\ntime.sleep(1.0)\nprint({i})" for i in range(4)]
    start = time.monotonic()
    results = run_many(sources, workers=4, tmp_root=box["root"])
    elapsed = time.monotonic() - start
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)]
    assert all(r.ok for r in results)
    assert elapsed < 3.0, f"4 x 1 s sleeps took {elapsed:.1f} s with 4 workers: not parallel"
    values = run_many(
        [f"def solution():\n    return {i} * 2" for i in range(6)],
        workers=3,
        func="solution",
        tmp_root=box["root"],
    )
    assert [r.value for r in values] == [0, 2, 4, 6, 8, 10]
    assert run_many([]) == []
    for r in results + values:
        assert not _live(r.run_id)


def test_invalid_limits_are_user_errors():
    with pytest.raises(AblateError, match="positive"):
        run_program("pass", timeout_s=0)
    with pytest.raises(AblateError, match="positive"):
        run_program("pass", memory_mb=-1)
    if not ROOT:
        with pytest.raises(AblateError, match="root"):
            run_program("pass", drop_privileges=True)


# --- hostile programs


@pytest.mark.parametrize("mode", MODES)
def test_infinite_loop_is_stopped_at_the_wall_clock_limit(box, mode):
    r = run(box, "while True:\n    pass", mode, timeout_s=1.0)
    assert (r.ok, r.status) == (False, "timeout")
    assert 1.0 <= r.wall_s < 2.5


def test_sleeping_program_is_stopped_at_the_wall_clock_limit(box):
    r = run(box, "import time\ntime.sleep(1000)", timeout_s=1.0)
    assert (r.ok, r.status) == (False, "timeout")


def test_cpu_time_limit(box):
    r = run(box, "x = 0\nwhile True:\n    x += 1", cpu_s=1, timeout_s=30)
    assert (r.ok, r.status) == (False, "cpu"), r
    assert r.wall_s >= 1.0


BOUNDED_BOMB = """
    import os, sys, time
    made = 0
    for _ in range(60):
        try:
            pid = os.fork()
        except OSError as e:
            print("refused after", made, type(e).__name__, flush=True)
            break
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        made += 1
        print(made, flush=True)
        time.sleep(0.01)
    else:
        sys.exit(0)
    sys.exit(1)  # the sleeping children are orphans now: the sandbox must kill them
"""


@pytest.mark.parametrize("mode", MODES)
def test_bounded_fork_bomb_is_contained(box, mode):
    r = run(box, BOUNDED_BOMB, mode, timeout_s=3.0, max_procs=8)
    assert not r.ok
    if mode in AUDITED:
        assert r.status == "blocked" and r.blocked == ("os.fork",)
        assert r.stdout == "refused after 0 PermissionError\n"
    elif "proc-watchdog" in ISOLATION[mode]:
        assert r.status == "procs"
        assert "refused" not in r.stdout and int(r.stdout.split()[-1]) < 60
    else:
        # the kernel refused the 8th process (the program itself is the first)
        assert r.stdout.splitlines()[-1] == "refused after 7 BlockingIOError", r.stdout
        assert (r.status, r.returncode) == ("error", 1)


def test_fork_bomb_is_contained(box):
    """A real, unbounded fork bomb, only where the kernel bounds processes (after the bounded
    one)."""
    if "proc-watchdog" in ISOLATION["kernel-only"]:
        pytest.skip("processes are bounded only by the polling watchdog here: no real fork bomb")
    r = run(
        box,
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "kernel-only",
        timeout_s=1.5,
        max_procs=8,
    )
    assert (r.ok, r.status) == (False, "timeout")
    r = run(box, "import os\nwhile True:\n    os.fork()", "full", timeout_s=1.5, max_procs=8)
    assert r.status == "blocked" and r.blocked[0] == "os.fork"


def test_daemonised_orphan_does_not_survive(box):
    # run() asserts no process of the run is alive afterwards
    r = run(
        box,
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        time.sleep(0.2)
        print("parent done")
        """,
        "kernel-only",
    )
    assert r.ok and r.stdout == "parent done\n"


@pytest.mark.parametrize("mode", MODES)
def test_shell_and_subprocess(box, mode):
    kernel_layers(mode)
    r = run(box, f"import os\nos.system('echo pwned >> {box['canary']}; echo pwned')", mode)
    if mode in AUDITED:
        assert r.status == "blocked" and "os.system" in r.blocked and "pwned" not in r.stdout
    r = run(box, "import subprocess\nsubprocess.run(['true'])", mode)
    if mode in AUDITED:
        assert r.status == "blocked" and r.blocked == ("import",)
    r = run(box, "import os\nos.execv('/bin/sh', ['sh', '-c', 'echo pwned'])", mode)
    if mode in AUDITED:
        assert r.status == "blocked" and "os.exec" in r.blocked and "pwned" not in r.stdout


@pytest.mark.parametrize("mode", MODES)
def test_writes_outside_the_working_directory(box, mode):
    kernel_layers(mode)
    escape = os.path.join(tempfile.gettempdir(), f"ablate-sandbox-escape-{secrets.token_hex(6)}")
    try:
        _writes_outside(box, mode, escape)
    finally:
        escaped = os.path.exists(escape)
        if escaped:
            os.remove(escape)
    if escaped:
        assert "mountns-ro" not in ISOLATION[mode] and mode not in AUDITED
        pytest.skip("without a mount namespace or the audit hook, /tmp is writable by the program")


def _writes_outside(box, mode, escape):
    r = run(
        box,
        f"""
        import os, shutil
        canary, root, escape = {box["canary"]!r}, {box["root"]!r}, {escape!r}
        attempts = {{
            "append": lambda: open(canary, "a").write("x"),
            "relative": lambda: open("../../canary.txt", "w").write("x"),
            "remove": lambda: os.remove(canary),
            "rename": lambda: os.rename(canary, canary + ".moved"),
            "chmod": lambda: os.chmod(canary, 0o777),
            "rmtree": lambda: shutil.rmtree(root),
            "symlink": lambda: (os.symlink(canary, "link"), open("link", "w").write("x")),
            "hardlink": lambda: (os.link(canary, "hard"), open("hard", "w").write("x")),
            "tmp": lambda: open(escape, "w").write("x"),
        }}
        for name, attempt in attempts.items():
            try:
                attempt()
                print("WROTE", name)
            except OSError as e:
                print("refused", name, type(e).__name__)
        """,
        mode,
    )
    assert r.ok, r
    wrote = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("WROTE")]
    refused = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("refused")]
    if mode in AUDITED:
        assert wrote == [] and len(refused) == 9, r.stdout
        expected = {
            "open",
            "os.remove",
            "os.rename",
            "os.chmod",
            "shutil.rmtree",
            "os.symlink",
            "os.link",
        }
        assert expected <= set(r.blocked)
    elif "mountns-ro" in ISOLATION[mode]:
        assert wrote in ([], ["tmp"]), r.stdout  # /tmp is the run's private tmpfs
    else:
        assert set(wrote) <= {"tmp"}, r.stdout  # world-writable /tmp: only the hook keeps it out
    if mode in AUDITED or "mountns-ro" in ISOLATION[mode]:
        assert not os.path.exists(escape)
    assert not os.path.exists(box["canary"] + ".moved")
    assert oct(os.stat(box["canary"]).st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize("mode", MODES)
def test_huge_allocations(box, mode):
    r = run(box, "x = bytearray(10 ** 11)", mode)
    assert (r.ok, r.status) == (False, "memory"), r
    r = run(
        box, "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))", mode, memory_mb=256
    )
    assert (r.ok, r.status) == (False, "memory"), r


@pytest.mark.parametrize("mode", MODES)
def test_environment_secrets_do_not_leak(box, mode, monkeypatch):
    kernel_layers(mode)
    secret = "sk-" + secrets.token_hex(12)
    monkeypatch.setenv("ABLATE_TEST_SECRET", secret)
    # an entry of the evaluator's original environment (what /proc/PID/environ shows)
    with open("/proc/self/environ", "rb") as f:
        original = [
            e
            for e in f.read().split(b"\0")
            if b"=" in e
            and e.split(b"=")[0] not in (b"PATH", b"LANG", b"LC_ALL", b"HOME", b"TMPDIR")
            and len(e) > 6
        ]
    r = run(
        box,
        f"""
        import os
        print(sorted(os.environ))
        for path in (
            "/proc/{os.getpid()}/environ",
            "/proc/{os.getppid()}/environ",
            "/proc/1/environ",
        ):
            try:
                print(open(path, "rb").read())
            except OSError as e:
                print("refused", path, type(e).__name__)
        """,
        mode,
    )
    assert r.ok, r
    env_keys = eval(r.stdout.splitlines()[0])
    assert set(env_keys) <= {
        "PATH",
        "LANG",
        "LC_ALL",
        "HOME",
        "TMPDIR",
        "ABLATE_SANDBOX_RUN",
        "LC_CTYPE",
    }
    assert secret not in r.stdout
    for entry in original[:20]:
        assert entry.decode("utf-8", "replace") not in r.stdout
    if mode in AUDITED:
        assert r.stdout.count("refused") == 3 and "open" in r.blocked


@pytest.mark.parametrize("mode", MODES)
def test_no_network(box, mode):
    if mode == "kernel-only" and "netns" not in ISOLATION[mode]:
        pytest.skip("no network namespace here: only the audit hook blocks the network")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        r = run(
            box,
            f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
            s.sendall(b"exfiltrated")
            print("connected")
            """,
            mode,
        )
        assert not r.ok and "connected" not in r.stdout
        if mode in AUDITED:
            assert r.status == "blocked"
        else:
            assert "Network is unreachable" in r.stderr or "OSError" in r.stderr
        with pytest.raises(BlockingIOError):
            server.accept()
        r = run(box, "import socket\nsocket.getaddrinfo('example.com', 80)", mode)
        assert not r.ok
    finally:
        server.close()


@pytest.mark.parametrize("mode", MODES)
def test_signals_to_the_evaluator(box, mode):
    kernel_layers(mode)
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
    try:
        r = run(
            box,
            f"""
            import os, signal
            for action in (lambda: os.kill({os.getpid()}, signal.SIGUSR1),
                           lambda: os.killpg({os.getpgid(0)}, signal.SIGUSR1)):
                try:
                    action()
                    print("SENT")
                except OSError as e:
                    print("refused", type(e).__name__)
            """,
            mode,
        )
        time.sleep(0.2)
        assert received == [] and "SENT" not in r.stdout, r
        if mode in AUDITED:
            assert r.status == "ok" and set(r.blocked) == {"os.kill", "os.killpg"}
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_programs_killing_their_own_sandbox(box):
    kernel_layers("kernel-only")
    # its own process group (supervisor included, where it may): the run still ends and reports
    r = run(box, "import os, signal\nos.killpg(0, signal.SIGKILL)", "kernel-only")
    assert not r.ok and r.status in ("killed", "crash")
    r = run(
        box,
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(30)",
        "kernel-only",
        timeout_s=2.0,
    )
    assert not r.ok
    # every process it may signal: only inside its PID namespace (never the machine's)
    if {"pidns"} <= set(ISOLATION["kernel-only"]):
        r = run(
            box, "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('alive')", "kernel-only"
        )
        assert r.stdout == "alive\n" or not r.ok
    r = run(box, "import os, signal\nos.kill(-1, signal.SIGKILL)", "full")
    assert r.status == "blocked" and r.blocked == ("os.kill",)
    r = run(box, "import os\nfor fd in range(3):\n    os.close(fd)\nraise SystemExit(4)")
    assert (r.status, r.returncode) == ("error", 4)


@pytest.mark.parametrize("mode", MODES)
def test_deep_recursion(box, mode):
    r = run(box, "def f(n):\n    return f(n + 1)\nf(0)", mode)
    assert r.status == "error" and "RecursionError" in r.stderr
    # past the interpreter's guard: the C stack overflows (SIGSEGV) or the interpreter refuses
    r = run(
        box,
        """
        import sys
        sys.setrecursionlimit(10 ** 7)
        nested = ()
        for _ in range(5 * 10 ** 5):
            nested = (nested,)
        print(hash(nested))
        """,
        mode,
    )
    assert not r.ok and r.status in ("crash", "error", "memory"), r


@pytest.mark.parametrize("mode", MODES)
def test_printing_gigabytes(box, mode):
    r = run(
        box,
        "import sys\nchunk = 'x' * 10 ** 6\nwhile True:\n    sys.stdout.write(chunk)",
        mode,
        max_output=10_000,
    )
    assert (r.ok, r.status) == (False, "output") and r.stdout == "x" * 10_000
    r = run(box, "import os\nwhile True:\n    os.write(2, b'e' * 65536)", mode, max_output=10_000)
    assert (r.ok, r.status) == (False, "output") and len(r.stderr) == 10_000


@pytest.mark.parametrize("mode", AUDITED)
def test_native_code_and_secret_reads_are_refused(box, mode):
    for source in (
        "import ctypes",
        "import _ctypes",
        "import _posixsubprocess",
        "import gc\ngc.get_objects()",
        "open('/dev/mem', 'rb')",
        "open('/proc/kcore', 'rb')",
        "open('/proc/self/mem', 'rb')",
        "import os\nos.chdir('/proc/1')\nopen('environ', 'rb')",
        "import os\nos.symlink('/proc/1/environ', 'e')\nopen('e', 'rb')",
    ):
        r = run(box, source, mode)
        assert r.status == "blocked", (source, r)
    r = run(box, "import os\nprint(len(os.urandom(4)), open('/dev/null', 'w').write('x'))", mode)
    assert r.ok and r.stdout == "4 1\n"


@pytest.mark.parametrize("mode", MODES)
def test_disk_and_file_limits(box, mode):
    r = run(box, "with open('big', 'wb') as f:\n    f.write(b'x' * (20 << 20))", mode, disk_mb=4)
    assert r.status == "error" and ("File too large" in r.stderr or "No space left" in r.stderr), r
    r = run(box, "files = [open(f'f{i}', 'w') for i in range(500)]", mode)
    assert r.status == "error" and "Too many open files" in r.stderr


def test_zz_hostile_suite_bounded_and_evaluator_healthy(box):
    """Runs last in this module: totals over everything above."""
    assert _HOSTILE_WALL, "no hostile program ran"
    total = sum(_HOSTILE_WALL)
    print(f"\n{len(_HOSTILE_WALL)} hostile runs took {total:.1f} s of wall clock")
    assert total < 60.0
    # nothing of any run is alive, nothing was left beside the canary, the canary is intact
    assert not [rid for rid in _RUN_IDS if _live(rid)]
    assert sorted(os.listdir(box["root"])) == ["canary.txt"]
    with open(box["canary"]) as f:
        assert f.read() == box["content"]
    # and no sandbox process is a child of this evaluator any more
    me = str(os.getpid()).encode()
    children = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except (OSError, IndexError):
            continue
        if fields[1] == me and fields[0] != b"Z" and b"ABLATE_SANDBOX_RUN=" in env:
            children.append(name)
    assert children == []
