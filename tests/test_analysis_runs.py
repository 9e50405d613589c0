"""Runs registry, columnar routing store, capability comparison, plots, and one-line errors, on
synthetic run directories (tests/analysis_fakes.py)."""

from __future__ import annotations

import base64
import io
import json
import os
import re

import numpy as np
import pytest

from ablate.analysis import capability as cap
from ablate.analysis import routing_store as rs
from ablate.analysis.runs import (
    differences,
    join_recipe,
    load_runs,
    metrics_frame,
    runs_frame,
    varying_columns,
)
from ablate.errors import AblateError
from analysis_fakes import DOMAINS, write_run, write_scores
from conftest import assert_one_line_error


def mix(code="1K"):
    return [
        {
            "name": "main",
            "mix": {d: {"tokens": code if d == "code.exec" else "1K"} for d in DOMAINS},
        }
    ]


# ------------------------------------------------------------------ columnar routing store


def test_store_consolidates_flush_files_into_one_memory_mapped_file(tmp_path):
    path = write_run(tmp_path, "a", flush_steps=(3, 6, 9, 12))
    log = rs.load_routing(path, k=2)
    assert os.path.exists(os.path.join(path, rs.COLUMNAR))
    assert (
        log.steps_F.tolist() == [3, 6, 9, 12]
        and log.domains == DOMAINS
        and log.shape == (4, 2, 4, 4)
    )
    assert log.count_FLDE.dtype == np.int32  # narrowed: the device accumulates in float32 anyway
    for f, step in enumerate(log.steps_F):
        with np.load(os.path.join(path, "routing", f"step_{step:08d}.npz")) as z:
            assert (log.count_FLDE[f] == z["count"]).all() and (log.ntok_FLD[f] == z["ntok"]).all()
            assert np.allclose(log.gate_FLDE[f], z["gate"], rtol=1e-6)
    with np.load(os.path.join(path, rs.COLUMNAR)) as z:  # a plain .npz, readable without us
        assert z["count_FLDE"].shape == (4, 2, 4, 4)
    count, ntok = log.total()
    assert (count.sum(-1) == 2 * ntok).all()
    big = {
        "steps_F": np.arange(50),
        "count_FLDE": np.ones((50, 4, 3, 64), np.int32),
        "ntok_FLD": np.ones((50, 4, 3)),
        "gate_FLDE": np.ones((50, 4, 3, 64), np.float32),
        "domains": ["a", "b", "c"],
        "files": [],
    }
    rs.write_columnar(str(tmp_path / "big.npz"), big)
    back = rs._read_columnar(str(tmp_path / "big.npz"))
    assert isinstance(back["count_FLDE"], np.memmap) and isinstance(back["gate_FLDE"], np.memmap)
    assert (back["count_FLDE"] == 1).all() and back["domains"] == ["a", "b", "c"]


def test_store_is_reused_extended_and_rebuilt(tmp_path, monkeypatch):
    path = write_run(tmp_path, "a", flush_steps=(3, 6, 9))
    rs.load_routing(path, k=2)
    read = []
    real = rs._stack
    monkeypatch.setattr(
        rs,
        "_stack",
        lambda name, files, k: read.append([s for s, _ in files]) or real(name, files, k),
    )
    rs.load_routing(path, k=2)
    assert read == []  # unchanged flush files: the store is used as is
    with np.load(os.path.join(path, "routing", "step_00000009.npz")) as z:
        arrays = {key: z[key] for key in z.files}
    with open(os.path.join(path, "routing", "step_00000012.npz"), "wb") as f:
        np.savez(f, **arrays)
    log = rs.load_routing(path, k=2)
    assert read == [[12]] and log.steps_F.tolist() == [3, 6, 9, 12]  # only the new window was read
    arrays["count"] = arrays["count"][
        :, :, ::-1
    ].copy()  # a rewritten flush (a resumed run): rebuild
    with open(os.path.join(path, "routing", "tmp"), "wb") as f:
        np.savez(f, **arrays)
    os.replace(
        os.path.join(path, "routing", "tmp"), os.path.join(path, "routing", "step_00000006.npz")
    )
    os.utime(os.path.join(path, "routing", "step_00000006.npz"), ns=(1, 1))
    log = rs.load_routing(path, k=2)
    assert read[-1] == [3, 6, 9, 12] and (log.count_FLDE[1] == arrays["count"]).all()


def test_store_skips_listing_flush_files_while_routing_dir_is_unchanged(tmp_path, monkeypatch):
    path = write_run(tmp_path, "a")
    hour_ago = os.stat(path).st_mtime_ns - 3600 * 10**9
    os.utime(os.path.join(path, "routing"), ns=(hour_ago, hour_ago))
    rs.load_routing(path, k=2)  # builds the store and records the settled directory mtime
    real = rs.flush_files
    monkeypatch.setattr(rs, "flush_files", lambda run_dir: pytest.fail("listed flush files"))
    assert rs.load_routing(path, k=2).shape[0] == 3
    monkeypatch.setattr(rs, "flush_files", real)
    with np.load(os.path.join(path, "routing", "step_00000009.npz")) as z:
        arrays = {key: z[key] for key in z.files}
    with open(
        os.path.join(path, "routing", "step_00000012.npz"), "wb"
    ) as f:  # a new flush: the dir changes
        np.savez(f, **arrays)
    assert rs.load_routing(path, k=2).steps_F.tolist() == [3, 6, 9, 12]


def test_store_survives_a_corrupt_cache_and_a_read_only_run(tmp_path, monkeypatch):
    path = write_run(tmp_path, "a")
    with open(os.path.join(path, rs.COLUMNAR), "wb") as f:
        f.write(b"not a zip")
    assert rs.load_routing(path, k=2).shape[0] == 3
    os.remove(os.path.join(path, rs.COLUMNAR))

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rs, "write_columnar", refuse)
    log = rs.load_routing(path, k=2)
    assert log.shape[0] == 3 and not os.path.exists(os.path.join(path, rs.COLUMNAR))
    assert rs.load_routing(path, k=2, cache=False).shape[0] == 3


def test_store_errors_are_one_line(tmp_path):
    path = write_run(tmp_path, "a")
    with pytest.raises(AblateError, match="top-k"):
        rs.load_routing(path, k=3)
    bad = os.path.join(path, "routing", "step_00000012.npz")
    with open(bad, "wb") as f:
        np.savez(
            f,
            count=np.zeros((2, 3, 4), int),
            gate=np.zeros((2, 3, 4)),
            ntok=np.zeros((2, 3), int),
            domains=np.array(DOMAINS[:3]),
        )
    with pytest.raises(AblateError, match="differ from the run's earlier flushes"):
        rs.load_routing(path, k=2)
    with open(bad, "wb") as f:
        np.savez(f, count=np.zeros((2, 4, 4), int))
    with pytest.raises(AblateError, match="missing gate, ntok, domains"):
        rs.load_routing(path, k=2)
    with open(bad, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(AblateError, match="unreadable routing flush"):
        rs.load_routing(path, k=2)
    os.makedirs(tmp_path / "empty" / "routing")
    with pytest.raises(AblateError, match="no routing/step_"):
        rs.load_routing(str(tmp_path / "empty"))


# ------------------------------------------------------------------ registry


def test_runs_frame_has_every_recipe_field_and_groups_seeds(tmp_path):
    for name, seed, code in (
        ("base-s1", 1, "1K"),
        ("base-s2", 2, "1K"),
        ("code-s1", 1, "5K"),
        ("solo", 3, "3K"),
    ):
        write_run(tmp_path, name, seed=seed, stages=mix(code))
    runs = load_runs([str(tmp_path / "*")])
    frame = runs_frame(runs)
    assert frame["run"].tolist() == ["base-s1", "base-s2", "code-s1", "solo"]
    for col in (
        "name",
        "seed",
        "model.num_experts",
        "model.moe_router_topk",
        "training.optimizer.lr",
        "stages.0.mix.code.exec.tokens",
        "stages.0.mix.math.text.tokens",
        "cadence.routing_flush_every",
    ):
        assert col in frame, col
    assert frame["stages.0.mix.code.exec.tokens"].tolist() == [1000, 1000, 5000, 3000]
    assert frame["condition"].tolist() == ["base", "base", "code-s1", "solo"]
    assert varying_columns(frame) == ["stages.0.mix.code.exec.tokens"]
    d = differences(frame, "base-s2")  # a run name selects its condition
    assert d["base"] == {} and d["code-s1"] == {"stages.0.mix.code.exec.tokens": (1000, 5000)}
    m = metrics_frame(runs, frame)
    assert set(m["run"]) == set(frame["run"]) and {
        "step",
        "loss",
        "tokens/code.exec",
        "condition",
    } <= set(m.columns)


def test_registry_errors(tmp_path):
    write_run(tmp_path, "a")
    with pytest.raises(AblateError, match="no such run directory"):
        load_runs([str(tmp_path / "nope")])
    os.makedirs(tmp_path / "junk")
    with pytest.raises(AblateError, match="not a run directory"):
        load_runs([str(tmp_path / "junk")])
    assert [r.name for r in load_runs(str(tmp_path / "*"))] == ["a"]  # a glob skips non-runs
    with pytest.raises(AblateError, match="matches no run directory"):
        load_runs([str(tmp_path / "zz*")])
    write_run(tmp_path / "copy", "a")
    with pytest.raises(AblateError, match="two runs are named 'a'"):
        load_runs([str(tmp_path / "a"), str(tmp_path / "copy" / "a")])
    with open(tmp_path / "a" / "metrics.jsonl", "a") as f:
        f.write("{broken\n")
    with pytest.raises(AblateError, match=r"metrics.jsonl:\d+: not a JSON object"):
        load_runs([str(tmp_path / "a")])[0].metrics()


# ------------------------------------------------------------------ capability comparison


def score_runs(tmp_path, values, seeds=(1, 2)):
    """``values``: {condition: [bpb per seed]}; accuracy = 1 - bpb / 10."""
    for cond, per_seed in values.items():
        for seed, v in zip(seeds, per_seed):
            write_run(
                tmp_path,
                f"{cond}-s{seed}",
                seed=seed,
                stages=mix({"base": "1K", "code": "5K", "more": "9K"}[cond]),
                scores={
                    "bpb": {"bpb/math.text": v},
                    "probes": {"accuracy/math_answer": 1 - v / 10},
                    "routing": {"tokens": 100.0, "tokens/math.text": 50.0},
                },
                domain_tokens={
                    d: 1024 + (4096 if cond != "base" and d == "code.exec" else 0) for d in DOMAINS
                },
            )
    runs = load_runs([str(tmp_path / "*")])
    frame = runs_frame(runs)
    return runs, frame, cap.scores_frame(runs, frame)


def test_scores_are_tidy_and_bookkeeping_is_not_a_score(tmp_path):
    _, _, scores = score_runs(tmp_path, {"base": [1.0, 1.2]})
    assert sorted(set(scores["score"])) == ["bpb/math.text", "probes/accuracy/math_answer"]
    row = scores[(scores["run"] == "base-s2") & (scores["score"] == "bpb/math.text")].iloc[0]
    joined = join_recipe(
        scores, runs_frame(load_runs([str(tmp_path / "*")])), ["model.num_experts"]
    )
    assert len(joined) == len(scores) and (joined["model.num_experts"] == 4).all()
    assert row["value"] == 1.2 and row["seed"] == 2 and row["step"] == 9 and row["lower_is_better"]
    assert not scores[scores["score"] == "probes/accuracy/math_answer"]["lower_is_better"].any()


def test_paired_delta_bootstrap_and_t_intervals(tmp_path):
    _, _, scores = score_runs(tmp_path, {"base": [1.0, 1.2], "code": [0.8, 0.9]})
    c = cap.compare(scores, "base")
    r = c[c["score"] == "bpb/math.text"].iloc[0]
    assert (
        r["paired"]
        and r["delta"] == pytest.approx(-0.25)
        and r["per_seed"] == pytest.approx({1: -0.2, 2: -0.3})
    )
    # paired diffs {-0.2, -0.3}: bootstrap means are -0.2, -0.25 or -0.3, so the 95% interval
    # is [-0.3, -0.2]
    assert (r["lo"], r["hi"]) == pytest.approx((-0.3, -0.2))
    # within_noise is a bool (numpy's when the column has no None): test its truth, not identity;
    # verdict "better" already rules out None (no interval)
    assert (
        not r["within_noise"] and r["verdict"] == "better" and r["benefit"] == pytest.approx(0.25)
    )
    acc = c[c["score"] == "probes/accuracy/math_answer"].iloc[0]
    assert acc["delta"] == pytest.approx(0.025) and acc["verdict"] == "better"  # higher is better
    t = cap.compare(scores, "base", method="t")
    r = t[t["score"] == "bpb/math.text"].iloc[0]
    # mean -0.25, sd 0.0707, se 0.05, t(0.975, 1 df) = 12.706: [-0.885, 0.385] contains 0
    assert (r["lo"], r["hi"]) == pytest.approx(
        (-0.25 - 12.7062 * 0.05, -0.25 + 12.7062 * 0.05), abs=1e-3
    )
    assert r["within_noise"] and r["verdict"] == "noise"
    table = cap.capability_table(c)
    assert table.loc["bpb/math.text", "code"] == pytest.approx(-0.25)


def test_unpaired_one_seed_noise_and_mismatched_eval(tmp_path):
    _, frame, scores = score_runs(
        tmp_path,
        {"base": [1.0, 1.02, 0.98], "code": [1.01, 0.99, 1.0], "more": [0.5]},
        seeds=(1, 2, 3),
    )
    c = cap.compare(scores, "base")
    code = c[(c["condition"] == "code") & (c["score"] == "bpb/math.text")].iloc[0]
    assert code["paired"] and code["within_noise"] and code["verdict"] == "noise"
    more = c[(c["condition"] == "more-s1") & (c["score"] == "bpb/math.text")].iloc[0]
    assert (
        not more["paired"] and more["n"] == 1 and more["n_control"] == 3
    )  # only the control's spread
    assert more["verdict"] == "better" and more["lo"] <= more["delta"] <= more["hi"]
    one = cap.compare(scores[scores["seed"] == 1], "base")
    assert set(one["verdict"]) == {"1 seed"} and one["lo"].isna().all()
    write_scores(
        str(tmp_path / "code-s2"),
        "code-s2",
        9,
        {"bpb": {"bpb/math.text": 0.1}},
        fingerprint="other",
    )
    runs = load_runs([str(tmp_path / "*")])
    c = cap.compare(cap.scores_frame(runs), "base")
    assert any("code-s2 bpb/math.text" in e and "fingerprint" in e for e in c.attrs["excluded"])
    assert c[(c["condition"] == "code") & (c["score"] == "bpb/math.text")].iloc[0]["n"] == 2
    with pytest.raises(AblateError, match="control 'nope' has no eval scores"):
        cap.compare(scores, "nope")


def test_interaction_table_names_the_data_change(tmp_path):
    runs, frame, scores = score_runs(tmp_path, {"base": [1.0, 1.2], "code": [0.8, 0.9]})
    changes = cap.data_changes(runs, frame, "base")
    assert changes["base"] == {} and changes["code"] == {"code.exec": 4096.0}
    benefit, verdict = cap.interaction_table(cap.compare(scores, "base"), changes)
    assert benefit.index.tolist() == ["+code.exec"]
    assert benefit.loc["+code.exec", "bpb/math.text"] == pytest.approx(0.25)
    assert verdict.loc["+code.exec", "bpb/math.text"] == "better"


# ------------------------------------------------------------------ plots and the report on fakes


def png_ok(data: bytes, min_colors: int = 8):
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150
    pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) >= min_colors, "a blank image"
    assert pixels.std() > 5
    return im


def test_every_plot_renders_a_real_image(tmp_path):
    from ablate.analysis import eval_routing as er
    from ablate.analysis import plots
    from ablate.analysis import routing_metrics as rm
    from ablate.analysis.report import figure_png

    runs, frame, scores = score_runs(tmp_path, {"base": [1.0, 1.2], "code": [0.8, 0.9]})
    path = write_run(tmp_path, "ev", seed=5, eval_steps=(3, 6, 9))
    run = load_runs([path])[0]
    log = run.routing()
    count, ntok = log.total()
    p = rm.routing_distribution(count, ntok, 2)
    figs = [
        plots.plot_training_curves(run.metrics(), "t"),
        plots.plot_loss_overlay(metrics_frame(runs, frame)),
        plots.plot_capability_bars(cap.compare(scores, "base")),
        plots.plot_expert_heatmaps(rm.specialization(count, ntok), log.domains, "h", k=2),
        plots.plot_js_pair(rm.js_matrix(p), rm.js_matrix(p[:, ::-1]), log.domains, ("a", "b")),
        plots.plot_specialization_over_training(log.metrics(), "s"),
        plots.plot_coactivation(
            rm.coactivation_conditional(rm.coactivation(run.eval_routing().topk_TKL, 4))
        ),
        plots.plot_saturation(er.saturation_frame(run)),
    ]
    for fig in figs:
        png_ok(figure_png(fig))
    sat = er.saturation_frame(run)
    assert (
        sat[(sat["step"] == 9)]["saturation"].eq(1).all()
        and sat[sat["step"] == 3]["saturation"].lt(1).any()
    )


def report_images(html_text: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)
    ]


def test_report_on_synthetic_runs(tmp_path, cli):
    score_runs(tmp_path, {"base": [1.0, 1.2], "code": [0.8, 0.9]})
    for name in ("base-s1", "code-s1"):  # eval routing at two checkpoints for two of them
        write_run(
            tmp_path,
            name,
            seed=1,
            stages=mix("1K" if name.startswith("base") else "5K"),
            scores={"bpb": {"bpb/math.text": 1.0 if name.startswith("base") else 0.8}},
            eval_steps=(3, 9),
        )
    out = tmp_path / "report.html"
    r = cli(
        "report", *sorted(str(p) for p in tmp_path.glob("*-s*")), "--control", "base", "-o", out
    )
    assert r.rc == 0, r.err
    text = out.read_text()
    for heading in (
        "Capability × recipe",
        "Data change × capability",
        "Numbering-free comparison",
        "Shared / only-a / only-b",
        "Router saturation",
        "Vocabulary specialization",
    ):
        assert heading in text, heading
    assert "http" not in text.replace("http-equiv", "")  # self-contained: nothing fetched
    images = report_images(text)
    assert len(images) >= 10
    for data in images:
        png_ok(data)


# ------------------------------------------------------------------ bad input: one line, exit 2


def test_report_errors_are_one_line(tmp_path, cli):
    a = write_run(tmp_path, "a", seed=1)
    b = write_run(tmp_path, "b", seed=2, stages=mix("5K"))
    out = tmp_path / "r.html"
    assert_one_line_error(
        cli("report", a, b, "--control", "zzz", "-o", out),
        "control 'zzz' is not among the runs",
        "a, b",
    )
    os.remove(os.path.join(b, "metrics.jsonl"))
    assert_one_line_error(
        cli("report", a, b, "--control", "a", "-o", out), "metrics.jsonl: missing"
    )
    assert_one_line_error(
        cli("report", a, str(tmp_path / "missing"), "--control", "a", "-o", out),
        "no such run directory",
    )
    os.makedirs(tmp_path / "norecipe")
    assert_one_line_error(
        cli("report", a, str(tmp_path / "norecipe"), "--control", "a", "-o", out), "no recipe.yaml"
    )
    other = write_run(
        tmp_path,
        "other",
        seed=3,
        domains=["web", "books"],
        stages=[{"name": "m", "mix": {"web": "1K"}}],
    )
    assert_one_line_error(
        cli("report", a, other, "--control", "a", "-o", out),
        "routed different domains",
        "different taxonomies",
    )
    deep = write_run(tmp_path, "deep", seed=4, L=3, stages=mix("2K"))
    assert_one_line_error(
        cli("report", a, deep, "--control", "a", "-o", out),
        "a has 2 MoE layers and deep has 3",
        "cannot be compared",
    )
    write_scores(a, "a", 9, {"bpb": {"bpb/general": 1.0}})
    with open(os.path.join(a, "eval", "step_9.json"), "w") as f:
        json.dump({"format": "something/else"}, f)
    assert_one_line_error(
        cli(
            "report",
            a,
            write_run(tmp_path, "c", seed=5, stages=mix("3K")),
            "--control",
            "a",
            "-o",
            out,
        ),
        "not an eval result",
    )
    assert not out.exists()
