"""ONNX Runtime as the reference engine and the baseline: one place that creates its sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgepack.errors import EdgepackError, first_line
from edgepack.runtime.bundle_format import TensorSpec


def onnxruntime_session(path: Path, threads: int | None = None, fuse: bool = True):
    """A CPU InferenceSession for `path`, with `threads` intra-op threads when given.

    `fuse=False` runs the graph as written (basic optimizations only): no QDQ → int8-kernel fusion,
    whose u8·s8 kernels saturate on x86 CPUs without VNNI (the reference for quantized bundles)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not fuse:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise EdgepackError(f"ONNX Runtime cannot load '{path}': {first_line(exc)}", "check that the model is valid ONNX") from None


def run_onnxruntime(path: Path, inputs: Sequence[TensorSpec], arrays: Sequence[np.ndarray], with_names: bool = False,
                    fuse: bool = True):
    """Run the model once in ONNX Runtime; returns the outputs (and their names when asked)."""
    session = onnxruntime_session(path, fuse=fuse)
    feed = {spec.name: array for spec, array in zip(inputs, arrays)}
    try:
        outputs = session.run(None, feed)
    except Exception as exc:  # onnxruntime raises its own types
        raise EdgepackError(f"ONNX Runtime fails to run '{path}': {first_line(exc)}", "check the input shapes and dtypes") from None
    outputs = [np.asarray(out) for out in outputs]
    if with_names:
        return [out.name for out in session.get_outputs()], outputs
    return outputs


def run_reference(path: Path, inputs: Sequence[TensorSpec], arrays: Sequence[np.ndarray], fuse: bool = True) -> tuple[list, str]:
    """The reference outputs and the engine that made them: ONNX Runtime where it loads and runs the model,
    else ONNX's own reference implementation (`onnx.reference.ReferenceEvaluator`: very new or very old ops)."""
    try:
        return run_onnxruntime(path, inputs, arrays, fuse=fuse), "onnxruntime"
    except EdgepackError as ort_error:
        import onnx
        from onnx.reference import ReferenceEvaluator

        try:
            outputs = ReferenceEvaluator(onnx.load(str(path))).run(None, {s.name: a for s, a in zip(inputs, arrays)})
        except Exception as exc:  # the reference implementation raises whatever its op code raises
            raise EdgepackError(f"{ort_error.problem}, and ONNX's reference implementation fails too: {first_line(exc)}",
                                "check the input shapes and dtypes") from None
        return [np.asarray(out) for out in outputs], "onnx.reference"
