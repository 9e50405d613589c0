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
def trained(tmp_path_factory):
    """A 16-step toy-world run with checkpoints at steps 8 and 16."""
    from ablate.data.prepare import prepare

    root = tmp_path_factory.mktemp("eval")
    prepare("toyworld", str(root / "data" / "toyworld"), workers=1)
    recipe = write(root, "evalrun", cadence__checkpoint_every=8)
    r = run(root, recipe)
    assert r.returncode == 0, r.stderr[-2000:]
    return root


def ablate_eval(root, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "ablate.cli", "eval", *args], cwd=root, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1",
                                            **(env or {})})


def scores(root, run: str, step: int) -> dict:
    with open(root / "runs" / run / "eval" / f"step_{step}.json") as f:
        return json.load(f)


def test_trained_model_has_lower_bits_per_byte_than_its_initialisation_on_every_domain(trained):
    r = ablate_eval(trained, "runs/evalrun", "--step", "0,16", "--tasks", "bpb")
    assert r.returncode == 0, r.stderr[-2000:]
    init, final = scores(trained, "evalrun", 0)["tasks"]["bpb"], scores(trained, "evalrun", 16)["tasks"]["bpb"]
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
    code = ("import sys; from ablate.evals.runner import Context; from ablate.evals.loading import load_eval_model;"
            "from ablate.evals.lm import LanguageModel; from ablate.evals.tasks.base import EvalOptions;"
            "from ablate.evals.tasks.bpb import score_domain;"
            "em = load_eval_model('runs/evalrun', 16); o = EvalOptions(bpb_tokens=10**9, batch_size=32);"
            "ctx = Context(em, LanguageModel(em, 32), o, quiet=True);"
            "print(score_domain(ctx, 'code.exec')[1:])")
    r = subprocess.run([PYTHON, "-c", code], cwd=work, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    tokens, nbytes = eval(r.stdout.strip().splitlines()[-1])
    with open(trained / "data" / "toyworld" / "manifest.json") as f:
        entry = next(e for e in json.load(f)["eval_datasets"] if e["domain"] == "code.exec")
    assert nbytes == entry["bytes"] == tokens == entry["tokens"] - entry["documents"]


def test_scores_are_deterministic_and_a_rerun_skips_what_is_scored(trained):
    copies = []
    for name in ("a", "b"):
        work = trained / f"det_{name}"
        shutil.copytree(trained / "runs" / "evalrun", work / "runs" / "evalrun",
                        ignore=shutil.ignore_patterns("eval"))
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
    # full windows of the training length only (no padding through the routers), 4,096 tokens per domain
    assert list(np.bincount(domain_T)) == [4096] * len(z["domains"])
    assert 257 not in set(token_ids_T.tolist())  # the pad id never appears


def test_generative_tasks_score_end_to_end_with_the_sandbox(trained, tmp_path):
    gsm = tmp_path / "gsm8k"
    gsm.mkdir()
    rows = [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
             "answer": "He has 3+4=<<3+4=7>>7 apples.\n#### 7"},
            {"question": "A box holds 12 pens. 5 are taken. How many are left?",
             "answer": "12-5=<<12-5=7>>7 pens are left.\n#### 7"}]
    (gsm / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (gsm / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = ablate_eval(trained, "runs/evalrun", "--tasks", "gsm8k_cot,gsm8k_pot,gsm8k_gold,humaneval,humaneval_gold",
                    "--limit", "2", "--gsm8k", str(gsm / "test.jsonl"), "--shots", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    tasks = scores(trained, "evalrun", 16)["tasks"]
    for name, metric in (("gsm8k_cot", "accuracy"), ("gsm8k_pot", "accuracy"), ("humaneval", "pass@1"),
                         ("gsm8k_gold", "gold_bpb"), ("humaneval_gold", "gold_bpb")):
        assert tasks[name]["samples"] == 2, name
        assert metric in tasks[name]["metrics"], name
    details = trained / "runs" / "evalrun" / "eval" / "details" / "step_16"
    pot = [json.loads(line) for line in (details / "gsm8k_pot.jsonl").read_text().splitlines()]
    assert len(pot) == 2 and all(p["program"].startswith("def solution():") and p["status"] for p in pot)
    he = [json.loads(line) for line in (details / "humaneval.jsonl").read_text().splitlines()]
    assert [h["task_id"] for h in he] == ["HumanEval/0", "HumanEval/1"]


def test_lm_eval_adapter_runs_local_tasks(trained, tmp_path):
    include = tmp_path / "tasks"
    shutil.copytree(TASK_DIR, include)
    for yaml_file in include.glob("*.yaml"):  # data_files are resolved from the working directory
        yaml_file.write_text(yaml_file.read_text().replace("DATA_DIR", str(include)))
    r = ablate_eval(trained, "runs/evalrun", "--tasks", "lm_eval:toy_facts,lm_eval:toy_text",
                    "--lm-eval-include", str(include))
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
    r = subprocess.run([PYTHON, "-c", code], cwd=trained, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    got, direct = map(float, r.stdout.split()[-2:])
    assert len("The capital of Rakami is Thalo. " * 7) > 64  # longer than TINY's window
    assert got == pytest.approx(direct, abs=1e-3 * abs(direct))


# ------------------------------------------------------------------ bad input

def test_unknown_task(trained):
    one_line_error(ablate_eval(trained, "runs/evalrun", "--tasks", "bpb,mmlu_pro"), "--tasks", "mmlu_pro", "known:")


def test_missing_data_file(trained, tmp_path):
    one_line_error(ablate_eval(trained, "runs/evalrun", "--tasks", "gsm8k_gold", "--gsm8k", str(tmp_path / "nope.jsonl")),
                   "nope.jsonl", "not found")


def test_malformed_jsonl_row(trained, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + '{"question": "q", "answer": 3}\n')
    one_line_error(ablate_eval(trained, "runs/evalrun", "--tasks", "gsm8k_gold", "--gsm8k", str(bad)),
                   "bad.jsonl", "line 2", "answer")
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    one_line_error(ablate_eval(trained, "runs/evalrun", "--tasks", "gsm8k_gold", "--gsm8k", str(bad)),
                   "line 2", "not valid JSON")


def test_checkpoint_from_a_different_tokenizer(trained):
    work = trained / "other_tok"
    shutil.copytree(trained / "runs" / "evalrun", work / "runs" / "evalrun", ignore=shutil.ignore_patterns("eval"))
    os.symlink(trained / "data", work / "data")
    plan_path = work / "runs" / "evalrun" / "plan.json"
    plan = json.loads(plan_path.read_text())
    plan["tokenizer"]["fingerprint"] = "hf-0123456789abcdef"
    plan_path.write_text(json.dumps(plan))
    one_line_error(ablate_eval(work, "runs/evalrun", "--tasks", "bpb"), "tokenizer", "hf-0123456789abcdef", "byte-v1")


def test_run_directory_without_checkpoints(trained):
    recipe = write(trained, "untrained")
    r = subprocess.run([PYTHON, "-m", "ablate.cli", "compile", recipe], cwd=trained, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    one_line_error(ablate_eval(trained, "runs/untrained"), "runs/untrained", "no complete checkpoint", "--step 0")
    one_line_error(ablate_eval(trained, "runs/untrained", "--step", "8"), "no complete checkpoint at step 8")
    one_line_error(ablate_eval(trained, "runs/nothing_here"), "runs/nothing_here", "no such run directory")


# ------------------------------------------------------------------ inside training

@pytest.mark.parametrize("nproc,ep", [(1, 1), (2, 2)], ids=["one-process", "expert-parallel-2"])
def test_evaluation_inside_training_matches_ablate_eval_of_its_checkpoint(trained, nproc, ep):
    """Scores written by training at its eval cadence equal ``ablate eval`` of the saved
    checkpoint, and evaluating does not change training (losses as without it)."""
    name = f"live{nproc}"
    recipe = write(trained, name, cadence__checkpoint_every=8, cadence__eval_every=8,
                   cadence__eval_tasks=["bpb", "probes"], cadence__eval_options={"limit": 8, "bpb_tokens": 4096},
                   parallelism={"ep": ep})
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
    shutil.copytree(trained / "runs" / name, work / "runs" / name, ignore=shutil.ignore_patterns("eval"))
    os.symlink(trained / "data", work / "data")
    r = ablate_eval(work, f"runs/{name}", "--step", "8,16", "--tasks", "bpb,probes", "--limit", "8", "--bpb-tokens", "4096")
    assert r.returncode == 0, r.stderr[-3000:]
    for s in (8, 16):
        posthoc = scores(work, name, s)["tasks"]
        for task in ("bpb", "probes"):
            assert live[s][task]["fingerprint"] == posthoc[task]["fingerprint"]
            for metric, value in live[s][task]["metrics"].items():
                assert posthoc[task]["metrics"][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (s, metric)


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
    r = subprocess.run([PYTHON, "-c", code], cwd=trained, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    same, generated, prompt_lengths = json.loads(r.stdout.strip().splitlines()[-1])
    assert same
    assert any(min(p, 63) + g > 64 for p, g in zip(prompt_lengths, generated))  # some rows outgrew the window
    assert len(set(prompt_lengths)) > 3


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_a_cpu_trained_checkpoint_scores_the_same_on_cuda(trained):
    work = trained / "cuda"
    shutil.copytree(trained / "runs" / "evalrun", work / "runs" / "evalrun", ignore=shutil.ignore_patterns("eval"))
    os.symlink(trained / "data", work / "data")
    r = ablate_eval(work, "runs/evalrun", "--tasks", "bpb", "--backend", "cuda")
    assert r.returncode == 0, r.stderr[-3000:]
    cuda = scores(work, "evalrun", 16)["tasks"]["bpb"]["metrics"]
    r = ablate_eval(trained, "runs/evalrun", "--tasks", "bpb", "--backend", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    cpu = scores(trained, "evalrun", 16)["tasks"]["bpb"]["metrics"]
    for metric, value in cpu.items():
        assert cuda[metric] == pytest.approx(value, rel=1e-3), metric
