"""Fake but well-formed run directories for the analysis tests (the files training and eval
write, with routing generated from per-token decisions so metrics can be brute-forced)."""

from __future__ import annotations

import json
import os

import numpy as np
import yaml

DOMAINS = ["code.exec", "general", "math.structured", "math.text"]


def route_tokens(rng, domain_T, L: int, E: int, k: int, logits_LDE):
    """Per-token top-k decisions ``[T, k, L]``: k distinct experts per token and layer, drawn
    (Gumbel top-k) from its domain's preference ``logits_LDE``."""
    T = len(domain_T)
    topk = np.empty((T, k, L), dtype=np.int64)
    for layer in range(L):
        g = logits_LDE[layer][domain_T] + rng.gumbel(size=(T, E))
        topk[:, :, layer] = np.argsort(-g, axis=1)[:, :k]
    return topk


def counts_of(domain_T, topk_TKL, D: int, E: int):
    """``count_LDE, ntok_LD`` of a set of routed tokens (vectorised; the brute force is in the
    tests)."""
    T, k, L = topk_TKL.shape
    count = np.zeros((L, D, E), np.int64)
    ntok = np.zeros((L, D), np.int64)
    for layer in range(L):
        np.add.at(count[layer], (np.repeat(domain_T, k), topk_TKL[:, :, layer].ravel()), 1)
        ntok[layer] = np.bincount(domain_T, minlength=D)
    return count, ntok


def resolved_recipe(name: str, seed: int, domains, L: int, E: int, k: int, stages=None) -> dict:
    from ablate.recipe.schema import parse_recipe

    stages = stages or [{"name": "main", "mix": {d: {"tokens": "1K"} for d in domains}}]
    raw = {
        "name": name,
        "seed": seed,
        "model": {
            "num_layers": L,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "ffn_hidden_size": 128,
            "num_experts": E,
            "moe_router_topk": k,
            "max_position_embeddings": 128,
        },
        "training": {"seq_length": 64, "global_batch_size": 8, "micro_batch_size": 2},
        "cadence": {"log_every": 1, "routing_flush_every": 3, "tensorboard": False},
        "stages": stages,
    }
    return parse_recipe(raw, f"{name}.yaml").to_dict()


def write_run(
    root,
    name: str,
    *,
    seed: int = 1,
    domains=DOMAINS,
    L: int = 2,
    E: int = 4,
    k: int = 2,
    flush_steps=(3, 6, 9),
    tokens_per_window: int = 40,
    stages=None,
    domain_tokens=None,
    scores: dict | None = None,
    eval_steps=(),
    eval_tokens: int = 60,
    bias: float = 2.0,
    rng_seed: int | None = None,
    keep_tokens: bool = False,
    status: str = "completed",
):
    """Write ``root/name`` as training and eval would. ``scores``: ``{task: {metric: value}}``
    written to ``eval/step_<last flush>.json``; ``eval_steps``: checkpoints with eval routing.
    Returns the path (and, with ``keep_tokens``, the per-window token decisions)."""
    rng = np.random.default_rng(seed * 1000 + (rng_seed or 0))
    path = os.path.join(str(root), name)
    os.makedirs(os.path.join(path, "routing"), exist_ok=True)
    D = len(domains)
    recipe = resolved_recipe(name, seed, domains, L, E, k, stages)
    with open(os.path.join(path, "recipe.yaml"), "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    totals = domain_tokens or {d: 1024 for d in domains}
    plan = {
        "format": "ablate.plan/1",
        "recipe": name,
        "seed": seed,
        "fingerprint": f"fp-{name}",
        "domains": {
            d: {"tokens_requested": t, "tokens_realized": t, "samples": t // 64}
            for d, t in totals.items()
        },
        "stages": [{"name": "main", "steps": flush_steps[-1], "domains": {}}],
    }
    with open(os.path.join(path, "plan.json"), "w") as f:
        json.dump(plan, f)
    # routing: domain-specific preferences (a shared part per seed, so seeds look alike)
    logits_LDE = np.random.default_rng(seed).normal(size=(L, D, E)) * bias
    windows = []
    for step in flush_steps:
        domain_T = np.repeat(
            np.arange(D), rng.integers(tokens_per_window // 2, tokens_per_window + 1, size=D)
        )
        topk = route_tokens(rng, domain_T, L, E, k, logits_LDE)
        count, ntok = counts_of(domain_T, topk, D, E)
        gate = count * 0.4 + rng.random(count.shape)
        with open(os.path.join(path, "routing", f"step_{step:08d}.npz"), "wb") as f:
            np.savez(f, count=count, gate=gate, ntok=ntok, domains=np.array(domains))
        windows.append((step, domain_T, topk))
    # metrics
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        cum = {d: 0 for d in domains}
        for step in range(1, flush_steps[-1] + 1):
            row = {
                "step": step,
                "stage": "main",
                "lr": 1e-3,
                "loss": 5.0 / (1 + 0.1 * step) + 0.01 * seed,
                "grad_norm": 1.0,
                "tokens/s": 1000.0,
            }
            for i, d in enumerate(domains):
                cum[d] += 64
                row[f"loss/{d}"] = 5.0 / (1 + 0.1 * step) + 0.1 * i
                row[f"tokens/{d}"] = cum[d]
            row["moe/load_balancing_loss"] = 1.01
            f.write(json.dumps(row) + "\n")
    with open(os.path.join(path, "status.json"), "w") as f:
        json.dump({"state": status, "step": flush_steps[-1]}, f)
    if scores is not None:
        write_scores(path, name, flush_steps[-1], scores)
    if eval_steps:
        probe_rng = np.random.default_rng(12345)  # the same probe text for every run and checkpoint
        domain_T = np.repeat(np.arange(D), eval_tokens // D)
        token_ids = probe_rng.integers(0, 30, size=len(domain_T)).astype(np.int32)
        for i, step in enumerate(eval_steps):
            sharp = logits_LDE * (1 + i)  # later checkpoints route more decisively
            topk = route_tokens(rng, domain_T, L, E, k, sharp)
            write_eval_routing(path, step, topk, token_ids, domain_T, domains)
    return (path, windows) if keep_tokens else path


def write_scores(
    path: str, name: str, step: int, scores: dict, version: int = 1, fingerprint: str = "fp1"
) -> None:
    os.makedirs(os.path.join(path, "eval"), exist_ok=True)
    body = {
        "format": "ablate.eval/1",
        "run": name,
        "step": step,
        "tasks": {
            task: {
                "version": version,
                "fingerprint": fingerprint,
                "samples": 100,
                "metrics": metrics,
            }
            for task, metrics in scores.items()
        },
    }
    with open(os.path.join(path, "eval", f"step_{step}.json"), "w") as f:
        json.dump(body, f)


def write_eval_routing(path: str, step: int, topk_TKL, token_ids_T, domain_T, domains) -> None:
    os.makedirs(os.path.join(path, "eval"), exist_ok=True)
    with open(os.path.join(path, "eval", f"routing_step_{step}.npz"), "wb") as f:
        np.savez(
            f,
            topk_TKL=np.asarray(topk_TKL, np.int16),
            token_ids_T=np.asarray(token_ids_T, np.int32),
            domain_T=np.asarray(domain_T, np.int16),
            domains=np.array(domains),
        )
