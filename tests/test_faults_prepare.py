"""Real faults in ``ablate data prepare``: kills at random moments, a full disk, a read-only one.

- SIGKILL of ``python -m ablate.cli data prepare --workers 2`` at seeded random moments (while
  starting, while tokenizing, while importing megatron-core / merging): no process of its
  session survives (workers die with their parent), and a rerun removes the killed run's
  staging and gives files byte-identical to a clean run.
- SIGTERM: the run exits non-zero with one line and removes its own staging.
- A tmpfs the test mounts (root; skipped with the reason elsewhere): too small, it gives one
  line naming ``--out`` ("no space left"), exit 2, and the tmpfs is left empty; read-only, the
  same; and an ``--overwrite`` that fails either way leaves the previous dataset untouched.

The rerun and the clean run are in-process (the subprocess's seconds go to importing megatron).
"""

from __future__ import annotations

import filecmp
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import assert_refused, write_jsonl, write_spec
from tmpfs import remount, tmpfs_fixture  # noqa: F401  (provides the ``tmpfs`` fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _rows(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))),
            "domain": ("general", "code.exec", "math.text")[i % 3],
        }
        for i in range(n)
    ]


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path_factory, monkeypatch):
    """``assert_refused`` checks the temp dir for ``ablate-*`` names this run left behind; a
    private one keeps other test runs on the same machine out of that check."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tempdir")))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 files (~4.5 MB): 8 tasks for 2 workers. Returns (root, spec, a clean run's output)."""
    from ablate.data.prepare import prepare

    root = tmp_path_factory.mktemp("faults")
    for k in range(8):
        write_jsonl(root / "in" / f"part{k}.jsonl", _rows(k, 1500))
    spec = write_spec(root / "c.yaml", [{"path": "in"}], eval_fraction=0.05)
    prepare(spec, str(root / "clean"), workers=1)  # byte-identical whatever the worker count
    return root, spec, root / "clean"


def _session(sid: int) -> dict[int, str]:
    """Live processes of session ``sid`` (zombies aside): pid -> command line."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found[int(name)] = cmd
    return found


def _start(spec: str, out, stderr) -> subprocess.Popen:
    """The run in a session of its own; its output goes to files (an orphaned worker holding a
    pipe open would block reading it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    with open(stderr, "w") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ablate.cli",
                "data",
                "prepare",
                spec,
                "--out",
                str(out),
                "--workers",
                "2",
            ],
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _wait_for_workers(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the run has its two workers (or has ended)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and len(_session(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)


def _assert_session_ends(sid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (left := _session(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:  # do not leave them running after the failure
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"processes of the killed prepare are still running: {left}"


def _files(root) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def _assert_same_output(out, clean) -> None:
    files = _files(clean)
    assert _files(out) == files
    match, mismatch, errors = filecmp.cmpfiles(clean, out, files, shallow=False)
    assert mismatch == [] and errors == [], (mismatch, errors)


def _temporaries(directory) -> list[str]:
    return [n for n in os.listdir(directory) if ".tmp-" in n]


# (when, seconds): "start" counts from the launch, "workers" from the moment both workers run
MOMENTS = [("start", 0.15), ("workers", 0.0), ("workers", 1.0)]


@pytest.mark.parametrize("when, base", MOMENTS, ids=["starting", "tokenizing", "merging"])
def test_sigkill_at_a_random_moment_leaves_no_process_and_the_rerun_is_identical(
    tmp_path, corpus, when, base
):
    from ablate.data.prepare import prepare

    root, spec, clean = corpus
    delay = base + random.Random(f"{when}{base}").uniform(0, 0.8 if when == "workers" else 0.3)
    out = tmp_path / "out"
    proc = _start(spec, out, tmp_path.parent / f"{tmp_path.name}.stderr")
    if when == "workers":
        _wait_for_workers(proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not out.exists(), "the run ended before the kill"
    if when == "workers":
        assert _temporaries(tmp_path), "no staging at the kill: the case tests nothing"
    _assert_session_ends(proc.pid)
    result = prepare(spec, str(out), workers=1)
    assert result.state in ("created", "unchanged")
    _assert_same_output(out, clean)
    assert _temporaries(tmp_path) == [], "the killed run's staging was not removed by the rerun"


def test_sigterm_removes_its_staging_and_says_so_in_one_line(tmp_path, corpus):
    root, spec, clean = corpus
    out, stderr = tmp_path / "out", tmp_path.parent / f"{tmp_path.name}.stderr"
    proc = _start(spec, out, stderr)
    _wait_for_workers(proc)
    time.sleep(random.Random(16).uniform(0.2, 1.0))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    _assert_session_ends(proc.pid)
    err = stderr.read_text()
    if proc.returncode == 0:
        pytest.fail("prepare finished before SIGTERM reached it: make the corpus larger")
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert _temporaries(tmp_path) == [] and not out.exists()


# --- disk full and read-only ----------------------------------------------------------------------


def _small_spec(tmp_path, rows=3000, name="c.yaml", **source):
    """Two files (two tasks: two workers when asked for)."""
    data = _rows(99, rows)
    write_jsonl(tmp_path / "src" / "a.jsonl", data[: rows // 2])
    write_jsonl(tmp_path / "src" / "b.jsonl", data[rows // 2 :])
    return write_spec(tmp_path / name, [{"path": "src", **source}], eval_fraction=0.05)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_is_one_line_and_leaves_the_disk_empty(tmp_path, tmpfs, capsys, workers):
    spec = _small_spec(tmp_path)  # ~1 MB of text: 2 MB of uint16 tokens
    small = tmpfs("1m")
    assert_refused(
        ["data", "prepare", spec, "--out", f"{small}/out", "--workers", workers],
        f"{small}/out: cannot write (no space left on the device)",
        watch=(small, tmp_path / "src"),
        capsys=capsys,
    )
    assert os.listdir(small) == []


@pytest.mark.parametrize("out", ["out", "a/b/out"])
def test_a_read_only_file_system_is_one_line(tmp_path, tmpfs, capsys, out):
    spec = _small_spec(tmp_path, rows=50)
    ro = tmpfs("1m")
    remount(ro, "ro")
    assert_refused(
        ["data", "prepare", spec, "--out", f"{ro}/{out}", "--workers", "1"],
        "cannot write (the file system is read-only)",
        watch=(ro, tmp_path / "src"),
        capsys=capsys,
    )


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_failed_overwrite_keeps_the_previous_dataset(tmp_path, tmpfs, capsys, fault):
    from ablate.data.prepare import prepare

    disk = tmpfs("3m")
    small = _small_spec(tmp_path, rows=100, name="small.yaml")
    prepare(small, f"{disk}/out", workers=1)
    write_jsonl(tmp_path / "big" / "b.jsonl", _rows(7, 4000))
    big = write_spec(tmp_path / "big.yaml", [{"path": "big"}])
    if fault == "read-only":
        remount(disk, "ro")
    reason = "no space left" if fault == "full" else "read-only"
    assert_refused(
        ["data", "prepare", big, "--out", f"{disk}/out", "--overwrite", "--workers", "1"],
        f"{disk}/out: cannot write",
        reason,
        watch=(disk, tmp_path / "src"),
        capsys=capsys,
    )
