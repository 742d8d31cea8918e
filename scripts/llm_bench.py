"""Language-model bundles: prefill and decode tokens/s and peak memory of edgepack (fp32, int8, int4) against
PyTorch eager with its KV cache (transformers), llama.cpp (llama-cpp-python, the same weights as GGUF F32 / Q8_0 /
Q4_0) and, at fp32, a plain ONNX Runtime session with past key/values (scripts/llm_onnx.py); same threads, greedy
tokens compared, in one run; plus decode speed as a share of the memory-bandwidth limit (weight bytes read per
token ÷ measured copy bandwidth).

    pip install -e .[llm-bench]   # llama-cpp-python (compiled from its sdist: a llama.cpp build) and gguf
    nice -n 10 .venv/bin/python scripts/llm_bench.py [--hidden 512 --layers 4 --vocab 2000] [--json out.json] \\
        [--no-llama-cpp] [--no-onnxruntime]

The model is a random-weight Llama made with transformers (edgepack.examples.tiny_llm's shape, larger). Each
engine runs in a fresh process of its own, so its peak RSS (VmHWM) is its own: edgepack's loads the TVM
runtime only (TVM_USE_RUNTIME_LIB=1, as on a device), PyTorch's imports torch and transformers, llama.cpp's
llama_cpp, ONNX Runtime's onnxruntime.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def in_child(function, *args) -> dict:
    """`function(*args)` in a fresh (spawned) process; its result with that process's peak RSS in kB (VmHWM: unlike
    ru_maxrss, which Linux carries across fork + exec from the parent, it starts afresh with the new program)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_with_peak_rss, function, *args).result()


def _with_peak_rss(function, *args) -> dict:
    result = function(*args)
    status = Path("/proc/self/status").read_text()
    return {**result, "peak_rss_kb": int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])}


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


def rates(prompt: list[int], new_tokens: int, prefill: list[float], decode: list[float]) -> dict:
    """Tokens/s of the fastest run (the least disturbed on a shared machine) and of the median run."""
    return {"prefill_tok_s": len(prompt) / min(prefill), "decode_tok_s": (new_tokens - 1) / min(decode),
            "decode_tok_s_median": (new_tokens - 1) / statistics.median(decode)}


def best_of(rounds: list[dict]) -> dict:
    """One engine's children, interleaved with its peer's: the fastest round's rates, every round's decode rate."""
    best = dict(rounds[0])
    for key in ("prefill_tok_s", "decode_tok_s", "internal_decode_tok_s"):
        if key in best:
            best[key] = max(r[key] for r in rounds)
    best["decode_tok_s_rounds"] = [r["decode_tok_s"] for r in rounds]
    best["peak_rss_kb"] = max(r["peak_rss_kb"] for r in rounds)
    return best


def time_edgepack(bundle: Path, prompt: list[int], new_tokens: int, runs: int, threads: int) -> dict:
    """edgepack's Python generator path: prefill once, then `decode` token by token (in a child process, as on a
    device: TVM's runtime library only, and no torch, which tvm_ffi would otherwise import when it is installed)."""
    os.environ.update(TVM_USE_RUNTIME_LIB="1", TVM_NUM_THREADS=str(threads))
    sys.meta_path.insert(0, _NoTorch())
    import tvm

    from edgepack.runtime.generate import Generator
    from edgepack.runtime.loader import load

    loaded = load(bundle)
    tokens = Generator(loaded).generate(prompt, new_tokens)
    prefill, decode = [], []
    step = tvm.runtime.empty((1,), "int32")  # decode's input written in place, as the Generator does
    slot = np.from_dlpack(step)
    for _ in range(runs):
        cache = loaded.call_function("create_cache", with_params=False)
        ids = tvm.runtime.tensor(np.array(prompt, np.int32))
        start = time.perf_counter()
        logits = np.from_dlpack(loaded.call_function("prefill", ids, cache))
        prefill.append(time.perf_counter() - start)
        token = int(logits[0].argmax())
        start = time.perf_counter()
        for position in range(len(prompt), len(prompt) + new_tokens - 1):
            slot[0] = token
            token = int(np.from_dlpack(loaded.call_function("decode", step, cache, position))[0].argmax())
        decode.append(time.perf_counter() - start)
    return {"tokens": tokens, **rates(prompt, new_tokens, prefill, decode)}


class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is not installed on the device")
        return None


def profile_decode(bundle: Path, prompt: list[int], steps: int, threads: int) -> dict:
    """Microseconds per decode step spent in each compiled kernel (the VM's instrument hook around every call; the
    VM's own builtins left out), in a child. The hook adds a few microseconds per call: read shares, not sums."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    import collections

    import tvm

    from edgepack.runtime.loader import load

    loaded = load(bundle)
    cache = loaded.call_function("create_cache", with_params=False)
    loaded.call_function("prefill", tvm.runtime.tensor(np.array(prompt, np.int32)), cache)
    totals, started = collections.Counter(), {}

    def instrument(func, symbol, before, ret, *args):
        now = time.perf_counter()
        if before:
            started[symbol] = now
        elif not symbol.startswith("vm.builtin."):
            totals[symbol] += now - started[symbol]
        return 0

    loaded.call_function("decode", tvm.runtime.tensor(np.array([1], np.int32)), cache, len(prompt))  # warm: thread pool
    loaded._vm.set_instrument(instrument)
    for position in range(len(prompt) + 1, len(prompt) + 1 + steps):
        loaded.call_function("decode", tvm.runtime.tensor(np.array([1], np.int32)), cache, position)
    return {"kernels_us": {name: 1e6 * seconds / steps for name, seconds in totals.most_common()}}


def native_generate_rss(bundle: Path, prompt: list[int], new_tokens: int, threads: int) -> dict:
    """The device's native path, `runtime/edgepack-run generate`, once under GNU time: its tokens and peak RSS."""
    with tempfile.NamedTemporaryFile(suffix=".rss") as rss:
        result = subprocess.run(["/usr/bin/time", "-o", rss.name, "-f", "%M", str(bundle / "runtime" / "edgepack-run"), "generate",
                                 "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", str(new_tokens)],
                                capture_output=True, text=True, env={"TVM_NUM_THREADS": str(threads)}, check=True)
        return {"tokens": [int(t) for t in result.stdout.split()], "peak_rss_kb": int(Path(rss.name).read_text().split()[-1])}


def bytes_read_per_token(bundle: Path, tied: bool) -> int:
    """Weight bytes one decode step reads: every weight once, except an untied embedding table (one row gathered)."""
    import tvm

    params = tvm.runtime.load_param_dict((bundle / "params.bin").read_bytes())
    return sum(p.numpy().nbytes for name, p in params.items() if tied or not name.startswith("embed"))


def time_torch(model_dir: Path, prompt: list[int], new_tokens: int, runs: int, threads: int, bits: int | None) -> dict:
    """PyTorch eager with transformers' KV cache, weights quantized-then-dequantized like the bundle's (in a child)."""
    import torch

    from edgepack.llm.config import read_config
    from edgepack.llm.golden import load_reference
    from edgepack.llm.weights import QuantScheme

    torch.set_num_threads(threads)
    model = load_reference(model_dir, read_config(model_dir), QuantScheme(bits) if bits else None)
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
    return {"tokens": tokens, **rates(prompt, new_tokens, prefill, decode)}


def time_llama_cpp(gguf: Path, prompt: list[int], new_tokens: int, runs: int, threads: int, max_seq: int) -> dict:
    """llama.cpp through llama-cpp-python: the prompt as one batch, then one token per `eval`; fp32 KV cache like
    edgepack's; greedy argmax of the last position's logits (in a child)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=max_seq, n_batch=len(prompt), n_threads=threads, n_threads_batch=threads,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
    vocab = llm.n_vocab()

    def argmax_last() -> int:
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,)).argmax())

    prefill, decode, tokens = [], [], []
    for _ in range(runs):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefill.append(time.perf_counter() - start)
        tokens = [argmax_last()]
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([tokens[-1]])
            tokens.append(argmax_last())
        decode.append(time.perf_counter() - start)
    perf = llama_cpp.llama_perf_context(llm.ctx)  # llama.cpp's own clock, all runs: without the Python binding's overhead
    return {"tokens": tokens, **rates(prompt, new_tokens, prefill, decode), "gguf_bytes": gguf.stat().st_size,
            "internal_decode_tok_s": 1e3 * perf.n_eval / perf.t_eval_ms, "version": llama_cpp.__version__}


def time_onnxruntime(onnx_path: Path, prompt: list[int], new_tokens: int, runs: int, threads: int, cache_shape: tuple) -> dict:
    """A plain ONNX Runtime session over the exported graph with past key/values (fp32), present fed back as past
    each step; greedy argmax (in a child)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    empty = np.zeros(cache_shape, np.float32)
    prefill, decode, tokens = [], [], []
    for _ in range(runs):
        start = time.perf_counter()
        logits, key, value = session.run(None, {"input_ids": np.array([prompt], np.int64), "past_key": empty, "past_value": empty})
        prefill.append(time.perf_counter() - start)
        tokens = [int(logits[0].argmax())]
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            logits, key, value = session.run(None, {"input_ids": np.array([[tokens[-1]]], np.int64), "past_key": key, "past_value": value})
            tokens.append(int(logits[0].argmax()))
        decode.append(time.perf_counter() - start)
    return {"tokens": tokens, **rates(prompt, new_tokens, prefill, decode), "onnx_bytes": onnx_path.stat().st_size,
            "version": ort.__version__}


def same_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two greedy continuations share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5, help="generations per engine process (the fastest counts)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per engine, edgepack and llama.cpp alternating")
    parser.add_argument("--target", default="x86_64", help="edgepack's target (x86_64-v4: AVX-512, as llama.cpp's native build)")
    parser.add_argument("--weights", default="fp32,int8,int4", help="comma-separated rows: fp32, int8, int4")
    parser.add_argument("--fp32-activations", action="store_true",
                        help="quantized rows: decode keeps fp32 activations (no int8 dot products on AVX512-VNNI targets)")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp (llama-cpp-python not installed)")
    parser.add_argument("--no-onnxruntime", action="store_true", help="skip ONNX Runtime (fp32 only)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from edgepack.llm.build import plan_llm_build, run_llm_build
    from edgepack.llm.config import read_config
    from llm_gguf import write_gguf

    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
    bandwidth = copy_bandwidth_gb_s()
    prompt = [int(t) for t in np.random.default_rng(0).integers(3, args.vocab, args.prompt)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as work:
        model_dir = make_model(Path(work) / "model", args.hidden, args.layers, args.vocab)
        config = read_config(model_dir)
        max_seq = args.prompt + args.new_tokens
        for bits in [{"fp32": None, "int8": 8, "int4": 4}[name] for name in args.weights.split(",")]:
            weights = f"int{bits}" if bits else "fp32"
            plan = plan_llm_build(model_dir, args.target, Path(work) / "dist", name=f"bench-{weights}",
                                  max_seq_len=max_seq, quantize=weights if bits else None, int8_activations=not args.fp32_activations)
            bundle, _ = run_llm_build(plan)
            gguf = None if args.no_llama_cpp else write_gguf(model_dir, config, Path(work) / f"model-{weights}.gguf", bits)
            ours_rounds, cpp_rounds = [], []
            for _ in range(args.rounds):  # edgepack and llama.cpp alternate, so a busy spell of the machine hits both
                ours_rounds.append(in_child(time_edgepack, bundle.path, prompt, args.new_tokens, args.runs, threads))
                if gguf is not None:
                    cpp_rounds.append(in_child(time_llama_cpp, gguf, prompt, args.new_tokens, args.runs, threads, max_seq))
            ours = best_of(ours_rounds)
            ours.update(native=native_generate_rss(bundle.path, prompt, args.new_tokens, threads),
                        params_bytes=(bundle.path / "params.bin").stat().st_size, bytes_read_per_token=bytes_read_per_token(bundle.path, config.tie_embeddings))
            ours["profile"] = in_child(profile_decode, bundle.path, prompt, 8, threads)["kernels_us"]
            theirs = in_child(time_torch, model_dir, prompt, args.new_tokens, args.runs, threads, bits)
            limit = bandwidth * 1e9 / ours["bytes_read_per_token"]  # copy traffic (read + write) per second
            row = {"weights": weights, "decode_activations": bundle.manifest["generator"].get("decode_activations", "float32"),
                   "edgepack": ours, "torch": theirs,
                   "same_greedy_tokens": ours["tokens"] == theirs["tokens"],
                   "decode_vs_torch": ours["decode_tok_s"] / theirs["decode_tok_s"],
                   "prefill_vs_torch": ours["prefill_tok_s"] / theirs["prefill_tok_s"],
                   "bandwidth_limit_tok_s": limit, "bandwidth_share": ours["decode_tok_s"] / limit}
            if gguf is not None:
                cpp = best_of(cpp_rounds)
                row.update(llama_cpp=cpp, llama_cpp_same_prefix=same_prefix(ours["tokens"], cpp["tokens"]),
                           decode_vs_llama_cpp=ours["decode_tok_s"] / cpp["decode_tok_s"],
                           prefill_vs_llama_cpp=ours["prefill_tok_s"] / cpp["prefill_tok_s"])
            if bits is None and not args.no_onnxruntime:
                from llm_onnx import export_kv_onnx

                onnx_path = export_kv_onnx(model_dir, config, Path(work) / "model-kv.onnx")
                cache_shape = (config.num_layers, config.num_kv_heads, 0, config.head_dim)
                ort_row = in_child(time_onnxruntime, onnx_path, prompt, args.new_tokens, args.runs, threads, cache_shape)
                row.update(onnxruntime=ort_row, onnxruntime_same_prefix=same_prefix(ours["tokens"], ort_row["tokens"]),
                           decode_vs_onnxruntime=ours["decode_tok_s"] / ort_row["decode_tok_s"],
                           prefill_vs_onnxruntime=ours["prefill_tok_s"] / ort_row["prefill_tok_s"])
            rows.append(row)
    result = {"target": args.target, "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab}, "prompt": args.prompt,
              "new_tokens": args.new_tokens, "runs": args.runs, "rounds": args.rounds, "rates": "fastest run", "threads": threads, "copy_bandwidth_gb_s": bandwidth,
              "load_average": os.getloadavg(), "rows": rows}
    print(f"{'weights':8} {'params MB':>9} {'prefill tok/s':>14} {'(torch)':>9} {'decode tok/s':>13} {'(torch)':>9} "
          f"{'decode x':>8} {'bw share':>8} {'RSS MB':>7} same")
    for row in rows:
        e, t = row["edgepack"], row["torch"]
        print(f"{row['weights']:8} {e['params_bytes'] / 1e6:9.2f} {e['prefill_tok_s']:14.1f} {t['prefill_tok_s']:9.1f} "
              f"{e['decode_tok_s']:13.1f} {t['decode_tok_s']:9.1f} {row['decode_vs_torch']:8.2f} {row['bandwidth_share']:8.1%} "
              f"{e['peak_rss_kb'] / 1024:7.0f} {row['same_greedy_tokens']}")
        if "llama_cpp" in row:
            c = row["llama_cpp"]
            print(f"  llama.cpp {c['gguf_bytes'] / 1e6:7.2f} MB: prefill {c['prefill_tok_s']:.1f} tok/s, decode "
                  f"{c['decode_tok_s']:.1f} tok/s, RSS {c['peak_rss_kb'] / 1024:.0f} MB; edgepack decode "
                  f"{row['decode_vs_llama_cpp']:.2f}x, prefill {row['prefill_vs_llama_cpp']:.2f}x; "
                  f"same first {row['llama_cpp_same_prefix']}/{args.new_tokens} tokens")
        if "onnxruntime" in row:
            o = row["onnxruntime"]
            print(f"  ONNX Runtime {o['onnx_bytes'] / 1e6:5.2f} MB: prefill {o['prefill_tok_s']:.1f} tok/s, decode "
                  f"{o['decode_tok_s']:.1f} tok/s, RSS {o['peak_rss_kb'] / 1024:.0f} MB; edgepack decode "
                  f"{row['decode_vs_onnxruntime']:.2f}x, prefill {row['prefill_vs_onnxruntime']:.2f}x; "
                  f"same first {row['onnxruntime_same_prefix']}/{args.new_tokens} tokens")
    print(f"threads {threads}, copy bandwidth {bandwidth:.1f} GB/s, load average {result['load_average'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
