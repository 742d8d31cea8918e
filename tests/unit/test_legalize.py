"""Pre-flight's legalizing rewrites (frontends/legalize.py) of values TVM computes differently from ONNX, checked
without TVM: ONNX's reference runs the original node and its rewrite on the same edge-case inputs."""

from __future__ import annotations

import numpy as np
import pytest


def _model(op_type: str, dtype, opset: int, **attributes):
    from onnx import helper
    from onnx.helper import np_dtype_to_tensor_dtype

    elem = np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph([helper.make_node(op_type, ["a", "b"], ["y"], **attributes)], op_type,
                              [helper.make_tensor_value_info(n, elem, [None]) for n in ("a", "b")],
                              [helper.make_tensor_value_info("y", elem, [None])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _legalized_matches_reference(model, feeds, op_type: str):
    import onnx
    from onnx.reference import ReferenceEvaluator

    from edgepack.frontends.legalize import legalize

    expected = ReferenceEvaluator(model).run(None, feeds)[0]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert legalize(model) == {op_type: 1}
    got = ReferenceEvaluator(model).run(None, feeds)[0]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))  # -0 where ONNX gives -0
    return model


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.uint64])
@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bit_shift_out_of_range_amounts_give_what_onnx_says(dtype, direction):
    """Amounts below 0 or at least the width give the sign fill (signed right shift) or 0; ONNX 28's semantics."""
    bits = np.iinfo(dtype).bits
    signed = np.issubdtype(dtype, np.signedinteger)
    values = np.array([-8, 4, -1, 5, -128, 3, 7, 1] if signed else [8, 4, 255, 5, 128, 3, 7, 1], dtype)
    amounts = np.array([bits, bits + 1, 127 if bits == 8 else 1000, 1, 0, bits - 1, -1 if signed else 2, 3], dtype)
    model = _legalized_matches_reference(_model("BitShift", dtype, 18, direction=direction), {"a": values, "b": amounts}, "BitShift")
    assert [n.op_type for n in model.graph.node].count("BitShift") == 1 + (direction == "RIGHT" and signed)


def test_bit_shift_by_constant_amounts_in_range_is_kept():
    import onnx
    from onnx import helper, numpy_helper

    from edgepack.frontends.legalize import legalize

    model = _model("BitShift", np.uint8, 18, direction="LEFT")
    model.graph.node.insert(0, helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(np.array([1, 7], np.uint8))))
    del model.graph.input[1]
    assert legalize(onnx.shape_inference.infer_shapes(model)) == {}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_mod_matches_numpy_mod_on_inf_nan_and_zeros(dtype):
    """fmod 0 on floats: numpy's mod, inf and NaN operands, signed zeros and mixed signs."""
    a = np.array([0, -0.0, 0, -0.0, -3, 3, -1, 1, np.inf, -np.inf, 1, 1, np.nan, 1, 5.5, -5.5, 5.5, -5.5, 0], dtype)
    b = np.array([-2, 2, 2, -2, np.inf, np.inf, -np.inf, -np.inf, 2, 2, 0, -0.0, 2, np.nan, 2, 2, -2, -2, -np.inf], dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        _legalized_matches_reference(_model("Mod", dtype, 13, fmod=0), {"a": a, "b": b}, "Mod")


@pytest.mark.parametrize("training, ratio, refused", [(True, 0.5, True), (True, 0.0, False), (False, 0.5, False)])
def test_dropout_in_training_mode_is_refused_unless_its_ratio_is_zero(training, ratio, refused):
    from onnx import TensorProto, helper, numpy_helper

    from edgepack.frontends.preflight import op_report

    constants = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(np.array(v)))
                 for n, v in (("ratio", np.float32(ratio)), ("training", np.bool_(training)))]
    graph = helper.make_graph(constants + [helper.make_node("Dropout", ["x", "ratio", "training"], ["y"])], "dropout",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    report = op_report(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert any(op.startswith("Dropout (training mode") for op in report.unsupported) == refused


@pytest.mark.parametrize("operand, values", [("scales", np.array([3.0, 2.0], np.float32)), ("sizes", np.array([7, 5], np.int64))])
def test_resize_axes_become_full_rank_operands(operand, values):
    """Resize's axes attribute (TVM ignores it): scales/sizes for every axis, the same result in ONNX's reference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from edgepack.frontends.legalize import legalize

    inputs = ["x", "", "values", ""] if operand == "scales" else ["x", "", "", "values"]
    nodes = [helper.make_node("Constant", [], ["values"], value=numpy_helper.from_array(values)),
             helper.make_node("Resize", inputs, ["y"], axes=[3, 2], mode="nearest")]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    feeds = {"x": np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3)}
    expected = ReferenceEvaluator(model).run(None, feeds)[0]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert legalize(model) == {"Resize": 1}
    assert not [a for n in model.graph.node for a in n.attribute if a.name == "axes"]
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, feeds)[0], expected)


def test_if_with_a_condition_known_at_build_time_is_replaced_by_its_branch():
    """Folding inlines the branch taken (values renamed apart); ONNX's reference gives the same result."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from edgepack.frontends.fold import fold_shape_computations

    def branch(name, op):
        return helper.make_graph([helper.make_node(op, ["x", "x"], ["t"])], name, [],
                                 [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])

    nodes = [helper.make_node("Size", ["x"], ["n"]),
             helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2, np.int64))),
             helper.make_node("Equal", ["n", "two"], ["is_two"]),
             helper.make_node("If", ["is_two"], ["a"], then_branch=branch("then", "Mul"), else_branch=branch("else", "Add")),
             helper.make_node("If", ["is_two"], ["b"], then_branch=branch("then2", "Sub"), else_branch=branch("else2", "Add")),
             helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": np.array([3.0, -1.5], np.float32)}
    expected = ReferenceEvaluator(model).run(None, feeds)[0]
    for _ in range(3):
        model, _ = fold_shape_computations(onnx.shape_inference.infer_shapes(model, strict_mode=True))
    assert "If" not in {node.op_type for node in model.graph.node}
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, feeds)[0], expected)


@pytest.mark.parametrize("dims, refused", [([2], True), (["n"], False)])
def test_constant_of_shape_from_input_values_is_refused_when_input_sizes_are_fixed(dims, refused):
    """A shape folding left unknown depends on input values unless an input has a named (dynamic) axis."""
    from onnx import TensorProto, helper

    from edgepack.frontends.preflight import op_report

    graph = helper.make_graph([helper.make_node("ConstantOfShape", ["shape"], ["y"])], "cos",
                              [helper.make_tensor_value_info("shape", TensorProto.INT64, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    report = op_report(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert any(op.startswith("ConstantOfShape (its shape") for op in report.unsupported) == refused


def test_unsqueeze_of_scalar_constant_axes_gets_one_dimensional_axes():
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from edgepack.frontends.legalize import legalize

    nodes = [helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array(1, np.int64))),
             helper.make_node("Unsqueeze", ["x", "axes"], ["y"])]
    graph = helper.make_graph(nodes, "unsqueeze", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    expected = ReferenceEvaluator(model).run(None, feeds)[0]
    model = onnx.shape_inference.infer_shapes(model)
    assert legalize(model) == {"Unsqueeze": 1}
    axes = next(n for n in model.graph.node if n.output[0] == model.graph.node[-1].input[1])
    assert numpy_helper.to_array(axes.attribute[0].t).shape == (1,)
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, feeds)[0], expected)
