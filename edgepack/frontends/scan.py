"""Scan and Loop (no TVM converter, no ONNX function) unrolled over their fixed numbers of iterations.

The body's nodes are copied once per iteration, the values it defines renamed per copy, its state inputs
wired to the previous copy's state outputs and its scan inputs to Gather slices of the scan inputs (along
their axes, in their directions); the scan outputs' per-iteration values are stacked along their axes in
their directions. Opset 8's batched Scan is unrolled once per batch item and stacked (sequence_lens unset
only). A Loop is unrolled where its trip count is a constant, its condition input a constant true and its body
passes the condition on (a `for` loop); its iteration number is a constant per copy. A body holding a subgraph
op (If, Loop, a nested Scan) is refused."""

from __future__ import annotations

import numpy as np

from edgepack.frontends.node_builder import CannotLower, GraphFacts, NodeBuilder, attributes

MAX_ITERATIONS = 1024


def _copy_body(b: NodeBuilder, body, bound: dict[str, str]) -> list[str]:
    """One copy of the body with its inputs bound to `bound`'s values; returns the copy's output names."""
    from onnx import helper, numpy_helper

    names = dict(bound)
    for init in body.initializer:
        names[init.name] = b.const(numpy_helper.to_array(init))
    for node in body.node:
        copy = helper.make_node(node.op_type, [names.get(n, n) if n else "" for n in node.input],
                                [b.fresh("scan") if n else "" for n in node.output], domain=node.domain or None)
        copy.attribute.extend(node.attribute)
        names.update({old: new for old, new in zip(node.output, copy.output) if old})
        b.nodes.append(copy)
    return [names.get(output.name, output.name) for output in body.output]


def _unroll(b: NodeBuilder, body, states: list[str], scans: list[str], axes: list[int], directions: list[int],
            iterations: int) -> tuple[list[str], list[list[str]]]:
    """The final states and, per scan output, its values in iteration order."""
    body_inputs = [value.name for value in body.input]
    elements: list[list[str]] = [[] for _ in range(len(body.output) - len(states))]
    for i in range(iterations):
        slices = [b.take(scan, iterations - 1 - i if direction else i, axis) for scan, axis, direction in zip(scans, axes, directions)]
        outputs = _copy_body(b, body, dict(zip(body_inputs, states + slices)))
        states = outputs[:len(states)]
        for values, value in zip(elements, outputs[len(states):]):
            values.append(value)
    return states, elements


def _element_rank(body, index: int) -> int | None:
    value = body.output[index].type.tensor_type
    return len(value.shape.dim) if value.HasField("shape") else None


def lower_scan(node, facts: GraphFacts) -> NodeBuilder:
    """Scan unrolled into copies of its body writing the node's outputs."""
    attrs = attributes(node)
    body = attrs["body"]
    if any(a.type in (5, 10) for n in body.node for a in n.attribute):  # GRAPH, GRAPHS
        raise CannotLower("its body holds a subgraph op (If, Loop or Scan)")
    batched = facts.opset < 9
    inputs = list(node.input[1:] if batched else node.input)
    if batched and node.input[0]:
        raise CannotLower("opset 8's sequence_lens is not supported")
    scan_count = attrs["num_scan_inputs"]
    state_count = len(inputs) - scan_count
    states, scans = inputs[:state_count], inputs[state_count:]
    ranks = [len(facts.static_shape(scan, "Scan", "scan input")) - batched for scan in scans]
    in_axes = [0] * scan_count if batched else [a % r for a, r in zip(attrs.get("scan_input_axes", [0] * scan_count), ranks)]
    in_dirs = attrs.get("directions" if batched else "scan_input_directions", [0] * scan_count)
    iterations = facts.shapes[scans[0]][in_axes[0] + batched]
    if iterations > MAX_ITERATIONS:
        raise CannotLower(f"{iterations} iterations are more than the {MAX_ITERATIONS} edgepack unrolls")
    output_count = len(node.output) - state_count
    out_axes = [0] * output_count if batched else attrs.get("scan_output_axes", [0] * output_count)
    out_dirs = attrs.get("scan_output_directions", [0] * output_count)
    for k, axis in enumerate(out_axes):
        if axis < 0:
            rank = _element_rank(body, state_count + k)
            if rank is None:
                raise CannotLower("a negative scan_output_axes needs the body output's rank")
            out_axes[k] = axis + rank + 1
    b = NodeBuilder(f"{next(n for n in node.output if n)}__scan", facts.opset)
    items = [(states, scans)] if not batched else \
        [([b.take(s, i, 0) for s in states], [b.take(s, i, 0) for s in scans]) for i in range(facts.shapes[scans[0]][0])]
    finals, stacked = [], []
    for item_states, item_scans in items:
        final, elements = _unroll(b, body, item_states, item_scans, in_axes, in_dirs, iterations)
        finals.append(final)
        stacked.append([b.stack(values[::-1] if direction else values, axis)
                        for values, axis, direction in zip(elements, out_axes, out_dirs)])
    results = [list(values) for values in zip(*finals)] + [list(values) for values in zip(*stacked)]
    for name, values in zip(node.output, results):
        if name:
            b.stack(values, 0, out=name) if batched else b.op("Identity", values[0], out=name)
    return b


def _always_true(body, facts: GraphFacts) -> bool:
    """Whether the body's condition output is its condition input passed on (Identity) or a constant true."""
    from onnx import numpy_helper

    name, cond_in = body.output[0].name, body.input[1].name
    producers = {output: node for node in body.node for output in node.output}
    while name in producers and producers[name].op_type == "Identity":
        name = producers[name].input[0]
    if name == cond_in:
        return True
    node = producers.get(name)
    return bool(node is not None and node.op_type == "Constant" and node.attribute[0].name == "value"
                and np.all(numpy_helper.to_array(node.attribute[0].t)))


def lower_loop(node, facts: GraphFacts) -> NodeBuilder:
    """Loop with a trip count and condition fixed at build time (the body passing the condition on) unrolled into
    copies of its body; scan outputs stacked on a new first axis."""
    attrs = attributes(node)
    body = attrs["body"]
    if any(a.type in (5, 10) for n in body.node for a in n.attribute):  # GRAPH, GRAPHS
        raise CannotLower("its body holds a subgraph op (If, Loop or Scan)")
    inputs = list(node.input) + [""] * (2 - len(node.input))
    if not inputs[0] or inputs[0] not in facts.constants:
        raise CannotLower("its trip count is not a constant at build time")
    trips = int(np.asarray(facts.constants[inputs[0]]).reshape(-1)[0])
    if inputs[1] and not (inputs[1] in facts.constants and np.all(facts.constants[inputs[1]])):
        raise CannotLower("its condition is not a constant true at build time")
    if not _always_true(body, facts):
        raise CannotLower("its body computes its condition")
    if trips > MAX_ITERATIONS:
        raise CannotLower(f"{trips} iterations are more than the {MAX_ITERATIONS} edgepack unrolls")
    states = inputs[2:]
    scan_count = len(body.output) - 1 - len(states)
    if trips == 0 and scan_count:
        raise CannotLower("no iterations: its scan outputs' shapes are unknown")
    b = NodeBuilder(f"{next(n for n in node.output if n)}__loop", facts.opset)
    true = b.const(np.array(True))
    body_inputs = [value.name for value in body.input]
    elements: list[list[str]] = [[] for _ in range(scan_count)]
    for i in range(trips):
        outputs = _copy_body(b, body, dict(zip(body_inputs, [b.const(np.array(i, np.int64)), true, *states])))
        states = outputs[1:1 + len(states)]
        for values, value in zip(elements, outputs[1 + len(states):]):
            values.append(value)
    for name, value in zip(node.output, states):
        if name:
            b.op("Identity", value, out=name)
    for name, values in zip(node.output[len(states):], elements):
        if name:
            b.stack(values, 0, out=name)
    return b
