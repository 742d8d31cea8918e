"""Rewrite ONNX nodes TVM imports but cannot compile into equivalent nodes it can.

`Sinh`/`Cosh` lower to `tirx.sinh`/`tirx.cosh`, intrinsics LLVM has no lowering for on x86-64
("unknown intrinsic tirx.cosh"); as exponentials they compile everywhere."""

from __future__ import annotations

import numpy as np


def _elem_types(model) -> dict[str, int]:
    return {value.name: value.type.tensor_type.elem_type
            for value in (*model.graph.input, *model.graph.value_info, *model.graph.output)}


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


def legalize(model) -> dict[str, int]:
    """Rewrite the nodes TVM cannot compile (in place); returns {op type: how many were rewritten}."""
    types = _elem_types(model)
    rewritten: dict[str, int] = {}
    nodes = []
    for node in model.graph.node:
        if node.op_type in ("Sinh", "Cosh") and node.domain in ("", "ai.onnx") and types.get(node.input[0]):
            nodes.extend(_hyperbolic(node, types[node.input[0]], 1.0 if node.op_type == "Cosh" else -1.0))
            rewritten[node.op_type] = rewritten.get(node.op_type, 0) + 1
        else:
            nodes.append(node)
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return rewritten
