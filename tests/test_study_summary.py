"""The toy-world study's summary (``launchers/toy_world_summary.py``) on a design laid out as the
study lays it out: ``runs/density/*`` (four densities x 3 seeds, a real effect on accuracy) and
``runs/density-aa/*`` (the control again in another data order). The tables, the A/A rate,
the dose-response and the figure files come out of the run directories."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from analysis_fakes import write_run, write_scores
from test_verdicts import _set_data_seed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DENSITIES = (0.0, 0.25, 0.5, 1.0)


def _summary_module():
    spec = importlib.util.spec_from_file_location(
        "toy_world_summary", os.path.join(REPO, "launchers", "toy_world_summary.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stages(density: float):
    return [
        {
            "name": "mixed",
            "mix": {
                "math": {
                    "tokens": "2K",
                    "density": {"math.structured": density, "math.text": 1 - density},
                },
                "general": {"tokens": "1K"},
            },
        }
    ]


def _run(root, sub, name, seed, density, accuracy_at, bpb, data_seed=None):
    path = write_run(
        os.path.join(str(root), sub),
        name,
        seed=seed,
        stages=_stages(density),
        domains=["math.structured", "math.text", "general"],
    )
    for step in (3, 6, 9):
        write_scores(
            path,
            name,
            step,
            {"probes": {"accuracy/math_answer": accuracy_at(step), "gold_bpb/math_answer": bpb}},
        )
    if data_seed is not None:
        _set_data_seed(path, data_seed)


@pytest.fixture(scope="module")
def study_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(3)
    for d in DENSITIES:
        for s in (1, 2, 3):
            n = rng.normal(0, 0.01)
            _run(
                root,
                "density",
                f"density-{d:.2f}-s{s}",
                s,
                d,
                lambda step, d=d, n=n: 0.02 * step * (1 + 2 * d) + n,
                2.0 - d + rng.normal(0, 0.05),
            )
    for s in (1, 2, 3):
        n = rng.normal(0, 0.01)
        _run(
            root,
            "density-aa",
            f"density-0.00-s{s}-d{s + 100}",
            s,
            0.0,
            lambda step, n=n: 0.02 * step + n,
            2.0 + rng.normal(0, 0.05),
            data_seed=s + 100,
        )
    # the shared base the points start from: its accuracies along its own training
    base = write_run(str(root), "study-base", seed=1234, stages=_stages(0.5))
    for step, acc in ((3, 0.04), (6, 0.06), (9, 0.125)):
        write_scores(base, "study-base", step, {"probes": {"accuracy/math_answer": acc}})
    return root


def test_summary_tables_figures_and_facts(study_root, tmp_path):
    mod = _summary_module()
    out, figs = tmp_path / "summary.md", tmp_path / "figs"
    rc = mod.main(
        [
            "--runs",
            str(study_root),
            "--designs",
            "density",
            "-o",
            str(out),
            "--figures",
            str(figs),
        ]
    )
    assert rc == 0
    text = out.read_text()
    assert "**Primary family** (accuracies and their learning-curve areas, holm" in text
    assert "A/A calibration: density-0.00 against itself in another data order" in text
    assert "dose-response over `stages.0.mix.math.density.math.structured`" in text
    assert "## The shared base (recipes/toy/study-base.yaml)" in text
    assert "| 9 | " in text and "| 0.125 |" in text
    study = json.loads((figs / "study.json").read_text())
    assert study["base"]["steps"] == 9
    assert study["base"]["final"] == {"probes/accuracy/math_answer": 0.125}
    facts = study["density"]
    assert facts["runs"] == 15  # (the fakes' plans carry no per-stage tokens to compare)
    ctl = facts["controls"]["density-0.00"]
    # the accuracy effect of density survives the correction, in the paper's direction
    acc = [s for s in ctl["survivors"]["accuracy"] if s["score"] == "probes/accuracy/math_answer"]
    assert {s["condition"] for s in acc} == {"density-0.50", "density-1.00"} or len(acc) >= 2
    assert all(s["direction"] == "paper's" for s in acc)
    # A/A: every score of the control against itself; the adjusted count never exceeds the raw
    assert facts["aa"]["comparisons"] >= 4
    assert facts["aa"]["adjusted"]["count"] <= facts["aa"]["raw"]["count"]
    fits = {f["score"]: f for f in facts["dose"]["fits"]}
    assert fits["probes/accuracy/math_answer"]["monotonicity"] == "increasing"
    for name in (
        "density-vs-density-0.00.png",
        "density-dose-response.png",
        "density-learning-curves.png",
    ):
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
