"""Every adaptation megatron-core 0.16 needs to train on CPU, in one place, applied only on CPU.

The model, routers, dispatchers and datasets are megatron-core's own; what changes here is only
where they assume CUDA (see the design notes, MEGATRON_NOTES.md):

1. ``torch.cuda.current_device()`` is called to *place* tensors (rotary embedding frequencies,
   router state, expert bookkeeping). On the CPU backend it answers the CPU device.
2. ``moe_utils.router_gating_linear`` reads a module global ``te_general_gemm`` that is only
   defined when Transformer Engine imports; it is defined as ``None`` (the torch path).
3. The local ``DotProductAttention`` takes its score buffer from a CUDA global memory buffer;
   the layer spec's ``core_attention`` is swapped for ``SDPACoreAttention``, the same contract
   over ``torch.nn.functional.scaled_dot_product_attention`` (swapping submodules in a spec is
   megatron-core's intended extension point).
4. The alltoall token dispatcher creates a ``torch.cuda.Stream`` in its constructor; the CPU
   backend uses the ``allgather`` dispatcher (set in the model config, see ``model.py``).

``apply()`` is idempotent and refuses to run when CUDA is in use; ``applied()`` says whether it
ran (tests check that the CUDA backend never applies it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule

_STATE = {"applied": False, "original_current_device": None}


def apply() -> None:
    if _STATE["applied"]:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError("the CPU adaptations must not be applied in a process that uses CUDA")
    import megatron.core.transformer.moe.moe_utils as moe_utils

    _STATE["original_current_device"] = torch.cuda.current_device
    torch.cuda.current_device = _cpu_device  # (1)
    if not hasattr(moe_utils, "te_general_gemm"):  # (2)
        moe_utils.te_general_gemm = None
    _STATE["applied"] = True


def applied() -> bool:
    return _STATE["applied"]


def _cpu_device() -> torch.device:
    return torch.device("cpu")


class SDPACoreAttention(MegatronModule):
    """(3) ``DotProductAttention``'s contract: q, k, v ``[seq, batch, heads, head_dim]`` in,
    ``[seq, batch, heads * head_dim]`` out; causal; attention dropout from the config."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config=config)
        self.softmax_scale = softmax_scale
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        assert packed_seq_params is None and attention_bias is None, "not supported on the CPU backend"
        seq, batch = query.shape[:2]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        if k.shape[1] != q.shape[1]:  # grouped-query attention: share each k/v head
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        sq, sk = q.shape[2], k.shape[2]
        # with a KV cache (megatron-core's inference context) new queries come after sk - sq cached
        # keys: causal from the bottom right, which SDPA's is_causal (top left) is not
        mask = None if sq == sk else torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.softmax_scale,
                                             dropout_p=self.dropout if self.training else 0.0)
        return out.permute(2, 0, 1, 3).reshape(seq, batch, -1)


def cpu_layer_spec(spec):
    """The local layer spec with ``core_attention`` swapped for ``SDPACoreAttention``."""
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec
