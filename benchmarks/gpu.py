"""The GPU check: ablate's engine against a bare megatron-core loop, one process, one GPU.

    bash benchmarks/gpu.sh                      # on the GPU machine (installs carried wheels first)
    python benchmarks/gpu.py                    # where megatron-core is already installed
    python benchmarks/gpu.py --backend cpu --tiny --steps 6   # the same code paths on a CPU

A ~100M-active MoE (preset ``moe-100m``: 461M total / 97M active with a 32k vocabulary), bf16
with fp32 main params, the alltoall dispatcher, SDPA attention (no Transformer Engine needed),
on synthetic data: three "domains", each a different learnable token process, mixed in fixed
shares that every global batch realises exactly (the plan). It prints, for ablate's engine
(``ablate.train.engine.Engine`` with its per-domain accounting and routing capture on):

* the loss falling (first, middle, last steps);
* tokens per domain == the plan, exactly;
* tokens/s, model FLOPs per token, MFU against the device's peak, peak memory;

then trains the same model from the same weights with a bare megatron-core loop (megatron's
``get_forward_backward_func``, ``finalize_model_grads`` and optimizer; a plain mean loss; no
telemetry) for the same steps, and prints ablate / bare tokens/s as a ratio measured in the same
run (target >= 0.97). Timed steps exclude the first ``--warmup`` steps of each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHARES = {"code": 0.5, "math": 0.3, "general": 0.2}


def make_recipe(args):
    from ablate.recipe.schema import parse_recipe

    model = {"preset": "moe-100m", "moe_token_dispatcher_type": "auto"}
    if args.tiny:
        model.update(
            num_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            ffn_hidden_size=128,
            num_experts=4,
            max_position_embeddings=args.seq,
        )
    raw = {
        "name": "gpu-check",
        "seed": 1234,
        "model": model,
        "training": {
            "seq_length": args.seq,
            "global_batch_size": args.gbs,
            "micro_batch_size": args.mbs,
            "precision": args.precision,
            "backend": args.backend,
            "optimizer": {"lr": 3e-4, "min_lr": 3e-5},
        },
        "stages": [{"name": "mix", "mix": {"code": {"tokens": "1M"}}}],
    }  # not used: data is synthetic
    return parse_recipe(raw, "benchmarks/gpu.py")


class SyntheticDomains:
    """Three learnable token processes; sample i of every global batch belongs to domain
    ``plan_D`` in a fixed order, so each step's per-domain samples are known exactly."""

    def __init__(self, vocab: int, seq: int, gbs: int, mbs: int, device, seed: int = 0):
        import numpy as np

        self.vocab, self.seq, self.gbs, self.mbs, self.device = vocab, seq, gbs, mbs, device
        self.domains = list(SHARES)
        counts = [round(SHARES[d] * gbs) for d in self.domains]
        counts[0] += gbs - sum(counts)
        self.per_step_D = np.array(counts)
        self.domain_of_sample = np.repeat(np.arange(len(counts)), counts)
        np.random.default_rng(seed).shuffle(self.domain_of_sample)
        self.rng = np.random.default_rng(seed + 1)

    def _sample(self, d: int):
        import numpy as np

        # domain d: x[t+1] = (a_d * x[t] + b_d) mod V, with 10% noise tokens: learnable, distinct
        a, b = (3, 7, 11)[d], (1, 5, 13)[d]
        x = np.empty(self.seq + 1, dtype=np.int64)
        x[0] = self.rng.integers(self.vocab)
        for t in range(self.seq):
            x[t + 1] = (a * x[t] + b) % self.vocab
        noise = self.rng.random(self.seq + 1) < 0.1
        x[noise] = self.rng.integers(0, self.vocab, noise.sum())
        return x

    def step(self):
        import numpy as np
        import torch

        from ablate.train.data import Microbatch

        out = []
        for m in range(self.gbs // self.mbs):
            ids = self.domain_of_sample[m * self.mbs : (m + 1) * self.mbs]
            x = torch.as_tensor(np.stack([self._sample(int(d)) for d in ids]))
            out.append(
                Microbatch(
                    tokens_BS=x[:, :-1].to(self.device),
                    labels_BS=x[:, 1:].to(self.device),
                    loss_mask_BS=torch.ones(len(ids), self.seq, device=self.device),
                    position_ids_BS=torch.arange(self.seq, device=self.device).expand(len(ids), -1),
                    domain_B=torch.as_tensor(ids, device=self.device),
                )
            )
        return out


def bare_step(chunk, optimizer, forward_backward, micro, seq, mbs):
    """A bare megatron-core step: its schedule, a mean loss, its optimizer; nothing else."""
    from functools import partial

    def loss_func(mask, output):
        loss = (output.float() * mask).sum()
        return loss, mask.sum().to(__import__("torch").int), {"loss": loss.detach()}

    def forward_step(it, model):
        mb = next(it)
        return model(mb.tokens_BS, mb.position_ids_BS, None, labels=mb.labels_BS), partial(
            loss_func, mb.loss_mask_BS
        )

    chunk.zero_grad_buffer()
    optimizer.zero_grad()
    forward_backward(
        forward_step_func=forward_step,
        data_iterator=iter(micro),
        model=chunk,
        num_microbatches=len(micro),
        seq_length=seq,
        micro_batch_size=mbs,
        forward_only=False,
    )
    optimizer.step()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--gbs", type=int, default=32)
    ap.add_argument("--mbs", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--backend", default="auto", help="auto (cuda where present) | cuda | cpu")
    ap.add_argument(
        "--tiny", action="store_true", help="a tiny model (a quick check of the code paths)"
    )
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="override the device's peak (bf16 dense)"
    )
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.tiny:
        args.seq, args.gbs, args.mbs, args.vocab = (
            min(args.seq, 64),
            min(args.gbs, 8),
            min(args.mbs, 2),
            256,
        )

    import torch

    from ablate.telemetry.flops import device_peak_flops, flops_per_token, mfu, parameter_counts
    from ablate.telemetry.routing import RoutingCapture
    from ablate.train import backend
    from ablate.train.engine import Engine

    recipe = make_recipe(args)
    layout = backend.init(recipe)
    cuda = layout.backend == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    data = SyntheticDomains(args.vocab, args.seq, args.gbs, args.mbs, layout.device)
    steps = [
        data.step() for _ in range(min(args.steps, 16))
    ]  # a pool of batches, reused round-robin
    tokens_per_step = args.gbs * args.seq

    def timed(run_step):
        times, out = [], []
        for s in range(args.steps):
            sync()
            t0 = time.perf_counter()
            out.append(run_step(steps[s % len(steps)]))
            sync()
            times.append(time.perf_counter() - t0)
        timed_s = sum(times[args.warmup :]) if args.steps > args.warmup else sum(times)
        n = max(args.steps - args.warmup, 1)
        return out, n * tokens_per_step / timed_s

    # ---- ablate's engine, telemetry on
    engine = Engine(recipe, layout, args.vocab, len(data.domains))
    engine.routing = RoutingCapture(engine.modules, len(data.domains), layout.device)
    initial = {
        k: v.detach().clone()
        for k, v in engine.modules[0].state_dict().items()
        if torch.is_tensor(v)
    }
    engine.set_lr(3e-4)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    results, ablate_tps = timed(engine.step)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    losses = [float(r.loss_sum_D.sum() / r.count_D.sum()) for r in results]
    tokens_D = sum(r.count_D for r in results).long().tolist()
    planned_D = [int(n) * args.seq * args.steps for n in data.per_step_D]
    counts = engine.routing.flush()
    engine.routing.remove()

    m = recipe.model
    params = parameter_counts(m, args.vocab)
    fpt = flops_per_token(m, args.vocab, args.seq)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = (
        (args.peak_tflops * 1e12)
        if args.peak_tflops
        else (device_peak_flops(name, args.precision) if cuda else None)
    )
    ablate_mfu = mfu(ablate_tps, fpt, peak)

    # ---- the bare megatron-core loop: the same modules from the same weights, fresh optimizer
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    engine.modules[0].load_state_dict(initial, strict=False)
    bare_opt = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=3e-4,
            bf16=args.precision == "bf16",
            params_dtype=engine.config.params_dtype,
            clip_grad=1.0,
        ),
        engine.chunks,
    )
    engine.config.grad_scale_func = bare_opt.scale_loss
    _, bare_tps = timed(
        lambda micro: bare_step(
            engine.chunks[0], bare_opt, engine.forward_backward, micro, args.seq, args.mbs
        )
    )

    report = {
        "device": name,
        "backend": layout.backend,
        "precision": args.precision,
        "parameters_total": params["total"],
        "parameters_active": params["active"],
        "tokens_per_step": tokens_per_step,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "loss_first": losses[0],
        "loss_mid": losses[len(losses) // 2],
        "loss_last": losses[-1],
        "tokens_per_domain": dict(zip(data.domains, tokens_D)),
        "planned_per_domain": dict(zip(data.domains, planned_D)),
        "tokens_equal_plan": tokens_D == planned_D,
        "routing_token_slots": int(counts["count"].sum()),
        "ablate_tokens_per_s": ablate_tps,
        "bare_tokens_per_s": bare_tps,
        "ratio_ablate_over_bare": ablate_tps / bare_tps,
        "model_flops_per_token": fpt,
        "peak_flops": peak,
        "mfu": ablate_mfu,
        "peak_memory_gib": peak_gib,
    }
    print(
        f"\n{name}, {layout.backend}, {args.precision}: moe {params['total'] / 1e6:.0f}M total / "
        f"{params['active'] / 1e6:.1f}M active, {tokens_per_step:,} tokens/step, {args.steps} steps"
    )
    print(
        f"  loss: {losses[0]:.3f} (step 1) -> {losses[len(losses) // 2]:.3f} -> "
        f"{losses[-1]:.3f} (step {args.steps})"
    )
    print(
        f"  tokens per domain: {report['tokens_per_domain']}  "
        f"plan: {report['planned_per_domain']}  "
        f"{'== plan' if report['tokens_equal_plan'] else 'DIFFERS FROM PLAN'}"
    )
    print(
        f"  ablate engine: {ablate_tps:,.0f} tokens/s, {fpt / 1e9:.2f} GFLOP/token, MFU "
        f"{'%.1f %%' % (100 * ablate_mfu) if ablate_mfu is not None else 'n/a (unknown peak)'}, "
        f"peak memory {peak_gib:.1f} GiB"
    )
    print(f"  bare megatron-core loop: {bare_tps:,.0f} tokens/s")
    print(f"  ratio ablate / bare: {ablate_tps / bare_tps:.3f}  (target >= 0.97)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    backend.shutdown()


if __name__ == "__main__":
    main()
