"""``ablate eval`` and ``ablate export hf`` refusals, table-driven: bad flags (every range that
``EvalOptions`` declares, non-finite numbers), damaged run directories (plan, recipe,
checkpoints, scores), missing or damaged benchmark files, unsafe export targets. Each case
runs in-process on its own copy of a tiny trained run and must give one line, exit 2, no
traceback, and leave the copy (and the temp dir) exactly as it was."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import assert_refused
from eval_run import NAME, copy_run, trained_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toyworld_root):
    return trained_run(tmp_path_factory, toyworld_root)


def _ckpt(run, step):
    return os.path.join(run, "checkpoints", f"step_{step:08d}")


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _truncate(path, size=100):
    with open(path, "r+b") as f:
        f.truncate(size)


def _shard(run, step):
    weights = os.path.join(_ckpt(run, step), "weights")
    return os.path.join(weights, sorted(n for n in os.listdir(weights) if n.endswith(".distcp"))[0])


def _plan_edit(change):
    def damage(root, run):
        path = os.path.join(run, "plan.json")
        with open(path) as f:
            plan = json.load(f)
        change(plan)
        _write(path, json.dumps(plan))

    return damage


_HELD = []  # descriptors whose flock stands for an evaluation running in another process


def _hold_lock(run):
    """What a running ``ablate eval`` of ``run`` holds: a flock on the run directory itself."""
    import fcntl

    fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _HELD.append(fd)


def _nothing(root, run):
    pass


def _bench(name, text):
    """A benchmark file written beside the run (not inside it)."""

    def damage(root, run):
        _write(os.path.join(root, "bench", name), text)

    return damage


MBPP_ROW = {
    "task_id": 11,
    "text": "t",
    "code": "def f():\n    return 1\n",
    "test_list": ["assert f() == 1"],
}

# id, damage(root, run), argv after "eval RUN", fragments of the one line
EVAL_CASES = [
    # --- flags: the ranges EvalOptions declares, checked before any file is read
    ("limit-zero", _nothing, ["--limit", "0"], ["--limit", "out of range", ">= 1"]),
    ("limit-negative", _nothing, ["--limit", "-3"], ["--limit", "-3", ">= 1"]),
    ("limit-not-integer", _nothing, ["--limit", "ten"], ["--limit", "expected an integer"]),
    ("batch-size-zero", _nothing, ["--batch-size", "0"], ["--batch-size", ">= 1"]),
    ("bpb-tokens-negative", _nothing, ["--bpb-tokens", "-5"], ["--bpb-tokens", ">= 1"]),
    ("routing-tokens-zero", _nothing, ["--routing-tokens", "0"], ["--routing-tokens"]),
    ("shots-negative", _nothing, ["--shots", "-1"], ["--shots", ">= 0"]),
    ("max-new-tokens-zero", _nothing, ["--max-new-tokens", "0"], ["--max-new-tokens", ">= 1"]),
    (
        "sandbox-timeout-nan",
        _nothing,
        ["--sandbox-timeout-s", "nan"],
        ["--sandbox-timeout-s", "not a finite number"],
    ),
    ("sandbox-workers-zero", _nothing, ["--sandbox-workers", "0"], ["--sandbox-workers"]),
    ("temperature-nan", _nothing, ["--temperature", "nan"], ["--temperature", "not a finite"]),
    ("temperature-inf", _nothing, ["--temperature", "inf"], ["--temperature", "not a finite"]),
    ("temperature-negative", _nothing, ["--temperature", "-0.5"], ["--temperature", ">= 0"]),
    ("top-p-zero", _nothing, ["--top-p", "0"], ["--top-p", "> 0"]),
    ("top-p-above-one", _nothing, ["--top-p", "1.5"], ["--top-p", "<= 1"]),
    ("seed-beyond-int64", _nothing, ["--seed", str(2**70)], ["--seed", "out of range"]),
    ("samples-zero", _nothing, ["--samples", "0"], ["--samples", ">= 1"]),
    ("samples-greedy", _nothing, ["--samples", "4"], ["--samples 4", "--temperature"]),
    ("pass-k-not-integer", _nothing, ["--pass-k", "1,x"], ["--pass-k", "expected an integer"]),
    ("pass-k-empty-item", _nothing, ["--pass-k", "1,,2"], ["--pass-k", "comma-separated"]),
    (
        "pass-k-above-samples",
        _nothing,
        ["--samples", "2", "--temperature", "0.5", "--pass-k", "5"],
        ["--pass-k", "k=5"],
    ),
    ("step-not-integer", _nothing, ["--step", "latest"], ["--step", "expected N"]),
    ("step-negative", _nothing, ["--step", "-2"], ["--step", "out of range"]),
    ("step-missing", _nothing, ["--step", "7"], ["no complete checkpoint at step 7", "1, 2"]),
    ("task-unknown", _nothing, ["--tasks", "bpb,nope"], ["--tasks", "'nope'"]),
    ("backend-unknown", _nothing, ["--backend", "tpu"], ["--backend", "invalid choice"]),
    # --- damaged run directories
    (
        "plan-missing",
        lambda root, run: os.remove(os.path.join(run, "plan.json")),
        [],
        ["has no plan.json"],
    ),
    (
        "plan-truncated",
        lambda root, run: _truncate(os.path.join(run, "plan.json"), 40),
        [],
        ["plan.json", "not valid JSON"],
    ),
    (
        "plan-not-object",
        lambda root, run: _write(os.path.join(run, "plan.json"), "[1, 2]"),
        [],
        ["plan.json", "damaged plan", "JSON object"],
    ),
    (
        "plan-vocab-string",
        _plan_edit(lambda p: p["tokenizer"].update(vocab_size="258")),
        [],
        ["plan.json", "tokenizer.vocab_size", "positive integer"],
    ),
    ("plan-no-domains", _plan_edit(lambda p: p.pop("domains")), [], ["plan.json", "domains"]),
    (
        "recipe-missing",
        lambda root, run: os.remove(os.path.join(run, "recipe.yaml")),
        [],
        ["has no recipe.yaml"],
    ),
    (
        "recipe-garbage",
        lambda root, run: _write(os.path.join(run, "recipe.yaml"), "a: [1,\n"),
        [],
        ["recipe.yaml"],
    ),
    (
        "no-checkpoint",
        lambda root, run: shutil.rmtree(os.path.join(run, "checkpoints")),
        [],
        ["no complete checkpoint yet", "--step 0"],
    ),
    (
        "latest-damaged-no-earlier",
        lambda root, run: (shutil.rmtree(_ckpt(run, 1)), _truncate(_shard(run, 2))),
        [],
        ["step_00000002", "damaged checkpoint", "distcp"],
    ),
    (
        "named-step-damaged",
        lambda root, run: _truncate(_shard(run, 2)),
        ["--step", "2"],
        ["step_00000002", "damaged checkpoint", "choose another --step"],
    ),
    (
        "all-steps-damaged",
        lambda root, run: (_truncate(_shard(run, 1)), _truncate(_shard(run, 2))),
        ["--step", "all"],
        ["step_00000002", "damaged checkpoint", "every earlier one"],
    ),
    (
        "train-state-garbage",
        lambda root, run: _write(os.path.join(_ckpt(run, 2), "train_state.json"), '{"step":'),
        ["--step", "2"],
        ["step_00000002", "train_state.json"],
    ),
    (
        "eval-dir-is-file",
        lambda root, run: _write(os.path.join(run, "eval"), "x"),
        [],
        ["eval", "not a directory"],
    ),
    ("another-eval-running", lambda root, run: _hold_lock(run), [], ["evaluation of", "in use"]),
    (
        "scores-file-is-dir",
        lambda root, run: os.makedirs(os.path.join(run, "eval", "step_2.json")),
        [],
        ["step_2.json", "is a directory"],
    ),
    # --- benchmark files
    (
        "mbpp-missing",
        _nothing,
        ["--tasks", "mbpp_gold", "--mbpp", "{root}/bench/none.jsonl"],
        ["none.jsonl", "not found"],
    ),
    (
        "mbpp-not-json",
        _bench("mbpp.jsonl", "{not json\n"),
        ["--tasks", "mbpp_gold", "--mbpp", "{root}/bench/mbpp.jsonl"],
        ["mbpp.jsonl", "line 1"],
    ),
    (
        "mbpp-row-field-missing",
        _bench(
            "mbpp.jsonl", json.dumps({k: v for k, v in MBPP_ROW.items() if k != "test_list"}) + "\n"
        ),
        ["--tasks", "mbpp_gold", "--mbpp", "{root}/bench/mbpp.jsonl"],
        ["mbpp.jsonl", "line 1", "test_list"],
    ),
    (
        "math-missing-solution",
        _bench("math.jsonl", json.dumps({"problem": "2?"}) + "\n"),
        ["--tasks", "math_gold", "--math", "{root}/bench/math.jsonl"],
        ["math.jsonl", "line 1", "'solution'"],
    ),
    (
        "gsm8k-missing",
        _nothing,
        ["--tasks", "gsm8k_gold", "--gsm8k", "{root}/bench/gsm.jsonl"],
        ["gsm.jsonl"],
    ),
    (
        "gsm8k-array-row",
        _bench("gsm.jsonl", "[1, 2]\n"),
        ["--tasks", "gsm8k_gold", "--gsm8k", "{root}/bench/gsm.jsonl"],
        ["gsm.jsonl", "line 1"],
    ),
]

EXPORT_CASES = [
    (
        "export-out-not-empty",
        _bench("out/keep.txt", "mine"),
        ["-o", "{root}/bench/out"],
        ["is not empty", "--overwrite"],
    ),
    (
        "export-overwrite-foreign",
        _bench("out/keep.txt", "mine"),
        ["-o", "{root}/bench/out", "--overwrite"],
        ["is not an earlier export", "ablate_export.json"],
    ),
    (
        "export-overwrite-run-dir",
        _nothing,
        ["-o", "{run}", "--overwrite"],
        ["is not an earlier export"],
    ),
    (
        "export-out-is-file",
        _bench("out", "a file"),
        ["-o", "{root}/bench/out"],
        ["exists and is not a directory"],
    ),
    (
        "export-no-checkpoint",
        lambda root, run: shutil.rmtree(os.path.join(run, "checkpoints")),
        ["-o", "{root}/bench/out"],
        ["no complete checkpoint to export"],
    ),
    (
        "export-step-missing",
        _nothing,
        ["-o", "{root}/bench/out", "--step", "9"],
        ["no complete checkpoint at step 9"],
    ),
    (
        "export-step-not-integer",
        _nothing,
        ["-o", "{root}/bench/out", "--step", "x"],
        ["--step", "invalid int"],
    ),
    (
        "export-plan-truncated",
        lambda root, run: _truncate(os.path.join(run, "plan.json"), 10),
        ["-o", "{root}/bench/out"],
        ["plan.json", "not valid JSON"],
    ),
    (
        "export-step-damaged",
        lambda root, run: _truncate(_shard(run, 2)),
        ["-o", "{root}/bench/out", "--step", "2"],
        ["step_00000002", "damaged checkpoint"],
    ),
]


def _case(trained, tmp_path, damage, extra):
    root = copy_run(trained, tmp_path)
    run = os.path.join(root, "runs", NAME)
    damage(root, run)
    return root, run, [a.format(root=root, run=run) for a in extra]


@pytest.mark.parametrize(
    "case_id,damage,extra,fragments", EVAL_CASES, ids=[c[0] for c in EVAL_CASES]
)
def test_eval_refuses_in_one_line(trained, tmp_path, capsys, case_id, damage, extra, fragments):
    root, run, extra = _case(trained, tmp_path, damage, extra)
    assert_refused(["eval", run, *extra], *fragments, watch=(root,), capsys=capsys)


@pytest.mark.parametrize(
    "case_id,damage,extra,fragments", EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES]
)
def test_export_hf_refuses_in_one_line(
    trained, tmp_path, capsys, case_id, damage, extra, fragments
):
    root, run, extra = _case(trained, tmp_path, damage, extra)
    assert_refused(["export", "hf", run, *extra], *fragments, watch=(root,), capsys=capsys)
