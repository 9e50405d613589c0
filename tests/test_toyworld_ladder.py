"""The toy world's difficulty ladder: k-step probes in a neutral ``Q:``/``A:`` frame, with ten
answer choices each, and how the ``probes`` eval task scores them (greedy accuracy, accuracy by
likelihood over the choices, gold bits per byte, pooled per ladder)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from ablate.data.toyworld import ToyWorldConfig, capability, generate
from ablate.data.toyworld.world import OPS, apply
from ablate.errors import AblateError
from ablate.evals.lm import Continuation
from ablate.evals.tasks.probes import Probes, choose

from conftest import assert_one_line_error, write_spec

LADDER = ToyWorldConfig(documents_per_domain=300, probes_per_task=40, ladder=[1, 2, 3])
_VERB_OP = {v: op for op, (verbs, _, _) in OPS.items() for v in verbs}
_PY_OP = {"+": "add", "-": "sub", "*": "mul"}


@pytest.fixture(scope="module")
def ladder_world():
    return generate(LADDER)


def world_hash(cfg: ToyWorldConfig) -> str:
    rows, probes = generate(cfg)
    return hashlib.sha256(json.dumps([rows, probes], sort_keys=True).encode()).hexdigest()


def test_default_world_is_byte_identical_to_before_the_ladder():
    # computed with the generator as it was before ``ladder`` and ``steps=`` existed: an empty
    # ladder must leave every row, every probe and every random draw where it was
    assert (
        world_hash(ToyWorldConfig(documents_per_domain=200))
        == "19d565be69f99e2c7afa8b17296e9a66fcb42250e7bc7542edb15c0db82cc63b"
    )


def solve_story(prompt: str) -> tuple[int, int]:
    """(answer, steps) of a neutral math prompt, recomputed from its sentences."""
    story = prompt.removeprefix("Q: ").removesuffix("\nA:")
    value = int(re.match(r"\w+ has (\d+) \w+\.", story).group(1))
    steps = 0
    for verb, rest in re.findall(r"(?:She|He|Then she|Then he) (.+?) (\d+ \w+|the \w+)\.", story):
        steps += 1
        if verb in ("doubles", "triples"):
            value *= 2 if verb == "doubles" else 3
        else:
            value = apply(_VERB_OP[verb], value, int(rest.split()[0]))
    return value, steps


def solve_program(prompt: str) -> tuple[int, int]:
    """(value, steps) of a neutral program prompt, by running its assignments."""
    body, asked = re.fullmatch(r"Q: (.*)\nWhat is (\w)\?\nA:", prompt, re.S).groups()
    scope: dict = {}
    exec(body, scope)
    return scope[asked], len(body.splitlines()) - 1


def test_ladder_probes_have_exact_steps_right_answers_and_ten_distinct_choices(ladder_world):
    _, probes = ladder_world
    for k in (1, 2, 3):
        for task, solve in (
            (f"math_ladder_{k}", solve_story),
            (f"program_ladder_{k}", solve_program),
        ):
            records = probes[task]
            assert len(records) == LADDER.probes_per_task
            assert len({r["prompt"] for r in records}) == len(records)  # distinct probes
            for r in records:
                assert set(r) == {"id", "prompt", "answer", "gold", "steps", "choices"}
                value, steps = solve(r["prompt"])
                assert steps == r["steps"] == k, r
                assert str(value) == r["answer"] and r["gold"] == f" {value}\n", r
                assert 0 <= value <= LADDER.max_value
                assert len(r["choices"]) == len(set(r["choices"])) == 10, r
                assert r["answer"] in r["choices"]
                assert all(c.isdigit() for c in r["choices"]), r  # non-negative integers
    # a one-step problem's distractors always include its start (the "did nothing" answer)
    for r in probes["program_ladder_1"]:
        start = int(re.match(r"Q: \w = (\d+)", r["prompt"]).group(1))
        assert str(start) in r["choices"], r
    # the gold sits at different positions: shuffled, not always first or last
    positions = {r["choices"].index(r["answer"]) for r in probes["math_ladder_2"]}
    assert len(positions) >= 5


def test_ladder_prompts_are_neutral_and_held_out_of_training(ladder_world):
    rows, probes = ladder_world
    train_text = "\n".join(r["text"] for r in rows)
    for task in [t for t in probes if "_ladder_" in t]:
        for r in probes[task]:
            for marker in ("Question:", "Answer:", "Step ", "assert"):
                assert marker not in r["prompt"], (marker, r["prompt"])
            assert r["prompt"].startswith("Q: ") and r["prompt"].endswith("\nA:")
            assert r["prompt"] not in train_text
            if task.startswith("math"):
                # the same question in the training frame never appears either
                story = r["prompt"].removeprefix("Q: ").removesuffix("A:")
                assert "Question: " + story not in train_text
            else:
                body, var = re.fullmatch(r"Q: (.*)\nWhat is (\w)\?\nA:", r["prompt"], re.S).groups()
                assert f"{body}\nassert {var} == " not in train_text
    assert "solutions" not in probes["math_ladder_1"][0]
    assert "Q: " not in train_text  # no training domain writes the frame at all


def test_training_steers_clear_of_ladder_questions_it_would_otherwise_write():
    """The exclusion is not vacuous: a 1-rung ladder of many probes in a world with few
    distinct problems collides with the training stream, and the ladder moves training."""
    small = dict(documents_per_domain=400, probes_per_task=150, max_operand=2, max_value=4)
    rows_plain, _ = generate(ToyWorldConfig(**small))
    rows, probes = generate(ToyWorldConfig(**small, ladder=[1]))
    plain_text = "\n".join(r["text"] for r in rows_plain)
    held = ["Question: " + r["prompt"][3:-2] for r in probes["math_ladder_1"]]
    assert any(q in plain_text for q in held)  # without the ladder, training writes some
    text = "\n".join(r["text"] for r in rows)
    assert not any(q in text for q in held)


def test_ladder_is_deterministic_per_seed_and_each_rung_stands_alone(ladder_world):
    _, probes = ladder_world
    again = generate(ToyWorldConfig(**{**LADDER.__dict__, "documents_per_domain": 10}))[1]
    for task in probes:
        assert again[task] == probes[task], task  # training size does not move any probe
    alone = generate(ToyWorldConfig(documents_per_domain=10, probes_per_task=40, ladder=[2]))[1]
    assert alone["math_ladder_2"] == probes["math_ladder_2"]
    assert alone["program_ladder_2"] == probes["program_ladder_2"]
    other = generate(ToyWorldConfig(**{**LADDER.__dict__, "documents_per_domain": 10, "seed": 9}))
    assert other[1]["math_ladder_2"] != probes["math_ladder_2"]
    # existing probes do not move when a ladder is added
    plain = generate(ToyWorldConfig(documents_per_domain=10, probes_per_task=40))[1]
    for task in ("math_answer", "program_output", "fact_recall"):
        assert plain[task] == probes[task]


def test_a_rung_may_be_longer_than_training_chains():
    _, probes = generate(
        ToyWorldConfig(documents_per_domain=5, probes_per_task=5, max_steps=2, ladder=[20])
    )
    for r in probes["program_ladder_20"]:
        assert solve_program(r["prompt"]) == (int(r["answer"]), 20)
    for r in probes["math_ladder_20"]:
        assert solve_story(r["prompt"]) == (int(r["answer"]), 20)
    assert capability("math_ladder_20") == "math" and capability("program_ladder_7") == "code"


@pytest.mark.parametrize("bad", [[0], [21], [1, 1], "1,2", [1.5], [True], 3, [2, None]])
def test_bad_ladder_values_are_one_line_errors(bad):
    with pytest.raises(AblateError) as err:
        ToyWorldConfig(ladder=bad, where="spec.options")
    message = str(err.value)
    assert message.startswith("spec.options.ladder: ") and "\n" not in message
    assert "distinct integers in [1, 20]" in message


TINY_WORLD = dict(documents_per_domain=5, max_operand=2, max_value=4, max_steps=1)  # 2337 programs


def test_a_world_too_small_for_its_probes_is_one_line_not_a_hang():
    # more distinct programs asked for than exist: the program probe sampler gives up
    with pytest.raises(AblateError, match=r"^toyworld\.probes_per_task: 3000 distinct programs"):
        generate(ToyWorldConfig(probes_per_task=3000, **TINY_WORLD))
    # every program held out by the probes: training has none left to write
    with pytest.raises(AblateError, match=r"^toyworld: the probes hold out every program"):
        generate(ToyWorldConfig(probes_per_task=2337, **TINY_WORLD))


def test_bad_ladder_through_prepare_is_one_line_and_leaves_nothing(tmp_path, cli):
    spec = write_spec(
        tmp_path / "corpora.yaml",
        [{"reader": "toyworld", "options": {"documents_per_domain": 5, "ladder": [2, 0]}}],
    )
    r = cli("data", "prepare", spec, "--out", tmp_path / "out", "--workers", "1")
    assert_one_line_error(r, "corpora.yaml", "options.ladder: [2, 0]", "[1, 20]")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- scoring


class FakeTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


class FakeLM:
    """Scores we control: a continuation's NLL is a fixed function of its text and its prompt,
    and greedy generation answers the prompts it is told to, in a format around the number."""

    def __init__(self, nll_of, answers: dict[str, str]):
        self.nll_of, self.answers, self.score_calls = nll_of, answers, []

    def score(self, pairs):
        self.score_calls.append(len(pairs))
        return [
            Continuation(
                nll=self.nll_of(bytes(c).decode(), bytes(p).decode()), tokens=len(c), greedy=False
            )
            for p, c in pairs
        ]

    def generate_text(self, prompts, max_new_tokens, stop_strings=()):
        if all(p.startswith("Q: ") for p in prompts):  # ladder: a bare number, then a newline
            assert max_new_tokens == 8 and stop_strings == ("\n",)
        return [self.answers.get(p, "no idea") for p in prompts]


def test_choose_picks_the_most_likely_choice_and_the_earliest_on_a_tie():
    rows = [
        {"prompt": "a", "choices": ["1", "2", "3"]},
        {"prompt": "b", "choices": ["7", "8", "9"]},
    ]
    table = {
        ("a", " 1\n"): 3.0,
        ("a", " 2\n"): 1.0,
        ("a", " 3\n"): 2.0,
        ("b", " 7\n"): 4.0,
        ("b", " 8\n"): 0.5,
        ("b", " 9\n"): 0.5,
    }  # tie: 8 before 9
    lm = FakeLM(lambda c, p: table[(p, c)], {})
    picked, nll_RC = choose(lm, FakeTokenizer(), rows)
    assert picked == [1, 1]
    assert nll_RC == [[3.0, 1.0, 2.0], [4.0, 0.5, 0.5]]
    assert lm.score_calls == [6]  # every row's choices in one batched call


def test_probes_task_reports_ladder_metrics_that_match_a_hand_computation(tmp_path, ladder_world):
    _, probes = ladder_world
    root = tmp_path / "world"
    (root / "probes").mkdir(parents=True)
    files = {}
    for task in ("math_ladder_1", "math_ladder_2", "program_ladder_1", "fact_recall"):
        with open(root / "probes" / f"{task}.jsonl", "w") as f:
            for r in probes[task]:
                f.write(json.dumps(r) + "\n")
        files[task] = {"path": f"probes/{task}.jsonl", "count": len(probes[task])}

    def nll_of(cont: str, prompt: str) -> float:  # arbitrary but fixed, with ties
        return float(int(hashlib.sha1((prompt + cont).encode()).hexdigest(), 16) % 7)

    # greedy answers: right for every third ladder row, wrapped in text the rule must see past
    answers = {}
    for task in ("math_ladder_1", "math_ladder_2", "program_ladder_1"):
        for i, r in enumerate(probes[task]):
            answers[r["prompt"]] = f" {r['answer']} items" if i % 3 == 0 else " 999"
    lm = FakeLM(nll_of, answers)
    ctx = SimpleNamespace(
        em=SimpleNamespace(
            manifests=[SimpleNamespace(probes=files, root=str(root))],
            tokenizer=FakeTokenizer(),
            run_dir="run",
        ),
        lm=lm,
        options=SimpleNamespace(limit=None),
        progress=lambda message: None,
    )
    result = Probes().run(ctx)
    m = result.metrics

    def hand(task: str) -> tuple[int, int, float, int]:
        rows = probes[task]
        chosen = 0
        for r in rows:
            nll_C = [nll_of(f" {c}\n", r["prompt"]) for c in r["choices"]]
            best = nll_C.index(min(nll_C))  # the first of the smallest
            chosen += r["choices"][best] == r["answer"]
        greedy = sum(1 for i in range(len(rows)) if i % 3 == 0)
        gold_nll = sum(nll_of(r["gold"], r["prompt"]) for r in rows)
        nbytes = sum(len(r["gold"].encode()) for r in rows)
        return chosen, greedy, gold_nll / nbytes / math.log(2), len(rows)

    pooled = {"math_ladder": [0, 0, 0], "program_ladder": [0, 0, 0]}
    for task in ("math_ladder_1", "math_ladder_2", "program_ladder_1"):
        chosen, greedy, bpb, n = hand(task)
        assert m[f"choice_accuracy/{task}"] == chosen / n
        assert m[f"accuracy/{task}"] == greedy / n
        assert m[f"gold_bpb/{task}"] == pytest.approx(bpb)
        family = pooled[task.rsplit("_", 1)[0]]
        family[0] += chosen
        family[1] += greedy
        family[2] += n
    assert 0 < m["choice_accuracy/math_ladder_1"] < 1  # the fake's scores are not degenerate
    for family, (chosen, greedy, n) in pooled.items():
        assert m[f"choice_accuracy/{family}"] == chosen / n
        assert m[f"accuracy/{family}"] == greedy / n
        assert result.samples_by_metric[f"accuracy/{family}"] == n
    # the probes without choices keep exactly the metrics they had
    assert {k for k in m if "fact_recall" in k} == {"accuracy/fact_recall", "gold_bpb/fact_recall"}
    # choices scored in one call per ladder file; gold reused from them; facts score their gold
    assert lm.score_calls == [len(probes["fact_recall"]), 400, 400, 400]
    assert not any("choice" in k for k in result.samples_by_metric if "fact" in k)


def test_malformed_choices_are_one_line(tmp_path):
    path = tmp_path / "probes" / "math_ladder_1.jsonl"
    path.parent.mkdir()
    path.write_text(
        json.dumps(
            {"id": "x", "prompt": "Q: a\nA:", "answer": "1", "gold": " 1\n", "choices": ["1", "1"]}
        )
        + "\n"
    )
    ctx = SimpleNamespace(
        em=SimpleNamespace(
            manifests=[
                SimpleNamespace(probes={"math_ladder_1": {"path": str(path)}}, root=str(tmp_path))
            ],
            tokenizer=FakeTokenizer(),
            run_dir="run",
        ),
        lm=FakeLM(lambda c, p: 0.0, {}),
        options=SimpleNamespace(limit=None),
        progress=lambda message: None,
    )
    with pytest.raises(AblateError) as err:
        Probes().run(ctx)
    assert "math_ladder_1.jsonl: row 1" in str(err.value) and "distinct" in str(err.value)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- a tiny trained run


def test_probes_on_a_tiny_trained_run_write_every_ladder_metric(
    tmp_path, tmp_path_factory, toyworld_root
):
    """A prepared world with ``ladder: [1, 2]`` scored by ``ablate eval`` on the session's tiny
    trained checkpoint (same byte tokenizer, so the run accepts the data)."""
    from eval_run import NAME, trained_run

    trained = trained_run(tmp_path_factory, toyworld_root)
    spec = write_spec(
        tmp_path / "ladder.yaml",
        [
            {
                "reader": "toyworld",
                "eval_fraction": 0.05,
                "options": {
                    "documents_per_domain": 60,
                    "probes_per_task": 6,
                    "entities": 3,
                    "ladder": [1, 2],
                },
            }
        ],
        tokenizer="byte",
    )
    from ablate.data.prepare import prepare

    manifest = prepare(spec, str(tmp_path / "world"), workers=1).manifest
    assert {t: info["capability"] for t, info in manifest.probes.items() if "ladder" in t} == {
        "math_ladder_1": "math",
        "math_ladder_2": "math",
        "program_ladder_1": "code",
        "program_ladder_2": "code",
    }
    shutil.copytree(
        os.path.join(trained, "runs", NAME),
        tmp_path / "runs" / NAME,
        ignore=shutil.ignore_patterns("eval", "tensorboard"),
    )
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "world", tmp_path / "data" / "toyworld")
    r = subprocess.run(
        [sys.executable, "-m", "ablate.cli", "eval", f"runs/{NAME}", "--tasks", "probes"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    evals = sorted(os.listdir(tmp_path / "runs" / NAME / "eval"))
    last = [e for e in evals if re.fullmatch(r"step_\d+\.json", e)][-1]
    with open(tmp_path / "runs" / NAME / "eval" / last) as f:
        metrics = json.load(f)["tasks"]["probes"]["metrics"]
    for k in (1, 2):
        for family in ("math_ladder", "program_ladder"):
            for kind in ("accuracy", "choice_accuracy"):
                assert 0.0 <= metrics[f"{kind}/{family}_{k}"] <= 1.0
            assert metrics[f"gold_bpb/{family}_{k}"] > 0
    for family in ("math_ladder", "program_ladder"):
        assert 0.0 <= metrics[f"choice_accuracy/{family}"] <= 1.0
        assert 0.0 <= metrics[f"accuracy/{family}"] <= 1.0
    assert "accuracy/math_answer" in metrics and "choice_accuracy/math_answer" not in metrics
