"""Shared by the sweep tests: a tiny toy-world base recipe and a sweep file writer."""

from __future__ import annotations

import json
import os

import yaml

from conftest import TINY_CADENCE, tiny_recipe

# The training tests' tiny model, one mixed stage: 8 steps of 512 tokens.
TINY_BASE = tiny_recipe(
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
    cadence={**TINY_CADENCE, "keep_checkpoints": 2},
)

DENSITY = "stages.mixed.mix.math.density.math.structured"
TEXT = "stages.mixed.mix.math.density.math.text"


def base(**changes) -> dict:
    raw = json.loads(json.dumps(TINY_BASE))
    for dotted, value in changes.items():
        node, keys = raw, dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return raw


def write_sweep(folder, name: str, **body) -> str:
    body = {"name": name, "base": body.pop("base", None) or base(), **body}
    path = os.path.join(str(folder), f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(body, f, sort_keys=False)
    return path


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def assert_tokens_match_plan(run_dir) -> dict:
    """The run's final cumulative tokens per domain equal plan.json's realized tokens."""
    with open(os.path.join(str(run_dir), "plan.json")) as f:
        plan = json.load(f)
    last = read_jsonl(os.path.join(str(run_dir), "metrics.jsonl"))[-1]
    want = {d: t["tokens_realized"] for d, t in plan["domains"].items()}
    got = {d: last[f"tokens/{d}"] for d in want}
    assert got == want, (run_dir, got, want)
    assert last["step"] == sum(s["steps"] for s in plan["stages"])
    return want
