"""Verdicts a reviewer accepts: every comparison of a table tested, the table corrected for
multiple comparisons as one family, and the power of the design stated beside it.

``verdicts(scores, control)`` starts from ``capability.compare`` (Δ per condition x score
against the control, over seeds) and adds, per row:

* ``p``: the two-sided t test of the Δ (paired over seeds when both arms ran the same seeds,
  else Welch), with its interval ``lo``/``hi``;
* ``p_adj``, ``lo_adj``/``hi_adj``, ``verdict_adj``: the same after the family's correction
  (``stats.correct``: Holm for families of at most 20 comparisons, Benjamini-Hochberg above,
  unless named), and ``family``, ``family_size``, ``correction`` saying which;
* ``sd``: the seed-to-seed standard deviation of the Δ (paired) or of the two arms pooled, and
  from it ``mde`` (the smallest |Δ| the design detects with 80% power at its seeds, 5% two-sided)
  and ``seeds_needed`` (seeds for 80% power at the observed |Δ|; inf past 1,000).

The family is the table: the rows handed in. A report's capability table is one family; a
summary that picks a few primary scores passes those rows alone. Rows with one seed have no
test (``p`` NaN) and do not count in the family. A family with one testable comparison is
reported uncorrected (``correction`` = "none: family of 1") unless a method was named, which is
then an error: there is nothing to correct.
"""

from __future__ import annotations

import numpy as np

from ablate.analysis import capability as cap
from ablate.analysis import stats
from ablate.errors import AblateError

CORRECTIONS = ("auto", "holm", "bh", "none")


def _seed_values(scores, condition: str, score: str):
    rows = scores[(scores["condition"] == condition) & (scores["score"] == score)]
    return rows.groupby(cap._pair_column(rows))["value"].mean()


def verdicts(
    scores,
    control: str,
    *,
    correction: str = "auto",
    family: str = "all scores",
    ci: float = 0.95,
    comparison=None,
):
    """``capability.compare`` (t intervals) plus tests, the family's correction and power.

    ``comparison``: an existing ``compare`` frame (method "t") to extend, e.g. a subset of rows
    that forms the family; by default every score of every condition against ``control``."""
    if correction not in CORRECTIONS:
        raise AblateError(f"correction: {correction!r} is not one of {', '.join(CORRECTIONS)}")
    c = cap.compare(scores, control, method="t", ci=ci) if comparison is None else comparison
    c = c.copy()
    K = len(c)
    p, se, df, sd = (np.full(K, np.nan) for _ in range(4))
    n_eff = np.zeros(K, int)
    for i, row in enumerate(c.itertuples(index=False)):
        if row.paired:
            d = np.array(list(row.per_seed.values()), float)
            if len(d) < 2:
                continue
            t = stats.paired_t(d[None, :], ci=ci)
            sd[i], n_eff[i] = np.std(d, ddof=1), len(d)
        else:
            a = _seed_values(scores, row.condition, row.score).to_numpy()
            b = _seed_values(scores, control, row.score).to_numpy()
            if len(a) < 2 or len(b) < 2:
                continue
            s = max(len(a), len(b))
            pad = lambda x: np.pad(x, (0, s - len(x)), constant_values=np.nan)  # noqa: E731
            t = stats.welch_t(pad(a)[None, :], pad(b)[None, :], ci=ci)
            # a paired-equivalent spread for power: both arms' variances
            sd[i] = np.sqrt(np.var(a, ddof=1) + np.var(b, ddof=1))
            n_eff[i] = min(len(a), len(b))
        p[i], se[i], df[i] = t.p_K[0], t.se_K[0], t.df_K[0]
    c["p"], c["se"], c["df"], c["sd"] = p, se, df, sd
    testable = ~np.isnan(p)
    m = int(testable.sum())
    p_adj, lo_adj, hi_adj = (np.full(K, np.nan) for _ in range(3))
    if correction == "none" or (correction == "auto" and not stats.family_size_ok(m)):
        label = "none" if correction == "none" else f"none: family of {m}"
        p_adj[testable] = p[testable]
        lo_adj[testable] = c["lo"].to_numpy(float)[testable]
        hi_adj[testable] = c["hi"].to_numpy(float)[testable]
        level = ci
    else:
        if not stats.family_size_ok(m):
            raise AblateError(
                f"{family}: a family of {m} testable comparison{'s' if m != 1 else ''} "
                f"(with 2+ seeds): nothing to correct with {correction}; use --correction none"
            )
        mean = c["delta"].to_numpy(float)
        corr = stats.correct(
            p[testable], mean[testable], se[testable], df[testable], correction, ci
        )
        p_adj[testable], lo_adj[testable], hi_adj[testable] = (
            corr.p_adj_K,
            corr.lo_adj_K,
            corr.hi_adj_K,
        )
        label, level = corr.method, corr.level_adj
    alpha = 1 - ci
    c["p_adj"], c["lo_adj"], c["hi_adj"] = p_adj, lo_adj, hi_adj
    sign = np.where(c["lower_is_better"].to_numpy(bool), -1.0, 1.0)
    better = sign * c["delta"].to_numpy(float) > 0
    c["verdict_adj"] = [
        "1 seed" if np.isnan(q) else ("better" if b else "worse") if q <= alpha else "noise"
        for q, b in zip(p_adj, better)
    ]
    c["correction"], c["family"], c["family_size"] = label, family, m
    c["level_adj"] = float(level)
    mde, need = np.full(K, np.nan), np.full(K, np.nan)
    ok = testable & (sd > 0)
    if ok.any():
        mde[ok] = stats.mde(sd[ok], n_eff[ok], alpha=alpha)
        need[ok] = stats.seeds_needed(np.abs(c["delta"].to_numpy(float)[ok]), sd[ok], alpha=alpha)
    c["mde"], c["seeds_needed"] = mde, need
    c.attrs.update(correction=label, family=family, family_size=m, level_adj=float(level), ci=ci)
    return c


def verdict_counts(v) -> dict:
    """How many comparisons are outside noise before and after the correction."""
    return {
        "comparisons": int(v["p"].notna().sum()),
        "raw": int(v["verdict"].isin(["better", "worse"]).sum()),
        "adjusted": int(v["verdict_adj"].isin(["better", "worse"]).sum()),
    }


# ---------------------------------------------------------------------------------------------
# A/A calibration: the control against itself in another data order


def aa_scores(scores, control: str):
    """The control's scores split into two arms by data order: ``<control> [data order A]``
    (``data_seed == seed``, the usual runs) and ``[data order B]`` (any other ``data_seed``),
    paired by the init seed. Every true effect between them is 0, so every verdict outside noise
    is a false positive."""
    ctl = scores[scores["condition"] == control].copy()
    if "data_seed" not in ctl.columns:
        raise AblateError("A/A calibration: these scores carry no data_seed (rebuild them)")
    same = (ctl["data_seed"] == ctl["seed"]).to_numpy()
    a_seeds = set(ctl.loc[same, "seed"])
    b_seeds = set(ctl.loc[~same, "seed"])
    if not b_seeds:
        raise AblateError(
            f"A/A calibration: the control {control!r} has no run in another data order "
            "(data_seed different from seed); run it with a data_seeds axis"
        )
    both = sorted(a_seeds & b_seeds)
    if len(both) < 2:
        raise AblateError(
            f"A/A calibration: an interval needs at least 2 seeds per arm; the control {control!r} "
            f"has {len(both)} init seed(s) run in both data orders ({both or 'none'})"
        )
    ctl["condition"] = np.where(same, f"{control} [data order A]", f"{control} [data order B]")
    ctl["pair"] = ctl["seed"]
    return ctl[ctl["seed"].isin(both)]


def aa_calibration(scores, control: str, *, correction: str = "auto", ci: float = 0.95):
    """The verdicts of the control against itself in another data order, and their observed
    false-positive rates before and after correction: ``(verdicts frame, rates)`` with ``rates``
    = ``{"comparisons", "raw": Rate, "adjusted": Rate, "correction"}``."""
    aa = aa_scores(scores, control)
    v = verdicts(aa, f"{control} [data order A]", correction=correction, family="A/A", ci=ci)
    tested = v[v["p"].notna()]
    return v, {
        "comparisons": len(tested),
        "raw": stats.false_positive_rate(tested["verdict"].isin(["better", "worse"]).to_numpy()),
        "adjusted": stats.false_positive_rate(
            tested["verdict_adj"].isin(["better", "worse"]).to_numpy()
        ),
        "correction": v.attrs["correction"],
    }


# ---------------------------------------------------------------------------------------------
# dose-response over a numeric recipe field


def dose_fits(scores, frame, field: str, *, correction: str = "auto", ci: float = 0.95):
    """Per score: the trend over the numeric recipe ``field`` (a column of ``runs_frame``: a
    density, a share, a budget), linear, or logistic for accuracies with their probe counts;
    the slopes' p-values corrected as one family. Columns: ``score, kind, slope, lo, hi, p,
    p_adj, monotonicity, trend_adj, levels, means, fitted``."""
    import pandas as pd

    if field not in frame.columns:
        from ablate.analysis.runs import varying_columns

        raise AblateError(
            f"dose axis {field!r} is not a recipe field of these runs (fields that vary: "
            f"{', '.join(varying_columns(frame)) or 'none'})"
        )
    dose = dict(zip(frame["run"], frame[field]))
    rows = []
    for score, g in scores.groupby("score", sort=False):
        if score.startswith("curve/reached_"):
            continue  # bookkeeping beside tokens_to (how many runs were censored), not a score
        x = [dose[r] for r in g["run"]]
        samples = g["samples"].to_numpy()
        values = g["value"].to_numpy(float)
        # end-point accuracies are binomial counts over their probes; a curve's area is not
        logistic = (
            "accuracy" in score
            and not score.startswith("curve/")
            and all(isinstance(s, (int, np.integer)) and s > 0 for s in samples)
            and ((values >= 0) & (values <= 1)).all()
        )
        fit_args = dict(
            group_N=g["pair"].to_numpy() if "pair" in g.columns else g["seed"].to_numpy(),
            ci=ci,
            name=f"dose axis {field} ({score})",
        )
        kind = "logistic" if logistic else "linear"
        try:
            fit = stats.dose_response(
                x,
                values,
                kind=kind,
                trials_N=samples.astype(float) if logistic else None,
                **fit_args,
            )
        except AblateError as exc:
            if not logistic or "does not converge" not in str(exc):
                raise
            # every run at 0 or 1, or separated by the dose: the linear fit still says which way
            fit, kind = stats.dose_response(x, values, kind="linear", **fit_args), "linear*"
        rows.append(
            {
                "score": score,
                "kind": kind,
                "slope": fit.slope,
                "lo": fit.lo,
                "hi": fit.hi,
                "p": fit.p,
                "monotonicity": fit.monotonicity,
                "levels": fit.levels.tolist(),
                "means": fit.means.tolist(),
                "fitted": fit.fitted.tolist(),
                "lower_is_better": bool(g["lower_is_better"].iloc[0]),
            }
        )
    out = pd.DataFrame(rows)
    p = out["p"].to_numpy(float) if len(out) else np.array([])
    m = int(np.isfinite(p).sum())
    if correction != "none" and (correction != "auto" or stats.family_size_ok(m)):
        if not stats.family_size_ok(m):
            raise AblateError(
                f"dose axis {field}: a family of {m} fit: nothing to correct with {correction}"
            )
        method = stats.resolve_method(correction, m)
        out["p_adj"] = stats.adjust_p(p, method)
    else:
        method = "none"
        out["p_adj"] = p
    out["trend_adj"] = [
        ("up" if s > 0 else "down") if q <= 1 - ci else "none"
        for s, q in zip(out["slope"], out["p_adj"])
    ]
    out.attrs.update(field=field, correction=method, family_size=m, ci=ci)
    return out
