"""Decoder-only language models (Llama / Qwen2 / GPT-2 families) as generating bundles.

config (transformers config.json) → weights (safetensors, optional int8/int4 group-wise) →
relax_model (prefill/decode over a contiguous KV cache) → golden (torch reference) → package."""
