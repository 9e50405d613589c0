"""Refusals of ``ablate compile`` and ``ablate train``, table-driven: each case damages one thing
(a manifest, the run directory, the cache, a lock held by another process...) and runs the
command in-process; ``assert_refused`` holds it to the contract: exit 2, one line naming the
place, no traceback, nothing under the working directory (cache, runs, data) changed.

Every case runs in the same absolute directory (``case``), copied from a template where the
tiny recipe was compiled once: plan.json records absolute dataset paths, so a copy elsewhere
would be "a different plan". Train refusals all happen before a process group exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

from conftest import TINY_CADENCE, assert_refused, link_toyworld, tiny_recipe, tree_state

TINY = tiny_recipe(
    "tiny", [{"name": "code", "mix": {"code": {"tokens": "1K"}}}], cadence=TINY_CADENCE
)
RUN = "runs/tiny"


def write_recipe(path="tiny.yaml", **changes) -> str:
    raw = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        node, keys = raw, dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    return path


@pytest.fixture(scope="module")
def template(toyworld_root, tmp_path_factory):
    """``(case dir, template dir)``: the tiny recipe compiled in ``case``, kept as ``template``."""
    from ablate.cli import main

    root = tmp_path_factory.mktemp("refusals-train")
    case, template = root / "case", root / "template"
    case.mkdir()
    link_toyworld(toyworld_root, case)
    old = os.getcwd()
    os.chdir(case)
    try:
        write_recipe()
        # twice: the second compile also records the verified .idx hashes in the cache (the first
        # plans before the cache exists), which every later plan would otherwise add
        assert main(["compile", "tiny.yaml"]) == 0
        assert main(["compile", "tiny.yaml"]) == 0
    finally:
        os.chdir(old)
    shutil.copytree(case, template, symlinks=True)
    return case, template


@pytest.fixture
def case(template, monkeypatch, tmp_path):
    """A fresh copy of the compiled template at the same absolute path, as working directory;
    a private temp dir (``assert_refused`` checks it for ablate's leftovers: other test runs on
    the machine must not count)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    case, tpl = template
    if os.path.ismount(case / "ro"):
        subprocess.run(["umount", str(case / "ro")], check=False)
    shutil.rmtree(case)
    shutil.copytree(tpl, case, symlinks=True)
    monkeypatch.chdir(case)
    yield case
    if os.path.ismount(case / "ro"):
        subprocess.run(["umount", str(case / "ro")], check=False)


# ------------------------------------------------------------------ damage, one thing each


def copied_world(case) -> str:
    """A private copy of the toy world (to damage): data/copy/manifest.json."""
    shutil.copytree(os.path.realpath(case / "data" / "toyworld"), case / "data" / "copy")
    return "data/copy/manifest.json"


def damaged_manifest(case, text=b"{ not json"):
    path = copied_world(case)
    with open(path, "wb") as f:
        f.write(text)
    return write_recipe(data={"manifests": [path]})


def truncated_bin(case):
    path = copied_world(case)
    binf = case / "data" / "copy" / "toyworld" / "code.exec.bin"
    os.truncate(binf, os.path.getsize(binf) - 2)
    return write_recipe(data={"manifests": [path]})


def a_file_at(rel):
    def setup(case):
        if os.path.isdir(rel):
            shutil.rmtree(rel)
        os.makedirs(os.path.dirname(rel) or ".", exist_ok=True)
        with open(rel, "w") as f:
            f.write("a file\n")
        return write_recipe()

    return setup


def recipe_with(**changes):
    return lambda case: write_recipe(**changes)


def run_file(name, text: bytes):
    def setup(case):
        with open(os.path.join(RUN, name), "wb") as f:
            f.write(text)
        return write_recipe()

    return setup


def read_only_dir(rel, field):
    """``rel`` on a read-only tmpfs; the recipe's ``field`` points at it."""

    def setup(case):
        shutil.rmtree(RUN)  # a run not compiled yet (its plan would name the other cache)
        os.makedirs("ro")
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", "ro"], capture_output=True
        )
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})")
        return write_recipe(**{field: f"ro/{rel}"})

    return setup


HOLD_LOCK = "hold-lock"  # the test process itself holds the run directory's lock


def missing_manifest(case):
    return write_recipe(data={"manifests": ["nowhere/manifest.json"]})


def init_dir_exists(case):
    os.makedirs("init/keep")
    with open("init/keep/mine.txt", "w") as f:
        f.write("not ablate's\n")
    return write_recipe()


def damaged_checkpoints(*steps, status="completed"):
    """Checkpoints whose train_state.json is damaged, in a run whose status is ``status``."""

    def setup(case):
        for step in steps:
            d = f"{RUN}/checkpoints/step_{step:08d}"
            os.makedirs(f"{d}/weights")
            with open(f"{d}/train_state.json", "w") as f:
                f.write('{"step": ' + str(step) + ', "fil')
        with open(f"{RUN}/status.json", "w") as f:
            json.dump({"state": status, "step": max(steps)}, f)
        return write_recipe()

    return setup


def checkpoint_without_state(case):
    os.makedirs(f"{RUN}/checkpoints/step_00000002/weights")
    return write_recipe()


# id, setup(case) -> recipe path, argv after the recipe, fragments of the one line
CASES = [
    # ---- compile
    ("compile-missing-manifest", missing_manifest, ["compile"], ("data.manifests[0]", "not found")),
    ("compile-damaged-manifest", damaged_manifest, ["compile"], ("data/copy/manifest.json",)),
    (
        "compile-manifest-array",
        lambda c: damaged_manifest(c, b"[1, 2]"),
        ["compile"],
        ("data/copy/manifest.json",),
    ),
    (
        "compile-truncated-bin",
        truncated_bin,
        ["compile"],
        ("toyworld/code.exec", "no longer match the manifest"),
    ),
    (
        "compile-cache-dir-is-a-file",
        a_file_at("cache"),
        ["compile"],
        ("data.cache_dir", "cache is not a directory"),
    ),
    (
        "compile-cache-parent-is-a-file",
        lambda c: (a_file_at("blocker")(c), write_recipe(data={"cache_dir": "blocker/cache"}))[1],
        ["compile"],
        ("data.cache_dir", "is not a directory"),
    ),
    (
        "compile-run-dir-is-a-file",
        a_file_at(RUN),
        ["compile"],
        ("run_dir", "runs/tiny is not a directory"),
    ),
    (
        "compile-run-parent-is-a-file",
        lambda c: (a_file_at("elsewhere")(c), write_recipe(run_dir="elsewhere/tiny"))[1],
        ["compile"],
        ("run_dir", "is not a directory"),
    ),
    ("compile-run-dir-locked", HOLD_LOCK, ["compile"], ("run directory runs/tiny", "in use by")),
    (
        "compile-cache-read-only",
        read_only_dir("cache", "data__cache_dir"),
        ["compile"],
        ("cannot write", "read-only"),
    ),
    (
        "compile-run-dir-read-only",
        read_only_dir("tiny", "run_dir"),
        ["compile"],
        ("ro/tiny", "read-only"),
    ),
    ("compile-unknown-key", recipe_with(trainng={}), ["compile"], ("unknown key 'trainng'",)),
    (
        "compile-unknown-domain",
        recipe_with(stages=[{"name": "s", "mix": {"maths": {"tokens": "1K"}}}]),
        ["compile"],
        ("maths",),
    ),
    (
        "compile-too-many-epochs",
        recipe_with(stages=[{"name": "s", "mix": {"code": {"tokens": "900M"}}}]),
        ["compile"],
        ("epochs > max_epochs",),
    ),
    # ---- compile --dry-run: the same refusals, and nothing created
    ("dry-run-missing-manifest", missing_manifest, ["compile", "--dry-run"], ("not found",)),
    (
        "dry-run-damaged-manifest",
        damaged_manifest,
        ["compile", "--dry-run"],
        ("data/copy/manifest.json",),
    ),
    (
        "dry-run-truncated-bin",
        truncated_bin,
        ["compile", "--dry-run"],
        ("no longer match the manifest",),
    ),
    (
        "dry-run-unknown-key",
        recipe_with(trainng={}),
        ["compile", "--dry-run"],
        ("unknown key 'trainng'",),
    ),
    (
        "dry-run-bad-batch",
        recipe_with(training__global_batch_size=7),
        ["compile", "--dry-run"],
        ("global_batch_size",),
    ),
    # ---- train
    (
        "train-damaged-plan",
        run_file("plan.json", b'{"fingerprint": '),
        ["train"],
        ("runs/tiny/plan.json", "damaged"),
    ),
    (
        "train-plan-not-object",
        run_file("plan.json", b"[1]"),
        ["train"],
        ("runs/tiny/plan.json", "different recipe"),
    ),
    (
        "train-plan-other-recipe",
        recipe_with(seed=8),
        ["train"],
        ("plan.json: compiled from a different recipe",),
    ),
    (
        "train-damaged-status",
        run_file("status.json", b'{"state": "runn'),
        ["train"],
        ("runs/tiny/status.json", "damaged status file"),
    ),
    (
        "train-status-not-object",
        run_file("status.json", b'["running"]'),
        ["train"],
        ("runs/tiny/status.json", "damaged status file"),
    ),
    (
        "train-status-binary",
        run_file("status.json", b"\xff\xfe\x00"),
        ["train"],
        ("runs/tiny/status.json",),
    ),
    ("train-run-dir-is-a-file", a_file_at(RUN), ["train"], ("run_dir", "is not a directory")),
    (
        "train-cache-dir-is-a-file",
        a_file_at("cache"),
        ["train"],
        ("data.cache_dir", "is not a directory"),
    ),
    (
        "train-cache-read-only",
        read_only_dir("cache", "data__cache_dir"),
        ["train"],
        ("cannot write", "read-only"),
    ),
    (
        "train-run-dir-read-only",
        read_only_dir("tiny", "run_dir"),
        ["train"],
        ("ro/tiny", "read-only"),
    ),
    ("train-run-dir-locked", HOLD_LOCK, ["train"], ("run directory runs/tiny", "in use by", "pid")),
    ("train-missing-manifest", missing_manifest, ["train"], ("data.manifests[0]", "not found")),
    ("train-damaged-manifest", damaged_manifest, ["train"], ("data/copy/manifest.json",)),
    ("train-truncated-bin", truncated_bin, ["train"], ("no longer match the manifest",)),
    (
        "train-reset-optimizer-no-checkpoint",
        recipe_with(),
        ["train", "--reset-optimizer"],
        ("--reset-optimizer", "no checkpoint"),
    ),
    (
        "train-reset-optimizer-incomplete-checkpoint",
        checkpoint_without_state,
        ["train", "--reset-optimizer"],
        ("--reset-optimizer", "no checkpoint"),
    ),
    (
        "train-reset-optimizer-resume-never",
        recipe_with(),
        ["train", "--reset-optimizer", "--resume", "never"],
        ("--reset-optimizer", "--resume never"),
    ),
    (
        "train-every-checkpoint-damaged",
        damaged_checkpoints(2, 4),
        ["train"],
        (
            "no complete checkpoint left",
            "step_00000004",
            "train_state.json is damaged",
            "--resume never",
        ),
    ),
    (
        "train-resume-auto-completed-run-damaged",
        damaged_checkpoints(8),
        ["train", "--resume", "auto"],
        ("no complete checkpoint left",),
    ),  # the tree is unchanged: status.json stays completed
    (
        "train-reset-optimizer-damaged",
        damaged_checkpoints(2, status="failed"),
        ["train", "--reset-optimizer"],
        ("no complete checkpoint left",),
    ),
    ("train-layout-ep", recipe_with(parallelism={"ep": 3}), ["train"], ("parallelism.ep",)),
    (
        "train-save-init-existing-dir",
        init_dir_exists,
        ["train", "--save-init", "init/keep"],
        ("--save-init", "init/keep already exists"),
    ),
    (
        "train-save-init-existing-file",
        a_file_at("init.ckpt"),
        ["train", "--save-init", "init.ckpt"],
        ("--save-init", "already exists"),
    ),
    (
        "train-save-init-parent-file",
        a_file_at("blocker"),
        ["train", "--save-init", "blocker/init"],
        ("--save-init", "is not a directory"),
    ),
    ("train-recipe-missing", lambda c: "absent.yaml", ["train"], ("absent.yaml",)),
    ("train-bad-lr", recipe_with(training__optimizer={"lr": -1.0}), ["train"], ("lr",)),
]


@pytest.mark.parametrize(
    "setup, argv, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_refused(case, capsys, setup, argv, fragments):
    from ablate.io import exclusive_lock

    if setup == HOLD_LOCK:
        recipe = write_recipe()
        held = exclusive_lock(os.path.join(RUN, ".lock"), "run directory runs/tiny")
    else:
        recipe = setup(case)
        held = None
    full = [argv[0], recipe, *argv[1:]]
    if held is not None:
        with held:
            assert_refused(full, *fragments, watch=[case], capsys=capsys)
    else:
        assert_refused(full, *fragments, watch=[case], capsys=capsys)


def test_there_are_enough_cases():
    assert len(CASES) >= 30


# ------------------------------------------------------------ what must succeed, writing nothing


def test_dry_run_leaves_an_existing_cache_unchanged(case, cli):
    before = tree_state(case)
    r = cli("compile", write_recipe(), "--dry-run")
    assert r.rc == 0, r.err
    assert "stage code" in r.out
    # the recipe file was rewritten with the same bytes: nothing else was touched
    assert tree_state(case) == before


def test_dry_run_creates_no_cache(case, cli):
    shutil.rmtree("cache")
    shutil.rmtree("runs")
    r = cli("compile", write_recipe(), "--dry-run")
    assert r.rc == 0, r.err
    assert not os.path.exists("cache") and not os.path.exists("runs")


def test_compile_replaces_a_damaged_plan_and_rebuilds_damaged_cache_entries(case, cli):
    """plan.json is compile's own output: rewritten. A damaged cached index (metadata, or an
    array shorter than its metadata says) and a damaged blend are rebuilt, never used."""
    import glob

    good = {p: open(p, "rb").read() for p in glob.glob("cache/**/*.npy", recursive=True)}
    plan = open(f"{RUN}/plan.json").read()
    with open(f"{RUN}/plan.json", "w") as f:
        f.write("{ damaged")
    meta = sorted(glob.glob("cache/indices/*/meta.json"))[0]
    with open(meta, "w") as f:
        f.write("\x00garbage")
    shuffle = sorted(glob.glob("cache/indices/*/shuffle_index.npy"))[-1]
    os.truncate(shuffle, os.path.getsize(shuffle) - 8)
    blend = sorted(glob.glob("cache/blends/*dataset_index.npy"))[0]
    os.truncate(blend, 10)
    r = cli("compile", write_recipe())
    assert r.rc == 0, r.err
    assert open(f"{RUN}/plan.json").read() == plan
    assert {p: open(p, "rb").read() for p in glob.glob("cache/**/*.npy", recursive=True)} == good
    assert not glob.glob("cache/**/*.tmp-*", recursive=True)
