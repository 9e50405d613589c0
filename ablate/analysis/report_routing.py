"""The report's routing sections: training-time routing compared with the control (numbering-free
metrics, aligned experts for runs from the control's initialisation, shared / exclusive experts,
heatmaps, JS matrices, specialization over training) and eval-time routing (router saturation,
vocabulary specialization, co-activation). Each returns HTML; ``notes`` collects caveats."""

from __future__ import annotations

import html
import warnings

import numpy as np

from ablate.analysis.report_html import img, table


def routing_section(runs, frame, control, reps, shown, threshold, notes) -> str:
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
        return (
            "".join(out) + "<p class='note'>The control has no routing logs to compare against.</p>"
        )
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
            notes.append(
                f"{r.name}: routing compared with the control on the domains both saw "
                f"({', '.join(common)})"
            )
        domains_of[r.name] = domains
        cmp = rc.compare_routing(base, log, domains)
        count, ntok = log.total()
        prof = rc.invariant_profile(count, ntok, log.k)
        iu = np.triu_indices(len(log.domains), 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rows.append(
                {
                    "run": r.name,
                    "condition": cond_of[r.name],
                    "flushes": log.shape[0],
                    "entropy": float(np.nanmean(prof["entropy_LD"])),
                    "mean JS between domains": float(np.nanmean(prof["js_LDD"][:, iu[0], iu[1]]))
                    if len(iu[0])
                    else float("nan"),
                    "CV": float(np.nanmean(prof["cv_L"])),
                    "MaxVio": float(np.nanmean(prof["maxvio_L"])),
                    "experts for 50%": float(np.nanmean(prof["cover50_LD"])),
                    "JS distance to control": float(cmp["js_distance"].mean()),
                    "profile L1 to control": float(cmp["profile_l1"].mean()),
                }
            )
        if (
            r is not ctrl
            and rc.same_initialization(r, ctrl)
            and log.num_experts == base.num_experts
        ):
            al = rc.aligned_comparison(base, log, domains)
            aligned_rows.append(
                {
                    "run": r.name,
                    "condition": cond_of[r.name],
                    "L1 aligned": al["l1_aligned"].mean(),
                    "L1 same ids": al["l1_identity"].mean(),
                    "experts keeping their id": al["kept"].mean(),
                }
            )
    out.append(
        "<h3>Numbering-free comparison with the control (whole-run totals, mean over layers)</h3>"
        "<p class='note'>Entropy normalised by log E (1: uniform); JS in bits; CV and MaxVio of "
        "per-expert "
        "load; experts for 50%: how many experts, most used first, carry half a domain's "
        "routing.</p>" + table(pd.DataFrame(rows), left=("run", "condition"))
    )
    if aligned_rows:
        out.append(
            "<h3>Runs from the control's initialisation, experts aligned (Hungarian match on "
            "per-domain "
            "specialization)</h3>" + table(pd.DataFrame(aligned_rows), left=("run", "condition"))
        )
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
        se_cols[c] = {
            f"{a} / {b}": f"{v.shared} / {v.only_a} / {v.only_b}" for (a, b), v in g.iterrows()
        }
    if se_cols:
        se = pd.DataFrame(se_cols)
        se.index.name = "domains a / b"
        out.append(
            f"<h3>Shared / only-a / only-b experts (lift &gt; {threshold}), summed over layers</h3>"
            "<p class='note'>Shared: both domains over-use the expert (synergy); only one: "
            "competition.</p>" + table(se, index=True)
        )
    # figures per shown condition
    for c, (log, count, ntok) in routed.items():
        r = reps[c]
        out.append(f"<h3>{html.escape(c)} ({html.escape(r.name)})</h3>")
        out.append(
            img(
                plots.plot_expert_heatmaps(
                    rm.specialization(count, ntok),
                    log.domains,
                    title=f"{c}: specialization S = count / ntok, whole run",
                    k=log.k,
                ),
                f"heatmaps {c}",
            )
        )
        if r is not ctrl:
            doms = domains_of[r.name]
            a, b = base.select_domains(doms), log.select_domains(doms)
            ja = rm.js_matrix(rm.routing_distribution(*a.total(), a.k))
            jb = rm.js_matrix(rm.routing_distribution(*b.total(), b.k))
            out.append(
                img(plots.plot_js_pair(ja, jb, doms, names=(control, c)), f"JS {control} vs {c}")
            )
        m = log.metrics(cumulative=False)
        out.append(
            img(
                plots.plot_specialization_over_training(m, title=f"{c}: over training"),
                f"over training {c}",
            )
        )
    return "".join(out)


def eval_routing_section(reps, shown, notes) -> str:
    import pandas as pd

    from ablate.analysis import eval_routing as er
    from ablate.analysis import plots
    from ablate.analysis import routing_metrics as rm

    have = [c for c in shown if reps[c].eval_routing_steps()]
    if not have:
        return (
            "<h2>Expert routing (evaluation)</h2><p class='note'>No eval/routing_step_*.npz yet "
            "(written by "
            "<code>ablate eval</code>).</p>"
        )
    out = ["<h2>Expert routing (evaluation, held-out probe text)</h2>"]
    sat_rows, vocab_rows = [], []
    for c in have:
        r = reps[c]
        sat = er.saturation_frame(r, domain_split=False)
        for step, g in sat.groupby("step"):
            sat_rows.append(
                {
                    "condition": c,
                    "checkpoint": step,
                    "saturation (mean over layers)": g["saturation"].mean(),
                }
            )
        ev = r.eval_routing()
        vs = er.vocab_summary(ev, r.num_experts)
        vocab_rows.append(
            {
                "condition": c,
                "checkpoint": ev.step,
                "tokens (seen ≥ 5×)": int(vs["tokens"].max()) if len(vs) else 0,
                "share of top expert": float(vs["mean_share"].mean()) if len(vs) else float("nan"),
                "uniform k/E": ev.k / r.num_experts,
            }
        )
    out.append(
        "<h3>Router saturation against each run's final checkpoint</h3>"
        + table(pd.DataFrame(sat_rows), left=("condition",))
    )
    out.append(
        "<h3>Vocabulary specialization (final checkpoint)</h3>"
        "<p class='note'>Per token id, the share of its occurrences routed to its most frequent "
        "expert, "
        "weighted by occurrences.</p>" + table(pd.DataFrame(vocab_rows), left=("condition",))
    )
    first = reps[have[0]]
    out.append(
        img(
            plots.plot_saturation(
                er.saturation_frame(first, domain_split=False),
                title=f"{have[0]}: saturation against the final checkpoint",
            ),
            "saturation",
        )
    )
    ev = first.eval_routing()
    P = rm.coactivation_conditional(rm.coactivation(ev.topk_TKL, first.num_experts))
    out.append(
        img(
            plots.plot_coactivation(
                P, layer=ev.num_layers - 1, title=f"{have[0]}: P(j | i), last layer, step {ev.step}"
            ),
            "co-activation",
        )
    )
    return "".join(out)
