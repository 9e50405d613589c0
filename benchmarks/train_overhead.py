"""Step time of the training engine: telemetry on vs off, and the engine vs the old stopgap loop.

    python benchmarks/train_overhead.py                 # quickstart model, 3 x 3 blocks of 20 steps
    python benchmarks/train_overhead.py --steps 10 --repeat 2   # quick look

Three modes on the same model shape, the same micro-batches, one CPU process:

* ``engine+telemetry``: ``ablate.train.engine.Engine.step`` as training runs it: megatron-core's
  schedule, finalize_model_grads and optimizer, plus the per-domain loss sums, their
  all-reduce and the routing capture (its flush amortized over ``routing_flush_every``);
* ``engine``: the same step with the telemetry off;
* ``stopgap``: the hand-written loop the engine replaced (own micro-batch loop, megatron DDP,
  ``torch.optim.AdamW``, own clipping), kept here only as this baseline.

Blocks rotate so drift in machine speed hits every mode alike. It prints each mode's median
step time and two ratios: telemetry overhead ``engine+telemetry / engine - 1`` (target <= 3 %)
and ``engine / stopgap`` (target <= 1.05).
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


class StopgapLoop:
    """The pre-engine training step (ablate's loop before megatron's engine), as a baseline."""

    def __init__(self, recipe, layout, vocab_size: int):
        import torch
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        from ablate.train.model import build_model, transformer_config

        torch.manual_seed(recipe.seed)
        self.model = build_model(recipe, vocab_size, layout.backend)
        config = transformer_config(recipe, layout.backend)
        config.calculate_per_token_loss = False
        self.ddp = DistributedDataParallel(
            config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), self.model
        )
        opt = recipe.training.optimizer
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": opt.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=opt.lr,
            betas=(opt.beta1, opt.beta2),
            eps=opt.eps,
        )
        self.clip = opt.clip_grad

    def step(self, micro) -> None:
        import torch
        from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad(set_to_none=True)
        local_tokens = sum(float(mb.loss_mask_BS.sum()) for mb in micro)
        MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(1.0 / len(micro)))
        for mb in micro:
            loss_BS = self.ddp(mb.tokens_BS, mb.position_ids_BS, None, labels=mb.labels_BS)
            ((loss_BS.float() * mb.loss_mask_BS).sum() / local_tokens).backward()
        self.ddp.finish_grad_sync()
        params = list(self.model.parameters())
        for p in params:
            p.grad = getattr(p, "main_grad", p.grad)
        norm = float(
            torch.sqrt(sum(p.grad.float().pow(2).sum() for p in params if p.grad is not None))
        )
        if self.clip > 0 and norm > self.clip:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(self.clip / (norm + 1e-6))
        self.optimizer.step()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--recipe", default=os.path.join(REPO, "recipes", "quickstart.yaml"))
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of blocks (one per mode)")
    ap.add_argument(
        "--workdir", default=None, help="where the toy world is prepared (default: a temp dir)"
    )
    args = ap.parse_args()

    import torch

    from ablate.data.prepare import prepare
    from ablate.recipe.compile import build_stage_datasets
    from ablate.recipe.plan import make_plan
    from ablate.recipe.schema import load_recipe
    from ablate.telemetry.routing import RoutingCapture
    from ablate.train import backend
    from ablate.train.data import StagedData
    from ablate.train.engine import Engine

    workdir = args.workdir or tempfile.mkdtemp(prefix="ablate-overhead-")
    os.chdir(workdir)
    if not os.path.exists("data/toyworld/manifest.json"):
        prepare("toyworld", "data/toyworld", progress=False)
    recipe = load_recipe(args.recipe)
    layout = backend.init(recipe)
    plan = make_plan(recipe)
    data = StagedData(plan, build_stage_datasets(plan), recipe.training.micro_batch_size, 0, 1)
    vocab = plan.tokenizer["vocab_size"]
    engine = Engine(recipe, layout, vocab, len(data.domains))
    routing = RoutingCapture(engine.modules, len(data.domains))
    stopgap = StopgapLoop(recipe, layout, vocab)
    batches = [data.microbatches(s) for s in range(args.steps)]  # the same batches for every mode
    flush_every = recipe.cadence.routing_flush_every
    engine.set_lr(recipe.training.optimizer.lr)

    def block(mode: str) -> float:
        telemetry = mode == "engine+telemetry"
        engine.telemetry, engine.routing = telemetry, routing if telemetry else None
        routing.enabled = telemetry
        t0 = time.perf_counter()
        for micro in batches:
            if mode == "stopgap":
                stopgap.step(micro)
            else:
                engine.step(micro)
        return (time.perf_counter() - t0) / len(batches)

    def flush_seconds() -> float:
        t0 = time.perf_counter()
        routing.flush()
        return time.perf_counter() - t0

    modes = ["engine+telemetry", "engine", "stopgap"]
    for mode in modes:
        block(mode)  # warm-up: allocator, first-touch of the indices
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.repeat):
        for mode in modes[r % 3 :] + modes[: r % 3]:
            times[mode].append(block(mode))
            print(f"  block {mode:>16}: {times[mode][-1] * 1000:.1f} ms/step", flush=True)
    flush = statistics.median(flush_seconds() for _ in range(5))
    med = {m: statistics.median(t) for m, t in times.items()}
    med["engine+telemetry"] += flush / flush_every
    tokens = recipe.training.global_batch_size * recipe.training.seq_length
    params = sum(p.numel() for p in engine.parameters())
    print(
        f"\n{recipe.name} ({params:,} parameters, {tokens:,} tokens/step, {layout.backend}, "
        f"{torch.get_num_threads()} threads); median of {args.repeat} blocks of {args.steps} steps"
    )
    for m in modes:
        print(f"  {m:>16}: {med[m] * 1000:.1f} ms/step")
    overhead = med["engine+telemetry"] / med["engine"] - 1
    ratio = med["engine"] / med["stopgap"]
    print(
        f"  telemetry overhead: {overhead * 100:+.2f} %  "
        f"(target <= 3 %: {'ok' if overhead <= 0.03 else 'MISS'}; "
        f"routing flush {flush * 1000:.2f} ms every {flush_every} steps included)"
    )
    print(
        f"  engine / stopgap loop: {ratio:.3f}  "
        f"(target <= 1.05: {'ok' if ratio <= 1.05 else 'MISS'})"
    )
    backend.shutdown()


if __name__ == "__main__":
    main()
