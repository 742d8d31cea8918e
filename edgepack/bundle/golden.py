"""Golden vectors: inputs and ONNX Runtime's outputs for them, shipped in the bundle with a tolerance."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.artifacts import OnnxModel
from edgepack.errors import EdgepackError, first_line
from edgepack.measure.reference import run_reference
from edgepack.runtime.bundle_format import check_inputs
from edgepack.frontends.signature import random_inputs


@dataclass(frozen=True)
class GoldenConfig:
    """How many random cases to make (when no inputs are given) and the tolerance to hold."""

    cases: int = 3
    atol: float = 1e-4
    rtol: float = 1e-3
    seed: int = 0
    # quantized builds (set by the quantize stage): TVM runs QDQ as dequantize-then-float, so outputs may
    # differ from ONNX Runtime's by rounding; the bundle's atol is `atol + step * steps`, with `step` the
    # output's quantization step, and the references come from the graph as written (no int8 fusions)
    step: float = 0.0
    steps: float = 0.0
    unfused: bool = False

    @property
    def tolerance(self) -> float:
        """The absolute tolerance the bundle holds: `atol + step * steps`."""
        return self.atol + self.step * self.steps


@dataclass(frozen=True)
class GoldenVectors:
    """Inputs and reference outputs, case by case, with the tolerance they are checked with."""

    inputs: tuple[tuple[np.ndarray, ...], ...]
    outputs: tuple[tuple[np.ndarray, ...], ...]
    atol: float
    rtol: float
    origin: str
    reference: str = "onnxruntime"  # the engine of the reference outputs: onnxruntime, or onnx.reference where ORT cannot run the model


def load_input_cases(path: Path, model: OnnxModel) -> list[list[np.ndarray]]:
    """Cases from an .npz holding one array per input name, stacked along a leading case axis."""
    fix = "pass an .npz saved with numpy.savez (numeric arrays, no objects)"
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise EdgepackError(f"golden inputs '{path}' hold one array, not an .npz of arrays named after the inputs", fix)
        missing = [spec.name for spec in model.inputs if spec.name not in archive.files]
        if missing:
            raise EdgepackError(f"'{path}' lacks arrays for input(s) {', '.join(missing)}", "save one array per input name")
        stacks = [archive[spec.name] for spec in model.inputs]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError) as exc:  # object arrays: ValueError on access
        raise EdgepackError(f"cannot read golden inputs '{path}' ({first_line(exc)})", fix) from None
    if any(stack.ndim == 0 for stack in stacks):
        raise EdgepackError(f"'{path}' holds a scalar where a stack of examples belongs", "stack at least one example per input along axis 0")
    count = min(len(stack) for stack in stacks)
    cases = [[stack[index] for stack in stacks] for index in range(count)]
    for case in cases:
        check_inputs(model.inputs, case)
    if not cases:
        raise EdgepackError(f"'{path}' holds no cases", "stack at least one example per input along axis 0")
    return cases


def make_golden(model: OnnxModel, config: GoldenConfig, input_cases: list[list[np.ndarray]] | None = None) -> GoldenVectors:
    """Run ONNX Runtime on the given cases (or reproducible random ones) to make the references."""
    origin = "user" if input_cases else "random"
    if not input_cases:
        input_cases = [random_inputs(model.inputs, config.seed + index) for index in range(config.cases)]
    runs = [run_reference(model.path, model.inputs, case, fuse=not config.unfused) for case in input_cases]
    engines = sorted({engine for _, engine in runs})
    return GoldenVectors(tuple(tuple(case) for case in input_cases), tuple(tuple(outputs) for outputs, _ in runs),
                         config.tolerance, config.rtol, origin, "+".join(engines))


def write_golden(golden: GoldenVectors, bundle_dir: Path) -> dict:
    """Save the vectors as golden/<case>/{input,output}_<i>.npy; returns the manifest's `golden` entry."""
    cases = []
    for index, (inputs, outputs) in enumerate(zip(golden.inputs, golden.outputs)):
        case_dir = bundle_dir / "golden" / str(index)
        case_dir.mkdir(parents=True)
        entry = {"inputs": [], "outputs": []}
        for kind, arrays in (("input", inputs), ("output", outputs)):
            for position, array in enumerate(arrays):
                rel = f"golden/{index}/{kind}_{position}.npy"
                np.save(bundle_dir / rel, np.asarray(array, order="C"))  # 0-d stays 0-d
                entry[f"{kind}s"].append(rel)
        cases.append(entry)
    return {"atol": golden.atol, "rtol": golden.rtol, "origin": golden.origin, "reference": golden.reference, "cases": cases}
