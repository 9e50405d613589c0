"""``ablate compile``: every recipe validates; the built indices prove the budgets; caches are
reused."""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest
import yaml

from conftest import link_toyworld
from ablate.recipe.compile import _single_process_group, build_stage_datasets, compile_recipe
from ablate.recipe.plan import make_plan
from ablate.recipe.schema import load_recipe, parse_recipe

from conftest import assert_one_line_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "toy", "*.yaml"))) + [
    os.path.join(REPO, "recipes", "quickstart.yaml")
]
CLUSTER_RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "cluster", "*.yaml")))


@pytest.fixture
def workdir(toyworld_root, tmp_path, monkeypatch):
    """A fresh working directory (own cache and runs) that sees the session's toy world."""
    link_toyworld(toyworld_root, tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def realized_samples(blend) -> np.ndarray:
    """Samples per dataset, counted from megatron-core's built blend index (not from the plan)."""
    return np.bincount(np.asarray(blend.dataset_index), minlength=len(blend.datasets))


# ------------------------------------------------------------------ every recipe


def test_every_recipe_in_recipes_loads_and_validates():
    paths = sorted(glob.glob(os.path.join(REPO, "recipes", "**", "*.yaml"), recursive=True))
    # corpora specs and sweep files (recipes/sweeps/, recipes/study/: a `base` plus axes) are
    # not recipes
    recipes = [
        p
        for p in paths
        if os.sep + "corpora" + os.sep not in p and "base" not in (yaml.safe_load(open(p)) or {})
    ]
    assert len(recipes) >= 25
    for path in recipes:
        r = load_recipe(path)
        assert r.stages and r.name
        again = parse_recipe(
            r.to_dict(), origin=path
        )  # the resolved dump loads back to the same recipe
        assert again.to_dict() == r.to_dict()
        header = open(path).read().split("\nname:")[0]
        assert "ablate compile" in header and "Batch arithmetic" in header, path


@pytest.mark.parametrize("path", TOY_RECIPES, ids=os.path.basename)
def test_toy_recipe_realized_tokens_equal_requested_within_one_sequence(path, workdir):
    recipe = load_recipe(path)
    plan, plan_path = compile_recipe(recipe)
    assert plan_path == os.path.join("runs", recipe.name, "plan.json") and os.path.isfile(plan_path)
    with _single_process_group():
        blends = build_stage_datasets(plan)
    seq = plan.seq_length
    for stage, blend in zip(plan.stages, blends):
        counts = realized_samples(blend)
        assert len(blend) == stage.samples == stage.steps * plan.global_batch_size
        for d, n in zip(stage.datasets, counts):
            assert n == d.samples
            assert abs(int(n) * seq - d.tokens_requested) < seq, (stage.name, d.prefix)
    resolved = parse_recipe(
        yaml.safe_load(open(os.path.join("runs", recipe.name, "recipe.yaml"))), "resolved"
    )
    assert resolved.to_dict() == recipe.to_dict()
    assert (
        resolved.model.num_experts == recipe.model.num_experts
        and resolved.run_dir == os.path.join("runs", recipe.name)
    )
    saved = json.load(open(plan_path))
    assert [s["name"] for s in saved["stages"]] == [s.name for s in recipe.stages]
    for s in saved["stages"]:
        for d in s["datasets"]:
            assert {
                "prefix",
                "domain",
                "weight",
                "samples",
                "tokens_requested",
                "tokens_realized",
                "epochs",
            } <= set(d)


@pytest.mark.parametrize("path", CLUSTER_RECIPES, ids=os.path.basename)
def test_cluster_recipe_plans_meet_their_budgets(path, tmp_path, monkeypatch):
    """Cluster recipes against a manifest of the right domains and sizes (too big to build here)."""
    from ablate.data.manifest import DatasetEntry, Manifest

    monkeypatch.chdir(tmp_path)
    os.makedirs("data/cluster")
    sizes = {
        "code.exec": 600e9,
        "code.nl": 300e9,
        "math.text": 120e9,
        "math.structured": 80e9,
        "math.code": 20e9,
        "general": 900e9,
    }
    entries = [
        DatasetEntry(
            domain=d,
            prefix=f"src/{d}",
            source="src",
            split="train",
            documents=int(n // 1000),
            tokens=int(n),
            bytes=int(n * 4),
            dtype="int32",
            tokenizer="hf-x",
            fingerprint=f"f-{d}",
            index_sha256="",
        )
        for d, n in sizes.items()
    ]
    m = Manifest(
        tokenizer={
            "kind": "hf",
            "path": "tokenizer.json",
            "fingerprint": "hf-x",
            "vocab_size": 100000,
            "eod": 0,
            "pad": 0,
        },
        seed=1,
        domains=[],
        datasets=entries,
        eval_datasets=[],
        path="data/cluster/manifest.json",
    )
    open(m.path, "w").write(m.to_json())
    monkeypatch.setattr(
        Manifest, "verify", lambda self, **kw: None
    )  # no files behind this manifest
    plan = make_plan(load_recipe(path))
    for stage in plan.stages:
        assert sum(d.samples for d in stage.datasets) == stage.samples
        for d in stage.datasets:
            assert abs(d.tokens_realized - d.tokens_requested) < plan.seq_length
        assert (
            abs(stage.tokens - stage.tokens_nominal) <= plan.seq_length * plan.global_batch_size / 2
        )


# ------------------------------------------------------------------ blend properties


def test_every_prefix_of_a_stage_is_within_one_sample_of_the_target_shares(workdir):
    plan, _ = compile_recipe(load_recipe(os.path.join(REPO, "recipes", "quickstart.yaml")))
    with _single_process_group():
        (blend,) = build_stage_datasets(plan)
    stage = plan.stages[0]
    index = np.asarray(blend.dataset_index)
    n = np.arange(1, len(index) + 1)
    for i, d in enumerate(stage.datasets):
        seen = np.cumsum(index == i)
        deviation = np.abs(seen - d.samples / stage.samples * n)
        assert deviation.max() <= 1.0, (d.domain, deviation.max())


def test_with_several_datasets_per_domain_every_prefix_holds_each_domain_within_one_sample(
    tmp_path,
):
    """A stage over 18 datasets in 6 domains (the benchmark's synthetic .idx files): the built
    blend holds every domain within one sample of its share at every prefix, each dataset within
    two, and exactly the plan's count of each."""
    import sys

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import compile as bench  # noqa: E402  (the benchmark's synthetic megatron-format data)

    manifest = bench.make_synthetic(str(tmp_path / "data"), 18, 40_000_000, seed=3)
    raw = bench.recipe_dict(
        "multi",
        manifest,
        str(tmp_path / "cache"),
        str(tmp_path / "run"),
        512,
        64,
        12_000_000,
        bench.mix(0.3, 0.3),
    )
    plan, _ = compile_recipe(parse_recipe(raw, origin="multi.yaml"))
    with _single_process_group():
        (blend,) = build_stage_datasets(plan)
    stage = plan.stages[0]
    index = np.asarray(blend.dataset_index)
    assert realized_samples(blend).tolist() == [d.samples for d in stage.datasets]
    S, n = len(index), np.arange(1, len(index) + 1)
    domains = np.array([d.domain for d in stage.datasets])
    assert len(set(domains)) == 6 and len(domains) == 18
    for dom in set(domains):
        inside = domains == dom
        share = sum(d.samples for d, x in zip(stage.datasets, inside) if x) / S
        assert np.abs(np.cumsum(inside[index]) - share * n).max() <= 1.0, dom
    for i, d in enumerate(stage.datasets):
        assert np.abs(np.cumsum(index == i) - d.samples / S * n).max() < 2.0, d.prefix


def test_samples_carry_their_dataset_id_and_real_tokens(workdir):
    from ablate.data.indexed import open_indexed

    plan, _ = compile_recipe(load_recipe(os.path.join(REPO, "recipes", "quickstart.yaml")))
    with _single_process_group():
        (blend,) = build_stage_datasets(plan)
    stage = plan.stages[0]
    for i in (0, 1, 57, len(blend) - 1):
        sample = blend[i]
        d = stage.datasets[int(sample["dataset_id"])]
        assert sample["tokens"].shape[0] == plan.seq_length
        # every sample's tokens occur contiguously in its dataset's documents + EOD stream
        ds = open_indexed(d.path)
        stream = np.concatenate([ds[j] for j in range(len(ds))])
        first = sample["tokens"][:8].numpy()
        hits = np.flatnonzero(
            np.all(np.lib.stride_tricks.sliding_window_view(stream, 8) == first, axis=1)
        )
        assert hits.size > 0, (i, d.prefix)


# ------------------------------------------------------------------ determinism and reuse


def _all_tokens(plan) -> list[np.ndarray]:
    with _single_process_group():
        blends = build_stage_datasets(plan)
    return [np.stack([b[i]["tokens"].numpy() for i in range(len(b))]) for b in blends]


def _recipe(workdir, name: str, cache: str):
    r = load_recipe(os.path.join(REPO, "recipes", "toy", name))
    r.data.cache_dir = cache
    return r


def test_compiling_twice_gives_identical_indices(workdir):
    r = _recipe(workdir, "dsm-code-then-math.yaml", "cache")
    a = _all_tokens(compile_recipe(r)[0])
    files = {p: open(p, "rb").read() for p in glob.glob("cache/**/*.npy", recursive=True)}
    b = _all_tokens(compile_recipe(r)[0])
    assert all((x == y).all() for x, y in zip(a, b))
    assert {p: open(p, "rb").read() for p in glob.glob("cache/**/*.npy", recursive=True)} == files


@pytest.mark.parametrize(
    "first, second",
    [
        (
            "density-structured-100.yaml",
            "density-structured-025.yaml",
        ),  # B needs less than A cached
        (
            "density-structured-025.yaml",
            "density-structured-100.yaml",
        ),  # B needs more: the cache grows
    ],
)
def test_recipe_b_after_a_equals_b_alone_in_an_empty_cache(workdir, first, second):
    compile_recipe(_recipe(workdir, first, "shared"))
    after_a = _all_tokens(compile_recipe(_recipe(workdir, second, "shared"))[0])
    alone = _all_tokens(compile_recipe(_recipe(workdir, second, "fresh"))[0])
    assert len(after_a) == len(alone)
    for x, y in zip(after_a, alone):
        assert x.shape == y.shape and (x == y).all()
    # one index per dataset, shared by both recipes: math.structured, math.text, general
    assert len(glob.glob("shared/indices/*/meta.json")) == 3


def test_a_stale_index_cache_is_rebuilt_not_used(workdir):
    r = _recipe(workdir, "dsm-math-only.yaml", "cache")
    good = _all_tokens(compile_recipe(r)[0])
    meta_path = glob.glob("cache/indices/*/meta.json")[0]
    meta = json.load(open(meta_path))
    meta["seq_length"] += 1  # as if written by another configuration
    json.dump(meta, open(meta_path, "w"))
    np.save(os.path.join(os.path.dirname(meta_path), "shuffle_index.npy"), np.zeros(10, np.uint32))
    assert all((x == y).all() for x, y in zip(good, _all_tokens(compile_recipe(r)[0])))
    assert json.load(open(meta_path))["seq_length"] == r.training.seq_length


@pytest.mark.parametrize("seq, extra", [(37, True), (64, False)])
def test_extending_an_index_gives_what_building_it_at_once_gives(workdir, monkeypatch, seq, extra):
    from ablate.data.indexed import open_indexed
    from ablate.recipe.indices import IndexCache

    kept = []  # the cached prefix is appended to, not rebuilt
    load = IndexCache._load_for_extension
    monkeypatch.setattr(
        IndexCache, "_load_for_extension", lambda self, *a: kept.append(load(self, *a)) or kept[-1]
    )
    ds = open_indexed("data/toyworld/toyworld/math.code")
    docs = range(len(ds.sequence_lengths))
    per_epoch = int(ds.sequence_lengths.sum()) // seq
    for first, then in ((5, per_epoch + 3), (per_epoch + 1, 3 * per_epoch + 7), (1, 2 * per_epoch)):
        grown = IndexCache(f"grown-{first}", ds, docs, "fp", seq, 3, extra)
        grown.get(first)
        built_in_one = IndexCache(f"once-{first}", ds, docs, "fp", seq, 3, extra).get(then)
        extended = grown.get(then)
        for a, b in zip(extended, built_in_one):
            assert a.dtype == b.dtype and np.array_equal(a, b), (first, then)
    assert [k is not None for k in kept] == [False, False, True] * 3


def test_a_later_stage_continues_a_dataset_where_the_earlier_stage_stopped(workdir):
    raw = yaml.safe_load(open(os.path.join(REPO, "recipes", "quickstart.yaml")))
    raw["stages"] = [
        {"name": "a", "mix": {"general": {"tokens": "200K"}}},
        {"name": "b", "mix": {"general": {"tokens": "200K"}}},
    ]
    plan, _ = compile_recipe(parse_recipe(raw, "two-stage.yaml"))
    a, b = plan.stages
    assert b.datasets[0].sample_offset == a.datasets[0].samples
    with _single_process_group():
        ba, bb = build_stage_datasets(plan)
    ga, gb = ba.datasets[0], bb.datasets[0]
    full = np.asarray(ga.shuffle_index).tolist() + np.asarray(gb.shuffle_index).tolist()
    assert len(set(full)) == len(full)  # no sample is repeated across the two stages


# ------------------------------------------------------------------ bad input


def write_recipe(path, **changes):
    raw = yaml.safe_load(open(os.path.join(REPO, "recipes", "quickstart.yaml")))
    for dotted, value in changes.items():
        node, keys = raw, dotted.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    return str(path)


DELETE = object()
MIX = "stages__0__mix"


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"trainng": {}}, ("r.yaml:", "unknown key 'trainng'")),
        ({MIX: {"maths": 1.0}}, ("stages[0].mix.maths", "'maths' is not a known domain")),
        ({MIX: {"math": 0.5, "code": 0.3}}, ("stages[0].mix", "shares sum to 0.8, not 1")),
        (
            {MIX: {"math": {"tokens": -5}}, "stages__0__tokens": DELETE},
            ("stages[0].mix.math.tokens", "must be a positive token count"),
        ),
        (
            {MIX: {"math": {"tokens": 0}}, "stages__0__tokens": DELETE},
            ("stages[0].mix.math.tokens", "must be a positive token count"),
        ),
        ({"stages__0__tokens": "0B"}, ("stages[0].tokens", "must be a positive token count")),
        (
            {
                MIX: {"math": {"tokens": "100K", "density": {"code.exec": 1.0}}},
                "stages__0__tokens": DELETE,
            },
            ("mix.math.density.code.exec", "outside the domain 'math'"),
        ),
        (
            {MIX: {"code.exec": {"tokens": "3M", "max_epochs": 2}}, "stages__0__tokens": DELETE},
            ("stages[0].mix.code.exec", "which holds", "epochs > max_epochs 2"),
        ),
        (
            {"data": {"manifests": ["nowhere/manifest.json"]}},
            ("data.manifests[0]", "nowhere/manifest.json not found"),
        ),
        (
            {"training__seq_length": 1024},
            ("training.seq_length", "longer than the model's max_position_embeddings 512"),
        ),
        (
            {"training__global_batch_size": 30},
            ("training.global_batch_size", "not a multiple of micro_batch_size 4"),
        ),
        ({"parallelism": {"ep": 3}}, ("parallelism.ep", "does not divide model.num_experts 8")),
        ({MIX: {"math": {"share": 0.5, "tokens": "1M"}}}, ("mix.math", "exactly one of 'share'")),
        ({"model": {"preset": "huge"}}, ("model.preset", "'huge' is not allowed")),
    ],
)
def test_bad_recipes_fail_with_one_line_and_leave_no_cache(workdir, cli, changes, fragments):
    path = write_recipe(workdir / "r.yaml", **changes)
    r = cli("compile", path)
    assert_one_line_error(r, *fragments)
    assert not os.path.exists("cache") and not os.path.exists("runs")


def test_fingerprint_mismatch_is_refused(workdir, cli, tmp_path):
    # a private copy of the toy world whose data changed after its manifest was written
    shutil.copytree(os.path.realpath("data/toyworld"), "data/changed")
    with open("data/changed/toyworld/general.bin", "r+b") as f:
        f.truncate(os.path.getsize("data/changed/toyworld/general.bin") - 2)
    path = write_recipe(workdir / "r.yaml", data={"manifests": ["data/changed/manifest.json"]})
    r = cli("compile", path)
    assert_one_line_error(r, "toyworld/general", "files no longer match the manifest")
    assert not os.path.exists("cache")


def test_the_file_check_hashes_in_parallel_but_reports_the_first_bad_dataset_in_order(workdir):
    from ablate.data.manifest import load_manifest, verify_datasets
    from ablate.errors import AblateError

    shutil.copytree(os.path.realpath("data/toyworld"), "data/changed")
    m = load_manifest("data/changed/manifest.json")
    first, later = m.datasets[0], m.datasets[-1]
    os.remove(m.abs_prefix(first) + ".idx")
    with open(m.abs_prefix(later) + ".idx", "r+b") as f:  # its last bytes changed
        f.seek(-4, os.SEEK_END)
        f.write(b"\x01\x00\x00\x00")
    memo: dict = {}
    with pytest.raises(
        AblateError, match=f"dataset {first.prefix!r}: file {first.prefix}.idx is missing"
    ):
        verify_datasets([(m, d) for d in m.datasets], memo)
    assert (
        os.path.abspath(m.abs_prefix(later) + ".idx") in memo
    )  # hashed beside it, before the check
    with pytest.raises(
        AblateError, match=f"dataset {later.prefix!r}: files no longer match the manifest"
    ):
        verify_datasets([(m, later)], memo)


def test_dry_run_prints_the_plan_and_builds_nothing(workdir, cli):
    r = cli("compile", os.path.join(REPO, "recipes", "toy", "dsm-code-then-math.yaml"), "--dry-run")
    assert r.rc == 0, r.err
    assert (
        "stage code: 4M asked -> 1,953 steps" in r.out
        and "stage math: 1.5M asked -> 732 steps" in r.out
    )
    assert "toyworld/code.exec" in r.out and "= math.text" in r.out
    assert not os.path.exists("cache") and not os.path.exists("runs")


# ------------------------------------------------------------------ several ranks


def _build_on_rank(rank: int, workdir: str, recipe_path: str):
    os.chdir(workdir)
    plan = make_plan(load_recipe(recipe_path))
    blends = build_stage_datasets(
        plan
    )  # rank 0 builds into the empty cache, rank 1 waits and loads
    return [
        (
            np.asarray(b.dataset_index).copy(),
            np.stack([b[i]["tokens"].numpy() for i in range(0, len(b), 97)]),
        )
        for b in blends
    ]


def test_two_ranks_build_once_and_see_the_same_blend(workdir, tmp_path):
    from distributed import run_on_ranks

    recipe = os.path.join(REPO, "recipes", "toy", "dsm-code-then-math.yaml")
    r0, r1 = run_on_ranks(_build_on_rank, 2, str(tmp_path / "dist"), str(workdir), recipe)
    for (idx0, tok0), (idx1, tok1) in zip(r0, r1):
        assert (idx0 == idx1).all() and (tok0 == tok1).all()
    metas = glob.glob(str(workdir / "cache" / "indices" / "*" / "meta.json"))
    assert (
        len(metas) == 5
    )  # code.exec, code.nl, math.text, math.structured, math.code: one index each
    assert not glob.glob(str(workdir / "cache" / "indices" / "*.tmp-*"))
