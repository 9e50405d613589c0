"""Eval-time routing capture: which experts each token of fixed held-out text goes to.

For every domain, the first ``routing_tokens`` tokens of its held-out stream (documents joined
by ``eod``, as training packs them) are cut into full windows of the training length, so no
padding ever passes through a router. A forward hook on each megatron-core ``TopKRouter``
records the top-k expert ids per token, ordered by router probability. Saved per checkpoint as
``eval/routing_step_<N>.npz``:

* ``topk_TKL`` int16 ``[tokens, k, layers]``: expert ids;
* ``token_ids_T`` int32, ``domain_T`` int16 (index into ``domains``), ``domains`` str.

From these the analysis computes co-activation, router saturation against the final
checkpoint, and vocabulary specialisation.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ablate.evals.tasks.base import Task, TaskResult
from ablate.evals.tasks.bpb import eval_domains, eval_fingerprints, held_out_documents
from ablate.io import atomic_path


def routing_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "eval", f"routing_step_{step}.npz")


class RoutingTask(Task):
    """The ``routing`` task (distinct from ``ablate.telemetry.routing.RoutingCapture``, which
    counts routing during training)."""

    name = "routing"
    version = 1

    def data_identity(self, ctx) -> dict:
        return {
            "datasets": eval_fingerprints(ctx),
            "tokens": ctx.options.routing_tokens,
            "seq_length": ctx.em.seq_length,
        }

    def outputs(self, run_dir: str, step: int) -> list[str]:
        return [routing_path(run_dir, step)]

    def run(self, ctx) -> TaskResult:
        from megatron.core.transformer.moe.router import TopKRouter

        routers = [m for m in ctx.em.model.modules() if isinstance(m, TopKRouter)]
        if not routers:
            return TaskResult(metrics={}, samples=0)
        k = routers[0].config.moe_router_topk
        S = ctx.em.seq_length
        captured: list[torch.Tensor | None] = [None] * len(routers)

        def hook(layer):
            def fn(module, inputs, output):
                probs_TE, routing_map_TE = output
                masked_TE = probs_TE.float().masked_fill(~routing_map_TE.bool(), float("-inf"))
                captured[layer] = masked_TE.topk(k, dim=-1).indices.to(torch.int16).cpu()

            return fn

        handles = [r.register_forward_hook(hook(i)) for i, r in enumerate(routers)]
        domains = eval_domains(ctx)
        topk, token_ids, domain_ids = [], [], []
        try:
            for d, domain in enumerate(domains):
                # enough whole documents to fill the windows; only full windows are routed
                docs, _ = held_out_documents(ctx, domain, 2 * ctx.options.routing_tokens + S)
                stream = np.concatenate([[ctx.em.tokenizer.eod], *docs]).astype(np.int64)
                windows = min(len(stream) // S, max(1, ctx.options.routing_tokens // S))
                for start in range(0, windows, ctx.options.batch_size):
                    rows = range(start, min(start + ctx.options.batch_size, windows))
                    tokens_BS = torch.from_numpy(
                        np.stack([stream[w * S : (w + 1) * S] for w in rows])
                    )
                    ctx.lm.logits(tokens_BS)  # the forward fills ``captured`` through the hooks
                    B = tokens_BS.shape[0]
                    # router tokens are sequence-major (t = s * B + b): back to [B, S, k] per layer
                    per_layer = [
                        c.reshape(S, B, k).transpose(0, 1).reshape(B * S, k) for c in captured
                    ]
                    topk.append(torch.stack(per_layer, dim=-1).numpy())
                    token_ids.append(tokens_BS.reshape(-1).numpy().astype(np.int32))
                    domain_ids.append(np.full(B * S, d, dtype=np.int16))
        finally:
            for h in handles:
                h.remove()
        topk_TKL, token_ids_T, domain_T = (
            np.concatenate(topk),
            np.concatenate(token_ids),
            np.concatenate(domain_ids),
        )
        path = routing_path(ctx.em.run_dir, ctx.em.step)
        if ctx.write:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(
                    f,
                    topk_TKL=topk_TKL,
                    token_ids_T=token_ids_T,
                    domain_T=domain_T,
                    domains=np.array(domains),
                )
        n = len(token_ids_T)
        per_domain = dict(zip(domains, np.bincount(domain_T, minlength=len(domains)).tolist()))
        ctx.progress(f"routing: {n:,} tokens x {len(routers)} layers -> {os.path.relpath(path)}")
        # a capture, not a score: no metrics; the tokens captured per domain are its sample counts
        return TaskResult(metrics={}, samples=n, samples_by_metric=per_domain)
