"""``ablate.faults.terminated_as_exception``: SIGTERM unwinds the block as ``Terminated``; one that
lands inside an import waits for the import to finish (raising there can cross a pybind11 frame,
torch's ``import torch.distributed``, and abort the process with a C++ trace instead); an object
whose ``__init__`` it cut short is destroyed without "Exception ignored in ..." on stderr."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ablate

ROOT = str(Path(ablate.__file__).parents[1])

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from ablate.faults import Terminated, terminated_as_exception

    try:
        with terminated_as_exception():
            {body}
            time.sleep(5)
        print("no signal")
    except Terminated as exc:
        print("terminated:", exc, "| module finished:", sys.modules.get("slow_mod") is not None
              and getattr(sys.modules["slow_mod"], "FINISHED", False))
    """
)

MODULE = textwrap.dedent(
    """
    import os, signal, time
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(20):  # bytecode runs here: an undeferred handler would raise now
        time.sleep(0.01)
    FINISHED = True
    """
)


# megatron-core's IndexedDataset: __init__ reads the index, __del__ deletes it
HALF_BUILT = textwrap.dedent(
    """
    import os, signal, time

    class Half:
        def __init__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            self.index = 1

        def __del__(self):
            del self.index
    """
)


def _run(tmp_path, body):
    (tmp_path / "slow_mod.py").write_text(MODULE)
    (tmp_path / "half_mod.py").write_text(HALF_BUILT)
    script = SCRIPT.replace("{body}", body)
    return subprocess.run(
        [sys.executable, "-c", script, ROOT],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            "os.kill(os.getpid(), signal.SIGTERM)",
            "terminated: signal SIGTERM | module finished: False",
        ),
        ("import slow_mod", "terminated: signal SIGTERM | module finished: True"),
        ("import half_mod; half_mod.Half()", "terminated: signal SIGTERM | module finished: False"),
    ],
    ids=["plain", "inside-an-import", "inside-an-init"],
)
def test_sigterm_unwinds_the_block_after_any_import_it_landed_in(tmp_path, body, expected):
    r = _run(tmp_path, body)
    assert r.returncode == 0 and r.stdout.strip() == expected, (r.stdout, r.stderr)
    assert r.stderr == "", r.stderr  # no "Exception ignored in ..." from a half-built object
