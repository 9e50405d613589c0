"""The real-data study end to end: the standard library, MBPP, GSM8K and MATH-500 tagged into
the six domains (recipes/corpora/real-study.yaml), decontaminated against every test set, and a
small model trained on recipes/real/six-domains.yaml (shrunk to the tiny model) to its exact
token budget."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from conftest import TINY_CADENCE, TINY_MODEL, TINY_TRAINING
from test_train import assert_budgets_met, metrics, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(os.path.dirname(REPO), "shared", "benchmarks")
SPEC = os.path.join(REPO, "recipes", "corpora", "real-study.yaml")
RECIPE = os.path.join(REPO, "recipes", "real", "six-domains.yaml")
SIX = ("code.exec", "code.nl", "code.text", "math.code", "math.structured", "math.text")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir(BENCH), reason="needs ../shared/benchmarks"),
]


def test_real_data_tagged_decontaminated_and_trained(tmp_path, monkeypatch, cli):
    from ablate.data.manifest import load_manifest

    monkeypatch.chdir(tmp_path)
    tagged = cli("data", "tag", SPEC, "--out", "data/real-study-tagged", "--workers", "2")
    assert tagged.rc == 0, tagged.err
    prep = cli(
        "data", "prepare", SPEC, "--out", "data/real-study", "--tagged", "data/real-study-tagged"
    )
    assert prep.rc == 0 and "tagging again" not in prep.err, prep.err
    m = load_manifest("data/real-study/manifest.json")

    # test splits never become training data: MATH-500 is caught whole, the stdlib not at all
    caught = m.decontamination["sources"]
    assert caught["math500"] == {
        "documents": 500,
        "contaminated": 500,
        "dropped": 500,
        "by_eval_set": {"math500": 500},
    }
    assert caught["stdlib"]["contaminated"] == 0
    assert caught["gsm8k"]["by_eval_set"] == {"gsm8k": caught["gsm8k"]["dropped"]}
    assert 0 < caught["gsm8k"]["dropped"] <= 3 * 11 + 3  # the 11 overlapping problems x renders
    assert caught["mbpp"]["by_eval_set"] == {"mbpp": caught["mbpp"]["dropped"]}
    assert not any(e.source == "math500" for e in m.datasets + m.eval_datasets)
    # six domains, each decided by a tagger that the dataset names
    by_domain = {}
    for e in m.datasets:
        by_domain[e.domain] = by_domain.get(e.domain, 0) + e.tokens
        assert e.provenance["tagger"]["name"] in ("code", "math")
        assert e.provenance["tagger"]["version"] and e.provenance["thresholds"]
    assert set(SIX) <= set(by_domain), by_domain
    shown = cli("data", "inspect", "data/real-study")
    assert "math500: 500 of 500 documents overlap (math500 500), 500 dropped" in shown.out
    assert "tagged: gsm8k by math v" in shown.out and "[reused shards]" in shown.out
    assert all(by_domain[d] > 300_000 for d in SIX), by_domain

    # the recipe, shrunk to the tiny model and a few steps, trains to its exact budget
    recipe = yaml.safe_load(open(RECIPE))
    assert recipe["data"]["manifests"] == ["data/real-study/manifest.json"]
    recipe.update(model=TINY_MODEL, training=TINY_TRAINING, cadence=TINY_CADENCE)
    recipe["stages"][0]["tokens"] = 64 * 8 * 12
    with open("real.yaml", "w") as f:
        yaml.safe_dump(recipe, f)
    assert cli("compile", "real.yaml").rc == 0
    r = run(tmp_path, "real.yaml", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = metrics(tmp_path, recipe["name"])
    assert len(rows) == 12 and all(f"loss/{d}" in rows[-1] for d in SIX)
    assert_budgets_met(tmp_path, recipe["name"])
    with open(tmp_path / "runs" / recipe["name"] / "status.json") as f:
        assert json.load(f)["state"] == "completed"
