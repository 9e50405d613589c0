"""Capability comparison: scores per run, seed-averaged deltas against a control, and whether a
difference is larger than the noise between seeds.

A **score** is a (task, metric) pair of ``eval/step_<N>.json`` (``bpb`` / ``bpb/math.text``,
``probes`` / ``accuracy/math_answer``, ``gsm8k_cot`` / ``accuracy``); its label is the metric
when it already starts with the task's name, else ``task/metric``. Scores whose name says bits,
loss or perplexity are lower-is-better; ``benefit`` is the delta signed so that positive always
means "better than the control".

Confidence intervals of a delta come from the seeds: when the condition and the control were run
with the same seeds the per-seed differences are resampled (paired), otherwise each side is
resampled on its own. With one seed on both sides there is no interval, and the verdict says so.
Percentile bootstrap intervals from 2-3 seeds are narrow by construction; ``method="t"`` gives
the (wider) Student/Welch interval.
"""

from __future__ import annotations

import re

import numpy as np

from ablate.errors import AblateError

_LOWER = re.compile(r"(bpb|bits|loss|nll|perplexity|ppl|error)", re.I)
# entries of eval/step_N.json that are bookkeeping, not capabilities
# (the routing capture's token counts)
NOT_SCORE_TASKS = ("routing",)
_NOT_SCORE_METRIC = re.compile(r"^(tokens|samples|elapsed)(/|$)")


# the columns of a scores frame (``scores_frame``; the learning-curve scores share them)
SCORE_COLUMNS = [
    "run", "condition", "seed", "data_seed", "pair", "step", "task", "metric", "score", "value",
    "version", "fingerprint", "samples", "lower_is_better",
]  # fmt: skip


def is_score(task: str, metric: str) -> bool:
    return task not in NOT_SCORE_TASKS and not _NOT_SCORE_METRIC.match(metric)


def score_entries(body: dict):
    """``(task, task entry, metric, value)`` of every numeric score of an eval result (the
    bookkeeping entries, booleans and missing values left out)."""
    for task, t in body["tasks"].items():
        for metric, value in t["metrics"].items():
            if (
                is_score(task, metric)
                and not isinstance(value, bool)
                and isinstance(value, (int, float))
            ):
                yield task, t, metric, value


def lower_is_better(metric: str) -> bool:
    return bool(_LOWER.search(metric))


def score_label(task: str, metric: str) -> str:
    return metric if metric.split("/")[0] == task else f"{task}/{metric}"


def scores_frame(runs, frame=None, step: int | None = None):
    """Tidy scores: one row per (run, score) from each run's latest (or ``step``) eval file.

    Columns: ``run, condition, seed, step, task, metric, score, value, version, fingerprint,
    samples, lower_is_better``. Runs without eval results are listed in ``.attrs["missing"]``.
    """
    import pandas as pd

    from ablate.analysis.runs import runs_frame

    frame = runs_frame(runs) if frame is None else frame
    cond = dict(zip(frame["run"], frame["condition"]))
    rows, missing = [], []
    for r in runs:
        if not r.eval_steps():
            missing.append(r.name)
            continue
        body = r.eval_results(step)
        for task, t, metric, value in score_entries(body):
            rows.append(
                {
                    "run": r.name,
                    "condition": cond.get(r.name, r.name),
                    "seed": r.seed,
                    "data_seed": r.data_seed,
                    "pair": pair_key(r),
                    "step": int(body.get("step", -1)),
                    "task": task,
                    "metric": metric,
                    "score": score_label(task, metric),
                    "value": float(value),
                    "version": t.get("version"),
                    "fingerprint": t.get("fingerprint"),
                    "samples": t.get("samples"),
                    "lower_is_better": lower_is_better(metric),
                }
            )
    out = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    out.attrs["missing"] = missing
    return out


def pair_key(run):
    """What pairs a run with its counterpart in another condition: its seed when the data order
    follows it (every run before ``data_seed``, and the usual design), else ``"<seed>/d<data>"``
    so that two arms pair only where both seeds agree."""
    return run.seed if run.data_seed == run.seed else f"{run.seed}/d{run.data_seed}"


def _pair_column(df) -> str:
    # frames built by hand (tests, notebooks) may carry only ``seed``
    return "pair" if "pair" in df.columns else "seed"


def _plain(key):
    return int(key) if isinstance(key, (int, np.integer)) else key


def summary(scores):
    """Per (condition, score): mean, std (ddof=1), number of seeds."""
    g = scores.groupby(["condition", "score"], sort=False)["value"]
    return g.agg(mean="mean", std="std", n="count").reset_index()


def bootstrap_ci(values, control, *, paired: bool, n_boot: int = 2000, ci: float = 0.95, rng=None):
    """Percentile interval of mean(values) - mean(control) (paired: of mean(values - control))."""
    rng = np.random.default_rng(0) if rng is None else rng
    a, b = np.asarray(values, float), np.asarray(control, float)
    lo_q, hi_q = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    if paired:
        d = a - b
        if len(d) < 2:
            return np.nan, np.nan
        boot = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    else:
        if len(a) + len(b) < 3 or len(a) == 0 or len(b) == 0:
            return np.nan, np.nan
        boot = a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(1) - b[
            rng.integers(0, len(b), size=(n_boot, len(b)))
        ].mean(1)
    lo, hi = np.percentile(boot, [lo_q, hi_q])
    return float(lo), float(hi)


def t_ci(values, control, *, paired: bool, ci: float = 0.95):
    """Student (paired) or Welch interval of the difference of means."""
    from scipy import stats

    a, b = np.asarray(values, float), np.asarray(control, float)
    if paired:
        d = a - b
        if len(d) < 2:
            return np.nan, np.nan
        se, df, center = d.std(ddof=1) / np.sqrt(len(d)), len(d) - 1, d.mean()
    else:
        if len(a) < 2 or len(b) < 2:
            return np.nan, np.nan
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else 1
        center = a.mean() - b.mean()
    if se == 0:
        return float(center), float(center)
    q = stats.t.ppf((1 + ci) / 2, df)
    return float(center - q * se), float(center + q * se)


def compare(
    scores,
    control: str,
    *,
    method: str = "bootstrap",
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
):
    """Delta of every score of every condition against the ``control`` condition.

    One row per (condition, score): ``control_mean, mean, delta, lo, hi, n, n_control, paired,
    per_seed`` (seed -> delta), ``within_noise`` (the interval contains 0; None without one),
    ``benefit`` (delta signed so positive is better) and ``verdict`` (better / worse / noise /
    1 seed). Scores evaluated with a different task version or fingerprint than the control's
    are not compared; they are listed in ``.attrs["excluded"]``.
    """
    import pandas as pd

    if method not in ("bootstrap", "t"):
        raise AblateError(f"method: {method!r} is not one of bootstrap, t")
    if control not in set(scores["condition"]):
        if len(scores):
            raise AblateError(
                f"control {control!r} has no eval scores (conditions with scores: "
                f"{', '.join(dict.fromkeys(map(str, scores['condition'])))})"
            )
        raise AblateError(f"control {control!r}: no run has eval scores")
    rng = np.random.default_rng(seed)
    rows, excluded = [], []
    for score, sdf in scores.groupby("score", sort=False):
        ctrl = sdf[sdf["condition"] == control]
        if ctrl.empty:
            excluded.append(f"{score}: the control has no value")
            continue
        ident = (ctrl["version"].iloc[0], ctrl["fingerprint"].iloc[0])
        ctrl_by_seed = ctrl.groupby(_pair_column(ctrl))["value"].mean()
        lower = bool(sdf["lower_is_better"].iloc[0])
        for cond, cdf in sdf.groupby("condition", sort=False):
            if cond == control:
                continue
            bad = cdf[(cdf["version"] != ident[0]) | (cdf["fingerprint"] != ident[1])]
            for _, r in bad.iterrows():
                excluded.append(
                    f"{r['run']} {score}: task version/fingerprint "
                    f"{r['version']}/{r['fingerprint']} "
                    f"differ from the control's {ident[0]}/{ident[1]}"
                )
            cdf = cdf.drop(bad.index)
            if cdf.empty:
                continue
            by_seed = cdf.groupby(_pair_column(cdf))["value"].mean()
            common = sorted(set(by_seed.index) & set(ctrl_by_seed.index), key=str)
            # paired when the control ran every seed pair the condition ran (it may have more:
            # e.g. its A/A runs in other data orders, which then sit this comparison out)
            paired = len(common) >= 2 and len(common) == len(by_seed)
            if common:
                per_seed = {_plain(s): float(by_seed[s] - ctrl_by_seed[s]) for s in common}
            else:
                per_seed = {_plain(s): float(v - ctrl_by_seed.mean()) for s, v in by_seed.items()}
            a = by_seed.loc[common].to_numpy() if paired else by_seed.to_numpy()
            b = ctrl_by_seed.loc[common].to_numpy() if paired else ctrl_by_seed.to_numpy()
            if method == "bootstrap":
                lo, hi = bootstrap_ci(a, b, paired=paired, n_boot=n_boot, ci=ci, rng=rng)
            else:
                lo, hi = t_ci(a, b, paired=paired, ci=ci)
            control_mean = float(b.mean()) if paired else float(ctrl_by_seed.mean())
            delta = float(by_seed.mean()) - control_mean
            sign = -1.0 if lower else 1.0
            noise = None if np.isnan(lo) else bool(lo <= 0 <= hi)
            verdict = (
                "1 seed"
                if noise is None
                else "noise"
                if noise
                else ("better" if sign * delta > 0 else "worse")
            )
            rows.append(
                {
                    "condition": cond,
                    "score": score,
                    "task": cdf["task"].iloc[0],
                    "metric": cdf["metric"].iloc[0],
                    "control_mean": control_mean,
                    "mean": float(by_seed.mean()),
                    "delta": delta,
                    "lo": lo,
                    "hi": hi,
                    "n": len(by_seed),
                    "n_control": len(b),
                    "paired": paired,
                    "per_seed": per_seed,
                    "within_noise": noise,
                    "benefit": sign * delta,
                    "lower_is_better": lower,
                    "verdict": verdict,
                }
            )
    out = pd.DataFrame(
        rows,
        columns=[
            "condition",
            "score",
            "task",
            "metric",
            "control_mean",
            "mean",
            "delta",
            "lo",
            "hi",
            "n",
            "n_control",
            "paired",
            "per_seed",
            "within_noise",
            "benefit",
            "lower_is_better",
            "verdict",
        ],
    )
    out.attrs.update(control=control, method=method, ci=ci, excluded=excluded)
    return out


def capability_table(comparison, value: str = "delta"):
    """Capability x recipe: rows are scores, columns conditions, cells ``value`` (delta, benefit,
    lo, hi, verdict ...)."""
    if comparison.empty:
        import pandas as pd

        return pd.DataFrame()
    return comparison.pivot(index="score", columns="condition", values=value).reindex(
        index=list(dict.fromkeys(comparison["score"])),
        columns=list(dict.fromkeys(comparison["condition"])),
    )


def data_changes(runs, frame, control: str) -> dict:
    """Per condition: ``{domain: token change}`` of its plan's realised per-domain totals against
    the control's (mean over each condition's runs; zero changes left out)."""
    from ablate.analysis.runs import resolve_control

    control = resolve_control(frame, control)
    cond = dict(zip(frame["run"], frame["condition"]))
    totals: dict = {}
    for r in runs:
        totals.setdefault(cond[r.name], []).append(r.domain_tokens())
    mean = {
        c: {d: float(np.mean([t.get(d, 0) for t in ts])) for d in set().union(*ts)}
        for c, ts in totals.items()
    }
    base = mean[control]
    out = {}
    for c, m in mean.items():
        doms = sorted(set(m) | set(base))
        out[c] = {
            d: m.get(d, 0.0) - base.get(d, 0.0)
            for d in doms
            if abs(m.get(d, 0.0) - base.get(d, 0.0)) > 0.5
        }
    return out


def change_label(changes: dict) -> str:
    """``{"code.exec": 4096, "general": -1024}`` -> ``+code.exec −general`` (largest first)."""
    if not changes:
        return "(same data totals)"
    items = sorted(changes.items(), key=lambda kv: -abs(kv[1]))
    return " ".join(f"{'+' if v > 0 else '−'}{d}" for d, v in items)


def interaction_table(comparison, changes: dict):
    """Which data changes help or hurt which capability.

    Rows: the data a condition changed against the control (``change_label``: domains whose
    token totals went up or down, largest change first; conditions with the same change are
    averaged); columns: scores; cells: ``benefit`` (positive: better than the control). Returns
    ``(benefit, verdict)`` frames of the same shape; a verdict cell is better / worse / noise /
    1 seed (``mixed`` when merged conditions disagree).
    """
    import pandas as pd

    if comparison.empty:
        return pd.DataFrame(), pd.DataFrame()
    c = comparison.copy()
    c["change"] = [change_label(changes.get(cond, {})) for cond in c["condition"]]
    scores = list(dict.fromkeys(c["score"]))
    rows = list(dict.fromkeys(c["change"]))
    benefit = (
        c.groupby(["change", "score"])["benefit"]
        .mean()
        .unstack()
        .reindex(index=rows, columns=scores)
    )
    verdict = c.groupby(["change", "score"])["verdict"].agg(
        lambda v: v.iloc[0] if v.nunique() == 1 else "mixed"
    )
    verdict = verdict.unstack().reindex(index=rows, columns=scores)
    benefit.index.name = verdict.index.name = "data change"
    return benefit, verdict
