"""MaxUnpool with an output_shape and Upsample with a scales input, which TVM's converters cannot import (they read
output_shape with `.tolist()` and Upsample's scales only as opset 7's attribute), over shapes fixed at build time.

MaxUnpool scatters its values into zeros at their indices, which index the whole tensor of the shape its
attributes give flattened (as MaxPool's Indices do), and pads that at the end to output_shape; Upsample's nearest mode gathers, along each scaled axis, input index floor(i / scale) for
output index i, as ONNX's reference does. Upsample's linear mode stays refused."""

from __future__ import annotations

import numpy as np

from edgepack.frontends.node_builder import CannotLower, GraphFacts, NodeBuilder, attributes, constant_ints


def has_output_shape(node) -> bool:
    """MaxUnpool nodes given an output_shape (TVM imports the others)."""
    return len(node.input) > 2 and bool(node.input[2])


def has_scales_input(node) -> bool:
    """Upsample nodes whose scales are an input (opset 9; TVM reads only opset 7's attribute)."""
    return len(node.input) > 1 and bool(node.input[1])


def lower_max_unpool(node, facts: GraphFacts) -> NodeBuilder:
    """MaxUnpool as ScatterElements of the flattened values into zeros of the shape it infers from its attributes
    (what the indices index), padded at the end to output_shape, as ONNX's reference does."""
    shape = constant_ints(facts, node.input[2], "MaxUnpool", "output_shape")
    x_shape = facts.static_shape(node.input[0], "MaxUnpool", "input")
    attrs = attributes(node)
    kernel = attrs["kernel_shape"]
    strides = attrs.get("strides", [1] * len(kernel))
    pads = attrs.get("pads", [0] * 2 * len(kernel))
    inferred = list(x_shape[:2]) + [(x_shape[2 + d] - 1) * strides[d] - pads[d] - pads[len(kernel) + d] + kernel[d]
                                    for d in range(len(kernel))]
    if len(shape) != len(inferred) or any(o < i for o, i in zip(shape, inferred)):
        raise CannotLower(f"its output_shape {shape} is smaller than the {inferred} its attributes give")
    dtype = facts.np_dtype(node.input[0])
    b = NodeBuilder(f"{node.output[0]}__max_unpool", facts.opset)
    flat = b.const(np.array([-1], np.int64))
    zeros = b.const(np.zeros(int(np.prod(inferred)), dtype))
    scattered = b.op("ScatterElements", zeros, b.op("Reshape", node.input[1], flat), b.op("Reshape", node.input[0], flat), axis=0)
    unpooled = b.op("Reshape", scattered, b.const(np.array(inferred, np.int64)))
    widths = [0] * len(shape) + [o - i for o, i in zip(shape, inferred)]
    if facts.opset >= 11:
        b.op("Pad", unpooled, b.const(np.array(widths, np.int64)), out=node.output[0])
    else:
        b.op("Pad", unpooled, out=node.output[0], pads=widths)
    return b


def lower_upsample(node, facts: GraphFacts) -> NodeBuilder:
    """Upsample (nearest) as one constant Gather per scaled axis."""
    if attributes(node).get("mode", "nearest") != "nearest":
        raise CannotLower("TVM imports Upsample's scales only as opset 7's attribute, and edgepack rewrites only nearest mode")
    shape = facts.static_shape(node.input[0], "Upsample", "input")
    if node.input[1] not in facts.constants:
        raise CannotLower("Upsample's scales are not a constant at build time")
    scales = [float(s) for s in np.asarray(facts.constants[node.input[1]]).reshape(-1)]
    b = NodeBuilder(f"{node.output[0]}__upsample", facts.opset)
    value = node.input[0]
    for axis, (size, scale) in enumerate(zip(shape, scales)):
        out_size = int(np.floor(size * scale))
        if out_size == size and scale == 1:
            continue
        indices = np.minimum(np.floor(np.arange(out_size) / scale).astype(np.int64), size - 1)
        value = b.op("Gather", value, b.const(indices), axis=axis)
    b.op("Identity", value, out=node.output[0])
    return b
