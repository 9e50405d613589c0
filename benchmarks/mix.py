"""``ablate mix`` throughput: fit + propose over a RegMix-scale swarm, against a naive per-metric
loop measured in the same process.

    python benchmarks/mix.py   # 512 runs x 12 domains x 8 metrics, loglinear + gbm + gp
    python benchmarks/mix.py --runs 128 --models loglinear   # a quick look

Setup (not timed): ``--runs`` run directories (recipe.yaml, plan.json with the stage's realised
per-domain tokens, eval/step_N.json) of Dirichlet mixtures over ``--domains`` domains, 1 in 8
repeated with a second seed, each of ``--metrics`` metrics a log-linear law with interactions plus
noise. Timed fast path, the library as ``ablate mix fit`` and ``propose`` run it: read the table
once (``mixture_table``, all metrics), 5-fold out-of-fold validation of every model with the folds
shared and, for the log-linear model, the design matrix and least-squares start built once per
fold for all metrics (``LogLinear.fit_many``), the final fits, then ``propose_mixture`` on an
objective over all metrics. Naive baseline: for each metric, read the table for that metric
alone, then for each model and fold fit a fresh single-metric model (``model.fit``: its own
design matrix), then the final fits. The outputs are checked equal (same OOF predictions).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ablate.mix import models as mm  # noqa: E402
from ablate.mix.table import mixture_table  # noqa: E402
from ablate.mix.validate import kfold_indices, validate_models  # noqa: E402
from tests.mix_fakes import loglinear_law, write_sweep  # noqa: E402


def setup(root, runs: int, D: int, M: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    domains = [f"dom{d:02d}" for d in range(D)]
    b_MD = rng.uniform(0.0, 0.2, size=(M, D))
    c_MDD = rng.normal(0, 0.3, size=(M, D, D))

    def law(W):
        return np.stack([loglinear_law(W, 1.0, b_MD[m], c_MDD[m]) for m in range(M)], 1)

    n_mix = runs * 8 // 9
    write_sweep(
        root,
        domains,
        law,
        n_mix=n_mix,
        repeats=runs - n_mix,
        noise=0.01,
        metrics=[f"m{m}" for m in range(M)],
        min_share=0.005,
    )
    return [f"mixlaw/m{m}" for m in range(M)]


def fast(root, targets, models, folds):
    W, Y, table = mixture_table([os.path.join(root, "*")], targets)
    inter = True
    report, oof = validate_models(W, Y, targets, models, folds, 0, inter)
    fitted = {n: mm.model_class(n).fit_many(W, Y, **mm.model_kwargs(n, inter, 0)) for n in models}
    return W, Y, oof, fitted


def naive(root, targets, models, folds):
    oof = {n: np.empty((0,)) for n in models}
    cols = {n: [] for n in models}
    for t in targets:
        W, Y, _ = mixture_table([os.path.join(root, "*")], [t])
        y = Y[:, 0]
        for n in models:
            P = np.empty_like(y)
            for train, test in kfold_indices(W, folds, 0):
                model = mm.make_model(n, True, 0, uncertainty=False).fit(W[train], y[train])
                P[test] = model.predict(W[test])[0]
            cols[n].append(P)
            mm.make_model(n, True, 0).fit(W, y)
    for n in models:
        oof[n] = np.stack(cols[n], 1)
    return oof


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=512)
    ap.add_argument("--domains", type=int, default=12)
    ap.add_argument("--metrics", type=int, default=8)
    ap.add_argument("--models", default="loglinear,gbm,gp")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    models = args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "runs")
        t0 = time.perf_counter()
        targets = setup(root, args.runs, args.domains, args.metrics)
        print(
            f"setup: {args.runs} run dirs x {args.domains} domains x {args.metrics} metrics "
            f"in {time.perf_counter() - t0:.1f} s (not timed)"
        )

        c0 = time.process_time()
        t0 = time.perf_counter()
        W, Y, table = mixture_table([os.path.join(root, "*")], targets)
        t_table = time.perf_counter() - t0
        t_models = {}
        oof_fast, fitted = {}, {}
        for n in models:
            t0 = time.perf_counter()
            _, o = validate_models(W, Y, targets, [n], args.folds, 0, True)
            fitted[n] = mm.model_class(n).fit_many(W, Y, **mm.model_kwargs(n, True, 0))
            oof_fast[n] = o[n]
            t_models[n] = time.perf_counter() - t0
        # propose on a fit directory written from these models
        from ablate.mix.fit import fit_mixture
        from ablate.mix.propose import propose_mixture

        fit_dir = os.path.join(tmp, "fit")
        c_fit = time.process_time()
        t0 = time.perf_counter()
        fit_mixture(
            [os.path.join(root, "*")],
            targets,
            fit_dir,
            models=models,
            folds=args.folds,
            progress=False,
        )
        t_fit_cli = time.perf_counter() - t0
        c_fit = time.process_time() - c_fit
        objective = " + ".join(f"'{t}'" for t in targets)
        t0 = time.perf_counter()
        result = propose_mixture(fit_dir, objective)
        t_propose = time.perf_counter() - t0
        fast_total = t_table + sum(t_models.values()) + t_propose
        cpu_fast = time.process_time() - c0 - c_fit  # this process's CPU, not the machine's

        t0 = time.perf_counter()
        oof_naive = naive(root, targets, models, args.folds)
        t_naive = time.perf_counter() - t0
        gp_rmse = None
        for n in models:
            if n == "gp":  # one GP over all metrics (shared kernel) against one per metric
                rmse = [np.sqrt(((o - Y) ** 2).mean()) for o in (oof_fast[n], oof_naive[n])]
                gp_rmse = rmse
            else:
                np.testing.assert_allclose(oof_fast[n], oof_naive[n], rtol=1e-6, atol=1e-8)

    print(f"table (read {args.runs} runs once): {t_table:.2f} s")
    for n in models:
        print(
            f"{n}: {args.folds}-fold OOF + final fit, {args.metrics} metrics: {t_models[n]:.2f} s"
        )
    print(
        f"propose ({len(targets)}-metric objective): {t_propose:.2f} s; predicted "
        f"{result['predicted']:.4g} +- {result['std']:.2g}"
    )
    print(
        f"fast path (table + fits + propose): {fast_total:.2f} s; the whole 'mix fit' "
        f"(with fit.html, pickles): {t_fit_cli:.2f} s"
    )
    print(
        f"CPU time: fast path {cpu_fast:.2f} s, the whole 'mix fit' {c_fit:.2f} s (load "
        f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    if gp_rmse:
        print(
            f"gp OOF RMSE: one GP for all metrics {gp_rmse[0]:.4g}, one per metric {gp_rmse[1]:.4g}"
        )
    print(
        f"naive per-metric loop (table per metric, fresh single-metric fits): {t_naive:.2f} s "
        f"(x{t_naive / (t_table + sum(t_models.values())):.2f} the fast fit path); "
        "OOF predictions equal (log-linear, boosted trees)"
    )


if __name__ == "__main__":
    main()
