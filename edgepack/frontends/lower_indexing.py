"""CumProd, ReverseSequence, TensorScatter and Col2Im (no TVM converter, no ONNX function) as gathers,
scatters and products over sizes fixed at build time.

CumProd is a running product of slices, in order (the same products, in the same order, as ONNX's
reference: exact for zeros, negatives and integers). ReverseSequence and TensorScatter compute their
indices from the lengths and write positions at run time (GatherElements, ScatterElements). Col2Im gathers,
for every image pixel, the column entries that land on it (a constant index table) and sums them."""

from __future__ import annotations

import itertools

import numpy as np

from edgepack.frontends.node_builder import CannotLower, GraphFacts, NodeBuilder, attributes, constant_int, constant_ints

MAX_CUMPROD_LENGTH = 1024


def lower_cumprod(node, facts: GraphFacts) -> NodeBuilder:
    """CumProd as a running Mul of slices along its axis, concatenated."""
    attrs = attributes(node)
    shape = facts.static_shape(node.input[0], "CumProd", "input")
    axis = constant_int(facts, node.input[1], "CumProd", "axis") % len(shape)
    length = shape[axis]
    if length > MAX_CUMPROD_LENGTH:
        raise CannotLower(f"its axis of {length} is longer than the {MAX_CUMPROD_LENGTH} edgepack unrolls")
    b = NodeBuilder(f"{node.output[0]}__cumprod", facts.opset)
    order = range(length - 1, -1, -1) if attrs.get("reverse", 0) else range(length)
    slices = {i: b.slice(node.input[0], i, i + 1, axis) for i in order}
    results, running = {}, None
    for i in order:
        if attrs.get("exclusive", 0):
            ones = np.ones(tuple(1 if d == axis else n for d, n in enumerate(shape)), facts.np_dtype(node.input[0]))
            results[i] = running if running is not None else b.const(ones)
        running = slices[i] if running is None else b.op("Mul", running, slices[i])
        if not attrs.get("exclusive", 0):
            results[i] = running
    parts = [results[i] for i in range(length)]
    b.op("Concat", *parts, out=node.output[0], axis=axis) if length > 1 else b.op("Identity", parts[0], out=node.output[0])
    return b


def _sequence_indices(b: NodeBuilder, lengths: str, time: int, batch: int, time_axis: int) -> str:
    """Per (time, batch), the step read: reversed within each sequence's length, kept past it."""
    steps = np.arange(time, dtype=np.int64).reshape((time, 1) if time_axis == 0 else (1, time))
    lens = b.op("Reshape", b.op("Cast", lengths, to=7), b.const(np.array([1, batch] if time_axis == 0 else [batch, 1], np.int64)))
    reversed_steps = b.op("Sub", b.op("Sub", lens, b.const(np.array(1, np.int64))), b.const(steps))
    return b.op("Where", b.op("Less", b.const(steps), lens), reversed_steps, b.const(steps))


def lower_reverse_sequence(node, facts: GraphFacts) -> NodeBuilder:
    """ReverseSequence as GatherElements along the time axis with indices computed from sequence_lens."""
    attrs = attributes(node)
    shape = facts.static_shape(node.input[0], "ReverseSequence", "input")
    time_axis, batch_axis = attrs.get("time_axis", 0), attrs.get("batch_axis", 1)
    b = NodeBuilder(f"{node.output[0]}__reverse", facts.opset)
    indices = _sequence_indices(b, node.input[1], shape[time_axis], shape[batch_axis], time_axis)
    full = b.op("Expand", b.op("Reshape", indices, b.const(np.array(shape[:2] + (1,) * (len(shape) - 2), np.int64))),
                b.const(np.array(shape, np.int64)))
    b.op("GatherElements", node.input[0], full, out=node.output[0], axis=time_axis)
    return b


def lower_tensor_scatter(node, facts: GraphFacts) -> NodeBuilder:
    """TensorScatter as ScatterElements along its axis at write_indices[batch] + step (modulo the cache length
    in circular mode)."""
    attrs = attributes(node)
    cache = facts.static_shape(node.input[0], "TensorScatter", "past_cache")
    update = facts.static_shape(node.input[1], "TensorScatter", "update")
    axis = attrs.get("axis", -2) % len(cache)
    if axis == 0:
        raise CannotLower("axis 0 is its batch axis")
    b = NodeBuilder(f"{node.output[0]}__scatter", facts.opset)
    steps_shape = [1] * len(update)
    steps_shape[axis] = update[axis]
    steps = b.const(np.arange(update[axis], dtype=np.int64).reshape(steps_shape))
    if len(node.input) > 2 and node.input[2]:
        starts = b.op("Reshape", b.op("Cast", node.input[2], to=7), b.const(np.array([update[0]] + [1] * (len(update) - 1), np.int64)))
        positions = b.op("Add", starts, steps)
    else:
        positions = steps
    if attrs.get("mode", "linear") == "circular":
        positions = b.op("Mod", positions, b.const(np.array(cache[axis], np.int64)))
    indices = b.op("Expand", positions, b.const(np.array(update, np.int64)))
    b.op("ScatterElements", node.input[0], indices, node.input[1], out=node.output[0], axis=axis)
    return b


def _col2im_table(image: list[int], block: list[int], dilations, pads, strides) -> tuple[np.ndarray, int]:
    """[pixels, most contributions] indices into the flattened [block positions * columns] input (the index
    one past the input reads an appended zero), and the number of columns."""
    spatial = len(image)
    out_sizes = [(image[d] + pads[d] + pads[d + spatial] - dilations[d] * (block[d] - 1) - 1) // strides[d] + 1 for d in range(spatial)]
    columns = int(np.prod(out_sizes))
    contributions: dict[int, list[int]] = {}
    for k, offset in enumerate(itertools.product(*(range(n) for n in block))):
        for col, position in enumerate(itertools.product(*(range(n) for n in out_sizes))):
            pixel = [position[d] * strides[d] + offset[d] * dilations[d] - pads[d] for d in range(spatial)]
            if all(0 <= pixel[d] < image[d] for d in range(spatial)):
                flat = int(np.ravel_multi_index(pixel, image))
                contributions.setdefault(flat, []).append(k * columns + col)
    width = max((len(v) for v in contributions.values()), default=1)
    table = np.full((int(np.prod(image)), width), int(np.prod(block)) * columns, np.int64)
    for flat, entries in contributions.items():
        table[flat, :len(entries)] = entries
    return table, columns


def lower_col2im(node, facts: GraphFacts) -> NodeBuilder:
    """Col2Im as a Gather of a constant [pixel, contribution] index table and a ReduceSum."""
    attrs = attributes(node)
    batch, channels_blocks, length = facts.static_shape(node.input[0], "Col2Im", "input")
    image = constant_ints(facts, node.input[1], "Col2Im", "image_shape")
    block = constant_ints(facts, node.input[2], "Col2Im", "block_shape")
    spatial = len(image)
    dilations = attrs.get("dilations", [1] * spatial)
    pads = attrs.get("pads", [0] * 2 * spatial)
    strides = attrs.get("strides", [1] * spatial)
    table, columns = _col2im_table(image, block, dilations, pads, strides)
    if columns != length:
        raise CannotLower(f"its input has {length} columns, its shapes give {columns}")
    blocks = int(np.prod(block))
    channels = channels_blocks // blocks
    dtype = facts.np_dtype(node.input[0])
    b = NodeBuilder(f"{node.output[0]}__col2im", facts.opset)
    flat = b.op("Reshape", node.input[0], b.const(np.array([batch, channels, blocks * length], np.int64)))
    padded = b.op("Concat", flat, b.const(np.zeros((batch, channels, 1), dtype)), axis=2)
    gathered = b.op("Gather", padded, b.const(table), axis=2)  # [batch, channels, pixels, contributions]
    axes = np.array([3], np.int64)
    summed = b.op("ReduceSum", gathered, b.const(axes), keepdims=0) if facts.opset >= 13 else \
        b.op("ReduceSum", gathered, axes=[3], keepdims=0)
    b.op("Reshape", summed, b.const(np.array([batch, channels, *image], np.int64)), out=node.output[0])
    return b
