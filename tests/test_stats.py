"""ablate.analysis.stats: intervals, corrections, power and dose-response against textbook values,
scipy, and simulations with a known truth (fixed seeds; the whole file runs in a few seconds)."""

import numpy as np
import pytest
from scipy import stats as st

from ablate.analysis import stats as S
from ablate.errors import AblateError

# Benjamini & Hochberg (1995), section 4: 15 p-values; BH at q = 0.05 rejects the first 4,
# Bonferroni and Holm the first 3
BH95 = np.array(
    [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459]
    + [0.3240, 0.4262, 0.5719, 0.6528, 0.7590, 1.0000]
)
# by hand: 15 p_(i) / i, then the running minimum from the largest p down
BH95_ADJ = np.array(
    [0.0015, 0.003, 0.0095, 0.035625, 0.0603, 0.0638571, 0.0638571, 0.0645, 0.0765]
    + [0.486, 0.5811818, 0.714875, 0.7532308, 0.8132143, 1.0]
)


# ---------------------------------------------------------------------------------------------
# t tests


def test_paired_t_matches_scipy_with_missing_seeds():
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1.0, (6, 5))
    d[0, 1] = d[2, 4] = d[2, 0] = np.nan
    t = S.paired_t(d, ci=0.9)
    for k, row in enumerate(d):
        row = row[~np.isnan(row)]
        ref = st.ttest_1samp(row, 0.0)
        lo, hi = ref.confidence_interval(0.9)
        assert t.n_K[k] == len(row) and t.df_K[k] == len(row) - 1
        assert t.p_K[k] == pytest.approx(ref.pvalue, rel=1e-10)
        assert (t.lo_K[k], t.hi_K[k]) == pytest.approx((lo, hi), rel=1e-10)


def test_welch_t_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, (4, 5)), rng.normal(0, 2, (4, 3))
    t = S.welch_t(a, b)
    for k in range(4):
        ref = st.ttest_ind(a[k], b[k], equal_var=False)
        assert t.p_K[k] == pytest.approx(ref.pvalue, rel=1e-10)
        assert t.df_K[k] == pytest.approx(ref.df, rel=1e-10)
        assert (t.lo_K[k], t.hi_K[k]) == pytest.approx(tuple(ref.confidence_interval()), rel=1e-9)


def test_constant_deltas_have_no_noise():
    t = S.paired_t([[0.0, 0.0, 0.0], [0.2, 0.2, 0.2]])
    assert t.p_K.tolist() == [1.0, 0.0]
    assert t.lo_K.tolist() == t.hi_K.tolist() == pytest.approx([0.0, 0.2])


def test_one_seed_is_one_line_naming_the_comparison():
    with pytest.raises(AblateError, match=r"at least 2 seeds per arm; got 1 for 'code/bpb'") as e:
        S.paired_t([[0.1, 0.2], [0.3, np.nan]], labels=["math/bpb", "code/bpb"])
    assert "\n" not in str(e.value)
    with pytest.raises(AblateError, match=r"got 1 in the second arm for comparison 0"):
        S.welch_t([[1.0, 2.0]], [[1.0]])


# ---------------------------------------------------------------------------------------------
# corrections


def test_bh_on_the_1995_example():
    adj = S.adjust_p(BH95, "bh")
    assert adj == pytest.approx(BH95_ADJ, abs=1e-6)
    assert adj == pytest.approx(st.false_discovery_control(BH95, method="bh"), rel=1e-12)
    assert (adj <= 0.05).sum() == 4
    assert (S.adjust_p(BH95, "holm") <= 0.05).sum() == 3


def test_holm_by_hand_and_input_order_kept():
    p = [0.01, 0.04, 0.03, 0.005]  # sorted x (4, 3, 2, 1): 0.02, 0.03, 0.06, 0.04 -> running max
    assert S.adjust_p(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])


@pytest.mark.parametrize("method", ["holm", "bh"])
def test_adjusted_p_nan_monotone_capped(method):
    rng = np.random.default_rng(2)
    p = rng.random(40) ** 3
    p[[3, 17]] = np.nan
    adj = S.adjust_p(p, method)
    ok = ~np.isnan(p)
    assert np.isnan(adj[~ok]).all()
    # NaN does not count in the family: same as adjusting the 38 others alone
    assert adj[ok] == pytest.approx(S.adjust_p(p[ok], method))
    order = np.argsort(p[ok])
    assert (np.diff(adj[ok][order]) >= 0).all() and (adj[ok] >= p[ok]).all()
    assert np.nanmax(adj) <= 1.0
    assert S.adjust_p([0.6, 0.7, 0.9], "holm").tolist() == [1.0, 1.0, 1.0]  # 3 x 0.6 capped
    # rows are separate families
    two = S.adjust_p(np.vstack([p, p[::-1]]), method)
    assert np.array_equal(two[1], S.adjust_p(p[::-1], method), equal_nan=True)


def test_correct_auto_family_sizes_and_intervals():
    rng = np.random.default_rng(3)
    t = S.paired_t(rng.normal(0.5, 1.0, (12, 5)))
    c = S.correct_t(t)
    assert (
        c.method == "holm" and c.family_size == 12 and c.level_adj == pytest.approx(1 - 0.05 / 12)
    )
    q = st.t.ppf(1 - 0.05 / 24, 4)
    assert c.hi_adj_K == pytest.approx(t.mean_K + q * t.se_K)
    assert (c.lo_adj_K <= c.lo_K).all() and (c.hi_adj_K >= c.hi_K).all()
    assert np.array_equal(c.reject_raw_K, t.p_K <= 0.05)
    big = S.paired_t(np.vstack([rng.normal(3, 1, (10, 5)), rng.normal(0, 1, (30, 5))]))
    cb = S.correct_t(big)
    R = int(cb.reject_adj_K.sum())
    assert cb.method == "bh" and cb.family_size == 40 and R >= 8
    assert cb.level_adj == pytest.approx(1 - R * 0.05 / 40)  # Benjamini-Yekutieli FCR level
    assert S.family_size_ok(2) and not S.family_size_ok(1)
    with pytest.raises(AblateError, match=r"^a family of 1 comparison: nothing to correct"):
        S.correct([0.01, np.nan], [1.0, 1.0], [0.1, 0.1], [4, 4])
    with pytest.raises(AblateError, match=r"method: 'bonferroni' is not one of holm, bh, auto"):
        S.correct([0.01, 0.2], [1.0, 1.0], [0.1, 0.1], [4, 4], method="bonferroni")
    with pytest.raises(AblateError, match=r"p-values: 1.5 is outside \[0, 1\]"):
        S.adjust_p([0.2, 1.5], "bh")


def _families(n_fam, n_null, effects, n_seeds, seed):
    rng = np.random.default_rng(seed)
    true_F = np.concatenate([np.zeros(n_null), effects])
    d = rng.normal(true_F[None, :, None], 1.0, (n_fam, len(true_F), n_seeds))
    t = S.paired_t(d.reshape(-1, n_seeds))
    shape = (n_fam, len(true_F))
    return t, shape, true_F


def test_holm_fwer_and_bh_fdr_under_the_null_are_nominal():
    # 2000 families of 20 null comparisons + 5 true effects, 5 seeds each
    t, shape, true_F = _families(2000, 20, np.full(5, 2.0), 5, seed=4)
    p, null = t.p_K.reshape(shape), true_F == 0
    holm = S.adjust_p(p, "holm") <= 0.05
    fwer = S.false_positive_rate(holm[:, null].any(1))
    assert fwer.lo <= 0.05, fwer  # not above nominal beyond simulation error
    bh = S.adjust_p(p, "bh") <= 0.05
    fdp = bh[:, null].sum(1) / np.maximum(bh.sum(1), 1)
    assert fdp.mean() - 3 * fdp.std() / np.sqrt(len(fdp)) <= 0.05, fdp.mean()
    raw_fwer = (p[:, null] <= 0.05).any(1).mean()
    assert raw_fwer > 0.5  # without a correction most families have a false positive
    # Holm's Bonferroni-level intervals cover all 25 true deltas simultaneously >= 95%
    c = S.correct(p, t.mean_K.reshape(shape), t.se_K.reshape(shape), 4.0, method="holm")
    cover = ((c.lo_adj_K <= true_F) & (true_F <= c.hi_adj_K)).all(1)
    assert S.wilson(int(cover.sum()), len(cover)).hi >= 0.95


# ---------------------------------------------------------------------------------------------
# coverage and power


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_paired_t_coverage_at_95(n_seeds):
    sim = S.simulate(0.7, 1.3, n_seeds, 4000, rng_seed=10 + n_seeds)
    assert sim.coverage.rate >= 0.93
    assert sim.coverage.lo <= 0.95 <= sim.coverage.hi
    assert sim.false_positive is None


def test_false_positive_rate_on_aa_families():
    sim = S.simulate(0.0, 1.0, 3, 4000, rng_seed=7)
    assert sim.false_positive is not None and sim.false_positive.lo <= 0.05 <= sim.false_positive.hi
    r = S.false_positive_rate(np.array([True] + [False] * 19))
    assert (r.rate, r.count, r.total) == (0.05, 1, 20)
    # Wilson (1927) 95% interval of 1/20, by the closed form
    assert (r.lo, r.hi) == pytest.approx((0.008886, 0.236131), abs=1e-5)
    with pytest.raises(AblateError, match="not boolean"):
        S.false_positive_rate(np.array([0.1, 0.2]))


def test_power_mde_and_seeds_needed():
    sd = np.array([0.5, 1.0, 2.0])
    for n in (3, 5, 10):
        assert S.power(S.mde(sd, n), sd, n) == pytest.approx(np.full(3, 0.8), abs=1e-8)
    assert S.mde(2.0, 5) == pytest.approx(2 * S.mde(1.0, 5))
    assert S.power(0.0, 1.0, 5) == pytest.approx(0.05)
    # simulated rejection rate at an effect matches the noncentral-t power
    eff = S.mde(1.0, 5)
    sim = S.simulate(eff, 1.0, 5, 4000, rng_seed=8)
    assert abs(sim.rejection.rate - S.power(eff, 1.0, 5)) < 0.03
    effects = np.array([0.2, 0.5, 1.0, 2.0, 4.0])
    n = S.seeds_needed(effects, 1.0)
    assert (np.diff(n) <= 0).all() and n.tolist() == [199, 34, 10, 5, 3]
    for e, k in zip(effects, n):  # smallest n: power reached at n, not at n - 1
        assert S.power(e, 1.0, k) >= 0.8 and (k == 2 or S.power(e, 1.0, k - 1) < 0.8)
    assert S.seeds_needed(0.01, 1.0, max_n=50) == np.inf
    with pytest.raises(AblateError, match=r"at least 2 seeds per arm; got n=1"):
        S.power(0.5, 1.0, 1)


# ---------------------------------------------------------------------------------------------
# dose-response


def test_linear_slope_coverage_and_single_fit_agree():
    rng = np.random.default_rng(20)
    dose = np.repeat([0.0, 0.1, 0.2, 0.4, 0.8], 3)
    y = 1.0 - 0.5 * dose + rng.normal(0, 0.1, (4000, dose.size))
    fits = S.dose_response_many(dose, y)
    cover = S.wilson(int(((fits.lo_K <= -0.5) & (-0.5 <= fits.hi_K)).sum()), 4000)
    assert cover.rate >= 0.93 and cover.lo <= 0.95 <= cover.hi
    one = S.dose_response(dose, y[0], name="code share")
    ref = st.linregress(dose, y[0])
    assert one.slope == pytest.approx(ref.slope) and one.p == pytest.approx(ref.pvalue)
    assert one.slope == pytest.approx(fits.slope_K[0]) and one.lo == pytest.approx(fits.lo_K[0])
    # NaN = a run without that metric: the row is fitted on the others
    y2 = y[:2].copy()
    y2[1, 4] = np.nan
    fit2 = S.dose_response_many(dose, y2)
    keep = ~np.isnan(y2[1])
    assert fit2.slope_K[1] == pytest.approx(st.linregress(dose[keep], y2[1, keep]).slope)


def test_logistic_recovers_log_odds_slope():
    rng = np.random.default_rng(21)
    dose = np.repeat([0.0, 0.25, 0.5, 0.75, 1.0], 4)
    trials = np.full(dose.size, 400)
    true = 1.5
    covered, sims = 0, 200
    for i in range(sims):
        k = rng.binomial(trials, 1 / (1 + np.exp(-(-1.0 + true * dose))))
        fit = S.dose_response(dose, k / trials, kind="logistic", trials_N=trials)
        covered += fit.lo <= true <= fit.hi
        if i == 0:  # the MLE solves the score equations X'(y - n mu) = 0
            mu = 1 / (1 + np.exp(-(fit.intercept + fit.slope * dose)))
            assert np.abs([(k - trials * mu).sum(), (dose * (k - trials * mu)).sum()]).max() < 1e-6
            assert fit.monotonicity == "increasing" and fit.fitted[-1] > fit.fitted[0]
    assert covered / sims >= 0.9
    # overdispersed seeds (a per-run random shift) widen the interval through phi > 1
    logit = -1.0 + true * dose + rng.normal(0, 0.4, dose.size)
    k = rng.binomial(trials, 1 / (1 + np.exp(-logit)))
    fit = S.dose_response(dose, k / trials, kind="logistic", trials_N=trials)
    assert fit.dispersion > 2


def test_monotonicity_verdicts():
    rng = np.random.default_rng(22)
    dose = np.repeat([0.1, 0.2, 0.3, 0.4, 0.5], 4)
    seed = np.tile([0, 1, 2, 3], 5)
    noise = rng.normal(0, 0.02, dose.size)
    up = S.dose_response(dose, 2 * dose + noise, group_N=seed)
    assert up.monotonicity == "increasing" and up.lo > 0
    assert len(up.levels) == 5 and up.fitted == pytest.approx(up.means, abs=0.03)
    assert S.dose_response(dose, -2 * dose + noise).monotonicity == "decreasing"
    u_shape = 10 * (dose - 0.3) ** 2 + noise
    assert S.dose_response(dose, u_shape, group_N=seed).monotonicity == "not monotone"
    flat = S.dose_response(dose, noise, group_N=seed)
    assert flat.monotonicity == "no trend"
    # a significant rise with one significant drop in the middle is not monotone
    saw = 2 * dose + noise
    saw[dose == 0.3] -= 0.5
    assert S.dose_response(dose, saw, group_N=seed).monotonicity == "not monotone"
    # two levels: the verdict follows the slope
    two = S.dose_response([1, 1, 1, 2, 2, 2], [0.0, 0.1, 0.05, 1.0, 1.1, 1.05])
    assert two.monotonicity == "increasing"


@pytest.mark.parametrize("bad", ["high", None, float("nan"), True])
def test_non_numeric_dose_is_one_line(bad):
    with pytest.raises(AblateError) as e:
        S.dose_response([0.1, 0.1, bad, bad], [1.0, 2.0, 3.0, 4.0], name="code_density")
    msg = str(e.value)
    assert msg.startswith(f"code_density: dose {bad!r} is not a number") and "\n" not in msg
    assert msg.endswith("a dose-response axis needs numbers (a density, a share, a token budget)")


def test_dose_response_needs_two_levels_and_two_seeds():
    with pytest.raises(AblateError, match=r"^share: .* at least 2 distinct doses; got one level"):
        S.dose_response([0.5, 0.5, 0.5], [1.0, 2.0, 3.0], name="share")
    with pytest.raises(
        AblateError, match=r"^share: an interval needs at least 2 seeds per arm; got 1 at dose 0.2"
    ):  # noqa: E501
        S.dose_response([0.1, 0.1, 0.2, 0.3, 0.3], [1.0, 2.0, 3.0, 4.0, 5.0], name="share")
    with pytest.raises(AblateError, match=r"at least 3 values over 2 doses"):
        S.dose_response_many([0.1, 0.2, 0.3], [[1.0, np.nan, np.nan]], labels=["H/L0/code"])


def test_several_families_at_once_equal_one_by_one():
    rng = np.random.default_rng(30)
    t = S.paired_t(rng.normal(0.4, 1.0, (3 * 8, 4)))
    fam = [x.reshape(3, 8) for x in (t.p_K, t.mean_K, t.se_K, t.df_K)]
    for method in ("holm", "bh"):
        together = S.correct(*fam, method=method)
        for row in range(3):
            alone = S.correct(*(x[row] for x in fam), method=method)
            assert np.array_equal(together.p_adj_K[row], alone.p_adj_K)
            assert together.lo_adj_K[row] == pytest.approx(alone.lo_adj_K)
            assert together.level_adj[row] == pytest.approx(alone.level_adj)


def test_logistic_separation_is_one_line():
    dose = np.repeat([0.0, 1.0, 2.0], 2)
    with pytest.raises(AblateError, match=r"^mix: the logistic fit does not converge"):
        S.dose_response(dose, [0, 0, 0, 0, 1, 1], kind="logistic", trials_N=[50] * 6, name="mix")
    with pytest.raises(AblateError, match=r"needs trials_N"):
        S.dose_response(dose, [0.1, 0.2, 0.3, 0.3, 0.5, 0.6], kind="logistic")
