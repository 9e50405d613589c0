"""``ablate eval``: capability scores of a tiny trained toy-world run, through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from test_train import PYTHON, one_line_error, run, write

TASK_DIR = os.path.join(os.path.dirname(__file__), "data", "lm_eval_tasks")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toyworld_root):
    """A 16-step toy-world run with checkpoints at steps 8 and 16."""
    from conftest import link_toyworld

    root = tmp_path_factory.mktemp("eval")
    link_toyworld(toyworld_root, root)
    recipe = write(root, "evalrun", cadence__checkpoint_every=8)
    r = run(root, recipe)
    assert r.returncode == 0, r.stderr[-2000:]
    return root


def ablate_eval(root, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "ablate.cli", "eval", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})},
    )


def scores(root, run: str, step: int) -> dict:
    with open(root / "runs" / run / "eval" / f"step_{step}.json") as f:
        return json.load(f)


def test_trained_model_has_lower_bits_per_byte_than_its_initialisation_on_every_domain(trained):
    r = ablate_eval(trained, "runs/evalrun", "--step", "0,16", "--tasks", "bpb")
    assert r.returncode == 0, r.stderr[-2000:]
    init, final = (
        scores(trained, "evalrun", 0)["tasks"]["bpb"],
        scores(trained, "evalrun", 16)["tasks"]["bpb"],
    )
    domains = ["code.exec", "code.nl", "general", "math.code", "math.structured", "math.text"]
    for d in domains:
        # untrained: about log2(vocabulary) = 8 bits per byte; 16 steps learn the byte statistics
        assert init["metrics"][f"bpb/{d}"] > 7.0, d
        assert final["metrics"][f"bpb/{d}"] < init["metrics"][f"bpb/{d}"] - 2.0, d
    assert final["samples"] == sum(final["samples_by_metric"][f"bpb/{d}"] for d in domains) > 0
    assert scores(trained, "evalrun", 0)["checkpoint"] == "init"


def test_bits_per_byte_counts_every_held_out_byte_when_the_split_fits(trained):
    """With a budget above the split, bytes are the manifest's and every text token is scored
    (byte tokenizer: one token per byte)."""
    work = trained / "whole"
    shutil.copytree(trained / "runs" / "evalrun", work / "runs" / "evalrun")
    os.symlink(trained / "data", work / "data")
    code = (
        "import sys; from ablate.evals.runner import Context;"
        "from ablate.evals.loading import load_eval_model;"
        "from ablate.evals.lm import LanguageModel;"
        "from ablate.evals.tasks.base import EvalOptions;"
        "from ablate.evals.tasks.bpb import score_domain;"
        "em = load_eval_model('runs/evalrun', 16);"
        "o = EvalOptions(bpb_tokens=10**9, batch_size=32);"
        "ctx = Context(em, LanguageModel(em, 32), o, quiet=True);"
        "print(score_domain(ctx, 'code.exec')[1:])"
    )
    r = subprocess.run(
        [PYTHON, "-c", code],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    tokens, nbytes = eval(r.stdout.strip().splitlines()[-1])
    with open(trained / "data" / "toyworld" / "manifest.json") as f:
        entry = next(e for e in json.load(f)["eval_datasets"] if e["domain"] == "code.exec")
    assert nbytes == entry["bytes"] == tokens == entry["tokens"] - entry["documents"]


def test_scores_are_deterministic_and_a_rerun_skips_what_is_scored(trained):
    copies = []
    for name in ("a", "b"):
        work = trained / f"det_{name}"
        shutil.copytree(
            trained / "runs" / "evalrun",
            work / "runs" / "evalrun",
            ignore=shutil.ignore_patterns("eval"),
        )
        os.symlink(trained / "data", work / "data")
        r = ablate_eval(work, "runs/evalrun", "--tasks", "bpb,probes,routing", "--limit", "6")
        assert r.returncode == 0, r.stderr[-2000:]
        copies.append(work)
    a, b = (scores(w, "evalrun", 16) for w in copies)
    assert a["tasks"].keys() == b["tasks"].keys() == {"bpb", "probes", "routing"}
    for task in a["tasks"]:
        assert a["tasks"][task]["metrics"] == b["tasks"][task]["metrics"], task
    assert a["tasks"]["probes"]["samples"] == 18  # 3 probe kinds x --limit 6
    ra, rb = (np.load(w / "runs" / "evalrun" / "eval" / "routing_step_16.npz") for w in copies)
    for key in ("topk_TKL", "token_ids_T", "domain_T"):
        assert np.array_equal(ra[key], rb[key]), key

    # a rerun with the same tasks and options scores nothing again
    path = copies[0] / "runs" / "evalrun" / "eval" / "step_16.json"
    before = path.read_text()
    r = ablate_eval(copies[0], "runs/evalrun", "--tasks", "bpb,probes,routing", "--limit", "6")
    assert r.returncode == 0 and r.stderr.count("already scored") == 3, r.stderr[-2000:]
    assert path.read_text() == before
    # the routing arrays deleted: only routing is scored again, to the same arrays
    routing_file = copies[0] / "runs" / "evalrun" / "eval" / "routing_step_16.npz"
    routing_file.unlink()
    r = ablate_eval(copies[0], "runs/evalrun", "--tasks", "bpb,probes,routing", "--limit", "6")
    assert r.returncode == 0 and r.stderr.count("already scored") == 2, r.stderr[-2000:]
    assert "routing_step_16.npz is gone" in r.stderr
    assert np.array_equal(np.load(routing_file)["topk_TKL"], rb["topk_TKL"])
    # a changed option changes the fingerprint: only that task is scored again
    r = ablate_eval(copies[0], "runs/evalrun", "--tasks", "bpb,probes", "--limit", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bpb: already scored" in r.stderr and "probes: scoring" in r.stderr
    assert scores(copies[0], "evalrun", 16)["tasks"]["probes"]["samples"] == 9


def test_eval_time_routing_capture_holds_topk_ids_per_token_and_layer(trained):
    r = ablate_eval(trained, "runs/evalrun", "--tasks", "routing")
    assert r.returncode == 0, r.stderr[-2000:]
    z = np.load(trained / "runs" / "evalrun" / "eval" / "routing_step_16.npz")
    topk_TKL, token_ids_T, domain_T = z["topk_TKL"], z["token_ids_T"], z["domain_T"]
    T, k, L = topk_TKL.shape
    assert (k, L) == (2, 2)  # TINY: top-2 of 4 experts, 2 MoE layers
    assert len(token_ids_T) == len(domain_T) == T
    assert topk_TKL.min() >= 0 and topk_TKL.max() < 4
    assert (topk_TKL[:, 0, :] != topk_TKL[:, 1, :]).all()  # k distinct experts per token and layer
    # full windows of the training length only (no padding through the routers), 4,096 tokens
    # per domain
    assert list(np.bincount(domain_T)) == [4096] * len(z["domains"])
    assert 257 not in set(token_ids_T.tolist())  # the pad id never appears


def test_generative_tasks_score_end_to_end_with_the_sandbox(trained, tmp_path):
    gsm = tmp_path / "gsm8k"
    gsm.mkdir()
    rows = [
        {
            "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
            "answer": "He has 3+4=<<3+4=7>>7 apples.\n#### 7",
        },
        {
            "question": "A box holds 12 pens. 5 are taken. How many are left?",
            "answer": "12-5=<<12-5=7>>7 pens are left.\n#### 7",
        },
    ]
    (gsm / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (gsm / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = ablate_eval(
        trained,
        "runs/evalrun",
        "--tasks",
        "gsm8k_cot,gsm8k_pot,gsm8k_gold,humaneval,humaneval_gold",
        "--limit",
        "2",
        "--gsm8k",
        str(gsm / "test.jsonl"),
        "--shots",
        "1",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    tasks = scores(trained, "evalrun", 16)["tasks"]
    for name, metric in (
        ("gsm8k_cot", "accuracy"),
        ("gsm8k_pot", "accuracy"),
        ("humaneval", "pass@1"),
        ("gsm8k_gold", "gold_bpb"),
        ("humaneval_gold", "gold_bpb"),
    ):
        assert tasks[name]["samples"] == 2, name
        assert metric in tasks[name]["metrics"], name
    details = trained / "runs" / "evalrun" / "eval" / "details" / "step_16"
    pot = [json.loads(line) for line in (details / "gsm8k_pot.jsonl").read_text().splitlines()]
    assert len(pot) == 2 and all(
        p["program"].startswith("def solution():") and p["status"] for p in pot
    )
    he = [json.loads(line) for line in (details / "humaneval.jsonl").read_text().splitlines()]
    assert [h["task_id"] for h in he] == ["HumanEval/0", "HumanEval/1"]


def test_lm_eval_adapter_runs_local_tasks(trained, tmp_path):
    include = tmp_path / "tasks"
    shutil.copytree(TASK_DIR, include)
    for yaml_file in include.glob("*.yaml"):  # data_files are resolved from the working directory
        yaml_file.write_text(yaml_file.read_text().replace("DATA_DIR", str(include)))
    r = ablate_eval(
        trained,
        "runs/evalrun",
        "--tasks",
        "lm_eval:toy_facts,lm_eval:toy_text",
        "--lm-eval-include",
        str(include),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    tasks = scores(trained, "evalrun", 16)["tasks"]
    facts, text = tasks["lm_eval:toy_facts"], tasks["lm_eval:toy_text"]
    assert facts["samples"] == 8 and 0.0 <= facts["metrics"]["acc,none"] <= 1.0
    assert text["samples"] == 4 and 0.0 < text["metrics"]["bits_per_byte,none"] < 10.0


def test_lm_eval_rolling_likelihood_matches_direct_scoring(trained):
    """``loglikelihood_rolling`` of a text longer than the window equals scoring each window's
    tokens with the preceding ``seq_length`` tokens as context, computed independently."""
    code = r"""
import torch
from lm_eval.api.instance import Instance
from ablate.evals.loading import load_eval_model
from ablate.evals.lm import LanguageModel
from ablate.evals.lm_eval_adapter import AblateLM
em = load_eval_model('runs/evalrun', 16)
lm = LanguageModel(em, 4)
text = 'The capital of Rakami is Thalo. ' * 7
adapter = AblateLM(lm=lm)
got = adapter.loglikelihood_rolling([Instance('loglikelihood_rolling', {}, (text,), 0)])[0]
ids = [em.tokenizer.eod] + em.tokenizer.encode(text)
S, total = em.seq_length, 0.0
for t in range(1, len(ids)):
    ctx = ids[max(0, t - S):t]
    with torch.inference_mode():
        lp = lm.logprobs(torch.tensor([ctx]))[0, -1]
    total += float(lp[ids[t]])
print(got, total)
"""
    r = subprocess.run(
        [PYTHON, "-c", code],
        cwd=trained,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got, direct = map(float, r.stdout.split()[-2:])
    assert len("The capital of Rakami is Thalo. " * 7) > 64  # longer than TINY's window
    assert got == pytest.approx(direct, abs=1e-3 * abs(direct))


def test_gold_likelihood_scores_every_token_of_a_continuation_longer_than_the_window(trained):
    """A gold solution longer than the training window: every token is scored (the sum equals
    predicting each token from the text before it, computed independently), not only the last
    window's tokens, so bits per byte divide the NLL of all the bytes they count."""
    code = r"""
import json, torch
from ablate.evals.loading import load_eval_model
from ablate.evals.lm import LanguageModel
em = load_eval_model('runs/evalrun', 16)
lm = LanguageModel(em, 3)
ctx = em.tokenizer.encode("Question: which city?\n")
cont = em.tokenizer.encode("The capital of Rakami is Thalo. " * 6)
long, short, bare = lm.score([(ctx, cont), (ctx, cont[:10]), ([], cont)])
S = em.seq_length
def direct(ids, first):
    with torch.no_grad():
        return -sum(
            float(lm.logprobs(torch.tensor([ids[max(0, k - S):k]]))[0, -1, ids[k]])
            for k in range(first, len(ids))
        )
print(json.dumps([long.nll, direct(ctx + cont, len(ctx)), long.tokens, len(cont), short.nll,
                  direct(ctx + cont[:10], len(ctx)), bare.tokens]))
"""
    r = subprocess.run(
        [PYTHON, "-c", code],
        cwd=trained,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    long_nll, long_direct, scored, n, short_nll, short_direct, bare = json.loads(
        r.stdout.strip().splitlines()[-1]
    )
    assert n > 2 * 64 and scored == n and bare == n - 1
    # each window's first tokens see less than a full window of text: equal within 1e-3
    assert long_nll == pytest.approx(long_direct, rel=1e-3)
    assert short_nll == pytest.approx(short_direct, rel=1e-5)


# ------------------------------------------------------------------ bad input


def test_unknown_task(trained):
    one_line_error(
        ablate_eval(trained, "runs/evalrun", "--tasks", "bpb,mmlu_pro"),
        "--tasks",
        "mmlu_pro",
        "known:",
    )


def test_missing_data_file(trained, tmp_path):
    one_line_error(
        ablate_eval(
            trained,
            "runs/evalrun",
            "--tasks",
            "gsm8k_gold",
            "--gsm8k",
            str(tmp_path / "nope.jsonl"),
        ),
        "nope.jsonl",
        "not found",
    )


def test_malformed_jsonl_row(trained, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"question": "q", "answer": "#### 1"})
        + "\n"
        + '{"question": "q", "answer": 3}\n'
    )
    one_line_error(
        ablate_eval(trained, "runs/evalrun", "--tasks", "gsm8k_gold", "--gsm8k", str(bad)),
        "bad.jsonl",
        "line 2",
        "answer",
    )
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    one_line_error(
        ablate_eval(trained, "runs/evalrun", "--tasks", "gsm8k_gold", "--gsm8k", str(bad)),
        "line 2",
        "not valid JSON",
    )


def test_checkpoint_from_a_different_tokenizer(trained):
    work = trained / "other_tok"
    shutil.copytree(
        trained / "runs" / "evalrun",
        work / "runs" / "evalrun",
        ignore=shutil.ignore_patterns("eval"),
    )
    os.symlink(trained / "data", work / "data")
    plan_path = work / "runs" / "evalrun" / "plan.json"
    plan = json.loads(plan_path.read_text())
    plan["tokenizer"]["fingerprint"] = "hf-0123456789abcdef"
    plan_path.write_text(json.dumps(plan))
    one_line_error(
        ablate_eval(work, "runs/evalrun", "--tasks", "bpb"),
        "tokenizer",
        "hf-0123456789abcdef",
        "byte-v1",
    )


def test_run_directory_without_checkpoints(trained):
    recipe = write(trained, "untrained")
    r = subprocess.run(
        [PYTHON, "-m", "ablate.cli", "compile", recipe], cwd=trained, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    one_line_error(
        ablate_eval(trained, "runs/untrained"),
        "runs/untrained",
        "no complete checkpoint",
        "--step 0",
    )
    one_line_error(
        ablate_eval(trained, "runs/untrained", "--step", "8"), "no complete checkpoint at step 8"
    )
    one_line_error(
        ablate_eval(trained, "runs/nothing_here"), "runs/nothing_here", "no such run directory"
    )


# ------------------------------------------------------------------ inside training


@pytest.mark.parametrize("nproc,ep", [(1, 1), (2, 2)], ids=["one-process", "expert-parallel-2"])
def test_evaluation_inside_training_matches_ablate_eval_of_its_checkpoint(trained, nproc, ep):
    """Scores written by training at its eval cadence equal ``ablate eval`` of the saved
    checkpoint, and evaluating does not change training (losses as without it)."""
    name = f"live{nproc}"
    recipe = write(
        trained,
        name,
        cadence__checkpoint_every=8,
        cadence__eval_every=8,
        cadence__eval_tasks=["bpb", "probes"],
        cadence__eval_options={"limit": 8, "bpb_tokens": 4096},
        parallelism={"ep": ep},
    )
    r = run(trained, recipe, nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    live = {s: scores(trained, name, s)["tasks"] for s in (8, 16)}
    with open(trained / "runs" / name / "metrics.jsonl") as f:
        losses = [json.loads(line)["loss"] for line in f]
    if nproc == 1:
        with open(trained / "runs" / "evalrun" / "metrics.jsonl") as f:
            assert losses == [json.loads(line)["loss"] for line in f]
    # the same tasks from the checkpoint, scored afresh in another directory
    work = trained / f"{name}_posthoc"
    shutil.copytree(
        trained / "runs" / name, work / "runs" / name, ignore=shutil.ignore_patterns("eval")
    )
    os.symlink(trained / "data", work / "data")
    r = ablate_eval(
        work,
        f"runs/{name}",
        "--step",
        "8,16",
        "--tasks",
        "bpb,probes",
        "--limit",
        "8",
        "--bpb-tokens",
        "4096",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for s in (8, 16):
        posthoc = scores(work, name, s)["tasks"]
        for task in ("bpb", "probes"):
            assert live[s][task]["fingerprint"] == posthoc[task]["fingerprint"]
            for metric, value in live[s][task]["metrics"].items():
                assert posthoc[task]["metrics"][metric] == pytest.approx(
                    value, rel=1e-5, abs=1e-6
                ), (s, metric)


def test_generation_with_the_kv_cache_gives_the_same_tokens_as_recomputing(trained):
    """megatron-core's static KV cache (prompts of different lengths in one batch, rows that
    stop early, rows that outgrow the 64-token window and continue without it) changes speed,
    not tokens."""
    code = r"""
import json
from ablate.evals.loading import load_eval_model
from ablate.evals.lm import LanguageModel
em = load_eval_model('runs/evalrun', 16)
lm = LanguageModel(em, 5)
rows = [json.loads(l) for f in ('math_answer', 'program_output', 'fact_recall')
        for l in list(open(f'data/toyworld/probes/{f}.jsonl'))[:6]]
prompts = [em.tokenizer.encode(r['prompt']) for r in rows]
stop = lambda ids: ids[-1:] == [ord('.')]
a = lm.generate(prompts, 90, stop, kv_cache=False)
b = lm.generate(prompts, 90, stop, kv_cache=True)
print(json.dumps([a == b, [len(g) for g in a], [len(p) for p in prompts]]))
"""
    r = subprocess.run(
        [PYTHON, "-c", code],
        cwd=trained,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    same, generated, prompt_lengths = json.loads(r.stdout.strip().splitlines()[-1])
    assert same
    assert any(
        min(p, 63) + g > 64 for p, g in zip(prompt_lengths, generated)
    )  # some rows outgrew the window
    assert len(set(prompt_lengths)) > 3


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_a_cpu_trained_checkpoint_scores_the_same_on_cuda(trained):
    work = trained / "cuda"
    shutil.copytree(
        trained / "runs" / "evalrun",
        work / "runs" / "evalrun",
        ignore=shutil.ignore_patterns("eval"),
    )
    os.symlink(trained / "data", work / "data")
    r = ablate_eval(work, "runs/evalrun", "--tasks", "bpb", "--backend", "cuda")
    assert r.returncode == 0, r.stderr[-3000:]
    cuda = scores(work, "evalrun", 16)["tasks"]["bpb"]["metrics"]
    r = ablate_eval(trained, "runs/evalrun", "--tasks", "bpb", "--backend", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    cpu = scores(trained, "evalrun", 16)["tasks"]["bpb"]["metrics"]
    for metric, value in cpu.items():
        assert cuda[metric] == pytest.approx(value, rel=1e-3), metric


# ------------------------------------------------------------------ MBPP, MATH, sampling


def _mini_benchmarks(tmp_path):
    """Two-problem MBPP and MATH files (the format of ../shared/benchmarks, made up here)."""
    mbpp = tmp_path / "mbpp.jsonl"
    rows = [
        {
            "task_id": i,
            "text": f"Write a function f{i} that returns {i}.",
            "code": f"def f{i}():\n    return {i}",
            "test_setup_code": "",
            "test_list": [f"assert f{i}() == {i}"],
            "challenge_test_list": [],
        }
        for i in (2, 3, 4, 11, 12, 13)
    ]
    mbpp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    math_file = tmp_path / "math.jsonl"
    rows = [
        {
            "problem": "What is $1+1$?",
            "solution": "It is $\\boxed{2}$.",
            "answer": "2",
            "subject": "Algebra",
            "level": 1,
            "unique_id": "a",
        },
        {
            "problem": "What is half of 1?",
            "solution": "Half is $\\boxed{\\frac12}$.",
            "subject": "Prealgebra",
            "level": "Level 2",
            "unique_id": "b",
        },
    ]
    math_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(mbpp), str(math_file)


def test_mbpp_and_math_tasks_score_end_to_end_and_sampled_scores_are_deterministic(
    trained, tmp_path
):
    mbpp, math_file = _mini_benchmarks(tmp_path)
    args = [
        "--tasks",
        "mbpp,mbpp_gold,math_cot,math_pot,math_gold,humaneval",
        "--limit",
        "2",
        "--mbpp",
        mbpp,
        "--math",
        math_file,
        "--samples",
        "3",
        "--temperature",
        "0.9",
        "--top-p",
        "0.95",
        "--seed",
        "5",
        "--max-new-tokens",
        "24",
        "--pass-k",
        "1,3",
    ]
    results = []
    for name in ("a", "b"):
        work = trained / f"sampled_{name}"
        shutil.copytree(
            trained / "runs" / "evalrun",
            work / "runs" / "evalrun",
            ignore=shutil.ignore_patterns("eval"),
        )
        os.symlink(trained / "data", work / "data")
        r = ablate_eval(work, "runs/evalrun", *args)
        assert r.returncode == 0, r.stderr[-3000:]
        details = work / "runs" / "evalrun" / "eval" / "details" / "step_16"
        results.append(
            (
                scores(work, "evalrun", 16)["tasks"],
                {
                    t: _without_timing(details / f"{t}.jsonl")
                    for t in ("mbpp", "math_cot", "math_pot", "humaneval")
                },
            )
        )
    (a, da), (b, db) = results
    assert set(a) == {"mbpp", "mbpp_gold", "math_cot", "math_pot", "math_gold", "humaneval"}
    for task in a:
        assert a[task]["metrics"] == b[task]["metrics"], task
        assert a[task]["samples"] == 2, task
    assert da == db  # the same sampled completions, token for token
    for task in ("mbpp", "humaneval"):
        assert {"pass@1", "pass@3"} <= set(a[task]["metrics"]), task
        rows = da[task]
        assert len(rows) == 6 and all(
            r["reason"]
            in (
                "passed",
                "assertion",
                "exception",
                "no-proof",
                "timeout",
                "memory",
                "killed",
                "blocked",
            )
            for r in rows
        )
        assert (
            len({r["completion"] for r in rows}) > 1
        )  # sampled, not 3 copies of the greedy completion
    m = a["math_cot"]["metrics"]
    assert {
        "accuracy",
        "accuracy/level_1",
        "accuracy/level_2",
        "accuracy/subject/Algebra",
        "accuracy/subject/Prealgebra",
        "pass@1",
        "pass@3",
    } <= set(m)
    assert (
        0.0 < a["mbpp_gold"]["metrics"]["gold_bpb"] < 10
        and 0.0 < a["math_gold"]["metrics"]["gold_bpb"] < 10
    )
    # another seed draws other samples
    work = trained / "sampled_a"
    r = ablate_eval(
        work, "runs/evalrun", *args[:-6], "--seed", "6", "--max-new-tokens", "24", "--pass-k", "1,3"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        _without_timing(work / "runs" / "evalrun" / "eval" / "details" / "step_16" / "mbpp.jsonl")
        != da["mbpp"]
    )


def _without_timing(path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r.pop("wall_s", None)
    return rows


def test_bad_benchmark_input_is_one_line_before_any_model_loads(
    trained, tmp_path, monkeypatch, cli
):
    from conftest import assert_one_line_error

    monkeypatch.chdir(trained)
    mbpp, math_file = _mini_benchmarks(tmp_path)
    bad_math = tmp_path / "bad_math.jsonl"
    bad_math.write_text(json.dumps({"problem": "What is 2?", "answer": "2"}) + "\n")
    assert_one_line_error(
        cli("eval", "runs/evalrun", "--tasks", "math_gold", "--math", bad_math),
        "bad_math.jsonl",
        "line 1",
        "'solution'",
    )
    bad_math.write_text(json.dumps({"problem": "What is 2?", "solution": "no box"}) + "\n")
    assert_one_line_error(
        cli("eval", "runs/evalrun", "--tasks", "math_cot", "--math", bad_math),
        "bad_math.jsonl",
        "line 1",
        "answer",
    )
    bad_math.write_text(
        json.dumps({"problem": "2?", "solution": "\\boxed{2}", "level": "hard"}) + "\n"
    )
    assert_one_line_error(
        cli("eval", "runs/evalrun", "--tasks", "math_gold", "--math", bad_math), "line 1", "'level'"
    )
    bad_mbpp = tmp_path / "bad_mbpp.jsonl"
    rows = [json.loads(line) for line in open(mbpp)]
    del rows[3]["test_list"]
    bad_mbpp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert_one_line_error(
        cli("eval", "runs/evalrun", "--tasks", "mbpp_gold", "--mbpp", bad_mbpp),
        "bad_mbpp.jsonl",
        "line 4",
        "test_list",
    )
    no_shots = tmp_path / "no_shots.jsonl"
    no_shots.write_text(
        open(mbpp).read().splitlines(keepends=True)[3]
    )  # task 11 alone: no few-shot examples
    assert_one_line_error(
        cli("eval", "runs/evalrun", "--tasks", "mbpp", "--mbpp", no_shots), "task_ids 2, 3 and 4"
    )
    assert_one_line_error(
        cli(
            "eval",
            "runs/evalrun",
            "--tasks",
            "mbpp",
            "--samples",
            "4",
            "--temperature",
            "0.8",
            "--pass-k",
            "1,5",
        ),
        "--pass-k",
        "k=5",
        "--samples 4",
    )
    assert_one_line_error(
        cli("eval", "runs/evalrun", "--tasks", "mbpp", "--samples", "4"),
        "--samples 4",
        "--temperature",
    )
    assert_one_line_error(
        cli("eval", "runs/evalrun", "--tasks", "mbpp", "--mbpp", tmp_path / "nope.jsonl"),
        "nope.jsonl",
        "not found",
    )


@pytest.mark.slow  # two lm-eval runs through the CLI: about 45 s on 2 shared cores
def test_lm_eval_code_tasks_stay_refused_without_the_explicit_opt_in(trained, tmp_path):
    include = tmp_path / "tasks"
    include.mkdir()
    (include / "unsafe_toy.yaml").write_text(
        "task: unsafe_toy\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: %s\n"
        "test_split: test\noutput_type: generate_until\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 4\n"
        "metric_list:\n  - metric: exact_match\n"
        "unsafe_code: true\n" % (include / "data.jsonl")
    )
    (include / "data.jsonl").write_text(json.dumps({"q": "1+1=", "a": "2"}) + "\n")
    one_line_error(
        ablate_eval(
            trained,
            "runs/evalrun",
            "--tasks",
            "lm_eval:unsafe_toy",
            "--lm-eval-include",
            str(include),
        ),
        "lm_eval:unsafe_toy",
        "--allow-unsandboxed-code",
    )
    r = ablate_eval(
        trained,
        "runs/evalrun",
        "--tasks",
        "lm_eval:unsafe_toy",
        "--lm-eval-include",
        str(include),
        "--allow-unsandboxed-code",
    )
    assert r.returncode == 0, r.stderr[-3000:]


# ------------------------------------------------------------------ export to Hugging Face

EXPORT_CHECK = r"""
import json, sys, torch, transformers
from ablate.evals.loading import load_eval_model
from ablate.evals.lm import LanguageModel
run, step, out, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if mode == "compile":  # a compiled, untrained run; its initialisation with weights far from it
    from ablate.recipe.compile import compile_recipe
    from ablate.recipe.schema import load_recipe
    from ablate.evals.export_hf import write_hf
    compile_recipe(load_recipe(run))
    run = "runs/" + load_recipe(run).name
em = load_eval_model(run, step, "cpu")
if mode == "compile":
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # logits of magnitude ~10 and routing decided by clear margins
        for name, p in em.model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    write_hf(em, out)
lm = LanguageModel(em, 4)
hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
tok = transformers.AutoTokenizer.from_pretrained(out)
rows = [json.loads(l) for f in ("math_answer", "program_output", "fact_recall")
        for l in list(open(f"data/toyworld/probes/{f}.jsonl"))[:3]]
# held-out text (and some non-ASCII)
texts = [r["prompt"] + r["gold"] + " Zürich 東京 🙂" for r in rows]
diff, scale, same_ids = 0.0, 0.0, True
for t in texts:
    ids = em.tokenizer.encode(t)
    same_ids &= tok(t, add_special_tokens=False)["input_ids"] == ids and tok.decode(ids) == t
    x = torch.tensor([ids[:em.seq_length]])
    with torch.no_grad():
        ours = lm.logits(x)
        diff = max(diff, (ours - hf(x).logits.float()).abs().max().item())
    scale = max(scale, ours.abs().max().item())
prompts = [em.tokenizer.encode(r["prompt"])[-40:] for r in rows]
ours = lm.generate(prompts, 20)
theirs = []
for p in prompts:
    with torch.no_grad():
        g = hf.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False)[0, len(p):].tolist()
    theirs.append(g[:g.index(em.tokenizer.eod)] if em.tokenizer.eod in g else g)
print(json.dumps({"diff": diff, "scale": scale, "same_ids": same_ids,
                  "same_generations": ours == theirs, "generated": sum(map(len, ours)),
                  "arch": type(hf).__name__}))
"""


def _export_check(root, run: str, step: int, out, mode: str = "load") -> dict:
    r = subprocess.run(
        [PYTHON, "-c", EXPORT_CHECK, run, str(step), str(out), mode],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def ablate_export(root, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "ablate.cli", "export", "hf", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_export_hf_of_a_trained_moe_run_gives_the_same_logits_and_greedy_generations(
    trained, tmp_path
):
    """``ablate export hf`` of the trained run's checkpoint: transformers loads it as Mixtral, its
    logits on held-out text equal ours within 1e-4, its greedy generations are ours."""
    pytest.importorskip("transformers")
    out = tmp_path / "hf_moe"
    r = ablate_export(trained, "runs/evalrun", "-o", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= set(os.listdir(out))
    got = _export_check(trained, "runs/evalrun", 16, out)
    assert got["arch"] == "MixtralForCausalLM"
    assert got["diff"] < 1e-4, got
    assert got["same_ids"] and got["same_generations"] and got["generated"] > 0, got


@pytest.mark.parametrize(
    "model,arch",
    [
        ({"num_experts": 0}, "LlamaForCausalLM"),
        ({}, "MixtralForCausalLM"),
        (
            {"num_layers": 3, "moe_layer_freq": 2, "moe_shared_expert_intermediate_size": 96},
            "Qwen2MoeForCausalLM",
        ),
        ({"num_layers": 3, "moe_layer_freq": 2}, "Qwen2MoeForCausalLM"),
    ],
    ids=["dense", "moe", "moe-shared-expert-dense-layers", "moe-dense-layers"],
)
def test_export_of_weights_far_from_initialisation_matches_dense_and_moe(
    trained, tmp_path, model, arch
):
    """The conversion itself, with weights that make logits large (~10) and routing decisive:
    a dense recipe becomes Llama, an all-MoE recipe Mixtral, one with a shared expert or dense
    layers between MoE layers Qwen2-MoE; logits within 1e-4, same greedy generations."""
    pytest.importorskip("transformers")
    name = "convert_" + "_".join(f"{k}{v}" for k, v in model.items())
    recipe = write(trained, name, **{f"model__{k}": v for k, v in model.items()})
    got = _export_check(trained, recipe, 0, tmp_path / "hf", mode="compile")
    assert got["arch"] == arch and got["scale"] > 5, got
    assert got["diff"] < 1e-4, got
    assert got["same_ids"] and got["same_generations"] and got["generated"] > 0, got


def test_export_bad_input_is_one_line(trained, tmp_path, monkeypatch, cli):
    from conftest import assert_one_line_error

    from ablate.recipe.compile import compile_recipe
    from ablate.recipe.schema import load_recipe

    monkeypatch.chdir(trained)
    compile_recipe(load_recipe(write(trained, "noexport")))
    assert_one_line_error(
        cli("export", "hf", "runs/noexport", "-o", tmp_path / "x"),
        "runs/noexport",
        "no complete checkpoint",
    )
    assert_one_line_error(
        cli("export", "hf", "runs/nothing", "-o", tmp_path / "x"),
        "runs/nothing",
        "no such run directory",
    )
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert_one_line_error(
        cli("export", "hf", "runs/evalrun", "-o", blocker / "out"), "a_file", "cannot write"
    )
    assert_one_line_error(
        cli("export", "hf", "runs/evalrun", "-o", blocker), "a_file", "not a directory"
    )
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    assert_one_line_error(
        cli("export", "hf", "runs/evalrun", "-o", full), "not empty", "--overwrite"
    )
    # a feature Llama/Mixtral cannot represent: refused before anything is written
    compile_recipe(load_recipe(write(trained, "layernorm", model__normalization="LayerNorm")))
    one_line_error(
        ablate_export(trained, "runs/layernorm", "--step", "0", "-o", str(tmp_path / "y")),
        "model.normalization",
        "LayerNorm",
        "cannot be exported",
    )
    assert not (tmp_path / "y").exists() and not [
        p for p in os.listdir(tmp_path) if p.startswith(".export-")
    ]
