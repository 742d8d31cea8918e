"""Benchmark suite: ONNX Runtime, OpenVINO, PyTorch and edgepack (untuned default, tuned) on the same inputs.

    python scripts/bench_suite.py --quick                       # CI: MLP + digits, untuned, few runs
    python scripts/bench_suite.py --tune-trials 1000            # full: five models, tuned too
    python scripts/bench_suite.py --tune-minutes 20 mlp=3       # tuned for 20 minutes per model (MLP: 3)
    python scripts/bench_suite.py --models resnet18 --json-out r.json --markdown-out r.md

Protocol (printed with the results): every engine runs at the same thread count (TVM_NUM_THREADS,
ORT intra-op threads, OpenVINO INFERENCE_NUM_THREADS, torch.set_num_threads); inputs already in memory; warm-up, then rounds in which
the engines take turns, so drift hits all alike; median and p90 of single calls; every engine's
output is checked against ONNX Runtime's. FLOPs are counted on the PyTorch model (2 per multiply-add);
the peak is a measured large fp32 matrix product (torch, same threads), not a datasheet number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# torch's OpenMP workers busy-wait after each call and would steal the cores from the engine timed next
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "edgepack" / "examples"
MODELS = {  # name: (factory file, factory, in the quick set)
    "mlp": (EXAMPLES / "bench_models.py", "mlp", True),
    "digits_cnn": (EXAMPLES / "digits.py", "digits_cnn", True),
    "resnet18": (EXAMPLES / "resnet.py", "resnet18_style", False),
    "mobilenet_v2": (EXAMPLES / "bench_models.py", "mobilenet_v2_style", False),
    "transformer": (EXAMPLES / "bench_models.py", "transformer_encoder", False),
    "shufflenet_v2": (EXAMPLES / "bench_models.py", "shufflenet_v2_style", False),
    "efficientnet_b0": (EXAMPLES / "bench_models.py", "efficientnet_b0_style", False),
    "convnext": (EXAMPLES / "bench_models.py", "convnext_style", False),
    "vit": (EXAMPLES / "bench_models.py", "vit_tiny_style", False),
    "bert": (EXAMPLES / "bench_models.py", "bert_style", False),
}


def measured_peak_gflops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048 ** 3 / best / 1e9


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def flops_of(module, example) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        module(*example)
    return int(counter.get_total_flops())


def build_bundles(name: str, out: Path, tune_trials: int, database: Path, tune_minutes: float | None = None,
                  targets: tuple[str, ...] = ("x86_64",)) -> tuple[dict[str, Path], dict]:
    """The untuned bundle per target (`edgepack-untuned` for x86_64, `edgepack-untuned-<target>` for the others) and,
    with a tuning budget, the tuned x86_64 one; plus the tuning stage's report."""
    from edgepack.build import build
    from edgepack.compiler.compile import CompileConfig
    from edgepack.compiler.tune import TuneConfig

    path, factory, _ = MODELS[name]
    spec = f"{path}:{factory}"
    bundles, tuning = {}, {}
    for target in targets:
        started = time.perf_counter()
        label = "edgepack-untuned" if target == "x86_64" else f"edgepack-untuned-{target}"
        result = build(spec, target, out / label, name=name, force=True,
                       compile=CompileConfig(tuning_database=str(out / "no-records")))
        bundles[label] = result.bundle.path
        print(f"  built {label} in {time.perf_counter() - started:.0f} s", flush=True)
    if tune_trials or tune_minutes:
        started = time.perf_counter()
        result = build(spec, "x86_64", out / "tuned", name=name, force=True,
                       tune=TuneConfig(trials=tune_trials or 100_000, database=database, max_minutes=tune_minutes))
        bundles["edgepack-tuned"] = result.bundle.path
        manifest = json.loads((result.bundle.path / "manifest.json").read_text())
        tuning = next(s["report"] for s in manifest["provenance"]["stages"] if s["stage"] == "tune")
        print(f"  tuned ({tuning.get('trials')} trials, {tuning.get('seconds')} s) and built in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return bundles, tuning


def bench_model(name: str, bundles: dict[str, Path], threads: int, warmup: int, runs: int, rounds: int) -> dict:
    import torch

    from edgepack.frontends.export import load_torch_model
    from edgepack.measure.openvino_engine import openvino_runner
    from edgepack.measure.reference import onnxruntime_session
    from edgepack.bench import timed_rounds
    from edgepack.runtime import loader
    from edgepack.runtime.loader import timing_summary
    from edgepack.frontends.sources import parse_source

    path, factory, _ = MODELS[name]
    first = loader.load(next(iter(bundles.values())))
    arrays = first.golden_cases()[0][0]
    names = [spec.name for spec in first.inputs]
    session = onnxruntime_session(first.path / "reference" / "model.onnx", threads)
    openvino = openvino_runner(first.path / "reference" / "model.onnx", threads)
    torch_model = load_torch_model(parse_source(f"{path}:{factory}"), {s.name: s for s in first.inputs}).module
    torch.set_num_threads(threads)
    tensors = [torch.from_numpy(a) for a in arrays]

    def run_torch():
        with torch.no_grad():
            return torch_model(*tensors)

    engines = {"onnxruntime": (lambda: session.run(None, dict(zip(names, arrays))), None),
               "openvino": (lambda: openvino(arrays), None),
               "torch": (run_torch, None)}
    for label, bundle_dir in bundles.items():
        bundle = loader.load(bundle_dir)
        device = bundle.to_device(arrays)
        engines[label] = (lambda b=bundle, d=device: b.invoke(d), bundle)
    reference = [np.asarray(x) for x in engines["onnxruntime"][0]()]
    checks = {}
    for label, (call, bundle) in engines.items():
        got = call()
        if label == "torch":
            got = [got] if isinstance(got, torch.Tensor) else list(got)
            got = [g.detach().numpy() for g in got]
        elif bundle is not None:
            got = [g.numpy() for g in got]
        checks[label] = float(max(np.max(np.abs(np.asarray(g) - r)) for g, r in zip(got, reference)))
    times = timed_rounds({label: call for label, (call, _) in engines.items()}, warmup, max(runs // rounds, 1), rounds)
    with torch.no_grad():
        flops = flops_of(torch_model, tensors)
    rows = {}
    baseline = float(np.median(times["onnxruntime"]))
    openvino_median = float(np.median(times["openvino"]))
    for label, samples in times.items():
        summary = timing_summary(samples)
        rows[label] = {"median_ms": summary["median_ms"], "p90_ms": summary["p90_ms"],
                       "vs_onnxruntime": summary["median_ms"] / baseline,
                       "vs_openvino": summary["median_ms"] / openvino_median,
                       "gflops": flops / (summary["median_ms"] / 1000.0) / 1e9,
                       "max_abs_diff_vs_onnxruntime": checks[label]}
    return {"flops": flops, "engines": rows, "inputs": {n: list(a.shape) for n, a in zip(names, arrays)}}


def _tuning_summary(name: str, tuning: dict) -> str:
    text = f"{name} {tuning['trials']} trials over {tuning['kernels']} kernels in {tuning['seconds'] / 60:.1f} min"
    if tuning.get("stopped_by_time_budget"):
        text += " (time budget)"
    if tuning.get("skipped"):
        text += f", {len(tuning['skipped'])} kernels not searchable"
    return text


def markdown(results: dict) -> str:
    protocol = results["protocol"]
    lines = [f"Machine: {protocol['machine']}; {protocol['threads']} threads for every engine; measured fp32 peak "
             f"(torch sgemm 2048³) {protocol['peak_gflops']:.1f} GFLOP/s. {protocol['timed']}", "",
             "| model | GFLOP | engine | median ms | p90 ms | vs ORT | vs OpenVINO | GFLOP/s | % of peak | max abs diff vs ORT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, model in results["models"].items():
        for label, row in model["engines"].items():
            lines.append(f"| {name} | {model['flops'] / 1e9:.3f} | {label} | {row['median_ms']:.3f} | {row['p90_ms']:.3f} | "
                         f"{row['vs_onnxruntime']:.2f}x | {row['vs_openvino']:.2f}x | {row['gflops']:.1f} | {100 * row['gflops'] / protocol['peak_gflops']:.0f}% | "
                         f"{row['max_abs_diff_vs_onnxruntime']:.1e} |")
    tuned = [(name, model["tuning"]) for name, model in results["models"].items() if model.get("tuning")]
    if tuned:
        lines += ["", "Tuning per model: " + "; ".join(_tuning_summary(name, t) for name, t in tuned) + "."]
    return "\n".join(lines) + "\n"


def tune_minutes(entries: list[str], parser: argparse.ArgumentParser) -> dict[str, float]:
    """`["20", "mlp=3"]` -> `{"*": 20.0, "mlp": 3.0}`."""
    minutes = {}
    for entry in entries:
        name, _, value = entry.rpartition("=")
        if name and name not in MODELS:
            parser.error(f"--tune-minutes: unknown model '{name}' (one of {', '.join(MODELS)})")
        try:
            minutes[name or "*"] = float(value)
        except ValueError:
            parser.error(f"--tune-minutes: '{entry}' is not MINUTES or MODEL=MINUTES")
    return minutes


def check_targets(names: list[str], parser: argparse.ArgumentParser) -> None:
    """Every --targets entry must be a target whose bundles run on this machine (they are timed here)."""
    from edgepack.errors import EdgepackError
    from edgepack.targets import load_target

    for name in names:
        try:
            target = load_target(name)
        except EdgepackError as exc:
            parser.error(f"--targets: {exc.problem}; {exc.fix}")
        if not target.runs_on_this_machine():
            parser.error(f"--targets: bundles for '{name}' cannot run on this machine ({target.arch}, "
                         f"{', '.join(target.cpu_features) or 'no extra CPU features'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MLP + digits CNN, untuned, few runs (CI)")
    parser.add_argument("--models", nargs="*", choices=sorted(MODELS), help="default: all (quick: the quick set)")
    parser.add_argument("--tune-trials", type=int, default=0, help="also build a tuned bundle per model (0: skip)")
    parser.add_argument("--tune-minutes", nargs="+", default=None, metavar="MIN|MODEL=MIN",
                        help="tuning time budget per model, e.g. `20 mlp=3` (alone: trials unbounded; "
                             "with --tune-trials: whichever ends first)")
    parser.add_argument("--database", type=Path, help="tuning database (default: a fresh one under --work)")
    parser.add_argument("--targets", nargs="+", default=["x86_64"], metavar="TARGET",
                        help="x86_64 targets to build untuned bundles for, timed side by side (e.g. x86_64 x86_64-v4)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=None, help="timed calls per engine (default 200, quick 20)")
    parser.add_argument("--work", type=Path, default=None, help="where bundles are built (default: a temp dir)")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--markdown-out", type=Path, default=None)
    args = parser.parse_args(argv)
    from edgepack.bench import SETTLE_S, TURN_WARMUP
    minutes = tune_minutes(args.tune_minutes or [], parser)
    check_targets(args.targets, parser)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    names = args.models or [n for n, (_, _, quick) in MODELS.items() if quick or not args.quick]
    runs = args.runs or (20 if args.quick else 200)
    work = args.work or Path(tempfile.mkdtemp(prefix="edgepack-bench-"))
    database = args.database or work / "tuning"
    results = {"protocol": {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical CPUs".strip(),
        "threads": args.threads, "runs": runs, "rounds": 5, "warmup": 5 if args.quick else 20,
        "peak_gflops": measured_peak_gflops(args.threads), "tune_trials": args.tune_trials, "tune_minutes": minutes,
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "timed": "OMP_WAIT_POLICY=PASSIVE (torch's pool does not spin between calls). One call on inputs already in memory (edgepack: TVM tensors; ORT/torch: numpy/torch); "
                 f"engines take turns in 5 rounds after warm-up, each turn after a {SETTLE_S} s pause and {TURN_WARMUP} untimed calls "
                 "(the previous engine's spinning threads would otherwise share the cores); median and p90.",
    }, "models": {}}
    print(f"peak {results['protocol']['peak_gflops']:.1f} GFLOP/s, threads {args.threads}", flush=True)
    for name in names:
        print(f"{name}:", flush=True)
        bundles, tuning = build_bundles(name, work / name, 0 if args.quick else args.tune_trials, database,
                                        None if args.quick else minutes.get(name, minutes.get("*")), tuple(args.targets))
        results["models"][name] = bench_model(name, bundles, args.threads, results["protocol"]["warmup"], runs, 5)
        if tuning:
            results["models"][name]["tuning"] = {key: tuning.get(key) for key in
                                                 ("kernels", "trials", "seconds", "stopped_by_time_budget", "skipped")}
        for label, row in results["models"][name]["engines"].items():
            print(f"  {label:18s} {row['median_ms']:9.3f} ms  {row['vs_onnxruntime']:6.2f}x ORT  {row['vs_openvino']:6.2f}x OV  "
                  f"{row['gflops']:6.1f} GFLOP/s  diff {row['max_abs_diff_vs_onnxruntime']:.1e}", flush=True)
    text = markdown(results)
    print(text)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown_out:
        args.markdown_out.write_text(text)
    bad = [f"{m}/{e}" for m, r in results["models"].items() for e, row in r["engines"].items()
           if row["max_abs_diff_vs_onnxruntime"] > 1e-2]
    if bad:
        print(f"outputs differ from ONNX Runtime: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
