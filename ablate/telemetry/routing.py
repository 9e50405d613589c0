"""Routing capture: which experts each domain's tokens go to, accumulated on device.

A forward hook on every megatron-core ``TopKRouter`` adds, per MoE layer ``l``:

* ``count_LDE[l, d, e]``: token slots of domain ``d`` routed to expert ``e``;
* ``gate_LDE[l, d, e]``: router probability mass those slots carried;
* ``ntok_LD[l, d]``: tokens of domain ``d`` the layer saw (so ``count.sum(-1) == k * ntok``).

The router returns ``(probs_TE, routing_map_TE)`` over tokens ordered ``s * batch + b``
(sequence-major), so a token's domain is its sample's: ``domain_B.repeat(T // B)``. That also
holds for a contiguous sequence shard (sequence parallelism). Counting happens only while grad
is enabled: under activation recomputation the forward runs twice, and megatron-core's own
expert counter makes the same choice. ``flush`` all-reduces over the data-parallel group and
zeroes the accumulators; nothing leaves the device between flushes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


class RoutingCapture:
    def __init__(self, model, num_domains: int, device: torch.device | str = "cpu"):
        from megatron.core.transformer.moe.router import TopKRouter

        self.routers = [m for m in model.modules() if isinstance(m, TopKRouter)]
        self.num_domains = num_domains
        self.num_experts = self.routers[0].config.num_moe_experts if self.routers else 0
        self.topk = self.routers[0].config.moe_router_topk if self.routers else 0
        L, D, E = len(self.routers), num_domains, self.num_experts
        self.count_LDE = torch.zeros(L, D, E, dtype=torch.float64, device=device)
        self.gate_LDE = torch.zeros(L, D, E, dtype=torch.float64, device=device)
        self.ntok_LD = torch.zeros(L, D, dtype=torch.float64, device=device)
        self.domain_B: torch.Tensor | None = None
        self.enabled = True
        self._handles = [r.register_forward_hook(self._hook(layer)) for layer, r in enumerate(self.routers)]

    def set_batch_domains(self, domain_B: torch.Tensor) -> None:
        """Call before each microbatch's forward: the domain id of every sample in it."""
        self.domain_B = domain_B

    def _hook(self, layer: int):
        def hook(module, inputs, output):
            if not self.enabled or not torch.is_grad_enabled() or self.domain_B is None:
                return
            probs_TE, routing_map_TE = output
            T = routing_map_TE.shape[0]
            domain_T = self.domain_B.to(routing_map_TE.device).repeat(T // self.domain_B.shape[0])
            self.count_LDE[layer].index_add_(0, domain_T, routing_map_TE.to(torch.float64))
            self.gate_LDE[layer].index_add_(0, domain_T, probs_TE.detach().to(torch.float64) * routing_map_TE)
            self.ntok_LD[layer] += torch.bincount(domain_T, minlength=self.num_domains).to(torch.float64)
        return hook

    def flush(self, group=None) -> dict[str, np.ndarray]:
        """All-reduce over ``group`` (data parallel), return numpy copies, zero the accumulators."""
        stacked = [self.count_LDE, self.gate_LDE, self.ntok_LD]
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            for t in stacked:
                dist.all_reduce(t, group=group)
        out = {"count": self.count_LDE.cpu().numpy().copy(), "gate": self.gate_LDE.cpu().numpy().copy(),
               "ntok": self.ntok_LD.cpu().numpy().copy()}
        for t in stacked:
            t.zero_()
        return out

    def expert_bias(self) -> np.ndarray | None:
        """``[layer, expert]`` bias of sigmoid routers with expert bias, else None."""
        biases = [getattr(r, "expert_bias", None) for r in self.routers]
        if not biases or any(b is None for b in biases):
            return None
        return torch.stack([b.detach().float().cpu() for b in biases]).numpy()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
