"""The report's statistics sections: corrected verdicts with the design's power, learning curves,
a dose-response fit over a numeric recipe field, and the A/A calibration (see ``verdicts``)."""

from __future__ import annotations

import html

import pandas as pd

from ablate.analysis.report_html import VERDICT_CLASS, fmt, img, table


def _interval(lo, hi) -> str:
    if pd.isna(lo):
        return ""
    return f"[{fmt(float(lo), True)}, {fmt(float(hi), True)}]"


def verdict_rows(v) -> pd.DataFrame:
    """One row per comparison: Δ, raw and adjusted intervals and p side by side, the verdict
    before → after correction, and the power of the design (MDE, seeds for the observed Δ)."""
    rows = []
    for r in v.itertuples(index=False):
        rows.append(
            {
                "score": r.score,
                "condition": r.condition,
                "Δ": r.delta,
                "raw CI": _interval(r.lo, r.hi),
                "p": r.p,
                "adjusted CI": _interval(r.lo_adj, r.hi_adj),
                "p adj": r.p_adj,
                "verdict": r.verdict,
                "after correction": r.verdict_adj,
                "MDE (80%)": r.mde,
                "seeds for Δ": r.seeds_needed,
            }
        )
    return pd.DataFrame(rows)


def family_line(v) -> str:
    a = v.attrs
    m = a.get("family_size", 0)
    method = a.get("correction", "none")
    what = {
        "holm": "Holm (family-wise error); adjusted intervals are Bonferroni-simultaneous",
        "bh": "Benjamini–Hochberg (false discovery rate); adjusted intervals are "
        "Benjamini–Yekutieli false-coverage intervals",
    }.get(method, method)
    level = a.get("level_adj", a.get("ci", 0.95))
    return (
        f"Family: {html.escape(str(a.get('family', '')))}, {m} comparisons with 2+ seeds. "
        f"Correction: {html.escape(what)}; adjusted intervals at level {level:.4g}. "
        "MDE: the smallest |Δ| the design detects with 80% power (5%, two-sided, paired t at "
        "its seeds); seeds for Δ: seeds needed for 80% power at the observed |Δ|."
    )


def verdict_section(v) -> str:
    if v.empty:  # only the control has scores: nothing to compare
        return ""
    rows = verdict_rows(v)
    classes = pd.DataFrame("", index=rows.index, columns=rows.columns)
    for col in ("verdict", "after correction"):
        classes[col] = rows[col].map(lambda x: VERDICT_CLASS.get(x, ""))
    from ablate.analysis import plots

    return (
        "<h3>Verdicts after correction for multiple comparisons, with the design's power</h3>"
        f"<p class='note'>{family_line(v)}</p>"
        + table(rows, classes=classes, left=("score", "condition", "verdict", "after correction"))
        + img(plots.plot_verdict_bars(v), "deltas with raw and adjusted intervals")
    )


def curves_section(curves, max_scores: int = 8) -> str:
    from ablate.analysis import plots
    from ablate.analysis.curves import is_accuracy

    per_run = curves.groupby(["run", "score"]).size()
    if per_run.empty or per_run.max() < 2:
        return ""
    scores = [s for s in dict.fromkeys(curves["score"]) if is_accuracy(s)][:max_scores]
    if not scores:
        return ""
    return (
        "<h3>Learning curves (evaluation inside training)</h3><p class='note'>Mean over seeds "
        "per condition, the band from the lowest to the highest seed. The comparisons above "
        "include each curve's area (<code>curve/auc/…</code>: the mean score over training) "
        "and the tokens to reach 25% and 50% accuracy (<code>curve/tokens_to_…</code>; "
        "a run that never reaches it counts its last evaluated tokens).</p>"
        + img(plots.plot_learning_curves(curves, scores), "learning curves")
    )


def dose_section(scores, frame, fits) -> str:
    from ablate.analysis import plots

    field = fits.attrs["field"]
    rows = pd.DataFrame(
        {
            "score": fits["score"],
            "fit": fits["kind"],
            "slope": fits["slope"],
            "CI": [_interval(lo, hi) for lo, hi in zip(fits["lo"], fits["hi"])],
            "p": fits["p"],
            "p adj": fits["p_adj"],
            "trend after correction": fits["trend_adj"],
            "monotonicity": fits["monotonicity"],
        }
    )
    return (
        f"<h3>Dose–response over <code>{html.escape(field)}</code></h3><p class='note'>Per "
        "score a trend in the dose over every run (linear; logistic in the dose for "
        "accuracies, its interval widened by the seeds' overdispersion), the slopes corrected "
        f"as one family ({html.escape(fits.attrs['correction'])}, "
        f"{fits.attrs['family_size']} fits). Monotonicity: the slope's interval and the "
        "adjacent dose steps (increasing / decreasing / not monotone / no trend).</p>"
        + table(rows, left=("score", "fit", "trend after correction", "monotonicity"))
        + img(plots.plot_dose_response(scores, frame, fits, field), "dose-response")
    )


def aa_section(v, rates) -> str:
    raw, adj = rates["raw"], rates["adjusted"]

    def rate(r) -> str:
        return f"{r.rate:.1%} ({r.count} of {r.total}; 95% interval {r.lo:.1%}–{r.hi:.1%})"

    return (
        "<h3>A/A calibration: the control against itself in another data order</h3>"
        "<p class='note'>The control's runs with <code>data_seed</code> equal to their seed "
        "against its runs in another data order, paired by the init seed, every score: no true "
        "effect exists, so each verdict outside noise is a false positive. Observed "
        f"false-positive rate: raw {rate(raw)}; after correction ({rates['correction']}) "
        f"{rate(adj)}. Nominal: 5% raw.</p>"
        + table(verdict_rows(v), left=("score", "condition", "verdict", "after correction"))
    )
