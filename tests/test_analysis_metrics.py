"""Routing metrics (ANALYSIS_METRICS.md): hand-computed cases, a brute force from per-token
routing decisions, the bulk kernel against both, and invariance to expert numbering."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ablate.analysis import routing_compare as rc
from ablate.analysis import routing_metrics as rm
from analysis_fakes import route_tokens

# ------------------------------------------------------------------ a case worked by hand
# one layer, E = 4 experts, top-2. Domain 0: tokens routed to {0,1} and {0,2};
# domain 1: {2,3} twice.
HAND_TOPK = np.array([[0, 1], [0, 2], [2, 3], [2, 3]])[:, :, None]  # [T, k, L]
HAND_DOMAIN = np.array([0, 0, 1, 1])
HAND_COUNT = np.array([[[2, 1, 1, 0], [0, 0, 2, 2]]])  # [L, D, E]
HAND_NTOK = np.array([[2, 2]])


def test_hand_case_specialization_distribution_lift():
    assert np.allclose(rm.specialization(HAND_COUNT, HAND_NTOK), [[[1, 0.5, 0.5, 0], [0, 0, 1, 1]]])
    p = rm.routing_distribution(HAND_COUNT, HAND_NTOK, 2)
    assert np.allclose(p, [[[0.5, 0.25, 0.25, 0], [0, 0, 0.5, 0.5]]])
    # p(all) = [2, 1, 3, 2] / 8
    assert np.allclose(
        rm.pooled_distribution(HAND_COUNT, HAND_NTOK, 2), [[0.25, 0.125, 0.375, 0.25]]
    )
    assert np.allclose(rm.lift(HAND_COUNT, HAND_NTOK, 2), [[[2, 2, 2 / 3, 0], [0, 0, 4 / 3, 2]]])


def test_hand_case_entropy_js_load():
    p = rm.routing_distribution(HAND_COUNT, HAND_NTOK, 2)
    # H0 = (0.5 ln 2 + 2 * 0.25 ln 4) / ln 4 = 0.75; H1 = ln 2 / ln 4 = 0.5
    assert np.allclose(rm.normalized_entropy(p), [[0.75, 0.5]])
    # JS in bits = 1.25 - 0.375 log2(3), worked out from KL(p||m) + KL(q||m),
    # m = [1/4, 1/8, 3/8, 1/4]
    js = rm.js_matrix(p)
    assert js[0, 0, 1] == pytest.approx(1.25 - 0.375 * math.log2(3), abs=1e-12)
    assert js[0, 1, 0] == js[0, 0, 1] and js[0, 0, 0] == 0 and js[0, 1, 1] == 0
    load = rm.expert_load(HAND_COUNT)  # [2, 1, 3, 2]: mean 2, population std sqrt(0.5)
    assert rm.load_cv(load)[0] == pytest.approx(math.sqrt(0.5) / 2)
    assert rm.max_violation(load)[0] == pytest.approx(0.5)


def test_hand_case_shared_exclusive_and_cover():
    lift = rm.lift(HAND_COUNT, HAND_NTOK, 2)
    se = rm.shared_exclusive(lift, 0, 1, threshold=1.5)
    assert se["shared"][0].tolist() == [False] * 4
    assert np.flatnonzero(se["only_a"][0]).tolist() == [0, 1] and np.flatnonzero(
        se["only_b"][0]
    ).tolist() == [3]
    se = rm.shared_exclusive(lift, 0, 1, threshold=0.5)  # d0 high {0,1,2}, d1 high {2,3}
    assert np.flatnonzero(se["shared"][0]).tolist() == [2]
    assert rm.experts_to_cover(
        np.array([[0.3, 0.3, 0.2, 0.2], [0.5, 0.25, 0.25, 0], [0.1, 0.6, 0.2, 0.1]])
    ).tolist() == [2, 1, 1]
    assert rm.sorted_profile(np.array([0.1, 0.6, 0.3])).tolist() == [0.6, 0.3, 0.1]


def test_hand_case_domain_without_tokens_is_nan_not_zero():
    count, ntok = np.array([[[2, 2, 0, 0], [0, 0, 0, 0]]]), np.array([[2, 0]])
    p = rm.routing_distribution(count, ntok, 2)
    assert np.isnan(p[0, 1]).all() and np.isnan(rm.normalized_entropy(p)[0, 1])
    js = rm.js_matrix(p)
    assert np.isnan(js[0, 0, 1]) and js[0, 0, 0] == 0
    m = rm.routing_metrics(count[None], ntok[None], 2)
    assert (
        np.isnan(m.H_FLD[0, 0, 1])
        and np.isnan(m.js_FLDD[0, 0, 0, 1])
        and np.isnan(m.js_FLDD[0, 0, 1, 1])
    )
    assert m.js_FLDD[0, 0, 0, 0] == 0


def test_hand_case_eval_time_metrics():
    C = rm.coactivation(HAND_TOPK, 4)[0]
    assert C.tolist() == [[2, 1, 1, 0], [1, 1, 0, 0], [1, 0, 3, 2], [0, 0, 2, 2]]
    P = rm.coactivation_conditional(C[None])[0]
    assert (
        P[0, 1] == 0.5
        and P[2, 3] == pytest.approx(2 / 3)
        and P[1, 0] == 1.0
        and np.allclose(np.diag(P), 1)
    )
    earlier = np.array([[1, 3], [2, 0], [0, 1], [3, 2]])[:, :, None]  # overlaps: 1/2, 2/2, 0/2, 2/2
    assert rm.router_saturation(earlier, HAND_TOPK)[0] == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    ids = np.array([5, 5, 7, 9])  # token 5: expert 0 both times; 7 and 9 once each
    vocab, n, share = rm.vocab_specialization(
        np.array([[0, 1], [2, 0], [2, 3], [1, 3]])[:, :, None], ids, 4
    )
    assert (
        vocab.tolist() == [5, 7, 9]
        and n.tolist() == [2, 1, 1]
        and share[0].tolist() == [1.0, 1.0, 1.0]
    )
    vocab, n, share = rm.vocab_specialization(
        np.array([[0, 1], [2, 3]])[:, :, None], np.array([5, 5]), 4
    )
    assert share[0].tolist() == [0.5]


# ------------------------------------------------------------------ brute force from routed tokens


def brute_counts(domain_T, topk_TKL, D, E):
    T, k, L = topk_TKL.shape
    count = [[[0] * E for _ in range(D)] for _ in range(L)]
    ntok = [[0] * D for _ in range(L)]
    for t in range(T):
        d = int(domain_T[t])
        for layer in range(L):
            ntok[layer][d] += 1
            for slot in range(k):
                count[layer][d][int(topk_TKL[t, slot, layer])] += 1
    return count, ntok


def brute_metrics(count, ntok, k, threshold=1.5):
    """Every training-time metric with plain Python loops over the counts."""
    L, D, E = len(count), len(count[0]), len(count[0][0])
    nan = float("nan")
    out = {key: [] for key in ("S", "p", "lift", "H", "js", "cv", "maxvio", "shared", "cover50")}
    for layer in range(L):
        c, n = count[layer], ntok[layer]
        S = [[c[d][e] / n[d] if n[d] else nan for e in range(E)] for d in range(D)]
        p = [[c[d][e] / (k * n[d]) if n[d] else nan for e in range(E)] for d in range(D)]
        total = sum(n)
        p_all = [sum(c[d][e] for d in range(D)) / (k * total) if total else nan for e in range(E)]
        lift = [
            [p[d][e] / p_all[e] if n[d] and p_all[e] else nan for e in range(E)] for d in range(D)
        ]
        H = []
        for d in range(D):
            H.append(-sum(x * math.log(x) for x in p[d] if x > 0) / math.log(E) if n[d] else nan)
        js = [[nan] * D for _ in range(D)]
        for i in range(D):
            for j in range(D):
                if n[i] and n[j]:
                    m = [(p[i][e] + p[j][e]) / 2 for e in range(E)]
                    kl_i = sum(p[i][e] * math.log2(p[i][e] / m[e]) for e in range(E) if p[i][e] > 0)
                    kl_j = sum(p[j][e] * math.log2(p[j][e] / m[e]) for e in range(E) if p[j][e] > 0)
                    js[i][j] = (kl_i + kl_j) / 2
        load = [sum(c[d][e] for d in range(D)) for e in range(E)]
        mean = sum(load) / E
        std = math.sqrt(sum((x - mean) ** 2 for x in load) / E)
        high = [
            {e for e in range(E) if lift[d][e] == lift[d][e] and lift[d][e] > threshold + 1e-6}
            for d in range(D)
        ]
        shared = [[len(high[i] & high[j]) for j in range(D)] for i in range(D)]
        cover = []
        for d in range(D):
            if not n[d]:
                cover.append(nan)
                continue
            acc, m_ = 0.0, 0
            for x in sorted(p[d], reverse=True):
                acc += x
                m_ += 1
                if acc >= 0.5 - 1e-9:
                    break
            cover.append(m_)
        for key, v in (
            ("S", S),
            ("p", p),
            ("lift", lift),
            ("H", H),
            ("js", js),
            ("cv", std / mean if mean else nan),
            ("maxvio", max(load) / mean - 1 if mean else nan),
            ("shared", shared),
            ("cover50", cover),
        ):
            out[key].append(v)
    return {key: np.array(v, dtype=float) for key, v in out.items()}


def random_windows(seed, F=4, L=3, D=4, E=6, k=2, tokens=30, absent=True):
    """Per-window routed tokens; with ``absent``, one domain has no tokens in the first window."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(L, D, E)) * 1.5
    windows = []
    for f in range(F):
        sizes = rng.integers(1, tokens, size=D)
        if absent and f == 0:
            sizes[-1] = 0
        domain_T = np.repeat(np.arange(D), sizes)
        windows.append((domain_T, route_tokens(rng, domain_T, L, E, k, logits)))
    return windows


def assert_close(a, b, tol):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=tol, atol=tol)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_functions_match_brute_force(seed):
    L, D, E, k = 3, 4, 6, 2
    for domain_T, topk in random_windows(seed, L=L, D=D, E=E, k=k):
        count, ntok = brute_counts(domain_T, topk, D, E)
        want = brute_metrics(count, ntok, k)
        count, ntok = np.array(count), np.array(ntok)
        assert (count.sum(-1) == k * ntok).all()
        assert_close(rm.specialization(count, ntok), want["S"], 1e-12)
        p = rm.routing_distribution(count, ntok, k)
        assert_close(p, want["p"], 1e-12)
        assert_close(rm.lift(count, ntok, k), want["lift"], 1e-12)
        assert_close(rm.normalized_entropy(p), want["H"], 1e-12)
        assert_close(rm.js_matrix(p), want["js"], 1e-12)
        assert_close(rm.load_cv(rm.expert_load(count)), want["cv"], 1e-12)
        assert_close(rm.max_violation(rm.expert_load(count)), want["maxvio"], 1e-12)
        assert_close(rm.experts_to_cover(p), want["cover50"], 0)
        hi = rm.high_lift(rm.lift(count, ntok, k))
        for i in range(D):
            for j in range(D):
                se = rm.shared_exclusive(rm.lift(count, ntok, k), i, j)
                assert se["shared"].sum(-1).tolist() == want["shared"][:, i, j].tolist()
                assert (
                    se["only_a"].sum(-1) == want["shared"][:, i, i] - want["shared"][:, i, j]
                ).all()
        assert hi.sum(-1).tolist() == np.diagonal(want["shared"], axis1=1, axis2=2).tolist()


@pytest.mark.parametrize("cumulative", [False, True])
def test_bulk_kernel_matches_brute_force_every_window(cumulative):
    L, D, E, k = 3, 4, 6, 2
    windows = random_windows(7, F=11, L=L, D=D, E=E, k=k)
    per_window = [brute_counts(d, t, D, E) for d, t in windows]
    count_FLDE = np.array([c for c, _ in per_window])
    ntok_FLD = np.array([n for _, n in per_window])
    m = rm.routing_metrics(
        count_FLDE, ntok_FLD, k, cumulative=cumulative, chunk=4, keep_per_expert=True
    )
    lazy = rm.routing_metrics(count_FLDE, ntok_FLD, k, cumulative=cumulative, chunk=3)
    run_c, run_n = np.zeros_like(count_FLDE[0]), np.zeros_like(ntok_FLD[0])
    for f in range(len(windows)):
        c, n = count_FLDE[f], ntok_FLD[f]
        if cumulative:
            run_c, run_n = run_c + c, run_n + n
            c, n = run_c, run_n
        want = brute_metrics(c.tolist(), n.tolist(), k)
        for got in (m, lazy):
            assert_close(got.S_FLDE[f], want["S"], 1e-5)
            assert_close(got.p_FLDE[f], want["p"], 1e-5)
            assert_close(got.lift_FLDE[f], want["lift"], 1e-5)
            assert_close(got.H_FLD[f], want["H"], 1e-5)
            assert_close(got.js_FLDD[f], want["js"], 1e-5)
            assert_close(got.cv_FL[f], want["cv"], 1e-5)
            assert_close(got.maxvio_FL[f], want["maxvio"], 1e-5)
            assert got.shared_FLDD[f].tolist() == want["shared"].astype(int).tolist()
            excl = got.exclusive_FLDD()[f]
            assert (
                excl == np.diagonal(want["shared"], axis1=1, axis2=2)[:, :, None] - want["shared"]
            ).all()
    assert "S_FLDE" in m.kept and not lazy.kept


def test_bulk_kernel_many_experts_not_a_multiple_of_64():
    """Bit sets span two words (E = 70) and chunks do not divide F."""
    L, D, E, k = 2, 3, 70, 4
    windows = random_windows(3, F=5, L=L, D=D, E=E, k=k, tokens=60, absent=False)
    per_window = [brute_counts(d, t, D, E) for d, t in windows]
    count, ntok = np.array([c for c, _ in per_window]), np.array([n for _, n in per_window])
    m = rm.routing_metrics(count, ntok, k, chunk=2, threshold=1.2)
    for f in range(5):
        want = brute_metrics(count[f].tolist(), ntok[f].tolist(), k, threshold=1.2)
        assert m.shared_FLDD[f].tolist() == want["shared"].astype(int).tolist()
        assert_close(m.js_FLDD[f], want["js"], 1e-5)


def test_eval_time_metrics_match_brute_force():
    rng = np.random.default_rng(5)
    T, k, L, E = 200, 3, 2, 8
    domain_T = rng.integers(0, 3, size=T)
    logits = rng.normal(size=(L, 3, E))
    final = route_tokens(rng, domain_T, L, E, k, logits * 2)
    early = route_tokens(rng, domain_T, L, E, k, logits)
    ids = rng.integers(0, 25, size=T)
    C = rm.coactivation(final, E)
    for layer in range(L):
        want = [[0] * E for _ in range(E)]
        for t in range(T):
            for a in final[t, :, layer]:
                for b in final[t, :, layer]:
                    want[a][b] += 1
        assert C[layer].tolist() == want
        sat = sum(len(set(early[t, :, layer]) & set(final[t, :, layer])) / k for t in range(T)) / T
        assert rm.router_saturation(early, final)[layer] == pytest.approx(sat)
    vocab, n, share = rm.vocab_specialization(final, ids, E)
    for v_i, v in enumerate(vocab):
        occ = [t for t in range(T) if ids[t] == v]
        assert n[v_i] == len(occ)
        for layer in range(L):
            per_expert = {}
            for t in occ:
                for e in final[t, :, layer]:
                    per_expert[e] = per_expert.get(e, 0) + 1
            assert share[layer, v_i] == pytest.approx(max(per_expert.values()) / len(occ))


# ------------------------------------------------------------------ invariance to expert numbering


@st.composite
def routing_case(draw):
    L, D, E = draw(st.integers(1, 3)), draw(st.integers(2, 4)), draw(st.integers(2, 9))
    k = draw(st.integers(1, min(3, E)))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    sizes = [draw(st.integers(0, 12)) for _ in range(D)]  # a domain may have no tokens at all
    domain_T = np.repeat(np.arange(D), sizes)
    topk = route_tokens(rng, domain_T, L, E, k, rng.normal(size=(L, D, E)) * draw(st.floats(0, 3)))
    perms = np.stack([np.array(draw(st.permutations(range(E)))) for _ in range(L)])  # one per layer
    return domain_T, topk, perms, k, E


def _relabel(topk_TKL, perms_LE):
    """Expert e of layer l is called perms[l, e] in the relabelled run."""
    out = topk_TKL.copy()
    for layer in range(topk_TKL.shape[2]):
        out[:, :, layer] = perms_LE[layer][topk_TKL[:, :, layer]]
    return out


def _same(a, b, tol=1e-9):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return (
        a.shape == b.shape
        and np.array_equal(np.isnan(a), np.isnan(b))
        and np.allclose(a[~np.isnan(a)], b[~np.isnan(b)], atol=tol)
    )


@settings(max_examples=60, deadline=None)
@given(routing_case())
def test_numbering_free_metrics_are_invariant_to_expert_permutation(case):
    domain_T, topk, perms, k, E = case
    D = int(domain_T.max()) + 1 if len(domain_T) else 2
    D = max(D, 2)
    from analysis_fakes import counts_of

    c1, n1 = counts_of(domain_T, topk, D, E)
    relabelled = _relabel(topk, perms)
    c2, n2 = counts_of(domain_T, relabelled, D, E)
    # the per-expert arrays are equivariant (they move with the experts) ...
    assert _same(rm.specialization(c1, n1), rc.permute_experts(rm.specialization(c2, n2), perms))
    # ... and everything numbering-free is unchanged
    p1, p2 = rm.routing_distribution(c1, n1, k), rm.routing_distribution(c2, n2, k)
    assert _same(rm.js_matrix(p1), rm.js_matrix(p2))
    assert _same(rm.normalized_entropy(p1), rm.normalized_entropy(p2))
    assert _same(rm.load_cv(rm.expert_load(c1)), rm.load_cv(rm.expert_load(c2)))
    assert _same(rm.max_violation(rm.expert_load(c1)), rm.max_violation(rm.expert_load(c2)))
    assert _same(rm.experts_to_cover(p1), rm.experts_to_cover(p2))
    assert _same(
        rm.sorted_profile(rm.specialization(c1, n1)), rm.sorted_profile(rm.specialization(c2, n2))
    )
    l1, l2 = rm.lift(c1, n1, k), rm.lift(c2, n2, k)
    for i in range(D):
        for j in range(D):
            s1, s2 = rm.shared_exclusive(l1, i, j), rm.shared_exclusive(l2, i, j)
            for key in s1:
                assert (s1[key].sum(-1) == s2[key].sum(-1)).all()
    m1 = rm.routing_metrics(c1[None], n1[None], k)
    m2 = rm.routing_metrics(c2[None], n2[None], k)
    for name in ("H_FLD", "js_FLDD", "cv_FL", "maxvio_FL", "shared_FLDD"):
        assert _same(getattr(m1, name), getattr(m2, name), 1e-5), name
    # a Hungarian match recovers the relabelling: after it, profiles agree expert by expert
    S1, S2 = rm.specialization(c1, n1), rm.specialization(c2, n2)
    perm = rc.align_experts(S1, S2)
    assert _same(np.nan_to_num(S1), np.nan_to_num(rc.permute_experts(S2, perm)))
    # eval-time: co-activation up to relabelling, saturation and vocabulary specialization unchanged
    C1, C2 = rm.coactivation(topk, E), rm.coactivation(relabelled, E)
    for layer in range(topk.shape[2]):
        assert (C2[layer][np.ix_(perms[layer], perms[layer])] == C1[layer]).all()
    if len(domain_T):
        other = _relabel(np.roll(topk, 1, axis=0), np.tile(np.arange(E), (topk.shape[2], 1)))
        assert _same(
            rm.router_saturation(other, topk),
            rm.router_saturation(_relabel(other, perms), relabelled),
        )
        ids = np.arange(len(domain_T)) % 5
        assert _same(
            rm.vocab_specialization(topk, ids, E)[2], rm.vocab_specialization(relabelled, ids, E)[2]
        )


def test_permutation_test_is_not_vacuous():
    """The specialization itself does change under relabelling (only its summaries may not)."""
    count, ntok = HAND_COUNT, HAND_NTOK
    perm = np.array([[3, 2, 1, 0]])
    relabelled = rc.permute_experts(count, perm)
    assert not np.array_equal(rm.specialization(count, ntok), rm.specialization(relabelled, ntok))
    assert _same(
        rm.js_matrix(rm.routing_distribution(count, ntok, 2)),
        rm.js_matrix(rm.routing_distribution(relabelled, ntok, 2)),
    )


def test_timeseries_frame_is_tidy():
    windows = random_windows(1, F=3)
    per_window = [brute_counts(d, t, 4, 6) for d, t in windows]
    m = rm.routing_metrics(
        np.array([c for c, _ in per_window]),
        np.array([n for _, n in per_window]),
        2,
        steps_F=[10, 20, 30],
        domains=list("abcd"),
    )
    f = rm.timeseries_frame(m)
    assert set(f["metric"]) == {"entropy", "peak_specialization", "cv", "maxvio", "mean_js"}
    ent = f[
        (f["metric"] == "entropy") & (f["step"] == 20) & (f["layer"] == 1) & (f["domain"] == "c")
    ]["value"]
    assert ent.iloc[0] == pytest.approx(m.H_FLD[1, 1, 2])
    assert np.isnan(
        f[(f["metric"] == "entropy") & (f["step"] == 10) & (f["domain"] == "d")]["value"]
    ).all()
