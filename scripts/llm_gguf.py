"""The benchmark's Llama checkpoint as a GGUF file for llama.cpp, holding the weights an edgepack bundle holds:
F32 as is; Q8_0 / Q4_0 (blocks of 32 along the input axis) made from edgepack's own group-32 int8 / int4 values,
so both engines compute with the same integers (llama.cpp's block scale is fp16 where edgepack's is fp32).

Used by scripts/llm_bench.py (needs the `gguf` package: `pip install -e .[llm-bench]`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.llm.config import LlmConfig
from edgepack.llm.weights import QuantScheme, quantize_matrix, read_safetensors

GROUP = 32  # Q4_0 and Q8_0 blocks


def rope_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q/k projection from rotate-half (transformers) to llama.cpp's interleaved pairs, as
    llama.cpp's convert_hf_to_gguf.py does for Llama."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _blocks(values: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """[out, in] integers (int8 in -127..127, or 4-bit in -7..7) and their fp32 scales [out, in/32] as the raw
    bytes of Q8_0 (fp16 d, 32 x int8) or Q4_0 (fp16 d, 16 bytes: element j low nibble, j + 16 high, offset 8)."""
    rows, columns = values.shape
    grouped = values.reshape(rows, columns // GROUP, GROUP)
    if bits == 8:
        payload = grouped.astype(np.int8).view(np.uint8)
    else:
        nibbles = (grouped + 8).astype(np.uint8)
        payload = nibbles[:, :, :GROUP // 2] | (nibbles[:, :, GROUP // 2:] << 4)
    d = scale.astype(np.float16).view(np.uint8).reshape(rows, columns // GROUP, 2)
    return np.concatenate([d, payload], axis=2).reshape(rows, -1)


def _integers(weight: np.ndarray, scheme: QuantScheme) -> tuple[np.ndarray, np.ndarray]:
    """edgepack's quantized values of one matrix, unpacked to one integer per weight, and its scales."""
    q, scale = quantize_matrix(np.ascontiguousarray(weight, np.float32), scheme)
    if scheme.bits == 8:
        return q.astype(np.int16), scale
    values = np.empty((q.shape[0], q.shape[1] * 2), np.int16)
    values[:, 0::2], values[:, 1::2] = (q & 15).astype(np.int16) - 8, (q >> 4).astype(np.int16) - 8
    return values, scale


def write_gguf(model_dir: Path, config: LlmConfig, path: Path, bits: int | None) -> Path:
    """Write `path` from model_dir's model.safetensors: F32 (bits None), Q8_0 (8) or Q4_0 (4) matrices, F32 norms."""
    import gguf

    if config.family != "llama" or config.qkv_bias or (bits and (config.hidden_size % GROUP or config.intermediate_size % GROUP)):
        raise ValueError(f"only Llama checkpoints without q/k/v biases, rows divisible by {GROUP}, are converted here")
    tensors = read_safetensors(model_dir)
    kinds = {None: (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
             8: (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
             4: (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0)}
    kind, file_type = kinds[bits]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("none")  # token ids in, logits out: no tokenizer
    writer.add_file_type(file_type)

    def matrix(name: str, weight: np.ndarray) -> None:
        if bits is None:
            writer.add_tensor(name, np.ascontiguousarray(weight, np.float32))
        else:
            values, scale = _integers(weight, QuantScheme(bits, GROUP))
            writer.add_tensor(name, _blocks(values, scale, bits), raw_dtype=kind)

    matrix("token_embd.weight", tensors["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", tensors["model.norm.weight"].astype(np.float32))
    if not config.tie_embeddings:
        matrix("output.weight", tensors["lm_head.weight"])
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", tensors[p + "input_layernorm.weight"].astype(np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", tensors[p + "post_attention_layernorm.weight"].astype(np.float32))
        matrix(f"blk.{i}.attn_q.weight", rope_permute(tensors[p + "self_attn.q_proj.weight"], config.num_heads))
        matrix(f"blk.{i}.attn_k.weight", rope_permute(tensors[p + "self_attn.k_proj.weight"], config.num_kv_heads))
        matrix(f"blk.{i}.attn_v.weight", tensors[p + "self_attn.v_proj.weight"])
        matrix(f"blk.{i}.attn_output.weight", tensors[p + "self_attn.o_proj.weight"])
        matrix(f"blk.{i}.ffn_gate.weight", tensors[p + "mlp.gate_proj.weight"])
        matrix(f"blk.{i}.ffn_up.weight", tensors[p + "mlp.up_proj.weight"])
        matrix(f"blk.{i}.ffn_down.weight", tensors[p + "mlp.down_proj.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
