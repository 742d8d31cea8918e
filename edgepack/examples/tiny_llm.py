"""A tiny decoder-only language model with random weights and a byte-level BPE tokenizer, written the way
transformers saves one (config.json, model.safetensors, tokenizer.json): `edgepack build` takes the directory.

    python -m edgepack.examples.tiny_llm tiny-llama [--family llama|qwen2|gpt2] [--vocab 300]
"""

from __future__ import annotations

import argparse
from pathlib import Path

TEXT = ("the quick brown fox jumps over the lazy dog. a small model runs on a small device. "
        "edge devices generate text one token at a time, reading every weight for each token. ") * 4
EOS = "<|endoftext|>"


def train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer of `vocab_size` tokens (256 bytes, EOS, merges) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([TEXT], trainer)
    return tokenizer


def make_tiny_llm(directory: Path, family: str = "llama", vocab_size: int = 300, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a random-weight model of `family` and its tokenizer into `directory`; returns it."""
    import torch
    import transformers

    tokenizer = train_tokenizer(vocab_size)
    vocab = tokenizer.get_vocab_size()
    eos = tokenizer.token_to_id(EOS)
    torch.manual_seed(seed)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=256,
                                         bos_token_id=eos, eos_token_id=eos)
        model = transformers.GPT2LMHeadModel(config)
    else:
        kind = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[family]
        config = kind[0](vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=eos,
                         eos_token_id=eos, tie_word_embeddings=family == "qwen2")
        model = kind[1](config)
    directory = Path(directory)
    model.eval().save_pretrained(directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--family", choices=["llama", "qwen2", "gpt2"], default="llama")
    parser.add_argument("--vocab", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    print(make_tiny_llm(args.directory, args.family, args.vocab, args.hidden, args.layers))


if __name__ == "__main__":
    main()
