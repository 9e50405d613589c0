"""Real faults of ``ablate compile`` and ``ablate train``: SIGKILL at a random moment and rerun
(byte-identical outputs, no temporaries left), a damaged newest checkpoint (skipped with a
warning, the run completes with the uninterrupted run's losses; none left: one line, and a
completed run stays completed), a full disk on a tmpfs the test mounts (one line naming the
path, status failed), a SIGKILLed torchrun agent (its worker gets SIGTERM), stale process-group
stores. The SIGKILL-and-resume of training itself is ``tests/test_train.py``'s ``kill_9``.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from conftest import TINY_CADENCE, link_toyworld, tiny_recipe
from tmpfs import tmpfs_fixture  # noqa: F401  (the ``tmpfs`` fixture: mounted, always unmounted)

PYTHON = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny_recipe(
    "tiny",
    [
        {"name": "code", "mix": {"code": {"tokens": "2K"}}},  # 4 steps
        {"name": "math", "mix": {"math": {"tokens": "1.5K"}, "general": {"tokens": "0.5K"}}},  # 4
    ],
    cadence={**TINY_CADENCE, "keep_checkpoints": 100},
)
STEPS = 8


def write_recipe(root, name="tiny", **top) -> str:
    raw = {**json.loads(json.dumps(TINY)), "name": name, **top}
    path = os.path.join(str(root), f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    return path


def ablate(root, *argv, timeout=240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [PYTHON, "-m", "ablate.cli", *map(str, argv)],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def error_lines(r) -> list[str]:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


def outputs(root) -> dict:
    """Every compile output: plan, resolved recipe, index and blend files (not the memo of
    verified files, nor the locks)."""
    files = [os.path.join("runs", "tiny", n) for n in ("plan.json", "recipe.yaml")]
    files += glob.glob("cache/indices/**/*", root_dir=root, recursive=True)
    files += glob.glob("cache/blends/*", root_dir=root)
    out = {}
    for rel in files:
        path = os.path.join(str(root), rel)
        if os.path.isfile(path) and not rel.endswith(".lock"):
            with open(path, "rb") as f:
                out[rel] = f.read()
    return out


def temporaries(root) -> list[str]:
    return [p for p in glob.glob("**/*", root_dir=root, recursive=True) if ".tmp-" in p]


# ------------------------------------------------------------------ compile killed at random


def test_sigkill_of_compile_at_a_random_moment_then_a_rerun_gives_identical_outputs(
    toyworld_root, tmp_path, monkeypatch, cli
):
    """A clean compile (in-process), then a compile in a subprocess SIGKILLed at a random moment
    of its build (from when its first index starts), then a rerun (in-process)."""
    link_toyworld(toyworld_root, tmp_path)
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path)
    r = cli("compile", recipe)
    assert r.rc == 0, r.err
    clean = outputs(tmp_path)
    assert any(k.startswith("cache/indices") for k in clean) and any(
        k.startswith("cache/blends") for k in clean
    )
    shutil.rmtree(tmp_path / "cache")
    shutil.rmtree(tmp_path / "runs")
    seed = int(os.environ.get("ABLATE_FAULT_SEED", time.time()))
    delay = random.Random(seed).uniform(0.0, 0.15)  # the tiny build lasts ~0.15 s
    p = subprocess.Popen(
        [PYTHON, "-m", "ablate.cli", "compile", recipe],
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while (
        not (tmp_path / "cache" / "indices").exists()
        and p.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.005)
    assert p.poll() is None, "the compile ended before it could be killed"
    time.sleep(delay)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    r = cli("compile", recipe)
    assert r.rc == 0, (seed, r.err)
    assert outputs(tmp_path) == clean, (
        f"killed {delay:.3f} s into the build (ABLATE_FAULT_SEED={seed})"
    )
    assert not temporaries(tmp_path), (seed, temporaries(tmp_path))


# ------------------------------------------------------------------ damaged checkpoints


@pytest.fixture(scope="module")
def trained(toyworld_root, tmp_path_factory):
    """A completed tiny run (8 steps, a checkpoint every 2) and its metrics."""
    root = tmp_path_factory.mktemp("faults-train")
    link_toyworld(toyworld_root, root)
    recipe = write_recipe(root)
    r = ablate(root, "train", recipe)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(root / "runs" / "tiny" / "metrics.jsonl") as f:
        reference = [json.loads(line) for line in f]
    assert [row["step"] for row in reference] == list(range(1, STEPS + 1))
    return root, recipe, reference


def ckpt(root, step: int):
    return root / "runs" / "tiny" / "checkpoints" / f"step_{step:08d}"


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncate weights/__0_0.distcp", "weights/__0_0.distcp is damaged"),
        ("remove weights/.metadata", "weights/.metadata is missing"),
        ("truncate rng/rank0.pt", "rng/rank0.pt is damaged"),
        ("flip rng/rank0.pt", "rng/rank0.pt is damaged (its content changed)"),
        ("garbage train_state.json", "train_state.json is damaged"),
        ("list train_state.json", "train_state.json is damaged (no step)"),
        ("remove train_state.json", "incomplete"),
    ],
)
def test_verify_checkpoint_names_what_is_damaged(trained, tmp_path, damage, reason):
    from ablate.train.checkpoint import latest_complete_checkpoint, verify_checkpoint

    root, _, _ = trained
    run = tmp_path / "run"
    shutil.copytree(ckpt(root, 2), run / "checkpoints" / "step_00000002")
    # a newer copy to damage (its record lists its own files, the same as step 2's)
    shutil.copytree(ckpt(root, 2), run / "checkpoints" / "step_00000004")
    assert verify_checkpoint(str(run / "checkpoints" / "step_00000004")) is None
    verb, rel = damage.split()
    target = run / "checkpoints" / "step_00000004" / rel
    if verb == "truncate":
        os.truncate(target, os.path.getsize(target) - 1)
    elif verb == "remove":
        os.remove(target)
    elif verb == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif verb == "garbage":
        target.write_bytes(b"\x00\xff garbage")
    elif verb == "list":
        target.write_text("[1, 2]")
    found = verify_checkpoint(str(run / "checkpoints" / "step_00000004"))
    assert found is not None and reason in found, found
    latest, skipped = latest_complete_checkpoint(str(run))
    assert latest.endswith("step_00000002")
    if verb == "remove" and rel == "train_state.json":
        assert skipped == []  # incomplete, not damaged: never a candidate
    else:
        assert [p for p, _ in skipped] == [str(run / "checkpoints" / "step_00000004")]


def test_a_checkpoint_from_before_the_integrity_record_is_accepted(trained, tmp_path):
    from ablate.train.checkpoint import verify_checkpoint

    root, _, _ = trained
    legacy = tmp_path / "step_00000002"
    shutil.copytree(ckpt(root, 2), legacy)
    state = json.loads((legacy / "train_state.json").read_text())
    state.pop("files")
    (legacy / "train_state.json").write_text(json.dumps(state))
    assert verify_checkpoint(str(legacy)) is None


def test_a_truncated_latest_checkpoint_is_skipped_and_the_run_completes_with_the_same_losses(
    trained,
):
    root, recipe, reference = trained
    for step in (
        6,
        8,
    ):  # as if killed after step 5: the newest checkpoint is step 4, and it is damaged
        shutil.rmtree(ckpt(root, step))
    (distcp,) = sorted((ckpt(root, 4) / "weights").glob("__0_0.distcp"))
    os.truncate(distcp, os.path.getsize(distcp) // 2)
    r = ablate(root, "train", recipe, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [line for line in r.stderr.splitlines() if "damaged checkpoint" in line]
    assert (
        len(warnings) == 1
        and "step_00000004" in warnings[0]
        and "weights/__0_0.distcp" in warnings[0]
    ), r.stderr
    assert "step_00000002" in warnings[0] and "resuming at step 2" in r.stdout
    with open(root / "runs" / "tiny" / "metrics.jsonl") as f:
        resumed = [json.loads(line) for line in f]
    assert [row["step"] for row in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(reference, resumed):
        for key in a:
            if not key.startswith(("tokens/s", "memory/")):
                assert a[key] == b[key], (a["step"], key, a[key], b[key])
    status = json.load(open(root / "runs" / "tiny" / "status.json"))
    assert status["state"] == "completed" and status["resumed_from"]["skipped"][0]["path"].endswith(
        "step_00000004"
    )


# ------------------------------------------------------------------ a full disk


def test_disk_full_during_training_is_one_line_naming_the_path_and_status_failed(
    toyworld_root, tmp_path, tmpfs
):
    """A 6 MiB tmpfs holds the tiny run's first checkpoint, not its second."""
    small_tmpfs = tmp_path / os.path.basename(tmpfs("6m", "full"))
    link_toyworld(toyworld_root, tmp_path)
    recipe = write_recipe(tmp_path, run_dir="full/tiny")
    r = ablate(tmp_path, "train", recipe)
    # 2: a condition the user must fix, like every refusal
    assert r.returncode == 2, r.stderr[-3000:]
    (line,) = error_lines(r)
    assert "full/tiny/" in line and "no space left on the device" in line, line
    status_path = small_tmpfs / "tiny" / "status.json"
    if "could not be updated" not in line:
        status = json.load(open(status_path))
        assert status["state"] == "failed" and "no space left" in status["exit_reason"]
    assert not temporaries(small_tmpfs)
    # the half-written checkpoint was removed; the complete one before it remains
    done = sorted(p.name for p in (small_tmpfs / "tiny" / "checkpoints").iterdir())
    assert done and all(
        (small_tmpfs / "tiny" / "checkpoints" / d / "train_state.json").exists() for d in done
    )


def test_sigterm_before_training_began_leaves_status_failed(toyworld_root, tmp_path):
    """SIGTERM once the run directory is locked (the trainer's preemption handler is not there
    yet): exit 143, one line, status failed; if training had begun after all, the trainer's
    preemption path answers (status preempted). Never left at running."""
    link_toyworld(toyworld_root, tmp_path)
    recipe = write_recipe(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [PYTHON, "-m", "ablate.cli", "train", recipe],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not (tmp_path / "runs" / "tiny" / ".lock").exists() and p.poll() is None:
        assert time.time() < deadline
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    status = json.load(open(tmp_path / "runs" / "tiny" / "status.json"))
    assert "Traceback" not in err, err[-3000:]
    if p.returncode == 143:
        lines = [line for line in err.splitlines() if line.startswith("stopped by")]
        assert len(lines) == 1 and "SIGTERM" in lines[0], err[-2000:]
        assert status["state"] == "failed" and "SIGTERM" in status["exit_reason"]
    else:
        assert p.returncode == 0 and status["state"] == "preempted", (p.returncode, err[-2000:])


# ------------------------------------------------------------------ process plumbing

FOLLOWER = """
import os, signal, sys, time
os.environ["TORCHELASTIC_RUN_ID"] = "test"
from ablate.train.process_group import follow_parent_under_torchrun
signal.signal(signal.SIGTERM, lambda *a: (open(sys.argv[1], "w").write("SIGTERM"), os._exit(0)))
assert follow_parent_under_torchrun()
open(sys.argv[1] + ".ready", "w").close()
time.sleep(30)
"""


def test_a_torchrun_worker_gets_sigterm_when_its_agent_is_killed(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    flag = tmp_path / "flag"
    agent = subprocess.Popen(
        [
            PYTHON,
            "-c",
            "import subprocess, sys; subprocess.Popen(sys.argv[1:]).wait()",
            PYTHON,
            "-c",
            FOLLOWER,
            str(flag),
        ],
        cwd=REPO,
    )
    deadline = time.time() + 30
    while not os.path.exists(str(flag) + ".ready") and time.time() < deadline:
        time.sleep(0.05)
    agent.kill()
    agent.wait()
    while not flag.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert flag.read_text() == "SIGTERM"


def test_stale_process_group_stores_are_removed_and_live_ones_kept(tmp_path):
    from ablate.train.process_group import remove_stale_stores

    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()
    host = (
        "".join(c if c.isalnum() or c in "_." else "_" for c in socket.gethostname())[:40] or "host"
    )
    stale = tmp_path / f"ablate-pg.tmp-{host}-{dead.pid}-0"
    live = tmp_path / f"ablate-pg.tmp-{host}-{os.getppid()}-0"
    other = tmp_path / f"other.tmp-{host}-{dead.pid}"
    for p in (stale, live, other):
        p.write_text("")
    assert remove_stale_stores(str(tmp_path)) == [stale.name]
    assert live.exists() and other.exists() and not stale.exists()


def test_a_one_process_group_leaves_no_store(tmp_path, monkeypatch):
    import tempfile

    import torch.distributed as dist

    from ablate.train.process_group import single_process_group

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with single_process_group():
        assert dist.is_initialized()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("ablate-pg")]
    assert not dist.is_initialized()
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ compile onto a full disk


def test_compile_onto_a_full_disk_is_one_line_and_leaves_no_temporaries(
    toyworld_root, tmp_path, monkeypatch, tmpfs, cli
):
    """The index cache on a tmpfs too small for it: one line naming the path and the full
    disk (not megatron-core's 'write access' message), exit 2, no temporaries left on it; a
    rerun with room then compiles."""
    link_toyworld(toyworld_root, tmp_path)
    monkeypatch.chdir(tmp_path)
    small = tmpfs("32k", "small")
    recipe = write_recipe(
        tmp_path, data={"manifests": ["data/toyworld/manifest.json"], "cache_dir": small}
    )
    r = cli("compile", recipe)
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert r.rc == 2 and len(lines) == 1 and "Traceback" not in r.err, r.err
    assert small in lines[0] and "no space left" in lines[0], lines[0]
    assert not temporaries(small)
    roomy = tmpfs("8m", "roomy")
    recipe = write_recipe(
        tmp_path, data={"manifests": ["data/toyworld/manifest.json"], "cache_dir": roomy}
    )
    r = cli("compile", recipe)
    assert r.rc == 0, r.err
