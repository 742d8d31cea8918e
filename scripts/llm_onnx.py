"""The benchmark's Llama as ONNX with past key/values, for a plain ONNX Runtime session (scripts/llm_bench.py):
`(input_ids int64[1, n], past_key, past_value float32[layers, kv_heads, past, head_dim]) -> (logits float32[1, vocab]
of the last position, present_key, present_value [.., past + n, ..])`. The graph is exported from a short PyTorch
forward over transformers' own modules (linear layers, RMSNorm) with the cache as plain tensors; the bench checks
its greedy tokens against edgepack's and PyTorch's.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from edgepack.llm.config import LlmConfig


class KvLlama(torch.nn.Module):
    """A transformers LlamaForCausalLM run with an explicit, concatenated KV cache (rotate-half RoPE, GQA)."""

    def __init__(self, model, config: LlmConfig):
        super().__init__()
        self.model, self.config = model, config

    def forward(self, input_ids, past_key, past_value):
        c, inner = self.config, self.model.model
        n, past = input_ids.shape[1], past_key.shape[2]
        positions = torch.arange(n) + past
        inverse = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
        angles = positions[:, None].float() * inverse[None, :]
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        allowed = torch.arange(past + n)[None, :] <= positions[:, None]
        x = inner.embed_tokens(input_ids)[0]
        keys, values = [], []
        for i, layer in enumerate(inner.layers):
            attention, h = layer.self_attn, layer.input_layernorm(x)
            q = attention.q_proj(h).view(n, c.num_heads, c.head_dim).transpose(0, 1)
            k = attention.k_proj(h).view(n, c.num_kv_heads, c.head_dim).transpose(0, 1)
            v = attention.v_proj(h).view(n, c.num_kv_heads, c.head_dim).transpose(0, 1)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            k, v = torch.cat([past_key[i], k], 1), torch.cat([past_value[i], v], 1)
            keys.append(k)
            values.append(v)
            group = c.num_heads // c.num_kv_heads
            scores = q @ k.repeat_interleave(group, 0).transpose(1, 2) / math.sqrt(c.head_dim)
            weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
            x = x + attention.o_proj((weights @ v.repeat_interleave(group, 0)).transpose(0, 1).reshape(n, -1))
            h = layer.post_attention_layernorm(x)
            x = x + layer.mlp.down_proj(torch.nn.functional.silu(layer.mlp.gate_proj(h)) * layer.mlp.up_proj(h))
        return self.model.lm_head(inner.norm(x[-1:])), torch.stack(keys), torch.stack(values)


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def export_kv_onnx(model_dir: Path, config: LlmConfig, path: Path) -> Path:
    """Export `KvLlama` of model_dir's fp32 weights to `path` with symbolic prompt and past lengths."""
    from edgepack.llm.golden import load_reference

    module = KvLlama(load_reference(model_dir, config, None), config).eval()
    past = torch.zeros(config.num_layers, config.num_kv_heads, 2, config.head_dim)  # traced non-empty: no 0-size case baked in
    axes = {"input_ids": {1: "n"}, "past_key": {2: "past"}, "past_value": {2: "past"},
            "present_key": {2: "total"}, "present_value": {2: "total"}}
    with torch.no_grad():
        torch.onnx.export(module, (torch.tensor([[1, 2, 3]]), past, past), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "past_key", "past_value"],
                          output_names=["logits", "present_key", "present_value"], dynamic_axes=axes)
    return path
