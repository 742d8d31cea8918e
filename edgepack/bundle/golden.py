"""Golden vectors: inputs and ONNX Runtime's outputs for them, shipped in the bundle with a tolerance."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.artifacts import OnnxModel
from edgepack.errors import EdgepackError, first_line
from edgepack.measure.reference import run_reference
from edgepack.runtime.bundle_format import check_inputs, from_bits, to_bits, to_container
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
    data: str = ""  # where user inputs came from: the --golden-inputs file, evaluation or calibration data


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
        stacks = [from_bits(archive[spec.name], spec.dtype) for spec in model.inputs]  # bfloat16: raw uint16 bits
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


def cases_from_samples(stacks, specs, count: int) -> list[list[np.ndarray]]:
    """Up to `count` cases of the model's input shapes from samples stacked on axis 0 without the batch axis.

    A dynamic signature gets its cases at the smallest and largest sizes (golden_sizes), all of them or
    none (then the caller falls back to random inputs)."""
    dynamic = any(spec.dynamic for spec in specs)
    cases, start = [], 0
    for sizes in golden_sizes(specs, count):
        shapes = [spec.at(sizes).shape for spec in specs]
        batch = shapes[0][0] if shapes[0] else 1
        fits = all(tuple(stack.shape[1:]) == tuple(shape[1:]) and int(np.prod(shape)) == batch * int(np.prod(stack.shape[1:]))
                   for stack, shape in zip(stacks, shapes))
        if not fits or start + batch > len(stacks[0]):
            return [] if dynamic else cases
        cases.append([np.ascontiguousarray(stack[start:start + batch].reshape(shape), dtype=spec.dtype)
                      for spec, stack, shape in zip(specs, stacks, shapes)])
        start += batch
    return cases


def samples_needed(specs, count: int) -> int:
    """How many samples cases_from_samples takes for `count` cases."""
    return sum((spec.at(sizes).shape[:1] or (1,))[0] for sizes in golden_sizes(specs, count) for spec in specs[:1]) or count


def golden_sizes(specs, cases: int) -> list[dict[str, int]]:
    """Sizes of the named axes per golden case: the smallest and the largest of every range (then the
    smallest again, up to `cases`); [{}] * cases for a static signature."""
    ranges = {d: b for spec in specs for d, b in zip(spec.dims, spec.bounds) if d is not None}
    if not ranges:
        return [{}] * cases
    ends = [{d: b[0] for d, b in ranges.items()}, {d: b[1] for d, b in ranges.items()}]
    return [ends[index % 2] for index in range(max(cases, 2))]


def make_golden(model: OnnxModel, config: GoldenConfig, input_cases: list[list[np.ndarray]] | None = None,
                data: str = "") -> GoldenVectors:
    """Run ONNX Runtime on the given cases (or reproducible random ones) to make the references."""
    origin = "user" if input_cases else "random"
    if not input_cases:
        input_cases = [random_inputs([spec.at(sizes) for spec in model.inputs], config.seed + index)
                       for index, sizes in enumerate(golden_sizes(model.inputs, config.cases))]
    # the pre-flighted model takes and returns float8, int4... in their containers (frontends/low_precision.py)
    runs = [run_reference(model.path, model.inputs, [to_container(np.asarray(a)) for a in case], fuse=not config.unfused)
            for case in input_cases]
    runs = [([from_bits(out, spec.dtype) for out, spec in zip(outputs, model.outputs)] + outputs[len(model.outputs):], engine)
            for outputs, engine in runs]
    engines = sorted({engine for _, engine in runs})
    return GoldenVectors(tuple(tuple(case) for case in input_cases), tuple(tuple(outputs) for outputs, _ in runs),
                         config.tolerance, config.rtol, origin, "+".join(engines), data if input_cases else "")


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
                np.save(bundle_dir / rel, to_bits(np.asarray(array, order="C")))  # 0-d stays 0-d; bfloat16: raw bits
                entry[f"{kind}s"].append(rel)
        cases.append(entry)
    entry = {"atol": golden.atol, "rtol": golden.rtol, "origin": golden.origin, "reference": golden.reference, "cases": cases}
    if golden.data:
        entry["data"] = golden.data
    return entry
