"""Learning curves from evaluation inside training: a score against tokens trained, and the two
numbers that summarise a curve so arms can be compared over seeds like any end-point score.

A run that sets ``cadence.eval_every`` writes ``eval/step_<N>.json`` every N steps and at the
end; each file's scores at ``N x seq_length x global_batch_size`` tokens make one point of a
curve. End-point accuracy separates two data mixtures only once both have learnt (or failed to
learn) a skill; the curve separates them while one is learning it and the other is not yet:

* ``curve/auc/<score>``: the area under the curve divided by the tokens it spans (the mean of
  the score over training, trapezoid rule over the evaluated points). Same units as the score,
  and the same direction (higher accuracy, lower bits per byte).
* ``curve/tokens_to_<t>/<score>``: tokens trained when an accuracy-like score (a fraction,
  higher is better) first reaches the threshold ``t``, linearly interpolated between the two
  evaluations around the crossing. A run that never reaches it gets its last evaluated token
  count (censored: it needed at least that many); ``curve/reached_<t>/<score>`` is 1 or 0 so a
  reader can see how many were censored. Lower is better.

Both need at least two evaluated points per run; a run with fewer contributes no curve scores.
Runs of one comparison should share the evaluation grid (same ``eval_every`` and budget), which
the study recipes do; with different grids, AUC is still the mean over each run's own span.
"""

from __future__ import annotations

import numpy as np

from ablate.analysis.capability import SCORE_COLUMNS, pair_key, score_entries, score_label

TASK = "curve"
DEFAULT_THRESHOLDS = (0.25, 0.5)


def tokens_per_step(run) -> int:
    training = run.recipe.get("training", {})
    return int(training["seq_length"]) * int(training["global_batch_size"])


def curve_frame(runs, frame=None):
    """Tidy curve points: one row per (run, evaluated step, score).

    Columns: ``run, condition, seed, step, tokens, task, metric, score, value, version,
    fingerprint, samples``.
    """
    import pandas as pd

    from ablate.analysis.runs import runs_frame

    frame = runs_frame(runs) if frame is None else frame
    cond = dict(zip(frame["run"], frame["condition"]))
    rows = []
    for r in runs:
        steps = r.eval_steps()
        if not steps:
            continue
        per_step = tokens_per_step(r)
        for step in steps:
            body = r.eval_results(step)
            for task, t, metric, value in score_entries(body):
                rows.append(
                    {
                        "run": r.name,
                        "condition": cond.get(r.name, r.name),
                        "seed": r.seed,
                        "data_seed": r.data_seed,
                        "pair": pair_key(r),
                        "step": step,
                        "tokens": step * per_step,
                        "task": task,
                        "metric": metric,
                        "score": score_label(task, metric),
                        "value": float(value),
                        "version": t.get("version"),
                        "fingerprint": t.get("fingerprint"),
                        "samples": t.get("samples"),
                    }
                )
    columns = [*SCORE_COLUMNS[:6], "tokens", *SCORE_COLUMNS[6:-1]]  # no lower_is_better yet
    return pd.DataFrame(rows, columns=columns).sort_values(["run", "score", "step"], kind="stable")


def is_accuracy(score: str) -> bool:
    """A fraction where higher is better (thresholds make sense on it)."""
    return "accuracy" in score


def auc(tokens_P, values_P) -> float:
    """Mean of the score over the tokens the curve spans (trapezoid rule)."""
    t, v = np.asarray(tokens_P, float), np.asarray(values_P, float)
    if len(t) < 2 or t[-1] <= t[0]:
        return float("nan")
    return float(np.trapezoid(v, t) / (t[-1] - t[0]))


def tokens_to(tokens_P, values_P, threshold: float) -> tuple[float, bool]:
    """(tokens at the first crossing of ``threshold``, reached?); censored at the last point."""
    t, v = np.asarray(tokens_P, float), np.asarray(values_P, float)
    above = np.nonzero(v >= threshold)[0]
    if not len(above):
        return float(t[-1]), False
    i = int(above[0])
    if i == 0:
        return float(t[0]), True
    # linear interpolation between the last point below and the first at or above
    frac = (threshold - v[i - 1]) / (v[i] - v[i - 1])
    return float(t[i - 1] + frac * (t[i] - t[i - 1])), True


def curve_scores(curves, thresholds=DEFAULT_THRESHOLDS):
    """Per (run, score) with ≥ 2 points: the AUC, and for accuracy-like scores the tokens to each
    threshold and whether it was reached, as rows shaped like ``capability.scores_frame``'s."""
    import pandas as pd

    from ablate.analysis.capability import lower_is_better

    rows = []
    for (run, score), g in curves.groupby(["run", "score"], sort=False):
        if len(g) < 2:
            continue
        first = g.iloc[-1]
        t, v = g["tokens"].to_numpy(), g["value"].to_numpy()
        base = {
            "run": run,
            "condition": first["condition"],
            "seed": first["seed"],
            "data_seed": first["data_seed"],
            "pair": first["pair"],
            "step": int(first["step"]),
            "task": TASK,
            "version": first["version"],
            "fingerprint": first["fingerprint"],
            "samples": first["samples"],
        }
        found = [(f"auc/{score}", auc(t, v), lower_is_better(score))]
        if is_accuracy(score):
            for thr in thresholds:
                at, reached = tokens_to(t, v, thr)
                found.append((f"tokens_to_{thr:g}/{score}", at, True))
                found.append((f"reached_{thr:g}/{score}", float(reached), False))
        for metric, value, lower in found:
            rows.append(
                {
                    **base,
                    "metric": metric,
                    "score": f"{TASK}/{metric}",
                    "value": value,
                    "lower_is_better": lower,
                }
            )
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)
