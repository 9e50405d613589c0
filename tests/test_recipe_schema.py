"""Recipe schema details not covered by the every-recipe test (all of those name a preset)."""

import dataclasses
from typing import Literal

import pytest

from ablate.errors import AblateError
from ablate.recipe.schema import load_recipe, parse_recipe
from ablate.validate import build_dataclass, checked


def test_a_recipe_without_a_preset_round_trips_through_its_resolved_dump():
    raw = {
        "name": "explicit",
        "model": {
            "num_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "ffn_hidden_size": 128,
            "num_experts": 4,
        },
        "stages": [{"name": "s", "mix": {"code": {"tokens": "4K"}}}],
    }
    recipe = parse_recipe(raw, "explicit.yaml")
    resolved = recipe.to_dict()
    assert (
        resolved["model"]["preset"] is None
    )  # written as `preset: null` into runs/<name>/recipe.yaml
    assert parse_recipe(resolved, "runs/explicit/recipe.yaml").to_dict() == resolved


def _raw(**changes) -> dict:
    raw = {
        "name": "r",
        "model": {"preset": "toy-moe"},
        "stages": [{"name": "s", "tokens": "8K", "mix": {"math": 0.5, "code": 0.5}}],
    }
    raw.update(changes)
    return raw


def test_bare_mix_values_are_shares_up_to_one_and_whole_token_counts_above():
    mix = parse_recipe(
        _raw(stages=[{"mix": {"math": 1, "code": 12000, "general": "4K"}}]), "r.yaml"
    )
    entries = {e.selector: (e.share, e.tokens) for e in mix.stages[0].mix}
    assert entries == {"math": (1.0, None), "code": (None, 12000), "general": (None, 4000)}
    assert mix.stages[0].name == "stage0"


def test_schema_fields_convert_and_keep_their_source(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: r\nmodel: {preset: toy-moe}\n"
        "training: {optimizer: {lr: 1e-3, min_lr: 0}}\n"
        "cadence: {async_checkpoint: off}\nstages: [{tokens: 1.5e4, mix: {math: 1}}]\n"
    )
    recipe = load_recipe(str(path))
    assert recipe.training.optimizer.lr == 0.001  # YAML 1.2 float, not the string '1e-3'
    assert recipe.cadence.async_checkpoint == "off"  # YAML 1.1 reads a bare off as false
    assert recipe.stages[0].tokens == 15000
    assert recipe.source == recipe._path == str(path)
    assert "source" not in recipe.to_dict()


def test_literal_choices_and_ranges_come_from_the_dataclass_fields():
    @dataclasses.dataclass
    class Knobs:
        mode: Literal["a", "b"] = "a"
        rate: float = checked(0.5, gt=0, le=1)
        count: int = checked(1, ge=1)

    built = build_dataclass(Knobs, {"mode": "b", "rate": 1, "count": 3}, "k.yaml")
    assert built == Knobs("b", 1.0, 3)
    for raw, fragment in [
        ({"mode": "c"}, "k.yaml: mode: 'c' is not allowed (allowed: a, b)"),
        ({"rate": float("nan")}, "k.yaml: rate: nan is not a finite number"),
        ({"rate": 2}, "k.yaml: rate: 2 is out of range (allowed: a finite number > 0 and <= 1"),
        ({"count": True}, "k.yaml: count: expected an integer, got True"),
        ({"count": 2**64}, "k.yaml: count: 18446744073709551616 is out of range"),
    ]:
        with pytest.raises(AblateError) as exc:
            build_dataclass(Knobs, raw, "k.yaml")
        assert fragment in str(exc.value)
