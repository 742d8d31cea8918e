"""Batch-1 latency of a dynamic-batch bundle against a static one (docs/dynamic-shapes.md).

Builds each model twice through the real CLI: static (`--input x:1x...`) and dynamic
(`--input x:Bx... --dim B=1..64`), then times both at batch 1 with `edgepack bench`'s protocol
(Python loader, median, engines alternating in rounds) and prints one JSON line per model.
Usage: python scripts/bench_dynamic.py [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EDGEPACK = Path(sys.executable).with_name("edgepack")


def mlp(path: Path) -> tuple[str, str]:
    """x[N,256] -> 512 -> ReLU -> 512 -> ReLU -> 10."""
    rng = np.random.default_rng(0)
    sizes = [256, 512, 512, 10]
    nodes, weights, current = [], [], "x"
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        weights += [numpy_helper.from_array((rng.standard_normal((fan_in, fan_out)) / fan_in ** 0.5).astype(np.float32), f"w{index}"),
                    numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{index}")]
        nodes += [helper.make_node("MatMul", [current, f"w{index}"], [f"m{index}"]),
                  helper.make_node("Add", [f"m{index}", f"b{index}"], [f"a{index}"])]
        current = f"a{index}"
        if index < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{index}"]))
            current = f"r{index}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return "x:1x256:float32", "x:Bx256:float32"


def cnn(path: Path) -> tuple[str, str]:
    """x[N,3,32,32] -> Conv 3->16 3x3 -> ReLU -> Conv 16->32 3x3 stride 2 -> ReLU -> GlobalAveragePool -> Flatten -> MatMul 32x10."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
               for name, shape in (("c1", (16, 3, 3, 3)), ("c2", (32, 16, 3, 3)), ("fc", (32, 10)))]
    nodes = [helper.make_node("Conv", ["x", "c1"], ["h1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Conv", ["r1", "c2"], ["h2"], pads=[1, 1, 1, 1], strides=[2, 2]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return "x:1x3x32x32:float32", "x:Bx3x32x32:float32"


def build(model: Path, out: Path, *options: str) -> Path:
    subprocess.run([str(EDGEPACK), "build", str(model), "-o", str(out), *options], check=True, capture_output=True, text=True)
    return next(out.glob("*/manifest.json")).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    from edgepack.bench import BenchConfig, bench_bundle

    with tempfile.TemporaryDirectory(prefix="bench-dynamic-") as work:
        work = Path(work)
        for name, make in (("mlp-256-512-512-10", mlp), ("cnn-3x32x32", cnn)):
            static_spec, dynamic_spec = make(work / f"{name}.onnx")
            static = build(work / f"{name}.onnx", work / f"{name}-static", "--input", static_spec)
            dynamic = build(work / f"{name}.onnx", work / f"{name}-dynamic", "--input", dynamic_spec, "--dim", "B=1..64")
            x = np.random.default_rng(1).standard_normal(tuple(int(d) for d in static_spec.split(":")[1].split("x"))).astype(np.float32)
            config = BenchConfig(warmup=20, runs=args.runs, rounds=5)
            medians = {}
            for _ in range(2):  # alternate the two bundles twice; keep the better median of each
                for label, bundle in (("static", static), ("dynamic", dynamic)):
                    row = bench_bundle(bundle, config, [x])["engines"]["edgepack"]
                    medians[label] = min(medians.get(label, float("inf")), row["median_ms"])
            sizes = {label: (bundle / "model.so").stat().st_size for label, bundle in (("static", static), ("dynamic", dynamic))}
            print(json.dumps({"model": name, "batch": 1, "static_median_ms": round(medians["static"], 4),
                              "dynamic_median_ms": round(medians["dynamic"], 4),
                              "dynamic_over_static": round(medians["dynamic"] / medians["static"], 3),
                              "model_so_bytes": sizes, "threads": config.threads}), flush=True)


if __name__ == "__main__":
    main()
