"""Inputs whose values TVM needs at build time: axes, sizes, k's and shapes fed from graph inputs.

TVM's importer reads these operands as constants ("Only constant axes currently supported", "TopK k must
be a constant"). Such an input is refused in pre-flight with one line naming the op, unless its value is
bound at build time (`bind_inputs`), which makes it a `Constant` of the model and drops it from the inputs."""

from __future__ import annotations

import numpy as np

from edgepack.errors import EdgepackError

_REDUCE = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
           "ReduceLogSumExp", "ReduceSumSquare")
# op type -> {input position: what it is}
CONSTANT_OPERANDS: dict[str, dict[int, str]] = {
    **{op: {1: "axes"} for op in _REDUCE},
    "TopK": {1: "k"}, "CumSum": {1: "axis"}, "Squeeze": {1: "axes"}, "Unsqueeze": {1: "axes"},
    "Resize": {1: "roi", 2: "scales", 3: "sizes"}, "Upsample": {1: "scales"}, "Tile": {1: "repeats"},
    "Expand": {1: "shape"}, "Reshape": {1: "shape"}, "ConstantOfShape": {0: "shape"}, "OneHot": {1: "depth", 2: "values"}, "MaxUnpool": {2: "output_shape"},
    "Dropout": {1: "ratio", 2: "training_mode"}, "AffineGrid": {1: "size"},  # pre-flight refuses training mode with a nonzero ratio (random)
    "Range": {0: "start", 1: "limit", 2: "delta"}, "Pad": {1: "pads", 2: "constant_value", 3: "axes"}, "Split": {1: "split"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"}, "Trilu": {1: "k"},
    # ops pre-flight rewrites (edgepack.frontends.lower) from their build-time operands
    "CumProd": {1: "axis"}, "Col2Im": {1: "image_shape", 2: "block_shape"}, "DFT": {1: "dft_length", 2: "axis"},
    "STFT": {1: "frame_step", 3: "frame_length"}, "Loop": {0: "M", 1: "cond"},
    # ONNX functions (edgepack.frontends.expand): their bodies compute Pad's pads, Range's limit from these
    "CenterCropPad": {1: "shape"}, "HannWindow": {0: "size"}, "HammingWindow": {0: "size"}, "BlackmanWindow": {0: "size"},
}


def build_time_inputs(model) -> dict[str, str]:
    """{graph input name: 'Op's operand'} for the graph inputs that feed an operand TVM needs as a constant."""
    inputs = {value.name for value in model.graph.input}
    found = {}
    for node in model.graph.node:
        for position, operand in CONSTANT_OPERANDS.get(node.op_type, {}).items():
            if position < len(node.input) and node.input[position] in inputs:
                found.setdefault(node.input[position], f"{node.op_type}'s {operand}")
    return found


def refuse_runtime_operands(model, bound: dict[str, np.ndarray]) -> None:
    """One line for the first graph input TVM needs at build time that is not bound."""
    for name, operand in build_time_inputs(model).items():
        if name not in bound:
            raise EdgepackError(f"input '{name}' feeds {operand}, which TVM needs as a constant at build time",
                                "store its value in the model as an initializer or a Constant")


def bind_inputs(model, values: dict[str, np.ndarray]) -> None:
    """Make the named graph inputs `Constant` nodes holding `values` (the model is changed in place)."""
    from onnx import helper, numpy_helper

    names = [value.name for value in model.graph.input]
    for name, value in values.items():
        if name not in names:
            raise EdgepackError(f"cannot bind '{name}': the model has no such input", f"model inputs: {', '.join(names)}")
    kept = [value for value in model.graph.input if value.name not in values]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    constants = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))
                 for name, value in values.items()]
    for position, node in enumerate(constants):
        model.graph.node.insert(position, node)
