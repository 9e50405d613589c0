"""Measure real megatron-core models, in a child process, for the parameter and FLOPs tests.

``measure(cases, tmp_dir)`` runs this file once for all cases (building models needs a process
group and megatron's parallel state, and the CPU adaptations patch torch globally: none of
that stays in the pytest process). Each case is ``{"model": {...}, "vocab": V}`` plus
optionally ``"meta": False, "seq": S`` to also run one forward + backward on real weights.

Per case it returns, from the model ``ablate.train.model.build_model`` builds on the CPU
backend: ``total`` (``sum(p.numel())``), the parameters by part (``by_part``, from the
parameter names), and for real-weight cases ``touched`` (the parameters with a nonzero
gradient after one token's forward + backward; every matrix counted in full) and
``matmul_flops`` (torch's FLOP counter over a forward + backward of a batch of ``seq``
tokens, attention through SDPA's math path so that its matmuls are counted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(cases: list[dict], tmp_dir: str) -> list[dict]:
    os.makedirs(tmp_dir, exist_ok=True)
    spec, out = os.path.join(tmp_dir, "cases.json"), os.path.join(tmp_dir, "sizes.json")
    with open(spec, "w") as f:
        json.dump(cases, f)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": tmp_dir}
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), spec, out],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out) as f:
        return json.load(f)


def part_of(name: str) -> str:
    if "embedding." in name and "output_layer" not in name:
        return "embedding"
    if name.startswith("output_layer"):
        return "output"
    if ".mlp.experts." in name:
        return "routed_experts"
    if ".mlp.shared_experts." in name:
        return "shared_experts"
    if ".mlp.router." in name:
        return "router"
    if "layernorm" in name or "layer_norm" in name:
        return "norms"
    if ".self_attention." in name:
        return "attention"
    if ".mlp." in name:
        return "dense_mlp"
    return "other:" + name


def _main(spec: str, out: str) -> None:
    import tempfile

    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ablate.recipe.schema import parse_recipe
    from ablate.train import cpu_compat
    from ablate.train.model import build_model

    cases = json.load(open(spec))
    cpu_compat.apply()
    dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    results = []
    try:
        parallel_state.initialize_model_parallel(1, 1)
        for case in cases:
            seq = case.get("seq", 8)
            recipe = parse_recipe(
                {
                    "name": "sizes",
                    "model": case["model"],
                    "training": {"seq_length": seq},
                    "stages": [{"mix": {"code": 1.0}}],
                },
                "sizes",
            )
            torch.manual_seed(0)
            meta = case.get("meta", True)
            if meta:
                with torch.device("meta"):
                    model = build_model(recipe, case["vocab"], "cpu")
            else:
                model = build_model(recipe, case["vocab"], "cpu")
            by_part: dict[str, int] = {}
            for name, p in model.named_parameters():
                by_part[part_of(name)] = by_part.get(part_of(name), 0) + p.numel()
            res = {"total": sum(p.numel() for p in model.parameters()), "by_part": by_part}
            if not meta:
                res.update(
                    _touched_and_flops(
                        model, case["vocab"], seq, torch, FlopCounterMode, sdpa_kernel, SDPBackend
                    )
                )
            results.append(res)
    finally:
        dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(results, f)


def _touched_and_flops(model, vocab, seq, torch, FlopCounterMode, sdpa_kernel, SDPBackend) -> dict:
    # one token: the parameters it uses have a nonzero gradient, the experts it skipped none
    tokens = torch.randint(0, vocab, (1, 1))
    model.zero_grad(set_to_none=True)
    model(tokens, torch.zeros(1, 1, dtype=torch.long), None, labels=tokens).sum().backward()
    touched = sum(
        p.numel() for p in model.parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)
    )
    # a batch: the FLOPs torch counts for its matmuls, forward and backward
    B = 2
    tokens = torch.randint(0, vocab, (B, seq))
    model.zero_grad(set_to_none=True)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens, torch.arange(seq).expand(B, seq), None, labels=tokens).sum().backward()
    return {"touched": touched, "matmul_flops": counter.get_total_flops(), "tokens": B * seq}


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
