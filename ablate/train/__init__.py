"""MoE pretraining on megatron-core: backends, model provider, data, loop, checkpoints."""
