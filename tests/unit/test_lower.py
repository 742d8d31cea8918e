"""Pre-flight's rewrites of ops TVM lacks (frontends/lower.py), checked without TVM: ONNX Runtime runs the
original node and its rewrite on the same inputs. Every direction of RNN/GRU/LSTM with clip, sequence
lengths and initial states, where ONNX's own reference ignores sequence_lens and clip."""

from __future__ import annotations

import numpy as np
import pytest

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _recurrent(kind: str, direction: str, layout: int, seq=4, batch=3, features=2, hidden=3):
    from onnx import TensorProto, helper

    directions = 2 if direction == "bidirectional" else 1
    gates = GATES[kind]
    names = ["X", "W", "R", "B", "lens", "h0"] + (["c0", "P"] if kind == "LSTM" else [])
    state = [batch, directions, hidden] if layout else [directions, batch, hidden]
    shapes = [[batch, seq, features] if layout else [seq, batch, features], [directions, gates * hidden, features],
              [directions, gates * hidden, hidden], [directions, 2 * gates * hidden], [batch], state] + \
        ([state, [directions, 3 * hidden]] if kind == "LSTM" else [])
    outputs = ["Y", "Y_h"] + (["Y_c"] if kind == "LSTM" else [])
    y_shape = [batch, seq, directions, hidden] if layout else [seq, directions, batch, hidden]
    attributes = {"linear_before_reset": 1} if kind == "GRU" else {}
    graph = helper.make_graph(
        [helper.make_node(kind, names, outputs, hidden_size=hidden, direction=direction, clip=0.8, layout=layout, **attributes)], kind,
        [helper.make_tensor_value_info(n, TensorProto.INT32 if n == "lens" else TensorProto.FLOAT, s) for n, s in zip(names, shapes)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, y_shape if o == "Y" else state) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(names, shapes)}
    feeds["lens"] = np.array([seq, 2, 3], np.int32)
    return model, feeds


def _onnxruntime(model, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent_unrolled_matches_onnxruntime(kind, direction):
    import onnx

    from edgepack.frontends.lower import lower

    model, feeds = _recurrent(kind, direction, layout=0)
    expected = _onnxruntime(model, feeds)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert lower(model) == ({kind: 1}, {})
    assert kind not in {node.op_type for node in model.graph.node}
    for got, want in zip(_onnxruntime(model, feeds), expected):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)


def test_batch_first_layout_matches_onnx_reference():
    """ONNX Runtime refuses layout 1; ONNX's reference runs it (without clip and sequence_lens)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    from edgepack.frontends.lower import lower

    model, feeds = _recurrent("LSTM", "bidirectional", layout=1)
    node = model.graph.node[0]
    del node.attribute[[a.name for a in node.attribute].index("clip")]
    node.input[4] = ""
    del feeds["lens"]
    model.graph.input.remove(next(value for value in model.graph.input if value.name == "lens"))
    expected = ReferenceEvaluator(model).run(None, feeds)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert lower(model) == ({"LSTM": 1}, {})
    for got, want in zip(_onnxruntime(model, feeds), expected):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)


def test_a_node_that_cannot_be_rewritten_stays_with_its_reason():
    from onnx import helper

    from edgepack.frontends.lower import lower

    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "det", [helper.make_tensor_value_info("x", 1, [5, 5])],
                              [helper.make_tensor_value_info("y", 1, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    assert lower(model) == ({}, {"Det": "a 5x5 matrix is larger than the 4x4 edgepack expands"})
    assert [node.op_type for node in model.graph.node] == ["Det"]


def _loop_model(condition_from_body: bool):
    from onnx import TensorProto, helper, numpy_helper

    body_nodes = [helper.make_node("Cast", ["i"], ["i_float"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["x", "i_float"], ["scaled"]),
                  helper.make_node("Add", ["s_in", "scaled"], ["s_out"]),
                  helper.make_node("Identity", ["s_out"], ["each"])]
    if condition_from_body:  # a `while` loop: the condition depends on the values
        body_nodes.append(helper.make_node("ReduceSum", ["s_out"], ["total"], keepdims=0))
        body_nodes.append(helper.make_node("Less", ["total", "limit"], ["cond_out"]))
    else:
        body_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body = helper.make_graph(body_nodes, "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [3])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [3]),
                              helper.make_tensor_value_info("each", TensorProto.FLOAT, [3])])
    constants = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
                 for name, value in (("trips", np.array(4, np.int64)), ("go", np.array(True)), ("limit", np.array(1e9, np.float32)))]
    graph = helper.make_graph(constants + [helper.make_node("Loop", ["trips", "go", "s0"], ["s", "all"], body=body)], "loop",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]), helper.make_tensor_value_info("s0", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, [3]), helper.make_tensor_value_info("all", TensorProto.FLOAT, [4, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])


def test_for_loop_unrolled_matches_onnxruntime_and_a_while_loop_stays():
    """A Loop with a constant trip count and a condition its body passes on is unrolled (its iteration number
    a constant per copy); one whose body computes the condition is kept, with the reason."""
    import onnx

    from edgepack.frontends.lower import lower

    model = _loop_model(condition_from_body=False)
    feeds = {"x": np.array([1.0, -2.0, 0.5], np.float32), "s0": np.array([0.0, 1.0, 2.0], np.float32)}
    expected = _onnxruntime(model, feeds)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert lower(model) == ({"Loop": 1}, {})
    for got, want in zip(_onnxruntime(model, feeds), expected):
        np.testing.assert_array_equal(got, want)
    assert lower(_loop_model(condition_from_body=True)) == ({}, {"Loop": "its body computes its condition"})


def _lowered_matches_reference(nodes, inputs, outputs, feeds, opset, op_type):
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    from edgepack.frontends.lower import lower

    graph = helper.make_graph(nodes, op_type, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    expected = ReferenceEvaluator(model).run(None, feeds)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert lower(model) == ({op_type: 1}, {})
    assert op_type not in {node.op_type for node in model.graph.node}
    for got, want in zip(ReferenceEvaluator(model).run(None, feeds), expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("opset", [10, 22])
def test_max_unpool_with_output_shape_matches_onnx_reference(opset):
    """Indices index the shape the attributes give; the result is padded at the end to output_shape."""
    from onnx import TensorProto, helper, numpy_helper

    shape = helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, 2, 6, 5], np.int64)))
    unpool = helper.make_node("MaxUnpool", ["x", "i", "shape"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    x = np.arange(1, 9, dtype=np.float32).reshape(1, 2, 2, 2)
    indices = np.array([5, 7, 13, 15, 16, 19, 28, 30], np.int64).reshape(1, 2, 2, 2)  # the whole 1x2x4x4 tensor flattened
    _lowered_matches_reference([shape, unpool], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2]),
                                                 helper.make_tensor_value_info("i", TensorProto.INT64, [1, 2, 2, 2])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"x": x, "i": indices}, opset, "MaxUnpool")


def test_upsample_nearest_with_a_scales_input_matches_onnx_reference():
    from onnx import TensorProto, helper, numpy_helper

    scales = helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([1, 2, 2, 3], np.float32)))
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    _lowered_matches_reference([scales, helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")],
                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"x": x}, 9, "Upsample")


def test_upsample_linear_stays_refused_naming_why():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgepack.frontends.lower import lower

    scales = helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32)))
    graph = helper.make_graph([scales, helper.make_node("Upsample", ["x", "s"], ["y"], mode="linear")], "up",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]))
    lowered, refused = lower(model)
    assert lowered == {} and "nearest" in refused["Upsample"]
