"""Faults around sweeps and reports: what the commands say and leave behind when things go wrong.

- the local executor runs points in the foreground, so a point whose training fails, or is
  killed (SIGKILL, as the OOM killer does), makes ``sweep submit`` exit 1 and name the point and
  its log on stderr; the summary never calls it submitted;
- ``sweep submit --dry-run`` writes nothing at all (no recipe, plan, blend, cache entry, lock);
- ``report`` on run directories it may not write still succeeds, with one warning, and writes the
  routing caches of its inputs only once the page is written.

Kept cheap: the failing point fails at start-up (expert parallelism 2 in one process), the
killed one is killed as soon as it is recorded; nothing trains to the end.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from analysis_fakes import write_run
from conftest import link_toyworld, tree_state
from sweep_helpers import DENSITY, TEXT, base, write_sweep


@pytest.fixture
def here(tmp_path, monkeypatch, toyworld_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    link_toyworld(toyworld_root, tmp_path)
    return tmp_path


def submit_exit(cli, capsys, *argv):
    """``ablate sweep submit ...`` in-process: (exit status, stdout, stderr)."""
    r = cli("sweep", "submit", *argv)
    return r.rc, r.out, r.err


def test_a_point_whose_training_fails_makes_submit_exit_1_naming_it(here, cli, capsys):
    path = write_sweep(here, "fails", base=base(parallelism={"ep": 2}), point_name="p")
    rc, out, err = submit_exit(cli, capsys, path)
    log = os.path.join(here, "runs", "fails", "p", "train.log")
    assert rc == 1, (out, err)
    assert err.strip() == f"error: {path}: point p: training exited 2 (log: {log})"
    assert "submitted" not in out and "ran 1 point(s): 1 failed" in out
    assert "parallelism.ep" in open(log).read()


def test_a_point_killed_by_sigkill_makes_submit_exit_1_naming_it(here, cli, capsys):
    path = write_sweep(here, "killed", point_name="p")
    record = os.path.join(here, "runs", "killed", "p", "local.json")
    killed = []

    def kill_when_recorded():  # the OOM killer's way: SIGKILL, no checkpoint, no status
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with open(record) as f:
                    pid = json.load(f)["pid"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.02)
                continue
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
            return

    watcher = threading.Thread(target=kill_when_recorded, daemon=True)
    watcher.start()
    rc, out, err = submit_exit(cli, capsys, path)
    watcher.join(timeout=5)
    assert killed, "the point was never recorded"
    log = os.path.join(here, "runs", "killed", "p", "train.log")
    assert rc == 1, (out, err)
    assert err.strip() == f"error: {path}: point p: training killed by SIGKILL (log: {log})"
    assert "ran 1 point(s): 1 failed" in out and "p: training killed by SIGKILL" in out
    state = json.loads(cli("sweep", "status", path, "--json").out)
    assert state["state"] in ("failed", "interrupted"), state  # never completed, never pending
    assert json.load(open(record))["returncode"] == -signal.SIGKILL


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_a_dry_run_writes_nothing(here, cli, executor):
    path = write_sweep(
        here,
        "dry",
        point_name="p{math.structured}",
        zip={DENSITY: [0.25, 0.75], TEXT: [0.75, 0.25]},
        eval={"tasks": ["bpb"]},
    )
    real_data = os.path.realpath(here / "data" / "toyworld")
    before = tree_state(here, real_data)
    r = cli("sweep", "submit", path, "--dry-run", "--executor", executor)
    assert r.rc == 0, r.err
    assert tree_state(here, real_data) == before  # no recipe, plan, blend, cache entry or lock
    assert "rendered 2 point(s)" in r.out
    if executor == "local":
        assert r.out.count("would run") == 2 and "ablate.cli train" in r.out
    else:
        assert r.out.count("#### sbatch script") == 4 and "#SBATCH --requeue" in r.out


def test_report_writes_input_caches_only_after_the_page_and_survives_unwritable_runs(
    tmp_path, cli, monkeypatch
):
    from ablate.analysis import routing_store as rs

    a = write_run(tmp_path / "runs", "a", seed=1, scores={"bpb": {"bpb/general": 1.0}})
    b = write_run(tmp_path / "runs", "b", seed=2, scores={"bpb": {"bpb/general": 1.1}})
    out = tmp_path / "report.html"
    real = rs.write_columnar
    order = []

    def write(path, arrays):  # run a's directory refuses writes; b's store comes after the page
        order.append(("store", os.path.dirname(path), out.exists()))
        if os.path.dirname(path) == a:
            raise PermissionError(13, "Permission denied", path)
        real(path, arrays)

    monkeypatch.setattr(rs, "write_columnar", write)
    monkeypatch.setattr(rs, "_WARNED", False)
    r = cli("report", a, b, "--control", "a", "-o", out)
    assert r.rc == 0, r.err
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert (
        len(lines) == 1 and lines[0].startswith("warning: ") and "permission denied" in lines[0]
    ), r.err
    assert sorted(d for _, d, _ in order) == [a, b] and all(page for _, _, page in order)
    assert not os.path.exists(os.path.join(a, rs.COLUMNAR)) and os.path.exists(
        os.path.join(b, rs.COLUMNAR)
    )
    assert not [n for n in os.listdir(a) if ".tmp-" in n]
