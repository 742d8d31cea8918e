"""Channel shuffles absorbed by algebra (edgepack.compiler.channel_shuffle): the rewritten ONNX graph equals the
original in ONNX Runtime, a ShuffleNet-style bundle has no shuffle left and passes its golden check, and a shuffle
that is a graph output stays exact."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from models import tiny_shufflenet_onnx
from onnx import TensorProto, helper, numpy_helper

from edgepack.build import build
from edgepack.compiler.channel_shuffle import remove_channel_shuffles
from edgepack.compiler.compile import CompileConfig
from edgepack.measure.reference import onnxruntime_session
from edgepack.runtime import loader

pytestmark = pytest.mark.tvm


def _weight(name: str, *shape: int, seed: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def _shuffle(x: str, out: str, channels: int, groups: int, size: int) -> list:
    """Reshape [1, g, C/g, H, W] → Transpose → Reshape [1, C, H, W], as exporters write a channel shuffle."""
    split = helper.make_node("Constant", [], [f"{out}_split"], value=numpy_helper.from_array(
        np.array([1, groups, channels // groups, size, size], np.int64)))
    back = helper.make_node("Constant", [], [f"{out}_back"], value=numpy_helper.from_array(
        np.array([1, channels, size, size], np.int64)))
    return [split, back, helper.make_node("Reshape", [x, f"{out}_split"], [f"{out}_5d"]),
            helper.make_node("Transpose", [f"{out}_5d"], [f"{out}_t"], perm=[0, 2, 1, 3, 4]),
            helper.make_node("Reshape", [f"{out}_t", f"{out}_back"], [out])]


def _model(nodes: list, weights: list, outputs: dict[str, tuple[int, ...]], channels: int = 12, size: int = 6):
    graph = helper.make_graph(nodes, "shuffles", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs.items()], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def _rewritten_matches(model, tmp_path, channel_multiple: int = 0):
    """remove_channel_shuffles on a copy of the model; its outputs against the original's in ONNX Runtime."""
    original = tmp_path / "original.onnx"
    onnx.save(model, str(original))
    rewritten_model, report = remove_channel_shuffles(onnx.shape_inference.infer_shapes(onnx.load(str(original))),
                                                      channel_multiple)
    onnx.checker.check_model(rewritten_model)
    rewritten = tmp_path / "rewritten.onnx"
    onnx.save(rewritten_model, str(rewritten))
    x = np.random.default_rng(3).standard_normal((1, 12, 6, 6)).astype(np.float32)
    want = onnxruntime_session(original, 1).run(None, {"x": x})
    got = onnxruntime_session(rewritten, 1).run(None, {"x": x})
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)  # fp32: sums in another order
    return rewritten_model, report


def _ops(model) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def test_shuffles_through_per_channel_ops_split_and_concat_are_absorbed(tmp_path):
    """conv → shuffle(3) → ReLU, Add and Mul by per-channel constants, BatchNorm, MaxPool → depthwise conv →
    shuffle(2) → Split → (1x1 conv, Slice) → Concat → shuffle(4) → 1x1 conv: every shuffle absorbed."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"]),
             *_shuffle("c0", "s0", 12, 3, 6),
             helper.make_node("Relu", ["s0"], ["r0"]),
             helper.make_node("Add", ["r0", "bias"], ["a0"]),
             helper.make_node("Mul", ["a0", "half"], ["m0"]),
             helper.make_node("BatchNormalization", ["m0", "scale", "shift", "mean", "var"], ["b0"]),
             helper.make_node("MaxPool", ["b0"], ["p0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p0", "dw", "dwb"], ["d0"], group=12, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             *_shuffle("d0", "s1", 12, 2, 6),
             helper.make_node("Split", ["s1"], ["left", "right"], axis=1, num_outputs=2),
             helper.make_node("Conv", ["right", "w1"], ["c1"]),
             helper.make_node("Constant", [], ["starts"], value=numpy_helper.from_array(np.array([2], np.int64))),
             helper.make_node("Constant", [], ["ends"], value=numpy_helper.from_array(np.array([6], np.int64))),
             helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([1], np.int64))),
             helper.make_node("Slice", ["left", "starts", "ends", "axes"], ["kept"]),
             helper.make_node("Concat", ["kept", "c1", "left"], ["cat"], axis=1),
             *_shuffle("cat", "s2", 16, 4, 6),
             helper.make_node("Conv", ["s2", "w2"], ["y"])]
    rng = np.random.default_rng(1)
    constants = {"bias": rng.standard_normal((12, 1, 1)), "half": np.array(0.5), "scale": rng.uniform(0.5, 2, 12),
                 "shift": rng.standard_normal(12), "mean": rng.standard_normal(12), "var": rng.uniform(0.5, 2, 12),
                 "dwb": rng.standard_normal(12)}
    weights = [_weight("w0", 12, 12, 1, 1, seed=2), _weight("dw", 12, 1, 3, 3, seed=3), _weight("w1", 6, 6, 1, 1, seed=4),
               _weight("w2", 5, 16, 1, 1, seed=5)] + [numpy_helper.from_array(v.astype(np.float32), k) for k, v in constants.items()]
    model, report = _rewritten_matches(_model(nodes, weights, {"y": (1, 5, 6, 6)}), tmp_path)
    assert report.to_json() == {"found": 3, "removed": 3, "gathers": 0, "padded_convs": 0}
    ops = _ops(model)
    assert not {"Transpose", "Reshape", "Gather", "Split"} & set(ops)
    assert ops["Conv"] == 4  # weights permuted, no convolution added


def test_a_shuffle_that_is_a_graph_output_stays_exact(tmp_path):
    """The shuffled tensor is an output (one Gather makes it) and also feeds a convolution (absorbed there)."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"]), *_shuffle("c0", "shuffled", 12, 2, 6),
             helper.make_node("Conv", ["shuffled", "w1"], ["y"])]
    weights = [_weight("w0", 12, 12, 1, 1, seed=6), _weight("w1", 4, 12, 1, 1, seed=7)]
    model, report = _rewritten_matches(_model(nodes, weights, {"shuffled": (1, 12, 6, 6), "y": (1, 4, 6, 6)}), tmp_path)
    assert report.to_json() == {"found": 1, "removed": 0, "gathers": 1, "padded_convs": 0}
    assert _ops(model)["Gather"] == 1 and "Transpose" not in _ops(model)


def test_convolutions_padded_to_the_channel_block_keep_their_outputs(tmp_path):
    """With a block of 16, 12 -> 30 and 30 -> 30 convolutions get 32 filters (2 of them zero); a depthwise conv,
    BatchNorm, ReLU and a residual Add of two padded tensors run on all 32 channels, a graph output takes the 30 real
    ones (the only Slice), a 1x1 conv gives the pads zero weights; 12 -> 5 (16 would be 3.2x the work) stays."""
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "dw", "dwb"], ["d0"], group=30, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["d0", "scale", "shift", "mean", "var"], ["n0"]),
             helper.make_node("Conv", ["n0", "w1"], ["c1"]),
             helper.make_node("Relu", ["c1"], ["y"]),
             helper.make_node("Conv", ["x", "w4"], ["side"]),
             helper.make_node("Add", ["y", "side"], ["sum"]),
             helper.make_node("Conv", ["sum", "w2"], ["z"]),
             helper.make_node("Conv", ["x", "w3"], ["small"])]
    rng = np.random.default_rng(10)
    constants = {"b0": rng.standard_normal(30), "dwb": rng.standard_normal(30), "scale": rng.uniform(0.5, 2, 30),
                 "shift": rng.standard_normal(30), "mean": rng.standard_normal(30), "var": rng.uniform(0.5, 2, 30)}
    weights = [_weight("w0", 30, 12, 1, 1, seed=11), _weight("dw", 30, 1, 3, 3, seed=12), _weight("w1", 30, 30, 1, 1, seed=13),
               _weight("w2", 5, 30, 1, 1, seed=14), _weight("w3", 5, 12, 1, 1, seed=15), _weight("w4", 30, 12, 1, 1, seed=16)] + \
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in constants.items()]
    outputs = {"y": (1, 30, 6, 6), "z": (1, 5, 6, 6), "small": (1, 5, 6, 6)}
    model, report = _rewritten_matches(_model(nodes, weights, outputs), tmp_path, channel_multiple=16)
    assert report.to_json() == {"found": 0, "removed": 0, "gathers": 0, "padded_convs": 3}
    assert _ops(model)["Slice"] == 1
    filters = {numpy_helper.to_array(init).shape for init in model.graph.initializer if init.dims and len(init.dims) == 4}
    assert {(32, 12, 1, 1), (32, 1, 3, 3), (32, 32, 1, 1), (5, 32, 1, 1), (5, 12, 1, 1)} <= filters


def test_no_shuffle_leaves_the_model_alone(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"]), helper.make_node("Transpose", ["c0"], ["y"], perm=[0, 1, 3, 2])]
    model = onnx.shape_inference.infer_shapes(_model(nodes, [_weight("w0", 12, 12, 1, 1, seed=8)], {"y": (1, 12, 6, 6)}))
    before = model.SerializeToString()
    _, report = remove_channel_shuffles(model)
    assert report.found == 0 and model.SerializeToString() == before


def test_shufflenet_block_bundle_has_no_shuffle_and_matches_onnxruntime(tmp_path):
    source = tiny_shufflenet_onnx(tmp_path / "shufflenet.onnx")
    result = build(str(source), "x86_64", tmp_path / "dist", compile=CompileConfig(tuning_database=str(tmp_path / "none")))
    manifest = result.bundle.manifest
    report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert report["channel_shuffles"] == {"found": 4, "removed": 4, "gathers": 0, "padded_convs": 5}  # 15 -> 16 filters
    assert report["kernels"]["unscheduled"] == {}
    # the golden references are ONNX Runtime's outputs of the model as given (shuffles and all)
    assert manifest["verification"]["passed"] and manifest["verification"]["max_abs_err"] < 1e-4
    x = np.random.default_rng(9).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = onnxruntime_session(source, 1).run(None, {"x": x})[0]
    np.testing.assert_allclose(loader.load(result.bundle.path).run([x])[0], want, atol=1e-4, rtol=1e-4)
