"""Time of ``ablate sweep expand`` (expansion + pre-compile) against independent compiles, in
one run.

Run (defaults: a 64-point sweep over 32 datasets holding 16B tokens, each point a 1B-token
ablation at sequence length 4096):

    python benchmarks/sweep.py

Smoke test (well under a minute):

    python benchmarks/sweep.py --datasets 8 --tokens 200M --budget 20M --points 8

Two measurements on the same synthetic manifest (``make_synthetic`` from benchmarks/compile.py:
megatron-format ``.idx`` files with lognormal document lengths, sparse ``.bin``):

1. **independent**: each of the --points recipes compiled by ``compile_recipe`` into a cache of
   its own, starting empty -- what every job of a sweep pays when it compiles for itself.
2. **sweep**: ``ablate sweep expand`` on one sweep file holding the same --points mixtures
   (the code share from 0.05 to 0.80 by zipped shares, the rest to math:general at 3:4):
   parse and validate every point, plan it, write its run directory, then pre-compile all
   of them through one shared cache -- each dataset's index built once, at the longest
   length any point needs; every point then only plans, blends and writes plan.json.

Both sides produce the same plans (checked: the same samples of the same datasets, point by
point). Target: sweep <= 1/8 of independent. The figure to quote is the ratio: both sides run on
the same machine in the same minutes. Each independent cache is removed after its compile
(untimed).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _bench_compile():
    """benchmarks/compile.py, imported by path (the synthetic manifest and recipe helpers)."""
    spec = importlib.util.spec_from_file_location("bench_compile", os.path.join(HERE, "compile.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--datasets", type=int, default=32, help="datasets in the manifest (default 32)"
    )
    ap.add_argument("--tokens", default="16B", help="tokens the datasets hold in all (default 16B)")
    ap.add_argument("--budget", default="1B", help="each point's token budget (default 1B)")
    ap.add_argument("--points", type=int, default=64, help="points of the sweep (default 64)")
    ap.add_argument("--seq", type=int, default=4096, help="sequence length (default 4096)")
    ap.add_argument("--gbs", type=int, default=512, help="global batch size (default 512)")
    ap.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "ablate-bench-sweep"),
        help="synthetic data (kept), caches and run dirs (removed)",
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    bc = _bench_compile()
    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # megatron-core warns at import when TE/Apex are absent
        from ablate.recipe.compile import _single_process_group, compile_recipe
        from ablate.recipe.schema import parse_recipe
        import ablate.sweep.commands  # noqa: F401  (import cost outside the timed expand)
        import megatron.core.datasets.blended_megatron_dataset_builder  # noqa: F401

    tokens, budget = bc.parse_count(args.tokens), bc.parse_count(args.budget)
    data = os.path.join(work, f"data-{args.datasets}x{tokens}-s{args.seed}")
    log(f"data: {args.datasets} datasets, {tokens:,} tokens (made once, kept) ...")
    manifest = bc.make_synthetic(data, args.datasets, tokens, args.seed)
    codes = [float(c) for c in np.linspace(bc.SWEEP_LOW, bc.SWEEP_HIGH, args.points)]
    mixes = [bc.sweep_mix(c) for c in codes]

    def recipe(name: str, cache: str, mix: dict) -> dict:
        return bc.recipe_dict(
            name, manifest, cache, os.path.join(work, "runs", name), args.seq, args.gbs, budget, mix
        )

    with _single_process_group():  # one gloo group for the whole run, as both sides would have
        # warm-up, untimed: imports, megatron-core's C++ helpers, the .idx files in the page cache
        compile_recipe(
            parse_recipe(
                recipe("warmup", bc.fresh(os.path.join(work, "cache-warm")), mixes[0]), "warmup"
            )
        )

        # 1. independent compiles, each into an empty cache of its own
        independent, mixtures = 0.0, []
        for i, mix in enumerate(mixes):
            cache = bc.fresh(os.path.join(work, "cache-own"))
            raw = recipe(f"p{i:03d}", cache, mix)
            t0 = time.perf_counter()
            plan, _ = compile_recipe(parse_recipe(raw, raw["name"]))
            seconds = time.perf_counter() - t0
            independent += seconds
            mixtures.append(_mixture(plan))
            if (i + 1) % 8 == 0 or i + 1 == len(mixes):
                log(
                    f"  independent {i + 1}/{len(mixes)}: {seconds:.2f}s (total {independent:.1f}s)"
                )
        shutil.rmtree(os.path.join(work, "runs"), ignore_errors=True)

        # 2. the sweep: one file, `ablate sweep expand` (expansion + pre-compile, shared cache)
        cache = bc.fresh(os.path.join(work, "cache-sweep"))
        swept, points = bc.run_sweep(
            [recipe("base", cache, mix) for mix in mixes], os.path.join(work, "runs")
        )
        log(f"  sweep: {swept:.2f}s")
    assert len(points) == len(mixes)
    # both sides compiled the same mixtures: the same samples of the same datasets, point by point
    assert [_mixture(p.plan) for p in points] == mixtures, (
        "the sweep planned other mixtures than the independent compiles"
    )
    indices = len(
        [d for d in os.listdir(os.path.join(work, "cache-sweep", "indices")) if "." not in d]
    )
    (stage,) = points[0].plan.stages
    for d in ("cache-own", "cache-warm", "cache-sweep", "runs"):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)

    from ablate.recipe.budget import format_tokens

    ratio = swept / independent
    print(
        f"\nablate sweep expand vs {args.points} independent compiles: {args.points} points "
        f"over {args.datasets} datasets holding {format_tokens(tokens)} tokens; "
        f"each point {format_tokens(stage.tokens)} tokens = "
        f"{stage.samples:,} samples of {args.seq}; {os.cpu_count()} cores"
    )
    print(f"{'measurement':<44} {'seconds':>9} {'per point':>10}")
    print("-" * 65)
    print(
        f"{f'1. {args.points} independent compiles (own caches)':<44} {independent:>9.2f} "
        f"{independent / args.points:>10.3f}"
    )
    print(
        f"{'2. sweep expand + pre-compile (one cache)':<44} {swept:>9.2f} "
        f"{swept / args.points:>10.3f}"
    )
    print(
        f"   the sweep built {indices} per-dataset indices "
        f"(independent: {args.points} x {len(stage.datasets)})"
    )
    print(
        f"\nratio sweep / independent: {ratio:.3f} = 1/{1 / ratio:.1f}  "
        f"{'ok' if ratio <= 1 / 8 else 'MISS'} (target <= 1/8 = 0.125)"
    )


def _mixture(plan) -> list:
    return [(d.prefix, d.samples, d.sample_offset) for s in plan.stages for d in s.datasets]


if __name__ == "__main__":
    main()
