"""Sweeps without a scheduler: spec, expansion, pre-compile, the local executor, sbatch rendering,
errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from conftest import link_toyworld
from ablate.errors import AblateError
from ablate.sweep.paths import resolve
from conftest import assert_one_line_error
from sweep_helpers import DENSITY, TEXT, assert_tokens_match_plan, base, read_jsonl, write_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory, toyworld_root):
    root = tmp_path_factory.mktemp("sweep")
    link_toyworld(toyworld_root, root)
    return root


@pytest.fixture
def here(world, monkeypatch):
    monkeypatch.chdir(world)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return world


# ------------------------------------------------------------------ field paths


def test_paths_match_the_longest_key_and_name_list_items():
    tree = {
        "stages": [
            {"name": "code", "mix": {}},
            {"name": "math", "mix": {"math": {"density": {"math": 0.2, "math.structured": 0.3}}}},
        ]
    }
    assert resolve(tree, "stages.1.mix.math.density.math.structured", "w") == [
        "stages",
        1,
        "mix",
        "math",
        "density",
        "math.structured",
    ]
    assert resolve(tree, "stages.math.mix.math.density.math", "w") == [
        "stages",
        1,
        "mix",
        "math",
        "density",
        "math",
    ]
    with pytest.raises(
        AblateError,
        match="no field .math.text. under stages.1.mix.math.density in the recipe "
        ".fields there: math, math.structured.",
    ):
        resolve(tree, "stages.1.mix.math.density.math.text", "w")
    with pytest.raises(AblateError, match="has no item 'general'.*names code, math"):
        resolve(tree, "stages.general.mix", "w")


# ------------------------------------------------------------------ expansion


def test_expand_grid_zip_variants_seeds_into_resolved_recipes(here, cli):
    path = write_sweep(
        here,
        "axes",
        grid={"training.optimizer.lr": [0.001, 0.002]},
        zip={DENSITY: [0.25, 0.75], TEXT: [0.75, 0.25]},
        variants=[
            {"name": "narrow", "set": {"model.num_attention_heads": 2}},
            {"name": "deep", "set": {"model.num_layers": 3}},
        ],
        seeds=[1, 2],
        point_name="{sweep}-lr{lr}-d{math.structured}-{variant}-s{seed}",
    )
    r = cli("sweep", "expand", path, "--no-compile")
    assert r.rc == 0, r.err
    sweep = json.load(open(here / "runs" / "axes" / "sweep.json"))
    names = [p["name"] for p in sweep["points"]]
    assert len(names) == 16 == len(set(names))
    assert names[0] == "axes-lr0.001-d0.25-narrow-s1" and names[-1] == "axes-lr0.002-d0.75-deep-s2"
    for p in sweep["points"]:
        recipe = yaml.safe_load(open(os.path.join(p["run_dir"], "recipe.yaml")))
        v = p["values"]
        assert recipe["name"] == p["name"] and recipe["run_dir"] == p["run_dir"] == str(
            here / "runs" / "axes" / p["name"]
        )
        assert recipe["training"]["optimizer"]["lr"] == v["lr"] and recipe["seed"] == v["seed"]
        assert recipe["stages"][0]["mix"]["math"]["density"] == {
            "math.structured": v["math.structured"],
            "math.text": v["math.text"],
        }
        assert recipe["model"]["num_attention_heads"] == (
            2 if v["variant"] == "narrow" else 8
        )  # toy-moe preset: 8
        assert recipe["model"]["num_layers"] == (3 if v["variant"] == "deep" else 2)
        # paths are absolute: a job may start in any directory
        assert recipe["data"]["manifests"] == [str(here / "data" / "toyworld" / "manifest.json")]
        assert recipe["data"]["cache_dir"] == str(here / "cache")
    assert "axes-lr0.001-d0.25-narrow-s1" in r.out and "math.structured" in r.out.splitlines()[1]


def test_a_preset_axis_swaps_the_whole_preset(here, cli):
    raw = base(model={"preset": "toy-moe", "num_layers": 2})
    path = write_sweep(
        here,
        "presets",
        base=raw,
        grid={"model.preset": ["toy-moe", "moe-100m"]},
        point_name="{sweep}-{preset}",
    )
    assert cli("sweep", "expand", path, "--no-compile").rc == 0
    big = yaml.safe_load(open(here / "runs" / "presets" / "presets-moe-100m" / "recipe.yaml"))[
        "model"
    ]
    assert (
        big["preset"] == "moe-100m" and big["hidden_size"] == 512 and big["num_layers"] == 2
    )  # explicit field kept


def test_expand_precompiles_every_point_with_shared_indices(here, cli):
    path = write_sweep(
        here, "dens", zip={DENSITY: [0, 0.25, 0.75, 1.0], TEXT: [1.0, 0.75, 0.25, 0]}
    )
    r = cli("sweep", "expand", path)
    assert r.rc == 0, r.err
    root = here / "runs" / "dens"
    points = json.load(open(root / "sweep.json"))["points"]
    assert [p["name"] for p in points] == [
        "dens-math.structured=0",
        "dens-math.structured=0.25",
        "dens-math.structured=0.75",
        "dens-math.structured=1",
    ]
    keys = set()
    for p in points:
        plan = json.load(open(os.path.join(p["run_dir"], "plan.json")))
        structured = plan["domains"].get("math.structured", {}).get("tokens_realized", 0)
        text = plan["domains"].get("math.text", {}).get("tokens_realized", 0)
        assert abs(structured - p["values"]["math.structured"] * 3072) <= 64  # within one sequence
        assert abs(text - p["values"]["math.text"] * 3072) <= 64
        keys |= {d["cache_key"] for s in plan["stages"] for d in s["datasets"]}
        assert all(s["blend_key"] for s in plan["stages"])
    # one index per dataset, shared by all four points
    indices = [d for d in os.listdir(here / "cache" / "indices") if "." not in d]
    assert sorted(indices) == sorted(keys) and len(keys) == 3  # math.structured, math.text, general
    assert "steps" in r.out and "dens-math.structured=0.25" in r.out


def test_every_sweep_file_in_recipes_expands(monkeypatch, tmp_path, toyworld_root):
    from ablate.sweep.expand import build_points
    from ablate.sweep.spec import load_sweep

    # their paths are relative to the repository root; a swarm reads the prepared toy world
    os.symlink(os.path.join(REPO, "recipes"), tmp_path / "recipes")
    link_toyworld(toyworld_root, tmp_path)
    monkeypatch.chdir(tmp_path)
    paths = sorted(
        os.path.join("recipes", folder, f)
        for folder in ("sweeps", "study")
        for f in os.listdir(os.path.join("recipes", folder))
        if f.endswith(".yaml")
    )
    assert len(paths) >= 6
    for path in paths:
        points = build_points(load_sweep(path))  # parsed and validated; nothing written
        assert len(points) >= 2, path
        assert "ablate sweep" in open(path).read().split("\nname:")[0], (
            path
        )  # the header says how to run it


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "body, fragments",
    [
        (
            {"grid": {"training.optimizer.learning_rate": [1]}},
            [
                "grid.training.optimizer.learning_rate",
                "no field 'learning_rate' under training.optimizer",
                "lr",
            ],
        ),
        (
            {"grid": {"stages.mixed.mix.code.tokens": ["1K"]}},
            ["grid.stages.mixed.mix.code.tokens", "no field 'code'"],
        ),
        ({"grid": {"training.optimizer.lr": []}}, ["grid.training.optimizer.lr", "empty axis"]),
        ({"seeds": []}, ["seeds", "empty axis"]),
        ({"variants": []}, ["variants", "empty axis"]),
        (
            {"zip": {DENSITY: [0.25, 0.5], TEXT: [0.75]}},
            ["zip", "differ in length", f"{DENSITY}: 2", f"{TEXT}: 1"],
        ),
        (
            {"grid": {"training.optimizer.lr": [0.001, 0.002]}, "point_name": "{sweep}"},
            ["point_name", "points 0 and 1 are both named 'bad'"],
        ),
        (
            {"grid": {"training.optimizer.lr": [0.001]}, "point_name": "{sweep}-{learning_rate}"},
            ["point_name", "unknown field {learning_rate}", "lr"],
        ),
        (
            {"zip": {DENSITY: [0.25, 0.5], TEXT: [0.75, 0.75]}},
            [
                "point bad-math.structured=0.5",
                "stages[0].mix.math.density: fractions sum to 1.25, not 1",
            ],
        ),
        (
            {"grid": {"training.seq_length": [64, 256]}},
            [
                "point bad-seq_length=256",
                "training.seq_length: 256 is longer than the model's max_position_embeddings 128",
            ],
        ),
        (
            {"grid": {"stages.mixed.mix.general.tokens": ["1K", "900M"]}},
            ["point bad-tokens=900M", "stages[0].mix.general", "max_epochs"],
        ),
        (
            {
                "grid": {"training.optimizer.lr": [0.001]},
                "variants": [{"name": "a", "set": {"training.optimizer.lr": 0.1}}],
            },
            [
                "variants[0].set.training.optimizer.lr",
                "sets training.optimizer.lr, which grid.training.optimizer.lr also sets",
            ],
        ),
        ({"executor": "kubernetes"}, ["executor", "'kubernetes' is not allowed", "local, slurm"]),
        ({"slurm": {"nodes": 0}}, ["slurm.nodes", "0 is out of range", "an integer >= 1"]),
        ({"colour": "blue"}, ["unknown key 'colour'"]),
    ],
)
def test_bad_sweep_files_fail_in_one_line_and_write_nothing(here, cli, body, fragments):
    path = write_sweep(here, "bad", **body)
    assert_one_line_error(cli("sweep", "expand", path), os.path.basename(path), *fragments)
    assert not (here / "runs" / "bad").exists()


def test_a_dataset_file_that_no_longer_matches_its_manifest_fails_naming_the_point(
    world, tmp_path, monkeypatch, cli
):
    # a copy of the toy world whose math.text .idx was rewritten after `ablate data prepare`
    shutil.copytree(world / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    idx = tmp_path / "data" / "toyworld" / "toyworld" / "math.text.idx"
    idx.write_bytes(idx.read_bytes() + b"\0")
    path = write_sweep(tmp_path, "stale", grid={"training.optimizer.lr": [0.001, 0.002]})
    assert_one_line_error(
        cli("sweep", "expand", path),
        "stale.yaml: point",
        "math.text",
        "files no longer match the manifest",
    )
    assert not (tmp_path / "runs" / "stale").exists()  # checked before anything is written


def test_a_missing_base_recipe(here, cli):
    path = write_sweep(here, "nobase", base="recipes/none.yaml")
    assert_one_line_error(
        cli("sweep", "expand", path), "nobase.yaml: base", "no such recipe file 'recipes/none.yaml'"
    )


def test_a_started_point_is_never_rewritten_with_another_recipe(here, cli):
    path = write_sweep(here, "fixed", grid={"training.optimizer.lr": [0.001]}, point_name="p")
    assert cli("sweep", "expand", path, "--no-compile").rc == 0
    (here / "runs" / "fixed" / "p" / "status.json").write_text('{"state": "running"}')
    path = write_sweep(here, "fixed", grid={"training.optimizer.lr": [0.002]}, point_name="p")
    assert_one_line_error(
        cli("sweep", "expand", path, "--no-compile"),
        "point p:",
        "started run of a different recipe",
    )
    assert (
        yaml.safe_load(open(here / "runs" / "fixed" / "p" / "recipe.yaml"))["training"][
            "optimizer"
        ]["lr"]
        == 0.001
    )


def test_slurm_commands_missing_is_one_line(here, cli, monkeypatch):
    path = write_sweep(here, "noslurm", point_name="p")
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))  # python and ablate, no Slurm
    assert_one_line_error(
        cli("sweep", "submit", path, "--executor", "slurm"), "slurm: squeue not found on PATH"
    )


# ------------------------------------------------------------------ sbatch rendering


def test_rendered_sbatch_for_four_nodes_of_eight_gpus(here, cli):
    path = write_sweep(
        here,
        "big",
        point_name="p",
        executor="slurm",
        slurm={
            "nodes": 4,
            "gpus_per_node": 8,
            "partition": "gpu",
            "account": "proj",
            "time": "04:00:00",
            "signal_seconds": 300,
            "extra": ["--qos=high", "#SBATCH --exclusive"],
            "setup": ["module load cuda"],
            "env": {"NCCL_DEBUG": "WARN"},
        },
        eval={"tasks": ["bpb", "probes"], "step": "all"},
    )
    r = cli(
        "sweep", "submit", path, "--dry-run"
    )  # renders to stdout, writes nothing; needs no Slurm
    assert r.rc == 0, r.err
    run_dir = here / "runs" / "big" / "p"
    assert not run_dir.exists()
    os.makedirs(run_dir / "slurm")
    for chunk in r.out.split("#### sbatch script ")[1:]:  # "<path> (not written)\n<script>"
        head, script = chunk.split("\n", 1)
        with open(head.split(" (not written)")[0], "w") as f:
            f.write(script.split("\nrendered ")[0].rstrip("\n") + "\n")
    text = (run_dir / "slurm" / "train.sbatch").read_text()
    sbatch = [row for row in text.splitlines() if row.startswith("#SBATCH")]
    for line in (
        "--nodes=4",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--partition=gpu",
        "--account=proj",
        "--time=04:00:00",
        "--signal=USR1@300",
        "--requeue",
        "--qos=high",
        "--exclusive",
        "--open-mode=append",
        f"--output={run_dir}/slurm/train-%j.out",
        f"--chdir={here}",
    ):
        assert f"#SBATCH {line}" in sbatch, line
    # one srun task per node, each a torchrun that joins the c10d rendezvous on the first node
    assert 'RDZV_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    launch = text[text.index("srun ") : text.index("rc=$?")]
    assert 'srun --nodes="$SLURM_NNODES" --ntasks-per-node=1' in launch
    for arg in (
        '--nnodes="$SLURM_NNODES"',
        '--node-rank="$SLURM_NODEID"',
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        '--rdzv-endpoint="$RDZV_HOST:$RDZV_PORT"',
        '--rdzv-id="$SLURM_JOB_ID"',
        '-m ablate.cli train "$RUN_DIR/recipe.yaml" --resume auto',
    ):
        assert arg in launch, arg
    # USR1 reaches the trainers, not torchrun's agent; a preempted run requeues itself
    assert launch.index('trap "" USR1; exec "$PYTHON" -m torch.distributed.run') < launch.index(
        "--nnodes"
    )
    assert (
        'if [ "$state" = preempted ]; then' in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    )
    assert (
        "module load cuda" in text
        and "export NCCL_DEBUG=WARN" in text
        and f"RUN_DIR={run_dir}" in text
    )
    assert subprocess.run(["bash", "-n", str(run_dir / "slurm" / "train.sbatch")]).returncode == 0
    ev = (run_dir / "slurm" / "eval.sbatch").read_text()
    assert "#SBATCH --nodes=1" in ev and "#SBATCH --gpus-per-node=1" in ev
    assert f"-m ablate.cli eval {run_dir} --tasks bpb,probes --step all" in ev
    assert subprocess.run(["bash", "-n", str(run_dir / "slurm" / "eval.sbatch")]).returncode == 0
    assert not (run_dir / "slurm.json").exists()  # nothing submitted


# ------------------------------------------------------------------ the local executor


def test_local_sweep_runs_each_point_once_and_cancel_then_retry_resumes(here, cli):
    """Two points run one after another; submit again starts nothing; a cancelled point is
    skipped until --retry, which resumes it from its checkpoint to the same losses."""
    longer = base(
        stages=[
            {
                "name": "mixed",
                "mix": {  # 31 steps: time to cancel one mid-run
                    "math": {
                        "tokens": "12K",
                        "density": {"math.structured": 0.5, "math.text": 0.5},
                    },
                    "general": {"tokens": "4K"},
                },
            }
        ]
    )
    path = write_sweep(
        here,
        "loc",
        base=longer,
        zip={DENSITY: [0.25, 0.75], TEXT: [0.75, 0.25]},
        point_name="d{math.structured}",
    )
    r = cli("sweep", "submit", path)
    assert r.rc == 0, r.err
    root = here / "runs" / "loc"
    for name in ("d0.25", "d0.75"):
        assert json.load(open(root / name / "status.json"))["state"] == "completed"
        assert_tokens_match_plan(root / name)
    r = cli("sweep", "submit", path)
    assert r.rc == 0 and "skipped: 2 completed" in r.out and "nothing to submit" in r.out, r.err
    r = cli("sweep", "status", path)
    lines = r.out.splitlines()
    assert (
        lines[0].split()[:5] == ["point", "state", "job", "step", "loss"]
        and "tokens/math.structured" in lines[0]
    )
    assert (
        lines[2].split()[:2] == ["d0.25", "completed"]
        and "31/31" in lines[2]
        and lines[-1] == "2 completed"
    )
    states = [json.loads(row) for row in cli("sweep", "status", path, "--json").out.splitlines()]
    plan = json.load(open(root / "d0.75" / "plan.json"))
    assert (
        states[1]["tokens"]["math.structured"]
        == plan["domains"]["math.structured"]["tokens_realized"]
    )

    # a second sweep with the same recipe, stopped by `ablate sweep cancel` mid-run
    path2 = write_sweep(
        here,
        "loc2",
        base=longer,
        zip={DENSITY: [0.25], TEXT: [0.75]},
        point_name="d{math.structured}",
    )
    metrics = here / "runs" / "loc2" / "d0.25" / "metrics.jsonl"
    runner = subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", "sweep", "submit", path2],
        cwd=here,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (
        metrics.exists() and read_jsonl(metrics) and read_jsonl(metrics)[-1]["step"] >= 2
    ):
        assert runner.poll() is None, runner.communicate()
        time.sleep(0.05)
    r = cli("sweep", "cancel", path2)
    assert r.rc == 0 and "cancelled 1 point(s)" in r.out, r.err
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err
    status = json.load(open(here / "runs" / "loc2" / "d0.25" / "status.json"))
    assert status["state"] == "preempted" and status["step"] < 31, status
    assert "cancelled" in cli("sweep", "status", path2).out
    r = cli("sweep", "submit", path2)
    assert "1 cancelled (--retry resubmits)" in r.out and "nothing to submit" in r.out
    r = cli("sweep", "submit", path2, "--retry")
    assert r.rc == 0, r.err
    assert json.load(open(here / "runs" / "loc2" / "d0.25" / "status.json"))["state"] == "completed"
    record = json.load(open(here / "runs" / "loc2" / "d0.25" / "local.json"))
    assert len(record["history"]) == 1 and record["history"][0]["cancelled"] is True
    assert "resuming at step" in (here / "runs" / "loc2" / "d0.25" / "train.log").read_text()
    same = read_jsonl(root / "d0.25" / "metrics.jsonl")
    resumed = read_jsonl(metrics)
    assert [m["step"] for m in resumed] == list(range(1, 32))
    assert [m["loss"] for m in resumed] == [
        m["loss"] for m in same
    ]  # bitwise: resume is exact on CPU


def test_a_failed_point_is_shown_with_its_reason_and_retried_only_when_asked(here, cli, capsys):
    # expert parallelism 2 needs 2 processes: valid on paper, fails when the local executor runs
    # it alone
    path = write_sweep(here, "fails", base=base(parallelism={"ep": 2}), point_name="p")
    r = cli("sweep", "submit", path)
    assert r.rc == 1  # a point that failed: exit 1, named on stderr
    assert "p: training exited 2" in r.out and "point p: training exited 2 (log: " in r.err, (
        r.out + r.err
    )
    assert (
        "parallelism.ep: 2 does not divide the 1"
        in (here / "runs" / "fails" / "p" / "train.log").read_text()
    )
    table = cli("sweep", "status", path).out.splitlines()
    assert table[0].split()[-1] == "note" and table[2].split()[:2] == ["p", "failed"]
    # the note is training's own exit reason (status.json), else what the record says
    assert ("recipe.yaml" in table[2] or "ended before training started" in table[2]) and table[
        -1
    ] == "1 failed"
    r = cli("sweep", "submit", path)
    assert "skipped: 1 failed (--retry resubmits)" in r.out and "submitted 0 point(s)" in r.out
    r = cli("sweep", "submit", path, "--retry")
    assert r.rc == 1
    assert "ran 1 point(s): 1 failed" in r.out and "p: training exited 2" in r.out
    record = json.load(open(here / "runs" / "fails" / "p" / "local.json"))
    assert record["returncode"] == 2 and len(record["history"]) == 1
