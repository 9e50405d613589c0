"""``analysis/mixture.ipynb`` runs top to bottom on a synthetic swarm and shows its figures."""

from __future__ import annotations

import os

import numpy as np

from mix_fakes import loglinear_law, write_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mixture_notebook_runs(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    domains = ["code.exec", "general", "math.structured", "math.text"]
    b = np.array([0.05, 0.1, 0.15, 0.2])
    write_sweep(
        tmp_path / "runs",
        domains,
        lambda W: loglinear_law(W, 1.0, b, np.zeros((4, 4))),
        n_mix=24,
        repeats=4,
        metrics=("y", "z"),
    )
    monkeypatch.setenv("ABLATE_RUNS", str(tmp_path / "runs" / "*"))
    monkeypatch.setenv("ABLATE_TARGETS", "mixlaw/y,mixlaw/z")
    monkeypatch.setenv("ABLATE_OBJECTIVE", "'mixlaw/y' - 0.5*'mixlaw/z'")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(os.path.join(REPO, "analysis", "mixture.ipynb"), as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit notebooks without outputs"
    )
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 2
    text = "".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in outputs)
    assert "predicted objective:" in text and "mix000-s1" in text
