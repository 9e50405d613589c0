"""Recipe schema details not covered by the every-recipe test (all of those name a preset)."""

from ablate.recipe.schema import parse_recipe


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
