"""Expand ops TVM's ONNX frontend lacks into the nodes of their ONNX function.

ONNX defines many ops as functions of other ops: a fixed body (Swish, HannWindow) or one built for the
node's attributes and input types (SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss, Attention,
CenterCropPad). Where TVM has no converter for such an op, the node is replaced by its function's nodes
with `onnx.inliner` (intermediate values renamed, attributes and attribute references mapped, missing
optional inputs kept empty), repeated while a body uses another function op TVM lacks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

MAX_ROUNDS = 8  # function bodies nest a level or two (SoftmaxCrossEntropyLoss -> NegativeLogLikelihoodLoss)


def opset_of(model, domain: str) -> int:
    """The model's opset import for `domain` ('' and 'ai.onnx' are the same); 0 when it imports none."""
    domains = ("", "ai.onnx") if domain in ("", "ai.onnx") else (domain,)
    return next((entry.version for entry in model.opset_import if entry.domain in domains), 0)


def _schema(op_type: str, domain: str, opset: int):
    import onnx.defs

    try:
        return onnx.defs.get_schema(op_type, opset, "" if domain == "ai.onnx" else domain)
    except onnx.defs.SchemaError:
        return None


def has_function(op_type: str, domain: str, opset: int) -> bool:
    """Whether ONNX defines the op, at that opset, as a function (a body or a context-dependent one)."""
    schema = _schema(op_type, domain, opset)
    return schema is not None and bool(schema.has_function or schema.has_context_dependent_function)


def _add_default_attributes(node, schema) -> None:
    """Give the node the schema's default of each attribute it leaves out: a body's attribute reference
    (`ref_attr_name`) to an absent attribute would otherwise drop the attribute (HannWindow's Cast `to`)."""
    present = {attribute.name for attribute in node.attribute}
    for name, attribute in schema.attributes.items():
        if name not in present and attribute.default_value.name:
            node.attribute.append(attribute.default_value)


def _with_types(model):
    """The model with the types shape inference finds (context-dependent functions are built from them)."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # a graph inference cannot type keeps the types it has; the strict check comes after
        return model


def expand_functions(model, lacking: Callable[[str, str], bool]) -> tuple[object, dict[str, int]]:
    """Inline, in the main graph, the nodes whose op `lacking(domain, op_type)` and that ONNX defines as a
    function; returns (the model, {op type: how many nodes were expanded})."""
    from onnx.inliner import inline_selected_functions

    expanded: Counter = Counter()
    for _ in range(MAX_ROUNDS):
        selected = []
        for node in model.graph.node:
            domain = node.domain or ""
            if lacking(domain, node.op_type) and has_function(node.op_type, domain, opset_of(model, domain)):
                _add_default_attributes(node, _schema(node.op_type, domain, opset_of(model, domain)))
                selected.append((domain, node.op_type))
        if not selected:
            break
        ids = sorted(set(selected))
        inlined = inline_selected_functions(_with_types(model), ids, inline_schema_functions=True)
        if Counter((n.domain or "", n.op_type) for n in inlined.graph.node if (n.domain or "", n.op_type) in ids) == Counter(selected):
            break  # the inliner could not build these functions: pre-flight refuses the ops
        model = inlined
        expanded.update(op for _, op in selected)
    return model, dict(sorted(expanded.items()))
