"""Pre-flight of an ONNX model: load, check, fix shapes, and report ops before compiling."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.artifacts import OnnxModel, StageRecord
from edgepack.errors import EdgepackError, first_line
from edgepack.runtime.bundle_format import TensorSpec
from edgepack.frontends.signature import check_tensor_size, numpy_dtype

_ALWAYS_SUPPORTED = {"Constant", "If"}  # handled by the TVM frontend outside its converter map


@dataclass(frozen=True)
class PreflightReport:
    """What the pre-flight found: opset, op counts and the ops TVM cannot import."""

    opset: int
    op_counts: dict[str, int]
    unsupported: tuple[str, ...]

    def to_json(self) -> dict:
        return {"opset": self.opset, "op_counts": self.op_counts, "unsupported": list(self.unsupported)}


def load_onnx(path: Path):
    """Read an ONNX file, with one-line errors for missing, foreign or truncated files."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise EdgepackError(f"model file '{path}' does not exist", "check the path")
    try:
        model = onnx.load(str(path))
    except onnx.checker.ValidationError as exc:
        raise EdgepackError(f"cannot read '{path}': {first_line(exc)}",
                            "keep the model's external data file next to it, or save the model as one file") from None
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise EdgepackError(f"'{path}' is not a readable ONNX model ({type(exc).__name__})",
                            "export the model to ONNX again; the file may be truncated or of another format") from None
    if not model.graph.node:
        raise EdgepackError(f"'{path}' holds no ONNX graph (is it an ONNX file?)",
                            "pass a .onnx model, a .pt2 program or file.py:factory")
    return model


def _graph_inputs(model) -> list:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def fix_input_shapes(model, overrides: dict[str, TensorSpec]) -> list[TensorSpec]:
    """Give every graph input a static shape (from `overrides` where given) and return the specs."""
    inputs = _graph_inputs(model)
    names = [value.name for value in inputs]
    for name in overrides:
        if name not in names:
            raise EdgepackError(f"--input names '{name}', which the model does not have", f"model inputs: {', '.join(names)}")
    specs = []
    for value in inputs:
        tensor_type = value.type.tensor_type
        dtype = numpy_dtype(tensor_type.elem_type, f"input '{value.name}'")
        dims = tensor_type.shape.dim
        if value.name in overrides:
            spec = overrides[value.name]
            if spec.dtype != dtype:
                raise EdgepackError(f"--input '{value.name}' says {spec.dtype}, the model says {dtype}", f"use :{dtype}")
            if len(spec.shape) != len(dims):
                raise EdgepackError(f"--input '{value.name}' has rank {len(spec.shape)}, the model's input has rank {len(dims)}",
                                    "give one dimension per axis")
            for axis, (dim, want) in enumerate(zip(dims, spec.shape)):
                if dim.HasField("dim_value") and dim.dim_value != want:
                    raise EdgepackError(f"--input '{value.name}' dim {axis} is {want}, the model fixes it to {dim.dim_value}",
                                        "use the model's size for that axis")
                dim.Clear()
                dim.dim_value = want
        else:
            dynamic = [axis for axis, dim in enumerate(dims) if not dim.HasField("dim_value") or dim.dim_value < 1]
            if dynamic:
                raise EdgepackError(f"input '{value.name}' has dynamic dimension(s) at axis {', '.join(map(str, dynamic))}",
                                    f"fix them with --input {value.name}:<d0>x<d1>...:{dtype}")
        specs.append(TensorSpec(value.name, dtype, tuple(dim.dim_value for dim in dims)))
    return specs


def _all_op_types(graph) -> list[tuple[str, str]]:
    ops = []
    for node in graph.node:
        ops.append((node.domain or "ai.onnx", node.op_type))
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                ops.extend(_all_op_types(subgraph))
    return ops


def op_report(model) -> PreflightReport:
    """Count the model's ops and list those the TVM ONNX frontend cannot import."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = set(_get_convert_map()) | _ALWAYS_SUPPORTED
    ops = _all_op_types(model.graph)
    counts = Counter(op for _, op in ops)
    unsupported = sorted({op if domain == "ai.onnx" else f"{domain}.{op}"
                          for domain, op in ops if op not in supported or domain not in ("ai.onnx", "")})
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    return PreflightReport(opset, dict(sorted(counts.items())), tuple(unsupported))


def output_specs(path: Path, inputs: list[TensorSpec]) -> list[TensorSpec]:
    """Output names, dtypes and shapes, read by running the model once in ONNX Runtime."""
    from edgepack.measure.reference import run_onnxruntime

    arrays = [np.zeros(spec.shape, spec.dtype) for spec in inputs]
    names, outputs = run_onnxruntime(path, inputs, arrays, with_names=True)
    return [TensorSpec(name, str(array.dtype), tuple(array.shape)) for name, array in zip(names, outputs)]


def preflight(path: Path, overrides: dict[str, TensorSpec], workdir: Path) -> tuple[OnnxModel, StageRecord]:
    """Check an ONNX file, fix its input shapes, refuse unsupported ops; writes workdir/model.onnx."""
    import onnx

    model = load_onnx(path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise EdgepackError(f"'{path}' fails the ONNX checker: {first_line(exc)}", "re-export the model with a current exporter") from None
    inputs = fix_input_shapes(model, overrides)
    for spec in inputs:  # before anything is allocated for them
        check_tensor_size(spec)
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError and others; all mean an inconsistent graph
        raise EdgepackError(f"shape inference fails on '{path}': {first_line(exc)}", "check the --input shapes against the model") from None
    report = op_report(model)
    if report.unsupported:
        raise EdgepackError(f"TVM's ONNX frontend does not support these ops: {', '.join(report.unsupported)}",
                            "replace them in the model (or export with another opset) before building")
    static_path = Path(workdir) / "model.onnx"
    onnx.save(model, str(static_path))
    outputs = output_specs(static_path, inputs)
    record = StageRecord("preflight", {"input_overrides": {n: s.to_json() for n, s in overrides.items()}}, report.to_json())
    return OnnxModel.at(static_path, inputs, outputs), record
