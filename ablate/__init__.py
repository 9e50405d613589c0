"""ablate: controlled data-ablation experiments for MoE pretraining on megatron-core."""

__version__ = "0.1.0"
