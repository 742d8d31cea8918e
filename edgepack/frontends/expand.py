"""Expand ops TVM's ONNX frontend lacks into the nodes of their ONNX function.

ONNX defines many ops as functions of other ops: a fixed body (Swish, HannWindow) or one built for the
node's attributes and input types (SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss, Attention,
CenterCropPad). Where TVM has no converter for such an op, the node's function (the newest version at the
model's opset, built from the schema for that node and its input types) becomes a model-local function and
`onnx.inliner` replaces the node by its nodes (intermediate values renamed, attributes and attribute
references mapped, missing optional inputs kept empty, the body's opset converted to the model's),
repeated while a body uses another function op TVM lacks. A node whose function cannot be built, or whose
body needs an op TVM lacks that is no function, stays, and pre-flight refuses its op."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

MAX_ROUNDS = 8  # function bodies nest a level or two (SoftmaxCrossEntropyLoss -> NegativeLogLikelihoodLoss)
_LOCAL_DOMAIN = "edgepack.expanded"  # the functions' domain while they are model-local, gone once inlined


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


def _function(node, schema, opset: int, types: dict):
    """The node's function from its schema (body or context-dependent, newest version <= opset), or None."""
    from onnx import FunctionProto, TypeProto

    bodies = [v for v in schema.function_opset_versions if v <= opset]
    built = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    try:
        if bodies and (not built or max(bodies) >= max(built)):
            serialized = schema.get_function_with_opset_version(max(bodies))
        elif built:
            input_types = [types.get(name, TypeProto()).SerializeToString() for name in node.input]
            serialized = schema.get_context_dependent_function_with_opset_version(max(built), node.SerializeToString(), input_types)
        else:
            return None
    except Exception:  # the builder rejects inputs it cannot type (onnx raises its C++ errors as several types)
        return None
    function = FunctionProto()
    function.ParseFromString(serialized)
    return function if function.node else None


def _expand_round(model, lacking: Callable[[object], bool]) -> tuple[object, list[str]]:
    """One round: every node of the main graph that needs expanding and can be, inlined; returns the ops."""
    from onnx import helper
    from onnx.inliner import inline_local_functions

    if not any(lacking(node) and has_function(node.op_type, node.domain or "", opset_of(model, node.domain or ""))
               for node in model.graph.node):
        return model, []  # most models: no shape inference spent here
    typed = _with_types(model)
    types = {value.name: value.type for value in (*typed.graph.input, *typed.graph.value_info, *typed.graph.output)}
    original, model = model, type(model)()
    model.CopyFrom(typed)  # the inliner converting a body's opset asks for the types of the values around the node
    expanded = []
    for index, node in enumerate(model.graph.node):
        domain = node.domain or ""
        opset = opset_of(model, domain)
        if not lacking(node) or not has_function(node.op_type, domain, opset):
            continue
        schema = _schema(node.op_type, domain, opset)
        _add_default_attributes(node, schema)
        function = _function(node, schema, opset, types)
        if function is None or any(lacking(body) and not has_function(body.op_type, body.domain or "", opset)
                                   for body in function.node):
            continue  # a body with an op that cannot be expanded either (LinearAttention's Scan): refuse the node's own op
        expanded.append(node.op_type)
        function.domain, function.name = _LOCAL_DOMAIN, f"{node.op_type}_{index}"
        node.domain, node.op_type = function.domain, function.name
        model.functions.append(function)
    if not expanded:
        return original, []
    model.opset_import.append(helper.make_opsetid(_LOCAL_DOMAIN, 1))
    try:
        inlined = inline_local_functions(model, convert_version=True)
    except Exception:  # the inliner's C++ errors (a body's opset it cannot convert): the ops stay and are refused
        return original, []
    kept = [entry for entry in inlined.opset_import if entry.domain != _LOCAL_DOMAIN]
    del inlined.opset_import[:]
    inlined.opset_import.extend(kept)
    return inlined, expanded


def expand_functions(model, lacking: Callable[[object], bool]) -> tuple[object, dict[str, int]]:
    """Inline, in the main graph, the nodes TVM cannot import as they are (`lacking(node)`) whose op ONNX
    defines as a function; returns (the model, {op type: how many nodes were expanded})."""
    for node in model.graph.node:  # shape inference reads a body's attribute references too (MeanVarianceNormalization's axes)
        opset = opset_of(model, node.domain or "")
        if has_function(node.op_type, node.domain or "", opset):
            _add_default_attributes(node, _schema(node.op_type, node.domain or "", opset))
    expanded: Counter = Counter()
    for _ in range(MAX_ROUNDS):
        model, ops = _expand_round(model, lacking)
        if not ops:
            break
        expanded.update(ops)
    return model, dict(sorted(expanded.items()))
