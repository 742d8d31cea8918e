"""QLinearMatMul (no TVM converter) and blocked QuantizeLinear/DequantizeLinear (TVM ignores block_size) as
integer and float arithmetic with ONNX's rounding; BitCast between integers of one width as Cast.

QLinearMatMul is an int32 MatMul of the zero-point-shifted operands, requantized in float64 by the
multiplier a_scale * b_scale / y_scale computed in the scales' type (as ONNX's reference computes it),
rounded half to even, shifted by y_zero_point and saturated. Blocked scales and zero points are repeated
over their blocks (a constant Gather along the axis) and applied elementwise."""

from __future__ import annotations

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from edgepack.frontends.node_builder import CannotLower, GraphFacts, NodeBuilder, attributes

_FLOAT, _DOUBLE, _INT32 = 1, 11, 6
_BOOL = 9
_SAME_WIDTH_INTEGERS = {2, 3, 4, 5, 6, 7, 12, 13, _BOOL}  # uint8 int8 uint16 int16 int32 int64 uint32 uint64 bool
_RANGES = {2: (0, 255), 3: (-128, 127), 4: (0, 65535), 5: (-32768, 32767)}  # uint8, int8, uint16, int16


def _saturated(b: NodeBuilder, value: str, elem_type: int, dtype, out: str) -> str:
    low, high = _RANGES[elem_type]
    clipped = b.op("Min", b.op("Max", value, b.const(np.array(low, dtype))), b.const(np.array(high, dtype)))
    return b.op("Cast", clipped, out=out, to=elem_type)


def lower_qlinear_matmul(node, facts: GraphFacts) -> NodeBuilder:
    """QLinearMatMul as MatMul of int32 operands and a float64 requantization."""
    a, a_scale, a_zero, m, m_scale, m_zero, y_scale, y_zero = list(node.input) + [""] * (8 - len(node.input))
    out_type = facts.types.get(y_zero) if y_zero else facts.types.get(a)
    if out_type not in _RANGES:
        raise CannotLower(f"element type {out_type} (8- and 16-bit integers only)")
    b = NodeBuilder(f"{node.output[0]}__qlinear", facts.opset)

    def shifted(value: str, zero: str) -> str:
        wide = b.op("Cast", value, to=_INT32)
        return b.op("Sub", wide, b.op("Cast", zero, to=_INT32)) if zero else wide

    product = b.op("Cast", b.op("MatMul", shifted(a, a_zero), shifted(m, m_zero)), to=_DOUBLE)
    multiplier = b.op("Cast", b.op("Div", b.op("Mul", a_scale, m_scale), y_scale), to=_DOUBLE)
    scaled = b.op("Round", b.op("Mul", product, multiplier))
    if y_zero:
        scaled = b.op("Add", scaled, b.op("Cast", y_zero, to=_DOUBLE))
    _saturated(b, scaled, out_type, np.float64, node.output[0])
    return b


def blocked(node) -> bool:
    """Whether a QuantizeLinear/DequantizeLinear node quantizes in blocks (block_size set)."""
    return bool(attributes(node).get("block_size", 0))


def _per_element(b: NodeBuilder, value: str, axis: int, block: int, length: int) -> str:
    """A blocked scale or zero point repeated over its blocks along `axis` (length `length`)."""
    return b.op("Gather", value, b.const(np.arange(length, dtype=np.int64) // block), axis=axis)


def lower_blocked_dequantize(node, facts: GraphFacts) -> NodeBuilder:
    """Blocked DequantizeLinear as (x - zero point) * scale in float32, cast to the scale's type."""
    attrs = attributes(node)
    x, scale, zero = list(node.input) + [""] * (3 - len(node.input))
    shape = facts.static_shape(x, "DequantizeLinear", "input")
    if facts.types.get(x) not in _RANGES and facts.types.get(x) != _INT32:
        raise CannotLower(f"blocked dequantization of element type {facts.types.get(x)}")
    axis = attrs.get("axis", 1) % len(shape)
    block = attrs["block_size"]
    b = NodeBuilder(f"{node.output[0]}__dequantize", facts.opset)
    value = b.op("Cast", x, to=_FLOAT)
    if zero:
        value = b.op("Sub", value, b.op("Cast", _per_element(b, zero, axis, block, shape[axis]), to=_FLOAT))
    value = b.op("Mul", value, b.op("Cast", _per_element(b, scale, axis, block, shape[axis]), to=_FLOAT))
    b.op("Cast", value, out=node.output[0], to=attrs.get("output_dtype") or facts.types[scale])
    return b


def lower_blocked_quantize(node, facts: GraphFacts) -> NodeBuilder:
    """Blocked QuantizeLinear as round-half-even(x / scale) + zero point, saturated."""
    attrs = attributes(node)
    x, scale, zero = list(node.input) + [""] * (3 - len(node.input))
    shape = facts.static_shape(x, "QuantizeLinear", "input")
    out_type = facts.types.get(zero) if zero else attrs.get("output_dtype") or 2
    if out_type not in _RANGES:
        raise CannotLower(f"blocked quantization to element type {out_type} (8- and 16-bit integers only)")
    axis = attrs.get("axis", 1) % len(shape)
    block = attrs["block_size"]
    b = NodeBuilder(f"{node.output[0]}__quantize", facts.opset)
    full_scale = _per_element(b, scale, axis, block, shape[axis])
    if facts.types.get(x) != facts.types.get(scale):
        x, full_scale = b.op("Cast", x, to=_FLOAT), b.op("Cast", full_scale, to=_FLOAT)
    quotient_type = facts.types[x] if x in facts.types else _FLOAT
    value = b.op("Round", b.op("Div", x, full_scale))
    if zero:
        value = b.op("Add", value, b.op("Cast", _per_element(b, zero, axis, block, shape[axis]), to=quotient_type))
    _saturated(b, value, out_type, tensor_dtype_to_np_dtype(quotient_type), node.output[0])
    return b


def lower_bitcast(node, facts: GraphFacts) -> NodeBuilder:
    """BitCast between integer types of one width (bool to an 8-bit integer too) as Cast, which keeps the bits (two's
    complement wraps); float bits stay refused: no ONNX op TVM imports reinterprets them."""
    source, target = facts.types.get(node.input[0]), attributes(node)["to"]
    if source not in _SAME_WIDTH_INTEGERS or target not in _SAME_WIDTH_INTEGERS or target == _BOOL \
            or tensor_dtype_to_np_dtype(source).itemsize != tensor_dtype_to_np_dtype(target).itemsize:
        raise CannotLower("no ONNX op TVM imports reinterprets float bits")
    b = NodeBuilder(f"{node.output[0]}__bitcast", facts.opset)
    b.op("Cast", node.input[0], out=node.output[0], to=target)
    return b
