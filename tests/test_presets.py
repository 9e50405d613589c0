"""Every model preset's stated size (presets.py comment, README table) is what it really builds."""

from __future__ import annotations

import glob
import os
import re

import pytest
import yaml

from ablate.recipe.schema import MODEL_PRESETS, ModelConfig, parse_recipe
from ablate.telemetry.flops import parameter_counts
from model_sizes import measure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE_COMMENT = re.compile(
    r"^\s*# (?P<name>\S+): total (?P<total>[\d.]+[KMB]) / active (?P<active>[\d.]+[KMB]) "
    r"\(vocab (?P<vocab>\d+)\)\s*$",
    re.M,
)
UNIT = {"K": 1e3, "M": 1e6, "B": 1e9}


def aliases() -> dict[str, str]:
    """Old names: a preset that is another preset's very dict
    (``MODEL_PRESETS[old] = MODEL_PRESETS[new]``)."""
    out = {}
    for name, shape in MODEL_PRESETS.items():
        first = next(n for n, s in MODEL_PRESETS.items() if s is shape)
        if first != name:
            out[name] = first
    return out


def stated() -> dict[str, dict]:
    text = open(os.path.join(REPO, "ablate", "recipe", "presets.py"), encoding="utf-8").read()
    found = {}
    for m in SIZE_COMMENT.finditer(text):
        assert m["name"] not in found, f"two size comments for {m['name']}"
        found[m["name"]] = {"total": m["total"], "active": m["active"], "vocab": int(m["vocab"])}
    return found


def matches(figure: str, value: int) -> bool:
    """``figure`` (e.g. '3.86B', '97.4M') is ``value`` rounded to the digits it shows, and shows
    at least 3 significant digits (so a size change of more than ~0.5% needs a new figure)."""
    number, unit = figure[:-1], UNIT[figure[-1]]
    digits = number.replace(".", "").lstrip("0")
    decimals = len(number.split(".")[1]) if "." in number else 0
    return len(digits) >= 3 and abs(value - float(number) * unit) <= 0.5 * 10**-decimals * unit


def test_every_preset_has_a_size_comment_and_every_comment_a_preset():
    names = set(MODEL_PRESETS) - set(aliases())
    assert set(stated()) == names


@pytest.mark.parametrize("name", sorted(set(MODEL_PRESETS) - set(aliases())))
def test_stated_sizes_are_the_computed_ones(name):
    s = stated()[name]
    counts = parameter_counts(ModelConfig(**MODEL_PRESETS[name]), s["vocab"])
    assert matches(s["total"], counts["total"]), (name, s["total"], counts["total"])
    assert matches(s["active"], counts["active"]), (name, s["active"], counts["active"])


def test_stated_sizes_are_the_real_models(tmp_path):
    """The analytic counts of every preset equal the megatron-core model it builds (meta device)."""
    names = sorted(set(MODEL_PRESETS) - set(aliases()))
    s = stated()
    real = measure([{"model": {"preset": n}, "vocab": s[n]["vocab"]} for n in names], str(tmp_path))
    for name, r in zip(names, real):
        counts = parameter_counts(ModelConfig(**MODEL_PRESETS[name]), s[name]["vocab"])
        assert r["total"] == counts["total"], name
        assert r["by_part"]["routed_experts"] == counts["routed_experts"], name
        assert matches(s[name]["total"], r["total"]), name


def test_readme_table_says_the_same():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    rows = dict(re.findall(r"^\| `(\S+)` (\|.*\|)$", text, flags=re.M))
    for name, s in stated().items():
        p = ModelConfig(**MODEL_PRESETS[name])
        experts = (
            f"{p.num_experts} of {p.moe_ffn_hidden_size or p.ffn_hidden_size}, "
            f"top-{p.moe_router_topk}"
        )
        want = (
            f"| {p.num_layers} x {p.hidden_size} | {experts} "
            f"| {s['total']} | {s['active']} | {s['vocab']} |"
        )
        assert rows.get(name) == want, name


def test_an_old_name_loads_the_same_shape_and_recipes_use_the_new_names():
    assert aliases() == {"moe-1b": "moe-4b-a1b"}
    stages = [{"mix": {"code": 1.0}}]
    old = parse_recipe({"name": "a", "model": {"preset": "moe-1b"}, "stages": stages}, "a").model
    new = parse_recipe(
        {"name": "a", "model": {"preset": "moe-4b-a1b"}, "stages": stages}, "a"
    ).model
    assert {**vars(old), "preset": None} == {**vars(new), "preset": None}
    used = set()
    for path in glob.glob(os.path.join(REPO, "recipes", "**", "*.yaml"), recursive=True):
        raw = yaml.safe_load(open(path)) or {}
        preset = (raw.get("model") or {}).get("preset") if isinstance(raw, dict) else None
        if preset:
            used.add(preset)
            assert preset not in aliases(), f"{path} names the old preset {preset}"
    assert used <= set(MODEL_PRESETS)
