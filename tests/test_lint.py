"""The linter's verdict is part of the test run (and of `.ci/run`): ruff, as configured in
ruff.toml (line length 100, pycodestyle + pyflakes), finds nothing, and every file is laid out
as `ruff format` lays it out. Under a second: ruff reads the whole tree in Rust."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    return [exe]


@pytest.mark.parametrize(
    "args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"]
)
def test_ruff_finds_nothing(args):
    r = subprocess.run(_ruff() + args, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]
