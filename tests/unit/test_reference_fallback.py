"""Golden references: ONNX Runtime where it runs the model, else ONNX's reference implementation, named."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

from edgepack.measure.reference import run_reference
from edgepack.runtime.bundle_format import TensorSpec


def _model(path, opset_domain_version: int):
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                              [numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset_domain_version)]), str(path))
    return path


def test_onnxruntime_is_the_reference_where_it_runs(tmp_path):
    outputs, engine = run_reference(_model(tmp_path / "m.onnx", 17), [TensorSpec("x", "float32", (3,))], [np.ones(3, np.float32)])
    assert engine == "onnxruntime"
    np.testing.assert_array_equal(outputs[0], [1, 2, 3])


def test_onnx_reference_stands_in_where_onnxruntime_cannot_load_the_model(tmp_path):
    """A very new opset (here: one beyond ONNX Runtime's) is refused by ONNX Runtime, not by the reference."""
    path = _model(tmp_path / "new.onnx", 99)
    outputs, engine = run_reference(path, [TensorSpec("x", "float32", (3,))], [np.ones(3, np.float32)])
    assert engine == "onnx.reference"
    np.testing.assert_array_equal(outputs[0], [1, 2, 3])
