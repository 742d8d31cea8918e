"""OpenVINO as a comparison engine for `edgepack bench --compare openvino` and the benchmark suite.

The `bench` extra installs it (scripts/setup.sh does); fp32 inference on the CPU plugin with a fixed thread
count, one stream and the latency hint, so it is timed under the same conditions as the other engines. Threads are
not pinned to cores (as with ONNX Runtime's defaults): on a shared machine a pinned thread waits for its core
(an MLP measured 0.21 ms pinned, 0.14 ms not, back to back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgepack.errors import EdgepackError, first_line


def openvino_runner(path: Path, threads: int) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
    """A callable that runs the ONNX model at `path` in OpenVINO's CPU plugin and returns its outputs."""
    try:
        import openvino
    except ImportError:
        raise EdgepackError("OpenVINO is not installed", "pip install 'edgepack[bench]' (scripts/setup.sh does)") from None
    core = openvino.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}
    try:
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        raise EdgepackError(f"OpenVINO cannot compile '{path}': {first_line(exc)}",
                            "compare with onnxruntime only, or report the model to OpenVINO") from None
    request = compiled.create_infer_request()
    outputs = len(compiled.outputs)

    def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        request.infer(list(arrays), share_inputs=True)
        return [request.get_output_tensor(index).data for index in range(outputs)]

    return run
