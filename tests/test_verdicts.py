"""Corrected verdicts, power, learning curves, dose-response and A/A calibration on run
directories (well-formed fakes with known effects), through the library and ``ablate report``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

import ablate.analysis as A
from ablate.analysis import curves as cv
from ablate.analysis import verdicts as vd
from ablate.errors import AblateError
from analysis_fakes import write_run, write_scores
from conftest import assert_one_line_error

SEEDS = (1, 2, 3)
DOSES = {"d1": "1K", "d2": "2K", "d4": "4K"}  # math.structured tokens: the numeric axis
EVAL_STEPS = (3, 6, 9)


def _stages(math_tokens: str):
    return [
        {
            "name": "main",
            "mix": {"math.structured": {"tokens": math_tokens}, "general": {"tokens": "1K"}},
        }
    ]


def _set_data_seed(path: str, data_seed: int) -> None:
    f = os.path.join(path, "recipe.yaml")
    with open(f) as fh:
        recipe = yaml.safe_load(fh)
    recipe["data_seed"] = data_seed
    with open(f, "w") as fh:
        yaml.safe_dump(recipe, fh, sort_keys=False)


def _write(root, name, seed, tokens, accuracy_at, bpb, data_seed=None):
    """A run whose accuracy is ``accuracy_at(step)`` at each evaluated step."""
    path = write_run(
        root, name, seed=seed, stages=_stages(tokens), domains=["math.structured", "general"]
    )
    for step in EVAL_STEPS:
        write_scores(
            path,
            name,
            step,
            {"probes": {"accuracy/math": accuracy_at(step), "gold_bpb/math": bpb}},
        )
    if data_seed is not None:
        _set_data_seed(path, data_seed)
    return path


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """Three doses x 3 seeds with a real effect of the dose on accuracy (and a faster learning
    curve), none on bits per byte; plus the control (d1) again in another data order."""
    root = tmp_path_factory.mktemp("verdicts")
    rng = np.random.default_rng(0)
    for cond, tokens in DOSES.items():
        level = {"d1": 0.0, "d2": 1.0, "d4": 2.0}[cond]
        for s in SEEDS:
            noise = rng.normal(0, 0.01)
            _write(
                root,
                f"{cond}-s{s}",
                s,
                tokens,
                lambda step, lv=level, n=noise: min(1.0, 0.05 * step * (1 + lv) + n),
                1.0 + rng.normal(0, 0.05),
            )
    for s in SEEDS:  # A/A: the control, same init seeds, other data order
        noise = rng.normal(0, 0.01)
        _write(
            root,
            f"d1-s{s}-d{s + 10}",
            s,
            DOSES["d1"],
            lambda step, n=noise: 0.05 * step + n,
            1.0 + rng.normal(0, 0.05),
            data_seed=s + 10,
        )
    return root


def _load(root, pattern="*"):
    runs = A.load_runs([os.path.join(str(root), pattern)])
    frame = A.runs_frame(runs)
    scores = A.scores_frame(runs, frame)
    curves = cv.curve_frame(runs, frame)
    import pandas as pd

    return runs, frame, pd.concat([scores, cv.curve_scores(curves)], ignore_index=True), curves


def test_data_order_runs_group_with_their_condition(runs_root):
    _, frame, _, _ = _load(runs_root)
    d1 = frame[frame["condition"] == "d1"]
    assert len(d1) == 6  # the A/A runs are seeds of the control, not a condition of their own
    assert sorted(d1["data_seed"]) == [1, 2, 3, 11, 12, 13]


def test_learning_curve_scores(runs_root):
    _, _, scores, curves = _load(runs_root, "d*-s1")
    run = curves[(curves["run"] == "d2-s1") & (curves["score"] == "probes/accuracy/math")]
    assert run["tokens"].tolist() == [3 * 64 * 8, 6 * 64 * 8, 9 * 64 * 8]
    s = scores[scores["run"] == "d2-s1"].set_index("score")["value"]
    acc = run["value"].to_numpy()
    # area over the evaluated span / span = the trapezoid mean of the three points
    assert s["curve/auc/probes/accuracy/math"] == pytest.approx((acc[0] + 2 * acc[1] + acc[2]) / 4)
    # 0.25 is crossed between the first two points (0.3 at step 3 → reached at once)
    assert acc[0] >= 0.25 and s["curve/tokens_to_0.25/probes/accuracy/math"] == 3 * 64 * 8
    assert s["curve/reached_0.5/probes/accuracy/math"] == 1.0
    # a value that is never reached is censored at the last evaluated tokens
    t, reached = cv.tokens_to([10, 20, 30], [0.1, 0.2, 0.3], 0.5)
    assert (t, reached) == (30.0, False)
    t, reached = cv.tokens_to([10, 20, 30], [0.1, 0.3, 0.6], 0.45)
    assert reached and t == pytest.approx(25.0)


def test_verdicts_correct_the_family_and_state_power(runs_root):
    _, _, scores, _ = _load(runs_root, "d[124]-s[123]")
    v = vd.verdicts(scores, "d1")
    # 2 conditions x 8 scores (2 end-point, 6 from the learning curve)
    assert v.attrs["family_size"] == int(v["p"].notna().sum()) == 16
    assert v.attrs["correction"] == "holm"  # auto: a family of at most 20
    acc = v[v["score"] == "probes/accuracy/math"].set_index("condition")
    assert acc.loc["d4", "verdict_adj"] == "better" and acc.loc["d2", "verdict_adj"] == "better"
    assert (acc["p_adj"] >= acc["p"]).all()
    # adjusted intervals contain the raw ones
    assert (acc["lo_adj"] <= acc["lo"]).all() and (acc["hi_adj"] >= acc["hi"]).all()
    assert (acc["mde"] > 0).all() and (acc["seeds_needed"] >= 2).all()
    bpb = v[v["score"] == "probes/gold_bpb/math"]
    assert set(bpb["verdict_adj"]) == {"noise"}
    bh = vd.verdicts(scores, "d1", correction="bh")
    assert bh.attrs["correction"] == "bh" and (bh["p_adj"] <= v["p_adj"] + 1e-12).all()


def test_one_comparison_family(runs_root):
    _, _, scores, _ = _load(runs_root, "d[12]-s[123]")
    one = scores[scores["score"] == "probes/accuracy/math"]
    v = vd.verdicts(one, "d1")  # auto: reported uncorrected, and says so
    assert v.attrs["correction"] == "none: family of 1"
    with pytest.raises(AblateError, match="a family of 1 testable comparison"):
        vd.verdicts(one, "d1", correction="holm")


def test_dose_response_fits(runs_root):
    _, frame, scores, _ = _load(runs_root, "d[124]-s[123]")
    field = next(c for c in frame.columns if c.endswith("math.structured.tokens"))
    fits = vd.dose_fits(scores, frame, field).set_index("score")
    acc = fits.loc["probes/accuracy/math"]
    assert acc["kind"] == "logistic" and acc["slope"] > 0 and acc["lo"] > 0
    assert acc["monotonicity"] == "increasing" and acc["trend_adj"] == "up"
    assert fits.loc["probes/gold_bpb/math", "trend_adj"] == "none"
    assert fits.loc["probes/gold_bpb/math", "kind"] == "linear"
    bad = frame.copy()
    bad[field] = ["lots"] * len(bad)
    with pytest.raises(AblateError, match="needs numbers"):
        vd.dose_fits(scores, bad, field)


def test_aa_calibration(runs_root):
    _, _, scores, _ = _load(runs_root, "d1-*")
    v, rates = vd.aa_calibration(scores, "d1")
    assert rates["comparisons"] == len(v) == int(v["p"].notna().sum())
    assert rates["raw"].total == rates["comparisons"]
    assert 0 <= rates["adjusted"].count <= rates["raw"].count
    two = scores[~scores["run"].isin(["d1-s2-d12", "d1-s3-d13"])]
    with pytest.raises(AblateError, match="at least 2 seeds per arm"):
        vd.aa_calibration(two, "d1")
    plain = scores[scores["data_seed"] == scores["seed"]]
    with pytest.raises(AblateError, match="no run in another data order"):
        vd.aa_calibration(plain, "d1")


def test_report_with_statistics(runs_root, tmp_path, cli):
    out = tmp_path / "r.html"
    _, frame, _, _ = _load(runs_root, "d[124]-s[123]")
    field = next(c for c in frame.columns if c.endswith("math.structured.tokens"))
    r = cli(
        "report",
        os.path.join(str(runs_root), "d*"),
        "--control",
        "d1",
        "--dose",
        field,
        "--aa",
        "-o",
        out,
    )
    assert r.rc == 0, r.err
    page = out.read_text()
    for part in (
        "Verdicts after correction",
        "Holm",
        "Learning curves",
        "Dose–response",
        "A/A calibration",
        "curve/auc/probes/accuracy/math",
    ):
        assert part in page, part


def test_report_refusals(runs_root, tmp_path, cli):
    out = tmp_path / "r.html"
    runs = os.path.join(str(runs_root), "d[12]-s[123]")
    r = cli("report", runs, "--control", "d1", "--dose", "no.such.field", "-o", out)
    assert_one_line_error(r, "dose axis 'no.such.field' is not a recipe field")
    r = cli("report", runs, "--control", "d1", "--dose", "name", "-o", out)  # a string field
    assert_one_line_error(r, "dose axis name", "needs numbers")
    # the control's one init seed in both data orders: no interval
    one = [os.path.join(str(runs_root), p) for p in ("d1-s1*", "d2-s[12]")]
    r = cli("report", *one, "--control", "d1", "--aa", "-o", out)
    assert_one_line_error(r, "A/A calibration", "at least 2 seeds per arm")
    assert not out.exists()
    # with 2 seeds a family still corrects (and the power figures exist at n = 2)
    r = cli(
        "report",
        os.path.join(str(runs_root), "d[12]-s[12]"),
        "--control",
        "d1",
        "--correction",
        "bh",
        "-o",
        out,
    )
    assert r.rc == 0, r.err
    assert "Benjamini" in out.read_text()


def test_report_family_of_one_with_a_named_correction(tmp_path, cli):
    """One score, two conditions: a family of one comparison. Auto reports it uncorrected;
    naming a method is one line (there is nothing to correct), and nothing is written."""
    rng = np.random.default_rng(1)
    for cond, shift, tokens in (("ctl", 0.0, "1K"), ("arm", 0.2, "2K")):
        for s in SEEDS:
            path = write_run(tmp_path / "runs", f"{cond}-s{s}", seed=s, stages=_stages(tokens))
            write_scores(
                path,
                f"{cond}-s{s}",
                9,
                {"probes": {"accuracy/math": 0.3 + shift + rng.normal(0, 0.01)}},
            )
    out = tmp_path / "r.html"
    runs = str(tmp_path / "runs" / "*")
    r = cli("report", runs, "--control", "ctl", "--correction", "holm", "-o", out)
    assert_one_line_error(r, "a family of 1 testable comparison", "--correction none")
    assert not out.exists()
    r = cli("report", runs, "--control", "ctl", "-o", out)
    assert r.rc == 0, r.err
    assert "none: family of 1" in out.read_text()
