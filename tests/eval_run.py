"""A tiny trained run for ``ablate eval``'s refusal and fault tests, trained once per session.

Two steps of the tiny toy-world model (``test_train.TINY``, one 1K-token stage), with a
checkpoint after each: ``runs/evalfault`` under a session directory, the prepared toy world
linked in. Tests copy it (``copy_run``) before damaging anything.
"""

from __future__ import annotations

import os
import shutil

from conftest import link_toyworld
from test_train import run, write

NAME = "evalfault"
_TRAINED: dict[str, str] = {}


def trained_run(tmp_path_factory, toyworld_root) -> str:
    """The session's trained project root (``runs/evalfault``, ``data/toyworld``)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _TRAINED:
        root = tmp_path_factory.mktemp("evalfault")
        link_toyworld(toyworld_root, root)
        recipe = write(
            root,
            NAME,
            cadence__checkpoint_every=1,
            stages=[{"name": "code", "mix": {"code": {"tokens": "1K"}}}],
        )
        r = run(root, recipe)
        assert r.returncode == 0, r.stderr[-2000:]
        assert os.path.isdir(root / "runs" / NAME / "checkpoints" / "step_00000002"), os.listdir(
            root / "runs" / NAME / "checkpoints"
        )
        _TRAINED[key] = str(root)
    return _TRAINED[key]


def copy_run(root: str, here) -> str:
    """A private copy of the trained project under ``here``: the run directory copied (cheap: a
    tiny model), the toy world linked. Returns the new project root."""
    here = str(here)
    shutil.copytree(
        os.path.join(root, "runs", NAME),
        os.path.join(here, "runs", NAME),
        ignore=shutil.ignore_patterns("eval", "tensorboard"),
    )
    os.makedirs(os.path.join(here, "data"), exist_ok=True)
    os.symlink(
        os.path.realpath(os.path.join(root, "data", "toyworld")),
        os.path.join(here, "data", "toyworld"),
    )
    return here
