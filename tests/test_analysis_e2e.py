"""End to end on real toy-world runs: three tiny trainings (two seeds of a control, one variant
from the control's initialisation), scored by ``ablate eval`` at two checkpoints, then
``ablate report`` (figures decoded, page rendered in headless Chromium) and the notebooks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import link_toyworld
from test_analysis_runs import png_ok, report_images
from test_train import launch, write

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {  # name: (seed, recipe changes)
    "ctrl-s1": (7, {}),
    "ctrl-s2": (8, {}),
    # same initialisation as ctrl-s1; the second stage trades math tokens for general ones
    "general-s1": (
        7,
        {
            "stages": [
                {"name": "code", "mix": {"code": {"tokens": "4K"}}},
                {"name": "math", "mix": {"math": {"tokens": "2K"}, "general": {"tokens": "2K"}}},
            ]
        },
    ),
}


def _wait_all(procs, what):
    for name, p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{what} {name}: {err[-3000:]}"


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory, toyworld_root):
    root = tmp_path_factory.mktemp("analysis_e2e")
    link_toyworld(toyworld_root, root)
    procs = []
    for name, (seed, changes) in RUNS.items():
        procs.append((name, launch(root, write(root, name, seed=seed, **changes))))
    _wait_all(procs, "training")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        (
            name,
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ablate.cli",
                    "eval",
                    f"runs/{name}",
                    "--tasks",
                    "probes,routing",
                    "--step",
                    "8,16",
                    "--limit",
                    "4",
                ],
                cwd=root,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
        )
        for name in RUNS
    ]
    _wait_all(procs, "eval")
    return root


def run_paths(root):
    return [str(root / "runs" / name) for name in RUNS]


@pytest.fixture(scope="module")
def report(toy_runs):
    from ablate.cli import main

    out = toy_runs / "report.html"
    assert main(["report", *run_paths(toy_runs), "--control", "ctrl", "-o", str(out)]) == 0
    return out


def test_report_on_toy_world_runs(report):
    text = report.read_text()
    # the seeds form one condition; the variant differs in its second stage's mix
    assert "ctrl (n=2)" in text and "general-s1 (n=1)" in text
    assert (
        "stages.1.mix.general.tokens" in text and "+general" in text
    )  # recipe diff and data change
    assert "probes/gold_bpb/math_answer" in text and "routing/tokens" not in text
    assert "Runs from the control" in text  # general-s1 shares ctrl-s1's initialisation: aligned
    for section in ("Router saturation", "Vocabulary specialization", "Numbering-free comparison"):
        assert section in text
    images = report_images(text)
    assert "Verdicts after correction" in text and "Learning curves" in text
    # bars, verdict bars (raw and adjusted intervals), learning curves (two evaluated steps),
    # loss, 2 x curves, 2 x (heatmaps, over training), JS pair, saturation, co-activation
    assert len(images) == 13
    for data in images:
        png_ok(data)


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    out = report
    shot = tmp_path / "shot.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1400,3000",
        f"file://{out}",
    ]
    subprocess.run(cmd, capture_output=True, timeout=120)
    assert shot.exists(), "chromium wrote no screenshot"
    im = png_ok(shot.read_bytes(), min_colors=50)
    assert im.size == (1400, 3000)
    pixels = np.asarray(im.convert("L"))
    # not a blank or error page: the top holds text and tables, further down the figures
    assert (pixels[:600] < 128).mean() > 0.01 and (pixels[1200:] < 250).mean() > 0.05
    if os.environ.get("ABLATE_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["ABLATE_KEEP_SCREENSHOT"])


@pytest.mark.parametrize("notebook", ["routing", "capability"])
def test_notebook_runs_top_to_bottom(toy_runs, notebook, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("ABLATE_RUNS", " ".join(run_paths(toy_runs)))
    monkeypatch.setenv("ABLATE_CONTROL", "ctrl")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(os.path.join(REPO, "analysis", f"{notebook}.ipynb"), as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit notebooks without outputs"
    )
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(toy_runs)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4
    text = "".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in outputs)
    assert "ctrl-s1" in text and "general-s1" in text


def test_store_of_a_real_run_matches_its_flush_files(toy_runs):
    from ablate.analysis import load_runs

    run = load_runs([str(toy_runs / "runs" / "ctrl-s1")])[0]
    log = run.routing()
    count, ntok = log.total()
    assert log.num_layers == 2 and log.num_experts == 4 and (count.sum(-1) == run.k * ntok).all()
    total = sum(
        np.load(p)["count"]
        for p in sorted((toy_runs / "runs" / "ctrl-s1" / "routing").glob("step_*.npz"))
    )
    assert (count == total).all()
    ev = run.eval_routing()
    assert ev.step == 16 and ev.topk_TKL.shape[1:] == (2, 2) and ev.domains == log.domains
