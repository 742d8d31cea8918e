"""Direct vs Winograd per 3x3 stride-1 convolution shape: the kernels of one conv + bias + ReLU + residual add.

    python scripts/winograd_times.py [--target x86_64-v4] [--tiles 2 4 6] [--rounds 3] [--threads 2]

For each ResNet-18 shape (C channels in and out at HxW) a one-block ONNX model is imported as `edgepack build`
imports it (blocked NCHW[x]c), with the direct convolution and with Winograd F(m x m, 3x3) for each tile m; the
convolution's kernels (the direct one, or input transform + GEMM + output transform, epilogue fused) are built once
and timed with time_evaluator (min of 5 repeats), the variants taking turns round after round. Prints a markdown
table of the best round per variant (docs/benchmarks.md, "Winograd").
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))
KERNELS = re.compile(r"conv2d_nchwc|winograd")


def _model(directory: Path, channels: int, size: int):
    import torch
    from torch import nn

    from edgepack.artifacts import OnnxModel
    from edgepack.runtime.bundle_format import TensorSpec

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

        def forward(self, x):
            return torch.relu(self.conv(x)) + x

    path = directory / f"block{channels}x{size}.onnx"
    shape = (1, channels, size, size)
    torch.onnx.export(Block().eval(), (torch.zeros(shape),), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    return OnnxModel.at(path, [TensorSpec("x", "float32", shape)], [TensorSpec("y", "float32", shape)])


def _kernels(model, target, tile: int) -> list:
    """The convolution's scheduled, compiled kernels with random arguments: (compiled, args) per kernel."""
    import numpy as np
    import tvm
    from tvm import tirx

    from edgepack.compiler import schedules, winograd
    from edgepack.compiler.backends.cpu import lower_to_tir
    from edgepack.compiler.compile import import_relax

    lanes = schedules.vector_lanes(target)
    choose = winograd.tile_for
    winograd.tile_for = lambda *shape: tile
    try:
        module, _ = import_relax(model, True, None, lanes, {}, winograd=bool(tile))
    finally:
        winograd.tile_for = choose
    module = lower_to_tir(module, target)
    rng = np.random.default_rng(0)
    kernels = []
    for gvar, func in module.functions.items():
        if not isinstance(func, tirx.PrimFunc) or not KERNELS.search(gvar.name_hint):
            continue
        hand_written = func.attrs is not None and schedules.HAND_WRITTEN in func.attrs  # the input transform
        scheduled = (func if hand_written else schedules.schedule_function(func, lanes)).with_attr("global_symbol", "main")
        with target:
            compiled = tvm.compile(tvm.IRModule({"main": scheduled}), target=target).jit()
        args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in p.shape]).astype(p.dtype)) for p in func.params]
        kernels.append((gvar.name_hint, compiled, args))
    return kernels


def _time_ms(kernels) -> float:
    import tvm

    return sum(min(compiled.time_evaluator("main", tvm.cpu(), number=5, repeat=5, min_repeat_ms=20)(*args).results)
               for _, compiled, args in kernels) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86_64-v4")
    parser.add_argument("--tiles", type=int, nargs="+", default=[4], help="Winograd output tiles m to time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=[f"{c}x{s}" for c, s in SHAPES], help="CxHW, e.g. 64x56")
    options = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(options.threads)
    from edgepack.targets import load_target

    target = load_target(options.target).tvm_target()
    variants = [0, *options.tiles]
    names = {0: "direct", **{m: f"F({m},3)" for m in options.tiles}}
    print(f"| C x HW | GFLOP | {' | '.join(names[v] + ' ms' for v in variants)} | best |")
    print("|---" * (len(variants) + 3) + "|")
    with tempfile.TemporaryDirectory() as work:
        for shape in options.shapes:
            channels, size = (int(v) for v in shape.split("x"))
            model = _model(Path(work), channels, size)
            built = {v: _kernels(model, target, v) for v in variants}
            best = {v: float("inf") for v in variants}
            for round_index in range(options.rounds):
                order = variants if round_index % 2 == 0 else variants[::-1]
                for v in order:
                    best[v] = min(best[v], _time_ms(built[v]))
            gflop = 2 * channels * channels * 9 * size * size / 1e9
            winner = min(variants, key=best.get)
            print(f"| {channels} x {size} | {gflop:.3f} | {' | '.join(f'{best[v]:.3f}' for v in variants)} | "
                  f"{names[winner]} ({best[0] / best[winner]:.2f}x) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
