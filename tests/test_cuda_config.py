"""The CUDA backend's configuration, built and checked on CPU (only device calls stubbed), so a
CUDA-only configuration error cannot hide until someone runs it on a GPU; and the CPU
adaptations' scopes."""

from __future__ import annotations

import json
import os
import subprocess

import yaml

from test_train import PYTHON, REPO

PROBE = os.path.join(REPO, "tests", "cuda_config_probe.py")
RECIPE = {
    "name": "cudacfg",
    # a cluster preset's settings on a model small enough for a CPU test
    "model": {
        "preset": "moe-1.3b-a0.3b",
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "ffn_hidden_size": 128,
        "moe_ffn_hidden_size": 64,
        "num_experts": 4,
        "max_position_embeddings": 128,
    },
    "training": {
        "seq_length": 64,
        "global_batch_size": 8,
        "micro_batch_size": 2,
        "precision": "bf16",
    },
    "parallelism": {
        "distributed_optimizer": True,
        "overlap_grad_reduce": True,
        "overlap_param_gather": True,
    },
    "stages": [{"name": "code", "mix": {"code": {"tokens": "4K"}}}],
}


def _probe(tmp_path, *flags):
    path = tmp_path / "cuda.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return subprocess.run(
        [PYTHON, PROBE, str(path), *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def test_cuda_configuration_builds_a_model_optimizer_and_checkpoint_state(tmp_path):
    r = _probe(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["te_spec_asked"] == [
        True,
        False,
    ]  # TE's spec when it imports, megatron's local one otherwise
    assert (
        out["local_core_attention"] == "SDPACoreAttention"
    )  # never the unfused seq x seq attention
    cfg = out["config"]
    assert (
        cfg["use_cpu_initialization"] == "False" and cfg["moe_token_dispatcher_type"] == "alltoall"
    )
    assert (
        cfg["bf16"] == "True" and cfg["params_dtype"] == cfg["pipeline_dtype"] == "torch.bfloat16"
    )
    assert cfg["calculate_per_token_loss"] == "True" and cfg["batch_p2p_comm"] == "True"
    assert out["param_dtypes"] == ["torch.bfloat16"] and out["main_param_dtypes"] == [
        "torch.float32"
    ]
    assert out["ddp"] == {
        "grad_reduce_in_fp32": True,
        "use_distributed_optimizer": True,
        "overlap_grad_reduce": True,
        "overlap_param_gather": True,
    }
    assert out["dispatcher"] == "MoEAlltoAllTokenDispatcher"
    assert out["checkpoint_keys"] > 0


def test_the_probe_catches_a_missing_cuda_rng_seed(tmp_path):
    r = _probe(tmp_path, "--without-rng-seed")
    assert r.returncode != 0 and "is not added" in r.stderr, r.stderr[-2000:]


def test_cuda_type_names_are_answered_only_inside_the_optimizer_scope():
    code = (
        "import torch; from ablate.train import cpu_compat; cpu_compat.apply();"
        "t = torch.zeros(1, dtype=torch.bfloat16); assert t.type() == 'torch.BFloat16Tensor';"
        "\nwith cpu_compat.cuda_type_names():\n    assert t.type() == 'torch.cuda.BFloat16Tensor'\n"
        "assert t.type() == 'torch.BFloat16Tensor' and not cpu_compat.type_names_scoped();"
        "assert torch.zeros(1).type(torch.float64).dtype == torch.float64; print('ok')"
    )
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_every_cluster_recipe_gives_a_valid_cuda_configuration_at_4_nodes_x_8_gpus():
    """megatron-core validates its TransformerConfig in __post_init__ (MoE + TP needs sequence
    parallelism, pipeline dtypes, ...): each cluster recipe's CUDA config is built here, with
    its layout checked at the 32 GPUs it is written for, and its layer specs chosen."""
    code = """
import glob, sys, torch
torch.cuda.is_bf16_supported = lambda *a, **k: True
from ablate.recipe.schema import load_recipe
from ablate.train import backend, model
paths = sorted(glob.glob(sys.argv[1] + '/recipes/cluster/*.yaml'))
assert paths
for p in paths:
    r = load_recipe(p)
    backend.check_layout(r, 32, 'cuda')
    config = model.transformer_config(r, 'cuda', te=False)
    assert config.bf16 and not config.use_cpu_initialization
    assert config.moe_token_dispatcher_type == 'alltoall'
print(len(paths), 'ok')
"""
    r = subprocess.run([PYTHON, "-c", code, REPO], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "12 ok" in r.stdout, r.stderr[-3000:]
