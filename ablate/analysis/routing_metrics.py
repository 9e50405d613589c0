"""Routing metrics, exactly as ``ANALYSIS_METRICS.md`` defines them.

Two layers:

* **reference functions** (``specialization`` ... ``vocab_specialization``): plain numpy in
  float64 over arrays whose trailing axes are named by the suffix (``count_LDE``: ``[..., L, D,
  E]``; any leading axes, e.g. flushes ``F``, broadcast through). Each is a line or two of the
  definition; the tests check them against hand-computed cases and a per-token brute force.
* **the bulk kernel** ``routing_metrics(count_FLDE, ntok_FLD, k)``: the training-time metrics
  for every flush window of a run at once (or the running totals), in float32, a few flushes at a
  time so the working set stays in cache. It gives the same numbers as the reference functions
  (tested) and is what the report and ``benchmarks/analysis.py`` use.

Conventions. ``k`` is the router's top-k, ``E`` the number of experts. A domain with no tokens
in a window (``ntok == 0``) has no routing there: its specialization, distribution, entropy and
every JS entry involving it are NaN, not zero. Entropies use natural logs normalised by
``log E``; Jensen-Shannon divergences are in bits (log base 2), so they lie in ``[0, 1]``.

(Over 400 lines: the reference functions and the bulk kernel that must agree with them are kept
side by side.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# ------------------------------------------------------------------ reference definitions


def _div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b)


def _xlogx(x):
    """x log x with 0 log 0 = 0 (NaN stays NaN)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            x > 0, x * np.log(np.where(x > 0, x, 1.0)), np.where(np.isnan(x), np.nan, 0.0)
        )


def specialization(count_LDE, ntok_LD):
    """S(l, d, e) = count / ntok: the share of domain d's tokens that expert e receives
    (uniform routing gives k/E; sums to k over experts)."""
    return _div(np.asarray(count_LDE, np.float64), np.asarray(ntok_LD, np.float64)[..., None])


def routing_distribution(count_LDE, ntok_LD, k: int):
    """p(l, d, .) = count / (k ntok): a probability distribution over experts."""
    return _div(np.asarray(count_LDE, np.float64), k * np.asarray(ntok_LD, np.float64)[..., None])


def pooled_distribution(count_LDE, ntok_LD, k: int):
    """p(l, all, .): the routing distribution of all domains' tokens together, ``[..., L, E]``."""
    return _div(
        np.asarray(count_LDE, np.float64).sum(-2),
        k * np.asarray(ntok_LD, np.float64).sum(-1)[..., None],
    )


def lift(count_LDE, ntok_LD, k: int):
    """lift(l, d, e) = p(l, d, e) / p(l, all, e): > 1 where domain d over-uses expert e."""
    return _div(
        routing_distribution(count_LDE, ntok_LD, k),
        pooled_distribution(count_LDE, ntok_LD, k)[..., None, :],
    )


def normalized_entropy(p_LDE):
    """H = -sum_e p log p / log E, in [0, 1] (1: uniform over all E experts)."""
    p = np.asarray(p_LDE, np.float64)
    return -_xlogx(p).sum(-1) / np.log(p.shape[-1])


def js_divergence(p_XE, q_XE):
    """Jensen-Shannon divergence in bits between distributions over the last axis:
    JS = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2."""
    p, q = np.asarray(p_XE, np.float64), np.asarray(q_XE, np.float64)
    m = (p + q) / 2

    def kl(a):
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(
                a > 0, a * np.log(np.where(a > 0, a, 1.0) / np.where(m > 0, m, 1.0)), 0.0
            )
        return terms.sum(-1)

    js = np.clip((kl(p) + kl(q)) / (2 * np.log(2)), 0.0, 1.0)
    return np.where(np.isnan(p).any(-1) | np.isnan(q).any(-1), np.nan, js)


def js_matrix(p_LDE):
    """``[..., L, D, D]``: JS divergence between every two domains' routing distributions."""
    p = np.asarray(p_LDE, np.float64)
    return js_divergence(p[..., :, None, :], p[..., None, :, :])


def expert_load(count_LDE):
    """n(l, e): token slots expert e received in layer l, all domains together."""
    return np.asarray(count_LDE).sum(-2)


def load_cv(n_LE):
    """Coefficient of variation of per-expert load: std_e(n) / mean_e(n) (population std)."""
    n = np.asarray(n_LE, np.float64)
    return _div(n.std(-1), n.mean(-1))


def max_violation(n_LE):
    """MaxVio = max_e(n_e / mean n) - 1 (0: perfectly balanced)."""
    n = np.asarray(n_LE, np.float64)
    return _div(n.max(-1), n.mean(-1)) - 1


# "above the threshold" means by more than this: an exact tie (common with small integer counts)
# is then "not high" whatever the float rounding of the lift
TIE = 1e-6


def high_lift(lift_LDE, threshold: float = 1.5):
    """Experts a domain over-uses: lift above ``threshold`` (NaN counts as not high)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(lift_LDE) > threshold + TIE


def shared_exclusive(lift_LDE, a: int, b: int, threshold: float = 1.5) -> dict:
    """Experts with high lift for both domains ``a`` and ``b`` (shared: synergy) and for one only
    (exclusive: competition); boolean masks ``[..., L, E]``."""
    hi = high_lift(lift_LDE, threshold)
    ha, hb = hi[..., a, :], hi[..., b, :]
    return {"shared": ha & hb, "only_a": ha & ~hb, "only_b": hb & ~ha}


def experts_to_cover(p_LDE, share: float = 0.5):
    """How many experts, most used first, carry ``share`` of a domain's routing (NaN: no tokens)."""
    p = np.asarray(p_LDE, np.float64)
    cum = np.cumsum(-np.sort(-p, axis=-1), axis=-1)
    n = (cum < share - 1e-9).sum(-1) + 1.0
    return np.where(np.isnan(p).any(-1), np.nan, n)


def sorted_profile(x_LDE):
    """Per (layer, domain), the values over experts sorted high to low: independent of numbering."""
    return -np.sort(-np.asarray(x_LDE, np.float64), axis=-1)


# ------------------------------------------------------------------ eval-time routing


def routing_map(topk_TKL, num_experts: int):
    """Boolean ``R_LTE``: token t routed to expert e in layer l."""
    topk = np.asarray(topk_TKL)
    T, K, L = topk.shape
    R = np.zeros((L, T, num_experts), dtype=bool)
    rows = np.arange(T)[:, None]
    for layer in range(L):
        R[layer, rows, topk[:, :, layer]] = True
    return R


def coactivation(topk_TKL, num_experts: int):
    """C = R^T R per layer, ``[L, E, E]``: C_ij tokens routed to both i and j; C_ii to i."""
    topk = np.asarray(topk_TKL).astype(np.int64)
    T, K, L = topk.shape
    E = num_experts
    out = np.zeros((L, E * E), dtype=np.int64)
    for layer in range(L):
        ids = topk[:, :, layer]
        pairs = (ids[:, :, None] * E + ids[:, None, :]).ravel()
        out[layer] = np.bincount(pairs, minlength=E * E)
    return out.reshape(L, E, E)


def coactivation_conditional(C_LEE):
    """P(j | i) = C_ij / C_ii: of the tokens routed to i, the share also routed to j (row i)."""
    C = np.asarray(C_LEE, np.float64)
    return _div(C, np.diagonal(C, axis1=-2, axis2=-1)[..., :, None])


def router_saturation(topk_TKL, final_TKL):
    """Per layer, mean over tokens of |S_t ∩ S_final| / k: how much of the final checkpoint's
    routing an earlier checkpoint already has, on the same tokens, ``[L]`` (also per token: use
    ``saturation_per_token``)."""
    return saturation_per_token(topk_TKL, final_TKL).mean(0)


def saturation_per_token(topk_TKL, final_TKL):
    """``[T, L]``: |S_t ∩ S_final| / k for every token (top-k ids are distinct within a token)."""
    a, b = np.asarray(topk_TKL), np.asarray(final_TKL)
    K = a.shape[1]
    return (a[:, :, None, :] == b[:, None, :, :]).any(2).sum(1) / K


def vocab_specialization(topk_TKL, token_ids_T, num_experts: int):
    """For each token id, the share of its occurrences routed to its most frequent expert.

    Returns ``(vocab_V, n_V, share_LV)``: the token ids seen, how often each occurs, and per
    layer ``max_e c(v, e) / n(v)`` where ``c(v, e)`` counts occurrences of v routed to e (1: the
    token always goes to one expert; a token routed at random has about k/E).
    """
    topk = np.asarray(topk_TKL).astype(np.int64)
    vocab_V, inverse_T, n_V = np.unique(
        np.asarray(token_ids_T), return_inverse=True, return_counts=True
    )
    T, K, L = topk.shape
    V, E = len(vocab_V), num_experts
    share_LV = np.zeros((L, V))
    for layer in range(L):
        flat = (inverse_T[:, None] * E + topk[:, :, layer]).ravel()
        c_VE = np.bincount(flat, minlength=V * E).reshape(V, E)
        share_LV[layer] = c_VE.max(1) / n_V
    return vocab_V, n_V, share_LV


# ------------------------------------------------------------------ bulk: every flush at once

_TINY = np.float32(1e-30)  # clip for log: tiny * log(tiny) ~ 7e-29, far below float32 resolution


def _popcount(x):
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # numpy < 2.0
    return table[x.view(np.uint8)].reshape(*x.shape, -1).sum(-1)


@dataclass
class RoutingMetrics:
    """Training-time routing metrics per flush window (``F`` axis), as ANALYSIS_METRICS.md defines.

    Kept for every flush: ``H_FLD`` normalised entropy; ``js_FLDD`` JS divergence (bits) between
    domains; ``load_FLE`` per-expert load; ``cv_FL`` / ``maxvio_FL`` load balance;
    ``shared_FLDD[f, l, i, j]`` the number of experts with lift above ``threshold`` for both i and
    j (diagonal: for i at all), so ``exclusive(i, not j) = shared[i, i] - shared[i, j]``.

    The per-expert arrays ``S_FLDE`` (specialization), ``p_FLDE`` and ``lift_FLDE`` are the size
    of the input; the kernel computes them for every flush but keeps them only with
    ``keep_per_expert=True``; otherwise they are recomputed, elementwise, on access.
    """

    steps_F: np.ndarray
    domains: list
    k: int
    threshold: float
    cumulative: bool
    H_FLD: np.ndarray
    js_FLDD: np.ndarray
    load_FLE: np.ndarray
    cv_FL: np.ndarray
    maxvio_FL: np.ndarray
    shared_FLDD: np.ndarray
    count_FLDE: np.ndarray = field(repr=False, default=None)  # the input, for the per-expert arrays
    ntok_FLD: np.ndarray = field(repr=False, default=None)
    kept: dict = field(repr=False, default_factory=dict)
    total_count_LDE: np.ndarray = field(
        repr=False, default=None
    )  # the whole run, summed over flushes
    total_ntok_LD: np.ndarray = field(repr=False, default=None)

    def _counts(self):
        if self.cumulative:
            return np.cumsum(self.count_FLDE, axis=0, dtype=np.int64), np.cumsum(
                self.ntok_FLD, axis=0, dtype=np.int64
            )
        return self.count_FLDE, self.ntok_FLD

    @property
    def S_FLDE(self):
        if "S_FLDE" not in self.kept:
            count, ntok = self._counts()
            return _div(np.asarray(count, np.float32), np.asarray(ntok, np.float32)[..., None])
        return self.kept["S_FLDE"]

    @property
    def p_FLDE(self):
        return self.S_FLDE / np.float32(self.k)

    @property
    def lift_FLDE(self):
        if "lift_FLDE" not in self.kept:
            count, ntok = self._counts()
            S_all = _div(
                np.asarray(count, np.float32).sum(-2),
                np.asarray(ntok, np.float32).sum(-1)[..., None],
            )
            return _div(self.S_FLDE, S_all[..., None, :])
        return self.kept["lift_FLDE"]

    def exclusive_FLDD(self):
        """``[f, l, i, j]``: experts high for i but not for j."""
        diag = np.diagonal(self.shared_FLDD, axis1=-2, axis2=-1)
        return diag[..., :, None] - self.shared_FLDD

    def peak_FLD(self):
        """The top expert's specialization per domain: max_e S (uniform routing: k/E)."""
        return np.max(self.S_FLDE, axis=-1)


def routing_metrics(
    count_FLDE,
    ntok_FLD,
    k: int,
    *,
    steps_F=None,
    domains=None,
    threshold: float = 1.5,
    cumulative: bool = False,
    keep_per_expert: bool = False,
    chunk: int = 8,
) -> RoutingMetrics:
    """Every training-time routing metric for every flush window (or, ``cumulative``, for the
    running totals up to each flush), in float32.

    Works ``chunk`` flushes at a time in a domain-major layout ``[D, f, L, E]`` so that each
    domain's block is contiguous: the JS pairs are slice additions and the sums over experts are
    matrix-vector products. Inputs may be memory-mapped; they are read once.
    """
    count = count_FLDE
    F, L, D, E = count.shape
    P = D * (D - 1) // 2
    iu, ju = np.triu_indices(D, 1)
    f32 = np.float32
    ones_E, ones_mean = np.ones(E, f32), np.full(E, 1 / E, f32)
    inv_logE, inv_ln2, ln2 = f32(1 / np.log(E)), f32(1 / np.log(2)), f32(np.log(2))
    H = np.empty((F, L, D), f32)
    JSP = np.empty((F, L, P), f32)  # packed: pairs i < j in np.triu_indices order
    LOAD = np.empty((F, L, E), f32)
    CV, MV = np.empty((F, L), f32), np.empty((F, L), f32)
    SHARED = np.empty((F, L, D, D), np.int16)
    kept = (
        {"S_FLDE": np.empty((F, L, D, E), f32), "lift_FLDE": np.empty((F, L, D, E), f32)}
        if keep_per_expert
        else {}
    )
    # chunk buffers, reused, domain-major [D, f, L, E]
    cbuf = np.empty((D, chunk, L, E), f32)
    TOTAL, NTOT = np.zeros((D, L, E)), np.zeros((D, L))  # whole-run totals, float64
    pbuf, xbuf = np.empty((D, chunk, L, E), f32), np.empty((D, chunk, L, E), f32)
    pbool = np.empty((D, chunk, L, E), bool)
    pair, lpair = np.empty((P, chunk, L, E), f32), np.empty((P, chunk, L, E), f32)
    nbytes = (E + 7) // 8
    bits = np.zeros((D, chunk, L, (nbytes + 7) // 8 * 8), np.uint8)
    running_LDE, running_LD = np.zeros((L, D, E), np.int64), np.zeros((L, D), np.int64)
    for a in range(0, F, chunk):
        b = min(F, a + chunk)
        n = b - a
        c, pc, lpc, pr, lpr, hb = (
            cbuf[:, :n],
            pbuf[:, :n],
            xbuf[:, :n],
            pair[:, :n],
            lpair[:, :n],
            bits[:, :n],
        )
        if cumulative:
            block = np.cumsum(count[a:b], axis=0, dtype=np.int64) + running_LDE
            nblock = np.cumsum(ntok_FLD[a:b], axis=0, dtype=np.int64) + running_LD
            running_LDE, running_LD = block[-1], nblock[-1]
            TOTAL[:], NTOT[:] = running_LDE.transpose(1, 0, 2), running_LD.T
        else:
            block, nblock = count[a:b], ntok_FLD[a:b]
        np.copyto(
            c, np.asarray(block).transpose(2, 0, 1, 3), casting="unsafe"
        )  # domain-major, float32
        nt = np.asarray(nblock, dtype=f32).transpose(2, 0, 1)[..., None]  # [D, n, L, 1]
        if not cumulative:
            # exact: window counts come from float32 accumulators (< 2**24), summed here in float64
            TOTAL += c.sum(1, dtype=np.float64)
            NTOT += nt[:, :, :, 0].sum(1, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(c, nt * f32(k), out=pc)  # p = count / (k ntok); NaN: no tokens
            load = np.add(c[0], c[1], out=LOAD[a:b]) if D > 1 else np.copyto(LOAD[a:b], c[0])
            for i in range(2, D):
                load += c[i]
            p_all = load / (nt.sum(0) * f32(k))  # [n, L, E]
            if keep_per_expert:
                kept["S_FLDE"][a:b] = (pc * f32(k)).transpose(1, 2, 0, 3)
                kept["lift_FLDE"][a:b] = (pc / p_all).transpose(1, 2, 0, 3)
            # high lift: p / p_all > t, i.e. p > t p_all
            # (an unused expert, p_all = 0, is never high)
            hb[..., :nbytes] = np.packbits(
                np.greater(pc, f32(threshold + TIE) * p_all, out=pbool[:, :n]), axis=-1
            )
            np.maximum(pc, _TINY, out=pc)  # so 0 log 0 = 0; NaN stays NaN
            np.log(pc, out=lpc)
            lpc *= pc
            h = (lpc.reshape(-1, E) @ ones_E).reshape(D, n, L)  # sum_e p log p = -H in nats
            H[a:b] = (h * -inv_logE).transpose(1, 2, 0)
            off = 0
            for i in range(D - 1):  # p_i + p_j for every pair i < j, in np.triu_indices order
                np.add(pc[i + 1 :], pc[i], out=pr[off : off + D - 1 - i])
                off += D - 1 - i
            np.log(pr, out=lpr)
            lpr *= pr
            s2 = (lpr.reshape(-1, E) @ ones_E).reshape(P, n, L)  # sum_e (p+q) log(p+q)
            # m = (p+q)/2 sums to 1, so H(M) = -s2/2 + ln 2; JS = H(M) - (H(P) + H(Q)) / 2
            JSP[a:b] = ((f32(-0.5) * s2 + ln2 + f32(0.5) * (h[iu] + h[ju])) * inv_ln2).transpose(
                1, 2, 0
            )
            flat = load.reshape(-1, E)  # load balance over experts
            mean = flat @ ones_mean
            dev = flat - mean[:, None]
            CV[a:b] = (np.sqrt((dev * dev) @ ones_mean) / mean).reshape(n, L)
            MV[a:b] = (flat.max(-1) / mean - 1).reshape(n, L)
        w = hb.view(np.uint64)  # [D, n, L, words]: the high-lift experts of each domain as bit sets
        SHARED[a:b] = _popcount(w[:, None] & w[None, :]).sum(-1).transpose(2, 3, 0, 1)
    np.clip(
        JSP, 0, 1, out=JSP
    )  # float32 rounding of an entropy difference can leave [0, 1] by a hair
    JS = np.empty((F, L, D, D), f32)
    JS[:, :, iu, ju] = JSP
    JS[:, :, ju, iu] = JSP
    d = np.arange(D)
    JS[:, :, d, d] = np.where(
        np.isnan(H), np.nan, 0
    )  # a domain against itself: 0, or NaN without tokens
    return RoutingMetrics(
        steps_F=np.asarray(steps_F if steps_F is not None else np.arange(F)),
        domains=list(domains or range(D)),
        k=k,
        threshold=threshold,
        cumulative=cumulative,
        H_FLD=H,
        js_FLDD=JS,
        load_FLE=LOAD,
        cv_FL=CV,
        maxvio_FL=MV,
        shared_FLDD=SHARED,
        count_FLDE=count_FLDE,
        ntok_FLD=ntok_FLD,
        kept=kept,
        total_count_LDE=TOTAL.transpose(1, 0, 2).round().astype(np.int64),
        total_ntok_LD=NTOT.T.round().astype(np.int64),
    )


# ------------------------------------------------------------------ tidy views


def timeseries_frame(m: RoutingMetrics, peak: bool = True):
    """The per-flush metrics as a long frame: ``step, layer, domain, metric, value``.

    Per (layer, domain): ``entropy`` and (with ``peak``) ``peak_specialization`` = max_e S; per
    layer (domain ``all``): ``cv``, ``maxvio``, ``mean_js`` (over domain pairs).
    """
    import pandas as pd

    F, L, D = m.H_FLD.shape
    steps = np.asarray(m.steps_F)
    parts = []

    def add(name, values_FLD):
        parts.append(
            pd.DataFrame(
                {
                    "step": np.repeat(steps, L * D),
                    "layer": np.tile(np.repeat(np.arange(L), D), F),
                    "domain": np.tile(np.asarray(m.domains, dtype=object), F * L),
                    "metric": name,
                    "value": np.asarray(values_FLD, np.float64).ravel(),
                }
            )
        )

    def add_layer(name, values_FL):
        parts.append(
            pd.DataFrame(
                {
                    "step": np.repeat(steps, L),
                    "layer": np.tile(np.arange(L), F),
                    "domain": "all",
                    "metric": name,
                    "value": np.asarray(values_FL, np.float64).ravel(),
                }
            )
        )

    add("entropy", m.H_FLD)
    if peak:
        add("peak_specialization", m.peak_FLD())
    add_layer("cv", m.cv_FL)
    add_layer("maxvio", m.maxvio_FL)
    if D > 1:
        iu = np.triu_indices(D, 1)
        add_layer(
            "mean_js", np.nanmean(m.js_FLDD[:, :, iu[0], iu[1]], axis=-1) if F else np.zeros((0, L))
        )
    return pd.concat(parts, ignore_index=True)
