"""``ablate mix fit`` / ``propose`` refusals: one line each, exit 2, nothing written; the CLI's
happy path end to end; and a proposal that ``ablate compile`` takes as is (toy world)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

from conftest import assert_refused, link_toyworld
from mix_fakes import loglinear_law, write_mix_run, write_sweep

DOMAINS = ["code.exec", "general", "math.structured", "math.text"]
B = np.array([0.05, 0.10, 0.15, 0.20])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A fitted sweep through the CLI: runs/, fit/ and the root."""
    from ablate.cli import main

    root = tmp_path_factory.mktemp("mixcli")
    held = {d: 5_120_000 for d in DOMAINS}
    held["math.text"] = 51_200  # at 4 epochs: at most 40 % of the 512K stage
    write_sweep(
        root / "runs",
        DOMAINS,
        lambda W: loglinear_law(W, 1.0, B, np.zeros((4, 4))),
        n_mix=30,
        repeats=4,
        held=held,
        metrics=("y", "z"),
    )
    rc = main(
        [
            "mix",
            "fit",
            str(root / "runs" / "*"),
            "--target",
            "mixlaw/y,mixlaw/z",
            "-o",
            str(root / "fit"),
            "--models",
            "loglinear,gp",
            "--interactions",
            "off",
        ]
    )
    assert rc == 0
    return root


def test_cli_fit_and_propose(sweep, capsys):
    from ablate.cli import main

    capsys.readouterr()
    assert sorted(os.listdir(sweep / "fit")) == ["fit.html", "fit.json", "models"]
    assert sorted(os.listdir(sweep / "fit" / "models")) == ["gp.pkl", "loglinear.pkl"]
    rc = main(
        [
            "mix",
            "propose",
            str(sweep / "fit"),
            "--objective",
            "'mixlaw/y' - 0.5*('mixlaw/z')",
            "--pin",
            "general=0.1",
            "-o",
            str(sweep / "p.yaml"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "predicted objective:" in out and "+-" in out and "general" in out
    recipe = yaml.safe_load(open(sweep / "p.yaml"))
    assert recipe["stages"][0]["mix"]["general"]["tokens"] == 51_200
    assert [line for line in os.listdir(sweep) if ".tmp" in line] == []


def _argv_fit(root, *extra, target="mixlaw/y", out=None, runs="*"):
    return [
        "mix",
        "fit",
        str(root / "runs" / runs),
        "--target",
        target,
        "-o",
        str(out or root / "newfit"),
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, target, fragments",
    [
        ((), "mixlaw/yy", ("--target: no run has a score 'mixlaw/yy'", "(scores: mixlaw/y,")),
        ((), "bpb/math.text", ("no run has a score 'bpb/math.text'",)),
        (("--models", "loglinear,svm"), "mixlaw/y", ("--models: 'svm' is not a model",)),
        (("--folds", "1"), "mixlaw/y", ("--folds: 1",)),
        (
            ("--interactions", "on", "--models", "loglinear"),
            "mixlaw/y",
            ("loglinear needs at least 15 runs", "11 parameters", "got 9"),
        ),
        (("--stage", "warmup"), "mixlaw/y", ("--stage: 'warmup' is not a stage", "main")),
    ],
)
def test_fit_refusals(sweep, extra, target, fragments, capsys):
    runs = "mix00[0-4]*" if "--interactions" in extra else "*"  # 5 mixtures, 9 runs
    assert_refused(
        _argv_fit(sweep, *extra, target=target, runs=runs),
        *fragments,
        watch=[sweep],
        capsys=capsys,
    )


def test_fit_refuses_existing_dir_and_runs_that_differ_elsewhere(sweep, tmp_path, capsys):
    assert_refused(
        _argv_fit(sweep, out=sweep / "fit"),
        "fit: already exists",
        "--overwrite",
        watch=[sweep],
        capsys=capsys,
    )
    # two runs that differ in the model as well as the mix
    for i, hidden in enumerate((64, 128)):
        write_mix_run(
            tmp_path / "runs",
            f"r{i}",
            1,
            {"general": 0.5 + 0.1 * i, "math.text": 0.5 - 0.1 * i},
            {"y": 1.0},
            recipe_over={"model": {"hidden_size": hidden}},
        )
    assert_refused(
        [
            "mix",
            "fit",
            str(tmp_path / "runs" / "*"),
            "--target",
            "mixlaw/y",
            "-o",
            str(tmp_path / "fit"),
        ],
        "runs differ in model.hidden_size (r0: 64, r1: 128)",
        watch=[tmp_path],
        capsys=capsys,
    )


def test_fit_refuses_too_few_runs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(6):
        w = rng.dirichlet(np.ones(3))
        write_mix_run(tmp_path / "runs", f"m{i}", 1, dict(zip(DOMAINS[:3], w)), {"y": float(i)})
    line = assert_refused(
        [
            "mix",
            "fit",
            str(tmp_path / "runs" / "*"),
            "--target",
            "mixlaw/y",
            "-o",
            str(tmp_path / "fit"),
            "--models",
            "gp",
        ],
        "gp needs at least 10 runs",
        "got 6",
        watch=[tmp_path],
        capsys=capsys,
    )
    assert "5 folds" in line


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (("--objective", "2*'mixlaw/y' +"), ("--objective: column", "does not parse")),
        (
            ("--objective", "'mixlaw/q'"),
            ("column 1", "'mixlaw/q' is not a fitted metric", "mixlaw/"),
        ),
        (("--objective", "'mixlaw/y'*'mixlaw/z'"), ("a product of two metrics",)),
        (("--objective", "'mixlaw/y' / 2"), ("column 1", "operator Div is not allowed")),
        (("--objective", "__import__('os')"), ("Call is not allowed",)),
        (
            ("--objective", "'mixlaw/y'", "--pin", "math.text=0.5"),
            ("--pin: math.text=0.5 is above its repetition cap", "a share of 0.3998"),
        ),
        (
            ("--objective", "'mixlaw/y'", "--pin", "general=0.7", "--pin", "code.exec=0.6"),
            ("--pin: the pinned shares sum to 1.3",),
        ),
        (
            ("--objective", "'mixlaw/y'", "--pin", "maths=0.1"),
            ("--pin: 'maths' is not a domain of the fit",),
        ),
        (("--objective", "'mixlaw/y'", "--pin", "general"), ("--pin: 'general'",)),
        (("--objective", "'mixlaw/y'", "--kl", "-1"), ("--kl: -1",)),
        (("--objective", "'mixlaw/y'", "--prior", "nowhere.yaml"), ("nowhere.yaml",)),
    ],
)
def test_propose_refusals(sweep, extra, fragments, capsys):
    assert_refused(
        ["mix", "propose", str(sweep / "fit"), *extra, "-o", str(sweep / "r.yaml")],
        *fragments,
        watch=[sweep],
        capsys=capsys,
    )


def test_propose_refuses_a_missing_fit_and_an_existing_recipe(sweep, capsys):
    assert_refused(
        [
            "mix",
            "propose",
            str(sweep / "nofit"),
            "--objective",
            "'mixlaw/y'",
            "-o",
            str(sweep / "r.yaml"),
        ],
        "no such fit directory",
        watch=[sweep],
        capsys=capsys,
    )
    (sweep / "exists.yaml").write_text("x: 1\n")
    assert_refused(
        [
            "mix",
            "propose",
            str(sweep / "fit"),
            "--objective",
            "'mixlaw/y'",
            "-o",
            str(sweep / "exists.yaml"),
        ],
        "already exists",
        watch=[sweep],
        capsys=capsys,
    )


def test_proposal_compiles_on_the_toy_world(toyworld_root, tmp_path, monkeypatch, cli):
    """Runs planned by the real budget arithmetic over the toy world; the proposal compiles."""
    from ablate.recipe.plan import make_plan
    from ablate.recipe.schema import parse_recipe
    from mix_fakes import SEQ, resolved

    link_toyworld(toyworld_root, tmp_path)
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    stage = 96 * SEQ * 8  # 96 steps
    for i in range(10):
        w = 0.05 + 0.8 * rng.dirichlet(np.ones(4))
        seqs = np.floor(w / w.sum() * stage / SEQ).astype(int)
        mix = {d: {"tokens": int(n) * SEQ, "max_epochs": 2} for d, n in zip(DOMAINS, seqs)}
        raw = resolved(f"t{i}", 1, mix)
        plan = make_plan(parse_recipe(raw, "t.yaml"), verify=False, save_memo=False)
        path = tmp_path / "runs" / f"t{i}"
        shares = {
            d: t["tokens_realized"] for d, t in plan.to_dict()["stages"][0]["domains"].items()
        }
        total = sum(shares.values())
        y = float(
            loglinear_law(np.array([[shares[d] / total for d in DOMAINS]]), 0, B, np.zeros((4, 4)))[
                0
            ]
        )
        write_mix_run(
            tmp_path / "runs", f"t{i}", 1, {d: shares[d] / total for d in DOMAINS}, {"y": y}
        )
        # the real plan and recipe replace the fake ones
        (path / "plan.json").write_text(plan.to_json())
        (path / "recipe.yaml").write_text(yaml.safe_dump(parse_recipe(raw, "t").to_dict()))
    r = cli(
        "mix",
        "fit",
        "runs/*",
        "--target",
        "mixlaw/y",
        "-o",
        "fit",
        "--models",
        "loglinear",
        "--interactions",
        "off",
    )
    assert r.rc == 0, r.err
    r = cli(
        "mix",
        "propose",
        "fit",
        "--objective",
        "'mixlaw/y'",
        "-o",
        "proposal.yaml",
        "--name",
        "proposal",
    )
    assert r.rc == 0, r.err
    r = cli("compile", "--dry-run", "proposal.yaml")
    assert r.rc == 0, r.err
    assert "code.exec" in r.out


def test_help_stays_light():
    """``ablate --help`` and ``ablate mix fit --help`` load neither pandas nor scikit-learn."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom ablate.cli import main\n"
        "for argv in (['--help'], ['mix', 'fit', '--help'], ['mix', 'propose', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('pandas', 'sklearn', 'lightgbm', 'scipy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--objective EXPR" in r.stdout and "--target METRIC[,METRIC]" in r.stdout
