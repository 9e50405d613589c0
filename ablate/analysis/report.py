"""``ablate report``: one self-contained HTML page comparing runs against a control.

Sections: the runs and what differs between them; capability deltas with confidence intervals
(capability x recipe table, data-change x capability interaction table, bars); training curves;
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

import base64
import html
import io
import math
import os
import warnings

import numpy as np

from ablate.errors import AblateError
from ablate.io import utc_timestamp
from ablate.run_layout import RunLayout

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;color:#222;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{margin-top:24px;font-size:16px}p.meta,p.note{color:#555;font-size:13px}
div.tw{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:12px;margin:8px 0 16px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td.l,th.l{text-align:left}
td.better{background:#d6f0df}td.worse{background:#f7d9d2}td.noise{background:#eee;color:#666}
td.seed1{background:#e3ebf6}td.mixed{background:#f6ebc8}
img{max-width:100%;display:block;margin:6px 0 18px;border:1px solid #eee}
ul.notes li{font-size:13px;color:#7a4b00}
.legend span{display:inline-block;padding:1px 8px;margin-right:6px;font-size:12px}
"""

_VERDICT_CLASS = {"better": "better", "worse": "worse", "noise": "noise", "1 seed": "seed1", "mixed": "mixed"}


def figure_png(fig, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _img(fig, alt: str) -> str:
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v, signed: bool = False) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{v:+d}" if signed else f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "–"
        if v == 0:
            return "0"
        return f"{v:+.4g}" if signed else f"{v:.4g}"
    return str(v)


def _table(frame, index: bool = False, classes=None, left=()) -> str:
    """A DataFrame as an HTML table; ``classes`` (same shape, or None) gives per-cell CSS classes."""
    cols = list(frame.columns)
    head = ([f'<th class="l">{html.escape(str(frame.index.name or ""))}</th>'] if index else []) + \
           [f'<th{" class=l" if c in left else ""}>{html.escape(str(c))}</th>' for c in cols]
    body = []
    for i, (idx, row) in enumerate(frame.iterrows()):
        cells = [f'<td class="l">{html.escape(str(idx))}</td>'] if index else []
        for j, c in enumerate(cols):
            cls = []
            if c in left:
                cls.append("l")
            if classes is not None:
                extra = classes.iloc[i, j]
                if isinstance(extra, str) and extra:
                    cls.append(extra)
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{html.escape(_fmt(row[c]))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='tw'><table><tr>{''.join(head)}</tr>{''.join(body)}</table></div>"


def build_report(paths, control: str, out: str, *, step: int | None = None, method: str = "bootstrap",
                 n_boot: int = 2000, threshold: float = 1.5, max_conditions: int = 12) -> str:
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
        page = _page(runs, control, step, method, n_boot, threshold, max_conditions)
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
        raise AblateError(f"{out}: no such directory {folder} (create it, or write the report elsewhere)")
    real = os.path.realpath(out)
    for r in runs:
        if real.startswith(os.path.realpath(r.path) + os.sep):
            raise AblateError(f"{out}: inside the input run directory {r.path} (a report never writes into "
                              "its inputs; write it elsewhere)")


def _page(runs, control: str, step, method: str, n_boot: int, threshold: float, max_conditions: int) -> str:
    from ablate.analysis import capability as cap
    from ablate.analysis.runs import differences, metrics_frame, resolve_control, runs_frame, varying_columns

    frame = runs_frame(runs)
    control = resolve_control(frame, control)
    by_name = {r.name: r for r in runs}
    conditions = list(dict.fromkeys(frame["condition"]))
    conditions = [control] + [c for c in conditions if c != control]
    reps = {c: by_name[frame.loc[frame["condition"] == c, "run"].iloc[0]] for c in conditions}
    shown = conditions[:max_conditions]
    notes: list[str] = []
    if len(conditions) > max_conditions:
        notes.append(f"figures show the first {max_conditions} of {len(conditions)} conditions; the tables show all")
    parts = [f"<h1>ablate report</h1><p class='meta'>{len(runs)} runs, {len(conditions)} conditions, control "
             f"<b>{html.escape(control)}</b>; generated {utc_timestamp()}</p>"]

    # ---- runs
    vary = varying_columns(frame)
    overview = frame[["run", "condition", "seed", "state", "step"] + vary[:12]]
    parts.append("<h2>Runs</h2>" + _table(overview, left=("run", "condition", "state")))
    diffs = differences(frame, control)
    unset = lambda v: "(unset)" if v is None else _fmt(v)  # noqa: E731
    rows = [(c, "; ".join(f"{k}: {unset(a)} → {unset(b)}" for k, (a, b) in d.items()) or "(control)")
            for c, d in diffs.items()]
    import pandas as pd

    parts.append("<h3>What differs from the control</h3>" + _table(pd.DataFrame(rows, columns=["condition", "recipe changes"]),
                                                                    left=("condition", "recipe changes")))

    # ---- capability
    parts.append("<h2>Capabilities</h2>")
    scores = cap.scores_frame(runs, frame, step)
    steps = scores.groupby("run")["step"].first() if len(scores) else None
    if steps is not None and steps.nunique() > 1:
        notes.append("runs were evaluated at different steps: " + ", ".join(f"{r} {s}" for r, s in steps.items()))
    if scores.attrs.get("missing"):
        notes.append(f"no eval results (run 'ablate eval'): {', '.join(scores.attrs['missing'])}")
    if scores.empty:
        parts.append("<p class='note'>No run has eval results (eval/step_*.json); run <code>ablate eval RUN</code>.</p>")
    else:
        comparison = cap.compare(scores, control, method=method, n_boot=n_boot)
        notes += comparison.attrs.get("excluded", [])
        parts.append(_capability_section(cap, scores, comparison, control, runs, frame, method))

    # ---- training
    parts.append("<h2>Training</h2>")
    metrics_all = metrics_frame(runs, frame)
    from ablate.analysis import plots

    parts.append(_img(plots.plot_loss_overlay(metrics_all), "loss of every run"))
    for c in shown:
        parts.append(_img(plots.plot_training_curves(reps[c].metrics(), title=f"{c} ({reps[c].name})"),
                          f"training curves {c}"))

    # ---- routing
    parts.append(_routing_section(runs, frame, control, reps, shown, threshold, notes))
    parts.append(_eval_routing_section(reps, shown, notes))

    if notes:
        parts.append("<h2>Notes</h2><ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ablate report: {html.escape(control)}"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


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
    out.append("<h3>Scores (mean over seeds)</h3>" + _table(mean, index=True))
    if comparison.empty:
        out.append("<p class='note'>Only the control has scores.</p>")
        return "".join(out)
    ci = int(round(comparison.attrs.get("ci", 0.95) * 100))
    legend = "".join(f"<span class='{k}' style='background:{c}'>{v}</span>" for k, v, c in
                     (("better", "better than control", "#d6f0df"), ("worse", "worse", "#f7d9d2"),
                      ("noise", f"within noise ({ci}% CI contains 0)", "#eee"), ("seed1", "one seed: no CI", "#e3ebf6")))
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
                cells.loc[s, c] = _fmt(float(d), signed=True)
            else:
                cells.loc[s, c] = f"{_fmt(float(d), signed=True)} [{_fmt(float(lo.loc[s, c]), True)}, {_fmt(float(hi.loc[s, c]), True)}]"
    classes = verdict.map(lambda v: _VERDICT_CLASS.get(v, "") if isinstance(v, str) else "")
    cells.index.name = "score"
    out.append(f"<h3>Capability × recipe: Δ against {html.escape(control)} [{ci}% CI, {method}]</h3>"
               f"<p class='legend'>{legend}</p>" + _table(cells, index=True, classes=classes))
    changes = cap.data_changes(runs, frame, control)
    benefit, vtab = cap.interaction_table(comparison, changes)
    if not benefit.empty:
        out.append("<h3>Data change × capability: benefit against the control (positive: helps)</h3>"
                   "<p class='note'>Rows: the per-domain token totals a condition changed (from its plan), largest "
                   "change first. Cells: Δ signed so that positive is better.</p>"
                   + _table(benefit, index=True, classes=vtab.map(lambda v: _VERDICT_CLASS.get(v, "") if isinstance(v, str) else "")))
    from ablate.analysis import plots

    out.append(_img(plots.plot_capability_bars(comparison), "capability deltas"))
    return "".join(out)


def _routing_section(runs, frame, control, reps, shown, threshold, notes) -> str:
    import pandas as pd

    from ablate.analysis import plots
    from ablate.analysis import routing_compare as rc
    from ablate.analysis import routing_metrics as rm

    out = ["<h2>Expert routing (training)</h2>"]
    with_routing = [r for r in runs if r.has_routing()]
    if not with_routing:
        return out[0] + "<p class='note'>No run has routing/step_*.npz.</p>"
    for r in runs:
        if not r.has_routing():
            notes.append(f"{r.name}: no routing/step_*.npz")
    ctrl = reps[control]
    if not ctrl.has_routing():
        return "".join(out) + "<p class='note'>The control has no routing logs to compare against.</p>"
    base = ctrl.routing()
    cond_of = dict(zip(frame["run"], frame["condition"]))
    rows, aligned_rows = [], []
    domains_of = {}
    for r in with_routing:
        log = r.routing()
        common = [d for d in base.domains if d in log.domains]
        if not common:
            rc.comparable_domains(base, log)  # raises: different taxonomies
        domains = rc.comparable_domains(base, log, common)
        if set(common) != set(base.domains) or set(common) != set(log.domains):
            notes.append(f"{r.name}: routing compared with the control on the domains both saw ({', '.join(common)})")
        domains_of[r.name] = domains
        cmp = rc.compare_routing(base, log, domains)
        count, ntok = log.total()
        prof = rc.invariant_profile(count, ntok, log.k)
        iu = np.triu_indices(len(log.domains), 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rows.append({"run": r.name, "condition": cond_of[r.name], "flushes": log.shape[0],
                         "entropy": float(np.nanmean(prof["entropy_LD"])),
                         "mean JS between domains": float(np.nanmean(prof["js_LDD"][:, iu[0], iu[1]])) if len(iu[0]) else float("nan"),
                         "CV": float(np.nanmean(prof["cv_L"])), "MaxVio": float(np.nanmean(prof["maxvio_L"])),
                         "experts for 50%": float(np.nanmean(prof["cover50_LD"])),
                         "JS distance to control": float(cmp["js_distance"].mean()),
                         "profile L1 to control": float(cmp["profile_l1"].mean())})
        if r is not ctrl and rc.same_initialization(r, ctrl) and log.num_experts == base.num_experts:
            al = rc.aligned_comparison(base, log, domains)
            aligned_rows.append({"run": r.name, "condition": cond_of[r.name], "L1 aligned": al["l1_aligned"].mean(),
                                 "L1 same ids": al["l1_identity"].mean(), "experts keeping their id": al["kept"].mean()})
    out.append("<h3>Numbering-free comparison with the control (whole-run totals, mean over layers)</h3>"
               "<p class='note'>Entropy normalised by log E (1: uniform); JS in bits; CV and MaxVio of per-expert "
               "load; experts for 50%: how many experts, most used first, carry half a domain's routing.</p>"
               + _table(pd.DataFrame(rows), left=("run", "condition")))
    if aligned_rows:
        out.append("<h3>Runs from the control's initialisation, experts aligned (Hungarian match on per-domain "
                   "specialization)</h3>" + _table(pd.DataFrame(aligned_rows), left=("run", "condition")))
    # shared / exclusive experts per domain pair, summed over layers
    # each shown condition's routing log and whole-run totals, read once for the table and figures
    routed = {}
    for c in shown:
        if reps[c].has_routing():
            log = reps[c].routing()
            routed[c] = (log, *log.total())
    se_cols = {}
    for c, (log, count, ntok) in routed.items():
        f = rc.shared_exclusive_frame(count, ntok, log.k, log.domains, threshold)
        g = f.groupby(["a", "b"], sort=False)[["shared", "only_a", "only_b"]].sum()
        se_cols[c] = {f"{a} / {b}": f"{v.shared} / {v.only_a} / {v.only_b}" for (a, b), v in g.iterrows()}
    if se_cols:
        se = pd.DataFrame(se_cols)
        se.index.name = "domains a / b"
        out.append(f"<h3>Shared / only-a / only-b experts (lift &gt; {threshold}), summed over layers</h3>"
                   "<p class='note'>Shared: both domains over-use the expert (synergy); only one: competition.</p>"
                   + _table(se, index=True))
    # figures per shown condition
    for c, (log, count, ntok) in routed.items():
        r = reps[c]
        out.append(f"<h3>{html.escape(c)} ({html.escape(r.name)})</h3>")
        out.append(_img(plots.plot_expert_heatmaps(rm.specialization(count, ntok), log.domains,
                                                   title=f"{c}: specialization S = count / ntok, whole run", k=log.k),
                        f"heatmaps {c}"))
        if r is not ctrl:
            doms = domains_of[r.name]
            a, b = base.select_domains(doms), log.select_domains(doms)
            ja = rm.js_matrix(rm.routing_distribution(*a.total(), a.k))
            jb = rm.js_matrix(rm.routing_distribution(*b.total(), b.k))
            out.append(_img(plots.plot_js_pair(ja, jb, doms, names=(control, c)), f"JS {control} vs {c}"))
        m = log.metrics(cumulative=False)
        out.append(_img(plots.plot_specialization_over_training(m, title=f"{c}: over training"), f"over training {c}"))
    return "".join(out)


def _eval_routing_section(reps, shown, notes) -> str:
    import pandas as pd

    from ablate.analysis import eval_routing as er
    from ablate.analysis import plots
    from ablate.analysis import routing_metrics as rm

    have = [c for c in shown if reps[c].eval_routing_steps()]
    if not have:
        return ("<h2>Expert routing (evaluation)</h2><p class='note'>No eval/routing_step_*.npz yet (written by "
                "<code>ablate eval</code>).</p>")
    out = ["<h2>Expert routing (evaluation, held-out probe text)</h2>"]
    sat_rows, vocab_rows = [], []
    for c in have:
        r = reps[c]
        sat = er.saturation_frame(r, domain_split=False)
        for step, g in sat.groupby("step"):
            sat_rows.append({"condition": c, "checkpoint": step, "saturation (mean over layers)": g["saturation"].mean()})
        ev = r.eval_routing()
        vs = er.vocab_summary(ev, r.num_experts)
        vocab_rows.append({"condition": c, "checkpoint": ev.step, "tokens (seen ≥ 5×)": int(vs["tokens"].max()) if len(vs) else 0,
                           "share of top expert": float(vs["mean_share"].mean()) if len(vs) else float("nan"),
                           "uniform k/E": ev.k / r.num_experts})
    out.append("<h3>Router saturation against each run's final checkpoint</h3>"
               + _table(pd.DataFrame(sat_rows), left=("condition",)))
    out.append("<h3>Vocabulary specialization (final checkpoint)</h3>"
               "<p class='note'>Per token id, the share of its occurrences routed to its most frequent expert, "
               "weighted by occurrences.</p>" + _table(pd.DataFrame(vocab_rows), left=("condition",)))
    first = reps[have[0]]
    out.append(_img(plots.plot_saturation(er.saturation_frame(first, domain_split=False),
                                          title=f"{have[0]}: saturation against the final checkpoint"), "saturation"))
    ev = first.eval_routing()
    P = rm.coactivation_conditional(rm.coactivation(ev.topk_TKL, first.num_experts))
    out.append(_img(plots.plot_coactivation(P, layer=ev.num_layers - 1, title=f"{have[0]}: P(j | i), last layer, "
                                            f"step {ev.step}"), "co-activation"))
    return "".join(out)
