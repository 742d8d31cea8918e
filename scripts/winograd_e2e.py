"""One model end to end, direct convolutions (main's compile) vs Winograd (the default), with ORT and OpenVINO beside.

    python scripts/winograd_e2e.py [--model resnet18] [--target x86_64-v4] [--runs 100] [--threads 2]

Builds the model twice, untuned (CompileConfig(winograd=False) and the default), then times both bundles and the
other engines in alternating rounds in one process (scripts/bench_suite.py's bench_model); prints its markdown table
and each build's verification error against ONNX Runtime (docs/benchmarks.md, "Winograd").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_suite  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=sorted(bench_suite.MODELS))
    parser.add_argument("--target", default="x86_64-v4")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(options.threads)
    from edgepack.build import build
    from edgepack.compiler.compile import CompileConfig

    path, factory, _ = bench_suite.MODELS[options.model]
    work = Path(tempfile.mkdtemp(prefix="edgepack-winograd-"))
    bundles = {}
    for label, winograd in (("edgepack-direct", False), ("edgepack-winograd", True)):
        started = time.perf_counter()
        result = build(f"{path}:{factory}", options.target, work / label, name=options.model, force=True,
                       compile=CompileConfig(tuning_database=str(work / "no-records"), winograd=winograd))
        manifest = result.bundle.manifest
        layout = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]["conv_layout"]
        print(f"{label}: built in {time.perf_counter() - started:.0f} s, {layout.get('winograd_convs', 0)} Winograd "
              f"convolutions, verification {manifest['verification']['passed']} (max abs err "
              f"{manifest['verification']['max_abs_err']:.1e}, atol {manifest['verification']['atol']})", flush=True)
        bundles[label] = result.bundle.path
    results = {"protocol": {"machine": f"{os.cpu_count()} logical CPUs", "threads": options.threads,
                            "peak_gflops": bench_suite.measured_peak_gflops(options.threads),
                            "timed": "engines take turns in 5 rounds after warm-up (bench_suite.bench_model)"},
               "models": {options.model: bench_suite.bench_model(options.model, bundles, options.threads, 20,
                                                                 options.runs, 5)}}
    print(bench_suite.markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
