"""Routing capture: which experts each domain's tokens go to, accumulated on device.

A forward hook on every megatron-core ``TopKRouter`` adds, per MoE layer ``l``:

* ``count_LDE[l, d, e]``: token slots of domain ``d`` routed to expert ``e``;
* ``gate_LDE[l, d, e]``: router probability mass those slots carried;
* ``ntok_LD[l, d]``: tokens of domain ``d`` the layer saw (so ``count.sum(-1) == k * ntok``).

The router returns ``(probs_TE, routing_map_TE)`` over tokens ordered ``s * batch + b``
(sequence-major), so a token's domain is its sample's: ``domain_B.repeat(T // B)``. That also
holds for a contiguous sequence shard (sequence parallelism). Each micro-batch is counted once,
in its forward: the training engine sets ``counting`` around its forward call, so a forward
recomputed during backward (activation recomputation, where under pipelining the current
domains belong to another micro-batch) and evaluation forwards are not counted. Used on its
own (``counting`` None), it counts grad-enabled forwards only. ``flush`` all-reduces over the
data-parallel group and zeroes the accumulators; nothing leaves the device between flushes.

Under pipeline (and virtual pipeline) parallelism a rank holds only some layers: each router
writes into its *global* MoE-layer row (from its layer's number), so after ``flush`` sums over
every rank, each token is counted once per layer whatever the layout (data, context and
sequence-parallel ranks see disjoint tokens; pipeline ranks disjoint layers).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


class RoutingCapture:
    def __init__(self, model, num_domains: int, device: torch.device | str = "cpu"):
        from megatron.core.transformer.moe.router import TopKRouter

        chunks = model if isinstance(model, (list, tuple)) else [model]
        self.routers, rows = [], []
        for chunk in chunks:
            for layer in (
                m for m in chunk.modules() if hasattr(m, "layer_number") and hasattr(m, "mlp")
            ):
                router = getattr(layer.mlp, "router", None)
                if isinstance(router, TopKRouter):
                    self.routers.append(router)
                    rows.append(_moe_row(layer.layer_number, router.config))
        config = self.routers[0].config if self.routers else None
        self.num_domains = num_domains
        self.num_experts = config.num_moe_experts if config else 0
        self.topk = config.moe_router_topk if config else 0
        self.rows = rows  # router i -> its global MoE-layer row
        self.num_moe_layers = _num_moe_layers(config) if config else 0
        L, D, E = self.num_moe_layers, num_domains, self.num_experts
        # float32 is exact for counts below 2**24 token slots per flush window (thousands of steps)
        self.count_LDE = torch.zeros(L, D, E, dtype=torch.float32, device=device)
        self.gate_LDE = torch.zeros(L, D, E, dtype=torch.float32, device=device)
        self.ntok_LD = torch.zeros(L, D, dtype=torch.float32, device=device)
        self.domain_B: torch.Tensor | None = None
        self._onehot: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (T, onehot_DT, ntok_D)
        self.enabled = True
        self.counting: bool | None = (
            None  # set by the engine around its forward; None: grad-enabled forwards
        )
        self._handles = [
            r.register_forward_hook(self._hook(row)) for row, r in zip(rows, self.routers)
        ]

    def set_batch_domains(self, domain_B: torch.Tensor) -> None:
        """Call before each microbatch's forward: the domain id of every sample in it."""
        self.domain_B = domain_B
        self._onehot = None

    def _domains_of_tokens(self, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``onehot_DT`` and ``ntok_D`` for this micro-batch's T router tokens: built once, every
        layer sees the same tokens, so each layer's update is two small matmuls."""
        if self._onehot is None or self._onehot[0] != T:
            domain_T = self.domain_B.to(device).repeat(
                T // self.domain_B.shape[0]
            )  # token t = s * B + b
            onehot_DT = torch.nn.functional.one_hot(domain_T, self.num_domains).T.to(torch.float32)
            self._onehot = (T, onehot_DT, onehot_DT.sum(1))
        return self._onehot[1], self._onehot[2]

    def _hook(self, layer: int):
        def hook(module, inputs, output):
            counting = self.counting if self.counting is not None else torch.is_grad_enabled()
            if not self.enabled or not counting or self.domain_B is None:
                return
            probs_TE, routing_map_TE = output  # probs are zero outside each token's top-k
            onehot_DT, ntok_D = self._domains_of_tokens(
                routing_map_TE.shape[0], routing_map_TE.device
            )
            with torch.no_grad():
                self.count_LDE[layer] += onehot_DT @ routing_map_TE.to(torch.float32)
                self.gate_LDE[layer] += onehot_DT @ probs_TE.to(torch.float32)
                self.ntok_LD[layer] += ntok_D

        return hook

    def flush(self, group=None) -> dict[str, np.ndarray]:
        """Sum over ``group`` (default: every rank), return numpy copies, zero the accumulators."""
        stacked = [self.count_LDE, self.gate_LDE, self.ntok_LD]
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            for t in stacked:
                dist.all_reduce(t, group=group)
        out = {
            "count": self.count_LDE.cpu().numpy().astype(np.int64),
            "gate": self.gate_LDE.cpu().numpy().astype(np.float64),
            "ntok": self.ntok_LD.cpu().numpy().astype(np.int64),
        }
        for t in stacked:
            t.zero_()
        return out

    def expert_bias(self) -> np.ndarray | None:
        """``[layer, expert]`` bias of sigmoid routers with expert bias, else None."""
        biases = [getattr(r, "expert_bias", None) for r in self.routers]
        if not biases or any(b is None for b in biases):
            return None
        out = np.zeros((self.num_moe_layers, self.num_experts), dtype=np.float32)
        for row, b in zip(self.rows, biases):
            out[row] = b.detach().float().cpu().numpy()
        return out

    def expert_bias_all(self, group=None) -> np.ndarray | None:
        """``expert_bias`` of every MoE layer (collective: pipeline ranks hold different layers)."""
        if not self.routers or getattr(self.routers[0], "expert_bias", None) is None:
            return None
        device = self.count_LDE.device  # NCCL reduces device tensors only
        local = torch.as_tensor(self.expert_bias(), device=device)
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            # each layer's bias is identical on the ranks that hold it: sum, then divide by holders
            held = torch.zeros(self.num_moe_layers, device=device)
            held[self.rows] = 1.0
            dist.all_reduce(local, group=group)
            dist.all_reduce(held, group=group)
            local = local / held.clamp(min=1).unsqueeze(1)
        return local.cpu().numpy()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _moe_layer_mask(config) -> list[bool]:
    """megatron's ``moe_layer_freq``: an int n (every n-th layer from the first) or a 0/1 list."""
    freq = config.moe_layer_freq
    if isinstance(freq, int):
        return [i % freq == 0 for i in range(config.num_layers)]
    return [bool(x) for x in freq]


def _num_moe_layers(config) -> int:
    return sum(_moe_layer_mask(config))


def _moe_row(layer_number: int, config) -> int:
    """Row of 1-based global layer ``layer_number`` among the MoE layers."""
    return sum(_moe_layer_mask(config)[: layer_number - 1])
