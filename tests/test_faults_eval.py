"""``ablate eval`` under real faults: SIGKILL at a random moment then a rerun gives the scores a
clean run gives (and a damaged scores file or a damaged newer checkpoint on the clean side changes
nothing but a warning); the run directory, or only its ``eval/``, on a read-only tmpfs is one
line, exit 2, nothing written (skipped where this process may not mount)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time

import numpy as np
import pytest

from conftest import assert_refused
from eval_run import NAME, copy_run, trained_run
from test_train import PYTHON
from tmpfs import mounted_tmpfs, remount

ARGS = [
    "--tasks",
    "bpb,probes,routing",
    "--limit",
    "2",
    "--bpb-tokens",
    "512",
    "--routing-tokens",
    "256",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toyworld_root):
    return trained_run(tmp_path_factory, toyworld_root)


def _launch(root) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "ablate.cli", "eval", f"runs/{NAME}", *ARGS],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _finish(p: subprocess.Popen):
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    return err


def _scores(root) -> dict:
    with open(os.path.join(root, "runs", NAME, "eval", "step_2.json")) as f:
        scores = json.load(f)
    for entry in scores["tasks"].values():
        entry.pop("elapsed_s")
    return scores


def test_sigkill_at_a_random_moment_then_rerun_gives_the_clean_scores(trained, tmp_path):
    clean = copy_run(trained, tmp_path / "clean")
    run = os.path.join(clean, "runs", NAME)
    # the clean side also meets a damaged scores file (recomputed) and a damaged newer
    # checkpoint (skipped for step 2): neither may change a score
    os.makedirs(os.path.join(run, "eval"))
    with open(os.path.join(run, "eval", "step_2.json"), "w") as f:
        f.write('{"format": "ablate.eval/1", "tasks": {"bpb": ')
    newer = os.path.join(run, "checkpoints", "step_00000003")
    shutil.copytree(os.path.join(run, "checkpoints", "step_00000002"), newer)
    shard = os.path.join(newer, "weights", "__0_0.distcp")
    os.truncate(shard, os.path.getsize(shard) // 2)
    killed = copy_run(trained, tmp_path / "killed")

    # the random moment: after a random number of the run's progress lines (0: while it loads)
    # and a random fraction of a second more, whatever the machine's speed
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    lines_before, delay = rng.randrange(0, 4), rng.uniform(0.0, 0.5)
    clean_p, p = _launch(clean), _launch(killed)  # two cores: side by side
    seen = 0
    while seen < lines_before:
        line = p.stderr.readline()
        if not line:
            break
        seen += "scoring step" in line or "already scored" in line
    time.sleep(delay)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    err = _finish(clean_p)
    assert "step_2.json: damaged scores file" in err, err[-2000:]
    assert "step_00000003: damaged checkpoint, skipped" in err, err[-2000:]

    err = _finish(_launch(killed))
    where = f"killed {delay:.2f} s after {seen} tasks began (seed {seed}): {err[-1500:]}"
    assert _scores(killed) == _scores(clean), where
    a, b = (
        np.load(os.path.join(r, "runs", NAME, "eval", "routing_step_2.npz"))
        for r in (clean, killed)
    )
    for key in ("topk_TKL", "token_ids_T", "domain_T"):
        assert np.array_equal(a[key], b[key]), (key, where)
    eval_dir = os.path.join(killed, "runs", NAME, "eval")
    left = [n for _, _, names in os.walk(eval_dir) for n in names if ".tmp-" in n]
    assert not left, (left, where)


# ------------------------------------------------------------------ read-only file systems
# (tests/tmpfs.py mounts them and always unmounts; skipped where mounting is not allowed)


def test_eval_dir_on_a_read_only_file_system_is_one_line_before_scoring(trained, tmp_path, capsys):
    root = copy_run(trained, tmp_path)
    run = os.path.join(root, "runs", NAME)
    with mounted_tmpfs(os.path.join(run, "eval"), "4m") as eval_dir:
        remount(eval_dir, "ro")
        assert_refused(
            ["eval", run, "--tasks", "bpb"],
            os.path.join(run, "eval") + ": cannot write",
            "read-only",
            "cannot be saved",
            watch=(root,),
            capsys=capsys,
        )


def test_run_dir_on_a_read_only_file_system_is_one_line_before_scoring(trained, tmp_path, capsys):
    with mounted_tmpfs(tmp_path / "ro", "64m") as ro:
        root = copy_run(trained, ro)
        remount(ro, "ro")
        run = os.path.join(root, "runs", NAME)
        before = set(os.listdir(tempfile.gettempdir()))
        assert_refused(
            ["eval", run, "--tasks", "bpb,probes"],
            os.path.join(run, "eval"),
            "read-only",
            "cannot be saved",
            watch=(root,),
            capsys=capsys,
        )
        assert not {n for n in set(os.listdir(tempfile.gettempdir())) - before if "ablate" in n}
