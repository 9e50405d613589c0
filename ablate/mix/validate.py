"""Honest errors of a mixture fit: k-fold out-of-fold (OOF) RMSE and Spearman per metric and
model, the seed-noise floor, and a verdict per metric.

Folds are drawn from a seed over *mixtures*, not runs: the seeds of one mixture are held out
together, so a model is never scored on a mixture it saw trained with another seed.

**Seed-noise floor**: the pooled SD of the runs that repeat one mixture with different seeds
(sqrt of the within-mixture variances pooled with their degrees of freedom). A perfect mixing law
has an OOF RMSE at this floor, never clearly below it.

**Verdict** (per metric, for each model): ``no better than noise`` when the model's OOF RMSE is at
least 0.9 x the OOF RMSE of predicting the training folds' mean (it explains under ~19 % of the
variance between mixtures), or its OOF Spearman correlation is not positive at p <= 0.05;
otherwise ``fits``. The model kept for a metric is the one with the lowest OOF RMSE, and the
metric's verdict is that model's.
"""

from __future__ import annotations

import sys

import numpy as np

from ablate.mix.models import model_class, model_kwargs

BASELINE_RATIO = 0.9  # OOF RMSE >= this x the mean predictor's: no better than noise
SPEARMAN_P = 0.05


def mixture_groups(W_ND, decimals: int = 9):
    """A group id per run: runs with the same weights (to ``decimals``) share one."""
    keys = np.round(np.asarray(W_ND, float), decimals)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    return inverse.reshape(-1)


def kfold_indices(W_ND, folds: int = 5, seed: int = 0) -> list:
    """``[(train_idx, test_idx)]``: ``folds`` folds of whole mixtures, deterministic in ``seed``."""
    groups = mixture_groups(W_ND)
    order = np.random.default_rng(seed).permutation(groups.max() + 1)
    fold_of_group = np.empty_like(order)
    fold_of_group[order] = np.arange(len(order)) % folds
    fold_N = fold_of_group[groups]
    return [(np.flatnonzero(fold_N != k), np.flatnonzero(fold_N == k)) for k in range(folds)]


def noise_floor(W_ND, Y_NM):
    """``(floor_M, repeats)``: the pooled seed SD per metric (NaN without repeated mixtures) and
    the number of mixtures run with more than one seed."""
    Y = np.asarray(Y_NM, float)
    groups = mixture_groups(W_ND)
    counts = np.bincount(groups)
    repeated = counts >= 2
    if not repeated.any():
        return np.full(Y.shape[1], np.nan), 0
    sums = np.zeros((len(counts), Y.shape[1]))
    np.add.at(sums, groups, Y)
    means = sums / counts[:, None]
    ss = np.zeros_like(sums)
    np.add.at(ss, groups, (Y - means[groups]) ** 2)
    dof = int((counts[repeated] - 1).sum())
    return np.sqrt(ss[repeated].sum(0) / dof), int(repeated.sum())


def _spearman(pred_N, y_N):
    from scipy.stats import spearmanr

    if np.ptp(pred_N) == 0 or np.ptp(y_N) == 0:
        return 0.0, 1.0
    rho, p = spearmanr(pred_N, y_N)
    return float(rho), float(p)


def verdict(rmse: float, baseline: float, rho: float, p: float) -> str:
    if rmse >= BASELINE_RATIO * baseline or rho <= 0 or p > SPEARMAN_P:
        return "no better than noise"
    return "fits"


def oof_predictions(name, W_ND, Y_NM, splits, interactions: bool, seed: int):
    """Out-of-fold predictions ``[N, M]`` of model ``name`` (every metric fitted per fold)."""
    cls = model_class(name)
    kw = model_kwargs(name, interactions, seed, uncertainty=False)
    P = np.empty_like(np.asarray(Y_NM, float))
    for train, test in splits:
        for m, model in enumerate(cls.fit_many(W_ND[train], Y_NM[train], **kw)):
            P[test, m] = model.predict(W_ND[test])[0]
    return P


def validate_models(
    W_ND,
    Y_NM,
    targets,
    models=("loglinear",),
    folds: int = 5,
    seed: int = 0,
    interactions: bool = True,
    progress=None,
):
    """Per metric: each model's ``oof_rmse``, ``baseline_rmse`` (the training mean's), ``spearman``,
    ``spearman_p``, ``verdict``; the metric's ``noise_floor``, ``chosen`` model and ``verdict``.
    Returns ``(report, oof)`` with ``oof[model]`` the ``[N, M]`` out-of-fold predictions."""
    import time

    W, Y = np.asarray(W_ND, float), np.asarray(Y_NM, float)
    splits = kfold_indices(W, folds, seed)
    baseline_P = np.empty_like(Y)
    for train, test in splits:
        baseline_P[test] = Y[train].mean(0)
    baseline = np.sqrt(((baseline_P - Y) ** 2).mean(0))
    floor, repeats = noise_floor(W, Y)
    oof, report = {}, {t: {"models": {}} for t in targets}
    for name in models:
        t0 = time.perf_counter()
        P = oof_predictions(name, W, Y, splits, interactions, seed)
        oof[name] = P
        rmse = np.sqrt(((P - Y) ** 2).mean(0))
        for m, t in enumerate(targets):
            rho, p = _spearman(P[:, m], Y[:, m])
            report[t]["models"][name] = {
                "oof_rmse": float(rmse[m]),
                "spearman": rho,
                "spearman_p": p,
                "verdict": verdict(rmse[m], baseline[m], rho, p),
            }
        if progress:
            print(
                f"{name}: {folds}-fold out-of-fold fit of {len(targets)} metric(s) on "
                f"{len(Y)} runs in {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    for m, t in enumerate(targets):
        entry = report[t]
        chosen = min(models, key=lambda n: entry["models"][n]["oof_rmse"])
        entry.update(
            baseline_rmse=float(baseline[m]),
            noise_floor=None if np.isnan(floor[m]) else float(floor[m]),
            noise_repeats=repeats,
            chosen=chosen,
            verdict=entry["models"][chosen]["verdict"],
        )
    return report, oof
