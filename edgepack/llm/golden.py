"""Golden vectors of a language model bundle, from the original model in PyTorch (transformers):
the logits of every position of a fixed prompt, and its greedy continuation token by token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError, first_line
from edgepack.llm.config import LlmConfig
from edgepack.llm.weights import QuantScheme, roundtrip

PROMPT_LENGTH = 8
NEW_TOKENS = 8


@dataclass(frozen=True)
class LlmGolden:
    """A fixed prompt, the reference logits of its positions and the reference greedy continuation."""

    prompt_ids: np.ndarray  # int32 [n]
    logits: np.ndarray  # float32 [n, vocab]
    tokens: tuple[int, ...]  # greedy continuation, ending at the first EOS if one comes


def golden_prompt(config: LlmConfig, max_seq_len: int) -> np.ndarray:
    """A reproducible prompt of token ids that are not end-of-sequence."""
    length = max(1, min(PROMPT_LENGTH, max_seq_len // 2))
    allowed = np.array([t for t in range(config.vocab_size) if t not in config.eos_token_ids], np.int32)
    return np.random.default_rng(0).choice(allowed, size=length).astype(np.int32)


def load_reference(model_dir: Path, config: LlmConfig, scheme: QuantScheme | None):
    """The transformers model, its matrices replaced by their quantized-then-dequantized values under `scheme`
    (so the reference computes with exactly the weights the bundle holds)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    except Exception as exc:  # transformers raises many types for a directory it cannot load
        raise EdgepackError(f"transformers cannot load '{model_dir}': {first_line(exc)}",
                            "pass a directory written by save_pretrained") from None
    if scheme is not None:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.ndim != 2 or "wpe" in name:
                    continue
                conv1d = config.family == "gpt2" and "wte" not in name  # GPT-2's Conv1D keeps [in, out]
                matrix = parameter.detach().numpy().T if conv1d else parameter.detach().numpy()
                matrix = roundtrip(np.ascontiguousarray(matrix), scheme)
                parameter.copy_(torch.from_numpy(np.ascontiguousarray(matrix.T if conv1d else matrix)))
    return model


def make_llm_golden(model_dir: Path, config: LlmConfig, scheme: QuantScheme | None, max_seq_len: int) -> LlmGolden:
    """Run the reference on the golden prompt: all-position logits, then greedy tokens until EOS or the budget."""
    import torch

    model = load_reference(model_dir, config, scheme)
    prompt = golden_prompt(config, max_seq_len)
    budget = max(0, min(NEW_TOKENS, max_seq_len - len(prompt)))
    sequence = [int(t) for t in prompt]
    tokens: list[int] = []
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0].float().numpy()
        step = logits[-1]
        for _ in range(budget):
            token = int(np.argmax(step))
            tokens.append(token)
            if token in config.eos_token_ids or len(tokens) == budget:
                break
            sequence.append(token)
            step = model(torch.tensor([sequence])).logits[0, -1].float().numpy()
    return LlmGolden(prompt, logits.astype(np.float32), tuple(tokens))
