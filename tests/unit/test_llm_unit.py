"""Language models without TVM builds: config reading, group-wise quantization, the stdlib tokenizer, sampling."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgepack.errors import EdgepackError


def test_config_refuses_unknown_families_and_rope_scaling(tmp_path):
    from edgepack.llm.config import read_config

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(EdgepackError, match="model_type 'bert'.*llama, qwen2, gpt2"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2,
                                                      "num_hidden_layers": 1, "vocab_size": 10, "intermediate_size": 4,
                                                      "rope_scaling": {"rope_type": "yarn"}}))
    with pytest.raises(EdgepackError, match="rope scaling 'yarn'"):
        read_config(tmp_path)


@pytest.mark.parametrize("bits", [8, 4])
def test_group_wise_quantization_is_within_half_a_step(bits):
    from edgepack.llm.weights import QuantScheme, dequantize_matrix, quantize_matrix

    scheme = QuantScheme(bits, 16)
    weight = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    q, scale = quantize_matrix(weight, scheme)
    assert q.dtype == (np.int8 if bits == 8 else np.uint8) and q.shape == (6, 64 if bits == 8 else 32) and scale.shape == (6, 4)
    error = np.abs(dequantize_matrix(q, scale, scheme) - weight).reshape(6, 4, 16)
    assert (error <= scale[:, :, None] / 2 + 1e-7).all()


def test_stdlib_byte_level_bpe_matches_tokenizers():
    from tokenizers import Tokenizer

    from edgepack.examples.tiny_llm import train_tokenizer
    from edgepack.runtime.generate import ByteLevelBpe

    tokenizer = train_tokenizer(300)
    fallback = ByteLevelBpe(json.loads(tokenizer.to_str()))
    for text in ["the quick brown fox", "Edge devices, 12 tokens!  a time.", "naïve café"]:
        ids = Tokenizer.from_str(tokenizer.to_str()).encode(text).ids
        assert fallback.encode(text) == ids
        assert fallback.decode(ids) == text


def test_top_p_keeps_the_most_likely_tokens():
    from edgepack.runtime.generate import pick_token

    logits = np.array([0.0, 5.0, 4.9, -3.0], np.float32)
    rng = np.random.default_rng(0)
    assert pick_token(logits, 0.0, 1.0, rng) == 1
    assert {pick_token(logits, 1.0, 0.5, rng) for _ in range(50)} == {1}
    assert {pick_token(logits, 1.0, 0.9, rng) for _ in range(200)} == {1, 2}


def test_build_refuses_a_cache_longer_than_the_model_allows(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 1, "vocab_size": 10, "n_positions": 16}))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", str(tmp_path / "m"), "-o", str(tmp_path / "out"),
                             "--max-seq-len", "64"], capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == ["error: --max-seq-len 64 is outside 2..16 (the model's max_position_embeddings); "
                                                  "pass a value up to 16"]
    assert not (tmp_path / "out").exists()


def test_build_refuses_options_that_do_not_apply_to_language_models(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    result = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", str(tmp_path / "m"), "-o", str(tmp_path / "out"),
                             "--tune", "4"], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: --tune do(es) not apply to language-model builds")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,target,expected", [
    ([], "x86_64-vnni", "decode:  int8 activations x int4 weights, integer dot products (vpdpbusd)"),
    (["--fp32-activations"], "x86_64-vnni", "decode:  fp32 activations x int4 weights unpacked to fp32"),
    ([], "x86_64", "decode:  fp32 activations x int4 weights unpacked to fp32"),  # no avx512_vnni in its cpu_features
])
def test_dry_run_says_how_decode_computes(tmp_path, flag, target, expected):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 1, "vocab_size": 10, "n_positions": 16}))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", str(tmp_path / "m"), "-o", str(tmp_path / "out"),
                             "--target", target, "--quantize", "int4", "--max-seq-len", "8", "--dry-run", *flag],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout.splitlines()
    assert not (tmp_path / "out").exists()
