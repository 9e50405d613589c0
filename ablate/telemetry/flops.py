"""Parameter counts, model FLOPs per token and MFU, computed from a recipe's ``model`` section.

No torch here: a recipe's sizes (and a preset table) are known without building anything.
The counts follow exactly what ``ablate.train.model.build_model`` asks megatron-core's
``GPTModel`` to build (``tests/test_flops.py`` checks ``total`` against ``sum(p.numel())`` of
the real model): SwiGLU MLPs (``gated_linear_unit=True``: fc1 is ``2F x H``), no linear biases,
RMSNorm (one weight vector; LayerNorm: weight and bias), untied input embedding and output
layer over the padded vocabulary (``padded_vocab_size``), rotary positions (no parameters;
``learned_absolute``: ``max_position_embeddings x H``), multi-head attention (no GQA, no
q/k norm), every ``moe_layer_freq``-th layer an MoE layer starting with layer 0 (megatron's
``i % freq == 0``), the others dense with ``ffn_hidden_size``.

An MoE layer holds ``num_experts`` routed experts of ``moe_ffn_hidden_size`` (default
``ffn_hidden_size``), an optional shared expert of ``moe_shared_expert_intermediate_size`` and
a router weight ``E x H``. The router's expert bias (``moe_router_enable_expert_bias``) is a
*buffer* in megatron-core (updated outside the optimizer), so it is not a parameter and is not
counted.
"""

from __future__ import annotations

import math
import re
from typing import Optional


def padded_vocab(vocab_size: int, multiple: int, tp: int = 1) -> int:
    """The rule of ``ablate.train.model.padded_vocab_size``: pad to ``lcm(multiple, tp)`` rows."""
    step = math.lcm(multiple, tp)
    return int(math.ceil(vocab_size / step) * step)


def _moe_layers(m) -> int:
    if not m.num_experts:
        return 0
    return sum(1 for i in range(m.num_layers) if i % m.moe_layer_freq == 0)


def parameter_counts(model_cfg, vocab_size: int, tp: int = 1) -> dict:
    """Parameters of the model ``build_model`` builds for ``model_cfg`` (a ``ModelConfig``).

    ``vocab_size`` is the tokenizer's (it is padded here as megatron pads it for ``tp``; ``tp``
    changes nothing else: counts are of the whole model, not of one rank's shard).

    Returns a dict of integers:

    - ``total``: every parameter (equals ``sum(p.numel() for p in model.parameters())`` at
      tp = pp = ep = 1);
    - ``active``: the parameters one token uses, by the convention DeepSeek-MoE, Mixtral and
      Qwen-MoE report "activated parameters" in: ``total`` minus the ``num_experts - topk``
      routed experts a token does not go to, in every MoE layer. So it holds all dense
      parameters (attention, dense MLPs, norms), the ``topk`` routed experts, the shared expert,
      the router, **and the input embedding and output layer in full**;
    - ``embedding`` (input embedding + learned positions, if any), ``output`` (output layer),
      ``attention``, ``dense_mlp``, ``routed_experts`` (all of them), ``routed_experts_active``
      (``topk`` of them), ``shared_experts``, ``router``, ``norms``;
    - ``moe_layers``, ``dense_layers``, ``padded_vocab``.
    """
    m = model_cfg
    H, L = m.hidden_size, m.num_layers
    V = padded_vocab(vocab_size, m.make_vocab_size_divisible_by, tp)
    norm = H if m.normalization == "RMSNorm" else 2 * H  # LayerNorm has a bias
    n_moe = _moe_layers(m)
    n_dense = L - n_moe

    embedding = V * H + (
        m.max_position_embeddings * H if m.position_embedding_type == "learned_absolute" else 0
    )
    output = V * H
    # q, k, v (3H x H) and the output projection (H x H); kv_channels = H / heads, no GQA
    attention = L * 4 * H * H

    def mlp(f: Optional[int]) -> int:  # SwiGLU: fc1 is 2f x H, fc2 is H x f
        return 3 * H * f if f else 0

    dense_mlp = n_dense * mlp(m.ffn_hidden_size)
    expert = mlp(m.moe_ffn_hidden_size or m.ffn_hidden_size) if n_moe else 0
    routed = n_moe * m.num_experts * expert
    routed_active = n_moe * m.moe_router_topk * expert
    shared = n_moe * mlp(m.moe_shared_expert_intermediate_size)
    router = n_moe * m.num_experts * H
    norms = (2 * L + 1) * norm  # input and pre-MLP norm per layer, final norm

    total = embedding + output + attention + dense_mlp + routed + shared + router + norms
    active = total - routed + routed_active
    return dict(
        total=total,
        active=active,
        embedding=embedding,
        output=output,
        attention=attention,
        dense_mlp=dense_mlp,
        routed_experts=routed,
        routed_experts_active=routed_active,
        shared_experts=shared,
        router=router,
        norms=norms,
        moe_layers=n_moe,
        dense_layers=n_dense,
        padded_vocab=V,
    )


def flops_per_token(
    model_cfg, vocab_size: int, seq_length: int, *, causal: bool = True, tp: int = 1
) -> float:
    """Model FLOPs of one training token (forward + backward), no recomputation counted.

    ``6 * N_matmul + attention``, the formula of PaLM (Chowdhery et al. 2022, appendix B, "6N +
    12LHQT") and of Megatron-LM's ``num_floating_point_operations`` (Narayanan et al. 2021,
    appendix), with MoE counted by the experts a token is routed to:

    - ``N_matmul``: the weights of the matrix multiplies one token goes through: attention
      projections, dense MLPs, the ``topk`` routed experts and the shared expert of every MoE
      layer, the router (``E x H``) and the output layer (logits over the padded vocabulary).
      Not the input embedding (a lookup) nor norms. 6 = 2 (multiply-add) x 3 (forward, weight
      gradient, input gradient).
    - ``attention``: ``QK^T`` and ``AV`` over the context, 2 matmuls x 2 FLOPs x 3 passes x
      ``num_layers x hidden_size x seq_length``: ``12 * L * H * T`` as PaLM counts it (every
      query against every key). ``causal=True`` (the default) counts only the keys a causal
      query sees, half of that (``6 * L * H * T``), the work causal flash/SDPA kernels do and
      the convention of NVIDIA's current NeMo / Megatron-Bridge FLOPs calculators;
      ``causal=False`` gives PaLM's and the classic Megatron-LM figure, which yields a higher MFU.
    """
    c = parameter_counts(model_cfg, vocab_size, tp=tp)
    matmul = (
        c["attention"]
        + c["dense_mlp"]
        + c["routed_experts_active"]
        + c["shared_experts"]
        + c["router"]
        + c["output"]
    )
    attention = 12 * model_cfg.num_layers * model_cfg.hidden_size * seq_length
    if causal:
        attention /= 2
    return float(6 * matmul + attention)


# Dense (no structured sparsity) peak TFLOP/s per GPU from NVIDIA's data sheets. "fp32" is IEEE
# fp32 on the CUDA cores; "tf32" is fp32 matmuls on tensor cores (torch's allow_tf32).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "B200": {"bf16": 2250.0, "fp16": 2250.0, "tf32": 1100.0},  # HGX B200 data sheet, dense
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM: H100 SXM's compute
    "GH200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {
        "bf16": 312.0,
        "fp16": 312.0,
        "tf32": 156.0,
        "fp32": 19.5,
    },  # 40GB and 80GB, SXM and PCIe
}

# torch.cuda.get_device_name() -> table row; first match wins, so variants come before the
# plain name. Examples: "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA H100 80GB HBM3" (SXM),
# "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA GH200 480GB", "NVIDIA A100-SXM4-80GB",
# "NVIDIA A100-PCIE-40GB", "NVIDIA A100 80GB PCIe", "NVIDIA B200".
_DEVICE_PATTERNS: list[tuple[str, str]] = [
    (r"\bB200\b", "B200"),
    (r"\bGH200\b", "GH200"),
    (r"\bH200\b.*\bNVL\b", "H200 NVL"),
    (r"\bH200\b", "H200"),
    (r"\bH100\b.*\bNVL\b", "H100 NVL"),
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe"),
    (r"\bH100\b.*(\bSXM|\bHBM3)", "H100 SXM"),
    (r"\bA100\b", "A100"),
]

_PRECISION_ALIASES = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "tf32": "tf32",
    "fp32": "fp32",
    "float32": "fp32",
}


def device_row(device_name: str) -> Optional[str]:
    """The ``PEAK_TFLOPS`` row for a ``torch.cuda.get_device_name()`` string, or None.

    A MIG slice (name containing "MIG") has a fraction of the chip: None, like an unknown device.
    """
    if "MIG" in device_name:
        return None
    for pattern, row in _DEVICE_PATTERNS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return row
    return None


def device_peak_flops(
    device_name: str, precision: str, override: Optional[float] = None
) -> Optional[float]:
    """Peak dense FLOP/s of one device at ``precision`` (bf16, fp16, tf32, fp32), or None.

    ``override`` (FLOP/s, e.g. ``989e12``) wins over the table. An unknown device, a MIG slice
    or a precision the table has no figure for gives None, so that MFU is left out rather
    than computed against a wrong peak.
    """
    if override is not None:
        if not override > 0:
            raise ValueError(f"peak FLOP/s override must be positive, got {override}")
        if override < 1e9:
            raise ValueError(
                f"peak FLOP/s override {override} is below 1 GFLOP/s: give FLOP/s "
                f"(e.g. 989e12), not TFLOP/s"
            )
        return float(override)
    p = _PRECISION_ALIASES.get(precision.lower())
    if p is None:
        raise ValueError(
            f"precision {precision!r}: one of {sorted(set(_PRECISION_ALIASES.values()))}"
        )
    row = device_row(device_name)
    if row is None or p not in PEAK_TFLOPS[row]:
        return None
    return PEAK_TFLOPS[row][p] * 1e12


def mfu(
    tokens_per_s_per_device: float, flops_per_token: float, peak: Optional[float]
) -> Optional[float]:
    """Model FLOPs utilisation, a fraction (0.24 = 24%): achieved model FLOP/s over ``peak``.

    None when ``peak`` is None (unknown device): no MFU rather than a wrong one.
    """
    if peak is None:
        return None
    if not peak > 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak}")
    return tokens_per_s_per_device * flops_per_token / peak
