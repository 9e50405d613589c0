"""Tables of the toy-world study (``launchers/toy_world_study.sh``), from its run directories.

    python launchers/toy_world_summary.py            # -> docs/study/summary.md

For each design: every score's seed mean per condition, its delta against the design's control
with a 95% t interval over the paired seeds, and the verdict (``better`` / ``worse`` when the
interval excludes 0, else ``noise``); then, for every run, the per-domain tokens it trained on
(``tokens/<domain>`` of its last ``metrics.jsonl`` row) against its plan. Everything comes from
``ablate.analysis`` and the run directories; nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import ablate.analysis as A
from ablate.run_layout import RunLayout, domain_of_tokens_key

# design -> its controls: DeepSeekMath's two-stage designs are compared with math only and with
# the general-then-math control (same total tokens)
DESIGNS = {
    "dsm": ["dsm-math-only", "dsm-general-then-math"],
    "density": ["density-0.00"],
    "code": ["code-code-nl"],
    "mathcode": ["mathcode-none"],
}


def plan_tokens(run_dir: str) -> dict[str, int]:
    with open(RunLayout(run_dir).plan) as f:
        plan = json.load(f)
    totals: dict[str, int] = {}
    for stage in plan["stages"]:
        for domain, t in stage["domains"].items():
            totals[domain] = totals.get(domain, 0) + t["tokens_realized"]
    return totals


def trained_tokens(run_dir: str) -> dict[str, int]:
    last = None
    with open(RunLayout(run_dir).metrics) as f:
        for line in f:
            last = json.loads(line)
    return {
        domain_of_tokens_key(k): int(v)
        for k, v in (last or {}).items()
        if domain_of_tokens_key(k) and v
    }


def fmt(x: float) -> str:
    return f"{x:+.3f}" if abs(x) < 100 else f"{x:+.0f}"


def comparison_table(frame, scores, control: str) -> tuple[list[str], int]:
    cmp = A.compare(scores, control=control, method="t")
    conditions = [c for c in dict.fromkeys(frame["condition"]) if c != control]
    out = [
        f"### against {control}",
        "",
        "| score | " + f"{control} (control) | " + " | ".join(conditions) + " |",
        "|---|---|" + "---|" * len(conditions),
    ]
    outside = 0
    for score in dict.fromkeys(cmp["score"]):
        rows = cmp[cmp["score"] == score]
        cells = []
        for c in conditions:
            r = rows[rows["condition"] == c]
            if r.empty:
                cells.append("")
                continue
            r = r.iloc[0]
            mark = {"better": " **better**", "worse": " **worse**"}.get(r["verdict"], "")
            outside += r["verdict"] in ("better", "worse")
            cells.append(
                f"{r['mean']:.3f} ({fmt(r['delta'])} [{fmt(r['lo'])}, {fmt(r['hi'])}]){mark}"
            )
        out.append(f"| {score} | {rows['control_mean'].iloc[0]:.3f} | " + " | ".join(cells) + " |")
    return out + [""], outside


def design_section(design: str, controls: list[str], root: str) -> tuple[list[str], int, int]:
    runs = A.load_runs(os.path.join(root, design, "*"))
    frame = A.runs_frame(runs)
    scores = A.scores_frame(runs, frame)
    out = [f"## {design} ({len(runs)} runs)", ""]
    outside = 0
    for control in controls:
        table, n = comparison_table(frame, scores, control)
        out += table
        outside += n
    out += [
        "Tokens trained per domain (last metrics row) against the plan:",
        "",
        "| run | tokens per domain | equal to plan |",
        "|---|---|---|",
    ]
    equal = 0
    for r in runs:
        planned, trained = plan_tokens(r.path), trained_tokens(r.path)
        same = planned == trained
        equal += same
        shown = ", ".join(f"{d} {t:,}" for d, t in sorted(trained.items()))
        out.append(f"| {r.name} | {shown} | {'yes' if same else 'NO: plan ' + str(planned)} |")
    out.append("")
    return out, outside, equal


# domain pairs whose experts the study asks about: competition (exclusive) or synergy (shared)
ROUTING_PAIRS = {
    "dsm": [("code.exec", "math.structured"), ("code.nl", "math.structured")],
    "density": [("math.structured", "math.text"), ("math.structured", "code.exec")],
    "code": [("code.exec", "math.structured"), ("code.nl", "math.structured")],
    "mathcode": [("math.code", "math.structured")],
}


def routing_section(design: str, root: str) -> list[str]:
    """Per condition and domain pair, over the whole run's training-time routing: the JS
    divergence of the two domains' routing distributions (mean over layers) and the experts
    with lift > 1.5 for both (shared) or for one only, summed over layers; seed means."""
    import numpy as np

    from ablate.analysis import routing_metrics as rm
    from ablate.analysis.routing_compare import shared_exclusive_frame

    runs = A.load_runs(os.path.join(root, design, "*"))
    frame = A.runs_frame(runs)
    condition = dict(zip(frame["run"], frame["condition"]))
    values: dict[tuple[str, str], list] = {}
    for r in runs:
        log = r.routing()
        count_LDE, ntok_LD = log.total()
        domains = list(log.domains)
        js_LDD = rm.js_matrix(rm.routing_distribution(count_LDE, ntok_LD, log.k))
        for a, b in ROUTING_PAIRS.get(design, []):
            if a in domains and b in domains:
                i, j = domains.index(a), domains.index(b)
                se = shared_exclusive_frame(count_LDE, ntok_LD, log.k, domains, pairs=[(i, j)])
                values.setdefault((condition[r.name], f"{a} / {b}"), []).append(
                    (
                        js_LDD[:, i, j].mean(),
                        se["shared"].sum(),
                        se["only_a"].sum(),
                        se["only_b"].sum(),
                    )
                )
    out = [
        f"### routing: {design}",
        "",
        "| condition | domains a / b | JS(a, b), layer mean (sd over seeds) "
        "| shared experts | only a / only b |",
        "|---|---|---|---|---|",
    ]
    for (cond, pair), rows in values.items():
        v = np.array(rows, dtype=float)
        sd = v[:, 0].std(ddof=1) if len(v) > 1 else 0.0
        out.append(
            f"| {cond} | {pair} | {v[:, 0].mean():.3f} ({sd:.3f}) | {v[:, 1].mean():.1f} | "
            f"{v[:, 2].mean():.1f} / {v[:, 3].mean():.1f} |"
        )
    return out + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--runs", default="runs", help="where the study's sweeps put their run directories"
    )
    ap.add_argument("-o", "--out", default="docs/study/summary.md")
    ap.add_argument("--designs", default=",".join(DESIGNS))
    args = ap.parse_args()
    lines = [
        "# Toy-world study: generated tables",
        "",
        "Each cell: seed mean (delta vs control [95% t interval over paired seeds]); "
        "**better** / **worse**",
        "when the interval excludes 0 (bits per byte: lower is better; accuracy: higher).",
        "",
    ]
    for design in args.designs.split(","):
        section, outside, equal = design_section(design, DESIGNS[design], args.runs)
        lines += section + routing_section(design, args.runs)
        print(
            f"{design}: {outside} score deltas outside seed noise; "
            f"{equal} runs trained exactly their plan's tokens",
            file=sys.stderr,
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
