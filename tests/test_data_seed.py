"""Two seeds: ``seed`` (the model's initialisation) and ``data_seed`` (the data order).

A recipe without ``data_seed`` means what it meant before the field existed (the same plan,
index files, cache keys and dumped recipe, byte for byte); one with it changes the order of the
samples and nothing else (not the initial weights, not a token of any domain's budget); the
sweep axis ``data_seeds`` and the run registry's ``data_seed`` / ``seed_design`` / ``seed_key``
carry it through to the analysis. Run directories written before it load with data_seed = seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from ablate.errors import AblateError
from analysis_fakes import write_run
from conftest import TINY_CADENCE, assert_one_line_error, link_toyworld, tiny_recipe
from sweep_helpers import base, write_sweep

STAGES = [
    {"name": "code", "mix": {"code": {"tokens": "2K"}}},  # 4 steps of 512 tokens
    {
        "name": "mixed",
        "mix": {
            "math": {"tokens": "2K", "density": {"math.structured": 0.5, "math.text": 0.5}},
            "general": {"tokens": "1K"},
        },
    },  # 6 steps
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, toyworld_root):
    root = tmp_path_factory.mktemp("data-seed")
    link_toyworld(toyworld_root, root)
    return root


@pytest.fixture
def here(world, monkeypatch):
    monkeypatch.chdir(world)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return world


def write_recipe(root, file: str, run_dir: str, **top) -> str:
    """The tiny recipe named ``same`` (the plan records the name) writing to ``runs/<run_dir>``;
    ``top``: seed, data_seed."""
    raw = tiny_recipe(
        "same",
        STAGES,
        data={"manifests": ["data/toyworld/manifest.json"], "cache_dir": "cache"},
        cadence=TINY_CADENCE,
        run_dir=f"runs/{run_dir}",
        **top,
    )
    path = os.path.join(str(root), f"{file}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return path


def compiled(cli, root, file: str, **top) -> tuple[str, dict]:
    """Compile ``file`` (run dir of the same name); its run dir and plan.json."""
    path = write_recipe(root, file, file, **top)
    r = cli("compile", path)
    assert r.rc == 0, r.err
    run_dir = os.path.join(str(root), "runs", file)
    with open(os.path.join(run_dir, "plan.json")) as f:
        return run_dir, json.load(f)


def sample_tokens(recipe_path: str, n: int = 24) -> np.ndarray:
    """The tokens of the first ``n`` samples of every stage, in training order."""
    from ablate.recipe.compile import _single_process_group, build_stage_datasets
    from ablate.recipe.plan import make_plan
    from ablate.recipe.schema import load_recipe

    plan = make_plan(load_recipe(recipe_path))
    with _single_process_group():
        blends = build_stage_datasets(plan)
    return np.stack([np.asarray(b[i]["tokens"]) for b in blends for i in range(n)])


def keys(plan: dict) -> list:
    return [(s["blend_key"], [d["cache_key"] for d in s["datasets"]]) for s in plan["stages"]]


# ------------------------------------------------------------------ recipe, plan, indices


def test_no_data_seed_is_data_seed_equal_to_seed_byte_for_byte(here, cli):
    old_dir, old = compiled(cli, here, "plain")  # seed 7, no data_seed: as every older recipe
    new_dir, new = compiled(cli, here, "explicit", data_seed=7)
    with open(os.path.join(old_dir, "plan.json"), "rb") as a:
        with open(os.path.join(new_dir, "plan.json"), "rb") as b:
            assert a.read() == b.read()  # same order, same index files, same cache keys
    assert old["seed"] == 7 and all(k for _, ks in keys(old) for k in ks)
    # the dump of a recipe without data_seed has no such key (as before the field existed)
    dumped = yaml.safe_load(open(os.path.join(old_dir, "recipe.yaml")))
    assert "data_seed" not in dumped and dumped["seed"] == 7
    assert yaml.safe_load(open(os.path.join(new_dir, "recipe.yaml")))["data_seed"] == 7
    # the dumped recipe loads again into the same plan (what resume and eval read)
    from ablate.recipe.plan import make_plan
    from ablate.recipe.schema import load_recipe

    for run_dir, plan in ((old_dir, old), (new_dir, new)):
        again = make_plan(load_recipe(os.path.join(run_dir, "recipe.yaml")))
        assert again.fingerprint == plan["fingerprint"]


def test_data_seed_changes_the_order_only_and_seed_with_it_fixed_changes_nothing_of_it(here, cli):
    _, base_plan = compiled(cli, here, "s7d7", data_seed=7)
    _, other_data = compiled(cli, here, "s7d9", data_seed=9)
    _, other_init = compiled(cli, here, "s8d7", seed=8, data_seed=7)
    # the data seed is the plan's seed: new index files and blends, under other cache keys
    assert other_data["seed"] == 9 and other_init["seed"] == 7
    assert other_data["fingerprint"] != base_plan["fingerprint"]
    for (blend_a, ds_a), (blend_b, ds_b) in zip(keys(base_plan), keys(other_data)):
        assert blend_a != blend_b and not set(ds_a) & set(ds_b)
    # a different init seed alone: the same plan, byte for byte apart from nothing
    assert other_init == base_plan
    # exact budgets: every domain's realised tokens, per stage and in all, do not move
    assert other_data["domains"] == base_plan["domains"]
    for a, b in zip(base_plan["stages"], other_data["stages"]):
        assert a["domains"] == b["domains"] and a["steps"] == b["steps"]
        assert [d["samples"] for d in a["datasets"]] == [d["samples"] for d in b["datasets"]]
    # the samples themselves: another order under data_seed 9, the same under seed 8
    first = sample_tokens(str(here / "s7d7.yaml"))
    assert not np.array_equal(first, sample_tokens(str(here / "s7d9.yaml")))
    assert np.array_equal(first, sample_tokens(str(here / "s8d7.yaml")))


# The initial weights exactly as training makes them (ablate.train.engine.Engine), for several
# recipes in one process: a digest of every parameter per recipe.
INIT_SCRIPT = r"""
import hashlib, json, sys
from ablate.recipe.schema import load_recipe
from ablate.train import backend
from ablate.train.engine import Engine
out = {}
for path in sys.argv[1:]:
    recipe = load_recipe(path)
    layout = backend.init(recipe)
    try:
        engine = Engine(recipe, layout, 512, 4)
        h = hashlib.sha256()
        for m in engine.modules:
            for name, p in sorted(m.named_parameters()):
                h.update(name.encode())
                h.update(p.detach().float().cpu().numpy().tobytes())
        out[path] = h.hexdigest()
    finally:
        backend.shutdown()
print(json.dumps(out))
"""


def test_initial_weights_follow_seed_and_not_data_seed(here):
    paths = [
        write_recipe(here, "w-s7", "w-s7"),
        write_recipe(here, "w-s7d9", "w-s7d9", data_seed=9),
        write_recipe(here, "w-s8d7", "w-s8d7", seed=8, data_seed=7),
    ]
    r = subprocess.run(
        [sys.executable, "-c", INIT_SCRIPT, *paths],
        cwd=here,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    digest = json.loads(r.stdout.strip().splitlines()[-1])
    assert digest[paths[0]] == digest[paths[1]]  # another data order, the same model
    assert digest[paths[0]] != digest[paths[2]]  # the same data order, another model


@pytest.mark.parametrize(
    "value, fragments",
    [
        (-1, ["out of range", ">= 0"]),
        (2**70, ["out of range", "2**63 - 1"]),
        ("7", ["expected an integer, got '7'"]),
        (1.5, ["expected an integer"]),
        (True, ["expected an integer, got True"]),
        (float("nan"), ["expected an integer"]),
    ],
)
def test_a_bad_data_seed_is_one_line_naming_it(value, fragments):
    from ablate.recipe.schema import parse_recipe

    raw = tiny_recipe("r", STAGES, data_seed=value)
    with pytest.raises(AblateError) as e:
        parse_recipe(raw, "r.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("r.yaml: data_seed: "), msg
    for f in fragments:
        assert f in msg, msg


def test_a_null_data_seed_follows_seed():
    from ablate.recipe.schema import parse_recipe

    recipe = parse_recipe(tiny_recipe("r", STAGES, seed=3, data_seed=None), "r.yaml")
    assert recipe.data_seed is None and recipe.resolved_data_seed == 3
    assert "data_seed" not in recipe.to_dict()
    recipe = parse_recipe(tiny_recipe("r", STAGES, seed=3, data_seed=0), "r.yaml")
    assert recipe.resolved_data_seed == 0 and recipe.to_dict()["data_seed"] == 0


# ------------------------------------------------------------------ sweeps


def test_seeds_and_data_seeds_expand_to_their_product(here, cli):
    path = write_sweep(here, "two", seeds=[1, 2], data_seeds=[7, 8])
    r = cli("sweep", "expand", path, "--no-compile")
    assert r.rc == 0, r.err
    sweep = json.load(open(here / "runs" / "two" / "sweep.json"))
    names = [p["name"] for p in sweep["points"]]
    assert names == ["two-s1-d7", "two-s1-d8", "two-s2-d7", "two-s2-d8"]
    for p, (seed, data_seed) in zip(sweep["points"], [(1, 7), (1, 8), (2, 7), (2, 8)]):
        assert p["values"] == {"seed": seed, "data_seed": data_seed}
        recipe = yaml.safe_load(open(os.path.join(p["run_dir"], "recipe.yaml")))
        assert (recipe["name"], recipe["seed"], recipe["data_seed"]) == (p["name"], seed, data_seed)
    head = r.out.splitlines()[1].split()
    assert head[:3] == ["point", "seed", "data_seed"], r.out


def test_data_seeds_alone_and_in_a_name_template(here, cli):
    path = write_sweep(here, "order", data_seeds=[3, 4])
    assert cli("sweep", "expand", path, "--no-compile").rc == 0
    for d in (3, 4):
        recipe = yaml.safe_load(open(here / "runs" / "order" / f"order-d{d}" / "recipe.yaml"))
        assert recipe["seed"] == base()["seed"] and recipe["data_seed"] == d
    path = write_sweep(
        here,
        "named",
        seeds=[1],
        data_seeds=[5, 6],
        point_name="{sweep}-init{seed}-order{data_seed}",
    )
    assert cli("sweep", "expand", path, "--no-compile").rc == 0
    assert sorted(n for n in os.listdir(here / "runs" / "named") if n[0] != ".") == [
        "named-init1-order5",
        "named-init1-order6",
        "sweep.json",
    ]


def test_seeds_alone_leave_data_seed_out_of_the_points(here, cli):
    # as before data_seed: each point's data order follows its seed
    path = write_sweep(here, "old", seeds=[1, 2])
    assert cli("sweep", "expand", path, "--no-compile").rc == 0
    for s in (1, 2):
        recipe = yaml.safe_load(open(here / "runs" / "old" / f"old-s{s}" / "recipe.yaml"))
        assert recipe["seed"] == s and "data_seed" not in recipe


@pytest.mark.parametrize(
    "value, fragments",
    [
        ([], ["data_seeds: empty axis"]),
        ([1, 2, 1], ["data_seeds: [1, 2, 1] repeats a seed"]),
        ([1, "2"], ["data_seeds[1]", "expected an integer"]),
        ([1.5], ["data_seeds[0]", "expected an integer"]),
        ([-3], ["data_seeds[0]", "out of range", ">= 0"]),
        (7, ["data_seeds", "a list of integer seeds"]),
    ],
)
def test_bad_data_seeds_fail_in_one_line_and_write_nothing(here, cli, value, fragments):
    path = write_sweep(here, "baddata", seeds=[1, 2], data_seeds=value)
    assert_one_line_error(
        cli("sweep", "expand", path, "--no-compile"), os.path.basename(path), *fragments
    )
    assert not (here / "runs" / "baddata").exists()


# ------------------------------------------------------------------ the run registry


def write_runs(root, runs: dict, stages=None) -> None:
    """``runs``: name -> (seed, data_seed or None: a recipe without the key, as before it)."""
    for name, (seed, data_seed) in runs.items():
        path = write_run(root, name, seed=seed, stages=stages)
        if data_seed is not None:
            recipe_path = os.path.join(path, "recipe.yaml")
            recipe = yaml.safe_load(open(recipe_path))
            recipe["data_seed"] = data_seed
            with open(recipe_path, "w") as f:
                yaml.safe_dump(recipe, f, sort_keys=False)


MIX_2K = [{"name": "main", "mix": {"code.exec": {"tokens": "2K"}, "general": {"tokens": "1K"}}}]


@pytest.mark.parametrize(
    "runs, init, data, summary",
    [
        ({"ctl-s1": (1, None), "ctl-s2": (2, None)}, True, True, "together (old style)"),
        ({"ctl-s1-d1": (1, 1), "ctl-s1-d2": (1, 2)}, False, True, "data order only"),
        ({"ctl-s1-d5": (1, 5), "ctl-s2-d5": (2, 5)}, True, False, "init only"),
        (
            {"ctl-s1-d7": (1, 7), "ctl-s1-d8": (1, 8), "ctl-s2-d7": (2, 7), "ctl-s2-d8": (2, 8)},
            True,
            True,
            "init and data order independently",
        ),
        ({"ctl-s1-d8": (1, 8), "ctl-s2-d9": (2, 9)}, True, True, "each init seed with its own"),
        ({"ctl": (1, None)}, False, False, "none"),
    ],
)
def test_seed_design_says_which_seeds_varied(tmp_path, runs, init, data, summary):
    from ablate.analysis.runs import load_runs, runs_frame, seed_design

    write_runs(tmp_path / "a", runs)
    write_runs(
        tmp_path / "b",
        {f"mix-{n[4:]}" if n != "ctl" else "mix": s for n, s in runs.items()},
        MIX_2K,
    )
    frame = runs_frame(load_runs([str(tmp_path / "a" / "*"), str(tmp_path / "b" / "*")]))
    # seeds are not a condition: one condition per mix, labelled without the seed suffixes
    assert sorted(set(frame["condition"])) == ["ctl", "mix"]
    assert list(frame.columns[list(frame.columns).index("seed") :][:2]) == ["seed", "data_seed"]
    want = {n: s if d is None else d for n, (s, d) in runs.items()}
    got = dict(zip(frame["run"], frame["data_seed"]))
    assert all(got[n] == d for n, d in want.items())
    design = seed_design(frame)
    assert (design["init"], design["data"]) == (init, data)
    assert design["pairs"] == sorted({(s, want[n]) for n, (s, _) in runs.items()})
    assert summary in design["summary"] and design["summary"].startswith("seeds varied: ")


def test_old_run_dirs_load_with_data_seed_equal_to_seed(here, cli, tmp_path):
    from ablate.analysis.runs import load_run, runs_frame, seed_key
    from ablate.evals.loading import read_run

    # a fake run written as before data_seed existed, and a compiled one of a recipe without it
    write_runs(tmp_path, {"legacy": (4, None), "new": (4, 11)})
    legacy = load_run(str(tmp_path / "legacy"))
    assert "data_seed" not in open(tmp_path / "legacy" / "recipe.yaml").read()
    assert (legacy.seed, legacy.data_seed, seed_key(legacy)) == (4, 4, (4, 4))
    new = load_run(str(tmp_path / "new"))
    assert (new.seed, new.data_seed, seed_key(new)) == (4, 11, (4, 11))
    run_dir, _ = compiled(cli, here, "legacy-compiled")
    run = load_run(run_dir)
    assert (run.seed, run.data_seed) == (7, 7)
    assert runs_frame([run])["data_seed"].tolist() == [7]
    recipe, plan = read_run(run_dir)  # what ablate eval reads
    assert recipe.data_seed is None and recipe.resolved_data_seed == plan["seed"] == 7
    # resume checks the run's plan.json against its recipe.yaml first: they agree
    from ablate.train.loop import preflight

    assert preflight(recipe, "auto", False).fingerprint == plan["fingerprint"]
