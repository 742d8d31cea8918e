"""int8 vs fp32 latency of edgepack builds: fp32, QDQ as dequantize-then-float, QDQ as integer ops.

    .venv/bin/python scripts/int8_bench.py [--models digits,resnet_small,mlp,mlp16] [--target x86_64] [--runs 50]
        [--activations int8|uint8] [--json out.json]

Each model is exported from PyTorch, quantized with ONNX Runtime's quantize_static (QDQ, per-channel
symmetric int8 weights), compiled with edgepack.compiler.compile.compile_model and timed in-process through the
TVM runtime (median of rounds, all cores). For a target of another architecture it only compiles and
reports the integer-op counts: timing under emulation says nothing about the device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _export(name: str, directory: Path) -> tuple[Path, np.ndarray]:
    """The model as fp32 ONNX and a calibration batch source (digits images or seeded noise)."""
    import torch

    if name == "digits":
        from edgepack.examples.digits import digits_cnn, digits_split

        model, samples = digits_cnn(), digits_split()[0][:64]
    elif name == "resnet_small":
        from edgepack.examples.resnet import resnet_small

        model = resnet_small()
        samples = np.random.RandomState(0).rand(16, *model.example_inputs[0].shape[1:]).astype(np.float32)
    elif name in ("mlp", "mlp16"):  # 784-512-256-10 fully connected, batch 1 or 16: the int8 matmul kernels alone
        from edgepack.examples.bench_models import mlp

        model = mlp()
        if name == "mlp16":
            model.example_inputs = (torch.zeros(16, 784),)
        samples = np.random.RandomState(0).rand(4, *model.example_inputs[0].shape).astype(np.float32)  # whole batches
    else:
        raise SystemExit(f"unknown model {name}: digits, resnet_small, mlp, mlp16")
    path = directory / f"{name}.onnx"
    torch.onnx.export(model, model.example_inputs, str(path), input_names=["x"], output_names=["y"], dynamo=False,
                      opset_version=17)
    return path, samples


def quantize_qdq(fp32: Path, out: Path, samples: np.ndarray, activations: str) -> Path:
    """ONNX Runtime quantize_static, QDQ format, per-channel int8 weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    import onnx

    rank = len(onnx.load(str(fp32)).graph.input[0].type.tensor_type.shape.dim)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": sample if sample.ndim == rank else sample[None]} for sample in samples])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8,
                    activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8)
    return out


def compile_variant(onnx_path: Path, target_name: str, integer_ops: bool, workdir: Path) -> tuple[dict, object]:
    """Compile one variant; returns its report row and a zero-argument runner (None for a foreign target)."""
    from edgepack.compiler.compile import CompileConfig, compile_model
    from edgepack.frontends.preflight import preflight
    from edgepack.targets import load_target

    target = load_target(target_name)
    workdir.mkdir(parents=True, exist_ok=True)
    model, _ = preflight(onnx_path, {}, workdir)
    started = time.perf_counter()
    compiled, record = compile_model(model, target, workdir, CompileConfig(integer_ops=integer_ops))
    integer = record.report["integer_ops"]
    row = {"compile_s": round(time.perf_counter() - started, 1), "integer_ops": integer["integer"],
           "float_ops": integer["float"], "warnings": record.report.get("warnings", []),
           "params_bytes": record.report["params_bytes"]}
    return row, (_tvm_runner(compiled, model) if target.runs_on_this_machine() else None)


def _tvm_runner(compiled, model):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(compiled.library)), tvm.cpu())
    data = compiled.params.read_bytes()
    if compiled.params.suffix == ".sparse":  # written by edgepack.bundle.sparse_params when zeros make it smaller
        from edgepack.bundle.sparse_params import decode

        data = decode(data)
    loaded = tvm.runtime.load_param_dict(data)
    params = [loaded[name] for name in compiled.param_names]
    inputs = [tvm.runtime.tensor(np.random.RandomState(1).rand(*spec.shape).astype(spec.dtype)) for spec in model.inputs]
    vm.set_input("main", *inputs, *params)
    return lambda: vm.invoke_stateful("main")


def _ort_runner(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ["TVM_NUM_THREADS"])
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    feed = {spec.name: np.random.RandomState(1).rand(*spec.shape).astype(np.float32)}
    return lambda: session.run(None, feed)


def time_interleaved(runners: dict, runs: int, rounds: int = 5) -> dict:
    """Median ms per runner; runners alternate round by round so load changes hit all of them alike."""
    samples = {name: [] for name in runners}
    for run in runners.values():
        for _ in range(3):
            run()
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(max(runs // rounds, 1)):
                started = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - started)
    return {name: round(float(np.median(values)) * 1000, 3) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet_small")
    parser.add_argument("--target", default="x86_64")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--activations", default="int8", choices=["int8", "uint8"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for name in args.models.split(","):
            fp32, samples = _export(name, root)
            qdq = quantize_qdq(fp32, root / f"{name}.qdq.onnx", samples, args.activations)
            row, runners = {}, {}
            for variant, path, integer_ops in (("fp32", fp32, True), ("qdq_float", qdq, False), ("qdq_integer", qdq, True)):
                row[variant], runner = compile_variant(path, args.target, integer_ops, root / name / variant)
                if runner is not None:
                    runners[f"edgepack_{variant}"] = runner
            if runners:
                runners["onnxruntime_fp32"], runners["onnxruntime_qdq"] = _ort_runner(fp32), _ort_runner(qdq)
                row["median_ms"] = time_interleaved(runners, args.runs)
                row["load_average"] = os.getloadavg()[0]
            results[name] = row
            print(json.dumps({name: row}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
