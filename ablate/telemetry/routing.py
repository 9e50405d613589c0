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
        # float32 is exact for counts below 2**24 token slots per flush window (thousands of steps)
        self.count_LDE = torch.zeros(L, D, E, dtype=torch.float32, device=device)
        self.gate_LDE = torch.zeros(L, D, E, dtype=torch.float32, device=device)
        self.ntok_LD = torch.zeros(L, D, dtype=torch.float32, device=device)
        self.domain_B: torch.Tensor | None = None
        self._onehot: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (T, onehot_DT, ntok_D)
        self.enabled = True
        self._handles = [r.register_forward_hook(self._hook(layer)) for layer, r in enumerate(self.routers)]

    def set_batch_domains(self, domain_B: torch.Tensor) -> None:
        """Call before each microbatch's forward: the domain id of every sample in it."""
        self.domain_B = domain_B
        self._onehot = None

    def _domains_of_tokens(self, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``onehot_DT`` and ``ntok_D`` for this micro-batch's T router tokens: built once, every
        layer sees the same tokens, so each layer's update is two small matmuls."""
        if self._onehot is None or self._onehot[0] != T:
            domain_T = self.domain_B.to(device).repeat(T // self.domain_B.shape[0])  # token t = s * B + b
            onehot_DT = torch.nn.functional.one_hot(domain_T, self.num_domains).T.to(torch.float32)
            self._onehot = (T, onehot_DT, onehot_DT.sum(1))
        return self._onehot[1], self._onehot[2]

    def _hook(self, layer: int):
        def hook(module, inputs, output):
            if not self.enabled or not torch.is_grad_enabled() or self.domain_B is None:
                return
            probs_TE, routing_map_TE = output  # probs are zero outside each token's top-k
            onehot_DT, ntok_D = self._domains_of_tokens(routing_map_TE.shape[0], routing_map_TE.device)
            with torch.no_grad():
                self.count_LDE[layer] += onehot_DT @ routing_map_TE.to(torch.float32)
                self.gate_LDE[layer] += onehot_DT @ probs_TE.to(torch.float32)
                self.ntok_LD[layer] += ntok_D
        return hook

    def flush(self, group=None) -> dict[str, np.ndarray]:
        """All-reduce over ``group`` (data parallel), return numpy copies, zero the accumulators."""
        stacked = [self.count_LDE, self.gate_LDE, self.ntok_LD]
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            for t in stacked:
                dist.all_reduce(t, group=group)
        out = {"count": self.count_LDE.cpu().numpy().astype(np.int64), "gate": self.gate_LDE.cpu().numpy().astype(np.float64),
               "ntok": self.ntok_LD.cpu().numpy().astype(np.int64)}
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
