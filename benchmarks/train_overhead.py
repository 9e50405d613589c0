"""Step-time overhead of the training telemetry, measured in one run.

    python benchmarks/train_overhead.py                 # quickstart model, 3 x 2 blocks of 20 steps
    python benchmarks/train_overhead.py --steps 10 --repeat 2   # quick look

"Telemetry" is what the loop adds to a bare step: the routing capture (a forward hook on every
router accumulating count/gate/ntok per domain), the per-domain loss sums, their all-reduce,
and the routing flush (every ``cadence.routing_flush_every`` steps, amortized here). Both modes
run the loop's own ``train_step`` on the same model and the same micro-batches; blocks
alternate (on, off, off, on, ...) so drift in machine speed hits both alike. It prints the
median step time of each mode and the overhead ``on / off - 1``; target: <= 3 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=os.path.join(REPO, "recipes", "quickstart.yaml"))
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--repeat", type=int, default=3, help="pairs of blocks (one on, one off)")
    ap.add_argument("--workdir", default=None, help="where the toy world is prepared (default: a temp dir)")
    args = ap.parse_args()

    import torch
    import torch.distributed as dist

    from ablate.data.prepare import prepare
    from ablate.recipe.compile import build_stage_datasets
    from ablate.recipe.plan import make_plan
    from ablate.recipe.schema import load_recipe
    from ablate.telemetry.routing import RoutingCapture
    from ablate.train import backend
    from ablate.train.data import StagedData
    from ablate.train.loop import build_model_and_optimizer, train_step

    workdir = args.workdir or tempfile.mkdtemp(prefix="ablate-overhead-")
    os.chdir(workdir)
    if not os.path.exists("data/toyworld/manifest.json"):
        prepare("toyworld", "data/toyworld", progress=False)
    recipe = load_recipe(args.recipe)
    layout = backend.init(recipe)
    plan = make_plan(recipe)
    data = StagedData(plan, build_stage_datasets(plan), recipe.training.micro_batch_size, 0, 1)
    model, ddp, optimizer = build_model_and_optimizer(recipe, layout, plan.tokenizer["vocab_size"])
    routing = RoutingCapture(model, len(data.domains))
    batches = [data.microbatches(s) for s in range(args.steps)]  # the same batches for both modes
    flush_every = recipe.cadence.routing_flush_every
    clip = recipe.training.optimizer.clip_grad

    def block(telemetry: bool) -> float:
        t0 = time.perf_counter()
        for micro in batches:
            loss_D, count_D, _ = train_step(ddp, model, optimizer, micro, routing, len(data.domains),
                                            layout.device, clip, telemetry=telemetry)
            if telemetry:
                dist.all_reduce(torch.cat([loss_D, count_D]))  # the loop's per-step metric reduction
        return (time.perf_counter() - t0) / len(batches)

    def flush_seconds() -> float:
        t0 = time.perf_counter()
        routing.flush()
        return time.perf_counter() - t0

    block(True)  # warm-up: allocator, first-touch of the indices
    on, off = [], []
    for r in range(args.repeat):
        for telemetry in ((True, False) if r % 2 == 0 else (False, True)):
            (on if telemetry else off).append(block(telemetry))
            print(f"  block {'on ' if telemetry else 'off'}: {(on if telemetry else off)[-1] * 1000:.1f} ms/step", flush=True)
    flush = statistics.median(flush_seconds() for _ in range(5))
    m_on, m_off = statistics.median(on) + flush / flush_every, statistics.median(off)
    tokens = recipe.training.global_batch_size * recipe.training.seq_length
    print(f"\ntelemetry overhead, {recipe.name} ({sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{tokens:,} tokens/step, {layout.backend}, {torch.get_num_threads()} threads)")
    print(f"  telemetry off: {m_off * 1000:.1f} ms/step (median of {len(off)} blocks of {args.steps})")
    print(f"  telemetry on:  {m_on * 1000:.1f} ms/step (incl. a routing flush every {flush_every} steps, {flush * 1000:.2f} ms each)")
    print(f"  overhead: {(m_on / m_off - 1) * 100:+.2f} %   (target <= 3 %: {'ok' if m_on / m_off - 1 <= 0.03 else 'MISS'})")
    backend.shutdown()


if __name__ == "__main__":
    main()
