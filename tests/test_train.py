"""Training on CPU: budgets met at run time, DP and EP on 2 processes, exact resume, routing
counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_CADENCE, link_toyworld, tiny_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable

TINY = tiny_recipe(
    "tiny",
    [
        {"name": "code", "mix": {"code": {"tokens": "4K"}}},  # 8 steps
        {"name": "math", "mix": {"math": {"tokens": "3K"}, "general": {"tokens": "1K"}}},  # 8
    ],
    cadence={**TINY_CADENCE, "keep_checkpoints": 100},
)


@pytest.fixture(scope="module")
def world(tmp_path_factory, toyworld_root):
    root = tmp_path_factory.mktemp("train")
    link_toyworld(toyworld_root, root)
    return root


def write(root, name: str, **changes) -> str:
    raw = json.loads(json.dumps(TINY))
    raw["name"] = name
    for dotted, value in changes.items():
        node, keys = raw, dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def launch(
    root, recipe: str, nproc: int = 1, *extra: str, env: dict | None = None
) -> subprocess.Popen:
    if nproc == 1:
        cmd = [PYTHON, os.path.join(REPO, "launchers", "pretrain.py"), recipe, *extra]
    else:
        cmd = [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(_free_port()),
            os.path.join(REPO, "launchers", "pretrain.py"),
            recipe,
            *extra,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        cmd,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def run(
    root, recipe: str, nproc: int = 1, *extra: str, timeout: int = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    p = launch(root, recipe, nproc, *extra, env=env)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def metrics(root, name: str) -> list[dict]:
    with open(root / "runs" / name / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def plan_of(root, name: str) -> dict:
    with open(root / "runs" / name / "plan.json") as f:
        return json.load(f)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_budgets_met(root, name: str):
    """At the last step of every stage, tokens/<domain> equals the plan's cumulative realized
    tokens, and a stage's steps consume only that stage's domains."""
    rows = {r["step"]: r for r in metrics(root, name)}
    plan = plan_of(root, name)
    step, cumulative = 0, {}
    for stage in plan["stages"]:
        before = dict(cumulative)
        step += stage["steps"]
        for dom, t in stage["domains"].items():
            cumulative[dom] = cumulative.get(dom, 0) + t["tokens_realized"]
        row = rows[step]
        assert row["stage"] == stage["name"]
        for dom in plan["domains"]:
            assert row[f"tokens/{dom}"] == cumulative.get(dom, 0), (stage["name"], dom)
        for dom in plan["domains"]:  # domains outside this stage's mix did not move during it
            if dom not in stage["domains"]:
                assert cumulative.get(dom, 0) == before.get(dom, 0)
                assert row[f"loss/{dom}"] is None


# ------------------------------------------------------------------ runs


def test_single_process_run_meets_every_stage_budget_and_loss_falls(world):
    tmp = world / "tmp-single"
    tmp.mkdir()
    r = run(world, write(world, "single"), env={"TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = metrics(world, "single")
    assert [row["step"] for row in rows] == list(range(1, 17))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert_budgets_met(world, "single")
    status = json.load(open(world / "runs" / "single" / "status.json"))
    assert status["state"] == "completed" and status["step"] == 16
    assert "step 16/16" in r.stdout and "ETA" in r.stdout
    assert not list(tmp.glob("ablate-pg-*"))  # the process group's file store is gone with the run


@pytest.mark.parametrize("parallel", [{"ep": 1}, {"ep": 2}], ids=["dp2", "dp2-ep2"])
def test_two_processes_data_and_expert_parallel(world, parallel):
    name = f"two-{parallel['ep']}"
    r = run(world, write(world, name, parallelism=parallel), 2)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = metrics(world, name)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert_budgets_met(world, name)
    routing = np.load(sorted((world / "runs" / name / "routing").glob("*.npz"))[-1])
    # all-reduced over both ranks: every token of the last flush window, k slots each
    assert np.allclose(routing["count"].sum(-1), 2 * routing["ntok"])


def test_two_process_checkpoint_is_megatron_dist_checkpoint(world):
    """megatron-core dist_checkpointing: sharded weights + optimizer, each rank's RNG, the
    layout."""
    ck = sorted((world / "runs" / "two-2" / "checkpoints").glob("step_*"))[-1]
    assert sorted(p.name for p in ck.iterdir()) == ["rng", "train_state.json", "weights"]
    assert sorted(p.name for p in (ck / "rng").iterdir()) == ["rank0.pt", "rank1.pt"]
    assert (ck / "weights" / "metadata.json").exists()
    state = json.load(open(ck / "train_state.json"))
    assert (
        state["step"] == 16
        and state["world_size"] == 2
        and state["consumed_samples"] == {"code": 64, "math": 64}
    )
    assert state["layout"] == {
        "world_size": 2,
        "tp": 1,
        "pp": 1,
        "vp": 1,
        "ep": 2,
        "cp": 1,
        "dp": 2,
    }


# ------------------------------------------------------------------ exact resume


def kill_at(root, recipe: str, step: int) -> int:
    """Start training, SIGKILL it once metrics show ``step``; returns the step it had reached."""
    p = launch(root, recipe)
    path = root / "runs" / yaml.safe_load(open(recipe))["name"] / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if lines and json.loads(lines[-1])["step"] >= step:
                break
        if p.poll() is not None:
            raise AssertionError(p.stderr.read()[-3000:])
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return json.loads(path.read_text().splitlines()[-1])["step"]


@pytest.mark.parametrize("kill_step", [5, 8], ids=["mid-stage", "stage-boundary"])
def test_kill_9_and_resume_gives_bitwise_identical_losses(world, kill_step):
    reference = metrics(world, "single") if (world / "runs" / "single").exists() else None
    if reference is None:
        assert run(world, write(world, "single")).returncode == 0
        reference = metrics(world, "single")
    name = f"killed-{kill_step}"
    recipe = write(world, name)
    reached = kill_at(world, recipe, kill_step)
    assert reached < 16, "the run finished before it could be killed"
    r = run(world, recipe, 1, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at step" in r.stdout
    resumed = metrics(world, name)
    assert [row["step"] for row in resumed] == list(range(1, 17))  # no duplicate or missing steps
    for a, b in zip(reference, resumed):
        for key in a:
            if not key.startswith(("tokens/s", "memory/")):  # wall-clock and memory telemetry
                assert a[key] == b[key], (a["step"], key, a[key], b[key])
    # routing counts too: every flush file of the resumed run equals the uninterrupted run's
    ref_files = sorted(p.name for p in (world / "runs" / "single" / "routing").glob("*.npz"))
    assert ref_files == sorted(p.name for p in (world / "runs" / name / "routing").glob("*.npz"))
    for f in ref_files:
        a, b = (
            np.load(world / "runs" / "single" / "routing" / f),
            np.load(world / "runs" / name / "routing" / f),
        )
        for key in a.files:
            assert np.array_equal(a[key], b[key]), (f, key)
    assert not [
        d
        for d in (world / "runs" / name / "checkpoints").iterdir()
        if not (d / "train_state.json").exists()
    ]


# ------------------------------------------------------------------ routing counts


def test_routing_counts_match_an_independent_count_from_router_outputs(world, monkeypatch):
    import tempfile

    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.transformer.moe.router import TopKRouter

    from ablate.recipe.schema import parse_recipe
    from ablate.telemetry.routing import RoutingCapture
    from ablate.train import cpu_compat
    from ablate.train.model import build_model

    monkeypatch.setattr(
        torch.cuda, "current_device", torch.cuda.current_device
    )  # undo cpu_compat afterwards
    cpu_compat.apply()
    cpu_compat._STATE["applied"] = False
    dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    try:
        parallel_state.initialize_model_parallel(1, 1)
        torch.manual_seed(0)
        recipe = parse_recipe(TINY, "tiny")
        model = build_model(recipe, 258, "cpu")
        capture = RoutingCapture(model, num_domains=3)
        seen = []  # independent record of what each router returned
        for layer, router in enumerate(m for m in model.modules() if isinstance(m, TopKRouter)):
            router.register_forward_hook(
                lambda mod, i, out, layer=layer: seen.append(
                    (layer, out[1].clone(), out[0].detach().clone())
                )
            )
        B, S = 3, 16
        tokens = torch.randint(0, 256, (B, S))
        domain_B = torch.tensor([2, 0, 2])
        capture.set_batch_domains(domain_B)
        out = model(tokens, torch.arange(S).expand(B, S), None, labels=tokens)
        out.sum().backward()
        with torch.no_grad():  # a forward without grad (e.g. recomputation, eval) is not counted
            model(tokens, torch.arange(S).expand(B, S), None)
        counts = capture.flush()
        L, E, k = len(capture.routers), 4, 2
        brute = np.zeros((L, 3, E))
        brute_gate = np.zeros((L, 3, E))
        ntok = np.zeros((L, 3))
        for layer, routing_map, probs in seen[:L]:  # only the grad-enabled forward
            for t in range(routing_map.shape[0]):
                d = int(domain_B[t % B])  # token t is (s, b) with t = s * B + b
                ntok[layer, d] += 1
                for e in range(E):
                    if routing_map[t, e]:
                        brute[layer, d, e] += 1
                        brute_gate[layer, d, e] += float(probs[t, e])
        assert np.array_equal(counts["count"], brute)
        assert np.allclose(counts["gate"], brute_gate)
        assert np.array_equal(counts["ntok"], ntok)
        assert np.array_equal(counts["count"].sum(-1), k * counts["ntok"])
        assert counts["ntok"][:, 1].sum() == 0 and counts["ntok"][0, 2] == 2 * S
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


# ------------------------------------------------------------------ clear errors


def one_line_error(r, *fragments):
    # 2 from our process; torchrun reports a failed worker with its own exit code 1
    torchrun = "torch.distributed.run" in r.args
    assert r.returncode == (1 if torchrun else 2), (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr[-2000:]
    if torchrun:
        # torchrun's agent prints its own ChildFailedError traceback; none may come from ablate
        assert "ablate/" not in "".join(
            line for line in r.stderr.splitlines() if line.strip().startswith("File ")
        ), r.stderr
    else:
        assert "Traceback" not in r.stderr, r.stderr[-2000:]
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_a_plan_that_does_not_match_the_recipe(world):
    assert run(world, write(world, "planned")).returncode == 0
    changed = write(world, "planned", stages=[{"name": "code", "mix": {"code": {"tokens": "2K"}}}])
    one_line_error(
        run(world, changed), "plan.json: compiled from a different recipe or data", "ablate compile"
    )


def test_parallel_sizes_that_do_not_divide_the_world(world):
    one_line_error(
        run(world, write(world, "badpar", parallelism={"ep": 4}), 2, timeout=120),
        "parallelism.ep: 4 does not divide the 2",
    )


def test_batch_that_does_not_divide_over_data_parallel_ranks(world):
    one_line_error(
        run(world, write(world, "badbatch", training__micro_batch_size=8), 2, timeout=120),
        "global_batch_size: 8 is not a multiple of micro_batch_size x data-parallel size = 8 x 2",
    )


def test_too_few_devices(world):
    one_line_error(
        run(world, write(world, "nogpu", training__backend="cuda"), timeout=120),
        "training.backend: 'cuda' asked for, but torch sees no GPU",
    )


def test_a_checkpoint_from_a_different_recipe(world):
    assert run(world, write(world, "other")).returncode == 0
    os.remove(
        world / "runs" / "other" / "plan.json"
    )  # as if compiled elsewhere; checkpoints remain
    changed = write(world, "other", seed=8)
    one_line_error(
        run(world, changed), "checkpoint is from a different recipe or data", "--resume never"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_backend_does_not_apply_the_cpu_adaptations(world):
    code = (
        "import sys; sys.argv=['x']; from ablate.recipe.schema import load_recipe; "
        "from ablate.train import backend, cpu_compat;"
        f"r=load_recipe({write(world, 'gpu')!r}); r.training.backend='cuda'; l=backend.init(r);"
        "assert l.backend=='cuda' and not cpu_compat.applied(); print('ok')"
    )
    r = subprocess.run([PYTHON, "-c", code], cwd=world, capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_cpu_backend_applies_them_once():
    code = (
        "import torch; from ablate.train import cpu_compat; cpu_compat.apply(); cpu_compat.apply();"
        "assert cpu_compat.applied() and torch.cuda.current_device() == torch.device('cpu');"
        "import megatron.core.transformer.moe.moe_utils as m; assert m.te_general_gemm is None; "
        "print('ok')"
    )
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
