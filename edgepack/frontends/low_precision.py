"""Carry ONNX's sub-byte and 8-bit float element types through TVM in byte containers.

TVM 0.27's CPU casts to and from float8 are wrong (docs/coverage.md), and int4/uint4, int2/uint2, float4e2m1
and float8e8m0 have no TVM type. Pre-flight therefore gives every such value a container TVM handles: the
floats travel as their raw bits in uint8, the integers as their values in int8/uint8 (one value per byte).
Only the conversions need rewriting, as ONNX subgraphs of ops TVM imports correctly:

- float8/float4/e8m0 -> float: a Gather from an exact float32 table of every bit pattern;
- float -> float8/float4 (Cast, CastLike, QuantizeLinear): float arithmetic. The binade comes from a ladder of
  power-of-two thresholds, the magnitude is rounded to a multiple of the binade's quantum with Round (half to
  even), and `binade * 2**mantissa_bits + rounded / quantum` is then the bit pattern of the magnitude; overflow
  saturates or becomes inf/NaN as the `saturate` attribute says, the sign bit follows the fn/fnuz convention;
- float -> float8e8m0 (Cast): the ladder gives the exponent, `round_mode` whether to raise it by one;
- float/int -> int4/int2 (Cast): truncation and wrapping, as ONNX's reference (ml_dtypes) converts;
  QuantizeLinear to int4/int2 quantizes to int8/uint8 and clips to the narrow range.

Everything else that touches such a value must only move it (Identity, Reshape, ...); other nodes are refused in
one line naming the type. Conversions from float64 straight to float8 or float4 (which would round twice) are
refused likewise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.frontends.node_builder import NodeBuilder, attributes

_FLOAT, _UINT8, _INT8, _INT32, _INT64, _FLOAT16, _DOUBLE, _BFLOAT16 = 1, 2, 3, 6, 7, 10, 11, 16


@dataclass(frozen=True)
class LowFloat:
    """A float type of at most 8 bits, carried as raw bits in uint8."""

    name: str  # ml_dtypes' name, also the manifest's dtype
    mantissa_bits: int
    bias: int
    max_code: int  # the largest finite magnitude's bit pattern
    sign_bit: int
    nan_code: int  # the bit pattern written for NaN
    overflow_code: int | None  # magnitude bits for overflow without saturation (inf or NaN; None: always saturates)
    unsigned_zero: bool  # fnuz: no negative zero (0x80 is NaN)

    @property
    def container(self) -> int:
        return _UINT8

    def decode_table(self) -> np.ndarray:
        """float32 value of every bit pattern (exact: each value is a float32)."""
        import ml_dtypes

        count = 256 if self.sign_bit == 0x80 or self.sign_bit == 0 else 2 * self.sign_bit
        return np.arange(count, dtype=np.uint8).view(getattr(ml_dtypes, self.name)).astype(np.float32)


@dataclass(frozen=True)
class LowInt:
    """An integer type of 2 or 4 bits, carried by value in int8 or uint8."""

    name: str
    bits: int
    signed: bool

    @property
    def container(self) -> int:
        return _INT8 if self.signed else _UINT8

    @property
    def range(self) -> tuple[int, int]:
        return (-(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1) if self.signed else (0, (1 << self.bits) - 1)


LOW_TYPES = {
    17: LowFloat("float8_e4m3fn", 3, 7, 0x7E, 0x80, 0x7F, 0x7F, False),
    18: LowFloat("float8_e4m3fnuz", 3, 8, 0x7F, 0x80, 0x80, 0x80, True),
    19: LowFloat("float8_e5m2", 2, 15, 0x7B, 0x80, 0x7E, 0x7C, False),
    20: LowFloat("float8_e5m2fnuz", 2, 16, 0x7F, 0x80, 0x80, 0x80, True),
    21: LowInt("uint4", 4, False),
    22: LowInt("int4", 4, True),
    23: LowFloat("float4_e2m1fn", 1, 1, 0x7, 0x8, 0x8, None, False),  # no NaN: ml_dtypes (ONNX's reference) writes -0
    24: LowFloat("float8_e8m0fnu", 0, 127, 0xFE, 0, 0xFF, 0xFF, True),  # encoded by encode_e8m0
    25: LowInt("uint2", 2, False),
    26: LowInt("int2", 2, True),
}
# nodes that only move values, whatever their type: they work on the containers unchanged
_MOVERS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Gather",
           "GatherElements", "GatherND", "Expand", "Tile", "Shape", "Size", "Constant", "Pad", "DepthToSpace", "SpaceToDepth"}


def _refuse(what: str, low, why: str):
    raise EdgepackError(f"{what} on {low.name} ({why})", "keep such values in float16 or float32 in the model")


def decode(b: NodeBuilder, bits: str, low) -> str:
    """float32 values of container `bits` (a table lookup for floats, a cast for integers)."""
    if isinstance(low, LowInt):
        return b.op("Cast", bits, to=_FLOAT)
    index = b.op("Cast", bits, to=_INT64)
    return b.op("Gather", b.const(low.decode_table(), np.float32), index, axis=0)


def encode_float(b: NodeBuilder, x: str, low: LowFloat, saturate: bool, output: str | None = None) -> str:
    """uint8 bit patterns of float32 `x` rounded to `low` (nearest even), as ONNX's Cast with `saturate`."""
    m = low.mantissa_bits
    emin = 1 - low.bias
    emax = (low.max_code >> m) - low.bias
    thresholds = np.array([2.0 ** (emin + j) for j in range(1, emax - emin + 1)], np.float32)
    quanta = np.array([2.0 ** (emin + j - m) for j in range(len(thresholds) + 1)], np.float64)
    magnitude = b.op("Abs", x)
    column = b.op("Unsqueeze", magnitude, b.const([-1], np.int64))
    above = b.op("Cast", b.op("GreaterOrEqual", column, b.const(thresholds, np.float32)), to=_FLOAT)
    binade = b.op("ReduceSum", above, b.const([-1], np.int64), keepdims=0)
    index = b.op("Cast", binade, to=_INT64)
    scaled = b.op("Mul", magnitude, b.op("Gather", b.const((1 / quanta).astype(np.float32), np.float32), index, axis=0))
    steps = b.op("Round", scaled)  # exact scaling by a power of two, then half to even
    code = b.op("Add", b.op("Mul", binade, b.const(float(1 << m), np.float32)), steps)
    overflow = b.op("Greater", code, b.const(float(low.max_code), np.float32))
    if saturate or low.overflow_code is None:
        code = b.op("Min", code, b.const(float(low.max_code), np.float32))
    negative = b.op("Or", b.op("Less", x, b.const(0.0, np.float32)),  # -0: 1/x is -inf
                           b.op("Less", b.op("Div", b.const(1.0, np.float32), x), b.const(0.0, np.float32)))
    if low.unsigned_zero:
        negative = b.op("And", negative, b.op("Greater", code, b.const(0.0, np.float32)))
    sign = b.op("Mul", b.op("Cast", negative, to=_FLOAT), b.const(float(low.sign_bit), np.float32))
    bits = b.op("Add", code, sign)
    if not saturate and low.overflow_code is not None:
        overflowed = low.overflow_code if low.unsigned_zero else b.op("Add", b.const(float(low.overflow_code), np.float32), sign)
        bits = b.op("Where", overflow, overflowed if isinstance(overflowed, str) else b.const(float(overflowed), np.float32), bits)
    bits = b.op("Where", b.op("IsNaN", x), b.const(float(low.nan_code), np.float32), bits)
    return b.op("Cast", bits, out=output, to=_UINT8)


def encode_e8m0(b: NodeBuilder, x: str, saturate: bool, round_mode: str, output: str | None = None) -> str:
    """uint8 bits of float32 `x` as float8e8m0 (a power of two), as ONNX's reference converts: the exponent of |x|
    (0 below the smallest normal float32), raised by one when `round_mode` says (up: |x| is no power of two;
    nearest: |x| >= 1.5 times it, or above 2**-127 below the normals), never past 254 when saturating; inf and
    NaN give 255."""
    magnitude = b.op("Abs", x)
    powers = np.array([2.0 ** (k - 127) for k in range(1, 255)], np.float32)
    column = b.op("Unsqueeze", magnitude, b.const([-1], np.int64))
    exponent = b.op("ReduceSum", b.op("Cast", b.op("GreaterOrEqual", column, b.const(powers, np.float32)), to=_FLOAT),
                                  b.const([-1], np.int64), keepdims=0)
    power = b.op("Gather", b.const(np.concatenate([[0.0], powers]).astype(np.float32), np.float32), b.op("Cast", exponent, to=_INT64), axis=0)
    if round_mode == "up":
        raise_by_one = b.op("Not", b.op("Equal", magnitude, power))
    elif round_mode == "nearest":
        below_normals = b.op("Equal", exponent, b.const(0.0, np.float32))
        raise_by_one = b.op("Or", b.op("And", below_normals, b.op("Greater", magnitude, b.const(2.0 ** -127, np.float32))),
                                   b.op("And", b.op("Not", below_normals),
                                                b.op("GreaterOrEqual", magnitude, b.op("Mul", power, b.const(1.5, np.float32)))))
    elif round_mode != "down":
        raise EdgepackError(f"Cast to float8_e8m0fnu has round_mode '{round_mode}'", "use up, down or nearest")
    code = exponent
    if round_mode != "down":
        if saturate:
            raise_by_one = b.op("And", raise_by_one, b.op("Less", exponent, b.const(254.0, np.float32)))
        code = b.op("Add", exponent, b.op("Cast", raise_by_one, to=_FLOAT))
    special = b.op("Or", b.op("IsNaN", x), b.op("IsInf", x))
    return b.op("Cast", b.op("Where", special, b.const(255.0, np.float32), code), out=output, to=_UINT8)


def encode_int(b: NodeBuilder, x: str, source: int, low: LowInt, output: str | None = None) -> str:
    """Container values of `x` cast to `low`: truncated toward zero, then wrapped to `low.bits` bits."""
    value = x if source == _INT32 else b.op("Cast", x, to=_INT32)
    wrapped = b.op("BitwiseAnd", value, b.const((1 << low.bits) - 1, np.int32))
    if low.signed:
        top = 1 << (low.bits - 1)
        negative = b.op("GreaterOrEqual", wrapped, b.const(top, np.int32))
        wrapped = b.op("Where", negative, b.op("Sub", wrapped, b.const(1 << low.bits, np.int32)), wrapped)
    return b.op("Cast", wrapped, out=output, to=low.container)


def _to_float32(b: NodeBuilder, name: str, elem_type: int, what: str, target) -> str:
    """`name` as float32 values (low types decoded); float64 is refused (it would round twice)."""
    if elem_type in LOW_TYPES:
        return decode(b, name, LOW_TYPES[elem_type])
    if elem_type == _DOUBLE and isinstance(target, LowFloat):
        _refuse(what, target, "from float64 it would round twice")
    return name if elem_type == _FLOAT else b.op("Cast", name, to=_FLOAT)


def _cast(node, b: NodeBuilder, source: int, to: int, saturate: bool, round_mode: str = "up") -> None:
    x, y = node.input[0], node.output[0]
    what = f"{node.op_type} '{node.name or y}'"
    target = LOW_TYPES.get(to)
    if target is None:  # from a low type to an ordinary one
        low = LOW_TYPES[source]
        if isinstance(low, LowInt):
            b.op("Cast", x, out=y, to=to)
        else:
            b.op("Cast", decode(b, x, low), out=y, to=to)
        return
    if target.name == "float8_e8m0fnu":  # ONNX's reference reads float32 first (from float64 too)
        x32 = decode(b, x, LOW_TYPES[source]) if source in LOW_TYPES else x if source == _FLOAT else b.op("Cast", x, to=_FLOAT)
        encode_e8m0(b, x32, saturate, round_mode, y)
        return
    if isinstance(target, LowFloat):
        encode_float(b, _to_float32(b, x, source, what, target), target, saturate, y)
        return
    if source in LOW_TYPES and isinstance(LOW_TYPES[source], LowInt):
        encode_int(b, x, LOW_TYPES[source].container, target, y)
    elif source in LOW_TYPES:
        encode_int(b, decode(b, x, LOW_TYPES[source]), _FLOAT, target, y)
    else:
        encode_int(b, x, source, target, y)


def _per_axis(b: NodeBuilder, name: str, rank: int | None, axis: int, x_rank: int) -> str:
    """A 1-D (`rank`) per-axis `name` (scale or zero point) unsqueezed to broadcast along `axis` of a rank-`x_rank` tensor."""
    if rank != 1 or x_rank <= 1:
        return name
    axis %= x_rank
    return b.op("Unsqueeze", name, b.const([a for a in range(x_rank) if a != axis], np.int64))


def _quantize(node, b: NodeBuilder, types: dict[str, int], rank_of) -> None:
    node_attributes = attributes(node)
    zero_type = types.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    target = LOW_TYPES[zero_type or node_attributes.get("output_dtype")]
    what = f"QuantizeLinear '{node.name or node.output[0]}'"
    if isinstance(target, LowInt):  # quantized to the container's type, then clipped to the narrow range
        quantized = b.fresh("quantized")
        node_copy = type(node)()
        node_copy.CopyFrom(node)
        node_copy.output[0] = quantized
        for attribute in node_copy.attribute:
            if attribute.name == "output_dtype":
                attribute.i = target.container
        b.nodes.append(node_copy)
        dtype = np.int8 if target.signed else np.uint8
        b.op("Clip", quantized, b.const(target.range[0], dtype), b.const(target.range[1], dtype), out=node.output[0])
        return
    if target.name == "float8_e8m0fnu":  # not a QuantizeLinear type in ONNX
        _refuse(what, target, "ONNX does not quantize to it")
    x_type, x_rank = types.get(node.input[0]), rank_of(node.input[0])
    if x_type is None or x_rank is None:
        _refuse(what, target, "the input's type or rank is unknown")
    axis = node_attributes.get("axis", 1)
    scale = _per_axis(b, node.input[1], rank_of(node.input[1]), axis, x_rank)
    x = node.input[0]
    if x_type != types.get(node.input[1]):  # numpy's promotion, as ONNX's reference divides: float32
        x_type, x, scale = _FLOAT, b.op("Cast", x, to=_FLOAT), b.op("Cast", scale, to=_FLOAT)
    ratio = _to_float32(b, b.op("Div", x, scale), x_type, what, target)
    if zero_type == 23:  # float4: ONNX's reference adds the zero point (float8 ignores it)
        ratio = b.op("Add", ratio, _per_axis(b, decode(b, node.input[2], target), rank_of(node.input[2]), axis, x_rank))
    encode_float(b, ratio, target, bool(node_attributes.get("saturate", 1)), node.output[0])


def _dequantize(node, b: NodeBuilder, types: dict[str, int], rank_of) -> bool:
    """DequantizeLinear of a low float as (decoded x - decoded zero point) * scale; False for low ints (their
    containers dequantize as they are)."""
    low = LOW_TYPES[types[node.input[0]]]
    if isinstance(low, LowInt):
        return False
    x_rank, axis = rank_of(node.input[0]), attributes(node).get("axis", 1)
    if x_rank is None:
        _refuse(f"DequantizeLinear '{node.name or node.output[0]}'", low, "the input's rank is unknown")
    value = decode(b, node.input[0], low)
    if len(node.input) > 2 and node.input[2]:
        value = b.op("Sub", value, _per_axis(b, decode(b, node.input[2], low), rank_of(node.input[2]), axis, x_rank))
    scale = node.input[1]
    scale_type = types.get(scale, _FLOAT)
    if scale_type != _FLOAT:
        scale = b.op("Cast", scale, to=_FLOAT)
    product = b.op("Mul", value, _per_axis(b, scale, rank_of(node.input[1]), axis, x_rank))
    out_type = types.get(node.output[0]) or scale_type  # output_dtype (opset 23) or the scale's type
    b.op("Cast", product, out=node.output[0], to=out_type) if out_type != _FLOAT else b.op("Identity", product, out=node.output[0])
    return True


def _containers(model, types: dict[str, int]) -> int:
    """Give graph inputs, outputs, value infos, initializers and Constant values their container types."""
    from onnx import numpy_helper

    changed = 0
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        low = LOW_TYPES.get(value.type.tensor_type.elem_type)
        if low is not None:
            value.type.tensor_type.elem_type = low.container
            changed += 1
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                                               if a.name == "value"]
    for tensor in tensors:
        low = LOW_TYPES.get(tensor.data_type)
        if low is not None:
            tensor.CopyFrom(numpy_helper.from_array(to_container(numpy_helper.to_array(tensor), low), tensor.name))
            changed += 1
    return changed


def to_container(array: np.ndarray, low) -> np.ndarray:
    """An ml_dtypes array of a low type as its container: raw bits (floats) or values (integers)."""
    if isinstance(low, LowInt):
        return array.astype(np.int8 if low.signed else np.uint8)
    return np.ascontiguousarray(array).view(np.uint8)


def _has_low_types(model, types: dict[str, int]) -> bool:
    return any(t in LOW_TYPES for t in types.values()) or any(i.data_type in LOW_TYPES for i in model.graph.initializer) \
        or any(a.t.data_type in LOW_TYPES for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value")


def carry_low_precision(model) -> dict[str, int]:
    """Rewrite the conversions of low-precision values and retype those values to their containers (in place);
    returns {op type: how many were rewritten}. Refuses, in one line, what cannot be carried exactly."""
    from onnx import AttributeProto

    types = {value.name: value.type.tensor_type.elem_type
             for value in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            types[node.output[0]] = node.attribute[0].t.data_type
    if not _has_low_types(model, types):
        return {}
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    ranks = {value.name: len(value.type.tensor_type.shape.dim)
             for value in (*model.graph.input, *model.graph.value_info, *model.graph.output)
             if value.type.tensor_type.HasField("shape")}
    ranks.update({init.name: len(init.dims) for init in model.graph.initializer})
    rank_of = ranks.get
    rewritten: dict[str, int] = {}
    nodes = []
    for node in model.graph.node:
        touched = [types.get(name) for name in (*node.input, *node.output) if types.get(name) in LOW_TYPES]
        if not touched:
            nodes.append(node)
            continue
        if node.domain not in ("", "ai.onnx") or any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
            _refuse(f"{node.op_type} '{node.name or node.output[0]}'", LOW_TYPES[touched[0]], "edgepack carries it as raw bits or "
                    "bytes; only conversions and data movement can use it")
        b = NodeBuilder(f"{node.output[0]}__low", opset)
        node_attributes = attributes(node)
        if node.op_type in ("Cast", "CastLike"):
            to = node_attributes["to"] if node.op_type == "Cast" else types.get(node.input[1])
            source = types.get(node.input[0])
            if to is None or source is None:
                _refuse(f"{node.op_type} '{node.name or node.output[0]}'", LOW_TYPES[touched[0]], "an operand's type is unknown")
            if source == to:
                b.op("Identity", node.input[0], out=node.output[0])
            else:
                _cast(node, b, source, to, bool(node_attributes.get("saturate", 1)), node_attributes.get("round_mode", "up"))
        elif node.op_type == "QuantizeLinear" and types.get(node.output[0]) in LOW_TYPES:
            _quantize(node, b, types, rank_of)
        elif node.op_type == "DequantizeLinear" and types.get(node.input[0]) in LOW_TYPES:
            if not _dequantize(node, b, types, rank_of):
                nodes.append(node)
                continue
        elif node.op_type in _MOVERS:
            nodes.append(node)
            continue
        else:
            _refuse(f"{node.op_type} '{node.name or node.output[0]}'", LOW_TYPES[touched[0]], "edgepack carries it as raw bits or "
                    "bytes; only conversions and data movement can use it")
        nodes.extend(b.nodes)
        rewritten[node.op_type] = rewritten.get(node.op_type, 0) + 1
    _containers(model, types)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def carried_dtypes(model) -> dict[str, str]:
    """{graph input or output name: its low type's name} (before carry_low_precision retypes them)."""
    return {value.name: LOW_TYPES[value.type.tensor_type.elem_type].name
            for value in (*model.graph.input, *model.graph.output) if value.type.tensor_type.elem_type in LOW_TYPES}
