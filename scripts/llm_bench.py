"""Language-model bundles: prefill and decode tokens/s of edgepack (fp32, int8, int4) against PyTorch eager
with its KV cache (transformers), same threads, greedy tokens checked, in one run; plus decode speed as a
share of the memory-bandwidth limit (weight bytes read per token ÷ measured copy bandwidth).

    nice -n 10 .venv/bin/python scripts/llm_bench.py [--hidden 512 --layers 4 --vocab 2000] [--json out.json]

The model is a random-weight Llama made with transformers (edgepack.examples.tiny_llm's shape, larger).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_model(directory: Path, hidden: int, layers: int, vocab: int) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                                      num_key_value_heads=max(1, hidden // 128), max_position_embeddings=512, eos_token_id=None)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(directory)
    return directory


def copy_bandwidth_gb_s() -> float:
    """Bytes moved (read + write) per second by a large numpy copy: the machine's practical memory bandwidth."""
    source = np.ones(64 << 20, np.float32)  # 256 MiB
    target = np.empty_like(source)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - start)
    return 2 * source.nbytes / min(times) / 1e9


def time_edgepack(bundle: Path, prompt: list[int], new_tokens: int, runs: int) -> dict:
    import tvm

    from edgepack.runtime.generate import Generator
    from edgepack.runtime.loader import load

    loaded = load(bundle)
    generator = Generator(loaded)
    tokens = generator.generate(prompt, new_tokens)
    prefill, decode = [], []
    for _ in range(runs):
        cache = loaded.call_function("create_cache", with_params=False)
        ids = tvm.runtime.tensor(np.array(prompt, np.int32))
        start = time.perf_counter()
        logits = loaded.call_function("prefill", ids, cache).numpy()
        prefill.append(time.perf_counter() - start)
        token = int(logits[0].argmax())
        start = time.perf_counter()
        for position in range(len(prompt), len(prompt) + new_tokens - 1):
            token = int(loaded.call_function("decode", tvm.runtime.tensor(np.array([token], np.int32)), cache, position).numpy()[0].argmax())
        decode.append(time.perf_counter() - start)
    params = tvm.runtime.load_param_dict((bundle / "params.bin").read_bytes())
    tied = loaded.manifest["generator"]["architecture"]["tie_embeddings"]
    # a decode step reads every weight once, except an untied embedding table, of which it gathers one row
    read = sum(p.numpy().nbytes for name, p in params.items() if tied or not name.startswith("embed"))
    return {"tokens": tokens, "prefill_tok_s": len(prompt) / statistics.median(prefill),
            "decode_tok_s": (new_tokens - 1) / statistics.median(decode),
            "params_bytes": (bundle / "params.bin").stat().st_size, "bytes_read_per_token": read}


def time_torch(model_dir: Path, prompt: list[int], new_tokens: int, runs: int, scheme=None) -> dict:
    import torch

    from edgepack.llm.config import read_config
    from edgepack.llm.golden import load_reference

    model = load_reference(model_dir, read_config(model_dir), scheme)
    prefill, decode, tokens = [], [], []
    with torch.no_grad():
        for _ in range(runs):
            ids = torch.tensor([prompt])
            start = time.perf_counter()
            out = model(ids, use_cache=True)
            prefill.append(time.perf_counter() - start)
            past, token = out.past_key_values, int(out.logits[0, -1].argmax())
            tokens = [token]
            start = time.perf_counter()
            for _ in range(new_tokens - 1):
                out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
                past, token = out.past_key_values, int(out.logits[0, -1].argmax())
                tokens.append(token)
            decode.append(time.perf_counter() - start)
    return {"tokens": tokens, "prefill_tok_s": len(prompt) / statistics.median(prefill),
            "decode_tok_s": (new_tokens - 1) / statistics.median(decode)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    from edgepack.llm.build import plan_llm_build, run_llm_build
    from edgepack.llm.weights import QuantScheme

    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
    os.environ["TVM_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    bandwidth = copy_bandwidth_gb_s()
    prompt = [int(t) for t in np.random.default_rng(0).integers(3, args.vocab, args.prompt)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as work:
        model_dir = make_model(Path(work) / "model", args.hidden, args.layers, args.vocab)
        max_seq = args.prompt + args.new_tokens
        for quantize in (None, "int8", "int4"):
            plan = plan_llm_build(model_dir, "x86_64", Path(work) / "dist", name=f"bench-{quantize or 'fp32'}",
                                  max_seq_len=max_seq, quantize=quantize)
            bundle, _ = run_llm_build(plan)
            ours = time_edgepack(bundle.path, prompt, args.new_tokens, args.runs)
            scheme = {None: None, "int8": QuantScheme(8), "int4": QuantScheme(4)}[quantize]
            theirs = time_torch(model_dir, prompt, args.new_tokens, args.runs, scheme)
            limit = bandwidth * 1e9 / ours["bytes_read_per_token"]  # copy traffic (read + write) per second
            rows.append({"weights": quantize or "fp32", "edgepack": ours, "torch": theirs,
                         "same_greedy_tokens": ours["tokens"] == theirs["tokens"],
                         "decode_vs_torch": ours["decode_tok_s"] / theirs["decode_tok_s"],
                         "prefill_vs_torch": ours["prefill_tok_s"] / theirs["prefill_tok_s"],
                         "bandwidth_limit_tok_s": limit, "bandwidth_share": ours["decode_tok_s"] / limit})
    result = {"model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab}, "prompt": args.prompt,
              "new_tokens": args.new_tokens, "threads": threads, "copy_bandwidth_gb_s": bandwidth,
              "load_average": os.getloadavg(), "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rows": rows}
    print(f"{'weights':8} {'params MB':>9} {'prefill tok/s':>14} {'(torch)':>9} {'decode tok/s':>13} {'(torch)':>9} "
          f"{'decode x':>8} {'bw share':>8} same")
    for row in rows:
        e, t = row["edgepack"], row["torch"]
        print(f"{row['weights']:8} {e['params_bytes'] / 1e6:9.2f} {e['prefill_tok_s']:14.1f} {t['prefill_tok_s']:9.1f} "
              f"{e['decode_tok_s']:13.1f} {t['decode_tok_s']:9.1f} {row['decode_vs_torch']:8.2f} {row['bandwidth_share']:8.1%} "
              f"{row['same_greedy_tokens']}")
    print(f"threads {threads}, copy bandwidth {bandwidth:.1f} GB/s, load average {result['load_average'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
