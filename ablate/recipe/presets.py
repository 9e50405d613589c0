"""Named model shapes a recipe's ``model.preset`` picks (then overrides any field of).

Each preset's size is stated in the comment above it and checked by tests/test_presets.py,
which reads this file.
"""

# Named model shapes. A recipe names one and may override any field. The line above each
# preset states its size as ``# NAME: total T / active A (vocab V)``, computed by
# ``ablate.telemetry.flops.parameter_counts`` for a tokenizer of V tokens (active: what one
# token uses, embedding and output layer included); tests/test_presets.py recomputes every
# figure, so a change of shape needs its comment (and the README's table) updated.
# (laid out by hand as a table: one preset, two or three lines)
# fmt: off
MODEL_PRESETS: dict[str, dict] = {
    # toy-moe: total 3.51M / active 1.15M (vocab 258)
    # Learns the toy world in minutes on 2 CPU cores (vocab 258: the byte tokenizer).
    # 8 heads of 16: with 4 heads the operand-retrieval circuit the math probes need had not
    # formed after 2.5M structured-math tokens; with 8 heads and 5M tokens it had (the first 8
    # held-out math problems right). Heads and tokens changed together: see README.
    "toy-moe": dict(num_layers=4, hidden_size=128, num_attention_heads=8, ffn_hidden_size=256,
                    num_experts=8, moe_router_topk=2, max_position_embeddings=512),
    # moe-100m: total 461M / active 97.4M (vocab 32000)
    # A single-GPU sanity scale; the name is its active size (16 experts of 1408, top-2).
    "moe-100m": dict(num_layers=12, hidden_size=512, num_attention_heads=8, ffn_hidden_size=1408,
                     num_experts=16, moe_router_topk=2, max_position_embeddings=2048),
    # moe-1.3b-a0.3b: total 1.30B / active 308M (vocab 32000)
    # DeepSeekMath's ablation scale (its sec. 5.1 ablations train a 1.3B model) as an MoE:
    # 24 layers of 1024 with 16 experts of 960, top-2, so that the total is 1.3B.
    "moe-1.3b-a0.3b": dict(num_layers=24, hidden_size=1024, num_attention_heads=16,
                           ffn_hidden_size=2816, moe_ffn_hidden_size=960, num_experts=16,
                           moe_router_topk=2, max_position_embeddings=4096),
    # moe-4b-a1b: total 3.86B / active 950M (vocab 32000)
    # A dense 1.3B model's layout (24 layers of 2048) with every MLP made 16 experts of 1408,
    # top-2. It was called moe-1b, for its active size; that name still loads it.
    "moe-4b-a1b": dict(num_layers=24, hidden_size=2048, num_attention_heads=16,
                       ffn_hidden_size=5632, moe_ffn_hidden_size=1408, num_experts=16,
                       moe_router_topk=2, max_position_embeddings=4096),
}
# fmt: on
# Old names, kept so that recipes naming them still load (the same shape, not a copy).
MODEL_PRESETS["moe-1b"] = MODEL_PRESETS["moe-4b-a1b"]
