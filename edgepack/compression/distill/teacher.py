"""The teacher: a PyTorch model or an ONNX file (run in ONNX Runtime), seen only through its outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.measure.evaluation import EvalData, Predictor, onnx_predictor, predict
from edgepack.runtime.bundle_format import TensorSpec
from edgepack.frontends.signature import parse_input_specs
from edgepack.frontends.sources import ModelSource, OnnxSource, parse_source


@dataclass(frozen=True)
class Teacher:
    """A loaded teacher: its source, input signature, one-call predictor and size."""

    source: ModelSource
    inputs: tuple[TensorSpec, ...]
    run: Predictor
    params: int
    size_bytes: int  # the ONNX file, or the float weights of a PyTorch model
    declared_version: str | None

    @property
    def name(self) -> str:
        return self.source.default_name

    def logits(self, data: EvalData) -> np.ndarray:
        """The teacher's first output for every sample, shaped samples × classes."""
        return predict(self.run, self.inputs, data)[0].astype(np.float32)


def _onnx_teacher(source: OnnxSource, overrides: dict[str, TensorSpec]) -> Teacher:
    from onnx import numpy_helper

    from edgepack.frontends.preflight import fix_input_shapes, load_onnx

    model = load_onnx(source.path)
    inputs = tuple(fix_input_shapes(model, overrides))
    params = sum(int(np.prod(numpy_helper.to_array(init).shape)) for init in model.graph.initializer)
    props = {prop.key: prop.value for prop in model.metadata_props}
    return Teacher(source, inputs, onnx_predictor(source.path), params, source.path.stat().st_size, props.get("version"))


def _torch_teacher(source: ModelSource, overrides: dict[str, TensorSpec]) -> Teacher:
    from edgepack.frontends.export import load_torch_model

    model = load_torch_model(source, overrides)
    module = model.module
    params = sum(p.numel() for p in module.parameters())
    size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    return Teacher(source, model.inputs, model, params, size, model.declared_version)


def load_teacher(model: str, inputs: list[str] | tuple[str, ...] = ()) -> Teacher:
    """Load MODEL (.onnx, .pt2 or file.py:factory); `inputs` fix dynamic or factory input shapes."""
    source = parse_source(model)
    overrides = parse_input_specs(list(inputs))
    teacher = _onnx_teacher(source, overrides) if isinstance(source, OnnxSource) else _torch_teacher(source, overrides)
    if any(spec.dtype not in ("float32", "float64", "float16") for spec in teacher.inputs):
        raise EdgepackError(f"teacher '{source.path}' takes non-float inputs "
                            f"({', '.join(f'{s.name}:{s.dtype}' for s in teacher.inputs)})",
                            "distill a model whose inputs are float tensors")
    return teacher


def check_classifier(logits: np.ndarray, what: str) -> int:
    """The number of classes in a teacher's outputs (samples × classes, at least 2)."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise EdgepackError(f"{what} gives outputs of shape {logits.shape[1:]} per sample, not class scores",
                            "distill a classifier whose first output is one score per class")
    return int(logits.shape[1])


def load_data(path: Path, teacher: Teacher, what: str) -> EvalData:
    """Samples for the teacher's inputs from an .npz (one array per input name or `x`, optional `labels`)."""
    from edgepack.measure.evaluation import load_eval_data

    path = Path(path)
    if not path.is_file():
        raise EdgepackError(f"{what} '{path}' does not exist",
                            "pass an .npz with one array per input (or 'x'), samples on axis 0, optional 'labels'")
    return load_eval_data(path, teacher.inputs)
