"""Build the CUDA backend's whole configuration on a CPU machine (run by test_cuda_config.py).

Only device calls are stubbed (``torch.cuda.*`` placement, streams, ``Module.cuda()``, the
device's name and bf16 support, the CUDA RNG generator behind megatron's tracker: the CPU
adaptations' stand-ins). Everything else is the CUDA path as a GPU node runs it: megatron's
GPU initialisation through the RNG tracker (so a missing ``model_parallel_cuda_manual_seed``
fails here), bf16 with fp32 main params, the alltoall dispatcher, SDPA, the optimizer and DDP
configs, checkpoint strategy. Prints one JSON line of what it built.
"""

import json
import sys

import torch

from ablate.train import cpu_compat

cpu_compat.apply()  # device stand-ins only (current_device, "cuda" literals, RNG generator states)
torch.cuda.Stream = lambda *a, **k: None
torch.cuda.current_stream = lambda *a, **k: None
torch.cuda.is_bf16_supported = lambda *a, **k: True
torch.cuda.get_device_name = lambda *a, **k: "NVIDIA H200"
torch.nn.Module.cuda = lambda self, *a, **k: self

from ablate.recipe.schema import load_recipe  # noqa: E402
from ablate.train import backend, model as model_mod  # noqa: E402

recipe = load_recipe(sys.argv[1])
if "--without-rng-seed" in sys.argv:  # what the CUDA path did before: the build must fail here
    import megatron.core.tensor_parallel as tp_mod

    tp_mod.model_parallel_cuda_manual_seed = lambda *a, **k: None
out = {}
# the layer spec with and without Transformer Engine (TE's modules themselves need CUDA)
import megatron.core.models.gpt.gpt_layer_specs as specs  # noqa: E402

asked = []
original = specs.get_gpt_decoder_block_spec
specs.get_gpt_decoder_block_spec = lambda config, use_transformer_engine, **kw: (
    asked.append(use_transformer_engine),
    original(config, False, **kw),
)[1]
layout = backend.Layout("cuda", 0, 1, 1, 0, torch.device("cpu"))
import torch.distributed as dist  # noqa: E402
import tempfile  # noqa: E402

dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
from megatron.core import parallel_state  # noqa: E402

parallel_state.initialize_model_parallel(1, 1)
config = model_mod.transformer_config(recipe, "cuda", te=False)
spec_te = model_mod.layer_spec(config, "cuda", te=True)
spec_local = model_mod.layer_spec(config, "cuda", te=False)
specs.get_gpt_decoder_block_spec = original
out["te_spec_asked"] = asked
out["local_core_attention"] = spec_local.layer_specs[
    0
].submodules.self_attention.submodules.core_attention.__name__
out["config"] = {
    k: str(getattr(config, k))
    for k in (
        "use_cpu_initialization",
        "moe_token_dispatcher_type",
        "bf16",
        "params_dtype",
        "pipeline_dtype",
        "calculate_per_token_loss",
        "batch_p2p_comm",
        "sequence_parallel",
        "bias_activation_fusion",
    )
}
backend.check_layout(recipe, 1, "cuda")
from ablate.train.engine import Engine  # noqa: E402

engine = Engine(recipe, layout, 258, 6)
params = list(engine.parameters())
out["param_dtypes"] = sorted({str(p.dtype) for p in params})
out["main_param_dtypes"] = sorted(
    {str(p.dtype) for g in engine.optimizer.param_groups for p in g["params"]}
)
out["optimizer"] = type(engine.optimizer).__name__
out["ddp"] = {
    k: getattr(engine.chunks[0].ddp_config, k)
    for k in (
        "grad_reduce_in_fp32",
        "use_distributed_optimizer",
        "overlap_grad_reduce",
        "overlap_param_gather",
    )
}
out["dispatcher"] = type(
    next(m for m in engine.modules[0].modules() if type(m).__name__ == "MoELayer").token_dispatcher
).__name__
from ablate.train.checkpoint import OPTIMIZER_METADATA, _ensure_optimizer_state, _model_state  # noqa: E402

state = _model_state(engine.modules)
_ensure_optimizer_state(engine.optimizer)
state["optimizer"] = engine.optimizer.sharded_state_dict(state, metadata=OPTIMIZER_METADATA)
out["checkpoint_keys"] = len(state["model"])
print(json.dumps(out))
