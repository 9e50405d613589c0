"""Refusals of ``ablate sweep`` and ``ablate report`` on damaged inputs, as a table.

Each row damages one thing and runs one command in-process; ``assert_refused`` holds it to the
contract: exit 2, one short line on stderr naming the file, no traceback, and nothing under the
watched directories created, changed or removed. Sweep rows watch the whole working directory
(run directories, cache, sweep file); report rows watch every input run directory and the
report's folder, which is how "report writes its routing cache into the inputs even when it
then fails" is caught. Bad sweep files are covered with the sweep YAML validation; the few here
check that the refusal writes nothing.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from analysis_fakes import write_run
from conftest import assert_refused, link_toyworld
from sweep_helpers import write_sweep

# ------------------------------------------------------------------ sweep: damaged point state

POINT = ("runs", "s", "p")  # the one point of the sweep "s" (point_name "p"), under the cwd


def _write(path, data, mode="w") -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, mode) as f:
        f.write(data)


def status(text):
    return lambda point: _write(os.path.join(point, "status.json"), text)


def record(name, body):
    return lambda point: _write(
        os.path.join(point, f"{name}.json"), body if isinstance(body, str) else json.dumps(body)
    )


def started_with_another_recipe(point):
    _write(os.path.join(point, "recipe.yaml"), "name: an-older-recipe\n")
    _write(os.path.join(point, "status.json"), json.dumps({"state": "completed", "step": 8}))


def status_is_a_directory(point):
    os.makedirs(os.path.join(point, "status.json"))


LOCAL = {
    "executor": "local",
    "job_id": "local:1",
    "pid": 1,
    "host": "elsewhere",
    "submitted": "2026-12-01T00:00:00Z",
}

# id, damage to the point's run directory, verbs to run, fragments of the one line
STATE_CASES = [
    (
        "status-broken-json",
        status("{broken"),
        ("status", "dry"),
        ["status.json", "damaged status file", "not valid JSON"],
    ),
    ("status-empty", status(""), ("status", "dry", "submit"), ["status.json", "not valid JSON"]),
    (
        "status-not-utf8",
        lambda p: _write(os.path.join(p, "status.json"), b"\xff\xfe{", "wb"),
        ("status",),
        ["status.json", "damaged status file"],
    ),
    (
        "status-array",
        status("[1, 2]"),
        ("status", "dry"),
        ["status.json", "expected a JSON object", "list"],
    ),
    (
        "status-unknown-state",
        status('{"state": "exploded"}'),
        ("status", "dry", "submit"),
        [
            "status.json",
            "state: 'exploded' is not a training state",
            "allowed: pending, running, completed",
        ],
    ),
    ("status-state-number", status('{"state": 3}'), ("status",), ["status.json", "state: 3"]),
    (
        "status-directory",
        status_is_a_directory,
        ("status", "dry"),
        ["status.json", "is a directory"],
    ),
    (
        "local-record-broken",
        record("local", '{"executor": "lo'),
        ("status", "dry", "submit"),
        ["local.json", "damaged job record", "not valid JSON"],
    ),
    (
        "local-record-array",
        record("local", [LOCAL]),
        ("status",),
        ["local.json", "expected a JSON object"],
    ),
    (
        "local-record-submitted-number",
        record("local", {**LOCAL, "submitted": 5}),
        ("status", "dry"),
        ["local.json", "submitted: 5 is not a str"],
    ),
    (
        "local-record-job-id-list",
        record("local", {**LOCAL, "job_id": [1]}),
        ("status",),
        ["local.json", "job_id: [1] is not a str"],
    ),
    (
        "slurm-record-wrong-executor",
        record("slurm", {**LOCAL, "executor": "kubernetes"}),
        ("status",),
        ["slurm.json", "executor: 'kubernetes' in the slurm record"],
    ),
    (
        "started-point-recipe-changed",
        started_with_another_recipe,
        ("dry",),
        ["point p", "holds a started run of a different recipe"],
    ),
]

VERBS = {
    "status": ["sweep", "status"],
    "dry": ["sweep", "submit", "--dry-run"],
    "submit": ["sweep", "submit"],
}
STATE_ROWS = [
    pytest.param(damage, verb, fragments, id=f"{case}-{verb}")
    for case, damage, verbs, fragments in STATE_CASES
    for verb in verbs
]


@pytest.fixture
def sweep_dir(tmp_path, monkeypatch, toyworld_root):
    monkeypatch.chdir(tmp_path)
    link_toyworld(toyworld_root, tmp_path)
    return tmp_path


@pytest.mark.parametrize("damage,verb,fragments", STATE_ROWS)
def test_damaged_point_state_is_refused(sweep_dir, capsys, damage, verb, fragments):
    path = write_sweep(sweep_dir, "s", point_name="p")
    damage(os.path.join(sweep_dir, *POINT))
    argv = VERBS[verb][:2] + [path] + VERBS[verb][2:]
    assert_refused(argv, *fragments, watch=(sweep_dir,), capsys=capsys)


def test_a_second_submit_of_a_sweep_is_refused_while_one_holds_it(sweep_dir, capsys):
    from ablate.io import exclusive_lock

    path = write_sweep(sweep_dir, "s", point_name="p")
    with exclusive_lock(os.path.join(sweep_dir, "runs", "s", ".submit.lock"), "a test"):
        for argv in (["sweep", "submit", path], ["sweep", "expand", path, "--no-compile"]):
            assert_refused(
                argv,
                "sweep s",
                ".submit.lock",
                "in use by ablate pid",
                watch=(sweep_dir,),
                capsys=capsys,
            )


# a few bad sweep files (their validation is tested with the sweep spec): refused, nothing written
BAD_SWEEPS = [
    ("missing-base", {"base": "nowhere.yaml"}, ["nowhere.yaml"]),
    (
        "grid-over-a-misspelt-path",
        {"grid": {"training.sequence_len": [64]}},
        ["grid.training.sequence_len"],
    ),
    ("unknown-executor", {"executor": "kubernetes"}, ["executor", "kubernetes"]),
]


@pytest.mark.parametrize("verb", ["expand", "dry", "submit"])
@pytest.mark.parametrize("body,fragments", [pytest.param(b, f, id=i) for i, b, f in BAD_SWEEPS])
def test_bad_sweep_file_writes_nothing(sweep_dir, capsys, verb, body, fragments):
    path = write_sweep(sweep_dir, "s", point_name="p", **body)
    argv = (
        ["sweep", "expand", path, "--no-compile"]
        if verb == "expand"
        else VERBS[verb][:2] + [path] + VERBS[verb][2:]
    )
    assert_refused(argv, "s.yaml", *fragments, watch=(sweep_dir,), capsys=capsys)


# ------------------------------------------------------------------ report: damaged run directories


def put(rel, data, mode="w"):
    """Damage: write ``data`` at ``rel`` inside run a."""
    return lambda runs: _write(os.path.join(runs["a"], rel), data, mode)


def remove(rel):
    return lambda runs: os.remove(os.path.join(runs["a"], rel))


def eval_body(**changes):
    body = {
        "format": "ablate.eval/1",
        "run": "a",
        "step": 9,
        "tasks": {
            "bpb": {
                "version": 1,
                "fingerprint": "f",
                "samples": 10,
                "metrics": {"bpb/general": 1.0},
            }
        },
    }
    return json.dumps({**body, **changes})


def metrics_rows(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def npz_garbage(rel):
    return put(rel, b"PK\x03\x04 not really a zip", "wb")


def flush_without_keys(runs):
    with open(os.path.join(runs["a"], "routing", "step_00000006.npz"), "wb") as f:
        np.savez(f, count=np.zeros((2, 4, 4), int))


def other_taxonomy(runs):
    write_run(
        os.path.dirname(runs["a"]),
        "zz",
        seed=9,
        domains=["web", "books"],
        stages=[{"name": "m", "mix": {"web": "1K"}}],
    )
    runs["extra"] = os.path.join(os.path.dirname(runs["a"]), "zz")


def deeper_model(runs):
    write_run(os.path.dirname(runs["a"]), "zz", seed=9, L=3)
    runs["extra"] = os.path.join(os.path.dirname(runs["a"]), "zz")


def same_name_twice(runs):
    write_run(os.path.join(os.path.dirname(runs["a"]), "copy"), "a", seed=1)
    runs["extra"] = os.path.join(os.path.dirname(runs["a"]), "copy", "a")


def missing_run(runs):
    runs["extra"] = os.path.join(os.path.dirname(runs["a"]), "nowhere")


def not_a_run(runs):
    os.makedirs(os.path.join(os.path.dirname(runs["a"]), "junk"))
    runs["extra"] = os.path.join(os.path.dirname(runs["a"]), "junk")


# id, damage, extra report flags, fragments
REPORT_CASES = [
    (
        "eval-broken-json",
        put("eval/step_9.json", '{"format": "ablate.ev'),
        [],
        ["step_9.json", "damaged eval result", "not valid JSON"],
    ),
    ("eval-empty", put("eval/step_9.json", ""), [], ["step_9.json", "not valid JSON"]),
    ("eval-array", put("eval/step_9.json", "[]"), [], ["step_9.json", "not an eval result"]),
    (
        "eval-other-format",
        put("eval/step_9.json", '{"format": "something/else"}'),
        [],
        ["step_9.json", "not an eval result"],
    ),
    (
        "eval-step-string",
        put("eval/step_9.json", eval_body(step="nine")),
        [],
        ["step_9.json", "step: 'nine' is not an integer"],
    ),
    (
        "eval-task-not-mapping",
        put("eval/step_9.json", eval_body(tasks={"bpb": 3})),
        [],
        ["step_9.json", "tasks.'bpb': expected a mapping with 'metrics'"],
    ),
    (
        "eval-step-not-evaluated",
        lambda runs: None,
        ["--step", "5"],
        ["step_5.json", "evaluated steps: 9"],
    ),
    (
        "metrics-broken-line",
        put("metrics.jsonl", metrics_rows({"step": 1}) + "{broken\n" + metrics_rows({"step": 3})),
        [],
        ["metrics.jsonl:2", "not a JSON object"],
    ),
    (
        "metrics-json-array",
        put("metrics.jsonl", json.dumps([{"step": 1}, {"step": 2}], indent=1) + "\n"),
        [],
        ["metrics.jsonl", "a JSON array, expected JSON Lines"],
    ),
    (
        "metrics-row-a-list",
        put("metrics.jsonl", metrics_rows({"step": 1}, [2, 3])),
        [],
        ["metrics.jsonl:2", "not a JSON object (a list"],
    ),
    (
        "metrics-row-without-step",
        put("metrics.jsonl", metrics_rows({"step": 1}, {"loss": 2.0})),
        [],
        ["metrics.jsonl:2", "step: None is not an integer"],
    ),
    ("metrics-empty", put("metrics.jsonl", ""), [], ["metrics.jsonl", "no rows"]),
    (
        "metrics-not-text",
        put("metrics.jsonl", b"\xff\xfe\x00garbage", "wb"),
        [],
        ["metrics.jsonl", "not text"],
    ),
    ("metrics-missing", remove("metrics.jsonl"), [], ["metrics.jsonl: missing"]),
    (
        "plan-broken-json",
        put("plan.json", '{"format": '),
        [],
        ["plan.json", "damaged plan", "not valid JSON"],
    ),
    ("plan-array", put("plan.json", "[]"), [], ["plan.json", "expected a JSON object"]),
    (
        "plan-tokens-string",
        put("plan.json", json.dumps({"domains": {"general": {"tokens_realized": "1K"}}})),
        [],
        ["plan.json", "domains: expected a mapping"],
    ),
    ("plan-missing", remove("plan.json"), [], ["plan.json: missing"]),
    ("status-broken-json", put("status.json", "{"), [], ["status.json", "damaged status file"]),
    ("status-array", put("status.json", "[]"), [], ["status.json", "expected a JSON object"]),
    ("recipe-bad-yaml", put("recipe.yaml", "name: a\nmodel: [unclosed\n"), [], ["recipe.yaml"]),
    ("recipe-a-list", put("recipe.yaml", "- a\n- b\n"), [], ["recipe.yaml"]),
    ("recipe-missing", remove("recipe.yaml"), [], ["no recipe.yaml"]),
    (
        "routing-flush-garbage",
        npz_garbage("routing/step_00000006.npz"),
        [],
        ["step_00000006.npz", "unreadable routing flush"],
    ),
    (
        "routing-flush-missing-keys",
        flush_without_keys,
        [],
        ["step_00000006.npz", "missing gate, ntok, domains"],
    ),
    (
        "eval-routing-garbage",
        npz_garbage("eval/routing_step_9.npz"),
        [],
        ["routing_step_9.npz", "unreadable eval routing"],
    ),
    ("other-taxonomy", other_taxonomy, [], ["different taxonomies"]),
    ("deeper-model", deeper_model, [], ["cannot be compared"]),
    ("same-name-twice", same_name_twice, [], ["two runs are named 'a'"]),
    ("missing-run-dir", missing_run, [], ["nowhere", "no such run directory"]),
    ("not-a-run-dir", not_a_run, [], ["junk", "no recipe.yaml"]),
    (
        "control-unknown",
        lambda runs: None,
        ["--control", "zzz"],
        ["control 'zzz' is not among the runs"],
    ),
    (
        "out-is-a-directory",
        lambda runs: os.makedirs(runs["out"]),
        [],
        ["report.html", "is a directory"],
    ),
    (
        "out-folder-missing",
        lambda runs: runs.update(out=os.path.join(runs["out"], "no", "r.html")),
        [],
        ["r.html", "no such directory"],
    ),
    (
        "out-inside-an-input",
        lambda runs: runs.update(out=os.path.join(runs["a"], "report.html")),
        [],
        ["report.html", "inside the input run directory"],
    ),
]


@pytest.fixture(scope="module")
def pristine_runs(tmp_path_factory):
    """Two well-formed runs (routing, scores, eval routing), written once and copied per case."""
    root = tmp_path_factory.mktemp("report-runs")
    for name, seed in (("a", 1), ("b", 2)):
        write_run(
            root, name, seed=seed, scores={"bpb": {"bpb/general": 1.0 + seed / 10}}, eval_steps=(9,)
        )
    return root


@pytest.mark.parametrize(
    "damage,flags,fragments", [pytest.param(d, fl, fr, id=i) for i, d, fl, fr in REPORT_CASES]
)
def test_report_on_damaged_inputs_is_refused_and_writes_nothing(
    pristine_runs, tmp_path, capsys, damage, flags, fragments
):
    import shutil

    shutil.copytree(pristine_runs, tmp_path / "runs", symlinks=True)
    os.makedirs(tmp_path / "out")
    runs = {
        "a": str(tmp_path / "runs" / "a"),
        "b": str(tmp_path / "runs" / "b"),
        "out": str(tmp_path / "out" / "report.html"),
    }
    damage(runs)
    inputs = [runs["a"], runs["b"]] + ([runs["extra"]] if "extra" in runs else [])
    argv = ["report", *inputs, "--control", "a", "-o", runs["out"], *flags]
    if "--control" in flags:
        argv = ["report", *inputs, "-o", runs["out"], *flags]
    assert_refused(argv, *fragments, watch=(tmp_path / "runs", tmp_path / "out"), capsys=capsys)


def test_the_table_is_large_enough():
    assert len(STATE_ROWS) + 2 + 3 * len(BAD_SWEEPS) + len(REPORT_CASES) >= 60
