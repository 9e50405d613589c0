"""ablate: controlled data-ablation experiments for MoE pretraining on megatron-core."""

import warnings

__version__ = "0.1.0"

# megatron-core warns at import that Transformer Engine / Apex are absent: always true on CPU,
# and the CUDA backend reports which layer spec it chose itself. Only that message is silenced.
warnings.filterwarnings(
    "ignore", message=r"Transformer Engine and Apex are not installed", category=UserWarning
)
