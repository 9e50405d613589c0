"""megatron-core's engine on CPU/gloo: every parallel layout trains the same model as one process.

All runs start from one saved initialisation (``training.init_from``: megatron's CPU init
draws per-stage and per-expert-rank weights from different streams, so layouts would otherwise
start from different weights) and see the same global batches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from conftest import link_toyworld
from test_train import PYTHON, TINY, assert_budgets_met, metrics, one_line_error, run

TOL = 1e-5  # relative, per step (the bound); the runs below land at ~1e-7


@pytest.fixture(scope="module")
def world(tmp_path_factory, toyworld_root):
    root = tmp_path_factory.mktemp("engine")
    link_toyworld(toyworld_root, root)
    base = _recipe(root, "init")
    r = subprocess.run(
        [PYTHON, "-m", "ablate.cli", "train", base, "--save-init", str(root / "init0")],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def _recipe(root, name: str, parallelism: dict | None = None, **changes) -> str:
    raw = json.loads(json.dumps(TINY))
    raw["name"] = name
    raw["model"]["num_layers"] = 4  # pp2 x vp2: one layer per chunk
    raw["cadence"]["checkpoint_every"] = 8
    raw["cadence"]["routing_flush_every"] = 4
    raw["training"]["init_from"] = str(root / "init0")
    raw["parallelism"] = parallelism or {}
    for dotted, value in changes.items():
        node, keys = raw, dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _losses(root, name):
    return [row["loss"] for row in metrics(root, name)]


def _assert_same_training(root, name, ref, tol=TOL):
    a, b = _losses(root, ref), _losses(root, name)
    assert len(a) == len(b) == 16
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    assert worst <= tol, (name, worst, a, b)
    assert_budgets_met(root, name)
    ref_dir, run_dir = root / "runs" / ref / "routing", root / "runs" / name / "routing"
    files = sorted(p.name for p in ref_dir.glob("*.npz"))
    assert files and files == sorted(p.name for p in run_dir.glob("*.npz"))
    for i, f in enumerate(files):  # the same tokens, counted once per layer whatever the layout
        x, y = np.load(ref_dir / f), np.load(run_dir / f)
        assert np.array_equal(x["ntok"], y["ntok"]) and np.array_equal(
            x["count"].sum(-1), y["count"].sum(-1)
        ), (name, f)
        if i == 0:  # routed to the same experts
            assert np.array_equal(x["count"], y["count"]), (name, f)
        else:  # later, float noise (~1e-7) may flip a router's near-tie: a handful of slots at most
            assert np.abs(x["count"] - y["count"]).sum() <= 1e-3 * x["count"].sum(), (name, f)


@pytest.fixture(scope="module")
def reference(world):
    assert run(world, _recipe(world, "ref")).returncode == 0
    return "ref"


LAYOUTS_2 = {
    "dp2": {},
    "ep2": {"ep": 2},
    "pp2": {"pp": 2},  # 1F1B
    "pp2-vp2": {
        "pp": 2,
        "vp": 2,
    },  # interleaved 1F1B; gloo needs batch_p2p_comm=False (else silently wrong)
    "dp2-distopt": {"distributed_optimizer": True},
    "tp2": {"tp": 2},  # with sequence parallelism (MoE + TP needs it)
    "cp2": {"cp": 2},  # megatron's load-balanced sequence split, SDPA over gathered keys
}


def _ensure_run(world, name: str, par: dict, nproc: int = 2, **changes) -> None:
    """Train ``name`` once per module (later tests resume from its checkpoints)."""
    if (world / "runs" / name / "status.json").exists():
        return
    r = run(world, _recipe(world, name, par, **changes), nproc, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("name", list(LAYOUTS_2))
def test_two_process_layouts_train_the_single_process_model(world, reference, name):
    _ensure_run(world, name, LAYOUTS_2[name])
    _assert_same_training(world, name, reference)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,par", [("tp2-dp2", {"tp": 2}), ("pp2-ep2", {"pp": 2, "ep": 2}), ("pp4", {"pp": 4})]
)  # pp4: middle stages read no tokens
def test_four_process_layouts(world, reference, name, par):
    """World size 4 on 2 cores: ~30 s each."""
    _ensure_run(world, name, par, 4)
    _assert_same_training(world, name, reference)


def test_activation_recomputation_under_pipelining_trains_and_counts_the_same(world, reference):
    """Full recomputation reruns each layer's forward during backward, where 1F1B has already
    moved on to another micro-batch: the routing counts must still be the first forward's."""
    _ensure_run(world, "pp2-recompute", {"pp": 2}, training__recompute="full")
    _assert_same_training(world, "pp2-recompute", reference)


# ------------------------------------------------------------------ precision


def test_bf16_plain_and_distributed_optimizer_are_bitwise_equal_and_track_fp32(world):
    """Gradient clipping off: with it on, the sharded optimizer sums the norm's squares in
    another order (grad norms ~1e-7 apart), so the clip factor and the updates differ in float
    noise; the updates themselves are bitwise the same."""
    noclip = {"training__optimizer": {"clip_grad": 0.0}}
    for name, par, precision in (
        ("bf16", {}, "bf16"),
        ("bf16-distopt", {"distributed_optimizer": True}, "bf16"),
    ):
        _ensure_run(world, name, par, training__precision=precision, **noclip)
        assert_budgets_met(world, name)
    assert run(world, _recipe(world, "fp32-noclip", **noclip)).returncode == 0
    assert _losses(world, "bf16") == _losses(world, "bf16-distopt")
    fp32, bf16 = _losses(world, "fp32-noclip"), _losses(world, "bf16")
    worst = max(abs(a - b) / a for a, b in zip(fp32, bf16))
    assert worst < 0.02, (
        worst,
        fp32,
        bf16,
    )  # bf16 compute, fp32 master weights: within 2% per step


def test_bf16_keeps_fp32_main_params(world):
    """One process: params in bf16, the optimizer's main params in fp32, and an update far
    below bf16's resolution still moves the main params (the master weights exist)."""
    code = f"""
import torch
from ablate.recipe.schema import load_recipe
from ablate.train import backend
from ablate.train.engine import Engine
r = load_recipe({_recipe(world, "bf16-unit", training__precision="bf16")!r})
lay = backend.init(r)
eng = Engine(r, lay, 258, 6)
params = list(eng.parameters())
assert all(p.dtype == torch.bfloat16 for p in params)
mains = [p for g in eng.optimizer.param_groups for p in g["params"]]
assert mains and all(p.dtype == torch.float32 for p in mains), set(p.dtype for p in mains)
before = [m.detach().clone() for m in mains]
for p in params:
    p.main_grad.fill_(1e-3)
eng.set_lr(1e-6)
eng.optimizer.step()
moved = sum(int((m != b).sum()) for m, b in zip(mains, before))
total = sum(m.numel() for m in mains)
assert moved == total, (moved, total)
print("ok")
backend.shutdown()
"""
    r = subprocess.run(
        [PYTHON, "-c", code],
        cwd=world,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


# ------------------------------------------------------------------ resume at another layout


def _resume_as(world, source: str, name: str, par: dict, *extra, nproc: int = 2, **changes):
    """A copy of ``source``'s run at its step-8 checkpoint, resumed under ``par``."""
    src, dst = world / "runs" / source, world / "runs" / name
    shutil.rmtree(dst, ignore_errors=True)
    later = lambda _dir, names: [n for n in names if n.startswith("step_") and int(n[5:13]) > 8]  # noqa: E731
    shutil.copytree(
        src, dst, ignore=later
    )  # checkpoints (and routing files) after step 8 are not there yet
    rows = [json.loads(line) for line in (dst / "metrics.jsonl").read_text().splitlines()]
    (dst / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= 8)
    )
    recipe = _recipe(world, name, par, run_dir=str(dst), **changes)
    raw = yaml.safe_load(open(recipe))
    raw["name"] = source  # the same recipe (its plan names it), another layout and run_dir
    open(recipe, "w").write(yaml.safe_dump(raw))
    return run(world, recipe, nproc, "--resume", "auto", *extra, timeout=400)


@pytest.mark.parametrize(
    "source,name,par,nproc",
    [
        ("dp2", "dp2-to-pp2", {"pp": 2}, 2),
        ("tp2", "tp2-to-dp2", {}, 2),
        ("dp2-distopt", "distopt-dp2-to-1", {"distributed_optimizer": True}, 1),
    ],
)
def test_resume_at_another_layout_continues_the_run(world, reference, source, name, par, nproc):
    _ensure_run(world, source, LAYOUTS_2[source])
    r = _resume_as(world, source, name, par, nproc=nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at step 8" in r.stdout
    a, b = _losses(world, source), _losses(world, name)
    assert [row["step"] for row in metrics(world, name)] == list(range(1, 17))
    worst = max(abs(x - y) / abs(x) for x, y in zip(a[8:], b[8:]))
    assert worst <= TOL, (worst, a[8:], b[8:])
    assert_budgets_met(world, name)


def test_resume_across_an_expert_parallel_change_is_one_line_or_weights_only(world, reference):
    _ensure_run(world, "ep2", {"ep": 2})
    r = _resume_as(world, "ep2", "ep2-to-ep1", {})
    one_line_error(r, "ep=2", "--reset-optimizer")
    r = run(
        world,
        str(world / "ep2-to-ep1.yaml"),
        2,
        "--resume",
        "auto",
        "--reset-optimizer",
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "model weights only" in r.stdout
    status = json.load(open(world / "runs" / "ep2-to-ep1" / "status.json"))
    assert status["state"] == "completed" and status["resumed_from"]["reset_optimizer"] is True
    assert_budgets_met(world, "ep2-to-ep1")


# ------------------------------------------------------------------ expert bias


def test_expert_bias_moves_against_the_load(world):
    name = "bias"
    recipe = _recipe(
        world,
        name,
        model__moe_router_score_function="sigmoid",
        model__moe_router_enable_expert_bias=True,
        model__moe_router_load_balancing_type="none",
        cadence__routing_flush_every=1,
        training__init_from=None,
    )
    r = run(world, recipe)
    assert r.returncode == 0, r.stderr[-3000:]
    first = np.load(world / "runs" / name / "routing" / "step_00000001.npz")
    load_LE = first["count"].sum(1)  # token slots per layer and expert in step 1
    bias_LE = first["expert_bias"]  # after step 1's update (finalize_model_grads)
    over = load_LE > load_LE.mean(1, keepdims=True)
    under = load_LE < load_LE.mean(1, keepdims=True)
    assert over.any() and under.any()
    assert (bias_LE[over] < 0).all() and (bias_LE[under] > 0).all(), (load_LE, bias_LE)


# ------------------------------------------------------------------ one-line errors


@pytest.mark.parametrize(
    "par,changes,fragment",
    [
        (
            {"pp": 3},
            {},
            "parallelism.pp: pp = 3 pipeline chunks do not divide model.num_layers = 4",
        ),
        ({"vp": 2}, {}, "parallelism.vp: 2 virtual pipeline stages need pp > 1"),
        (
            {"cp": 2},
            {"training__seq_length": 66},
            "parallelism.cp: 2 needs training.seq_length divisible by 2 x cp = 4",
        ),
        ({"tp": 2}, {}, "tp x pp x cp = 2 x 1 x 1 = 2 ranks, but this run has 1 process(es)"),
        (
            {},
            {"training__precision": "fp16"},
            "training.precision: fp16 is not supported on the CPU backend",
        ),
    ],
    ids=["pp-layers", "vp-without-pp", "cp-seq", "beyond-world", "fp16-cpu"],
)
def test_layout_errors_are_one_line(world, par, changes, fragment):
    one_line_error(run(world, _recipe(world, "bad", par, **changes), timeout=120), fragment)


# ------------------------------------------------------------ async checkpoints, eval of any layout


def test_async_checkpoints_complete_and_resume_bitwise(world, reference):
    """megatron's async dist_checkpointing save (the CUDA default; forced on here): files are
    written in the background, train_state.json once every rank has finished; a resume from
    such a checkpoint continues bitwise at the same layout."""
    _ensure_run(world, "dp2", LAYOUTS_2["dp2"])
    _ensure_run(world, "async", {}, cadence__async_checkpoint="on", cadence__checkpoint_every=4)
    # saving in the background changes nothing
    assert _losses(world, "async") == _losses(world, "dp2")
    done = sorted(p.name for p in (world / "runs" / "async" / "checkpoints").iterdir())
    assert done == ["step_00000004", "step_00000008", "step_00000012", "step_00000016"]
    assert all(
        (world / "runs" / "async" / "checkpoints" / d / "train_state.json").exists() for d in done
    )
    r = _resume_as(
        world,
        "async",
        "async-resumed",
        {},
        cadence__async_checkpoint="on",
        cadence__checkpoint_every=4,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(world, "async-resumed") == _losses(world, "async")


def test_eval_loads_a_checkpoint_of_any_layout_into_one_process(world, reference):
    """The final weights of the tp2 and pp2 x vp2 runs, loaded into one process by ablate eval's
    loader, equal the one-process run's (to the float noise the losses show)."""
    _ensure_run(world, "tp2", LAYOUTS_2["tp2"])
    _ensure_run(world, "pp2-vp2", LAYOUTS_2["pp2-vp2"])
    code = f"""
import torch
from ablate.evals.loading import load_eval_model
from ablate.train import backend
ref = {{k: v.float().clone()
       for k, v in load_eval_model({str(world / "runs" / "ref")!r}).model.state_dict().items()
       if torch.is_tensor(v)}}
backend.shutdown()
for name in ("tp2", "pp2-vp2"):
    got = load_eval_model({str(world / "runs")!r} + "/" + name).model.state_dict()
    backend.shutdown()
    worst = max(float((got[k].float() - v).abs().max()) for k, v in ref.items())
    assert worst < 1e-4, (name, worst)
    print(name, worst)
print("ok")
"""
    r = subprocess.run(
        [PYTHON, "-c", code],
        cwd=world,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
