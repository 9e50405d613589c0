"""The README's two commands are the ones CI and newcomers run; keep them true."""

import os
import re

import yaml

from ablate.data.corpora import load_corpora_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands() -> list[str]:
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_ci_runs_the_readme_test_command_verbatim():
    main, tests = readme_commands()
    assert "pytest" in tests and "ablate" in main
    ci = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
    assert tests in ci.splitlines()


def test_every_corpora_yaml_in_recipes_loads():
    folder = os.path.join(REPO, "recipes", "corpora")
    paths = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".yaml")]
    assert paths
    for path in paths:
        spec = load_corpora_spec(path)
        assert spec.sources, path
        yaml.safe_load(open(path))
