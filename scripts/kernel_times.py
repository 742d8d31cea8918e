"""Per-kernel times of a bundle's model: each PrimFunc alone, with and without the transformer rules.

    python scripts/kernel_times.py dist/vit_tiny_style-1.0.0-x86_64 [--only REGEX] [--threads 1]

"before" is TVM's own legalization (libm exp/erf) and the heuristic without matmul padding; "after" is the
default (edgepack.compiler.fast_math + edgepack.compiler.transformer_rules). Both are built in one process
and timed with time_evaluator (min of 7 repeats) on the same random inputs; "calls" counts the kernel's call
sites in `main`. Prints a markdown table (docs/benchmarks.md, issue #17).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path


def _lowered(model, target, fast: bool, remove_shuffles: bool = True):
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from edgepack.compiler.backends.cpu import lower_to_tir
    from edgepack.compiler.compile import import_relax
    from edgepack.compiler.schedules import vector_lanes

    module, _ = import_relax(model, True, None, vector_lanes(target), {}, remove_shuffles=remove_shuffles)
    if fast:
        return lower_to_tir(module, target)
    with target:
        return tvm.transform.Sequential(cpu.library_dispatch_passes(target) + cpu.legalize_passes(target))(module)


def _time_ms(func, target, args) -> float:
    import tvm

    with target:
        kernel = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target).jit()
    return min(kernel.time_evaluator("main", tvm.cpu(), number=10, repeat=7, min_repeat_ms=10)(*args).results) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--only", default=".", help="regex on kernel names")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep-shuffles", action="store_true",
                        help="import with the channel shuffles as written (edgepack.compiler.channel_shuffle off)")
    options = parser.parse_args(argv)
    manifest_path = options.bundle / "manifest.json"
    if not manifest_path.is_file():
        print(f"error: {options.bundle} is not a bundle (no manifest.json); pass a directory `edgepack build` wrote",
              file=sys.stderr)
        return 1
    os.environ["TVM_NUM_THREADS"] = str(options.threads)
    import numpy as np
    import tvm
    from tvm import tirx

    from edgepack.artifacts import OnnxModel, TensorSpec
    from edgepack.compiler import schedules
    from edgepack.targets import load_target

    manifest = json.loads(manifest_path.read_text())
    model = OnnxModel.at(options.bundle / "reference" / "model.onnx", [TensorSpec.from_json(e) for e in manifest["inputs"]],
                         [TensorSpec.from_json(e) for e in manifest["outputs"]])
    target = load_target(manifest["target"]["name"]).tvm_target()
    lanes = schedules.vector_lanes(target)
    remove = not options.keep_shuffles
    modules = {"before": _lowered(model, target, False, remove), "after": _lowered(model, target, True, remove)}
    calls: dict[str, int] = {}
    for name in re.findall(r"cls\.(\w+)", modules["after"].script()):
        calls[name] = calls.get(name, 0) + 1
    padding = schedules.pad_matmul_axes
    rng = np.random.default_rng(0)
    totals = {"before": 0.0, "after": 0.0}
    print("| kernel | calls | before ms | after ms | |\n|---|---|---|---|---|")
    for gvar, func in modules["after"].functions.items():
        if not isinstance(func, tirx.PrimFunc) or not re.search(options.only, gvar.name_hint):
            continue
        args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in p.shape]).astype(p.dtype)
                                   if "float" in str(p.dtype) else np.zeros([int(d) for d in p.shape], p.dtype))
                for p in func.params]
        times = {}
        for label in ("before", "after"):
            schedules.pad_matmul_axes = padding if label == "after" else (lambda sch, lanes: [])
            source = modules[label][gvar.name_hint] if label == "after" or any(
                g.name_hint == gvar.name_hint for g in modules[label].functions) else func
            hand_written = source.attrs is not None and schedules.HAND_WRITTEN in source.attrs  # scheduled already
            times[label] = _time_ms(source if hand_written else schedules.schedule_function(source, lanes), target, args)
            totals[label] += times[label] * calls.get(gvar.name_hint, 0)
        schedules.pad_matmul_axes = padding
        print(f"| {gvar.name_hint} | {calls.get(gvar.name_hint, 0)} | {times['before']:.3f} | {times['after']:.3f} "
              f"| {times['before'] / times['after']:.1f}x |", flush=True)
    print(f"| all kernels x calls | | {totals['before']:.1f} | {totals['after']:.1f} | {totals['before'] / totals['after']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
