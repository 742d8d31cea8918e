"""DeformConv (2-D; no TVM converter, no ONNX function) as bilinear sampling and a MatMul.

Every kernel tap of every output position samples the input at its grid position plus its offset (computed at
run time): the four neighbouring pixels are gathered from the flattened input (a neighbour outside the image
reads an appended zero, as GridSample's zero padding), weighted bilinearly, multiplied by the mask, and the
sampled columns meet the weights in one MatMul per group, as ONNX's reference computes it."""

from __future__ import annotations

import numpy as np

from edgepack.frontends.node_builder import CannotLower, GraphFacts, NodeBuilder, attributes


def lower_deform_conv(node, facts: GraphFacts) -> NodeBuilder:
    """DeformConv of a 4-D input."""
    attrs = attributes(node)
    x, w, offset, bias, mask = list(node.input) + [""] * (5 - len(node.input))
    shape = facts.static_shape(x, "DeformConv", "input")
    if len(shape) != 4:
        raise CannotLower("only 2-D deformable convolution")
    n, channels, height, width = shape
    out_channels, group_channels, kh, kw = facts.static_shape(w, "DeformConv", "weights")
    _, _, oh, ow = facts.static_shape(offset, "DeformConv", "offset")
    group, offset_group = attrs.get("group", 1), attrs.get("offset_group", 1)
    pads, strides, dilations = attrs.get("pads", [0] * 4), attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    taps = kh * kw
    dtype = facts.np_dtype(x)
    b = NodeBuilder(f"{node.output[0]}__deform", facts.opset)

    def const(value):
        return b.const(np.asarray(value, dtype))

    # sample positions [n, offset_group, taps, oh, ow]
    moved = b.op("Reshape", offset, b.const(np.array([n, offset_group, taps, 2, oh, ow], np.int64)))
    tap_h = np.repeat(np.arange(kh) * dilations[0], kw).reshape(1, 1, taps, 1, 1)
    tap_w = np.tile(np.arange(kw) * dilations[1], kh).reshape(1, 1, taps, 1, 1)
    grid_h = (np.arange(oh) * strides[0] - pads[0]).reshape(1, 1, 1, oh, 1)
    grid_w = (np.arange(ow) * strides[1] - pads[1]).reshape(1, 1, 1, 1, ow)
    py = b.op("Add", b.take(moved, 0, 3), const(tap_h + grid_h))
    px = b.op("Add", b.take(moved, 1, 3), const(tap_w + grid_w))
    y0, x0 = b.op("Floor", py), b.op("Floor", px)
    ly, lx = b.op("Sub", py, y0), b.op("Sub", px, x0)
    hy, hx = b.op("Sub", const(1), ly), b.op("Sub", const(1), lx)
    # the input flattened per channel with a zero appended, and the offset groups repeated per channel
    flat = b.op("Concat", b.op("Reshape", x, b.const(np.array([n, channels, height * width], np.int64))),
                b.const(np.zeros((n, channels, 1), dtype)), axis=2)
    per_channel = b.const(np.arange(channels, dtype=np.int64) // (channels // offset_group))
    samples = None
    for dy, dx, weight in ((0, 0, (hy, hx)), (0, 1, (hy, lx)), (1, 0, (ly, hx)), (1, 1, (ly, lx))):
        yy, xx = b.op("Add", y0, const(dy)), b.op("Add", x0, const(dx))
        inside = b.op("And", b.op("And", b.op("GreaterOrEqual", yy, const(0)), b.op("Less", yy, const(height))),
                      b.op("And", b.op("GreaterOrEqual", xx, const(0)), b.op("Less", xx, const(width))))
        index = b.op("Where", inside, b.op("Add", b.op("Mul", yy, const(width)), xx), const(height * width))
        index = b.op("Reshape", b.op("Gather", b.op("Cast", index, to=7), per_channel, axis=1),
                     b.const(np.array([n, channels, taps * oh * ow], np.int64)))
        corner_weight = b.op("Gather", b.op("Mul", *weight), per_channel, axis=1)
        value = b.op("Mul", b.op("Reshape", b.op("GatherElements", flat, index, axis=2),
                                 b.const(np.array([n, channels, taps, oh, ow], np.int64))), corner_weight)
        samples = value if samples is None else b.op("Add", samples, value)
    if mask:
        masks = b.op("Reshape", mask, b.const(np.array([n, offset_group, taps, oh, ow], np.int64)))
        samples = b.op("Mul", samples, b.op("Gather", masks, per_channel, axis=1))
    columns = b.op("Reshape", samples, b.const(np.array([n, group, group_channels * taps, oh * ow], np.int64)))
    weights = b.op("Reshape", w, b.const(np.array([group, out_channels // group, group_channels * taps], np.int64)))
    result = b.op("Reshape", b.op("MatMul", weights, columns), b.const(np.array([n, out_channels, oh, ow], np.int64)))
    if bias:
        result = b.op("Add", result, b.op("Reshape", bias, b.const(np.array([1, out_channels, 1, 1], np.int64))))
    b.op("Identity", result, out=node.output[0])
    return b
