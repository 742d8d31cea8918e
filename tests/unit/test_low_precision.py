"""The float8/float4/int4 conversions pre-flight writes as ONNX subgraphs, bit-exact against ONNX's reference
(ml_dtypes) on a sweep of values: zeros, -0, subnormals, the largest values, overflow, inf, NaN and ties.

The subgraphs run in ONNX Runtime here (no TVM build); tests/tvm/test_low_precision_bundles.py runs them compiled."""

from __future__ import annotations

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402
from onnx.reference.ops.op_cast import cast_to  # noqa: E402

from edgepack.frontends.node_builder import NodeBuilder  # noqa: E402
from edgepack.frontends.low_precision import LOW_TYPES, LowFloat, decode, encode_e8m0, encode_float, encode_int  # noqa: E402
from onnx.numpy_helper import to_float8e8m0  # noqa: E402

FLOATS = {code: low for code, low in LOW_TYPES.items() if isinstance(low, LowFloat) and low.name != "float8_e8m0fnu"}
INTS = {code: low for code, low in LOW_TYPES.items() if not isinstance(low, LowFloat)}


def _run(build, x: np.ndarray, out_type: int) -> np.ndarray:
    b = NodeBuilder("t", 21)
    build(b, "x")
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
                              [helper.make_tensor_value_info("y", out_type, [len(x)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _sweep(low: LowFloat) -> np.ndarray:
    """Every finite value of the type, the midpoints between neighbours (ties) and one float32 step either side,
    beyond the largest value, zeros, inf, NaN and random magnitudes across the whole range."""
    table = low.decode_table()
    finite = np.unique(np.abs(table[np.isfinite(table)]).astype(np.float64))
    mids = (finite[:-1] + finite[1:]) / 2
    top = finite[-1]
    extra = np.array([top * 1.01, top * 1.1, top * 2, 1e30, 3e38, np.inf, 0.0, 1e-30, 1e-45], np.float64)
    values = np.concatenate([finite, mids, extra]).astype(np.float32)
    near = np.concatenate([np.nextafter(values, np.float32(np.inf)), np.nextafter(values, np.float32(0))])
    rng = np.random.default_rng(0)
    spread = (2.0 ** rng.uniform(np.log2(finite[1]) - 3, np.log2(top) + 2, 2000)).astype(np.float32)
    magnitudes = np.concatenate([values, near, spread])
    return np.concatenate([magnitudes, -magnitudes, np.array([np.nan, -0.0], np.float32)]).astype(np.float32)


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("code", sorted(FLOATS))
def test_float_to_low_float_bits_match_onnx_reference(code, saturate):
    low = FLOATS[code]
    x = _sweep(low)
    got = _run(lambda b, name: encode_float(b, name, low, saturate, "y"), x, TensorProto.UINT8)
    want = cast_to(x, code, saturate).view(np.uint8)
    nan = np.isnan(want.view(getattr(ml_dtypes, low.name)).astype(np.float32))
    assert np.array_equal(np.isnan(got.view(getattr(ml_dtypes, low.name)).astype(np.float32)), nan)
    bad = np.flatnonzero((got != want) & ~nan)
    assert bad.size == 0, [(float(x[i]), int(got[i]), int(want[i])) for i in bad[:8]]


@pytest.mark.parametrize("code", sorted(code for code, low in LOW_TYPES.items() if isinstance(low, LowFloat)))
def test_low_float_to_float_is_exact_for_every_bit_pattern(code):
    low = LOW_TYPES[code]
    bits = np.arange(len(low.decode_table()), dtype=np.uint8)
    b = NodeBuilder("t", 21)
    b.op("Identity", decode(b, "x", low), out="y")
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [len(bits)])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(bits)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": bits})[0]
    want = bits.view(getattr(ml_dtypes, low.name)).astype(np.float32)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(np.signbit(got[~np.isnan(got)]), np.signbit(want[~np.isnan(want)]))  # -0 stays -0


@pytest.mark.parametrize("code", sorted(INTS))
def test_float_to_int4_and_int2_truncates_and_wraps_as_onnx_reference(code):
    low = INTS[code]
    x = np.concatenate([np.arange(-40, 40, 0.25), [-0.0, 127.9, -128.5, 1000.0]]).astype(np.float32)
    got = _run(lambda b, name: encode_int(b, name, TensorProto.FLOAT, low, "y"), x, low.container)
    want = cast_to(x, code, True).astype(np.int8 if low.signed else np.uint8)
    assert np.array_equal(got, want), [(float(v), int(g), int(w)) for v, g, w in zip(x, got, want) if g != w][:8]


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
def test_float_to_float8e8m0_bits_match_onnx_reference(round_mode, saturate):
    powers = 2.0 ** np.arange(-149, 128, dtype=np.float64)
    values = np.concatenate([powers, powers * 1.5, powers * 1.25, powers * 1.75, [0.0, 3e38, 3.4e38, 1e-40, 2.0 ** -127 * 1.0000001]])
    magnitudes = np.concatenate([values.astype(np.float32), np.nextafter(values.astype(np.float32), np.float32(np.inf)),
                                 np.nextafter(values.astype(np.float32), np.float32(0))])
    x = np.concatenate([magnitudes, -magnitudes, np.array([np.nan, np.inf, -np.inf, -0.0], np.float32)]).astype(np.float32)
    x = x[np.isfinite(x) | np.isnan(x) | np.isinf(x)]
    got = _run(lambda b, name: encode_e8m0(b, name, saturate, round_mode, "y"), x, TensorProto.UINT8)
    want = to_float8e8m0(x, saturate, round_mode).view(np.uint8)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(float(x[i]), int(got[i]), int(want[i])) for i in bad[:8]]
