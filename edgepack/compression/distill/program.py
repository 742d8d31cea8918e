"""Tensor programs for fitted students: a list of ONNX nodes plus constant tensors, as one ONNX model.

Tree, SVM and rule-set students all become plain ONNX graphs of frontend ops (Flatten, MatMul,
comparisons, Cast, Exp) taking the teacher's input and giving one score per class, so they compile
and ship through the same build as any network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.runtime.bundle_format import TensorSpec

OPSET = 17
FEATURES = "flattened_input"  # the programs' other tensor names are plain words; see write_program


def flatten_node(spec: TensorSpec):
    """The first node of every program: the teacher's input as rows of features."""
    from onnx import helper

    if spec.dtype != "float32":
        raise EdgepackError(f"a fitted student takes float32 inputs, the teacher's '{spec.name}' is {spec.dtype}",
                            "distill a network student for this teacher")
    return helper.make_node("Flatten", [spec.name], [FEATURES], axis=1)


def write_program(nodes: list, constants: dict[str, np.ndarray], spec: TensorSpec, output: str, n_classes: int,
                  path: Path, graph_name: str, doc: str = "", version: str | None = None) -> Path:
    """Write `nodes` (after a Flatten of `spec` into 'features') with `constants` as a checked ONNX model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    batch = spec.shape[0] if spec.shape else 1
    taken = {FEATURES, *constants, *(name for node in nodes for name in node.output)}
    if spec.name in taken:
        raise EdgepackError(f"the teacher's input name '{spec.name}' is a name the {graph_name} program uses inside",
                            "rename the teacher's input (export it with another input name) and distill again")
    graph = helper.make_graph(
        [flatten_node(spec), *nodes], graph_name,
        [helper.make_tensor_value_info(spec.name, TensorProto.FLOAT, list(spec.shape))],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, n_classes])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(value), name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgepack.compression.distill",
                              doc_string=doc)
    model.ir_version = 8
    if version:
        helper.set_model_props(model, {"version": version})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


def float32_at_most(threshold: float) -> np.float32:
    """The largest float32 ≤ threshold: for float32 x, x ≤ t (in float64) iff x ≤ this value."""
    value = np.float32(threshold)
    return np.nextafter(value, np.float32(-np.inf)) if float(value) > threshold else value


def feature_names(spec: TensorSpec) -> list[str]:
    """`image[0,3,4]`-style names for the flattened features of one sample of `spec`."""
    sample = tuple(spec.shape[1:])
    if len(sample) <= 1:
        return [f"{spec.name}[{index}]" for index in range(int(np.prod(sample)) if sample else 1)]
    return [f"{spec.name}[{','.join(map(str, index))}]" for index in np.ndindex(*sample)]


def read_feature_names(path: Path | None, spec: TensorSpec) -> list[str]:
    """Names from a text file (one per line, one per flattened feature), or `image[0,3,4]`-style ones."""
    default = feature_names(spec)
    if path is None:
        return default
    path = Path(path)
    if not path.is_file():
        raise EdgepackError(f"feature names file '{path}' does not exist", "pass a text file with one feature name per line")
    names = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if len(names) != len(default):
        raise EdgepackError(f"'{path}' names {len(names)} features, the teacher's input '{spec.name}' has {len(default)}",
                            "write one name per line for every feature of one flattened sample")
    return names
