"""Fake but well-formed sweep runs over one stage's mix, for the ``ablate mix`` tests and
benchmark: recipe.yaml, a plan.json with per-stage per-domain realised tokens (as ``ablate
compile`` writes it), status.json and eval/step_N.json with the scores of a known mixing law."""

from __future__ import annotations

import json
import os

import numpy as np
import yaml

STEP = 10
SEQ, GBS = 64, 8


def apportion(shares, total: int) -> list[int]:
    q = np.asarray(shares, float) * total
    base = np.floor(q).astype(int)
    for i in np.argsort(-(q - base), kind="stable")[: total - base.sum()]:
        base[i] += 1
    return [int(x) for x in base]


def resolved(name: str, seed: int, mix: dict, stage_tokens: int | None = None, **over) -> dict:
    from ablate.recipe.schema import parse_recipe

    raw = {
        "name": name,
        "seed": seed,
        "model": {
            "num_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "ffn_hidden_size": 128,
            "num_experts": 4,
            "moe_router_topk": 2,
            "max_position_embeddings": 128,
        },
        "training": {"seq_length": SEQ, "global_batch_size": GBS, "micro_batch_size": 2},
        "cadence": {"log_every": 1, "tensorboard": False},
        "stages": [{"name": "main", "tokens": stage_tokens, "mix": mix}],
    }
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_recipe(raw, f"{name}.yaml").to_dict()


def write_mix_run(
    root,
    name: str,
    seed: int,
    weights: dict,
    scores: dict,
    *,
    stage_tokens: int = 512_000,
    held: dict | None = None,
    max_epochs: float | None = None,
    task: str = "mixlaw",
    recipe_over: dict | None = None,
) -> str:
    """``root/name``: a run of the stage ``main`` with realised per-domain shares ``weights``
    (exact: tokens are whole sequences summing to ``stage_tokens``) and ``scores`` as
    ``{metric: value}`` of task ``task``. ``held``: tokens each domain's dataset holds."""
    path = os.path.join(str(root), name)
    os.makedirs(os.path.join(path, "eval"), exist_ok=True)
    domains = list(weights)
    seqs = apportion([weights[d] for d in domains], stage_tokens // SEQ)
    tokens = {d: n * SEQ for d, n in zip(domains, seqs) if n > 0}
    mix = {
        d: ({"tokens": t, "max_epochs": max_epochs} if max_epochs else {"tokens": t})
        for d, t in tokens.items()
    }
    recipe = resolved(name, seed, mix, **(recipe_over or {}))
    with open(os.path.join(path, "recipe.yaml"), "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    held = held or {d: 10 * stage_tokens for d in domains}
    totals = {
        d: {"tokens_requested": t, "tokens_realized": t, "samples": t // SEQ}
        for d, t in sorted(tokens.items())
    }
    plan = {
        "format": "ablate.plan/1",
        "recipe": name,
        "seed": seed,
        "fingerprint": f"fp-{name}",
        "stages": [
            {
                "name": "main",
                "tokens_nominal": stage_tokens,
                "tokens": stage_tokens,
                "steps": stage_tokens // (SEQ * GBS),
                "datasets": [
                    {
                        "prefix": f"{d}/part0",
                        "domain": d,
                        "selector": d,
                        "dataset_tokens": held[d],
                        "tokens_realized": t,
                    }
                    for d, t in tokens.items()
                ],
                "domains": totals,
            }
        ],
        "domains": totals,
    }
    with open(os.path.join(path, "plan.json"), "w") as f:
        json.dump(plan, f)
    with open(os.path.join(path, "status.json"), "w") as f:
        json.dump({"state": "completed", "step": STEP}, f)
    body = {
        "format": "ablate.eval/1",
        "run": name,
        "step": STEP,
        "tasks": {task: {"version": 1, "fingerprint": "fp", "samples": 100, "metrics": scores}},
    }
    with open(os.path.join(path, "eval", f"step_{STEP}.json"), "w") as f:
        json.dump(body, f)
    return path


def realised(weights_D, stage_tokens: int = 512_000):
    """The shares a run realises for ``weights_D`` (whole sequences)."""
    seqs = apportion(weights_D, stage_tokens // SEQ)
    return np.asarray(seqs, float) / sum(seqs)


def loglinear_law(W_ND, a, b_D, c_DD, eps: float = 1e-3):
    """``a + sum_d b_d log(w_d + eps) + sum_{d<e} c_de w_d w_e`` per row."""
    W = np.asarray(W_ND, float)
    iu = np.triu_indices(W.shape[1], 1)
    return a + np.log(W + eps) @ b_D + (W[:, iu[0]] * W[:, iu[1]]) @ c_DD[iu]


def write_sweep(
    root,
    domains,
    law,
    *,
    n_mix: int = 40,
    repeats: int = 8,
    noise: float = 0.005,
    seed: int = 0,
    metrics=("y",),
    min_share: float = 0.02,
    **run_kw,
):
    """A swarm: ``n_mix`` Dirichlet(1) mixtures (shares >= ``min_share``), the first ``repeats``
    of them also run with a second seed; every metric scores ``law(W_ND)`` + N(0, noise).
    Returns ``(W_ND, Y_NM, names)``, rows in the runs' sorted order."""
    rng = np.random.default_rng(seed)
    D = len(domains)
    raw = rng.dirichlet(np.ones(D), size=n_mix)
    raw = min_share + (1 - D * min_share) * raw
    rows = []
    for i in range(n_mix):
        w = realised(raw[i], run_kw.get("stage_tokens", 512_000))
        for s in (1, 2) if i < repeats else (1,):
            rows.append((f"mix{i:03d}-s{s}", s, w))
    W = np.array([w for *_, w in rows])
    clean = law(W)
    clean = clean if clean.ndim == 2 else clean[:, None] * np.ones(len(metrics))
    Y = clean + rng.normal(0, noise, size=clean.shape)
    for (name, s, w), y in zip(rows, Y):
        write_mix_run(
            root, name, s, dict(zip(domains, w)), dict(zip(metrics, map(float, y))), **run_kw
        )
    order = np.argsort([name for name, *_ in rows], kind="stable")
    return W[order], Y[order], [rows[i][0] for i in order]
