"""Ops TVM's ONNX frontend lacks and ONNX defines no function for, rewritten in pre-flight (frontends/lower.py):
RNN/GRU/LSTM and Scan unrolled, CumProd, ReverseSequence, TensorScatter, Col2Im, Det, DFT, STFT, QLinearMatMul and
blocked Q/DQ, DeformConv as ops TVM imports. Each tiny model is built for real and its bundle run here against ONNX Runtime
(or ONNX's reference evaluator where ONNX Runtime lacks the op) on the original model."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.build import build
from edgepack.errors import EdgepackError

from test_function_expansion import build_and_compare, onnx_reference_run, preflight_report, save_graph, tensor

pytestmark = pytest.mark.tvm


def test_bidirectional_lstm_with_lengths_peepholes_and_clip_matches_onnxruntime(tmp_path):
    """sequence_lens (a shorter sequence: state kept, Y zero past its end; the reverse direction starts at its own
    last step), initial states, peepholes and clip, as ONNX Runtime computes them."""
    from onnx import TensorProto, helper

    seq, batch, features, hidden = 4, 3, 2, 3
    names = ["X", "W", "R", "B", "lens", "h0", "c0", "P"]
    shapes = [[seq, batch, features], [2, 4 * hidden, features], [2, 4 * hidden, hidden], [2, 8 * hidden], [batch],
              [2, batch, hidden], [2, batch, hidden], [2, 3 * hidden]]
    path = save_graph(tmp_path / "lstm.onnx",
                      [helper.make_node("LSTM", names, ["Y", "Y_h", "Y_c"], hidden_size=hidden, direction="bidirectional", clip=0.9)],
                      [tensor(n, s, TensorProto.INT32 if n == "lens" else TensorProto.FLOAT) for n, s in zip(names, shapes)],
                      [tensor("Y", [seq, 2, batch, hidden]), tensor("Y_h", [2, batch, hidden]), tensor("Y_c", [2, batch, hidden])], opset=14)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(names, shapes)}
    feeds["lens"] = np.array([4, 2, 3], np.int32)
    bundle = build_and_compare(path, tmp_path, feeds)
    assert preflight_report(bundle)["lowered"] == {"LSTM": 1}
    from typer.testing import CliRunner

    from edgepack.cli.app import app

    assert "pre-flight: rewritten into ops TVM imports: LSTM ×1" in CliRunner().invoke(app, ["inspect", str(bundle)]).output


def test_gru_and_rnn_with_their_attributes_match_onnxruntime(tmp_path):
    """GRU reversed, linear_before_reset, HardSigmoid/LeakyRelu with their alphas and betas; RNN with Relu and
    sequence lengths, and one with its default activation."""
    from onnx import TensorProto, helper

    seq, batch, features, hidden = 3, 2, 3, 4
    nodes = [helper.make_node("GRU", ["X", "Wg", "Rg", "Bg"], ["Yg", "Yg_h"], hidden_size=hidden, direction="reverse",
                              linear_before_reset=1, activations=["HardSigmoid", "LeakyRelu"],
                              activation_alpha=[0.3, 0.05], activation_beta=[0.4]),
             helper.make_node("RNN", ["X", "Wr", "Rr", "", "lens"], ["Yr", "Yr_h"], hidden_size=hidden, activations=["Relu"]),
             helper.make_node("RNN", ["X", "Wr", "Rr"], ["", "Yd_h"], hidden_size=hidden)]  # default activation
    shapes = {"X": [seq, batch, features], "Wg": [1, 3 * hidden, features], "Rg": [1, 3 * hidden, hidden], "Bg": [1, 6 * hidden],
              "Wr": [1, hidden, features], "Rr": [1, hidden, hidden]}
    path = save_graph(tmp_path / "gru_rnn.onnx", nodes,
                      [tensor(n, s) for n, s in shapes.items()] + [tensor("lens", [batch], TensorProto.INT32)],
                      [tensor("Yg", [seq, 1, batch, hidden]), tensor("Yg_h", [1, batch, hidden]),
                       tensor("Yr", [seq, 1, batch, hidden]), tensor("Yr_h", [1, batch, hidden]), tensor("Yd_h", [1, batch, hidden])],
                      opset=14)
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    feeds["lens"] = np.array([1, 3], np.int32)
    assert preflight_report(build_and_compare(path, tmp_path, feeds))["lowered"] == {"GRU": 1, "RNN": 2}


def test_scan_with_reversed_input_and_output_matches_onnxruntime(tmp_path):
    """A running sum state and two scan inputs (one read backwards along axis 1), the scan output stacked on
    axis 1 in reverse."""
    from onnx import helper

    body = helper.make_graph([helper.make_node("Add", ["s_in", "a"], ["s_out"]), helper.make_node("Mul", ["s_out", "c"], ["o"])],
                             "body", [tensor("s_in", [2]), tensor("a", [2]), tensor("c", [2])], [tensor("s_out", [2]), tensor("o", [2])])
    path = save_graph(tmp_path / "scan.onnx",
                      [helper.make_node("Scan", ["s0", "xs", "ys"], ["s", "os"], num_scan_inputs=2, body=body,
                                        scan_input_axes=[0, 1], scan_input_directions=[0, 1], scan_output_axes=[1],
                                        scan_output_directions=[1])],
                      [tensor("s0", [2]), tensor("xs", [5, 2]), tensor("ys", [2, 5])], [tensor("s", [2]), tensor("os", [2, 5])], opset=16)
    rng = np.random.default_rng(2)
    feeds = {"s0": rng.standard_normal(2).astype(np.float32), "xs": rng.standard_normal((5, 2)).astype(np.float32),
             "ys": rng.standard_normal((2, 5)).astype(np.float32)}
    assert preflight_report(build_and_compare(path, tmp_path, feeds))["lowered"] == {"Scan": 1}


def test_indexing_and_math_ops_match_onnx_reference(tmp_path):
    """CumProd (exclusive, reversed; zeros and negatives exact), ReverseSequence, TensorScatter (circular), Col2Im
    (strides, pads), Det (3x3), DFT (onesided, a dft_length that truncates), STFT with a window and BitCast int8 ->
    uint8; ONNX Runtime has no kernel for some of these at opset 26, so the reference is ONNX's evaluator."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))

    nodes = [const("axis", np.array(1, np.int64)), const("image", np.array([4, 5], np.int64)), const("block", np.array([2, 2], np.int64)),
             const("dft_length", np.array(6, np.int64)), const("dft_axis", np.array(1, np.int64)), const("step", np.array(3, np.int64)),
             helper.make_node("CumProd", ["p", "axis"], ["cumprod"], exclusive=1, reverse=1),
             helper.make_node("ReverseSequence", ["r", "lens"], ["reversed"], batch_axis=0, time_axis=1),
             helper.make_node("TensorScatter", ["cache", "update", "where"], ["scattered"], mode="circular"),
             helper.make_node("Col2Im", ["cols", "image", "block"], ["im"], strides=[2, 1], pads=[1, 0, 1, 0]),
             helper.make_node("Det", ["m"], ["det"]),
             helper.make_node("DFT", ["s", "dft_length", "dft_axis"], ["spectrum"], onesided=1),
             helper.make_node("STFT", ["signal", "step", "window"], ["stft"]),
             helper.make_node("BitCast", ["bits"], ["unsigned"], to=TensorProto.UINT8)]
    inputs = {"p": [2, 5], "r": [2, 4, 3], "cache": [2, 1, 4, 3], "update": [2, 1, 2, 3], "cols": [1, 8, 12], "m": [2, 3, 3],
              "s": [2, 8, 1], "signal": [1, 16, 1], "window": [8]}
    path = save_graph(tmp_path / "ops.onnx", nodes,
                      [tensor(n, s) for n, s in inputs.items()] + [tensor("lens", [2], TensorProto.INT64), tensor("where", [2], TensorProto.INT64),
                                                                    tensor("bits", [4], TensorProto.INT8)],
                      [tensor("cumprod", [2, 5]), tensor("reversed", [2, 4, 3]), tensor("scattered", [2, 1, 4, 3]), tensor("im", [1, 2, 4, 5]),
                       tensor("det", [2]), tensor("spectrum", [2, 4, 2]), tensor("stft", [1, 3, 5, 2]),
                       tensor("unsigned", [4], TensorProto.UINT8)], opset=26)
    rng = np.random.default_rng(3)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in inputs.items()}
    feeds["p"][0, 2], feeds["p"][1, 4] = 0.0, -3.0
    feeds["lens"], feeds["where"] = np.array([3, 1], np.int64), np.array([3, 1], np.int64)
    feeds["bits"] = np.array([-1, -128, 127, 0], np.int8)
    feeds = {name: feeds[name] for name in [*inputs, "lens", "where", "bits"]}  # the graph's input order
    report = preflight_report(build_and_compare(path, tmp_path, feeds, reference=onnx_reference_run))
    assert report["lowered"] == {"BitCast": 1, "Col2Im": 1, "CumProd": 1, "DFT": 1, "Det": 1, "ReverseSequence": 1, "STFT": 1, "TensorScatter": 1}


def test_deform_conv_with_groups_strides_pads_and_dilations_matches_onnx_reference(tmp_path):
    """DeformConv with two groups and two offset groups, offsets that move samples off the image (zeros there),
    a mask and a bias; ONNX Runtime has no DeformConv kernel, the reference is ONNX's evaluator."""
    from onnx import helper

    shapes = {"X": [1, 4, 6, 5], "W": [6, 2, 3, 2], "offset": [1, 24, 4, 4], "B": [6], "mask": [1, 12, 4, 4]}
    path = save_graph(tmp_path / "deform.onnx",
                      [helper.make_node("DeformConv", list(shapes), ["Y"], kernel_shape=[3, 2], pads=[1, 0, 2, 1], strides=[2, 1],
                                        dilations=[1, 2], group=2, offset_group=2)],
                      [tensor(n, s) for n, s in shapes.items()], [tensor("Y", [1, 6, 4, 4])], opset=22)
    rng = np.random.default_rng(5)
    feeds = {n: (rng.standard_normal(s) * (2 if n == "offset" else 1)).astype(np.float32) for n, s in shapes.items()}
    assert preflight_report(build_and_compare(path, tmp_path, feeds, reference=onnx_reference_run))["lowered"] == {"DeformConv": 1}


def test_qlinear_matmul_and_blocked_quantization_are_bit_exact(tmp_path):
    """QLinearMatMul (uint8, a float16 multiplier) and blocked QuantizeLinear/DequantizeLinear against ONNX's
    reference, to the integer."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"]),
             helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], axis=1, block_size=2),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"], axis=1, block_size=2)]
    u8, f16 = TensorProto.UINT8, TensorProto.FLOAT16
    path = save_graph(tmp_path / "quant.onnx", nodes,
                      [tensor("a", [2, 4], u8), tensor("sa", [1], f16), tensor("za", [1], u8), tensor("b", [4, 3], u8),
                       tensor("sb", [1], f16), tensor("zb", [1], u8), tensor("sy", [1], f16), tensor("zy", [1], u8),
                       tensor("x", [3, 4]), tensor("scale", [3, 2]), tensor("zero", [3, 2], TensorProto.INT8)],
                      [tensor("y", [2, 3], u8), tensor("q", [3, 4], TensorProto.INT8), tensor("dq", [3, 4])], opset=21)
    rng = np.random.default_rng(4)
    feeds = {"a": rng.integers(0, 256, (2, 4)).astype(np.uint8), "sa": np.array([0.05], np.float16), "za": np.array([120], np.uint8),
             "b": rng.integers(0, 256, (4, 3)).astype(np.uint8), "sb": np.array([0.02], np.float16), "zb": np.array([130], np.uint8),
             "sy": np.array([0.3], np.float16), "zy": np.array([100], np.uint8),
             "x": (rng.standard_normal((3, 4)) * 20).astype(np.float32), "scale": rng.uniform(0.05, 0.5, (3, 2)).astype(np.float32),
             "zero": rng.integers(-10, 10, (3, 2)).astype(np.int8)}
    feeds["x"][0, 0] = 1e4  # saturates
    report = preflight_report(build_and_compare(path, tmp_path, feeds, reference=onnx_reference_run))
    assert report["lowered"] == {"DequantizeLinear": 1, "QLinearMatMul": 1, "QuantizeLinear": 1}


@pytest.mark.parametrize(("node", "shapes", "why"), [
    (("BitCast", {"to": 6}), ([3], [3], 6), "BitCast (no ONNX op TVM imports reinterprets float bits)"),
    (("Det", {}), ([6, 6], [], 1), "Det (a 6x6 matrix is larger than the 4x4 edgepack expands)"),
])
def test_what_cannot_be_rewritten_exactly_is_refused_naming_why(tmp_path, node, shapes, why):
    from onnx import helper

    (op, attrs), (x_shape, y_shape, y_type) = node, shapes
    path = save_graph(tmp_path / "refused.onnx", [helper.make_node(op, ["x"], ["y"], **attrs)], [tensor("x", x_shape)],
                      [tensor("y", y_shape, y_type)], opset=26)
    with pytest.raises(EdgepackError) as refused:
        build(str(path), out_dir=tmp_path / "dist")
    assert str(refused.value).startswith(f"TVM's ONNX frontend does not support these ops: {why};")
