"""The decode weight-matmul kernels alone (one row of input): fp32 as edgepack builds it now (rows interleaved by
vector lanes, `kernels.fp32_linear_function`) and before (a tensor expression, heuristic schedule), int8/int4 as edgepack
builds them now (weights interleaved by vector lanes, `kernels.quantized_linear_function`) and as it built them
before (a tensor expression dequantizing one scalar weight at a time inside the reduction, heuristic schedule),
on the matrix shapes of scripts/llm_bench.py's model. CPU time of one thread (TVM_NUM_THREADS=1), best of 5:
on a shared machine CPU time is disturbed far less than wall time. On a target with AVX512-VNNI also the
integer kernels decode uses there (`llm.dot_kernels`: the row quantized to int8, then `vpdpbusd`), both kernels
timed together ("int8 dot", "int4 dot").

    TVM_NUM_THREADS=1 .venv/bin/python scripts/llm_kernel_bench.py [--target x86_64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

# (name, inputs, outputs) of the decode matmuls of llm_bench's Llama (hidden 512, 8/4 heads, MLP 1408, vocab 2000)
SHAPES = [("qkv", 512, 1024), ("o", 512, 512), ("gate_up", 512, 2816), ("down", 1408, 512), ("head", 512, 2000)]


def scalar_dequantize_linear(x, q, scale, scheme, out_features: int):
    """The previous int8/int4 kernel: y[i, o] = Σ_k x[i, k] · dequantize(q[o, k]) over [out, in(/2)] weights."""
    from tvm import te, tirx as tir

    rows, columns = x.shape
    group = scheme.group_for(int(columns))
    if scheme.bits == 4:
        b = te.reduce_axis((0, int(columns) // 2), name="b")

        def pair(i, o, b):
            byte = q[o, b]
            low = tir.bitwise_and(byte, tir.const(15, "uint8")).astype("float32") - 8.0
            high = tir.shift_right(byte, tir.const(4, "uint8")).astype("float32") - 8.0
            return (x[i, 2 * b] * low + x[i, 2 * b + 1] * high) * scale[o, 2 * b // group]

        return te.compute((rows, out_features), lambda i, o: te.sum(pair(i, o, b), axis=b), name="linear")
    k = te.reduce_axis((0, columns), name="k")
    return te.compute((rows, out_features), lambda i, o: te.sum(x[i, k] * q[o, k].astype("float32") * scale[o, k // group], axis=k),
                      name="linear")


def cpu_microseconds(function, args, calls: int = 100) -> float:
    """Best of 5 batches: CPU seconds of this process per call, in microseconds."""
    for _ in range(5):
        function(*args)
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(calls):
            function(*args)
        best = min(best, (time.process_time() - start) / calls)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86_64")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import tvm
    from tvm import te

    from edgepack.compiler.schedules import schedule_function, vector_lanes
    from edgepack.llm.kernels import fp32_linear_function, linear, quantized_linear_function
    from edgepack.llm.weights import QuantScheme, block_matrix, dequantize_matrix, interleave_rows, quantize_matrix
    from edgepack.targets import load_target

    from edgepack.compiler.int8_dot import dot_feature
    from edgepack.llm.dot_kernels import integer_linear_function, quantize_rows_function, unsupported

    spec = load_target(args.target)
    target = spec.tvm_target()
    lanes = vector_lanes(target)
    dot = unsupported(512, QuantScheme(4, 32), lanes, dot_feature(spec)) is None

    def build(function):
        return tvm.compile(function.with_attr("global_symbol", "main"), target=target)

    rng = np.random.default_rng(0)
    rows = []
    for name, columns, out in SHAPES:
        weight = rng.standard_normal((out, columns)).astype(np.float32)
        x_np = rng.standard_normal((1, columns)).astype(np.float32)
        x, y = te.placeholder((1, columns), name="x"), tvm.runtime.tensor(np.zeros((1, out), np.float32))
        w = te.placeholder((out, columns), name="w")
        row = {"matrix": name, "in": columns, "out": out, "fp32_us": cpu_microseconds(
            build(schedule_function(te.create_prim_func([x, w, linear(x, w, out)]), lanes)),
            [tvm.runtime.tensor(x_np), tvm.runtime.tensor(weight), y])}
        row["fp32_now_us"] = cpu_microseconds(build(fp32_linear_function(columns, out, lanes)),
                                              [tvm.runtime.tensor(x_np), tvm.runtime.tensor(interleave_rows(weight, lanes, 0.0)), y])
        np.testing.assert_allclose(y.numpy(), x_np @ weight.T, rtol=1e-4, atol=1e-3)
        for bits in (8, 4):
            scheme = QuantScheme(bits, 32)
            q, scale = quantize_matrix(weight, scheme)
            expected = x_np @ dequantize_matrix(q, scale, scheme).T
            qp, sp = te.placeholder(q.shape, name="q", dtype=str(q.dtype)), te.placeholder(scale.shape, name="scale")
            before = build(schedule_function(te.create_prim_func([x, qp, sp, scalar_dequantize_linear(x, qp, sp, scheme, out)]), lanes))
            row[f"int{bits}_before_us"] = cpu_microseconds(before, [tvm.runtime.tensor(x_np), tvm.runtime.tensor(q), tvm.runtime.tensor(scale), y])
            blocked = [tvm.runtime.tensor(a) for a in block_matrix(q, scale, lanes)]
            now = build(quantized_linear_function(columns, out, scheme, lanes))
            row[f"int{bits}_us"] = cpu_microseconds(now, [tvm.runtime.tensor(x_np), *blocked, y])
            np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-3)
            if dot:
                groups = columns // scheme.group_for(columns)
                quantized = [tvm.runtime.tensor(np.zeros(shape, dtype)) for shape, dtype in
                             (((1, columns), np.int8), ((1, groups), np.float32), ((1, groups), np.int32))]
                quantizer = build(quantize_rows_function(1, columns, scheme))
                integer = build(integer_linear_function(1, columns, out, scheme))

                def both(x, q, scale, y):
                    quantizer(x, *quantized)
                    integer(*quantized, q, scale, y)

                row[f"int{bits}_dot_us"] = cpu_microseconds(both, [tvm.runtime.tensor(x_np), *blocked, y])
                error = np.abs(y.numpy() - expected).max() / np.abs(expected).max()  # activation quantization's
                assert error < 0.05, error
                row[f"int{bits}_dot_error"] = float(error)
        rows.append(row)
    keys = ["fp32_us", "fp32_now_us", "int8_before_us", "int8_us", "int4_before_us", "int4_us"] + (["int8_dot_us", "int4_dot_us"] if dot else [])
    print(f"{'matrix':8} {'in x out':>10} " + " ".join(f"{key.removesuffix('_us'):>11}" for key in keys))
    for r in rows:
        print(f"{r['matrix']:8} {r['in']:>4} x {r['out']:<4} " + " ".join(f"{r[key]:11.0f}" for key in keys))
    totals = {key: sum(r[key] for r in rows) for key in keys}
    print("sum      " + " ".join(f"{key} {value:.0f}" for key, value in totals.items()))
    print(f"target {args.target} ({lanes} lanes), threads {os.environ.get('TVM_NUM_THREADS', 'all')}, load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"target": args.target, "lanes": lanes, "rows": rows, "totals": totals,
                                         "load_average": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
