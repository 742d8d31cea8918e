"""Weights of a Hugging Face checkpoint (model.safetensors) in edgepack's canonical layout, optionally quantized.

Canonical names (matrices are [out, in], as torch's nn.Linear keeps them):
  embed, pos_embed (GPT-2), final_norm.{weight,bias}, lm_head (absent when tied to embed),
  layers.{i}.{norm1,norm2}.{weight,bias}, layers.{i}.qkv.{weight,bias}, layers.{i}.o.{weight,bias},
  layers.{i}.gate_up.weight + layers.{i}.down.weight (Llama/Qwen2), layers.{i}.fc.{weight,bias} +
  layers.{i}.proj.{weight,bias} (GPT-2).
Quantized matrices become `NAME.q` (int8 [out, in], or uint8 [out, in/2] holding two 4-bit values,
low nibble first, offset by 8) and `NAME.scale` (float32 [out, in/group]): w ≈ (q - offset) * scale.
At compile time (`block_weights`) they are interleaved for the matmul kernels: `NAME.q` becomes
[blocks, in (int8) or in/2 (int4), lanes] and `NAME.scale` [blocks, in/group, lanes], row o at [o // lanes, :, o % lanes],
the rows padded with zero weights to a whole number of tiles (`tile_rows(lanes)` rows); fp32 matrices the same
way ([blocks, in, lanes])."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.llm.config import LlmConfig

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class QuantScheme:
    """Group-wise symmetric weight quantization: `bits` 8 or 4, one fp32 scale per `group` inputs of a row."""

    bits: int
    group: int = 32

    @property
    def name(self) -> str:
        return f"int{self.bits}"

    @property
    def levels(self) -> int:
        return 127 if self.bits == 8 else 7

    def group_for(self, columns: int) -> int:
        """The group size used for a matrix with this many inputs (the whole row when `group` does not divide it)."""
        return self.group if columns % self.group == 0 else columns


def read_safetensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of `model_dir/model.safetensors` as float32 numpy arrays."""
    from safetensors.numpy import load_file

    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise EdgepackError(f"'{model_dir}' has no {WEIGHTS_FILE}", "save the model with save_pretrained(safe_serialization=True)")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise EdgepackError(f"cannot read '{path}': {exc}", "save the model again") from None
    return {name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()}


def _take(tensors: dict, name: str) -> np.ndarray:
    for candidate in (name, name.removeprefix("transformer."), name.removeprefix("model.")):
        if candidate in tensors:
            return tensors[candidate]
    raise EdgepackError(f"{WEIGHTS_FILE} lacks the weight '{name}'", "save the whole model (save_pretrained), not a part")


def canonical_weights(tensors: dict[str, np.ndarray], config: LlmConfig) -> dict[str, np.ndarray]:
    """Rename and fuse a checkpoint's tensors into the canonical layout (fp32)."""
    out: dict[str, np.ndarray] = {}
    if config.family == "gpt2":
        out["embed"] = _take(tensors, "transformer.wte.weight")
        out["pos_embed"] = _take(tensors, "transformer.wpe.weight")
        for i in range(config.num_layers):
            p, c = f"transformer.h.{i}.", f"layers.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[c + ours + ".weight"] = _take(tensors, p + theirs + ".weight")
                out[c + ours + ".bias"] = _take(tensors, p + theirs + ".bias")
            for ours, theirs in (("qkv", "attn.c_attn"), ("o", "attn.c_proj"), ("fc", "mlp.c_fc"), ("proj", "mlp.c_proj")):
                out[c + ours + ".weight"] = np.ascontiguousarray(_take(tensors, p + theirs + ".weight").T)  # Conv1D is [in, out]
                out[c + ours + ".bias"] = _take(tensors, p + theirs + ".bias")
        out["final_norm.weight"] = _take(tensors, "transformer.ln_f.weight")
        out["final_norm.bias"] = _take(tensors, "transformer.ln_f.bias")
        return out
    out["embed"] = _take(tensors, "model.embed_tokens.weight")
    for i in range(config.num_layers):
        p, c = f"model.layers.{i}.", f"layers.{i}."
        out[c + "norm1.weight"] = _take(tensors, p + "input_layernorm.weight")
        out[c + "norm2.weight"] = _take(tensors, p + "post_attention_layernorm.weight")
        out[c + "qkv.weight"] = np.concatenate([_take(tensors, p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        if config.qkv_bias:
            out[c + "qkv.bias"] = np.concatenate([_take(tensors, p + f"self_attn.{x}_proj.bias") for x in "qkv"])
        out[c + "o.weight"] = _take(tensors, p + "self_attn.o_proj.weight")
        out[c + "gate_up.weight"] = np.concatenate([_take(tensors, p + "mlp.gate_proj.weight"), _take(tensors, p + "mlp.up_proj.weight")])
        out[c + "down.weight"] = _take(tensors, p + "mlp.down_proj.weight")
    out["final_norm.weight"] = _take(tensors, "model.norm.weight")
    if not config.tie_embeddings:
        out["lm_head"] = _take(tensors, "lm_head.weight")
    return out


def matrix_names(config: LlmConfig) -> list[str]:
    """The canonical names of the matrices quantization applies to (embedding and output head included)."""
    per_layer = ("qkv", "o", "fc", "proj") if config.family == "gpt2" else ("qkv", "o", "gate_up", "down")
    names = ["embed"] + [f"layers.{i}.{m}.weight" for i in range(config.num_layers) for m in per_layer]
    return names + ([] if config.tie_embeddings else ["lm_head"])


def quantize_matrix(weight: np.ndarray, scheme: QuantScheme) -> tuple[np.ndarray, np.ndarray]:
    """(q, scale) of a [out, in] matrix, group-wise along `in`; q packs two 4-bit values per byte at 4 bits."""
    rows, columns = weight.shape
    group = scheme.group_for(columns)
    grouped = weight.reshape(rows, columns // group, group)
    scale = np.abs(grouped).max(axis=2) / scheme.levels
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.rint(grouped / scale[:, :, None]), -scheme.levels, scheme.levels).reshape(rows, columns)
    if scheme.bits == 8:
        return q.astype(np.int8), scale
    if columns % 2:
        raise EdgepackError(f"int4 needs an even number of inputs per matrix, got {columns}", "use --quantize int8")
    nibbles = (q + 8).astype(np.uint8)
    return (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8), scale


def dequantize_matrix(q: np.ndarray, scale: np.ndarray, scheme: QuantScheme) -> np.ndarray:
    """The fp32 matrix the kernels compute with (the inverse of `quantize_matrix` up to rounding)."""
    if scheme.bits == 8:
        values = q.astype(np.float32)
    else:
        values = np.empty((q.shape[0], q.shape[1] * 2), np.float32)
        values[:, 0::2] = (q & 15).astype(np.float32) - 8
        values[:, 1::2] = (q >> 4).astype(np.float32) - 8
    group = values.shape[1] // scale.shape[1]
    return (values.reshape(values.shape[0], scale.shape[1], group) * scale[:, :, None]).reshape(values.shape)


def quantize_weights(weights: dict[str, np.ndarray], config: LlmConfig, scheme: QuantScheme | None) -> dict[str, np.ndarray]:
    """Replace every matrix by its `.q` and `.scale` (no-op without a scheme)."""
    if scheme is None:
        return dict(weights)
    out = dict(weights)
    for name in matrix_names(config):
        q, scale = quantize_matrix(out.pop(name), scheme)
        out[f"{name}.q"], out[f"{name}.scale"] = q, scale
    return out


def roundtrip(weight: np.ndarray, scheme: QuantScheme) -> np.ndarray:
    """The matrix after quantization and dequantization: what the bundle computes with."""
    return dequantize_matrix(*quantize_matrix(weight, scheme), scheme)


def tile_rows(lanes: int) -> int:
    """Output rows one task of the quantized matmul computes together: 32 (4 AVX2 / 2 AVX-512 / 8 NEON vectors)."""
    return lanes * max(1, 32 // lanes)


def interleave_rows(matrix: np.ndarray, lanes: int, fill) -> np.ndarray:
    """A [rows, columns] array interleaved by `lanes` rows, [blocks, columns, lanes] (row o at [o // lanes, :, o % lanes]),
    the rows padded with `fill` to a multiple of `tile_rows(lanes)`."""
    rows = matrix.shape[0]
    padded = -(-rows // tile_rows(lanes)) * tile_rows(lanes)
    matrix = np.concatenate([matrix, np.full((padded - rows, matrix.shape[1]), fill, matrix.dtype)])
    return np.ascontiguousarray(matrix.reshape(padded // lanes, lanes, -1).transpose(0, 2, 1))


def block_matrix(q: np.ndarray, scale: np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(q, scale) of `quantize_matrix` interleaved by `lanes` output rows: [blocks, stored, lanes] and
    [blocks, groups, lanes]; rows padded to a multiple of `tile_rows(lanes)` with zero weights (scale 1)."""
    zero = 8 | (8 << 4) if q.dtype == np.uint8 else 0
    return interleave_rows(q, lanes, zero), interleave_rows(scale, lanes, 1.0)


def unblock_matrix(q: np.ndarray, scale: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `block_matrix`: (q, scale) of the first `rows` rows in `quantize_matrix`'s layout."""
    return (q.transpose(0, 2, 1).reshape(-1, q.shape[1])[:rows], scale.transpose(0, 2, 1).reshape(-1, scale.shape[1])[:rows])


def block_weights(weights: dict[str, np.ndarray], config: LlmConfig, scheme: QuantScheme | None, lanes: int) -> dict[str, np.ndarray]:
    """Interleave every matrix by `lanes` rows: quantized ones with `block_matrix`, fp32 ones with `interleave_rows`
    (zero rows as padding)."""
    out = dict(weights)
    for name in matrix_names(config):
        if scheme is None:
            out[name] = interleave_rows(out[name], lanes, 0.0)
        else:
            out[f"{name}.q"], out[f"{name}.scale"] = block_matrix(out[f"{name}.q"], out[f"{name}.scale"], lanes)
    return out
