"""Emit ONNX nodes with fresh value names, for the pre-flight rewrites that replace one node by many."""

from __future__ import annotations

import numpy as np


class NodeBuilder:
    """Collects nodes; every value it makes is named `<stem>_<n>`, so rewrites of different nodes never clash.

    `opset` is the model's: the few ops whose operands moved from attributes to inputs (Unsqueeze) are emitted
    in the form that opset reads; constants are initializers before opset 9 (whose Constant holds floats only)."""

    def __init__(self, stem: str, opset: int):
        self.stem, self.opset, self.nodes, self.initializers, self._count = stem, opset, [], [], 0

    def fresh(self, hint: str = "v") -> str:
        """A new value name."""
        self._count += 1
        return f"{self.stem}_{hint}{self._count}"

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attributes) -> str:
        """Append one node with one output (`out`, else a fresh name) and return that output's name."""
        from onnx import helper

        name = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], **attributes))
        return name

    def const(self, value, dtype=None, out: str | None = None) -> str:
        """A Constant node holding `value` (as `dtype` where given)."""
        from onnx import numpy_helper

        array = np.asarray(value, dtype=dtype)
        if self.opset >= 9:
            return self.op("Constant", out=out, value=numpy_helper.from_array(array))
        name = out or self.fresh("constant")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def unsqueeze(self, value: str, axis: int) -> str:
        """`value` with a new axis of size 1 at `axis` (attribute before opset 13, input from 13)."""
        if self.opset >= 13:
            return self.op("Unsqueeze", value, self.const(np.array([axis], np.int64)))
        return self.op("Unsqueeze", value, axes=[axis])

    def take(self, value: str, index: int, axis: int) -> str:
        """The slice of `value` at `index` along `axis`, that axis removed (Gather of a scalar index)."""
        return self.op("Gather", value, self.const(np.array(index, np.int64)), axis=axis)

    def slice(self, value: str, start: int, end: int, axis: int) -> str:
        """`value[start:end]` along `axis` (rank kept)."""
        ints = [self.const(np.array([v], np.int64)) for v in (start, end, axis)]
        return self.op("Slice", value, *ints) if self.opset >= 10 else \
            self.op("Slice", value, starts=[start], ends=[end], axes=[axis])

    def stack(self, values: list[str], axis: int, out: str | None = None) -> str:
        """The values (same shape) stacked along a new axis `axis`."""
        parts = [self.unsqueeze(value, axis) for value in values]
        return self.op("Concat", *parts, out=out, axis=axis) if len(parts) > 1 else self.op("Identity", parts[0], out=out)


class CannotLower(Exception):
    """A node a pre-flight rewrite cannot replace exactly; the message says why (pre-flight refuses the op)."""


class GraphFacts:
    """What the rewrites read about a model after shape inference: element types, static shapes, constants."""

    def __init__(self, model):
        from onnx import numpy_helper

        values = (*model.graph.input, *model.graph.value_info, *model.graph.output)
        self.types = {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}
        self.shapes = {v.name: tuple(d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim)
                       for v in values if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
        self.constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        for init in model.graph.initializer:
            self.types.setdefault(init.name, init.data_type)
            self.shapes.setdefault(init.name, tuple(init.dims))
        self.opset = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), 0)

    def static_shape(self, name: str, op_type: str, what: str) -> tuple[int, ...]:
        """The value's shape, every size known at build time, else CannotLower naming `what`."""
        shape = self.shapes.get(name)
        if shape is None or any(size is None for size in shape):
            raise CannotLower(f"{op_type}'s {what} has no static shape")
        return shape

    def np_dtype(self, name: str):
        """The numpy dtype of a value's element type."""
        from onnx.helper import tensor_dtype_to_np_dtype

        return tensor_dtype_to_np_dtype(self.types[name])


def attributes(node) -> dict:
    """The node's attributes as Python values (strings decoded)."""
    from onnx import helper

    values = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode() if isinstance(value, bytes) else \
            [v.decode() if isinstance(v, bytes) else v for v in value] if isinstance(value, list) else value
    return values


def constant_int(facts: GraphFacts, name: str, op_type: str, what: str, default: int | None = None) -> int:
    """An operand's value as an int, known at build time (a Constant, an initializer or a bound input)."""
    if not name:
        if default is None:
            raise CannotLower(f"{op_type} needs its {what}")
        return default
    if name not in facts.constants:
        raise CannotLower(f"{op_type}'s {what} is not a constant at build time")
    return int(np.asarray(facts.constants[name]).reshape(-1)[0])


def constant_ints(facts: GraphFacts, name: str, op_type: str, what: str) -> list[int]:
    """An operand's values as ints, known at build time."""
    if name not in facts.constants:
        raise CannotLower(f"{op_type}'s {what} is not a constant at build time")
    return [int(v) for v in np.asarray(facts.constants[name]).reshape(-1)]
