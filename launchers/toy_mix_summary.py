"""The mixture-search study's two helper steps (``launchers/toy_mix_study.sh``).

    python launchers/toy_mix_summary.py pick   --swarm 'runs/swarm-toy/*' --objective EXPR --out DIR
    python launchers/toy_mix_summary.py report --swarm 'runs/swarm-toy/*' --objective EXPR --out DIR

``pick`` scores every swarm run on the objective (the same expression ``ablate mix propose``
maximised, evaluated on the run's own eval scores), picks the swarm's best and median points and
writes three confirmation sweeps beside the proposal: the proposal and those two points, each
with the swarm's seed plus two more (``DIR/confirm-{proposal,best,median}.yaml``).

``report`` reads the confirmation runs and writes ``DIR/summary.md`` and ``DIR/summary.json``:
the objective per arm and seed, the proposal's predicted score against its realised one, and
whether the proposal beats the best and the median points outside seed noise (paired t over the
three seeds, Holm over the two comparisons, ``ablate.analysis.stats``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np
import yaml

import ablate.analysis as A
from ablate.analysis import stats
from ablate.mix.objective import parse_objective

EXTRA_SEEDS = [1, 2]


def objective_values(runs, expr: str) -> dict[str, float]:
    """run name -> the objective on its latest eval scores."""
    scores = A.scores_frame(runs)
    table = scores.pivot_table(index="run", columns="score", values="value")
    terms, const = parse_objective(expr, list(table.columns))
    return {
        run: float(sum(c * row[m] for m, c in terms.items()) + const)
        for run, row in table.iterrows()
    }


def _sweep(path: str, name: str, base: str, seeds: list[int]) -> None:
    body = {
        "name": name,
        "base": base,
        "seeds": seeds,
        "point_name": f"{name}-s{{seed}}",
        "executor": "local",
        "eval": {"tasks": ["bpb", "probes"], "args": ["--bpb-tokens", "16384", "--limit", "100"]},
    }
    shown = os.path.relpath(path)
    head = (
        f"# {name}: confirmation runs of the mixture study (launchers/toy_mix_study.sh)\n"
        f"#   ablate sweep expand {shown} && ablate sweep submit {shown}\n"
    )
    with open(path + ".tmp", "w") as f:
        f.write(head + yaml.safe_dump(body, sort_keys=False))
    os.replace(path + ".tmp", path)


def pick(args) -> int:
    runs = A.load_runs([args.swarm])
    values = objective_values(runs, args.objective)
    ordered = sorted(values, key=values.get)
    best, median = ordered[-1], ordered[len(ordered) // 2]
    by_name = {r.name: r for r in runs}
    seed = by_name[best].seed
    seeds = [seed] + [s for s in EXTRA_SEEDS if s != seed]
    out = os.path.abspath(args.out)
    _sweep(os.path.join(out, "confirm-proposal.yaml"), "mix-proposal", "proposal.yaml", seeds)
    for arm, run in (("best", best), ("median", median)):
        # the swarm's own run is the first seed: only the others are trained again
        recipe = os.path.abspath(os.path.join(by_name[run].path, "recipe.yaml"))
        _sweep(os.path.join(out, f"confirm-{arm}.yaml"), f"mix-{arm}", recipe, seeds[1:])
    with open(os.path.join(out, "picked.json"), "w") as f:
        json.dump(
            {"best": best, "median": median, "seeds": seeds, "objective": values}, f, indent=1
        )
    print(f"swarm best {best} ({values[best]:.4f}), median {median} ({values[median]:.4f})")
    return 0


def _predicted(recipe: str) -> tuple[float, float]:
    with open(recipe) as f:
        m = re.search(r"# predicted ([-+0-9.eE]+) \+- ([-+0-9.eE]+)", f.read())
    return (float(m.group(1)), float(m.group(2))) if m else (float("nan"), float("nan"))


def report(args) -> int:
    out = os.path.abspath(args.out)
    with open(os.path.join(out, "picked.json")) as f:
        picked = json.load(f)
    swarm = A.load_runs([args.swarm])
    arms = {
        "proposal": A.load_runs([os.path.join(args.runs, "mix-proposal", "*")]),
        "best": [r for r in swarm if r.name == picked["best"]]
        + A.load_runs([os.path.join(args.runs, "mix-best", "*")]),
        "median": [r for r in swarm if r.name == picked["median"]]
        + A.load_runs([os.path.join(args.runs, "mix-median", "*")]),
    }
    values = {
        arm: {r.seed: objective_values([r], args.objective)[r.name] for r in runs}
        for arm, runs in arms.items()
    }
    seeds = picked["seeds"]
    for arm, v in values.items():
        if sorted(v) != sorted(seeds):
            print(f"error: {arm}: runs for seeds {sorted(v)}, expected {seeds}", file=sys.stderr)
            return 2
    prop = np.array([values["proposal"][s] for s in seeds])
    deltas = np.array(
        [[values["proposal"][s] - values[a][s] for s in seeds] for a in ("best", "median")]
    )
    test = stats.paired_t(deltas, labels=["proposal - best", "proposal - median"])
    corr = stats.correct_t(test, "holm")
    pred, pred_sd = _predicted(os.path.join(out, "proposal.yaml"))
    swarm_values = objective_values(swarm, args.objective)
    result = {
        "objective": args.objective,
        "seeds": seeds,
        "values": {a: {str(s): v[s] for s in seeds} for a, v in values.items()},
        "predicted": pred,
        "predicted_sd": pred_sd,
        "realised_mean": float(prop.mean()),
        "realised_sd": float(prop.std(ddof=1)),
        "swarm": {"n": len(swarm_values), "best": picked["best"], "median": picked["median"]},
        "comparisons": [
            {
                "vs": a,
                "delta": float(test.mean_K[i]),
                "lo": float(test.lo_K[i]),
                "hi": float(test.hi_K[i]),
                "p": float(test.p_K[i]),
                "p_holm": float(corr.p_adj_K[i]),
                "lo_adj": float(corr.lo_adj_K[i]),
                "hi_adj": float(corr.hi_adj_K[i]),
                "beats": bool(corr.reject_adj_K[i] and test.mean_K[i] > 0),
            }
            for i, a in enumerate(("best", "median"))
        ],
    }
    lines = [
        "# Mixture search on the toy world: generated summary",
        "",
        f"Objective (maximised): `{args.objective}`; seeds {seeds}.",
        "",
        f"Proposal: predicted {pred:.4f} ± {pred_sd:.4f} (1 sd of the fit), realised "
        f"{prop.mean():.4f} (sd over seeds {prop.std(ddof=1):.4f}).",
        "",
        "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for a, v in values.items():
        run = {"best": picked["best"], "median": picked["median"]}.get(a, "proposal")
        cells = " | ".join(f"{v[s]:.4f}" for s in seeds)
        lines.append(f"| {a} ({run}) | {cells} | {np.mean(list(v.values())):.4f} |")
    lines += [
        "",
        "| comparison | Δ objective | raw 95% CI | p | Holm-adjusted CI | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["comparisons"]:
        verdict = (
            "proposal better"
            if c["beats"]
            else ("proposal worse" if c["p_holm"] <= 0.05 else "within seed noise")
        )
        lines.append(
            f"| proposal − {c['vs']} | {c['delta']:+.4f} | [{c['lo']:+.4f}, {c['hi']:+.4f}] | "
            f"{c['p']:.3g} | [{c['lo_adj']:+.4f}, {c['hi_adj']:+.4f}] | {c['p_holm']:.3g} | "
            f"{verdict} |"
        )
    for path, text in (
        (os.path.join(out, "summary.md"), "\n".join(lines) + "\n"),
        (os.path.join(out, "summary.json"), json.dumps(result, indent=1)),
    ):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("pick", "report"))
    ap.add_argument("--swarm", default="runs/swarm-toy/*", help="the swarm's run directories")
    ap.add_argument("--runs", default="runs", help="where the confirmation sweeps put their runs")
    ap.add_argument("--objective", required=True)
    ap.add_argument("--out", required=True, help="the study directory (fit, proposal.yaml ...)")
    args = ap.parse_args(argv)
    return pick(args) if args.step == "pick" else report(args)


if __name__ == "__main__":
    sys.exit(main())
