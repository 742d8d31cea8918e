"""Stage: PyTorch → ONNX, checked against PyTorch on the same random inputs."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepack.artifacts import StageRecord
from edgepack.errors import EdgepackError, first_line
from edgepack.measure.reference import run_onnxruntime
from edgepack.runtime.bundle_format import TensorSpec, compare
from edgepack.frontends.signature import random_inputs
from edgepack.frontends.sources import ExportedProgramSource, FactorySource, call_factory


@dataclass(frozen=True)
class ExportConfig:
    """How to export and how closely ONNX Runtime must match PyTorch afterwards."""

    opset: int | None = None
    check_cases: int = 2
    atol: float = 1e-4
    rtol: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class TorchModel:
    """A loaded PyTorch model with the input signature to export it with."""

    program: object  # what torch.onnx.export takes: nn.Module or torch.export.ExportedProgram
    module: object  # the callable nn.Module
    inputs: tuple[TensorSpec, ...]
    declared_version: str | None

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            result = self.module(*[torch.from_numpy(array.copy()) for array in arrays])
        flat = result if isinstance(result, (tuple, list)) else (result,)
        return [tensor.detach().cpu().numpy() for tensor in flat]


def _dtype_name(torch_dtype) -> str:
    return str(torch_dtype).removeprefix("torch.")


def _factory_inputs(module, overrides: dict[str, TensorSpec]) -> tuple[TensorSpec, ...]:
    parameters = [name for name, p in inspect.signature(module.forward).parameters.items()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    examples = getattr(module, "example_inputs", None)
    if examples is not None:
        examples = examples if isinstance(examples, (tuple, list)) else (examples,)
        specs = tuple(TensorSpec(name, _dtype_name(t.dtype), tuple(t.shape)) for name, t in zip(parameters, examples))
        if not overrides:
            return specs
    if not overrides:
        raise EdgepackError("a PyTorch factory model needs its input shapes",
                            f"pass --input {parameters[0] if parameters else 'x'}:1x3x224x224:float32 per input, "
                            "or set example_inputs on the module")
    unknown = [name for name in overrides if name not in parameters]
    if unknown:
        raise EdgepackError(f"--input names {', '.join(unknown)}, not parameters of forward()",
                            f"forward() takes: {', '.join(parameters)}")
    return tuple(overrides[name] for name in parameters if name in overrides)


def _program_inputs(program, overrides: dict[str, TensorSpec]) -> tuple[TensorSpec, ...]:
    user_inputs = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta.get("val")
            if node.name in overrides:
                specs.append(overrides[node.name])
            elif value is None or not all(isinstance(d, int) for d in value.shape):
                raise EdgepackError(f"input '{node.name}' of the exported program has no static shape",
                                    f"pass --input {node.name}:<d0>x<d1>...:float32")
            else:
                specs.append(TensorSpec(node.name, _dtype_name(value.dtype), tuple(value.shape)))
    return tuple(specs)


def load_torch_model(source: FactorySource | ExportedProgramSource, overrides: dict[str, TensorSpec]) -> TorchModel:
    """Load a factory's module or a saved program, with the signature to export it with."""
    import torch

    if isinstance(source, FactorySource):
        module, version = call_factory(source)
        return TorchModel(module, module, _factory_inputs(module, overrides), version)
    try:
        program = torch.export.load(str(source.path))
    except Exception as exc:  # torch raises many types for a bad archive
        raise EdgepackError(f"'{source.path}' is not a readable torch.export program ({type(exc).__name__})",
                            "save it with torch.export.save(torch.export.export(model, args), path)") from None
    return TorchModel(program, program.module(), _program_inputs(program, overrides), None)


def export_to_onnx(model: TorchModel, out_path: Path, config: ExportConfig) -> StageRecord:
    """Export with torch.onnx (dynamo), then check ONNX Runtime against PyTorch; returns the record."""
    import torch

    examples = tuple(torch.from_numpy(array) for array in random_inputs(model.inputs, config.seed))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                model.program, examples, str(out_path), dynamo=True, opset_version=config.opset,
                input_names=[spec.name for spec in model.inputs], external_data=False,
            )
    except Exception as exc:  # torch.onnx raises many types
        raise EdgepackError(f"torch.onnx.export failed: {first_line(exc)}", "make the model exportable with torch.export (see its error)") from None
    report = check_export(model, out_path, config)
    return StageRecord("export", asdict(config), report)


def check_export(model: TorchModel, onnx_path: Path, config: ExportConfig) -> dict:
    """Run PyTorch and ONNX Runtime on the same random inputs; one error lists every mismatch."""
    mismatches, worst_abs = [], 0.0
    for case in range(config.check_cases):
        arrays = random_inputs(model.inputs, config.seed + 1 + case)
        expected = model(arrays)
        got = run_onnxruntime(onnx_path, model.inputs, arrays)
        if len(expected) != len(got):
            raise EdgepackError(f"the ONNX export has {len(got)} outputs, PyTorch returns {len(expected)}",
                                "return a tensor or a flat tuple of tensors from forward()")
        for index, (ref, out) in enumerate(zip(expected, got)):
            result = compare(out, ref, config.atol, config.rtol)
            worst_abs = max(worst_abs, result["max_abs_err"])
            if not result["passed"]:
                mismatches.append(f"case {case} output {index}: max abs err {result['max_abs_err']:.3g}")
    if mismatches:
        raise EdgepackError(f"the ONNX export differs from PyTorch ({'; '.join(mismatches)})",
                            f"check the model for export-unsafe code, or loosen --export-atol (now {config.atol})")
    return {"cases": config.check_cases, "max_abs_err": worst_abs, "passed": True}
