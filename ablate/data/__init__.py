"""The data plane: taxonomy, tokenizers, ingestion into megatron-core indexed datasets, manifest."""
