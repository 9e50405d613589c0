"""Model provider: a recipe's ``model`` section -> megatron-core ``GPTModel`` with MoE layers.

The layer specs are megatron-core's: Transformer Engine's when it imports (CUDA), the local
ones otherwise; on the CPU backend the local spec's core attention is swapped for SDPA (see
``cpu_compat``). ``moe_layer_freq`` lets dense and MoE layers alternate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ablate.recipe.schema import ModelConfig, Recipe


def padded_vocab_size(vocab_size: int, multiple: int, tp: int) -> int:
    """Megatron's rule: pad the embedding so every tensor-parallel shard has equal, aligned rows."""
    step = multiple * tp
    return int(math.ceil(vocab_size / step) * step)


def transformer_config(recipe: Recipe, backend: str):
    from megatron.core.transformer import TransformerConfig

    m: ModelConfig = recipe.model
    par = recipe.parallelism
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[recipe.training.precision]
    moe = m.num_experts > 0
    return TransformerConfig(
        num_layers=m.num_layers, hidden_size=m.hidden_size, num_attention_heads=m.num_attention_heads,
        ffn_hidden_size=m.ffn_hidden_size, normalization=m.normalization, init_method_std=m.init_method_std,
        add_bias_linear=False, gated_linear_unit=True, activation_func=F.silu,
        hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=par.tp, pipeline_model_parallel_size=par.pp,
        expert_model_parallel_size=par.ep, context_parallel_size=par.cp,
        sequence_parallel=par.tp > 1,
        params_dtype=dtype, bf16=dtype is torch.bfloat16, fp16=dtype is torch.float16,
        num_moe_experts=m.num_experts if moe else None,
        moe_ffn_hidden_size=(m.moe_ffn_hidden_size or m.ffn_hidden_size) if moe else None,
        moe_router_topk=m.moe_router_topk if moe else 2,
        moe_layer_freq=m.moe_layer_freq,
        moe_router_score_function=m.moe_router_score_function,
        moe_router_load_balancing_type=m.moe_router_load_balancing_type,
        moe_aux_loss_coeff=m.moe_aux_loss_coeff if m.moe_router_load_balancing_type != "none" else 0.0,
        moe_z_loss_coeff=m.moe_z_loss_coeff,
        moe_router_enable_expert_bias=m.moe_router_enable_expert_bias,
        moe_shared_expert_intermediate_size=m.moe_shared_expert_intermediate_size,
        moe_grouped_gemm=False,
        # alltoall creates a CUDA stream in its constructor: CUDA only (see cpu_compat)
        moe_token_dispatcher_type="alltoall" if backend == "cuda" else "allgather",
        use_cpu_initialization=backend == "cpu",
        # fused kernels are CUDA kernels
        bias_activation_fusion=backend == "cuda", bias_dropout_fusion=backend == "cuda",
        masked_softmax_fusion=False, persist_layer_norm=False, apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
    )


def build_model(recipe: Recipe, vocab_size: int, backend: str):
    """megatron-core ``GPTModel`` for this recipe on this backend (call after parallel state)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_layer_local_spec

    config = transformer_config(recipe, backend)
    use_te = backend == "cuda" and _te_available()
    if config.num_moe_experts:
        spec = get_gpt_decoder_block_spec(config, use_transformer_engine=use_te, normalization=config.normalization)
        layers = spec.layer_specs
    else:
        spec = get_gpt_layer_local_spec(normalization=config.normalization) if not use_te else \
            _te_dense_spec()
        layers = [spec]
    if backend == "cpu":
        from ablate.train.cpu_compat import cpu_layer_spec

        for layer in layers:
            cpu_layer_spec(layer)
    model = GPTModel(
        config=config, transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(vocab_size, recipe.model.make_vocab_size_divisible_by, recipe.parallelism.tp),
        max_sequence_length=recipe.model.max_position_embeddings,
        position_embedding_type=recipe.model.position_embedding_type,
        share_embeddings_and_output_weights=False,
    )
    if backend == "cuda":
        model = model.cuda()
    return model


def _te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return True


def _te_dense_spec():
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    return get_gpt_layer_with_transformer_engine_spec()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
