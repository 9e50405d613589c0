"""Refusal table for YAML input: recipes (compile, compile --dry-run, train), corpora specs
(data prepare) and sweep files (sweep expand), each damaged in one way.

Every case runs ``ablate ...`` in-process through ``conftest.assert_refused``: exit 2, one short
line on stderr naming the file and the field (``r.yaml: training.optimizer.lr: ...``), no
traceback, and nothing under the test's directory created, changed or removed (no cache, no run
directory, no prepared dataset, no sweep root). Kinds of damage: non-finite, overflowing,
negative, zero, huge, bool and string values for numeric fields; unknown keys; wrong types;
duplicate keys; an alias bomb; syntax errors (line and column); empty, non-mapping, binary,
missing and directory files.
"""

from __future__ import annotations

import copy
import os
import time

import pytest
import yaml

from conftest import assert_refused, link_toyworld, tiny_recipe

# A valid recipe that compiles against the toy world in a second (64K tokens, 128 steps).
BASE = {
    "name": "r",
    "seed": 1,
    "model": {"preset": "toy-moe"},
    "training": {
        "seq_length": 64,
        "global_batch_size": 8,
        "micro_batch_size": 4,
        "optimizer": {"lr": 0.001, "min_lr": 0.0001},
    },
    "cadence": {"tensorboard": False},
    "stages": [
        {
            "name": "mixed",
            "tokens": "64K",
            "mix": {
                "math": {"share": 0.5, "density": {"math.text": 0.5, "math.structured": 0.5}},
                "code": 0.25,
                "general": {"share": 0.25, "max_epochs": 4},
            },
        }
    ],
}
MIX = ("stages", 0, "mix")
DELETE = object()
# Written as plain YAML tokens after dumping: a float literal PyYAML 1.1 would read as a string
RAW = {"ZZBIG": "1e400", "ZZFBIG": "1.0e400"}


def _put(tree, path, value):
    node = tree
    for k in path[:-1]:
        node = node[k]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def _dump(tree) -> str:
    text = yaml.safe_dump(tree, sort_keys=False)
    for token, literal in RAW.items():
        text = text.replace(token, literal)
    return text


def recipe_text(**changes) -> str:
    """BASE with ``changes`` ({path-with-__: value}); path parts that are digits index lists."""
    tree = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        path = tuple(int(p) if p.isdigit() else p for p in dotted.split("__"))
        _put(tree, path, value)
    return _dump(tree)


def mix_text(mix) -> str:
    tree = copy.deepcopy(BASE)
    _put(tree, MIX, mix)
    return _dump(tree)


def general_mix(**entry) -> str:
    """A mix of math 0.5 and general 0.5 whose general entry has ``entry`` besides its share."""
    return mix_text({"math": 0.5, "general": {"share": 0.5, **entry}})


def density_mix(text, structured) -> str:
    return mix_text(
        {"math": {"share": 1, "density": {"math.text": text, "math.structured": structured}}}
    )


def lines(*rows: str) -> str:
    return "\n".join(rows) + "\n"


BOMB = lines(
    *(
        ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    )
)
SYNTAX = lines("name: r", "stages:", "  - mix: {code: 1", "seed: 2")  # an unclosed flow mapping
INDENT = lines("name: r", "seed: 1", "training:", "  seq_length: 64", "   micro_batch_size: 4")

# ------------------------------------------------------------------ recipes: ablate compile R.yaml

# (id, file content (text, or bytes, or None: the file is absent, or "DIR": a directory), fragments)
RECIPE_CASES = [
    # seed
    ("seed-nan", recipe_text(seed=float("nan")), ["r.yaml: seed:", "expected an integer"]),
    ("seed-negative", recipe_text(seed=-1), ["r.yaml: seed:", "out of range", ">= 0"]),
    ("seed-2**70", recipe_text(seed=2**70), ["r.yaml: seed:", "out of range", "2**63 - 1"]),
    ("seed-bool", recipe_text(seed=True), ["r.yaml: seed:", "expected an integer, got True"]),
    ("seed-string", recipe_text(seed="7"), ["r.yaml: seed:", "expected an integer, got '7'"]),
    ("seed-float", recipe_text(seed=1.5), ["r.yaml: seed:", "expected an integer"]),
    # optimizer
    (
        "lr-nan",
        recipe_text(training__optimizer__lr=float("nan")),
        ["r.yaml: training.optimizer.lr:", "nan is not a finite number", "> 0"],
    ),
    (
        "lr-inf",
        recipe_text(training__optimizer__lr=float("inf")),
        ["r.yaml: training.optimizer.lr:", "inf is not a finite number"],
    ),
    (
        "lr-1e400",
        recipe_text(training__optimizer__lr="ZZBIG"),
        ["r.yaml: training.optimizer.lr:", "inf is not a finite number"],
    ),
    (
        "lr-1.0e400",
        recipe_text(training__optimizer__lr="ZZFBIG"),
        ["r.yaml: training.optimizer.lr:", "not a finite number"],
    ),
    (
        "lr-negative",
        recipe_text(training__optimizer__lr=-0.1),
        ["r.yaml: training.optimizer.lr:", "-0.1 is out of range", "> 0"],
    ),
    (
        "lr-zero",
        recipe_text(training__optimizer__lr=0),
        ["r.yaml: training.optimizer.lr:", "out of range"],
    ),
    (
        "lr-string",
        recipe_text(training__optimizer__lr="0.001"),
        ["r.yaml: training.optimizer.lr:", "expected a finite number", "'0.001'"],
    ),
    (
        "lr-bool",
        recipe_text(training__optimizer__lr=True),
        ["r.yaml: training.optimizer.lr:", "got True"],
    ),
    (
        "lr-huge-int",
        recipe_text(training__optimizer__lr=10**400),
        ["r.yaml: line 10: an integer of 401 digits"],
    ),
    (
        "min-lr-nan",
        recipe_text(training__optimizer__min_lr=float("nan")),
        ["r.yaml: training.optimizer.min_lr:", "not a finite number"],
    ),
    (
        "min-lr-above-lr",
        recipe_text(training__optimizer__min_lr=0.1),
        ["r.yaml: training.optimizer.min_lr:", "larger than lr"],
    ),
    (
        "beta2-one",
        recipe_text(training__optimizer__beta2=1.0),
        ["r.yaml: training.optimizer.beta2:", "out of range", "< 1"],
    ),
    (
        "eps-negative",
        recipe_text(training__optimizer__eps=-1e-8),
        ["r.yaml: training.optimizer.eps:", "out of range"],
    ),
    (
        "weight-decay-inf",
        recipe_text(training__optimizer__weight_decay=float("inf")),
        ["r.yaml: training.optimizer.weight_decay:", "not a finite number"],
    ),
    (
        "clip-grad-negative",
        recipe_text(training__optimizer__clip_grad=-1),
        ["r.yaml: training.optimizer.clip_grad:", "out of range"],
    ),
    (
        "optimizer-name",
        recipe_text(training__optimizer__name="sgd"),
        ["r.yaml: training.optimizer.name:", "'sgd' is not allowed", "adamw"],
    ),
    (
        "optimizer-unknown-key",
        recipe_text(training__optimizer__learning_rate=0.1),
        ["r.yaml: training.optimizer:", "unknown key 'learning_rate'", "lr"],
    ),
    # model
    (
        "layers-zero",
        recipe_text(model__num_layers=0),
        ["r.yaml: model.num_layers:", "out of range", ">= 1"],
    ),
    (
        "hidden-2**70",
        recipe_text(model__hidden_size=2**70),
        ["r.yaml: model.hidden_size:", "out of range", "2**62"],
    ),
    (
        "experts-negative",
        recipe_text(model__num_experts=-1),
        ["r.yaml: model.num_experts:", "out of range"],
    ),
    (
        "experts-float",
        recipe_text(model__num_experts=1.5),
        ["r.yaml: model.num_experts:", "expected an integer"],
    ),
    (
        "experts-bool",
        recipe_text(model__num_experts=False),
        ["r.yaml: model.num_experts:", "got False"],
    ),
    (
        "aux-loss-nan",
        recipe_text(model__moe_aux_loss_coeff=float("nan")),
        ["r.yaml: model.moe_aux_loss_coeff:", "not a finite number"],
    ),
    (
        "init-std-zero",
        recipe_text(model__init_method_std=0),
        ["r.yaml: model.init_method_std:", "out of range"],
    ),
    (
        "score-function",
        recipe_text(model__moe_router_score_function="softmin"),
        [
            "r.yaml: model.moe_router_score_function:",
            "'softmin' is not allowed",
            "softmax, sigmoid",
        ],
    ),
    (
        "score-function-bool",
        recipe_text(model__moe_router_score_function=True),
        ["r.yaml: model.moe_router_score_function:", "True is not allowed"],
    ),
    (
        "preset-unknown",
        recipe_text(model__preset="huge"),
        ["r.yaml: model.preset:", "'huge' is not allowed"],
    ),
    (
        "preset-list",
        recipe_text(model__preset=["toy-moe"]),
        ["r.yaml: model.preset:", "is not allowed"],
    ),
    ("model-list", recipe_text(model=[1, 2]), ["r.yaml: model:", "expected a mapping"]),
    # parallelism
    ("tp-zero", recipe_text(parallelism={"tp": 0}), ["r.yaml: parallelism.tp:", "out of range"]),
    (
        "pp-string",
        recipe_text(parallelism={"pp": "2"}),
        ["r.yaml: parallelism.pp:", "expected an integer"],
    ),
    (
        "ep-nan",
        recipe_text(parallelism={"ep": float("nan")}),
        ["r.yaml: parallelism.ep:", "expected an integer"],
    ),
    # training
    (
        "seq-zero",
        recipe_text(training__seq_length=0),
        ["r.yaml: training.seq_length:", "out of range"],
    ),
    (
        "gbs-2**70",
        recipe_text(training__global_batch_size=2**70),
        ["r.yaml: training.global_batch_size:", "out of range"],
    ),
    (
        "gbs-huge",
        recipe_text(training__global_batch_size=2**30),  # fits int64, not the 64K budget
        [
            "r.yaml: training.global_batch_size:",
            "one step of",
            "more than twice the budget of stage 'mixed'",
            "at most 2,000",
        ],
    ),
    (
        "mbs-negative",
        recipe_text(training__micro_batch_size=-4),
        ["r.yaml: training.micro_batch_size:", "out of range"],
    ),
    (
        "precision",
        recipe_text(training__precision="fp8"),
        ["r.yaml: training.precision:", "'fp8' is not allowed"],
    ),
    (
        "warmup-negative",
        recipe_text(training__schedule={"warmup_steps": -1}),
        ["r.yaml: training.schedule.warmup_steps:", "out of range"],
    ),
    (
        "decay-typo",
        recipe_text(training__schedule={"decay": "cosin"}),
        ["r.yaml: training.schedule.decay:", "'cosin' is not allowed", "cosine"],
    ),
    (
        "init-from-number",
        recipe_text(training__init_from=3),
        ["r.yaml: training.init_from:", "expected a string"],
    ),
    # cadence
    (
        "log-every-zero",
        recipe_text(cadence={"log_every": 0}),
        ["r.yaml: cadence.log_every:", "out of range"],
    ),
    (
        "checkpoint-every-nan",
        recipe_text(cadence={"checkpoint_every": float("nan")}),
        ["r.yaml: cadence.checkpoint_every:", "expected an integer"],
    ),
    (
        "async-checkpoint",
        recipe_text(cadence={"async_checkpoint": "maybe"}),
        ["r.yaml: cadence.async_checkpoint:", "'maybe' is not allowed", "auto, on, off"],
    ),
    (
        "eval-tasks-string",
        recipe_text(cadence={"eval_tasks": "bpb"}),
        ["r.yaml: cadence.eval_tasks:", "expected a list"],
    ),
    (
        "eval-options-nan",
        recipe_text(cadence={"eval_options": {"sandbox_timeout_s": float("nan")}}),
        ["r.yaml: cadence.eval_options.sandbox_timeout_s:", "not a finite number"],
    ),
    (
        "eval-options-unknown",
        recipe_text(cadence={"eval_options": {"limmit": 5}}),
        ["r.yaml: cadence.eval_options:", "unknown key 'limmit'"],
    ),
    # data
    (
        "manifests-string",
        recipe_text(data={"manifests": "data/toyworld/manifest.json"}),
        ["r.yaml: data.manifests:", "expected a list"],
    ),
    (
        "manifests-number",
        recipe_text(data={"manifests": [5]}),
        ["r.yaml: data.manifests[0]:", "expected a string"],
    ),
    # stages and the mix
    (
        "stage-tokens-1e400",
        recipe_text(stages__0__tokens="ZZBIG"),
        ["r.yaml: stages[0].tokens:", "too large"],
    ),
    (
        "stage-tokens-string-1e400",
        recipe_text(stages__0__tokens="1e400"),
        ["r.yaml: stages[0].tokens:", "too large"],
    ),
    (
        "stage-tokens-inf",
        recipe_text(stages__0__tokens=float("inf")),
        ["r.yaml: stages[0].tokens:", "too large"],
    ),
    (
        "stage-tokens-nan",
        recipe_text(stages__0__tokens=float("nan")),
        ["r.yaml: stages[0].tokens:", "nan is not a number"],
    ),
    (
        "stage-tokens-negative",
        recipe_text(stages__0__tokens=-1),
        ["r.yaml: stages[0].tokens:", "must be a positive token count"],
    ),
    (
        "stage-tokens-fraction",
        recipe_text(stages__0__tokens=2.5),
        ["r.yaml: stages[0].tokens:", "not a whole number of tokens"],
    ),
    (
        "stage-tokens-bool",
        recipe_text(stages__0__tokens=True),
        ["r.yaml: stages[0].tokens:", "got True"],
    ),
    (
        "stage-tokens-2**70",
        recipe_text(stages__0__tokens=2**70),
        ["r.yaml: stages[0].tokens:", "too large"],
    ),
    (
        "bare-share-1.5",
        mix_text({"math": 0.5, "code": 1.5, "general": 0.25}),
        ["r.yaml: stages[0].mix.code:", "neither a share", "(0, 1]", "whole number"],
    ),
    (
        "bare-share-nan",
        mix_text({"math": 0.5, "code": float("nan"), "general": 0.25}),
        ["r.yaml: stages[0].mix.code:", "not a finite number"],
    ),
    (
        "share-nan",
        mix_text({"math": {"share": float("nan")}, "code": 0.5}),
        ["r.yaml: stages[0].mix.math.share:", "not a finite number"],
    ),
    (
        "share-above-one",
        mix_text({"math": {"share": 1.5}}),
        ["r.yaml: stages[0].mix.math.share:", "out of range"],
    ),
    (
        "density-nan",
        density_mix(float("nan"), 1),
        ["r.yaml: stages[0].mix.math.density.math.text:", "not a finite number"],
    ),
    (
        "density-negative",
        density_mix(-0.5, 1.5),
        ["r.yaml: stages[0].mix.math.density.math.text:", "out of range"],
    ),
    (
        "weights-nan",
        general_mix(weights={"toyworld": float("nan")}),
        ["r.yaml: stages[0].mix.general.weights.toyworld:", "not a finite number"],
    ),
    (
        "weights-negative",
        general_mix(weights={"toyworld": -1}),
        ["r.yaml: stages[0].mix.general.weights.toyworld:", "out of range"],
    ),
    (
        "max-epochs-nan",
        general_mix(max_epochs=float("nan")),
        ["r.yaml: stages[0].mix.general.max_epochs:", "not a finite number"],
    ),
    (
        "max-epochs-inf",
        general_mix(max_epochs=float("inf")),
        ["r.yaml: stages[0].mix.general.max_epochs:", "not a finite number"],
    ),
    (
        "max-epochs-half",
        general_mix(max_epochs=0.5),
        ["r.yaml: stages[0].mix.general.max_epochs:", "out of range", ">= 1"],
    ),
    (
        "mix-int-key",
        mix_text({1: 0.5, "general": 0.5}),
        ["r.yaml: stages[0].mix:", "key 1 is not a name"],
    ),
    (
        "mix-entry-unknown-key",
        mix_text({"math": {"share": 1, "sharre": 1}}),
        ["r.yaml: stages[0].mix.math:", "unknown key 'sharre'"],
    ),
    ("mix-list", mix_text(["math", "code"]), ["r.yaml: stages[0].mix:", "expected a mapping"]),
    (
        "stage-no-mix",
        recipe_text(stages=[{"name": "s", "tokens": "1K"}]),
        ["r.yaml: stages[0]:", "missing required key 'mix'"],
    ),
    (
        "stages-mapping",
        recipe_text(stages={"mixed": {}}),
        ["r.yaml: stages:", "expected a list of stages"],
    ),
    # top level
    ("unknown-key", recipe_text(trainng={}), ["r.yaml:", "unknown key 'trainng'"]),
    ("name-number", recipe_text(name=123), ["r.yaml: name:", "expected a run name, got 123"]),
    ("name-path", recipe_text(name="a/b"), ["r.yaml: name:", "must be a plain file name"]),
    (
        "name-long",
        recipe_text(name="x" * 5000),
        ["r.yaml: name:", "must be a plain file name", "..."],
    ),
    (
        "unknown-key-long",
        recipe_text(**{"y" * 5000: 1}),
        ["r.yaml: line", "a key of 5,000 characters"],
    ),
    ("mix-key-long", mix_text({"m" * 3000: 1.0}), ["r.yaml: line", "a key of 3,000 characters"]),
    (
        "eval-task-long",
        recipe_text(cadence={"eval_tasks": ["x" * 3000]}),
        ["r.yaml: cadence.eval_tasks[0]:", "is not a task name"],
    ),
    # the file itself
    (
        "duplicate-key",
        recipe_text() + "seed: 2\n",
        ["r.yaml: line", "duplicate key 'seed'", "first at line"],
    ),
    (
        "duplicate-nested-key",
        lines("name: r", "training:", "  optimizer: {lr: 0.1, lr: 0.2}", "stages: []"),
        ["r.yaml: line 3: duplicate key 'lr'"],
    ),
    ("alias-bomb", BOMB, ["r.yaml:", "alias bomb"]),
    (
        "deep-nesting",
        "name: " + "[" * 1500 + "]" * 1500 + "\n",
        ["r.yaml: not valid YAML", "nested too deeply"],
    ),
    ("alias-recursive", lines("name: &n [*n]"), ["r.yaml: line 1:", "refers to itself"]),
    ("syntax-flow", SYNTAX, ["r.yaml: line 4, column 5: not valid YAML"]),
    (
        "syntax-indent",
        INDENT,
        ["r.yaml: line 5, column 20: not valid YAML", "mapping values are not allowed"],
    ),
    (
        "tab-indent",
        lines("name: r", "training:", "\tseq_length: 64"),
        ["r.yaml: line 3, column 1: not valid YAML"],
    ),
    ("empty", "", ["r.yaml: the recipe is empty"]),
    ("comments-only", "# nothing\n", ["r.yaml: the recipe is empty"]),
    ("top-level-list", lines("- name: r"), ["r.yaml: expected a YAML mapping", "got a list"]),
    ("top-level-string", "just words\n", ["r.yaml: expected a YAML mapping", "got a string"]),
    ("binary", b"\x00\xff\xfe\x00junk" * 10, ["r.yaml: not valid YAML", "not UTF-8"]),
    ("nul-char", "name: r\n\x00\n", ["r.yaml: line 2: not valid YAML", "not allowed"]),
    (
        "huge-int-literal",
        lines("name: r", "seed: " + "9" * 5000),
        ["r.yaml: line 2: an integer of 5000 digits"],
    ),
    ("missing", None, ["r.yaml: no such recipe"]),
    ("directory", "DIR", ["r.yaml: is a directory, not a recipe"]),
]


@pytest.fixture
def world(toyworld_root, tmp_path, monkeypatch):
    link_toyworld(toyworld_root, tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(path, content) -> None:
    if content is None:
        return
    if content == "DIR":
        os.makedirs(path)
    elif isinstance(content, bytes):
        with open(path, "wb") as f:
            f.write(content)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)


def test_the_base_recipe_compiles(world, cli):
    """The table's damage is the only thing wrong with each case."""
    _write(world / "r.yaml", recipe_text())
    r = cli("compile", "--dry-run", "r.yaml")
    assert r.rc == 0, r.err


@pytest.mark.parametrize(
    "content, fragments", [c[1:] for c in RECIPE_CASES], ids=[c[0] for c in RECIPE_CASES]
)
def test_compile_refuses_a_damaged_recipe(world, capsys, content, fragments):
    _write(world / "r.yaml", content)
    start = time.monotonic()
    assert_refused(["compile", "r.yaml"], *fragments, watch=[world], capsys=capsys)
    assert time.monotonic() - start < 10  # the alias bomb is refused before anything walks it


# The same validation under --dry-run and train: one case per kind of damage.
SUBSET = [
    "lr-nan",
    "seed-2**70",
    "stage-tokens-1e400",
    "bare-share-1.5",
    "weights-nan",
    "max-epochs-nan",
    "gbs-huge",
    "duplicate-key",
    "alias-bomb",
    "syntax-indent",
    "unknown-key",
    "density-nan",
]
_BY_ID = {c[0]: c[1:] for c in RECIPE_CASES}


@pytest.mark.parametrize("case", SUBSET)
def test_compile_dry_run_refuses_a_damaged_recipe(world, capsys, case):
    content, fragments = _BY_ID[case]
    _write(world / "r.yaml", content)
    assert_refused(["compile", "--dry-run", "r.yaml"], *fragments, watch=[world], capsys=capsys)


@pytest.mark.parametrize("case", SUBSET)
def test_train_refuses_a_damaged_recipe_before_any_run_directory(world, capsys, case):
    content, fragments = _BY_ID[case]
    _write(world / "r.yaml", content)
    assert_refused(["train", "r.yaml"], *fragments, watch=[world], capsys=capsys)
    assert not (world / "runs").exists()


# ------------------------------------------------------------ corpora specs: ablate data prepare


def spec_text(top=None, **source) -> str:
    tree = {
        "tokenizer": "byte",
        "seed": 3,
        "eval_fraction": 0.1,
        "sources": [{"path": "raw/a.jsonl", "domain": "general", "name": "a", **source}],
    }
    tree.update(top or {})
    return _dump(tree)


SPEC_CASES = [
    ("name-number", spec_text(name=123), ["s.yaml: sources[0].name:", "123 is not a source name"]),
    (
        "name-chars",
        spec_text(name="a b!"),
        ["s.yaml: sources[0].name:", "'a b!' is not a source name"],
    ),
    ("name-long", spec_text(name="n" * 5000), ["s.yaml: sources[0].name:", "..."]),
    ("seed-nan", spec_text({"seed": float("nan")}), ["s.yaml: seed:", "expected an integer"]),
    ("seed-negative", spec_text({"seed": -1}), ["s.yaml: seed:", "out of range"]),
    ("seed-2**70", spec_text({"seed": 2**70}), ["s.yaml: seed:", "out of range"]),
    (
        "eval-fraction-nan",
        spec_text({"eval_fraction": float("nan")}),
        ["s.yaml: eval_fraction:", "not a finite number"],
    ),
    (
        "eval-fraction-inf",
        spec_text({"eval_fraction": float("inf")}),
        ["s.yaml: eval_fraction:", "not a finite number"],
    ),
    (
        "eval-fraction-1e400",
        spec_text({"eval_fraction": "ZZBIG"}),
        ["s.yaml: eval_fraction:", "not a finite"],
    ),
    (
        "eval-fraction-negative",
        spec_text({"eval_fraction": -0.1}),
        ["s.yaml: eval_fraction:", "out of range"],
    ),
    (
        "eval-fraction-string",
        spec_text({"eval_fraction": "0.1"}),
        ["s.yaml: eval_fraction:", "expected"],
    ),
    (
        "source-eval-fraction-nan",
        spec_text(eval_fraction=float("nan")),
        ["s.yaml: sources[0].eval_fraction:", "not a finite number"],
    ),
    (
        "source-eval-fraction-bool",
        spec_text(eval_fraction=True),
        ["s.yaml: sources[0].eval_fraction:", "got True"],
    ),
    ("unknown-top-key", spec_text({"sourcess": []}), ["s.yaml:", "unknown key 'sourcess'"]),
    (
        "unknown-source-key",
        spec_text(colour="red"),
        ["s.yaml: sources[0]:", "unknown key 'colour'"],
    ),
    ("tokenizer-number", spec_text({"tokenizer": 123}), ["s.yaml: tokenizer:", "got 123"]),
    ("reader-list", spec_text(reader=["jsonl"]), ["s.yaml: sources[0].reader:", "is not a reader"]),
    (
        "domain-number",
        spec_text(domain=123),
        ["s.yaml: sources[0].domain:", "123 is not a known domain"],
    ),
    (
        "path-number",
        spec_text(path=5),
        ["s.yaml: sources[0].path:", "expected a file, directory or glob"],
    ),
    (
        "options-int-key",
        spec_text(options={1: 2}),
        ["s.yaml: sources[0].options:", "key 1 is not a name"],
    ),
    (
        "sources-mapping",
        spec_text({"sources": {"a": 1}}),
        ["s.yaml: sources:", "expected a list of sources"],
    ),
    (
        "source-string",
        spec_text({"sources": ["raw/a.jsonl"]}),
        ["s.yaml: sources[0]:", "expected a mapping"],
    ),
    ("duplicate-key", spec_text() + "seed: 4\n", ["s.yaml: line", "duplicate key 'seed'"]),
    (
        "duplicate-source-key",
        lines("sources:", "  - {path: raw/a.jsonl, path: raw/b.jsonl}"),
        ["s.yaml: line 2: duplicate key 'path'"],
    ),
    ("alias-bomb", BOMB, ["s.yaml:", "alias bomb"]),
    (
        "syntax",
        lines("sources:", "  - path: [raw", "seed: 1"),
        ["s.yaml: line 3, column", "not valid YAML"],
    ),
    ("empty", "", ["s.yaml: the corpora YAML is empty"]),
    ("list", lines("- path: raw/a.jsonl"), ["s.yaml: expected a YAML mapping", "got a list"]),
    ("binary", b"\xff\xfe\xfd" * 20, ["s.yaml: not valid YAML", "not UTF-8"]),
    ("directory", "DIR", ["s.yaml: no such corpora YAML"]),
]


@pytest.mark.parametrize(
    "content, fragments", [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES]
)
def test_data_prepare_refuses_a_damaged_corpora_spec(
    tmp_path, monkeypatch, capsys, content, fragments
):
    monkeypatch.chdir(tmp_path)
    os.makedirs("raw")
    with open("raw/a.jsonl", "w") as f:
        f.write('{"text": "hello"}\n')
    _write(tmp_path / "s.yaml", content)
    assert_refused(
        ["data", "prepare", "s.yaml", "--out", "out", "--workers", "1"],
        *fragments,
        watch=[tmp_path],
        capsys=capsys,
    )


# ------------------------------------------------------------ sweep files: ablate sweep expand

TINY = tiny_recipe(
    "base",
    [
        {
            "name": "mixed",
            "mix": {
                "math": {"tokens": "3K", "density": {"math.structured": 0.5, "math.text": 0.5}},
                "general": {"tokens": "1K"},
            },
        }
    ],
    data={"manifests": ["data/toyworld/manifest.json"], "cache_dir": "cache"},
    training={"seq_length": 64, "global_batch_size": 8, "micro_batch_size": 2},
)
DENSITY = "stages.mixed.mix.math.density.math.structured"
TEXT = "stages.mixed.mix.math.density.math.text"


def sweep_text(**body) -> str:
    tree = {"name": "sw", "base": TINY, **body}
    return _dump({k: v for k, v in tree.items() if v is not DELETE})


SWEEP_CASES = [
    (
        "base-number",
        sweep_text(base=123),
        ["s.yaml: base:", "expected a recipe file path", "got 123"],
    ),
    (
        "base-missing",
        sweep_text(base="nope.yaml"),
        ["s.yaml: base:", "no such recipe file 'nope.yaml'"],
    ),
    ("base-directory", sweep_text(base="data"), ["s.yaml: base:", "'data' is a directory"]),
    (
        "base-damaged",
        sweep_text(base={**TINY, "seed": float("nan")}),
        ["s.yaml: base: seed:", "expected an integer"],
    ),
    (
        "base-file-damaged",
        sweep_text(base="bad.yaml"),
        ["bad.yaml: line", "duplicate key 'seed'", "first at line 2"],
    ),
    (
        "grid-nan",
        sweep_text(grid={"training.optimizer.lr": [0.001, float("nan")]}),
        ["s.yaml: point", "training.optimizer.lr:", "nan is not a finite number"],
    ),
    (
        "grid-1e400",
        sweep_text(grid={"training.optimizer.lr": ["ZZBIG"]}),
        ["s.yaml: point", "training.optimizer.lr:", "not a finite number"],
    ),
    (
        "grid-tokens-inf",
        sweep_text(grid={"stages.mixed.mix.general.tokens": [float("inf")]}),
        ["s.yaml: point", "stages[0].mix.general.tokens:", "too large"],
    ),
    (
        "grid-too-many-epochs",
        sweep_text(grid={"stages.mixed.mix.general.tokens": ["1K", "900M"]}),
        ["s.yaml: point sw-tokens=900M: stages[0].mix.general:", "epochs > max_epochs 4"],
    ),
    (
        "grid-huge-batch",
        sweep_text(grid={"training.global_batch_size": [8, 2**30]}),
        ["s.yaml: point sw-global_batch_size=1073741824: training.global_batch_size:", "one step"],
    ),
    (
        "grid-not-list",
        sweep_text(grid={"training.optimizer.lr": 0.1}),
        ["s.yaml: grid.training.optimizer.lr:", "expected a list of values"],
    ),
    ("grid-int-key", sweep_text(grid={1: [1]}), ["s.yaml: grid:", "key 1 is not a name"]),
    (
        "grid-unknown-field",
        sweep_text(grid={"training.optimizer.learning_rate": [1]}),
        ["s.yaml: grid.training.optimizer.learning_rate:", "no field 'learning_rate'"],
    ),
    (
        "zip-nan",
        sweep_text(zip={DENSITY: [float("nan"), 0.5], TEXT: [0.5, 0.5]}),
        ["s.yaml: point", "density.math.structured:", "not a finite number"],
    ),
    ("set-int-key", sweep_text(set={5: 1}), ["s.yaml: set:", "key 5 is not a name"]),
    (
        "seeds-nan",
        sweep_text(seeds=[1, float("nan")]),
        ["s.yaml: seeds[1]:", "expected an integer"],
    ),
    ("seeds-negative", sweep_text(seeds=[-1]), ["s.yaml: seeds[0]:", "out of range"]),
    ("seeds-2**70", sweep_text(seeds=[2**70]), ["s.yaml: seeds[0]:", "out of range"]),
    ("seeds-bool", sweep_text(seeds=[True]), ["s.yaml: seeds[0]:", "got True"]),
    (
        "slurm-nodes-nan",
        sweep_text(slurm={"nodes": float("nan")}),
        ["s.yaml: slurm.nodes:", "expected an integer"],
    ),
    (
        "slurm-port",
        sweep_text(slurm={"port": 70000}),
        ["s.yaml: slurm.port:", "out of range", "65535"],
    ),
    (
        "local-nproc-zero",
        sweep_text(local={"nproc_per_node": 0}),
        ["s.yaml: local.nproc_per_node:", "out of range"],
    ),
    ("executor", sweep_text(executor="k8s"), ["s.yaml: executor:", "'k8s' is not allowed"]),
    ("unknown-key", sweep_text(colour="blue"), ["s.yaml:", "unknown key 'colour'"]),
    ("duplicate-key", sweep_text() + "name: other\n", ["s.yaml: line", "duplicate key 'name'"]),
    ("alias-bomb", BOMB, ["s.yaml:", "alias bomb"]),
    (
        "syntax",
        lines("name: sw", "base: {a: 1", "grid: 2"),
        ["s.yaml: line 3, column", "not valid YAML"],
    ),
    ("empty", "", ["s.yaml: the sweep file is empty"]),
    ("missing", None, ["s.yaml: no such sweep file"]),
]


@pytest.mark.parametrize(
    "content, fragments", [c[1:] for c in SWEEP_CASES], ids=[c[0] for c in SWEEP_CASES]
)
def test_sweep_expand_refuses_a_damaged_sweep_file(world, capsys, content, fragments):
    _write(world / "bad.yaml", _dump(TINY) + "seed: 8\n")
    _write(world / "s.yaml", content)
    line = assert_refused(["sweep", "expand", "s.yaml"], *fragments, watch=[world], capsys=capsys)
    assert line.count("s.yaml:") <= 1, line  # the point is named once
    assert not (world / "runs").exists()


def test_a_relative_base_is_relative_to_the_sweep_file(world, cli, tmp_path_factory, monkeypatch):
    os.makedirs(world / "sweeps")
    _write(world / "sweeps" / "base.yaml", _dump(TINY))
    _write(
        world / "sweeps" / "s.yaml",
        _dump(
            {
                "name": "rel",
                "base": "base.yaml",
                "seeds": [1, 2],
                "root": str(world / "runs" / "rel"),
            }
        ),
    )
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    # the base's manifests stay relative to the working directory
    os.symlink(world / "data", elsewhere / "data")
    monkeypatch.chdir(elsewhere)
    r = cli("sweep", "expand", str(world / "sweeps" / "s.yaml"), "--no-compile")
    assert r.rc == 0, r.err
    made = sorted(n for n in os.listdir(world / "runs" / "rel") if not n.startswith("."))
    assert made == ["rel-s1", "rel-s2", "sweep.json"]
