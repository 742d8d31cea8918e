"""Rewrite ONNX nodes TVM imports but cannot compile into equivalent nodes it can.

`Sinh`/`Cosh` lower to `tirx.sinh`/`tirx.cosh`, intrinsics LLVM has no lowering for on x86-64
("unknown intrinsic tirx.cosh"); as exponentials they compile everywhere. `Pow` of integers ("power
only applies to float") runs in float64 and casts back, an exponent of another type is cast to the base's;
`ReduceMin`/`ReduceMax` of bool ("Cannot decide max_value") reduce uint8; `OneHot`'s float depth (TVM
passes it on as a float) becomes an int64 constant, its float indices are cast to int64, a negative
axis below -1 counted from the front and its result cast to the values' type. `LpNormalization`, which
TVM has no converter for, becomes a division by ReduceL1/ReduceL2; `IsInf` with one sign switched off
(TVM's converter ignores the switches) is IsInf and a comparison with 0. A node that computes on bfloat16
(TVM's converters mix it with float32 constants, and x86/arm64 have no bfloat16 arithmetic) runs in float32
between casts: every bfloat16 value is a float32, and its bfloat16 results are rounded back as ONNX Runtime's
kernels round them. Constants of value_int(s)/value_float(s) (TVM reads only `value`) hold tensors; Unsqueeze's and Squeeze's 0-d
constant axes become 1-D. `Resize`'s `axes` attribute (TVM ignores it) becomes roi, scales or sizes for every axis. `BitShift` by a negative amount or by at least the width (undefined in the generated
code) gives what ONNX says: the sign fill of a signed right shift, else 0. Float `Mod` with fmod 0 (TVM's
floor_mod is `a - floor(a / b) * b`: NaN for an infinite divisor) is computed as numpy's `mod` is, from the
truncated remainder (fmod 1): moved by b where its sign differs from b's, a zero remainder taking b's sign."""

from __future__ import annotations

import numpy as np


def _elem_types(model) -> dict[str, int]:
    return {value.name: value.type.tensor_type.elem_type
            for value in (*model.graph.input, *model.graph.value_info, *model.graph.output)}


def _ranks(model) -> dict[str, int]:
    return {value.name: len(value.type.tensor_type.shape.dim)
            for value in (*model.graph.input, *model.graph.value_info, *model.graph.output)
            if value.type.tensor_type.HasField("shape")}


def _hyperbolic(node, elem_type: int, sign: float) -> list:
    """(exp(x) + sign * exp(-x)) / 2 as nodes writing the node's output."""
    from onnx import helper, numpy_helper
    from onnx.helper import tensor_dtype_to_np_dtype

    x, y, stem = node.input[0], node.output[0], f"{node.output[0]}__legalized"
    half = numpy_helper.from_array(np.array(0.5, dtype=tensor_dtype_to_np_dtype(elem_type)))
    combine = "Add" if sign > 0 else "Sub"
    return [helper.make_node("Neg", [x], [f"{stem}_neg"]),
            helper.make_node("Exp", [x], [f"{stem}_exp"]),
            helper.make_node("Exp", [f"{stem}_neg"], [f"{stem}_exp_neg"]),
            helper.make_node(combine, [f"{stem}_exp", f"{stem}_exp_neg"], [f"{stem}_sum"]),
            helper.make_node("Constant", [], [f"{stem}_half"], value=half),
            helper.make_node("Mul", [f"{stem}_sum", f"{stem}_half"], [y])]


_FLOATS = {1, 10, 11}  # FLOAT, FLOAT16, DOUBLE
_DOUBLE, _UINT8, _BOOL, _INT64 = 11, 2, 9, 7


def _cast(source: str, target: str, to: int):
    from onnx import helper

    return helper.make_node("Cast", [source], [target], to=to)


def _pow(node, types: dict[str, int]) -> list | None:
    """Pow with an integer base in float64 (cast back), or with the exponent cast to the base's float type."""
    from onnx import helper

    base, exponent = types.get(node.input[0]), types.get(node.input[1])
    if not base or not exponent or (base in _FLOATS and exponent == base):
        return None
    stem = f"{node.output[0]}__legalized"
    if base in _FLOATS:
        return [_cast(node.input[1], f"{stem}_exponent", base),
                helper.make_node("Pow", [node.input[0], f"{stem}_exponent"], node.output)]
    return [_cast(node.input[0], f"{stem}_base", _DOUBLE), _cast(node.input[1], f"{stem}_exponent", _DOUBLE),
            helper.make_node("Pow", [f"{stem}_base", f"{stem}_exponent"], [f"{stem}_power"]),
            _cast(f"{stem}_power", node.output[0], base)]


def _bool_reduce(node, types: dict[str, int]) -> list | None:
    """ReduceMin/ReduceMax of bool as the same reduction of uint8, cast back to bool."""
    from onnx import helper

    if types.get(node.input[0]) != _BOOL:
        return None
    stem = f"{node.output[0]}__legalized"
    reduce = helper.make_node(node.op_type, [f"{stem}_uint8", *node.input[1:]], [f"{stem}_reduced"])
    reduce.attribute.extend(node.attribute)
    return [_cast(node.input[0], f"{stem}_uint8", _UINT8), reduce, _cast(f"{stem}_reduced", node.output[0], _BOOL)]


def _constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in model.graph.node
            if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value"}


def _one_hot(node, types: dict[str, int], ranks: dict[str, int], constants: dict[str, np.ndarray]) -> list | None:
    """OneHot with float indices cast to int64 first (as ONNX says), a constant float depth read from an
    int64 constant of the same value, a negative axis counted from the front (TVM indexes with it), and its
    result cast to the values' type (TVM's is int64 or float64 whatever the values' type)."""
    from onnx import helper, numpy_helper

    depth = constants.get(node.input[1])
    values_type = types.get(node.input[2])
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    stem = f"{node.output[0]}__legalized"
    nodes = []
    indices, depth_name = node.input[0], node.input[1]
    if types.get(node.input[0]) in _FLOATS:
        indices = f"{stem}_indices"
        nodes.append(_cast(node.input[0], indices, _INT64))
    if depth is not None and np.issubdtype(depth.dtype, np.floating):
        depth_name = f"{stem}_depth"
        nodes.append(helper.make_node("Constant", [], [depth_name], value=numpy_helper.from_array(depth.astype(np.int64))))
    if axis < -1 and node.input[0] in ranks:
        axis += ranks[node.input[0]] + 1
    if not values_type:
        return nodes + [helper.make_node("OneHot", [indices, depth_name, node.input[2]], node.output, axis=axis)] if nodes else None
    return nodes + [helper.make_node("OneHot", [indices, depth_name, node.input[2]], [f"{stem}_one_hot"], axis=axis),
                    _cast(f"{stem}_one_hot", node.output[0], values_type)]


def _lp_normalization(node, elem_type: int, opset: int) -> list:
    """LpNormalization (no TVM converter) as x / ReduceL1 or ReduceL2 of x along its axis."""
    from onnx import helper, numpy_helper
    from onnx.helper import tensor_dtype_to_np_dtype

    attributes = {a.name: a.i for a in node.attribute}
    axis, p = attributes.get("axis", -1), attributes.get("p", 2)
    stem = f"{node.output[0]}__legalized"
    reduce = "ReduceL1" if p == 1 else "ReduceL2"
    if opset >= 18:  # axes became an input
        nodes = [helper.make_node("Constant", [], [f"{stem}_axes"], value=numpy_helper.from_array(np.array([axis], np.int64))),
                 helper.make_node(reduce, [node.input[0], f"{stem}_axes"], [f"{stem}_norm"], keepdims=1)]
    else:
        nodes = [helper.make_node(reduce, [node.input[0]], [f"{stem}_norm"], axes=[axis], keepdims=1)]
    zero = numpy_helper.from_array(np.array(0, dtype=tensor_dtype_to_np_dtype(elem_type)))
    return nodes + [helper.make_node("Div", [node.input[0], f"{stem}_norm"], [f"{stem}_quotient"]),
                    helper.make_node("Constant", [], [f"{stem}_zero"], value=zero),
                    helper.make_node("Equal", [f"{stem}_norm", f"{stem}_zero"], [f"{stem}_zero_norm"]),
                    # a zero norm means a zero slice: ONNX gives 0 there, not 0/0
                    helper.make_node("Where", [f"{stem}_zero_norm", node.input[0], f"{stem}_quotient"], node.output)]


def _is_inf(node, elem_type: int) -> list | None:
    """IsInf with detect_positive or detect_negative off (TVM's converter ignores both) as IsInf and a sign test."""
    from onnx import helper, numpy_helper
    from onnx.helper import tensor_dtype_to_np_dtype

    attributes = {a.name: a.i for a in node.attribute}
    signs = [compare for compare, attribute in (("Less", "detect_positive"), ("Greater", "detect_negative"))
             if attributes.get(attribute, 1) == 0]
    if not signs:
        return None
    stem = f"{node.output[0]}__legalized"
    zero = numpy_helper.from_array(np.array(0, dtype=tensor_dtype_to_np_dtype(elem_type)))
    nodes = [helper.make_node("IsInf", [node.input[0]], [f"{stem}_inf"]),
             helper.make_node("Constant", [], [f"{stem}_zero"], value=zero)]
    result = f"{stem}_inf"
    for compare in signs:
        nodes += [helper.make_node(compare, [node.input[0], f"{stem}_zero"], [f"{stem}_{compare}"]),
                  helper.make_node("And", [result, f"{stem}_{compare}"], [f"{stem}_and_{compare}"])]
        result = f"{stem}_and_{compare}"
    nodes[-1].output[0] = node.output[0]
    return nodes


_BFLOAT16, _FLOAT = 16, 1
_BFLOAT16_KEPT = ("Cast", "CastLike", "Constant", "Identity", "OneHot")  # TVM carries these on bfloat16 as they are


def _bfloat16_in_float32(node, types: dict[str, int]) -> list | None:
    """The node on float32 copies of its bfloat16 inputs, its bfloat16 outputs cast back (None: no bfloat16 input)."""
    from onnx import AttributeProto

    if (node.op_type in _BFLOAT16_KEPT or not any(types.get(name) == _BFLOAT16 for name in node.input)
            or any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)
            or any(name and name not in types for name in node.output)):
        return None
    stem = f"{node.output[0]}__bf16"
    before, after = [], []
    wide = type(node)()
    wide.CopyFrom(node)
    for index, name in enumerate(node.input):
        if name and types.get(name) == _BFLOAT16:
            before.append(_cast(name, f"{stem}_in{index}", _FLOAT))
            wide.input[index] = f"{stem}_in{index}"
    for index, name in enumerate(node.output):
        if name and types[name] == _BFLOAT16:
            wide.output[index] = f"{stem}_out{index}"
            after.append(_cast(f"{stem}_out{index}", name, _BFLOAT16))
    return [*before, wide, *after]


_INT_BITS = {2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 12: 32, 7: 64, 13: 64}  # ONNX integer type -> bits
_SIGNED = {3, 5, 6, 7}


def _bit_shift(node, types: dict[str, int], constants: dict[str, np.ndarray]) -> list | None:
    """BitShift with amounts out of [0, width) zeroed before the shift and their results set as ONNX says:
    -1 for a negative value shifted right (signed types), else 0."""
    from onnx import helper, numpy_helper
    from onnx.helper import tensor_dtype_to_np_dtype

    elem_type = types.get(node.input[0])
    if elem_type not in _INT_BITS or types.get(node.input[1]) != elem_type:
        return None
    bits = _INT_BITS[elem_type]
    amounts = constants.get(node.input[1])
    if amounts is not None and ((amounts >= 0) & (amounts < bits)).all():
        return None
    dtype = tensor_dtype_to_np_dtype(elem_type)
    right = next((a.s for a in node.attribute if a.name == "direction"), b"LEFT") == b"RIGHT"
    stem = f"{node.output[0]}__legalized"

    def const(name: str, value) -> object:
        return helper.make_node("Constant", [], [f"{stem}_{name}"], value=numpy_helper.from_array(np.array(value, dtype)))

    nodes = [const("zero", 0), const("width", bits),
             helper.make_node("Less", [node.input[1], f"{stem}_zero"], [f"{stem}_negative"]),
             helper.make_node("GreaterOrEqual", [node.input[1], f"{stem}_width"], [f"{stem}_too_far"]),
             helper.make_node("Or", [f"{stem}_negative", f"{stem}_too_far"], [f"{stem}_outside"]),
             helper.make_node("Where", [f"{stem}_outside", f"{stem}_zero", node.input[1]], [f"{stem}_amount"]),
             helper.make_node("BitShift", [node.input[0], f"{stem}_amount"], [f"{stem}_shifted"], direction="RIGHT" if right else "LEFT")]
    fill = f"{stem}_zero"
    if right and elem_type in _SIGNED:  # the sign fill: a shift by width - 1
        nodes += [const("sign_shift", bits - 1),
                  helper.make_node("BitShift", [node.input[0], f"{stem}_sign_shift"], [f"{stem}_fill"], direction="RIGHT")]
        fill = f"{stem}_fill"
    return nodes + [helper.make_node("Where", [f"{stem}_outside", fill, f"{stem}_shifted"], node.output)]


def _floor_mod(node, elem_type: int) -> list:
    """Float Mod with fmod 0 as numpy's mod: r = fmod(a, b); r + b where r != 0 and r, b differ in sign;
    a zero r takes b's sign."""
    from onnx import helper, numpy_helper
    from onnx.helper import tensor_dtype_to_np_dtype

    dtype = tensor_dtype_to_np_dtype(elem_type)
    a, b, stem = node.input[0], node.input[1], f"{node.output[0]}__legalized"
    return [helper.make_node("Mod", [a, b], [f"{stem}_fmod"], fmod=1),
            helper.make_node("Constant", [], [f"{stem}_zero"], value=numpy_helper.from_array(np.array(0.0, dtype))),
            helper.make_node("Constant", [], [f"{stem}_negative_zero"], value=numpy_helper.from_array(np.array(-0.0, dtype))),
            helper.make_node("Less", [f"{stem}_fmod", f"{stem}_zero"], [f"{stem}_r_negative"]),
            helper.make_node("Less", [b, f"{stem}_zero"], [f"{stem}_b_negative"]),
            helper.make_node("Xor", [f"{stem}_r_negative", f"{stem}_b_negative"], [f"{stem}_signs_differ"]),
            helper.make_node("Equal", [f"{stem}_fmod", f"{stem}_zero"], [f"{stem}_r_zero"]),
            helper.make_node("Add", [f"{stem}_fmod", b], [f"{stem}_moved"]),
            helper.make_node("Where", [f"{stem}_signs_differ", f"{stem}_moved", f"{stem}_fmod"], [f"{stem}_nonzero"]),
            helper.make_node("Where", [f"{stem}_b_negative", f"{stem}_negative_zero", f"{stem}_zero"], [f"{stem}_signed_zero"]),
            helper.make_node("Where", [f"{stem}_r_zero", f"{stem}_signed_zero", f"{stem}_nonzero"], node.output)]


def _resize_axes(node, ranks: dict[str, int], constants: dict[str, np.ndarray], shapes: dict[str, tuple]) -> list | None:
    """Resize with an `axes` attribute (TVM's converter ignores it) with its roi, scales or sizes given for every
    axis instead: roi 0 to 1, scale 1, the input's size on the others (what ONNX says they are)."""
    from onnx import helper, numpy_helper

    rank, shape = ranks.get(node.input[0]), shapes.get(node.input[0])
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if rank is None or "axes" not in attrs:
        return None
    axes = [a % rank for a in attrs["axes"]]
    inputs = list(node.input) + [""] * (4 - len(node.input))
    stem = f"{node.output[0]}__legalized"
    nodes, names = [], list(inputs)
    for position, fill in ((1, None), (2, 1.0), (3, None)):
        if not inputs[position]:
            continue
        value = constants.get(inputs[position])
        if value is None or (position == 3 and (shape is None or None in shape)):
            return None
        if position == 1:
            full = np.concatenate([np.zeros(rank), np.ones(rank)]).astype(value.dtype)
            for k, axis in enumerate(axes):
                full[axis], full[rank + axis] = value[k], value[len(axes) + k]
        else:
            full = np.array([fill if fill is not None else shape[d] for d in range(rank)], value.dtype)
            for k, axis in enumerate(axes):
                full[axis] = value[k]
        names[position] = f"{stem}_operand{position}"
        nodes.append(helper.make_node("Constant", [], [names[position]], value=numpy_helper.from_array(full)))
    resize = helper.make_node("Resize", names[:len(node.input)], node.output)
    resize.attribute.extend(a for a in node.attribute if a.name != "axes")
    return nodes + [resize]


def _vector_axes(node, constants: dict[str, np.ndarray]) -> list | None:
    """Unsqueeze/Squeeze whose axes are a 0-d constant (a Constant's value_int; TVM iterates them) with a 1-D one."""
    from onnx import helper, numpy_helper

    axes = constants.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if axes is None or axes.ndim != 0:
        return None
    name = f"{node.output[0]}__legalized_axes"
    return [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(axes.reshape(1))),
            helper.make_node(node.op_type, [node.input[0], name], node.output)]


def _rewrite(node, types: dict[str, int], ranks: dict[str, int], constants: dict[str, np.ndarray], opset: int,
             shapes: dict[str, tuple]) -> list | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    if (widened := _bfloat16_in_float32(node, types)) is not None:
        return widened
    if node.op_type in ("Sinh", "Cosh") and types.get(node.input[0]):
        return _hyperbolic(node, types[node.input[0]], 1.0 if node.op_type == "Cosh" else -1.0)
    if node.op_type == "Pow":
        return _pow(node, types)
    if node.op_type in ("ReduceMin", "ReduceMax"):
        return _bool_reduce(node, types)
    if node.op_type == "LpNormalization" and next((a.i for a in node.attribute if a.name == "p"), 2) in (1, 2) \
            and types.get(node.input[0]) in _FLOATS:
        return _lp_normalization(node, types[node.input[0]], opset)
    if node.op_type == "IsInf" and types.get(node.input[0]) in _FLOATS:
        return _is_inf(node, types[node.input[0]])
    if node.op_type in ("Unsqueeze", "Squeeze"):
        return _vector_axes(node, constants)
    if node.op_type == "Resize":
        return _resize_axes(node, ranks, constants, shapes)
    if node.op_type == "BitShift":
        return _bit_shift(node, types, constants)
    if node.op_type == "Mod" and types.get(node.input[0]) in _FLOATS \
            and next((a.i for a in node.attribute if a.name == "fmod"), 0) == 0:
        return _floor_mod(node, types[node.input[0]])
    if node.op_type == "OneHot" and len(node.input) == 3:
        return _one_hot(node, types, ranks, constants)
    return None


_CONSTANT_FORMS = {"value_int": np.int64, "value_ints": np.int64, "value_float": np.float32, "value_floats": np.float32}


def _constant_tensors(graph) -> int:
    """Constants holding value_int(s)/value_float(s) (TVM reads only `value`) made `value` tensors, in subgraphs
    too (If branches); returns how many."""
    from onnx import helper, numpy_helper

    count = 0
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                count += _constant_tensors(subgraph)
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name in _CONSTANT_FORMS:
            value = np.array(helper.get_attribute_value(node.attribute[0]), _CONSTANT_FORMS[node.attribute[0].name])
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value)))
            count += 1
    return count


def legalize(model) -> dict[str, int]:
    """Rewrite the nodes TVM cannot compile (in place); returns {op type: how many were rewritten}."""
    types, ranks, constants = _elem_types(model), _ranks(model), _constants(model)
    shapes = {value.name: tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)
              for value in (*model.graph.input, *model.graph.value_info) if value.type.tensor_type.HasField("shape")}
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    rewritten: dict[str, int] = {}
    if constants_made := _constant_tensors(model.graph):
        rewritten["Constant"] = constants_made
    nodes = []
    for node in model.graph.node:
        replacement = _rewrite(node, types, ranks, constants, opset, shapes)
        if replacement is not None:
            nodes.extend(replacement)
            rewritten[node.op_type] = rewritten.get(node.op_type, 0) + 1
        else:
            nodes.append(node)
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return rewritten
