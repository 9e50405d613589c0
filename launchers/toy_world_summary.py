"""Tables and figures of the toy-world study (``launchers/toy_world_study.sh``), from its run
directories, with the statistics a reviewer asks for.

    python launchers/toy_world_summary.py      # -> docs/study/summary.md, docs/toy-world-results/

For each design, against each control:

* **primary verdicts** (one family, Holm): the capability *accuracies* and their learning-curve
  areas, each with its raw and adjusted interval and p side by side, the verdict before and
  after correction, the minimum detectable effect at the seeds used and the seeds the observed
  effect would need, and whether the direction is the paper's;
* **all verdicts** (one family, Benjamini-Hochberg): every score, likelihoods included;
* **A/A calibration**: the control against itself in another data order (the ``<design>-aa``
  sweep), every score: the observed false-positive rate of the verdicts above, raw and adjusted;
* **dose-response** where the design has a numeric axis (density);
* the per-domain tokens every run trained on, against its plan.

Figures (PNG, next to ``docs/toy-world-results.md``): verdict bars with raw and adjusted
intervals per design, learning curves where the runs evaluated during training, the density
dose-response. ``study.json`` holds the figures the results document quotes. Everything comes
from ``ablate.analysis`` and the run directories; nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

import ablate.analysis as A
from ablate.analysis import curves as cv
from ablate.analysis import plots
from ablate.analysis import verdicts as vd
from ablate.analysis.runs import seed_design
from ablate.analysis.report_html import figure_png
from ablate.errors import AblateError
from ablate.run_layout import RunLayout, domain_of_tokens_key

# design -> controls (the A/A runs repeat the first), the direction the papers report for each
# condition against a control (+1: better; 0: no claim), and a numeric axis when there is one
DESIGNS = {
    "dsm": {
        "controls": ["dsm-math-only", "dsm-general-then-math"],
        # DeepSeekMath: code before math helps math (vs general before math); math alone less
        "paper": {
            ("dsm-general-then-math", "dsm-code-then-math"): +1,
            ("dsm-general-then-math", "dsm-code-and-math"): +1,
            ("dsm-math-only", "dsm-code-then-math"): +1,
            ("dsm-math-only", "dsm-general-then-math"): +1,
            ("dsm-math-only", "dsm-code-and-math"): +1,
        },
    },
    "density": {
        "controls": ["density-0.00"],
        "paper": {
            ("density-0.00", c): +1 for c in ("density-0.25", "density-0.50", "density-1.00")
        },
        "dose": "stages.0.mix.math.density.math.structured",
    },
    # arXiv: standalone executable code is not a general reasoning enhancer: no claim of a gain
    "code": {"controls": ["code-code-nl"], "paper": {("code-code-nl", "code-code-exec"): 0}},
    "mathcode": {"controls": ["mathcode-none"], "paper": {("mathcode-none", "mathcode-with"): +1}},
}


def is_primary(score: str) -> bool:
    """The capability accuracies and their learning-curve areas: the family a claim rests on."""
    if score.startswith("curve/"):
        return score.startswith("curve/auc/") and "accuracy" in score
    return "accuracy" in score


def is_likelihood(score: str) -> bool:
    return "bpb" in score


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
    if x != x:
        return "–"
    return f"{x:+.3f}" if abs(x) < 100 else f"{x:+,.0f}"


def ci(lo: float, hi: float) -> str:
    return "" if lo != lo else f"[{fmt(lo)}, {fmt(hi)}]"


def direction(v_row, paper: dict, control: str) -> str:
    """The paper's direction, for math scores (the papers' claims are about math reasoning)."""
    if "math" not in v_row["score"]:
        return ""
    expected = paper.get((control, v_row["condition"]))
    if v_row["verdict_adj"] not in ("better", "worse") or expected is None:
        return ""
    if expected == 0:
        return "(no claim)"
    return "paper's" if (v_row["verdict_adj"] == "better") == (expected > 0) else "against"


def verdict_table(v, paper: dict, control: str) -> list[str]:
    out = [
        "| score | condition | Δ | raw 95% CI | p | adjusted CI | p adj | verdict → adjusted "
        "| MDE (80%) | seeds for Δ | direction |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in v.iterrows():
        need = r["seeds_needed"]
        out.append(
            f"| {r['score']} | {r['condition']} | {fmt(r['delta'])} | {ci(r['lo'], r['hi'])} | "
            f"{r['p']:.3g} | {ci(r['lo_adj'], r['hi_adj'])} | {r['p_adj']:.3g} | "
            f"{r['verdict']} → **{r['verdict_adj']}** | {r['mde']:.3g} | "
            f"{'>1000' if need != need or need == float('inf') else int(need)} | "
            f"{direction(r, paper, control)} |"
        )
    return out + [""]


def survivors(v, paper: dict, control: str) -> dict:
    out = {}
    for kind, pick in (("accuracy", is_primary), ("likelihood", is_likelihood)):
        picked = np.array([pick(s) for s in v["score"]], bool)
        rows = v[picked & v["verdict_adj"].isin(["better", "worse"]).to_numpy()]
        out[kind] = [
            {
                "score": r["score"],
                "condition": r["condition"],
                "delta": r["delta"],
                "lo_adj": r["lo_adj"],
                "hi_adj": r["hi_adj"],
                "verdict": r["verdict_adj"],
                "direction": direction(r, paper, control),
            }
            for _, r in rows.iterrows()
        ]
    return out


def save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(figure_png(fig, dpi=100))
    os.replace(tmp, path)
    return path


def design_section(design: str, spec: dict, root: str, figures: str) -> tuple[list[str], dict]:
    patterns = [os.path.join(root, design, "*")]
    if os.path.isdir(os.path.join(root, f"{design}-aa")):
        patterns.append(os.path.join(root, f"{design}-aa", "*"))
    runs = A.load_runs(patterns)
    frame = A.runs_frame(runs)
    scores = A.scores_frame(runs, frame)
    curves = cv.curve_frame(runs, frame)
    if len(curves):
        scores = pd.concat([scores, cv.curve_scores(curves)], ignore_index=True)
    facts: dict = {"runs": len(runs), "controls": {}}
    out = [f"## {design} ({len(runs)} runs)", "", seed_design(frame)["summary"], ""]
    for control in spec["controls"]:
        everything = vd.verdicts(scores, control, family=f"{design}: all scores vs {control}")
        primary_rows = everything[[is_primary(s) for s in everything["score"]]]
        primary = vd.verdicts(
            scores,
            control,
            family=f"{design}: accuracies vs {control}",
            comparison=primary_rows,
        )
        paper = spec.get("paper", {})
        counts_p, counts_all = vd.verdict_counts(primary), vd.verdict_counts(everything)
        out += [
            f"### against {control}",
            "",
            f"**Primary family** (accuracies and their learning-curve areas, "
            f"{primary.attrs['correction']}, {counts_p['comparisons']} comparisons): "
            f"{counts_p['raw']} outside noise before correction, {counts_p['adjusted']} after.",
            "",
            *verdict_table(primary, paper, control),
            f"**All scores** ({everything.attrs['correction']}, {counts_all['comparisons']} "
            f"comparisons): {counts_all['raw']} outside noise before correction, "
            f"{counts_all['adjusted']} after.",
            "",
            *verdict_table(everything, paper, control),
        ]
        bars = save(
            plots.plot_verdict_bars(primary if len(primary) else everything),
            os.path.join(figures, f"{design}-vs-{control}.png"),
        )
        facts["controls"][control] = {
            "primary": counts_p,
            "all": counts_all,
            "correction_primary": primary.attrs["correction"],
            "correction_all": everything.attrs["correction"],
            "survivors": survivors(everything, paper, control),
            "mde_primary": {
                f"{r['score']} | {r['condition']}": r["mde"] for _, r in primary.iterrows()
            },
            "figure": bars,
        }
    # A/A: the first control against itself in another data order
    try:
        aa, rates = vd.aa_calibration(scores, spec["controls"][0])
    except AblateError as exc:
        out += [f"A/A calibration: not run ({exc})", ""]
    else:
        facts["aa"] = {
            "comparisons": rates["comparisons"],
            "raw": rates["raw"].__dict__,
            "adjusted": rates["adjusted"].__dict__,
            "correction": rates["correction"],
        }
        out += [
            f"### A/A calibration: {spec['controls'][0]} against itself in another data order",
            "",
            f"{rates['comparisons']} comparisons (every score), no true effect: "
            f"{rates['raw'].count} outside noise before correction "
            f"({rates['raw'].rate:.1%}, 95% interval {rates['raw'].lo:.1%}–{rates['raw'].hi:.1%}), "
            f"{rates['adjusted'].count} after ({rates['correction']}).",
            "",
            *verdict_table(aa, {}, spec["controls"][0]),
        ]
    if spec.get("dose"):
        field = spec["dose"]
        fits = vd.dose_fits(scores, frame, field)
        out += [
            f"### dose-response over `{field}` ({fits.attrs['correction']}, "
            f"{fits.attrs['family_size']} fits)",
            "",
            "| score | fit | slope [95% CI] | p | p adj | trend after correction | monotonicity |",
            "|---|---|---|---|---|---|---|",
        ]
        for _, f in fits.iterrows():
            out.append(
                f"| {f['score']} | {f['kind']} | {fmt(f['slope'])} {ci(f['lo'], f['hi'])} | "
                f"{f['p']:.3g} | {f['p_adj']:.3g} | {f['trend_adj']} | {f['monotonicity']} |"
            )
        out.append("")
        keep = fits[[is_primary(s) or s.startswith("probes/gold_bpb") for s in fits["score"]]]
        facts["dose"] = {
            "field": field,
            "fits": keep[["score", "kind", "slope", "lo", "hi", "p_adj", "monotonicity"]].to_dict(
                "records"
            ),
            "figure": save(
                plots.plot_dose_response(scores, frame, keep, field),
                os.path.join(figures, f"{design}-dose-response.png"),
            ),
        }
    if len(curves):
        acc = [s for s in dict.fromkeys(curves["score"]) if cv.is_accuracy(s)][:8]
        if acc:
            facts["curves_figure"] = save(
                plots.plot_learning_curves(curves, acc, title=design),
                os.path.join(figures, f"{design}-learning-curves.png"),
            )
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
    facts["runs_equal_to_plan"] = equal
    return out + [""], facts


def base_section(root: str) -> tuple[list[str], dict]:
    """The shared base every point starts from (``runs/study-base``): its probe accuracies along
    its training, i.e. where each design's anneal begins. Nothing when the study ran without one."""
    path = os.path.join(root, "study-base")
    if not os.path.isdir(os.path.join(path, "eval")):
        return [], {}
    points = cv.curve_frame(A.load_runs([path]))
    acc = points[points["score"].map(cv.is_accuracy)]
    if acc.empty:
        return [], {}
    table = acc.pivot_table(index=["step", "tokens"], columns="score", values="value")
    lines = [
        "## The shared base (recipes/toy/study-base.yaml)",
        "",
        "Every point of every design starts from this base's last checkpoint and decays the "
        "learning rate on its own mix. Its probe accuracies along its training:",
        "",
        "| step | tokens | " + " | ".join(table.columns) + " |",
        "|---|---|" + "---|" * len(table.columns),
    ]
    for (step, tokens), row in table.iterrows():
        lines.append(f"| {step} | {tokens:,} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    last = table.iloc[-1]
    facts = {
        "steps": int(table.index[-1][0]),
        "tokens": int(table.index[-1][1]),
        "final": {k: float(v) for k, v in last.items()},
    }
    return lines + [""], facts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs", help="where the study's sweeps put their run dirs")
    ap.add_argument("-o", "--out", default="docs/study/summary.md")
    ap.add_argument("--figures", default="docs/toy-world-results", help="where the PNGs go")
    ap.add_argument("--designs", default=",".join(DESIGNS))
    args = ap.parse_args(argv)
    lines = [
        "# Toy-world study: generated tables",
        "",
        "Δ: seed mean of the condition minus the control's (paired over seeds); raw interval: 95% "
        "t; adjusted: corrected for the family (Holm: Bonferroni-simultaneous intervals; "
        "Benjamini-Hochberg: Benjamini-Yekutieli false-coverage intervals). MDE: the smallest "
        "|Δ| detected with 80% power at these seeds. Bits per byte: lower is better.",
        "",
    ]
    facts = {}
    base_lines, base = base_section(args.runs)
    lines += base_lines
    if base:
        facts["base"] = base
    for design in args.designs.split(","):
        if design not in DESIGNS:
            print(f"error: --designs: unknown design {design!r} (known: {', '.join(DESIGNS)})")
            return 2
        section, facts[design] = design_section(design, DESIGNS[design], args.runs, args.figures)
        lines += section
        aa = facts[design].get("aa")
        print(
            f"{design}: "
            + "; ".join(
                f"vs {c}: {f['primary']['adjusted']} of {f['primary']['comparisons']} accuracy "
                f"verdicts and {f['all']['adjusted']} of {f['all']['comparisons']} in all survive "
                "the correction"
                for c, f in facts[design]["controls"].items()
            )
            + (
                f"; A/A false positives {aa['raw']['count']}/{aa['comparisons']} raw, "
                f"{aa['adjusted']['count']} adjusted"
                if aa
                else ""
            ),
            file=sys.stderr,
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for path, text in (
        (args.out, "\n".join(lines) + "\n"),
        (os.path.join(args.figures, "study.json"), json.dumps(facts, indent=1, default=float)),
    ):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
