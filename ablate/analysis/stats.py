"""Statistics for ablation verdicts: intervals, multiple-comparison corrections, power,
dose-response fits and false-positive calibration, vectorised over many comparisons.

Shapes are in the names: ``K`` comparisons (a condition x score, a metric), ``S`` seeds, ``N``
observations (one per run). Everything is numpy + scipy, with no global random state: the one
function that draws numbers (``simulate``) takes its own seed.

Conventions a reader of a report relies on:

* **Paired t** (``paired_t``): per comparison the mean of the per-seed deltas, its standard error
  with the row's own count of non-NaN seeds (NaN = a missing seed), Student's t with ``n - 1``
  degrees of freedom, two-sided p. A row whose deltas are all equal (standard error 0) gets p = 1
  when the mean is 0 and p = 0 otherwise, with a zero-width interval: no noise was observed.
* **Corrections** (``adjust_p``, ``adjusted_intervals``, ``correct``): the family is the last axis.
  Holm controls the family-wise error rate; its intervals are Bonferroni simultaneous intervals
  (level ``1 - alpha/m``), which are valid whatever is selected but can be slightly more
  conservative than Holm's rejections (a Holm rejection whose Bonferroni interval touches 0 is
  possible). Benjamini-Hochberg (step-up) controls the false discovery rate; its intervals are
  Benjamini & Yekutieli's (2005) false-coverage-rate intervals, level ``1 - R alpha/m`` with ``R``
  the number of BH rejections. BY define them for the selected comparisons only; here the same
  level is used for every comparison so that a table has one level (for the non-selected ones
  this is a descriptive interval, not an FCR guarantee). With no rejection (R = 0) the level is
  ``1 - alpha/m`` (as if R = 1), the most conservative choice. ``method="auto"`` picks Holm for
  families of at most 20 comparisons (there FWER control costs little power) and BH above (where
  Holm's power collapses and a bounded share of false discoveries is the useful guarantee).
* **Power** (``power``, ``mde``, ``seeds_needed``): a two-sided paired t test at level alpha over
  ``n`` seeds, exact through the noncentral t distribution (noncentrality ``effect sqrt(n)/sd``).
* **Dose-response** (``dose_response``): a slope over a numeric axis (OLS, or a binomial GLM with
  quasi-binomial dispersion ``max(1, Pearson phi)`` for proportions), and a monotonicity verdict
  from the slope and the adjacent-step tests (see the function).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as st

from ablate.errors import AblateError, show

AUTO_HOLM_MAX = 20  # method="auto": Holm up to this family size, BH above
METHODS = ("holm", "bh")
MONOTONICITY = ("increasing", "decreasing", "not monotone", "no trend")
_NEED_NUMBERS = "a dose-response axis needs numbers (a density, a share, a token budget)"


# ---------------------------------------------------------------------------------------------
# intervals and tests


@dataclass(frozen=True)
class TTest:
    """Per comparison: mean difference, its standard error, degrees of freedom, t, two-sided p
    and the ``ci`` interval; ``n_K`` the seeds used (paired) or ``na_K + nb_K`` (Welch)."""

    mean_K: np.ndarray
    se_K: np.ndarray
    df_K: np.ndarray
    t_K: np.ndarray
    p_K: np.ndarray
    lo_K: np.ndarray
    hi_K: np.ndarray
    n_K: np.ndarray
    ci: float


def _check_ci(ci, what="ci") -> float:
    if isinstance(ci, bool) or not isinstance(ci, numbers.Real) or not 0 < ci < 1:
        raise AblateError(f"{what}: {show(ci)} is not a level between 0 and 1 (e.g. 0.95)")
    return float(ci)


def _rows(x, what: str) -> np.ndarray:
    """A (K, S) float array; a 1-D input is one comparison."""
    try:
        arr = np.array(x, dtype=float)
    except (TypeError, ValueError):
        raise AblateError(f"{what}: {show(x)} is not an array of numbers") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise AblateError(f"{what}: shape {arr.shape} is not (comparisons, seeds)")
    if np.isinf(arr).any():
        raise AblateError(f"{what}: holds an infinite value; seeds' values must be finite or NaN")
    return arr


def _need_two(n_K, labels, arm: str = "") -> None:
    """One line naming the first comparison with fewer than 2 seeds."""
    bad = np.flatnonzero(n_K < 2)
    if not len(bad):
        return
    i = int(bad[0])
    name = f"{labels[i]!r}" if labels is not None else f"comparison {i}"
    more = f" ({len(bad)} comparisons in all)" if len(bad) > 1 else ""
    raise AblateError(
        f"an interval needs at least 2 seeds per arm; got {int(n_K[i])}{arm} for {name}{more}: "
        "run more seeds or report it without an interval"
    )


def _check_labels(labels, K: int):
    if labels is not None and len(labels) != K:
        raise AblateError(f"labels: {len(labels)} labels for {K} comparisons")
    return labels


def _sd(x_KS) -> np.ndarray:
    """Row standard deviations (ddof 1, NaN skipped); rounding noise of an all-equal row (0.2 x 3
    has a mean of 0.19999999999999998) is set to exactly 0, so that row reads as noise-free."""
    sd_K = np.nanstd(x_KS, 1, ddof=1)
    with np.errstate(all="ignore"):
        scale_K = np.nanmax(np.abs(x_KS), 1)
    return np.where(sd_K <= 1e-12 * scale_K, 0.0, sd_K)


def _t_from(mean_K, se_K, df_K, ci):
    """t, two-sided p and the interval; se = 0 means no noise was seen (see the module doc)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_K = np.where(
            se_K > 0, mean_K / se_K, np.where(mean_K == 0, 0.0, np.sign(mean_K) * np.inf)
        )
    p_K = 2 * st.t.sf(np.abs(t_K), df_K)
    q_K = st.t.ppf(0.5 + ci / 2, df_K)
    return t_K, p_K, mean_K - q_K * se_K, mean_K + q_K * se_K


def paired_t(deltas_KS, *, ci: float = 0.95, labels=None) -> TTest:
    """Paired t test and interval per row of per-seed deltas (condition - control); NaN = a
    missing seed. Fewer than 2 seeds in a row is an ``AblateError`` naming it (``labels``)."""
    ci = _check_ci(ci)
    d_KS = _rows(deltas_KS, "deltas")
    labels = _check_labels(labels, d_KS.shape[0])
    n_K = (~np.isnan(d_KS)).sum(1)
    _need_two(n_K, labels)
    mean_K = np.nanmean(d_KS, 1)
    se_K = _sd(d_KS) / np.sqrt(n_K)
    df_K = (n_K - 1).astype(float)
    t_K, p_K, lo_K, hi_K = _t_from(mean_K, se_K, df_K, ci)
    return TTest(mean_K, se_K, df_K, t_K, p_K, lo_K, hi_K, n_K, ci)


def welch_t(a_KS, b_KS, *, ci: float = 0.95, labels=None) -> TTest:
    """Welch's unpaired t test of mean(a) - mean(b) per row; NaN = a missing seed. The two arms
    may have different seed counts (``a_KS`` and ``b_KS`` may differ in S)."""
    ci = _check_ci(ci)
    a, b = _rows(a_KS, "a"), _rows(b_KS, "b")
    if a.shape[0] != b.shape[0]:
        raise AblateError(f"a and b: {a.shape[0]} and {b.shape[0]} comparisons; they must match")
    labels = _check_labels(labels, a.shape[0])
    na_K, nb_K = (~np.isnan(a)).sum(1), (~np.isnan(b)).sum(1)
    _need_two(na_K, labels, " in the first arm")
    _need_two(nb_K, labels, " in the second arm")
    va_K, vb_K = _sd(a) ** 2 / na_K, _sd(b) ** 2 / nb_K
    mean_K = np.nanmean(a, 1) - np.nanmean(b, 1)
    se_K = np.sqrt(va_K + vb_K)
    with np.errstate(divide="ignore", invalid="ignore"):
        df_K = (va_K + vb_K) ** 2 / (va_K**2 / (na_K - 1) + vb_K**2 / (nb_K - 1))
    # both arms constant: Welch-Satterthwaite is 0/0; the pooled df is the natural limit
    df_K = np.where(se_K > 0, df_K, na_K + nb_K - 2.0)
    t_K, p_K, lo_K, hi_K = _t_from(mean_K, se_K, df_K, ci)
    return TTest(mean_K, se_K, df_K, t_K, p_K, lo_K, hi_K, na_K + nb_K, ci)


# ---------------------------------------------------------------------------------------------
# multiple comparisons


def family_size_ok(m) -> bool:
    """Whether a family of ``m`` comparisons can be corrected (m >= 2); callers skip otherwise."""
    return int(m) >= 2


def _check_method(method: str, auto: bool = False) -> str:
    allowed = METHODS + (("auto",) if auto else ())
    if method not in allowed:
        raise AblateError(f"method: {show(method)} is not one of {', '.join(allowed)}")
    return method


def _check_p(p) -> np.ndarray:
    try:
        p = np.array(p, dtype=float)
    except (TypeError, ValueError):
        raise AblateError(f"p-values: {show(p)} is not an array of numbers") from None
    if p.ndim == 0:
        p = p[None]
    bad = (p < 0) | (p > 1)
    if bad.any():
        raise AblateError(
            f"p-values: {show(float(p[bad][0]))} is outside [0, 1]; a p-value is a probability"
        )
    return p


def adjust_p(p_K, method: str) -> np.ndarray:
    """Holm (``holm``) or Benjamini-Hochberg (``bh``) adjusted p-values; the family is the last
    axis (a 2-D input is several families). NaN passes through and is not counted in ``m``.
    Adjusted p-values are monotone in the raw ones and capped at 1."""
    _check_method(method)
    p = _check_p(p_K)
    order = np.argsort(p, axis=-1, kind="stable")  # NaN sorts last
    ps = np.take_along_axis(p, order, -1)
    m = (~np.isnan(p)).sum(-1, keepdims=True)
    rank = np.arange(1, p.shape[-1] + 1)  # 1-based position in the sorted family
    if method == "holm":
        adj = np.maximum.accumulate((m - rank + 1) * ps, axis=-1)
    else:
        with np.errstate(invalid="ignore"):
            scaled = np.where(np.isnan(ps), np.inf, m / rank * ps)
        adj = np.flip(np.minimum.accumulate(np.flip(scaled, -1), axis=-1), -1)
        adj = np.where(np.isnan(ps), np.nan, adj)
    adj = np.minimum(adj, 1.0)
    out = np.empty_like(p)
    np.put_along_axis(out, order, adj, -1)
    return out


def _family_m(p) -> np.ndarray:
    return (~np.isnan(p)).sum(-1, keepdims=True)


def adjusted_intervals(mean_K, se_K, df_K, p_K, method: str, ci: float = 0.95):
    """Multiplicity-adjusted t intervals ``(lo_K, hi_K, level)``: Bonferroni-level simultaneous
    intervals for Holm, Benjamini-Yekutieli FCR intervals (level 1 - R alpha/m, R = BH rejections,
    the same level for every comparison) for BH; see the module docstring. ``level`` has the
    family axis kept as length 1. Comparisons with a NaN p-value get NaN intervals."""
    _check_method(method)
    ci = _check_ci(ci)
    p = _check_p(p_K)
    mean_K, se_K, df_K = (np.asarray(x, float) for x in (mean_K, se_K, df_K))
    alpha = 1 - ci
    m = _family_m(p)
    if method == "holm":
        r = np.ones_like(m)
    else:
        r = np.maximum((adjust_p(p, "bh") <= alpha).sum(-1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = 1 - r * alpha / np.maximum(m, 1)
    q = st.t.ppf(0.5 + level / 2, df_K)
    lo, hi = mean_K - q * se_K, mean_K + q * se_K
    missing = np.isnan(p)
    return np.where(missing, np.nan, lo), np.where(missing, np.nan, hi), level


@dataclass(frozen=True)
class Correction:
    """A corrected family: raw and adjusted p and intervals, the rejections at ``1 - ci`` before
    and after correction, the method used and the family size (non-NaN p-values)."""

    method: str
    family_size: int | np.ndarray
    ci: float
    level_adj: float | np.ndarray  # the adjusted intervals' confidence level
    p_K: np.ndarray
    p_adj_K: np.ndarray
    lo_K: np.ndarray
    hi_K: np.ndarray
    lo_adj_K: np.ndarray
    hi_adj_K: np.ndarray
    reject_raw_K: np.ndarray
    reject_adj_K: np.ndarray


def resolve_method(method: str, m: int) -> str:
    """``auto`` -> Holm for families of at most ``AUTO_HOLM_MAX`` comparisons, BH above."""
    _check_method(method, auto=True)
    if method != "auto":
        return method
    return "holm" if m <= AUTO_HOLM_MAX else "bh"


def correct(p_K, mean_K, se_K, df_K, method: str = "auto", ci: float = 0.95) -> Correction:
    """Correct one family (or several along the last axis, all of the same size) of t tests.

    A family of fewer than 2 comparisons is an ``AblateError``: check ``family_size_ok`` first to
    skip it. ``auto`` resolves on the family size (Holm up to 20, BH above)."""
    ci = _check_ci(ci)
    p = _check_p(p_K)
    mean_K, se_K, df_K = (
        np.broadcast_to(np.asarray(x, float), p.shape) for x in (mean_K, se_K, df_K)
    )
    m = _family_m(p)[..., 0]
    if (m != m.flat[0]).any() and method == "auto":
        raise AblateError(
            "method: 'auto' needs families of one size; got sizes "
            f"{sorted(set(m.ravel().tolist()))}; name holm or bh"
        )
    m0 = int(m.min())
    if not family_size_ok(m0):
        raise AblateError(
            f"a family of {m0} comparison{'s' if m0 != 1 else ''}: nothing to correct; "
            "report it uncorrected (check family_size_ok first to skip it)"
        )
    method = resolve_method(method, int(m.max()))
    alpha = 1 - ci
    q = st.t.ppf(0.5 + ci / 2, df_K)
    p_adj = adjust_p(p, method)
    lo_adj, hi_adj, level = adjusted_intervals(mean_K, se_K, df_K, p, method, ci)
    return Correction(
        method=method,
        family_size=int(m) if m.ndim == 0 else m,
        ci=ci,
        level_adj=float(level.ravel()[0]) if level.size == 1 else level[..., 0],
        p_K=p,
        p_adj_K=p_adj,
        lo_K=mean_K - q * se_K,
        hi_K=mean_K + q * se_K,
        lo_adj_K=lo_adj,
        hi_adj_K=hi_adj,
        reject_raw_K=p <= alpha,
        reject_adj_K=p_adj <= alpha,
    )


def correct_t(test: TTest, method: str = "auto") -> Correction:
    """``correct`` on the output of ``paired_t`` / ``welch_t`` (at the test's level)."""
    return correct(test.p_K, test.mean_K, test.se_K, test.df_K, method, test.ci)


# ---------------------------------------------------------------------------------------------
# power


def _check_n(n) -> np.ndarray:
    arr = np.asarray(n)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise AblateError(f"n: {show(n)} is not a number of seeds")
    if (arr < 2).any() or (arr != np.round(arr)).any():
        bad = arr[(arr < 2) | (arr != np.round(arr))].ravel()[0]
        raise AblateError(
            f"an interval needs at least 2 seeds per arm; got n={show(bad.item())}: "
            "power is defined for whole seed counts >= 2"
        )
    return arr.astype(float)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
        raise AblateError(f"alpha: {show(alpha)} is not a level between 0 and 1 (e.g. 0.05)")
    return float(alpha)


def _check_sd(sd) -> np.ndarray:
    sd = np.asarray(sd, float)
    if not (np.isfinite(sd) & (sd > 0)).all():
        raise AblateError(
            f"sd: {show(sd.ravel()[~(np.isfinite(sd.ravel()) & (sd.ravel() > 0))][0].item())} "
            "is not a positive seed-to-seed standard deviation"
        )
    return sd


def _power_nc(nc, df, alpha):
    q = st.t.ppf(1 - alpha / 2, df)
    # scipy's noncentral t returns NaN for some far-tail values (df = 1, nc = 8: the lower tail,
    # ~1e-12); the far tail of a shifted distribution is ~0, so read NaN there as 0
    upper = np.nan_to_num(st.nct.sf(q, df, np.abs(nc)), nan=0.0)
    lower = np.nan_to_num(st.nct.cdf(-q, df, np.abs(nc)), nan=0.0)
    return upper + lower


def power(effect, sd, n, alpha: float = 0.05):
    """Power of a two-sided paired t test at level ``alpha`` with ``n`` seeds when the true mean
    delta is ``effect`` and the per-seed deltas have standard deviation ``sd`` (broadcasts)."""
    alpha = _check_alpha(alpha)
    n, sd = _check_n(n), _check_sd(sd)
    effect = np.asarray(effect, float)
    out = _power_nc(effect * np.sqrt(n) / sd, n - 1, alpha)
    return out.item() if np.ndim(out) == 0 else out


def _check_target(target) -> float:
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < target < 1:
        raise AblateError(f"power: {show(target)} is not a probability between 0 and 1 (e.g. 0.8)")
    return float(target)


def _nc_for_power(df: float, alpha: float, target: float) -> float:
    """The noncentrality giving ``target`` power (it depends on n and alpha only, not on sd)."""
    if target <= alpha:
        return 0.0
    hi = 1.0
    while _power_nc(hi, df, alpha) < target:
        hi *= 2
    return optimize.brentq(lambda nc: _power_nc(nc, df, alpha) - target, 0.0, hi, xtol=1e-10)


def mde(sd, n, alpha: float = 0.05, power: float = 0.8):
    """Minimum detectable effect: the smallest |mean delta| a two-sided paired t test at level
    ``alpha`` over ``n`` seeds detects with probability ``power`` (vectorised over sd and n)."""
    alpha, target = _check_alpha(alpha), _check_target(power)
    n, sd = _check_n(n), _check_sd(sd)
    n_b, sd_b = np.broadcast_arrays(n, sd)
    nc = {v: _nc_for_power(v - 1, alpha, target) for v in np.unique(n_b).tolist()}
    nc_b = np.vectorize(nc.__getitem__, otypes=[float])(n_b) if n_b.size else n_b
    out = nc_b * sd_b / np.sqrt(n_b)
    return out.item() if np.ndim(out) == 0 else out


def seeds_needed(effect, sd, alpha: float = 0.05, power: float = 0.8, max_n: int = 1000):
    """Smallest n >= 2 seeds at which a paired t test detects ``effect`` with probability
    ``power``; ``inf`` when more than ``max_n`` would be needed (or the effect is 0)."""
    alpha, target = _check_alpha(alpha), _check_target(power)
    sd = _check_sd(sd)
    max_n = int(_check_n(max_n))
    effect, sd = np.broadcast_arrays(np.abs(np.asarray(effect, float)), sd)
    out = np.full(effect.shape, np.inf)
    todo = np.ones(effect.shape, bool)
    start = 2
    # doubling blocks of n: power rises with n, so the first n reaching the target is the answer
    while todo.any() and start <= max_n:
        stop = min(max_n, max(2 * start, 16))
        n_B = np.arange(start, stop + 1, dtype=float)
        e, s = effect[todo][:, None], sd[todo][:, None]
        ok = _power_nc(e * np.sqrt(n_B) / s, n_B - 1, alpha) >= target
        found = ok.any(1)
        idx = np.flatnonzero(todo)
        out.flat[idx[found]] = n_B[ok[found].argmax(1)]
        todo.flat[idx[found]] = False
        start = stop + 1
    return out.item() if np.ndim(out) == 0 else out


# ---------------------------------------------------------------------------------------------
# dose-response


@dataclass(frozen=True)
class DoseResponse:
    """A slope over a numeric axis and the monotonicity verdict.

    ``slope``/``lo``/``hi``/``p``: per unit of dose (log-odds per unit for ``logistic``);
    ``levels`` the sorted distinct doses with ``means`` (plain mean of the runs' values) and
    ``fitted`` (the fit's value) per level; ``step_*`` the adjacent-level differences (level i+1
    minus level i) with their intervals; ``dispersion`` the quasi-binomial phi (1 for linear)."""

    kind: str
    slope: float
    lo: float
    hi: float
    p: float
    intercept: float
    n: int
    levels: np.ndarray
    means: np.ndarray
    fitted: np.ndarray
    step_delta: np.ndarray
    step_lo: np.ndarray
    step_hi: np.ndarray
    monotonicity: str
    dispersion: float
    ci: float


def _doses(dose_N, name: str) -> np.ndarray:
    values = dose_N.tolist() if isinstance(dose_N, np.ndarray) else list(dose_N)
    for v in values:
        ok = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
        if not ok or not math.isfinite(v):
            raise AblateError(f"{name}: dose {show(v)} is not a number; {_NEED_NUMBERS}")
    return np.array(values, dtype=float)


def _values(value_N, n: int, name: str) -> np.ndarray:
    try:
        y = np.array(value_N, dtype=float)
    except (TypeError, ValueError):
        raise AblateError(f"{name}: values {show(value_N)} are not numbers") from None
    if y.shape != (n,):
        raise AblateError(f"{name}: {y.size} values for {n} doses; one value per run")
    if not np.isfinite(y).all():
        raise AblateError(
            f"{name}: value {show(y[~np.isfinite(y)][0].item())} is not a finite score"
        )
    return y


def _ols(x_N, y_N, ci):
    n = len(x_N)
    xm, ym = x_N.mean(), y_N.mean()
    sxx = ((x_N - xm) ** 2).sum()
    slope = ((x_N - xm) * (y_N - ym)).sum() / sxx
    intercept = ym - slope * xm
    rss = ((y_N - intercept - slope * x_N) ** 2).sum()
    se = math.sqrt(rss / (n - 2) / sxx)
    _, p, lo, hi = _t_from(np.array(slope), np.array(se), np.array(n - 2.0), ci)
    return float(slope), float(lo), float(hi), float(p), float(intercept), 1.0


def _logit_fit(x_N, y_N, trials_N, ci, name):
    """Binomial GLM (logit link) by IRLS; quasi-binomial dispersion max(1, Pearson phi)."""
    X = np.column_stack([np.ones_like(x_N), x_N])
    pbar = np.clip((y_N * trials_N).sum() / trials_N.sum(), 1e-6, 1 - 1e-6)
    beta = np.array([math.log(pbar / (1 - pbar)), 0.0])
    for _ in range(100):
        eta = X @ beta
        mu = 1 / (1 + np.exp(-eta))
        w = trials_N * mu * (1 - mu)
        if (w <= 1e-300).any():
            break
        z = eta + (y_N - mu) / (mu * (1 - mu))
        new = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w * z))
        done = np.abs(new - beta).max() < 1e-10 * (1 + np.abs(beta).max())
        beta = new
        if done:
            break
    else:
        done = False
    if not done or not np.isfinite(beta).all() or abs(beta[1]) > 50 / max(np.ptp(x_N), 1e-300):
        raise AblateError(
            f"{name}: the logistic fit does not converge (the proportions are all 0 or 1, or "
            "separate at a dose); use kind='linear'"
        )
    mu = 1 / (1 + np.exp(-(X @ beta)))
    n = len(x_N)
    phi = max(1.0, float((trials_N * (y_N - mu) ** 2 / (mu * (1 - mu))).sum() / (n - 2)))
    cov = phi * np.linalg.inv(X.T @ ((trials_N * mu * (1 - mu))[:, None] * X))
    _, p, lo, hi = _t_from(np.array(beta[1]), np.array(math.sqrt(cov[1, 1])), np.array(n - 2.0), ci)
    return float(beta[1]), float(lo), float(hi), float(p), float(beta[0]), phi


def _step_tests(dose_N, y_N, group_N, levels, ci):
    """Adjacent-level differences: paired over ``group_N`` where at least 2 groups are present at
    both levels, else Welch."""
    deltas, los, his = [], [], []
    for a, b in zip(levels[:-1], levels[1:]):
        ia, ib = dose_N == a, dose_N == b
        test = None
        if group_N is not None:
            ga = dict(zip(group_N[ia].tolist(), y_N[ia].tolist()))
            gb = dict(zip(group_N[ib].tolist(), y_N[ib].tolist()))
            both = [g for g in ga if g in gb]
            if len(both) >= 2 and len(ga) == ia.sum() and len(gb) == ib.sum():
                test = paired_t(np.array([gb[g] - ga[g] for g in both]), ci=ci)
        if test is None:
            test = welch_t(y_N[ib], y_N[ia], ci=ci)
        deltas.append(test.mean_K[0])
        los.append(test.lo_K[0])
        his.append(test.hi_K[0])
    return np.array(deltas), np.array(los), np.array(his)


def _verdict(lo, hi, step_lo, step_hi) -> str:
    up, down = (step_lo > 0).any(), (step_hi < 0).any()
    if lo > 0:
        return "not monotone" if down else "increasing"
    if hi < 0:
        return "not monotone" if up else "decreasing"
    return "not monotone" if up and down else "no trend"


def dose_response(
    dose_N,
    value_N,
    *,
    group_N=None,
    kind: str = "linear",
    trials_N=None,
    ci: float = 0.95,
    name: str = "dose",
) -> DoseResponse:
    """Fit a score against a numeric axis over N runs (one dose and one value per run).

    ``linear``: OLS with a t interval on the slope (n - 2 df). ``logistic``: values are
    proportions with ``trials_N`` probes scored; a binomial GLM in the dose by IRLS, its slope's
    standard error scaled by the quasi-binomial dispersion max(1, Pearson phi) so that
    seed-to-seed overdispersion widens the interval, t interval with n - 2 df.

    ``monotonicity``: "increasing" when the slope's interval is above 0 and no adjacent pair of
    levels shows a decrease whose own ``ci`` interval excludes 0 (paired over ``group_N``, e.g.
    seeds, when at least 2 groups sit at both levels, else Welch); "decreasing" likewise; "not
    monotone" when a step goes significantly against a significant slope, or steps go
    significantly both ways without one; "no trend" otherwise. With 2 levels the verdict follows
    the slope. The step tests are not corrected for multiplicity (which makes "increasing" the
    harder verdict to reach, not the easier). Every level needs at least 2 runs: seed-to-seed
    noise is what the intervals measure. ``name`` (the axis) is used in messages.
    """
    ci = _check_ci(ci)
    if kind not in ("linear", "logistic"):
        raise AblateError(f"kind: {show(kind)} is not one of linear, logistic")
    x = _doses(dose_N, name)
    y = _values(value_N, len(x), name)
    levels, counts = np.unique(x, return_counts=True)
    if len(levels) < 2:
        got = f"one level ({show(levels[0].item())})" if len(levels) else "no runs"
        raise AblateError(f"{name}: a dose-response fit needs at least 2 distinct doses; got {got}")
    if (counts < 2).any():
        i = int(np.argmax(counts < 2))
        raise AblateError(
            f"{name}: an interval needs at least 2 seeds per arm; got 1 at dose "
            f"{show(levels[i].item())}: run more seeds there"
        )
    groups = None
    if group_N is not None:
        groups = np.asarray(group_N, dtype=object)
        if groups.shape != (len(x),):
            raise AblateError(f"{name}: {groups.size} groups for {len(x)} doses; one per run")
    if kind == "linear":
        slope, lo, hi, p, intercept, phi = _ols(x, y, ci)
        fitted = intercept + slope * levels
    else:
        if trials_N is None:
            raise AblateError(f"{name}: kind='logistic' needs trials_N (probes scored per run)")
        trials = np.asarray(trials_N, float)
        if trials.shape != (len(x),) or not (np.isfinite(trials) & (trials > 0)).all():
            raise AblateError(f"{name}: trials_N must be one positive count per run")
        if ((y < 0) | (y > 1)).any():
            raise AblateError(
                f"{name}: value {show(y[(y < 0) | (y > 1)][0].item())} is not a proportion; "
                "kind='logistic' fits proportions in [0, 1]"
            )
        slope, lo, hi, p, intercept, phi = _logit_fit(x, y, trials, ci, name)
        fitted = 1 / (1 + np.exp(-(intercept + slope * levels)))
    means = np.array([y[x == v].mean() for v in levels])
    if len(levels) >= 3:
        step_d, step_lo, step_hi = _step_tests(x, y, groups, levels, ci)
    else:
        step_d, step_lo, step_hi = np.diff(means), np.full(1, np.nan), np.full(1, np.nan)
    verdict = _verdict(lo, hi, step_lo, step_hi)
    return DoseResponse(
        kind, slope, lo, hi, p, intercept, len(x), levels, means, fitted,
        step_d, step_lo, step_hi, verdict, phi, ci,
    )  # fmt: skip


@dataclass(frozen=True)
class LinearFits:
    """Per row of ``values_KN``: OLS slope on the dose with its t interval and two-sided p."""

    slope_K: np.ndarray
    se_K: np.ndarray
    lo_K: np.ndarray
    hi_K: np.ndarray
    p_K: np.ndarray
    intercept_K: np.ndarray
    n_K: np.ndarray
    ci: float


def dose_response_many(dose_N, values_KN, *, ci: float = 0.95, name: str = "dose", labels=None):
    """Linear dose-response slopes of K metrics over the same N runs, vectorised; NaN in a row =
    that run has no value for that metric. A row needs 3 values over 2 distinct doses."""
    ci = _check_ci(ci)
    x_N = _doses(dose_N, name)
    Y = _rows(values_KN, "values")
    if Y.shape[1] != len(x_N):
        raise AblateError(f"{name}: {Y.shape[1]} values per row for {len(x_N)} doses")
    labels = _check_labels(labels, Y.shape[0])
    M = ~np.isnan(Y)
    n_K = M.sum(1)
    X = np.where(M, x_N, 0.0)
    Yz = np.where(M, Y, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        xm = X.sum(1) / n_K
        ym = Yz.sum(1) / n_K
        dx = np.where(M, x_N - xm[:, None], 0.0)
        sxx = (dx**2).sum(1)
        bad = (n_K < 3) | ~(sxx > 1e-12 * np.maximum(1.0, (X**2).sum(1)))
        if bad.any():
            i = int(np.argmax(bad))
            who = f"{labels[i]!r}" if labels is not None else f"row {i}"
            raise AblateError(
                f"{name}: {who} has {int(n_K[i])} values over "
                f"{len(np.unique(x_N[M[i]]))} distinct doses; a slope with an interval needs at "
                "least 3 values over 2 doses"
            )
        slope = (dx * (Yz - ym[:, None])).sum(1) / sxx
        intercept = ym - slope * xm
        resid = np.where(M, Y - intercept[:, None] - slope[:, None] * x_N, 0.0)
        se = np.sqrt((resid**2).sum(1) / (n_K - 2) / sxx)
    df = (n_K - 2).astype(float)
    _, p, lo, hi = _t_from(slope, se, df, ci)
    return LinearFits(slope, se, lo, hi, p, intercept, n_K, ci)


# ---------------------------------------------------------------------------------------------
# calibration and simulation


@dataclass(frozen=True)
class Rate:
    """An observed rate ``count / total`` with its Wilson interval at ``ci``."""

    rate: float
    count: int
    total: int
    lo: float
    hi: float
    ci: float


def wilson(count: int, total: int, ci: float = 0.95) -> Rate:
    """Wilson score interval of a binomial proportion (good near 0 and 1, unlike Wald)."""
    ci = _check_ci(ci)
    if total < 1:
        raise AblateError("a rate needs at least 1 trial; got 0 verdicts")
    z = st.norm.ppf(0.5 + ci / 2)
    phat = count / total
    den = 1 + z * z / total
    centre = (phat + z * z / (2 * total)) / den
    half = z / den * math.sqrt(phat * (1 - phat) / total + z * z / (4 * total * total))
    lo, hi = max(0.0, float(centre - half)), min(1.0, float(centre + half))
    return Rate(float(phat), int(count), int(total), lo, hi, ci)


def false_positive_rate(reject_K, ci: float = 0.95) -> Rate:
    """The false-positive rate of the verdicts of an A/A family (every true effect 0): the share
    of rejections, with a Wilson interval. Accepts any shape of booleans."""
    r = np.asarray(reject_K)
    if r.dtype != bool:
        raise AblateError(f"reject: dtype {r.dtype} is not boolean (one verdict per comparison)")
    return wilson(int(r.sum()), int(r.size), ci)


@dataclass(frozen=True)
class Simulation:
    """Paired t on simulated experiments: interval coverage of the true effect, the rejection
    rate (power; the false-positive rate when the effect is 0, else ``None``)."""

    coverage: Rate
    rejection: Rate
    false_positive: Rate | None


def simulate(effect, sd, n_seeds: int, n_sims: int, *, rng_seed, ci: float = 0.95) -> Simulation:
    """Draw ``n_sims`` experiments of ``n_seeds`` paired deltas ~ N(effect, sd) and score the
    paired t interval and test at level ``ci`` (rejection at p <= 1 - ci)."""
    ci = _check_ci(ci)
    _check_n(n_seeds)
    sd = float(_check_sd(sd))
    if int(n_sims) < 1:
        raise AblateError(f"n_sims: {show(n_sims)} is not a positive number of simulations")
    rng = np.random.default_rng(rng_seed)
    d_KS = rng.normal(effect, sd, size=(int(n_sims), int(n_seeds)))
    t = paired_t(d_KS, ci=ci)
    covered = (t.lo_K <= effect) & (effect <= t.hi_K)
    rejection = false_positive_rate(t.p_K <= 1 - ci)
    return Simulation(
        coverage=wilson(int(covered.sum()), int(n_sims)),
        rejection=rejection,
        false_positive=rejection if effect == 0 else None,
    )
