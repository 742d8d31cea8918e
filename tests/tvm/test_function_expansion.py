"""Ops TVM's ONNX frontend lacks that ONNX defines as functions are expanded in pre-flight (frontends/expand.py),
and the nodes TVM cannot compile are rewritten (frontends/legalize.py). Each model is built for real, its
bundle verified against ONNX Runtime, and run here against ONNX Runtime on fresh inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepack.build import build
from edgepack.errors import EdgepackError
from edgepack.runtime.bundle_format import read_manifest
from edgepack.runtime.loader import load

pytestmark = pytest.mark.tvm


def save_graph(path: Path, nodes, inputs, outputs, opset: int, weights: dict | None = None) -> Path:
    from onnx import helper, numpy_helper, save

    initializers = [numpy_helper.from_array(value, name) for name, value in (weights or {}).items()]
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def tensor(name: str, shape, elem_type: int = 1):
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, shape)


def onnxruntime_run(path: Path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def onnx_reference_run(path: Path, feeds: dict) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(str(path)).run(None, feeds)


def preflight_report(bundle: Path) -> dict:
    manifest = read_manifest(bundle)
    return next(stage for stage in manifest["provenance"]["stages"] if stage["stage"] == "preflight")["report"]


def build_and_compare(path: Path, tmp_path: Path, feeds: dict, reference=onnxruntime_run) -> Path:
    """Build `path`, run the bundle and the reference (ONNX Runtime) on `feeds`, compare; returns the bundle."""
    result = build(str(path), out_dir=tmp_path / "dist")
    got = load(result.bundle.path).run(list(feeds.values()))
    expected = reference(path, feeds)
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-4)
    return result.bundle.path


def test_swish_is_expanded_and_matches_onnxruntime(tmp_path):
    from onnx import helper

    path = save_graph(tmp_path / "swish.onnx", [helper.make_node("Swish", ["x"], ["y"], alpha=1.5)],
                      [tensor("x", [2, 5])], [tensor("y", [2, 5])], opset=24)
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    bundle = build_and_compare(path, tmp_path, {"x": x})
    report = preflight_report(bundle)
    assert report["expanded"] == {"Swish": 1}
    assert "Swish" not in report["op_counts"] and report["op_counts"]["Sigmoid"] == 1
    from typer.testing import CliRunner

    from edgepack.cli.app import app

    shown = CliRunner().invoke(app, ["inspect", str(bundle)]).output
    assert "pre-flight: expanded into their ONNX functions: Swish ×1" in shown


def test_softmax_cross_entropy_loss_expands_through_its_nested_function(tmp_path):
    """SoftmaxCrossEntropyLoss's body calls NegativeLogLikelihoodLoss, also a function TVM lacks (context-dependent
    both: built for the node's reduction, weights and ignore_index)."""
    from onnx import TensorProto, helper

    path = save_graph(tmp_path / "sce.onnx",
                      [helper.make_node("SoftmaxCrossEntropyLoss", ["scores", "labels", "weights"], ["loss", "log_prob"],
                                        reduction="mean", ignore_index=2)],
                      [tensor("scores", [3, 5, 2]), tensor("labels", [3, 2], TensorProto.INT64), tensor("weights", [5])],
                      [tensor("loss", []), tensor("log_prob", [3, 5, 2])], opset=13)
    rng = np.random.default_rng(1)
    feeds = {"scores": rng.standard_normal((3, 5, 2)).astype(np.float32),
             "labels": rng.integers(0, 5, (3, 2)).astype(np.int64), "weights": rng.random(5).astype(np.float32)}
    feeds["labels"][0, 0] = 2  # an ignored class
    report = preflight_report(build_and_compare(path, tmp_path, feeds))
    assert report["expanded"] == {"NegativeLogLikelihoodLoss": 1, "SoftmaxCrossEntropyLoss": 1}


def test_causal_attention_with_grouped_heads_is_expanded_and_matches_onnxruntime(tmp_path):
    """ONNX's Attention (opset 23): TVM's converter is com.microsoft's, so pre-flight refused it on main; its
    context-dependent function (causal mask, 4 query heads over 2 key/value heads) compiles."""
    from onnx import helper

    q, kv = [1, 4, 3, 8], [1, 2, 5, 8]
    path = save_graph(tmp_path / "attention.onnx", [helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1)],
                      [tensor("q", q), tensor("k", kv), tensor("v", kv)], [tensor("y", q)], opset=23)
    rng = np.random.default_rng(2)
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in (("q", q), ("k", kv), ("v", kv))}
    report = preflight_report(build_and_compare(path, tmp_path, feeds))
    assert report["expanded"] == {"Attention": 1}


def test_op_without_a_function_is_still_refused_in_one_line(tmp_path):
    """Det has no ONNX function and no TVM converter, and pre-flight rewrites it only up to 4x4: a 5x5 one is
    refused before compiling, naming only that op and why (the Swish beside it is expanded)."""
    from onnx import helper

    path = save_graph(tmp_path / "det.onnx", [helper.make_node("Swish", ["x"], ["s"]), helper.make_node("Det", ["s"], ["y"])],
                      [tensor("x", [5, 5])], [tensor("y", [])], opset=24)
    with pytest.raises(EdgepackError) as refused:
        build(str(path), out_dir=tmp_path / "dist")
    assert str(refused.value).startswith("TVM's ONNX frontend does not support these ops: "
                                         "Det (a 5x5 matrix is larger than the 4x4 edgepack expands);")
    assert "\n" not in str(refused.value)


def test_integer_pow_bool_reductions_and_one_hot_are_legalized_and_match_onnxruntime(tmp_path):
    """Pow of int64 ("power only applies to float" on main), Pow of float by int64, ReduceMin/ReduceMax of bool
    ("Cannot decide max_value"), OneHot with a float depth, float indices and axis -2 (import failed on main),
    IsInf of -inf only (TVM's converter ignored detect_positive).
    ONNX Runtime has no kernel for that OneHot: the reference is ONNX's own evaluator."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Pow", ["a", "b"], ["a_pow_b"]),
             helper.make_node("Pow", ["x", "e"], ["x_pow_e"]),
             helper.make_node("ReduceMin", ["flags", "axes"], ["all_set"], keepdims=0),
             helper.make_node("ReduceMax", ["flags", "axes"], ["any_set"], keepdims=1),
             helper.make_node("Constant", [], ["depth"], value=numpy_helper.from_array(np.array(5.0, np.float32))),
             helper.make_node("Constant", [], ["values"], value=numpy_helper.from_array(np.array([0, 3], np.float32))),
             helper.make_node("OneHot", ["indices", "depth", "values"], ["one_hot"], axis=-2),
             helper.make_node("IsInf", ["w"], ["negative_inf"], detect_positive=0)]
    path = save_graph(tmp_path / "legalized.onnx", nodes,
                      [tensor("a", [4], TensorProto.INT64), tensor("b", [4], TensorProto.INT64), tensor("x", [4]),
                       tensor("e", [4], TensorProto.INT64), tensor("flags", [2, 3], TensorProto.BOOL),
                       tensor("indices", [2, 3]), tensor("w", [4])],
                      [tensor("a_pow_b", [4], TensorProto.INT64), tensor("x_pow_e", [4]), tensor("all_set", [2], TensorProto.BOOL),
                       tensor("any_set", [2, 1], TensorProto.BOOL), tensor("one_hot", [2, 5, 3]),
                       tensor("negative_inf", [4], TensorProto.BOOL)],
                      opset=20, weights={"axes": np.array([1], np.int64)})  # TVM needs the reduction axes as a constant
    feeds = {"a": np.array([2, -3, 5, 7], np.int64), "b": np.array([3, 3, 0, 2], np.int64),
             "x": np.array([1.5, -2.0, 0.5, 3.0], np.float32), "e": np.array([2, 3, 0, 1], np.int64),
             "flags": np.array([[True, True, True], [True, False, False]]),
             "indices": np.array([[0.0, 4.0, -1.0], [2.0, 3.0, -5.0]], np.float32),
             "w": np.array([np.inf, -np.inf, 1.0, np.nan], np.float32)}
    report = preflight_report(build_and_compare(path, tmp_path, feeds, reference=onnx_reference_run))
    assert report["legalized"] == {"IsInf": 1, "OneHot": 1, "Pow": 2, "ReduceMax": 1, "ReduceMin": 1}


def test_layer_normalization_with_its_optional_outputs_is_expanded_and_lp_normalization_legalized(tmp_path):
    """LayerNormalization's Mean and InvStdDev (TVM's converter computes only Y: inf error on main) come from
    its ONNX function; LpNormalization (no TVM converter) divides by ReduceL2, a zero row staying zero;
    MeanVarianceNormalization without its `axes` (strict shape inference of its body failed on main)."""
    from onnx import helper

    path = save_graph(tmp_path / "norms.onnx",
                      [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y", "mean", "inv_std"], axis=1),
                       helper.make_node("LpNormalization", ["x"], ["unit"], axis=1, p=2),
                       helper.make_node("MeanVarianceNormalization", ["z"], ["z_normalized"])],
                      [tensor("x", [3, 4]), tensor("z", [2, 3, 2, 2])],
                      [tensor("y", [3, 4]), tensor("mean", [3, 1]), tensor("inv_std", [3, 1]), tensor("unit", [3, 4]),
                       tensor("z_normalized", [2, 3, 2, 2])],
                      opset=17, weights={"scale": np.linspace(0.5, 2, 4, dtype=np.float32), "bias": np.ones(4, np.float32)})
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    x[1] = 0
    report = preflight_report(build_and_compare(path, tmp_path, {"x": x, "z": rng.standard_normal((2, 3, 2, 2)).astype(np.float32)}))
    assert report["expanded"] == {"LayerNormalization": 1} and report["legalized"] == {"LpNormalization": 1}
