"""Model provider: a recipe's ``model`` section -> megatron-core ``GPTModel`` with MoE layers.

The layer specs are megatron-core's: Transformer Engine's when it imports (CUDA), the local
ones otherwise, with SDPA core attention (flash / memory-efficient kernels on CUDA, never the
unfused seq x seq scores) and a sequence-parallel-capable norm (``layers.py``). Swapping
submodules in a spec is megatron-core's extension point. ``moe_layer_freq`` lets dense and MoE
layers alternate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ablate.recipe.schema import ModelConfig, Recipe


def padded_vocab_size(vocab_size: int, multiple: int, tp: int) -> int:
    """Pad the embedding so every tensor-parallel shard has equal, aligned rows.

    Megatron-LM pads to a multiple of ``multiple * tp``, so the padded vocabulary (and with it
    the softmax over the padded logits) changes with tp: the same recipe would be a different
    model at tp=2. Padding to ``lcm(multiple, tp)`` keeps every shard aligned and equal and, for
    any tp dividing ``multiple`` (128 by default), the same model at every layout.
    """
    step = math.lcm(multiple, tp)
    return int(math.ceil(vocab_size / step) * step)


def transformer_config(recipe: Recipe, backend: str, te: bool | None = None):
    """megatron-core ``TransformerConfig`` for this recipe on this backend (megatron checks it)."""
    from megatron.core.transformer import TransformerConfig

    m: ModelConfig = recipe.model
    par = recipe.parallelism
    train = recipe.training
    te = _te_available() if te is None else te
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[train.precision]
    moe = m.num_experts > 0
    cuda = backend == "cuda"
    dispatcher = m.moe_token_dispatcher_type
    if dispatcher == "auto":  # alltoall creates a CUDA stream in its constructor: CUDA only
        dispatcher = "alltoall" if cuda else "allgather"
    recompute = {
        "none": {},
        "selective": dict(recompute_granularity="selective"),
        "full": dict(
            recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1
        ),
    }
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        ffn_hidden_size=m.ffn_hidden_size,
        normalization=m.normalization,
        init_method_std=m.init_method_std,
        add_bias_linear=False,
        gated_linear_unit=True,
        activation_func=F.silu,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=par.tp,
        pipeline_model_parallel_size=par.pp,
        virtual_pipeline_model_parallel_size=par.vp if par.pp > 1 and par.vp > 1 else None,
        expert_model_parallel_size=par.ep,
        context_parallel_size=par.cp,
        # megatron refuses MoE + TP without sequence parallelism; with TP it is always on
        sequence_parallel=par.tp > 1,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype is torch.bfloat16,
        fp16=dtype is torch.float16,
        # the loss function returns (sum, tokens): finalize_model_grads divides by the global
        # token count, so every layout computes the same per-token mean as one process
        calculate_per_token_loss=True,
        # batched isend/irecv between one pair of ranks is silently wrong on gloo (MEGATRON_NOTES)
        batch_p2p_comm=cuda,
        batch_p2p_sync=cuda,
        num_moe_experts=m.num_experts if moe else None,
        moe_ffn_hidden_size=(m.moe_ffn_hidden_size or m.ffn_hidden_size) if moe else None,
        moe_router_topk=m.moe_router_topk if moe else 2,
        moe_layer_freq=m.moe_layer_freq,
        moe_router_score_function=m.moe_router_score_function,
        moe_router_load_balancing_type=m.moe_router_load_balancing_type,
        moe_aux_loss_coeff=_aux_loss_coeff(m, par),
        moe_z_loss_coeff=m.moe_z_loss_coeff,
        moe_router_enable_expert_bias=m.moe_router_enable_expert_bias,
        moe_shared_expert_intermediate_size=m.moe_shared_expert_intermediate_size,
        moe_grouped_gemm=m.moe_grouped_gemm,
        moe_token_dispatcher_type=dispatcher,
        **recompute[train.recompute],
        use_cpu_initialization=not cuda,
        # fused kernels are CUDA kernels
        bias_activation_fusion=cuda,
        bias_dropout_fusion=cuda,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
    )


def _aux_loss_coeff(m: ModelConfig, par) -> float:
    """The load-balancing coefficient megatron-core is given.

    With the per-token loss (``calculate_per_token_loss``), megatron-core 0.16 scales each
    router's aux-loss gradient by the router's *local* token count, which tensor (sequence) and
    context parallelism divide by ``tp x cp``, while the main loss is normalised by the global
    count: the aux gradient comes out ``tp x cp`` times smaller than in one process (measured:
    tp=2 drifted from tp=1 by 5e-3 in 16 steps; with this factor they agree to 1e-7). The
    coefficient is multiplied back; logged aux-loss values divide it out, so they are unchanged.
    """
    if m.moe_router_load_balancing_type == "none":
        return 0.0
    if m.moe_router_load_balancing_type == "aux_loss":
        return m.moe_aux_loss_coeff * par.tp * par.cp
    return m.moe_aux_loss_coeff


def layer_spec(config, backend: str, te: bool, vp_stage: int | None = None):
    """megatron-core's layer specs: Transformer Engine's when it imports on CUDA; else the local
    spec with SDPA core attention and a sequence-parallel-capable torch norm (the local spec's
    ``WrappedTorchNorm`` refuses sequence parallelism, which MoE + TP requires)."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_decoder_block_spec,
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    use_te = backend == "cuda" and te
    if config.num_moe_experts:
        spec = get_gpt_decoder_block_spec(
            config,
            use_transformer_engine=use_te,
            normalization=config.normalization,
            vp_stage=vp_stage,
        )
        layers = spec.layer_specs
    else:
        spec = (
            get_gpt_layer_with_transformer_engine_spec()
            if use_te
            else get_gpt_layer_local_spec(normalization=config.normalization)
        )
        layers = [spec]
    if not use_te:
        from ablate.train.layers import SDPACoreAttention, SequenceParallelNorm

        for layer in layers:
            layer.submodules.self_attention.submodules.core_attention = SDPACoreAttention
            layer.submodules.input_layernorm = SequenceParallelNorm
            layer.submodules.pre_mlp_layernorm = SequenceParallelNorm
        if config.num_moe_experts:
            spec.layer_norm = SequenceParallelNorm
    return spec


def build_model(
    recipe: Recipe,
    vocab_size: int,
    backend: str,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: int | None = None,
    te: bool | None = None,
    config=None,
):
    """megatron-core ``GPTModel`` (one pipeline chunk) for this recipe on this backend (call after
    parallel state). One process, no pipelining: the whole model. ``config``: the
    ``TransformerConfig`` to share (the engine passes one object to every chunk and to DDP)."""
    from megatron.core.models.gpt import GPTModel

    te = _te_available() if te is None else te
    config = config if config is not None else transformer_config(recipe, backend, te)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(config, backend, te, vp_stage),
        vocab_size=padded_vocab_size(
            vocab_size, recipe.model.make_vocab_size_divisible_by, recipe.parallelism.tp
        ),
        max_sequence_length=recipe.model.max_position_embeddings,
        position_embedding_type=recipe.model.position_embedding_type,
        share_embeddings_and_output_weights=False,
        pre_process=pre_process,
        post_process=post_process,
        vp_stage=vp_stage,
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


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
