"""Parameter counts and FLOPs per token against the real megatron-core model; peak table and MFU."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ablate.recipe.schema import ModelConfig
from ablate.telemetry.flops import (
    PEAK_TFLOPS,
    device_peak_flops,
    device_row,
    flops_per_token,
    mfu,
    parameter_counts,
)
from model_sizes import measure

BASE = dict(
    num_layers=3,
    hidden_size=64,
    num_attention_heads=4,
    ffn_hidden_size=96,
    max_position_embeddings=64,
)
CASES = {
    "dense": dict(BASE, num_experts=0),
    "moe": dict(BASE, num_experts=4, moe_router_topk=2, moe_ffn_hidden_size=48),
    "moe_freq2": dict(
        BASE, num_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32, moe_layer_freq=2
    ),
    "shared_bias": dict(
        BASE,
        num_experts=8,
        moe_router_topk=3,
        moe_ffn_hidden_size=16,
        moe_shared_expert_intermediate_size=40,
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=True,
    ),
    "layernorm_learned": dict(
        BASE,
        num_experts=4,
        moe_router_topk=2,
        normalization="LayerNorm",
        position_embedding_type="learned_absolute",
    ),
}
VOCAB = 300  # pads to 384: the padding rows are parameters too
SEQ = 16


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    cases = [{"model": m, "vocab": VOCAB, "meta": False, "seq": SEQ} for m in CASES.values()]
    return dict(zip(CASES, measure(cases, str(tmp_path_factory.mktemp("sizes")))))


@pytest.mark.parametrize("name", list(CASES))
def test_total_and_every_part_equal_the_real_model(real, name):
    counts = parameter_counts(ModelConfig(**CASES[name]), VOCAB)
    assert counts["total"] == real[name]["total"]
    parts = {k: v for k, v in real[name]["by_part"].items() if v}
    assert not [k for k in parts if k.startswith("other:")], parts  # every parameter has a part
    for part, n in parts.items():
        assert counts[part] == n, part
    assert counts["padded_vocab"] == 384


@pytest.mark.parametrize("name", list(CASES))
def test_active_is_what_one_token_uses(real, name):
    """One token's backward gives a nonzero gradient to exactly the ``active`` parameters
    (matrices counted whole: the embedding row it looks up stands for the whole embedding)."""
    counts = parameter_counts(ModelConfig(**CASES[name]), VOCAB)
    assert real[name]["touched"] == counts["active"]
    if name == "dense":
        assert counts["active"] == counts["total"]
    else:
        assert counts["active"] < counts["total"]


@pytest.mark.parametrize("name", list(CASES))
def test_flops_per_token_equal_torch_flop_counter_on_the_real_model(real, name):
    """torch counts every matmul of a forward + backward (attention through SDPA's math path,
    every query against every key): that is ``flops_per_token(causal=False)`` per token."""
    m = ModelConfig(**CASES[name])
    measured = real[name]["matmul_flops"] / real[name]["tokens"]
    assert measured == pytest.approx(flops_per_token(m, VOCAB, SEQ, causal=False), rel=1e-12)
    causal = flops_per_token(m, VOCAB, SEQ)
    assert (
        causal
        == flops_per_token(m, VOCAB, SEQ, causal=False) - 6 * m.num_layers * m.hidden_size * SEQ
    )


def test_moe_flops_count_routed_experts_only():
    m = ModelConfig(**CASES["moe"])
    more_experts = ModelConfig(**dict(CASES["moe"], num_experts=16))
    assert parameter_counts(more_experts, VOCAB)["total"] > parameter_counts(m, VOCAB)["total"]
    # router grows by E x H, experts a token visits stay the same
    assert (
        flops_per_token(more_experts, VOCAB, SEQ) - flops_per_token(m, VOCAB, SEQ)
        == 6 * 3 * 12 * 64
    )
    topk3 = ModelConfig(**dict(CASES["moe"], moe_router_topk=3))
    assert flops_per_token(topk3, VOCAB, SEQ) - flops_per_token(m, VOCAB, SEQ) == 6 * 3 * (
        3 * 64 * 48
    )


def test_vocab_padding_is_the_model_builders():
    from ablate.train.model import padded_vocab_size

    m = ModelConfig(**CASES["dense"])
    for vocab in (256, 258, 300, 32000, 50257):
        for tp in (1, 2, 3, 4, 8):
            padded = padded_vocab_size(vocab, m.make_vocab_size_divisible_by, tp)
            counts = parameter_counts(m, vocab, tp=tp)
            assert counts["padded_vocab"] == padded, (vocab, tp)
            # input embedding and output layer (untied) grow by one row each per padded token
            assert counts["total"] - parameter_counts(m, 1)["total"] == 2 * (padded - 128) * 64


def test_module_imports_no_torch():
    code = "import sys, ablate.telemetry.flops; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "name, row",
    [
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("NVIDIA A100-PCIE-40GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA GeForce RTX 4090", None),
        ("Tesla V100-SXM2-32GB", None),
        ("NVIDIA GB200", None),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None),
        ("NVIDIA H100", None),
        ("", None),
    ],
)
def test_device_names_map_to_their_row_or_none(name, row):
    assert device_row(name) == row


def test_peak_table_and_override():
    assert device_peak_flops("NVIDIA H200", "bf16") == 989.4e12
    assert device_peak_flops("NVIDIA H100 PCIe", "bf16") == 756.5e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB", "tf32") == 156e12
    assert device_peak_flops("NVIDIA B200", "fp32") is None  # no figure in the table: no MFU
    assert device_peak_flops("NVIDIA GeForce RTX 4090", "bf16") is None
    assert device_peak_flops("NVIDIA GeForce RTX 4090", "bf16", override=165e12) == 165e12
    assert device_peak_flops("NVIDIA H200", "bf16", override=500e12) == 500e12
    with pytest.raises(ValueError, match="not TFLOP/s"):
        device_peak_flops("NVIDIA H200", "bf16", override=989.0)
    with pytest.raises(ValueError, match="precision"):
        device_peak_flops("NVIDIA H200", "int8")
    for row in PEAK_TFLOPS.values():  # dense, not the sparsity figures: bf16 ~ 2 x tf32 (never 4x)
        assert row["bf16"] == pytest.approx(2 * row["tf32"], rel=0.05)


def test_mfu():
    assert mfu(10_000, 6e9, 989.4e12) == pytest.approx(10_000 * 6e9 / 989.4e12)
    assert mfu(10_000, 6e9, None) is None
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 0.0)
