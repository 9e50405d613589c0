"""The two submodules ablate puts into megatron-core's local layer spec (both backends, no TE).

* ``SDPACoreAttention``: ``DotProductAttention``'s contract over
  ``torch.nn.functional.scaled_dot_product_attention``. The local ``DotProductAttention``
  materialises the ``seq x seq`` scores (and takes them from a CUDA global buffer); SDPA picks
  flash / memory-efficient kernels on CUDA and a fused kernel on CPU. Under context parallelism
  it gathers keys and values over the context-parallel group (megatron's ``all_gather``
  context-parallel scheme) and masks by the global positions of megatron's load-balanced
  sequence chunks.
* ``SequenceParallelNorm``: torch's ``RMSNorm`` / ``LayerNorm`` (as megatron's
  ``WrappedTorchNorm`` builds them) whose parameters carry ``sequence_parallel``, so
  ``finalize_model_grads`` sums their gradients over tensor-parallel ranks. ``WrappedTorchNorm``
  refuses sequence parallelism, which MoE with tensor parallelism requires.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule


class SDPACoreAttention(MegatronModule):
    """q, k, v ``[seq, batch, heads, head_dim]`` in; ``[seq, batch, heads * head_dim]`` out; causal
    attention."""

    def __init__(
        self,
        config,
        layer_number,
        attn_mask_type,
        attention_type,
        attention_dropout=None,
        softmax_scale=None,
        cp_comm_type=None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        self.softmax_scale = softmax_scale
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.cp_group = getattr(pg_collection, "cp", None) if pg_collection is not None else None
        if self.cp_group is None and config.context_parallel_size > 1:
            from megatron.core import parallel_state

            self.cp_group = parallel_state.get_context_parallel_group()

    def forward(
        self,
        query,
        key,
        value,
        attention_mask,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ):
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError(
                "SDPACoreAttention: packed sequences and attention bias need Transformer Engine"
            )
        seq, batch = query.shape[:2]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        if k.shape[1] != q.shape[1]:  # grouped-query attention: share each k/v head
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        cp = self.cp_group.size() if self.cp_group is not None else 1
        if cp > 1:
            k, v = _gather_sequence(k, self.cp_group), _gather_sequence(v, self.cp_group)
            q_pos_S = _cp_positions(q.shape[2], cp, self.cp_group.rank(), q.device)
            k_pos_S = torch.cat([_cp_positions(q.shape[2], cp, r, q.device) for r in range(cp)])
            mask = q_pos_S[:, None] >= k_pos_S[None, :]
        else:
            sq, sk = q.shape[2], k.shape[2]
            # with a KV cache (megatron-core's inference context) new queries come after sk - sq
            # cached keys: causal from the bottom right, which SDPA's is_causal (top left) is not
            mask = (
                None
                if sq == sk
                else torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
            )
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None,
            scale=self.softmax_scale,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return out.permute(2, 0, 1, 3).reshape(seq, batch, -1)


def _cp_positions(local_len: int, cp: int, rank: int, device) -> torch.Tensor:
    """Global positions of rank ``rank``'s tokens: megatron splits the sequence into ``2 cp``
    chunks and gives rank r chunks r and 2cp-1-r (``get_batch_on_this_cp_rank``)."""
    half = local_len // 2
    first = torch.arange(rank * half, (rank + 1) * half, device=device)
    second = torch.arange((2 * cp - 1 - rank) * half, (2 * cp - rank) * half, device=device)
    return torch.cat([first, second])


class _GatherSequence(torch.autograd.Function):
    """All-gather along the sequence dim (2) of ``[b, h, s, d]``; backward sums the gradients
    of every rank's copy and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(group.size())]
        torch.distributed.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=2)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad.chunk(ctx.group.size(), dim=2)[ctx.group.rank()].contiguous(), None


def _gather_sequence(x, group):
    return _GatherSequence.apply(x, group)


class SequenceParallelNorm:
    """megatron's ``WrappedTorchNorm`` without its sequence-parallel refusal (same modules, same
    init), parameters marked ``sequence_parallel`` so their gradients are summed over TP."""

    def __new__(
        cls,
        config,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "LayerNorm",
    ):
        if config.layernorm_zero_centered_gamma or config.memory_efficient_layer_norm:
            raise NotImplementedError(
                "zero-centered gamma / memory-efficient norm need Transformer Engine"
            )
        norm_cls = torch.nn.RMSNorm if config.normalization == "RMSNorm" else torch.nn.LayerNorm
        norm = norm_cls(normalized_shape=hidden_size, eps=eps)
        for p in norm.parameters():
            setattr(p, "sequence_parallel", config.sequence_parallel)
        return norm
