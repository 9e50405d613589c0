"""Routing-metric throughput: every training-time routing metric of many runs, against a naive
per-run Python loop over the flush files, measured in the same process.

    python benchmarks/analysis.py   # 100 runs x 500 flushes x 24 layers x 6 domains x 64 experts
    python benchmarks/analysis.py --runs 10 --flushes 50   # a quick look

Synthetic routing logs (counts consistent with top-k: ``count.sum(-1) == k * ntok``):

* ``--runs`` runs stored in the columnar format ``ablate.analysis`` reads (``routing_columnar.npz``,
  int32 counts, float32 gates), each with its own random counts;
* ``--naive-runs`` further runs stored as training writes them: one ``routing/step_*.npz`` per
  flush (int64 counts, float64 gates). On these the script times consolidation into the columnar
  file, the freshness check a normal load does (list + stat every flush file), and the naive
  baseline, and checks that both paths give the same numbers.

Fast path, per run: load the columnar file (memory-mapped) and compute, for every flush window,
specialization, routing distribution, lift, normalised entropy, the JS matrix between domains,
per-expert load, CV, MaxVio and shared / exclusive expert counts for every domain pair
(``RoutingLog.metrics``), plus the whole-run numbering-free profile (entropy, experts covering
50%, sorted specialization, JS, CV, MaxVio). Then the verdicts on those runs, grouped as
conditions x ``--seeds`` seeds (run r is condition r // seeds; condition 0 is the control; the
conditions sit on a numeric axis, a share from 0 to 0.95): every whole-run metric per layer x
domain (entropy) and layer x domain pair (JS) of every condition against the control by paired t
over seeds (``ablate.analysis.stats``), BH over that whole family, Holm over each domain's small
family (its layer-mean entropy in each condition), and a linear dose-response slope per metric;
the synthetic runs are independent, so this is also an A/A check of the false-positive rates.
Naive baseline of the verdicts: ``scipy.stats.ttest_rel`` per comparison,
``scipy.stats.false_discovery_control``, a Holm loop and ``scipy.stats.linregress`` per metric
(checked equal). Naive baseline of the metrics, per run: ``np.load`` every flush file, then loop
over layers, domains and domain pairs with one small numpy call per quantity and
``scipy.spatial.distance.jensenshannon`` for JS. The baseline is timed on ``--naive-runs`` runs
and scaled to ``--runs`` (its cost is linear in runs: it is a loop over them).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ablate.analysis import routing_compare as rc  # noqa: E402
from ablate.analysis import routing_store as rs  # noqa: E402
from ablate.analysis import stats as st  # noqa: E402

DOMAINS = ["code.exec", "code.nl", "general", "math.code", "math.structured", "math.text"]


def synthetic_counts(rng, F, L, D, E, k):
    """Counts with a per-domain preference and a few empty windows (a domain outside its stage)."""
    pref = rng.dirichlet(np.full(E, 0.5), size=(L, D)).astype(np.float32)
    noise = rng.random((F, L, D, E), dtype=np.float32)
    slots = (pref[None] * noise * 2e4).astype(np.int32)
    slots[..., 0] += (-slots.sum(-1)) % k  # every window's slots are k x its tokens
    slots[: F // 10, :, -1, :] = 0  # the last domain is absent for the first tenth of training
    ntok = (slots.sum(-1) // k).astype(np.int32)
    return slots, ntok


def write_flush_files(run_dir, count, ntok, rng):
    os.makedirs(os.path.join(run_dir, "routing"), exist_ok=True)
    for f in range(count.shape[0]):
        with open(os.path.join(run_dir, "routing", f"step_{(f + 1) * 50:08d}.npz"), "wb") as fh:
            np.savez(
                fh,
                count=count[f].astype(np.int64),
                gate=count[f] * 0.37,
                ntok=ntok[f].astype(np.int64),
                domains=np.array(DOMAINS[: count.shape[2]]),
            )


def fast_one(run_dir, k):
    log = rs.load_routing(run_dir, k=k, refresh=False)
    m = log.metrics()
    profile = rc.invariant_profile(
        m.total_count_LDE, m.total_ntok_LD, k
    )  # whole run (summed in the same pass)
    return {
        "H": m.H_FLD,
        "js": m.js_FLDD,
        "cv": m.cv_FL,
        "maxvio": m.maxvio_FL,
        "shared": m.shared_FLDD,
        "profile_cover50": profile["cover50_LD"],
        "profile_entropy": profile["entropy_LD"],
        "profile_js": profile["js_LDD"],
    }


def whole_run(out):
    """The whole-run metrics the verdicts compare (the per-window ones are computed and dropped,
    as before: keeping them for 100 runs would hold ~1 GB)."""
    return {key: out[key] for key in ("profile_entropy", "profile_js")}


def run_metrics(results):
    """Whole-run metrics per run, (R, M): entropy per layer x domain, then JS per layer x domain
    pair (i < j), with their names."""
    L, D = results[0]["profile_entropy"].shape
    iu = np.triu_indices(D, 1)
    names = [f"H/L{layer}/{DOMAINS[d]}" for layer in range(L) for d in range(D)] + [
        f"JS/L{layer}/{DOMAINS[i]}~{DOMAINS[j]}" for layer in range(L) for i, j in zip(*iu)
    ]
    values_RM = np.stack(
        [np.concatenate([r["profile_entropy"].ravel(), r["profile_js"][:, iu[0], iu[1]].ravel()])
         for r in results]
    )  # fmt: skip
    return values_RM, names


def fast_verdicts(results, conditions, seeds, dose_C):
    """Every whole-run metric of conditions 1.. against condition 0 (the control), paired over
    seeds (run r is condition r // seeds, seed r % seeds): paired t and BH over the whole family;
    per domain, Holm over the small family of that domain's layer-mean entropy in each condition;
    a linear dose-response slope per metric over the conditions' numeric axis."""
    L, D = results[0]["profile_entropy"].shape
    values_RM, names = run_metrics(results[: conditions * seeds])
    V_CSM = values_RM.reshape(conditions, seeds, -1)
    C, S, M = V_CSM.shape
    deltas_KS = (V_CSM[1:] - V_CSM[:1]).transpose(0, 2, 1).reshape(-1, S)  # K = (C-1) x M
    t = st.paired_t(deltas_KS)
    bh = st.correct_t(t, "bh") if st.family_size_ok(len(deltas_KS)) else None
    H_CSD = V_CSM[..., : L * D].reshape(C, S, L, D).mean(2)
    dom_KS = (H_CSD[1:] - H_CSD[:1]).transpose(2, 0, 1).reshape(-1, S)  # K = D x (C-1)
    dom = st.paired_t(dom_KS)
    holm = None
    if st.family_size_ok(C - 1):  # one family of C - 1 conditions per domain
        fam = [x.reshape(D, C - 1) for x in (dom.p_K, dom.mean_K, dom.se_K, dom.df_K)]
        holm = st.correct(*fam, method="holm")
    fits = st.dose_response_many(np.repeat(dose_C, S), values_RM.T, name="synthetic axis")
    return {"values_RM": values_RM, "names": names, "t": t, "bh": bh, "holm": holm, "fits": fits}


def naive_verdicts(values_RM, conditions, seeds, L, D, dose_C):
    """What one writes first: scipy.stats.ttest_rel per comparison, scipy's BH, Holm as a loop
    over each domain's family, scipy.stats.linregress per metric."""
    from scipy import stats

    V = values_RM.reshape(conditions, seeds, -1)
    p = [
        stats.ttest_rel(V[c, :, m], V[0, :, m]).pvalue
        for c in range(1, conditions)
        for m in range(V.shape[2])
    ]
    p_bh = stats.false_discovery_control(p, method="bh") if len(p) > 1 else None
    holm = []
    for d in range(D):
        h = [V[c, :, d : L * D : D].mean(1) for c in range(conditions)]  # layer means per seed
        fam = [stats.ttest_rel(h[c], h[0]).pvalue for c in range(1, conditions)]
        adj, running = [0.0] * len(fam), 0.0
        for rank, i in enumerate(sorted(range(len(fam)), key=fam.__getitem__)):
            running = max(running, min(1.0, (len(fam) - rank) * fam[i]))
            adj[i] = running
        holm.append(adj)
    dose = np.repeat(dose_C, seeds)
    slopes = [stats.linregress(dose, values_RM[:, m]).slope for m in range(values_RM.shape[1])]
    return np.array(p), p_bh, np.array(holm), np.array(slopes)


def check_verdicts(fast, naive):
    """The vectorised verdicts equal scipy's, comparison by comparison."""
    p, p_bh, holm, slopes = naive
    bad = [
        name
        for name, ok in (
            ("paired t p", np.allclose(fast["t"].p_K, p, rtol=1e-8, atol=1e-12)),
            ("BH", p_bh is None or np.allclose(fast["bh"].p_adj_K, p_bh, rtol=1e-8, atol=1e-12)),
            ("Holm", fast["holm"] is None or np.allclose(fast["holm"].p_adj_K, holm, rtol=1e-8)),
            ("slopes", np.allclose(fast["fits"].slope_K, slopes, rtol=1e-8, atol=1e-12)),
        )
        if not ok
    ]
    if bad:
        raise SystemExit(f"fast and naive verdicts differ: {bad}")


def print_verdicts(v, conditions, seeds, verdicts_s, naive_s):
    K, M = len(v["t"].p_K), v["values_RM"].shape[1]
    fast = min(verdicts_s.values())
    skipped = "" if v["holm"] else "; skipped: a family of 1, nothing to correct"
    print(
        f"verdicts: {conditions - 1} conditions x {seeds} seeds against the control on {M} "
        f"whole-run metrics per run (entropy per layer x domain, JS per layer x domain pair) = "
        f"{K} paired t tests, BH over all {K}, Holm over each domain's family of "
        f"{conditions - 1} (layer-mean entropy{skipped}), "
        f"{M} dose-response slopes over "
        f"{conditions} doses: {fast:.3f} s; naive (scipy.stats.ttest_rel, "
        f"false_discovery_control, a Holm loop, linregress per metric) {naive_s:.2f} s = "
        f"{naive_s / fast:.0f}x (same numbers: checked)"
    )
    # the synthetic runs draw their routing independently: an A/A family, every true effect 0
    raw = st.false_positive_rate(v["t"].p_K <= 0.05)
    line = (
        f"A/A check (no true effects): raw paired t rejects {raw.rate:.1%} "
        f"[{raw.lo:.1%}, {raw.hi:.1%}]"
    )
    if v["bh"] is not None:
        line += f", after BH {st.false_positive_rate(v['bh'].reject_adj_K).rate:.2%}"
    if v["holm"] is not None:
        holm = st.false_positive_rate(v["holm"].reject_adj_K)
        line += f", domain families after Holm {holm.rate:.1%}"
    slopes = st.false_positive_rate(v["fits"].p_K <= 0.05)
    print(line + f"; dose-response slopes at p <= 0.05: {slopes.rate:.1%}")


def naive_one(run_dir, k, threshold=1.5):
    """What one writes first: a loop over flush files, layers, domains and pairs."""
    from scipy.spatial.distance import jensenshannon

    H, JS, CV, MV, SH = [], [], [], [], []
    total_c = total_n = None
    for path in sorted(glob.glob(os.path.join(run_dir, "routing", "step_*.npz"))):
        with np.load(path) as z:
            count, ntok = z["count"], z["ntok"]
        total_c = count if total_c is None else total_c + count
        total_n = ntok if total_n is None else total_n + ntok
        L, D, E = count.shape
        h_l, js_l, cv_l, mv_l, sh_l = [], [], [], [], []
        for layer in range(L):
            load = count[layer].sum(0).astype(float)
            cv_l.append(load.std() / load.mean())
            mv_l.append(load.max() / load.mean() - 1)
            p_all = load / (k * ntok[layer].sum())
            ps, highs, hs = [], [], []
            for d in range(D):
                if ntok[layer, d] == 0:
                    p = np.full(E, np.nan)
                else:
                    p = count[layer, d] / (k * ntok[layer, d])
                with np.errstate(divide="ignore", invalid="ignore"):
                    lift = p / p_all
                    nz = p[p > 0]
                hs.append(-(nz * np.log(nz)).sum() / np.log(E) if ntok[layer, d] else np.nan)
                highs.append(set(np.flatnonzero(lift > threshold + 1e-6)))
                ps.append(p)
            js = np.zeros((D, D))
            sh = np.zeros((D, D), int)
            for i in range(D):
                for j in range(D):
                    if np.isnan(ps[i]).any() or np.isnan(ps[j]).any():
                        js[i, j] = np.nan
                    elif i != j:
                        js[i, j] = jensenshannon(ps[i], ps[j], base=2) ** 2
                    sh[i, j] = len(highs[i] & highs[j])
            h_l.append(hs)
            js_l.append(js)
            sh_l.append(sh)
        H.append(h_l)
        JS.append(js_l)
        CV.append(cv_l)
        MV.append(mv_l)
        SH.append(sh_l)
    p = total_c / (k * total_n[..., None])
    cover = []
    for layer in range(p.shape[0]):
        row = []
        for d in range(p.shape[1]):
            acc, n = 0.0, 0
            for x in sorted(p[layer, d], reverse=True):
                acc, n = acc + x, n + 1
                if acc >= 0.5 - 1e-9:
                    break
            row.append(n)
        cover.append(row)
    return {
        "H": np.array(H),
        "js": np.array(JS),
        "cv": np.array(CV),
        "maxvio": np.array(MV),
        "shared": np.array(SH),
        "profile_cover50": np.array(cover, float),
    }


def same(a, b, tol=2e-4):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return (
        a.shape == b.shape
        and np.array_equal(np.isnan(a), np.isnan(b))
        and np.allclose(a[~np.isnan(a)], b[~np.isnan(b)], atol=tol)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--flushes", type=int, default=500)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--domains", type=int, default=6)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument(
        "--naive-runs",
        type=int,
        default=2,
        help="runs with per-flush files: consolidation and baseline",
    )
    ap.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="the runs are conditions x seeds (run r: condition r // seeds); condition 0 is "
        "the control",
    )
    ap.add_argument(
        "--workers", type=int, default=2, help="threads for the fast path (also timed with 1)"
    )
    ap.add_argument(
        "--dir",
        default=None,
        help="where to write the synthetic runs (default: a temporary directory)",
    )
    args = ap.parse_args()
    F, L, D, E, k = args.flushes, args.layers, args.domains, args.experts, args.topk
    root = args.dir or tempfile.mkdtemp(prefix="ablate-bench-analysis-")
    rng = np.random.default_rng(0)
    try:
        t = time.perf_counter()
        fast_dirs = []
        for i in range(args.runs):
            count, ntok = synthetic_counts(rng, F, L, D, E, k)
            d = os.path.join(root, f"run{i:03d}")
            os.makedirs(os.path.join(d, "routing"))
            rs.write_columnar(
                os.path.join(d, rs.COLUMNAR),
                {
                    "steps_F": np.arange(1, F + 1) * 50,
                    "count_FLDE": count,
                    "ntok_FLD": ntok,
                    "gate_FLDE": count.astype(np.float32) * 0.37,
                    "domains": DOMAINS[:D],
                    "files": [],
                },
            )
            fast_dirs.append(d)
        naive_dirs = []
        for i in range(args.naive_runs):
            count, ntok = synthetic_counts(rng, F, L, D, E, k)
            d = os.path.join(root, f"naive{i:03d}")
            write_flush_files(d, count, ntok, rng)
            naive_dirs.append(d)
        size = sum(os.path.getsize(os.path.join(d, rs.COLUMNAR)) for d in fast_dirs)
        print(
            f"synthetic logs: {args.runs} runs x {F} flushes x {L} layers x {D} domains "
            f"x {E} experts, top-{k} ({size / 2**30:.2f} GiB columnar) + {args.naive_runs} runs "
            f"as flush files; written in {time.perf_counter() - t:.1f} s",
            flush=True,
        )

        # consolidation (once per run, then cached) and the freshness check of every later load
        t = time.perf_counter()
        for d in naive_dirs:
            rs.load_routing(d, k=k)
        consolidate_s = (time.perf_counter() - t) / max(1, len(naive_dirs))
        t = time.perf_counter()
        for d in naive_dirs:
            # up to date: lists and stats every flush file, then memory-maps
            rs.load_routing(d, k=k)
        full_check_s = (time.perf_counter() - t) / max(1, len(naive_dirs))

        # correctness: the fast path equals the naive loop on the same runs
        naive_s, mismatches = 0.0, []
        for d in naive_dirs:
            t = time.perf_counter()
            want = naive_one(d, k)
            naive_s += time.perf_counter() - t
            got = fast_one(d, k)
            mismatches += [key for key in want if not same(got[key], want[key])]
        if mismatches:
            raise SystemExit(f"fast and naive results differ: {sorted(set(mismatches))}")
        naive_per_run = naive_s / max(1, len(naive_dirs))
        # once routing/ has not changed for a while, a load only stats that directory
        for d in naive_dirs:
            old = time.time_ns() - 3600 * 10**9
            os.utime(os.path.join(d, "routing"), ns=(old, old))
            rs.load_routing(d, k=k)
        t = time.perf_counter()
        for d in naive_dirs:
            rs.load_routing(d, k=k)
        check_s = (time.perf_counter() - t) / max(1, len(naive_dirs))

        conditions = args.runs // args.seeds
        dose_C = np.round(np.linspace(0.0, 0.95, conditions), 4)  # the conditions' axis (a share)
        results, verdicts_s = {}, {}
        for workers in sorted({1, args.workers}):
            t, c = time.perf_counter(), time.process_time()
            if workers == 1:
                runs_out = [whole_run(fast_one(d, k)) for d in fast_dirs]
            else:
                with ThreadPoolExecutor(workers) as pool:
                    runs_out = list(pool.map(lambda d: whole_run(fast_one(d, k)), fast_dirs))
            t_v = time.perf_counter()
            verdicts = None
            if conditions >= 2:
                verdicts = fast_verdicts(runs_out, conditions, args.seeds, dose_C)
            verdicts_s[workers] = time.perf_counter() - t_v
            results[workers] = (time.perf_counter() - t, time.process_time() - c)
        naive_v_s = 0.0
        if verdicts is not None:
            L_, D_ = runs_out[0]["profile_entropy"].shape
            t = time.perf_counter()
            want = naive_verdicts(verdicts["values_RM"], conditions, args.seeds, L_, D_, dose_C)
            naive_v_s = time.perf_counter() - t
            check_verdicts(verdicts, want)
        naive_total = naive_per_run * args.runs + naive_v_s
        print(
            f"\nconsolidation of {F} flush files into {rs.COLUMNAR}: "
            f"{consolidate_s:.2f} s per run (once)"
        )
        print(
            f"freshness check of an up-to-date store: {full_check_s * 1000:.1f} ms per run "
            f"listing {F} flush files, {check_s * 1000:.2f} ms once routing/ has settled "
            "(no listing)"
        )
        print(
            f"naive per-run loop: {naive_per_run:.2f} s per run, measured on "
            f"{len(naive_dirs)} runs -> {naive_per_run * args.runs:.0f} s for {args.runs} runs "
            "(same numbers as the fast path: checked)"
        )
        if verdicts is not None:
            print_verdicts(verdicts, conditions, args.seeds, verdicts_s, naive_v_s)
        for workers, (wall, cpu) in results.items():
            fresh = (
                f"; with freshness checks {format(wall + check_s * args.runs, '.2f')} s"
                if check_s
                else ""
            )
            print(
                f"fast path with verdicts, {workers} thread(s): {wall:.2f} s wall "
                f"({cpu:.2f} s CPU) "
                f"for {args.runs} runs = {wall / args.runs * 1000:.1f} ms per run, of which "
                f"verdicts {verdicts_s[workers]:.3f} s; {naive_total / wall:.0f}x the naive "
                f"loops{fresh}"
            )
        best = min(w for w, _ in results.values())
        print(
            f"\nbest: {best:.2f} s for {args.runs} runs, metrics and verdicts "
            f"(target <= 5 s: {'met' if best <= 5 else 'NOT met'}); "
            f"ratio to naive {naive_total / best:.0f}x ({naive_total:.0f} s)"
        )
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
