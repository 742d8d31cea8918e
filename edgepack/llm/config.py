"""Read a Hugging Face `config.json` of a Llama, Qwen2 or GPT-2 model into one frozen description."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from edgepack.errors import EdgepackError

FAMILIES = {"llama": "llama", "qwen2": "qwen2", "gpt2": "gpt2"}  # config model_type → family


@dataclass(frozen=True)
class LlmConfig:
    """The architecture numbers a decoder-only model is built from."""

    family: str  # llama | qwen2 | gpt2
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm: str  # rms | layer
    norm_eps: float
    activation: str  # silu (gated MLP) | gelu_tanh (GPT-2 MLP)
    rope_theta: float | None  # None: learned position embeddings (GPT-2)
    max_position: int
    tie_embeddings: bool
    qkv_bias: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    def to_json(self) -> dict:
        return asdict(self)


def _int(raw: dict, *keys: str, default=None):
    for key in keys:
        if raw.get(key) is not None:
            return raw[key]
    if default is None:
        raise EdgepackError(f"config.json lacks '{keys[0]}'", "pass a complete transformers config.json")
    return default


def _eos(raw: dict) -> tuple[int, ...]:
    eos = raw.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(int(token) for token in (eos if isinstance(eos, list) else [eos]))


def read_config(model_dir: Path) -> LlmConfig:
    """Parse `model_dir/config.json`; refuses families and settings this compiler does not build."""
    path = Path(model_dir) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgepackError(f"'{model_dir}' has no config.json", "pass a directory written by transformers' save_pretrained") from None
    except (OSError, ValueError) as exc:
        raise EdgepackError(f"cannot read '{path}': {exc}", "pass a valid transformers config.json") from None
    model_type = raw.get("model_type")
    if model_type not in FAMILIES:
        raise EdgepackError(f"model_type '{model_type}' is not a supported language model family",
                            f"use one of: {', '.join(FAMILIES)}")
    family = FAMILIES[model_type]
    if family == "gpt2":
        hidden = _int(raw, "n_embd", "hidden_size")
        heads = _int(raw, "n_head", "num_attention_heads")
        return LlmConfig(family, _int(raw, "vocab_size"), hidden, _int(raw, "n_layer", "num_hidden_layers"), heads, heads,
                         hidden // heads, _int(raw, "n_inner", default=4 * hidden), "layer",
                         float(_int(raw, "layer_norm_epsilon", default=1e-5)), "gelu_tanh", None,
                         _int(raw, "n_positions", "max_position_embeddings"), True, True,
                         raw.get("bos_token_id"), _eos(raw))
    activation = raw.get("hidden_act", "silu")
    if activation != "silu":
        raise EdgepackError(f"hidden_act '{activation}' is not supported for {family}", "use silu (the family's default)")
    scaling = raw.get("rope_scaling") or (raw.get("rope_parameters") or {})
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise EdgepackError(f"rope scaling '{scaling.get('rope_type', scaling.get('type'))}' is not supported",
                            "use plain rotary embeddings (rope_type default)")
    theta = raw.get("rope_theta") or (raw.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    hidden = _int(raw, "hidden_size")
    heads = _int(raw, "num_attention_heads")
    kv_heads = _int(raw, "num_key_value_heads", default=heads)
    head_dim = raw.get("head_dim") or hidden // heads
    if heads % kv_heads:
        raise EdgepackError(f"{heads} attention heads are not a multiple of {kv_heads} key/value heads", "fix config.json")
    return LlmConfig(family, _int(raw, "vocab_size"), hidden, _int(raw, "num_hidden_layers"), heads, kv_heads, head_dim,
                     _int(raw, "intermediate_size"), "rms", float(_int(raw, "rms_norm_eps", default=1e-6)), "silu",
                     float(theta), _int(raw, "max_position_embeddings", default=2048),
                     bool(raw.get("tie_word_embeddings", False)),
                     bool(raw.get("attention_bias", family == "qwen2")), raw.get("bos_token_id"), _eos(raw))
