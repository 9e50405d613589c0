"""``ablate mix fit`` / ``propose`` on synthetic sweeps with a known mixing law: the log-linear fit
recovers the law's coefficients, a fit on pure noise is flagged, propose finds the law's optimum
under caps and pins, and the recipe it writes compiles."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from ablate.mix.fit import fit_mixture, load_fit
from ablate.mix.propose import project, propose_mixture
from ablate.mix.validate import kfold_indices, noise_floor
from mix_fakes import loglinear_law, write_sweep

DOMAINS = ["code.exec", "general", "math.structured", "math.text"]
B = np.array([0.05, 0.10, 0.15, 0.20])
C = np.zeros((4, 4))
C[0, 2], C[1, 3] = 0.4, -0.3
NOISE = 0.002  # interaction terms w_d*w_e are small (~0.06): their SE grows fast with noise


@pytest.fixture(scope="module")
def law_fit(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixlaw")
    W, Y, _ = write_sweep(
        root / "runs", DOMAINS, lambda W: loglinear_law(W, 1.0, B, C), noise=NOISE
    )
    out = fit_mixture(
        [str(root / "runs" / "*")],
        ["mixlaw/y"],
        str(root / "fit"),
        models=("loglinear", "gbm"),
        progress=False,
    )
    return root, out, W, Y


def test_loglinear_recovers_the_law(law_fit):
    root, out, W, Y = law_fit
    body, models = load_fit(out)
    coef = body["loglinear"]["mixlaw/y"]
    b = np.array([coef["log"][d] for d in DOMAINS])
    assert np.abs(b - B).max() < 0.01, b
    assert abs(coef["intercept"] - 1.0) < 0.03
    c = coef["interaction"]
    assert abs(c["code.exec*math.structured"] - 0.4) < 0.06
    assert abs(c["general*math.text"] + 0.3) < 0.06
    for pair in ("code.exec*general", "code.exec*math.text", "math.structured*math.text"):
        assert abs(c[pair]) < 0.06, (pair, c[pair])
    m = body["metrics"]["mixlaw/y"]
    assert m["chosen"] == "loglinear" and m["verdict"] == "fits"
    # an honest OOF error: near the noise it was made with, and the floor measured from the
    # 8 repeated mixtures is that noise
    assert NOISE * 0.5 < m["noise_floor"] < NOISE * 2
    assert m["models"]["loglinear"]["oof_rmse"] < 3 * NOISE
    assert m["models"]["loglinear"]["oof_rmse"] < m["models"]["gbm"]["oof_rmse"]
    # the table is the runs' realised shares, exactly
    got = np.array([[r["weights"][d] for d in DOMAINS] for r in body["table"]])
    np.testing.assert_allclose(got, W, atol=1e-12)
    html = open(os.path.join(out, "fit.html")).read()
    assert "Domain interactions" in html and html.count("<img") == 3


def test_pure_noise_is_flagged(tmp_path):
    rng = np.random.default_rng(3)
    write_sweep(
        tmp_path / "runs",
        DOMAINS,
        lambda W: rng.normal(0, 1, (len(W), 3)),
        noise=0.0,
        metrics=("a", "b", "c"),
        n_mix=36,
    )
    out = fit_mixture(
        [str(tmp_path / "runs" / "*")],
        ["mixlaw/a", "mixlaw/b", "mixlaw/c"],
        str(tmp_path / "fit"),
        models=("loglinear", "gbm"),
        progress=False,
    )
    body = json.load(open(os.path.join(out, "fit.json")))
    for t in ("mixlaw/a", "mixlaw/b", "mixlaw/c"):
        assert body["metrics"][t]["verdict"] == "no better than noise", body["metrics"][t]


def _optimum(b, lo, fixed: dict, eps=1e-3):
    """The maximiser of sum_d b_d log(w_d + eps) with ``fixed`` shares held: the free domains
    get w_d + eps proportional to b_d (Lagrange)."""
    free = [d for d in range(len(b)) if d not in fixed]
    rest = 1 - sum(fixed.values())
    lam = b[free].sum() / (rest + eps * len(free))
    w = np.zeros(len(b))
    for d, v in fixed.items():
        w[d] = v
    w[free] = b[free] / lam - eps
    return w


@pytest.fixture(scope="module")
def capped_fit(tmp_path_factory):
    """No interactions; math.text's data allows at most 20 % of the stage at 2 epochs."""
    root = tmp_path_factory.mktemp("mixcap")
    stage = 512_000
    held = {d: 10 * stage for d in DOMAINS}
    held["math.text"] = int(0.2 * stage / 2)
    W, Y, _ = write_sweep(
        root / "runs",
        DOMAINS,
        lambda W: loglinear_law(W, 0.5, B, np.zeros((4, 4))),
        noise=0.002,
        held=held,
        max_epochs=2,
        min_share=0.01,
    )
    out = fit_mixture(
        [str(root / "runs" / "*")],
        ["mixlaw/y"],
        str(root / "fit"),
        models=("loglinear",),
        progress=False,
    )
    return root, out


def test_propose_finds_the_optimum_under_caps_and_pins(capped_fit):
    root, out = capped_fit
    body, _ = load_fit(out)
    assert body["caps"]["math.text"] == pytest.approx(0.2)
    # unconstrained by the cap (--max-epochs 20): the law's optimum, w + eps ∝ b
    free = propose_mixture(out, "'mixlaw/y'", max_epochs=20)
    w = np.array([free["weights"][d] for d in DOMAINS])
    assert np.abs(w - _optimum(B, None, {})).max() < 0.02, w
    # the cap binds: math.text at (just under) 0.2, the rest ∝ b
    capped = propose_mixture(out, "'mixlaw/y'", str(root / "capped.yaml"))
    w = np.array([capped["weights"][d] for d in DOMAINS])
    cap = capped["caps"]["math.text"]
    assert w[3] <= cap + 1e-9 and cap == pytest.approx(0.2, rel=1e-3)
    assert np.abs(w - _optimum(B, None, {3: cap})).max() < 0.02, w
    # a pin is kept exactly, the cap still holds
    pinned = propose_mixture(out, "'mixlaw/y'", pins=["code.exec=0.3"])
    w = np.array([pinned["weights"][d] for d in DOMAINS])
    assert w[0] == pytest.approx(0.3, abs=1e-9) and w[3] <= cap + 1e-9
    assert np.abs(w - _optimum(B, None, {0: 0.3, 3: cap})).max() < 0.02, w
    assert abs(w.sum() - 1) < 1e-9
    # KL towards a uniform prior pulls the proposal towards uniform
    pulled = propose_mixture(out, "'mixlaw/y'", prior="uniform", kl=5.0, max_epochs=20)
    assert (
        np.abs(np.array(list(pulled["weights"].values())) - 0.25).max()
        < np.abs(np.array(list(free["weights"].values())) - 0.25).max()
    )
    # the recipe: the base recipe with the stage's mix as token counts summing to its budget
    recipe = yaml.safe_load(open(root / "capped.yaml"))
    mix = recipe["stages"][0]["mix"]
    assert sum(e["tokens"] for e in mix.values()) == recipe["stages"][0]["tokens"] == 512_000
    assert mix["math.text"]["tokens"] / 512_000 == pytest.approx(cap, abs=1e-4)
    assert recipe["name"] == "mix000-s1-mix" and "run_dir" not in recipe
    # deterministic
    again = propose_mixture(out, "'mixlaw/y'")
    assert again["weights"] == capped["weights"]


def test_folds_keep_a_mixtures_seeds_together_and_the_floor_pools_them():
    W = np.repeat(np.eye(3)[[0, 1, 2, 0, 1]] * 0.5 + 0.5 / 3, 2, axis=0)[:8]
    folds = kfold_indices(W, 3, seed=1)
    for train, test in folds:
        assert not {tuple(W[i]) for i in train} & {tuple(W[i]) for i in test}
    assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(8))
    assert [t.tolist() for _, t in kfold_indices(W, 3, seed=1)] == [t.tolist() for _, t in folds]
    Y = np.array([[1.0], [3.0], [5.0], [5.0], [0.0], [2.0], [7.0], [9.0]])
    floor, repeats = noise_floor(
        np.array([[0.1, 0.9]] * 2 + [[0.5, 0.5]] * 2 + [[0.2, 0.8]] * 2 + [[0.3, 0.7]] * 2), Y
    )
    # within-pair variances 2, 0, 2, 2 with one dof each: pooled sd sqrt(6/4)
    assert repeats == 4 and floor[0] == pytest.approx(np.sqrt(1.5))


def test_projection_lands_in_the_box_on_the_simplex():
    rng = np.random.default_rng(0)
    lo, hi = np.array([0.0, 0.1, 0.0, 0.0]), np.array([0.5, 0.1, 0.3, 1.0])
    P = project(rng.normal(size=(50, 4)), lo, hi)
    assert np.allclose(P.sum(1), 1) and (P >= lo - 1e-12).all() and (P <= hi + 1e-12).all()
    inside = np.array([[0.3, 0.1, 0.2, 0.4]])
    np.testing.assert_allclose(project(inside, lo, hi), inside, atol=1e-12)


def test_robust_loss_shrugs_off_crashed_runs():
    """Three runs scored as if crashed (+2 on a law of spread ~0.3) pull least squares' b_d far
    off; the soft-L1 fit stays within 0.02 of the law."""
    from ablate.mix.models import LogLinear, loglinear_design

    rng = np.random.default_rng(5)
    W = 0.02 + 0.92 * rng.dirichlet(np.ones(4), size=60)
    y = loglinear_law(W, 1.0, B, np.zeros((4, 4))) + rng.normal(0, 0.002, 60)
    y[:3] += 2.0
    robust = LogLinear(interactions=False).fit(W, y).coef_[1:]
    ols = np.linalg.lstsq(loglinear_design(W, False), y, rcond=None)[0][1:]
    assert np.abs(robust - B).max() < 0.02, robust
    assert np.abs(ols - B).max() > 0.05, ols


def test_fit_is_deterministic(law_fit, tmp_path):
    root, out, _, _ = law_fit
    again = fit_mixture(
        [str(root / "runs" / "*")],
        ["mixlaw/y"],
        str(tmp_path / "again"),
        models=("loglinear", "gbm"),
        progress=False,
    )
    assert (
        open(os.path.join(out, "fit.json")).read() == open(os.path.join(again, "fit.json")).read()
    )
