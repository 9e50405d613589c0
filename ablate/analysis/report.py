"""``ablate report``: one self-contained HTML page comparing runs against a control.

Sections: the runs and what differs between them; capability deltas with confidence intervals
(capability x recipe table, data-change x capability interaction table, bars); the verdicts
corrected for multiple comparisons with the design's power, learning curves where runs evaluated
during training, a dose-response fit (``--dose``) and the A/A calibration (``--aa``), see
``report_stats`` and ``verdicts``; training curves;
training-time routing (numbering-free comparison with the control, specialization heatmaps, JS
matrices side by side, specialization over training, shared / exclusive experts); eval-time
routing where ``ablate eval`` wrote it (saturation, vocabulary specialization, co-activation).
Figures are PNGs embedded as base64, so the file opens in a browser with no server.

Per condition the figures show its first run (seeds look alike; the tables average them).

A report reads its run directories and writes one file, in this order: the output path is
checked first (not a directory, its folder exists, not inside an input run directory); then
every run is read and checked (recipe, status, plan, metrics, the eval results compared, the
routing logs), and a damaged file is one line naming it (exit 2); the page is written last,
atomically. The routing caches of the input runs (``routing_columnar.*``) are written only
after the page, and best effort (``routing_store.cache_writes_after_success``): a report that
fails leaves its inputs exactly as they were, and one whose inputs are read-only still succeeds.
"""

from __future__ import annotations

import html
import os

from ablate.analysis.report_html import CSS, VERDICT_CLASS, figure_png, fmt, img, table
from ablate.analysis.report_routing import eval_routing_section, routing_section
from ablate.errors import AblateError
from ablate.io import utc_timestamp
from ablate.run_layout import RunLayout

__all__ = ["build_report", "figure_png"]


def build_report(
    paths,
    control: str,
    out: str,
    *,
    step: int | None = None,
    method: str = "bootstrap",
    n_boot: int = 2000,
    threshold: float = 1.5,
    max_conditions: int = 12,
    correction: str = "auto",
    dose: str | None = None,
    aa: bool = False,
) -> str:
    """Write the report for the runs ``paths`` (directories or globs) against ``control``."""
    from ablate.analysis.routing_store import cache_writes_after_success
    from ablate.analysis.runs import load_runs

    _check_out(out)
    runs = load_runs(paths)
    _check_out(out, runs)
    for r in runs:  # every input read and checked before anything is drawn
        r.require(RunLayout.PLAN, RunLayout.METRICS)
        r.plan, r.metrics()
        if r.eval_steps():
            r.eval_results(step)
    with cache_writes_after_success():
        stats_options = {"correction": correction, "dose": dose, "aa": aa}
        page = _page(runs, control, step, method, n_boot, threshold, max_conditions, stats_options)
        from ablate.io import remove_stale_temporaries, write_text_atomic

        remove_stale_temporaries(os.path.dirname(os.path.abspath(out)))
        try:
            write_text_atomic(out, page)
        except OSError as exc:
            raise AblateError(f"{out}: cannot write the report ({exc.strerror})") from None
    return out


def _check_out(out: str, runs=()) -> None:
    """The report's path: a file in an existing folder, outside every input run directory."""
    if os.path.isdir(out):
        raise AblateError(f"{out}: is a directory (-o names the HTML file to write)")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise AblateError(
            f"{out}: no such directory {folder} (create it, or write the report elsewhere)"
        )
    real = os.path.realpath(out)
    for r in runs:
        if real.startswith(os.path.realpath(r.path) + os.sep):
            raise AblateError(
                f"{out}: inside the input run directory {r.path} (a report never writes into "
                "its inputs; write it elsewhere)"
            )


def _page(
    runs,
    control: str,
    step,
    method: str,
    n_boot: int,
    threshold: float,
    max_conditions: int,
    stats_options: dict | None = None,
) -> str:
    from ablate.analysis import capability as cap
    from ablate.analysis.runs import (
        differences,
        metrics_frame,
        resolve_control,
        runs_frame,
        seed_design,
        varying_columns,
    )

    frame = runs_frame(runs)
    control = resolve_control(frame, control)
    by_name = {r.name: r for r in runs}
    conditions = list(dict.fromkeys(frame["condition"]))
    conditions = [control] + [c for c in conditions if c != control]
    reps = {c: by_name[frame.loc[frame["condition"] == c, "run"].iloc[0]] for c in conditions}
    shown = conditions[:max_conditions]
    notes: list[str] = []
    if len(conditions) > max_conditions:
        notes.append(
            f"figures show the first {max_conditions} of {len(conditions)} conditions; the tables "
            "show all"
        )
    parts = [
        f"<h1>ablate report</h1><p class='meta'>{len(runs)} runs, {len(conditions)} conditions, "
        "control "
        f"<b>{html.escape(control)}</b>; generated {utc_timestamp()}</p>"
    ]

    # ---- runs
    vary = varying_columns(frame)
    overview = frame[["run", "condition", "seed", "state", "step"] + vary[:12]]
    parts.append("<h2>Runs</h2>" + table(overview, left=("run", "condition", "state")))
    parts.append(f"<p class='note'>{html.escape(seed_design(frame)['summary'])}</p>")
    diffs = differences(frame, control)
    unset = lambda v: "(unset)" if v is None else fmt(v)  # noqa: E731
    rows = [
        (c, "; ".join(f"{k}: {unset(a)} → {unset(b)}" for k, (a, b) in d.items()) or "(control)")
        for c, d in diffs.items()
    ]
    import pandas as pd

    parts.append(
        "<h3>What differs from the control</h3>"
        + table(
            pd.DataFrame(rows, columns=["condition", "recipe changes"]),
            left=("condition", "recipe changes"),
        )
    )

    # ---- capability
    parts.append("<h2>Capabilities</h2>")
    scores = cap.scores_frame(runs, frame, step)
    curves = None
    if step is None:  # learning-curve summaries join the end-point scores
        from ablate.analysis.curves import curve_frame, curve_scores

        curves = curve_frame(runs, frame)
        if len(curves):
            scores = pd.concat([scores, curve_scores(curves)], ignore_index=True)
    steps = scores.groupby("run")["step"].first() if len(scores) else None
    if steps is not None and steps.nunique() > 1:
        notes.append(
            "runs were evaluated at different steps: "
            + ", ".join(f"{r} {s}" for r, s in steps.items())
        )
    if scores.attrs.get("missing"):
        notes.append(f"no eval results (run 'ablate eval'): {', '.join(scores.attrs['missing'])}")
    if scores.empty:
        parts.append(
            "<p class='note'>No run has eval results (eval/step_*.json); run <code>ablate eval "
            "RUN</code>.</p>"
        )
    else:
        comparison = cap.compare(scores, control, method=method, n_boot=n_boot)
        notes += comparison.attrs.get("excluded", [])
        parts.append(_capability_section(cap, scores, comparison, control, runs, frame, method))
        parts.append(_stats_sections(scores, frame, curves, control, stats_options or {}))

    # ---- training
    parts.append("<h2>Training</h2>")
    metrics_all = metrics_frame(runs, frame)
    from ablate.analysis import plots

    parts.append(img(plots.plot_loss_overlay(metrics_all), "loss of every run"))
    for c in shown:
        parts.append(
            img(
                plots.plot_training_curves(reps[c].metrics(), title=f"{c} ({reps[c].name})"),
                f"training curves {c}",
            )
        )

    # ---- routing
    parts.append(routing_section(runs, frame, control, reps, shown, threshold, notes))
    parts.append(eval_routing_section(reps, shown, notes))

    if notes:
        parts.append(
            "<h2>Notes</h2><ul class='notes'>"
            + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
            + "</ul>"
        )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ablate report: "
        f"{html.escape(control)}"
        f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def _stats_sections(scores, frame, curves, control: str, options: dict) -> str:
    """Corrected verdicts with power, learning curves, dose-response, A/A calibration."""
    from ablate.analysis import report_stats as rs
    from ablate.analysis import verdicts as vd

    correction = options.get("correction", "auto")
    parts = [rs.verdict_section(vd.verdicts(scores, control, correction=correction))]
    if curves is not None and len(curves):
        parts.append(rs.curves_section(curves))
    if options.get("dose"):
        fits = vd.dose_fits(scores, frame, options["dose"], correction=correction)
        parts.append(rs.dose_section(scores, frame, fits))
    if options.get("aa"):
        v, rates = vd.aa_calibration(scores, control, correction=correction)
        parts.append(rs.aa_section(v, rates))
    return "".join(parts)


def _capability_section(cap, scores, comparison, control, runs, frame, method) -> str:
    import pandas as pd

    out = []
    summ = cap.summary(scores)
    mean = summ.pivot(index="score", columns="condition", values="mean")
    n = summ.groupby("condition")["n"].max()
    order = [control] + [c for c in dict.fromkeys(summ["condition"]) if c != control]
    mean = mean.reindex(index=list(dict.fromkeys(scores["score"])), columns=order)
    mean.columns = [f"{c} (n={n.get(c, 0)})" for c in mean.columns]
    mean.index.name = "score"
    out.append("<h3>Scores (mean over seeds)</h3>" + table(mean, index=True))
    if comparison.empty:
        out.append("<p class='note'>Only the control has scores.</p>")
        return "".join(out)
    ci = int(round(comparison.attrs.get("ci", 0.95) * 100))
    legend = "".join(
        f"<span class='{k}' style='background:{c}'>{v}</span>"
        for k, v, c in (
            ("better", "better than control", "#d6f0df"),
            ("worse", "worse", "#f7d9d2"),
            ("noise", f"within noise ({ci}% CI contains 0)", "#eee"),
            ("seed1", "one seed: no CI", "#e3ebf6"),
        )
    )
    delta = cap.capability_table(comparison, "delta")
    lo, hi = cap.capability_table(comparison, "lo"), cap.capability_table(comparison, "hi")
    verdict = cap.capability_table(comparison, "verdict")
    cells = delta.copy().astype(object)
    for s in delta.index:
        for c in delta.columns:
            d = delta.loc[s, c]
            if pd.isna(d):
                cells.loc[s, c] = ""
            elif pd.isna(lo.loc[s, c]):
                cells.loc[s, c] = fmt(float(d), signed=True)
            else:
                cells.loc[s, c] = (
                    f"{fmt(float(d), signed=True)} [{fmt(float(lo.loc[s, c]), True)}, "
                    f"{fmt(float(hi.loc[s, c]), True)}]"
                )
    classes = verdict.map(lambda v: VERDICT_CLASS.get(v, "") if isinstance(v, str) else "")
    cells.index.name = "score"
    out.append(
        f"<h3>Capability × recipe: Δ against {html.escape(control)} [{ci}% CI, {method}]</h3>"
        f"<p class='legend'>{legend}</p>" + table(cells, index=True, classes=classes)
    )
    changes = cap.data_changes(runs, frame, control)
    benefit, vtab = cap.interaction_table(comparison, changes)
    if not benefit.empty:
        out.append(
            "<h3>Data change × capability: benefit against the control (positive: helps)</h3>"
            "<p class='note'>Rows: the per-domain token totals a condition changed (from its "
            "plan), largest "
            "change first. Cells: Δ signed so that positive is better.</p>"
            + table(
                benefit,
                index=True,
                classes=vtab.map(lambda v: VERDICT_CLASS.get(v, "") if isinstance(v, str) else ""),
            )
        )
    from ablate.analysis import plots

    out.append(img(plots.plot_capability_bars(comparison), "capability deltas"))
    return "".join(out)
