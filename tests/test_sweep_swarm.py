"""Swarm sweeps: N mixtures of one stage's mix drawn from a Dirichlet around a prior, each a
normal sweep point (deterministic draws, the prior as their mean, floors, repetition caps,
near-duplicate rejection, exact totals, one-line refusals, expand and compile on the toy world)."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
import yaml

from ablate.errors import AblateError
from ablate.sweep.swarm import draw_mixtures, round_to_total
from conftest import assert_one_line_error, link_toyworld
from sweep_helpers import base, write_sweep

# Four top-level domains of the toy world, 1K tokens each: 4K tokens = 8 steps of 512.
FOUR = {"code.exec": "1K", "math.text": "1K", "math.structured": "1K", "general": "1K"}
DOMAINS = list(FOUR)
TOTAL = 4000


def four_domains(**changes) -> dict:
    return base(stages=[{"name": "mixed", "mix": dict(FOUR)}], **changes)


def tv_pairs(shares_NK: np.ndarray) -> np.ndarray:
    """Total variation distance of every pair of rows."""
    return np.array([0.5 * np.abs(a - b).sum() for a, b in itertools.combinations(shares_NK, 2)])


@pytest.fixture(scope="module")
def world(tmp_path_factory, toyworld_root):
    root = tmp_path_factory.mktemp("swarm")
    link_toyworld(toyworld_root, root)
    return root


@pytest.fixture
def here(world, monkeypatch):
    monkeypatch.chdir(world)
    return world


# ------------------------------------------------------------------ the draws


def test_draws_are_deterministic_and_a_larger_n_keeps_the_smaller_swarm():
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    a = draw_mixtures(prior, 10, 20, seed=3, total=10**6, min_distance=0.05)
    b = draw_mixtures(prior, 10, 20, seed=3, total=10**6, min_distance=0.05)
    assert a.tobytes() == b.tobytes()
    longer = draw_mixtures(prior, 10, 50, seed=3, total=10**6, min_distance=0.05)
    assert np.array_equal(longer[:20], a)
    other = draw_mixtures(prior, 10, 20, seed=4, total=10**6, min_distance=0.05)
    assert not np.array_equal(other, a)


def test_totals_are_exact_whole_tokens():
    t = draw_mixtures(np.ones(6), 0.5, 300, seed=1, total=299_993)
    assert t.dtype == np.int64 and (t.sum(axis=1) == 299_993).all() and (t >= 1).all()
    x = np.random.default_rng(0).dirichlet(np.ones(5), size=100)
    r = round_to_total(x, 1001)
    assert (r.sum(axis=1) == 1001).all() and (np.abs(r - x * 1001) < 1).all()


def test_the_mean_and_spread_follow_the_prior_and_concentration():
    prior = np.array([0.5, 0.3, 0.15, 0.05])
    n, conc = 4000, 10.0
    s = draw_mixtures(prior, conc, n, seed=0, total=10**7) / 1e7
    # Dirichlet: mean = prior, var = p (1 - p) / (concentration + 1)
    se = np.sqrt(prior * (1 - prior) / (conc + 1) / n)
    assert (np.abs(s.mean(axis=0) - prior) < 4 * se).all(), (s.mean(axis=0), prior)
    var = s.var(axis=0)
    assert np.allclose(var, prior * (1 - prior) / (conc + 1), rtol=0.15), var
    wide = draw_mixtures(prior, 2.0, n, seed=0, total=10**7) / 1e7
    assert (wide.var(axis=0) > 2 * var).all()  # a lower concentration spreads the swarm


def test_a_repetition_cap_that_binds_is_never_exceeded():
    prior, total = np.full(3, 1 / 3), 90_000
    free = draw_mixtures(prior, 5, 200, seed=2, total=total)
    cap = np.array([0.25 * total, np.inf, np.inf])
    assert (free[:, 0] > cap[0]).mean() > 0.3  # uncapped, many draws would break it
    capped = draw_mixtures(prior, 5, 200, seed=2, total=total, cap_K=cap)
    assert (capped[:, 0] <= cap[0]).all() and capped[:, 0].max() > 0.9 * cap[0]


def test_min_share_is_a_floor_by_rejection():
    t = draw_mixtures(np.ones(5), 3, 200, seed=5, total=100_000, min_share=0.08)
    assert t.min() >= 8_000
    assert (draw_mixtures(np.ones(5), 3, 200, seed=5, total=100_000).min(axis=1) < 8_000).any()


def test_near_duplicates_are_rejected():
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    close = draw_mixtures(prior, 300, 30, seed=0, total=10**6) / 1e6
    assert tv_pairs(close).min() < 0.03  # a tight swarm without the check has near-duplicates
    far = draw_mixtures(prior, 300, 30, seed=0, total=10**6, min_distance=0.03) / 1e6
    assert tv_pairs(far).min() >= 0.03


def test_a_swarm_that_cannot_be_drawn_says_what_to_relax():
    with pytest.raises(AblateError) as exc:
        draw_mixtures(np.ones(3), 1e6, 20, seed=0, total=10**6, min_distance=0.2, where="s.yaml")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("s.yaml: only 1 of 20 mixtures after")
    assert "within min_distance" in msg and "lower min_distance" in msg


# ------------------------------------------------------------------ sweeps on the toy world


def test_expand_a_swarm_with_seeds_into_exact_points(here, cli):
    swarm = {"n": 5, "seed": 11, "concentration": 5, "min_share": 0.05}
    path = write_sweep(here, "sw", base=four_domains(), swarm=swarm, seeds=[1, 2])
    r = cli("sweep", "expand", path, "--no-compile")
    assert r.rc == 0, r.err
    sweep = json.load(open(here / "runs" / "sw" / "sweep.json"))
    names = [p["name"] for p in sweep["points"]]
    assert names[:3] == ["sw-w000-s1", "sw-w000-s2", "sw-w001-s1"] and len(names) == 10
    record = sweep["swarm"]
    assert record["domains"] == DOMAINS and record["total_tokens"] == TOTAL
    assert record["prior"] == {d: 0.25 for d in DOMAINS} and record["stage"] == "mixed"
    mixes = []
    for p in sweep["points"]:
        recipe = yaml.safe_load(open(os.path.join(p["run_dir"], "recipe.yaml")))
        stage = recipe["stages"][0]
        tokens = {d: e["tokens"] for d, e in stage["mix"].items()}
        assert all(set(e) == {"tokens"} for e in stage["mix"].values())  # no share left
        assert sum(tokens.values()) == stage["tokens"] == TOTAL
        assert all(t >= 0.05 * TOTAL for t in tokens.values())
        assert p["values"] == {
            "mixture": p["values"]["mixture"],
            "seed": recipe["seed"],
            **{f"w.{d}": tokens[d] / TOTAL for d in DOMAINS},
        }
        mixes.append(tuple(tokens.values()))
    assert mixes[0::2] == mixes[1::2]  # both seeds of a mixture train the same mix
    assert len(set(mixes)) == 5
    assert "w.code.exec" in r.out.splitlines()[1] and "sw-w004-s2" in r.out
    # the same spec again: the same recipes, byte for byte
    before = {n: open(here / "runs" / "sw" / n / "recipe.yaml").read() for n in names}
    assert cli("sweep", "expand", path, "--no-compile").rc == 0
    assert before == {n: open(here / "runs" / "sw" / n / "recipe.yaml").read() for n in names}
    # a point compiles as is: its plan realizes each domain within one sequence of its tokens
    r = cli("compile", here / "runs" / "sw" / "sw-w003-s2" / "recipe.yaml")
    assert r.rc == 0, r.err
    plan = json.load(open(here / "runs" / "sw" / "sw-w003-s2" / "plan.json"))
    want = {d: v * TOTAL for d, v in sweep["points"][7]["values"].items() if d.startswith("w.")}
    for d, t in want.items():
        assert abs(plan["domains"][d[2:]]["tokens_realized"] - t) <= 64


def test_a_cap_from_the_manifest_binds_and_every_point_plans(here, cli):
    # code.exec holds 863,042 tokens: max_epochs 0.001 lets a point read ~863 of them, 22% of
    # the stage, where the uniform prior puts 25% on average
    swarm = {"n": 12, "prior": "uniform", "max_epochs": 0.001, "min_distance": 0.02}
    path = write_sweep(here, "capped", base=four_domains(), swarm=swarm)
    r = cli("sweep", "expand", path)
    assert r.rc == 0, r.err
    sweep = json.load(open(here / "runs" / "capped" / "sweep.json"))
    cap = sweep["swarm"]["max_tokens"]["code.exec"]
    assert 800 < cap < 900
    shares = np.array([[p["values"][f"w.{d}"] for d in DOMAINS] for p in sweep["points"]])
    assert (shares[:, 0] * TOTAL <= cap).all() and shares[:, 0].max() * TOTAL > 0.8 * cap
    assert tv_pairs(shares).min() >= 0.02
    for p in sweep["points"]:
        plan = json.load(open(os.path.join(p["run_dir"], "plan.json")))
        (ds,) = [d for d in plan["stages"][0]["datasets"] if d["domain"] == "code.exec"]
        assert ds["epochs"] <= 0.001 + 1e-9


def test_densities_swarm_the_leaves_of_a_family(here, cli):
    mix = {"math": {"tokens": "3K", "density": {"math.structured": 0.5, "math.text": 0.5}}}
    raw = base(stages=[{"name": "mixed", "mix": {**mix, "general": "1K"}}])
    swarm = {
        "n": 4,
        "densities": True,
        "prior": {"math.structured": 2, "math.text": 1, "general": 1},
    }
    path = write_sweep(here, "dens", base=raw, swarm=swarm, point_name="m{mixture}")
    r = cli("sweep", "expand", path, "--no-compile")
    assert r.rc == 0, r.err
    sweep = json.load(open(here / "runs" / "dens" / "sweep.json"))
    assert sweep["swarm"]["domains"] == ["math.structured", "math.text", "general"]
    assert sweep["swarm"]["prior"] == {"math.structured": 0.5, "math.text": 0.25, "general": 0.25}
    for p in sweep["points"]:
        v = p["values"]
        mix = yaml.safe_load(open(os.path.join(p["run_dir"], "recipe.yaml")))["stages"][0]["mix"]
        math_tokens = mix["math"]["tokens"]
        assert math_tokens + mix["general"]["tokens"] == TOTAL
        assert mix["general"]["tokens"] == round(v["w.general"] * TOTAL)
        assert math_tokens == round((v["w.math.structured"] + v["w.math.text"]) * TOTAL)
        for leaf in ("math.structured", "math.text"):
            assert mix["math"]["density"][leaf] == pytest.approx(
                v[f"w.{leaf}"] * TOTAL / math_tokens
            )
    assert [p["name"] for p in sweep["points"]] == ["m0", "m1", "m2", "m3"]


# ------------------------------------------------------------------ refusals

TWO_STAGES = base(
    stages=[
        {"name": "a", "mix": {"general": "2K"}},
        {"name": "b", "mix": dict(FOUR)},
    ]
)
ZERO_DENSITY = base(
    stages=[
        {
            "name": "mixed",
            "mix": {
                "math": {"tokens": "3K", "density": {"math.structured": 0, "math.text": 1}},
                "general": "1K",
            },
        }
    ]
)


@pytest.mark.parametrize(
    "body, fragments",
    [
        ({"swarm": {"n": 0}}, ["swarm.n: 0 is out of range", "an integer >= 1 and <= 10000"]),
        ({"swarm": {"n": 20000}}, ["swarm.n: 20000 is out of range"]),
        ({"swarm": {}}, ["swarm: missing required key 'n'"]),
        ({"swarm": {"n": 3, "colour": "red"}}, ["swarm: unknown key 'colour'", "min_distance"]),
        ({"swarm": {"n": 3, "concentration": 0}}, ["swarm.concentration: 0 is out of range"]),
        ({"swarm": {"n": 3, "concentration": float("nan")}}, ["not a finite number"]),
        ({"swarm": {"n": 3, "seed": -1}}, ["swarm.seed: -1 is out of range"]),
        ({"swarm": {"n": 3, "min_share": 1.5}}, ["swarm.min_share: 1.5 is out of range"]),
        ({"swarm": {"n": 3, "min_distance": 2}}, ["swarm.min_distance: 2 is out of range"]),
        ({"swarm": {"n": 3, "max_epochs": 0}}, ["swarm.max_epochs: 0 is out of range"]),
        ({"swarm": {"n": 3, "densities": "yes"}}, ["swarm.densities: expected true or false"]),
        ({"swarm": {"n": 3, "stage": [1]}}, ["swarm.stage: expected a stage name or index"]),
        (
            {"swarm": {"n": 3, "prior": "dirichlet"}},
            ["swarm.prior: 'dirichlet' is not allowed", "tokens, uniform, or a mapping"],
        ),
        (
            {"swarm": {"n": 3, "prior": {**{d: 1 for d in DOMAINS}, "code.nl": 1}}},
            ["swarm.prior.code.nl: not a domain of the swarm", "domains: code.exec, math.text"],
        ),
        (
            {"swarm": {"n": 3, "prior": {"code.exec": 1, "general": 2}}},
            ["swarm.prior: no weight for math.text, math.structured"],
        ),
        (
            {"swarm": {"n": 3, "prior": {d: (0 if d == "general" else 1) for d in DOMAINS}}},
            ["swarm.prior.general: 0 is out of range", "> 0"],
        ),
        (
            {"swarm": {"n": 3, "prior": {d: float("inf") for d in DOMAINS}}},
            ["swarm.prior.code.exec", "not a finite number"],
        ),
        (
            {"swarm": {"n": 3, "stage": "nope"}},
            ["swarm.stage: 'nope' is not a stage of the recipe (stages: mixed"],
        ),
        (
            {"swarm": {"n": 3, "stage": 1}},
            ["swarm.stage: 1 is not a stage of the recipe", "indices 0-0"],
        ),
        (
            {"base": TWO_STAGES, "swarm": {"n": 3}},
            ["swarm.stage: required, the recipe has 2 stages (a, b)"],
        ),
        (
            {"base": TWO_STAGES, "swarm": {"n": 3, "stage": "a"}},
            ["swarm: stage 'a''s mix has one domain (general)", "at least two"],
        ),
        ({"swarm": {"n": 3, "min_share": 0.25}}, ["swarm.min_share: 0.25 x 4 domains", "1/4"]),
        (
            {"swarm": {"n": 3, "max_epochs": 1e-6}},
            ["swarm.max_epochs: under the repetition caps", "fewer than its 4,000 tokens"],
        ),
        (
            {"swarm": {"n": 3, "max_epochs": 0.001, "min_share": 0.24}},
            ["swarm.min_share: code.exec may get at most 8", "below its floor of 960"],
        ),
        (
            {"swarm": {"n": 50, "concentration": 1e6, "min_distance": 0.2}},
            ["swarm: only 1 of 50 mixtures after", "lower min_distance"],
        ),
        ({"swarm": {"n": 3, "densities": True}}, ["swarm.densities: true, but no entry"]),
        (
            {"base": ZERO_DENSITY, "swarm": {"n": 3, "densities": True}},
            ["swarm.prior: tokens gives math.structured a weight of 0", "prior: uniform"],
        ),
        (
            {"swarm": {"n": 3}, "grid": {"stages.mixed.mix.general.tokens": ["1K", "2K"]}},
            ["grid.stages.mixed.mix.general.tokens: sets stages.0.mix.general.tokens", "swarm"],
        ),
        (
            {"swarm": {"n": 3}, "variants": [{"name": "v", "set": {"stages": []}}]},
            ["variants[0].set.stages: sets stages, inside stage 'mixed'"],
        ),
        (
            {"swarm": {"n": 3}, "point_name": "{sweep}-{seed}"},
            ["point_name: unknown field {seed}", "mixture, w.code.exec"],
        ),
    ],
)
def test_bad_swarms_fail_in_one_line_and_write_nothing(here, cli, body, fragments):
    body = {"base": four_domains(), **body}
    path = write_sweep(here, "bad", **body)
    assert_one_line_error(cli("sweep", "expand", path), "bad.yaml: ", *fragments)
    assert not (here / "runs" / "bad").exists()


def test_a_swarm_needs_the_prepared_data(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)  # no data/toyworld here
    path = write_sweep(tmp_path, "nodata", base=four_domains(), swarm={"n": 3})
    assert_one_line_error(
        cli("sweep", "expand", path),
        "nodata.yaml: swarm: the repetition caps need the datasets' sizes: data.manifests[0]",
        "not found",
        "ablate data prepare",
    )
    assert not (tmp_path / "runs").exists()
