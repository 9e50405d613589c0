"""``--probes NAMES`` (``cadence.eval_options.probes``): the probes task scores only the named
probe files, so evaluation inside training can follow one capability cheaply; an unknown name
is one line listing the files the run's data has."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

from conftest import link_toyworld


def _eval(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "ablate.cli", "eval", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_probe_subset(tmp_path, tmp_path_factory, toyworld_root):
    from eval_run import NAME, trained_run

    trained = trained_run(tmp_path_factory, toyworld_root)
    shutil.copytree(
        os.path.join(trained, "runs", NAME),
        tmp_path / "runs" / NAME,
        ignore=shutil.ignore_patterns("eval", "tensorboard"),
    )
    link_toyworld(toyworld_root, tmp_path)
    run = f"runs/{NAME}"
    r = _eval(tmp_path, run, "--tasks", "probes", "--probes", "fact_recall,program_output",
              "--limit", "3")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    evals = os.listdir(tmp_path / run / "eval")
    last = sorted(e for e in evals if re.fullmatch(r"step_\d+\.json", e))[-1]
    with open(tmp_path / run / "eval" / last) as f:
        metrics = json.load(f)["tasks"]["probes"]["metrics"]
    probes = {k.split("/", 1)[1] for k in metrics if k.startswith("accuracy/")}
    assert probes == {"fact_recall", "program_output"}
    r = _eval(tmp_path, run, "--tasks", "probes", "--probes", "nope", "--limit", "3")
    assert r.returncode == 2
    # (torch's own deprecation warnings from loading the checkpoint may precede it)
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "'nope' is not a probe file" in lines[0] and "math_answer" in lines[0], lines[0]
