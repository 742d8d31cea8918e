"""Fold shape computations to constants before TVM imports the model.

A bundle's input shapes are fixed at build time, so `Shape`, `Size` and every small computation on them
(Gather, Concat, Cast, arithmetic ...) has one value. TVM's importer cannot take shape tensors as node inputs
("Node cannot handle ShapeExpr inputs") and needs constant axes, sizes and k's; ONNX's reference
implementation computes those values here and they enter the graph as `Constant` nodes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_FOLDED_ELEMENTS = 4096  # larger results (weights transformed at build time) stay computations
_NOT_FOLDED = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",  # QDQ chains become integer ops
               "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


@dataclass(frozen=True)
class FoldReport:
    """How many nodes became constants, and how many small integer initializers did."""

    folded_nodes: int
    constant_initializers: int

    def to_json(self) -> dict:
        return {"folded_nodes": self.folded_nodes, "constant_initializers": self.constant_initializers}


def _static_shapes(model) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for value in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape") and all(dim.HasField("dim_value") for dim in tensor_type.shape.dim):
            shapes[value.name] = tuple(dim.dim_value for dim in tensor_type.shape.dim)
    return shapes


def _shape_value(node, shape: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), dtype=np.int64)
    attributes = {a.name: a.i for a in node.attribute}
    start, end = attributes.get("start", 0), attributes.get("end", len(shape))
    return np.array(shape[start:end], dtype=np.int64)


def _evaluate(node, values: list, opset: int) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(node, opsets={"": opset})
        feeds = {name: value for name, value in zip(node.input, values) if name}
        return [np.asarray(out) for out in evaluator.run(None, feeds)]
    except Exception:  # an op the reference cannot evaluate alone stays a computation
        return None


def _foldable(node) -> bool:
    return (node.domain in ("", "ai.onnx") and node.op_type not in _NOT_FOLDED
            and not any(a.HasField("g") or len(a.graphs) for a in node.attribute))


def fold_shape_computations(model, max_elements: int = MAX_FOLDED_ELEMENTS):
    """The model (changed in place) with computations of known small values replaced by `Constant` nodes and
    small int64 initializers made `Constant` nodes; needs static shapes (run shape inference first)."""
    from onnx import helper, numpy_helper

    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    graph = model.graph
    shapes = _static_shapes(model)
    known: dict[str, np.ndarray] = {}
    constant_initializers = 0
    for init in list(graph.initializer):
        value = numpy_helper.to_array(init)
        if value.size <= max_elements:
            known[init.name] = value
            if value.dtype == np.int64:  # axes, sizes, shapes, indices: TVM needs them as constants, not params
                graph.node.insert(0, helper.make_node("Constant", [], [init.name], value=numpy_helper.from_array(value, init.name)))
                graph.initializer.remove(init)
                constant_initializers += 1
    folded = 0
    nodes = list(graph.node)
    for index, node in enumerate(nodes):
        if node.op_type == "Constant":
            values = _evaluate(node, [], opset)
            if values is not None and values[0].size <= max_elements:
                known[node.output[0]] = values[0]
                if not any(a.name == "value" for a in node.attribute):  # value_ints, value_float ...: TVM reads only `value`
                    nodes[index] = helper.make_node("Constant", [], [node.output[0]], value=numpy_helper.from_array(values[0]))
            continue
        if node.op_type == "If" and node.input[0] in known:  # the branch taken is known: its nodes replace the If
            nodes[index] = _taken_branch(node, bool(known[node.input[0]].reshape(-1)[0]))
            folded += 1
            continue
        if not _foldable(node):
            continue
        if node.op_type in ("Shape", "Size") and node.input[0] in shapes:
            values = [_shape_value(node, shapes[node.input[0]])]
        elif all(not name or name in known for name in node.input):
            values = _evaluate(node, [known.get(name) for name in node.input], opset)
        else:
            continue
        if values is None or any(value.size > max_elements for value in values) or len(values) != len(node.output):
            continue
        replacements = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))
                        for name, value in zip(node.output, values) if name]
        known.update({name: value for name, value in zip(node.output, values) if name})
        nodes[index] = replacements
        folded += 1
    flat = [n for entry in nodes for n in (entry if isinstance(entry, list) else [entry])]
    del graph.node[:]
    graph.node.extend(_live(flat, {value.name for value in graph.output}))
    return model, FoldReport(folded, constant_initializers)


def _taken_branch(node, condition: bool) -> list:
    """The nodes of the If's branch that `condition` takes, the values they define renamed apart (two Ifs' branches
    may use the same names) and its outputs copied to the If's; outer names stay read as they are."""
    from onnx import helper

    branch = type(next(a.g for a in node.attribute if a.name == "then_branch"))()
    branch.CopyFrom(next(a.g for a in node.attribute if a.name == ("then_branch" if condition else "else_branch")))
    renamed = {name: f"{node.output[0]}__{'then' if condition else 'else'}_{name}"
               for inner in branch.node for name in inner.output if name}
    _rename_reads(branch, renamed)
    for inner in branch.node:
        inner.output[:] = [renamed.get(name, name) for name in inner.output]
    return list(branch.node) + [helper.make_node("Identity", [renamed.get(inner.name, inner.name)], [outer])
                                for inner, outer in zip(branch.output, node.output) if outer]


def _rename_reads(graph, renamed: dict[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _rename_reads(subgraph, renamed)


def _live(nodes: list, outputs: set[str]) -> list:
    """The nodes whose results are used (by a later node, a subgraph or the graph's outputs), in order."""
    needed = set(outputs)
    kept = []
    for node in reversed(nodes):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
            for attribute in node.attribute:  # subgraphs read outer names implicitly
                for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    needed.update(_names_read(subgraph))
    return kept[::-1]


def _names_read(graph) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                names |= _names_read(subgraph)
    return names
