"""Replace, in pre-flight, nodes of ops TVM's ONNX frontend lacks and ONNX defines no function for, by nodes of
ops TVM imports, using what is fixed at build time (shapes, sequence lengths, constants).

Each op's rewrite lives in its own module; one that cannot replace a node exactly raises CannotLower, the
node stays, and pre-flight refuses its op with that reason."""

from __future__ import annotations

from collections import Counter

from edgepack.frontends.lower_deform_conv import lower_deform_conv
from edgepack.frontends.lower_math import lower_det, lower_dft, lower_stft
from edgepack.frontends.lower_indexing import lower_col2im, lower_cumprod, lower_reverse_sequence, lower_tensor_scatter
from edgepack.frontends.lower_resample import has_output_shape, has_scales_input, lower_max_unpool, lower_upsample
from edgepack.frontends.lower_quant import (blocked, lower_blocked_dequantize, lower_blocked_quantize, lower_qlinear_matmul,
                                            lower_bitcast)
from edgepack.frontends.node_builder import CannotLower, GraphFacts
from edgepack.frontends.scan import lower_loop, lower_scan
from edgepack.frontends.unroll import lower_recurrent

LOWERINGS = {"RNN": lower_recurrent, "GRU": lower_recurrent, "LSTM": lower_recurrent, "Scan": lower_scan, "Loop": lower_loop,
             "CumProd": lower_cumprod, "ReverseSequence": lower_reverse_sequence, "TensorScatter": lower_tensor_scatter,
             "Col2Im": lower_col2im, "Det": lower_det, "DFT": lower_dft, "STFT": lower_stft,
             "QLinearMatMul": lower_qlinear_matmul, "QuantizeLinear": lower_blocked_quantize,
             "DequantizeLinear": lower_blocked_dequantize, "BitCast": lower_bitcast,
             "DeformConv": lower_deform_conv, "MaxUnpool": lower_max_unpool, "Upsample": lower_upsample}
# ops TVM imports, rewritten only where it ignores an attribute
ONLY_WHEN = {"QuantizeLinear": blocked, "DequantizeLinear": blocked, "MaxUnpool": has_output_shape, "Upsample": has_scales_input}


def lowerable(node) -> bool:
    """Whether pre-flight has a rewrite for the node's op (it is then not expanded as a function either)."""
    return ((node.domain or "ai.onnx") == "ai.onnx" and node.op_type in LOWERINGS
            and ONLY_WHEN.get(node.op_type, bool)(node))


def add_default_attributes(model) -> None:
    """Give STFT nodes their schema's default attributes: ONNX's shape inference of STFT reads an absent
    `onesided` as 0, its schema's default is 1. (Not RNN's: its schema's default lists two activations.)"""
    from edgepack.frontends.expand import _add_default_attributes, _schema, opset_of

    for node in model.graph.node:
        if node.op_type == "STFT" and lowerable(node) and (schema := _schema(node.op_type, "", opset_of(model, ""))) is not None:
            _add_default_attributes(node, schema)


def lower(model) -> tuple[dict[str, int], dict[str, str]]:
    """Rewrite the model's lowerable nodes in place (shapes must be inferred); returns ({op: nodes rewritten},
    {op: why a node of it could not be})."""
    facts = GraphFacts(model)
    lowered: Counter = Counter()
    refused: dict[str, str] = {}
    nodes = []
    for node in model.graph.node:
        if not lowerable(node):
            nodes.append(node)
            continue
        try:
            built = LOWERINGS[node.op_type](node, facts)
            nodes.extend(built.nodes)
            model.graph.initializer.extend(built.initializers)
            if built.initializers:  # IR 3 wanted every initializer listed among the inputs
                model.ir_version = max(model.ir_version, 4)
            lowered[node.op_type] += 1
        except CannotLower as exc:
            refused.setdefault(node.op_type, str(exc))
            nodes.append(node)
    if lowered:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return dict(sorted(lowered.items())), refused
