"""Pre-flight of an ONNX model: load, check, fix shapes, and report ops before compiling."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


from edgepack.artifacts import OnnxModel, StageRecord
from edgepack.errors import EdgepackError, first_line
from edgepack.runtime.bundle_format import TensorSpec, container_dtype
from edgepack.frontends.build_time import bind_inputs, refuse_runtime_operands
from edgepack.frontends.expand import expand_functions
from edgepack.frontends.fold import FoldReport, fold_shape_computations
from edgepack.frontends.legalize import legalize
from edgepack.frontends.low_precision import carried_dtypes, carry_low_precision
from edgepack.frontends.lower import add_default_attributes, lower, lowerable
from edgepack.frontends.signature import check_tensor_size, numpy_dtype, with_dim_ranges

_ALWAYS_SUPPORTED = {"Constant", "If"}  # handled by the TVM frontend outside its converter map
# in TVM's converter map but not importable as ONNX defines them: the converter reads com.microsoft's `num_heads`
# (pre-flight expands ONNX's Attention into its function instead, frontends/expand.py)
NOT_IMPORTABLE = {"Attention"}
# attribute values TVM's converters ignore or reject (found by scripts/coverage.py): (op, attribute, refused values, why)
NOT_IMPORTABLE_ATTRIBUTES = (
    ("Resize", "antialias", (1,), "antialias is ignored by TVM"),
    ("Resize", "coordinate_transformation_mode", (b"half_pixel_symmetric",), "half_pixel_symmetric is not implemented in TVM"),
    ("Resize", "keep_aspect_ratio_policy", (b"not_larger", b"not_smaller"),
     "TVM cannot import a kept aspect ratio, and ONNX interpolates by one scale that the rounded sizes need not keep"),
    ("QuantizeLinear", "block_size", "nonzero", "blocked quantization is not supported by TVM"),
    ("DequantizeLinear", "block_size", "nonzero", "blocked quantization is not supported by TVM"),
    ("BatchNormalization", "training_mode", (1,), "training mode is not supported by TVM"),
    ("RoiAlign", "mode", (b"max",), "TVM's max mode differs from ONNX's: max abs err 0.4 on ONNX's own test case"),
)


def _attribute_refusals(graph) -> set[str]:
    from onnx import helper

    refused = set()
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for op, name, values, why in NOT_IMPORTABLE_ATTRIBUTES:
            value = attributes.get(name)
            if node.op_type == op and value is not None and (value in values if values != "nonzero" else value != 0):
                refused.add(f"{op} ({why})")
    return refused


def _operand_refusals(graph) -> set[str]:
    """Nodes whose operands ask for what TVM cannot give: Pad's pads and ConstantOfShape's shape not
    constant after folding; Dropout in training mode with a nonzero ratio
    (random; TVM's converter computes inference mode whatever the mode)."""
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    constants.update({node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in graph.node
                      if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value"})
    refused = set()
    # with every input size fixed, an operand folding left unknown depends on input values (not on a named axis)
    fixed = all(d.HasField("dim_value") for v in graph.input for d in v.type.tensor_type.shape.dim)
    for node in graph.node:
        if fixed and node.op_type == "Pad" and len(node.input) > 1 and node.input[1] and node.input[1] not in constants:
            refused.add("Pad (its pads are computed from input values at run time; TVM needs them constant)")
        if fixed and node.op_type == "ConstantOfShape" and node.input[0] not in constants:
            refused.add("ConstantOfShape (its shape is computed from input values at run time; TVM needs it constant)")
        if node.op_type != "Dropout" or len(node.input) < 3 or not node.input[2]:
            continue
        training = constants.get(node.input[2])
        ratio = constants.get(node.input[1], np.array(0.5)) if node.input[1] else np.array(0.5)
        if training is None or (bool(np.asarray(training).reshape(-1)[0]) and float(np.asarray(ratio).reshape(-1)[0]) != 0):
            refused.add("Dropout (training mode drops elements at random: no build can match it; export in inference mode)")
    return refused


@dataclass(frozen=True)
class PreflightReport:
    """What the pre-flight found: opset, op counts and the ops TVM cannot import."""

    opset: int
    op_counts: dict[str, int]
    unsupported: tuple[str, ...]

    def to_json(self) -> dict:
        return {"opset": self.opset, "op_counts": self.op_counts, "unsupported": list(self.unsupported)}


def load_onnx(path: Path):
    """Read an ONNX file, with one-line errors for missing, foreign or truncated files."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise EdgepackError(f"model file '{path}' does not exist", "check the path")
    try:
        model = onnx.load(str(path))
    except onnx.checker.ValidationError as exc:
        raise EdgepackError(f"cannot read '{path}': {first_line(exc)}",
                            "keep the model's external data file next to it, or save the model as one file") from None
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise EdgepackError(f"'{path}' is not a readable ONNX model ({type(exc).__name__})",
                            "export the model to ONNX again; the file may be truncated or of another format") from None
    if not model.graph.node:
        raise EdgepackError(f"'{path}' holds no ONNX graph (is it an ONNX file?)",
                            "pass a .onnx model, a .pt2 program or file.py:factory")
    return model


def drop_listed_weights(model) -> int:
    """Remove initializer names from the graph inputs (old exporters' `keep_initializers_as_inputs`): TVM would
    otherwise order those weights among `main`'s params ahead of the others; returns how many were listed."""
    initializers = {init.name for init in model.graph.initializer}
    kept = [value for value in model.graph.input if value.name not in initializers]
    listed = len(model.graph.input) - len(kept)
    if listed:
        del model.graph.input[:]
        model.graph.input.extend(kept)
    if initializers:  # IR 3 required weights among the inputs; 4 lifted it (old exporters listed only some)
        model.ir_version = max(model.ir_version, 4)
    return listed


OLDEST_OPSET = 7  # ONNX Runtime, the golden reference, loads nothing older
UPGRADE_OPSET = 13


def upgrade_old_opset(model):
    """Models older than opset 7 converted to opset 13 with `onnx.version_converter`; returns (model, the opset
    it was upgraded from or None)."""
    from onnx import version_converter

    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    if not 0 < opset < OLDEST_OPSET:
        return model, None
    _channel_slopes(model)
    try:
        return version_converter.convert_version(model, UPGRADE_OPSET), opset
    except Exception as exc:  # the converter raises its own C++ error types
        raise EdgepackError(f"the model's opset {opset} is older than {OLDEST_OPSET} and onnx.version_converter cannot "
                            f"upgrade it: {first_line(exc)}", "re-export the model with a current exporter") from None


def _channel_slopes(model) -> None:
    """Before opset 7 a PRelu slope of shape [C] applied along the channel axis (1); from opset 7 it broadcasts
    from the last axis, and the version converter leaves it as it is. Such slopes become [C, 1, ..., 1]."""
    import onnx
    from onnx import numpy_helper

    ranks = {value.name: len(value.type.tensor_type.shape.dim)
             for value in onnx.shape_inference.infer_shapes(model).graph.value_info[:] + model.graph.input[:]
             if value.type.tensor_type.HasField("shape")}
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "PRelu" or len(node.input) != 2:
            continue
        slope, rank = initializers.get(node.input[1]), ranks.get(node.input[0], 0)
        if slope is None or len(slope.dims) != 1 or slope.dims[0] == 1 or rank <= 2:
            continue
        values = numpy_helper.to_array(slope).reshape([slope.dims[0]] + [1] * (rank - 2))
        slope.CopyFrom(numpy_helper.from_array(values, slope.name))


def _graph_inputs(model) -> list:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def fix_input_shapes(model, overrides: dict[str, TensorSpec], dim_ranges: dict | None = None) -> list[TensorSpec]:
    """Give every graph input its shape (from `overrides` where given) and return the specs.

    A named axis (`--input x:Bx30`, or the model's own dynamic axis) stays symbolic under its name, with
    its range from `dim_ranges` (signature.DEFAULT_DIM_RANGE where none is given)."""
    inputs = _graph_inputs(model)
    names = [value.name for value in inputs]
    for name in overrides:
        if name not in names:
            raise EdgepackError(f"--input names '{name}', which the model does not have", f"model inputs: {', '.join(names)}")
    specs = []
    for value in inputs:
        tensor_type = value.type.tensor_type
        dtype = numpy_dtype(tensor_type.elem_type, f"input '{value.name}'")
        dims = tensor_type.shape.dim
        if value.name in overrides:
            spec = overrides[value.name]
            if spec.dtype != dtype:
                raise EdgepackError(f"--input '{value.name}' says {spec.dtype}, the model says {dtype}", f"use :{dtype}")
            if len(spec.shape) != len(dims):
                raise EdgepackError(f"--input '{value.name}' has rank {len(spec.shape)}, the model's input has rank {len(dims)}",
                                    "give one dimension per axis")
            names = spec.dims or (None,) * len(spec.shape)
            for axis, (dim, want, label) in enumerate(zip(dims, spec.shape, names)):
                if dim.HasField("dim_value") and dim.dim_value >= 1 and (label is not None or dim.dim_value != want):
                    raise EdgepackError(f"--input '{value.name}' dim {axis} is {label or want}, the model fixes it to {dim.dim_value}",
                                        "use the model's size for that axis")
                dim.Clear()
                if label is None:
                    dim.dim_value = want
                else:
                    dim.dim_param = label
            specs.append(with_dim_ranges(spec, dim_ranges or {}))
            continue
        labels = []
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value >= 1:
                labels.append(None)
                continue
            label = dim.dim_param if dim.HasField("dim_param") and dim.dim_param.isidentifier() else f"{value.name}_{axis}"
            label = label if label.isidentifier() else f"d{len(labels)}"
            dim.Clear()
            dim.dim_param = label
            labels.append(label)
        shape = tuple(dim.dim_value if label is None else 0 for dim, label in zip(dims, labels))
        spec = TensorSpec(value.name, dtype, shape, tuple(labels), tuple(None for _ in labels)) if any(labels) else TensorSpec(value.name, dtype, shape)
        specs.append(with_dim_ranges(spec, dim_ranges or {}))
    return specs


def _all_op_types(graph) -> list[tuple[str, str]]:
    ops = []
    for node in graph.node:
        ops.append((node.domain or "ai.onnx", node.op_type))
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                ops.extend(_all_op_types(subgraph))
    return ops


def tvm_lacks(domain: str, op_type: str) -> bool:
    """Whether TVM's ONNX frontend cannot import the op (no converter, another domain, or NOT_IMPORTABLE)."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    if domain not in ("ai.onnx", ""):
        return True
    return op_type in NOT_IMPORTABLE or (op_type not in _ALWAYS_SUPPORTED and op_type not in _get_convert_map())


def tvm_imports_wrongly(node) -> bool:
    """Nodes TVM imports but whose results differ from ONNX's: LayerNormalization's optional Mean and
    InvStdDev outputs (its converter computes only Y); expanded into their ONNX function instead."""
    return node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx") and len([o for o in node.output if o]) > 1


def needs_expansion(node) -> bool:
    """Whether pre-flight expands the node into its ONNX function (where ONNX defines one); not the ops
    it lowers itself (frontends/lower.py), so a function whose body uses one (a Scan) is expanded."""
    return (tvm_lacks(node.domain or "ai.onnx", node.op_type) or tvm_imports_wrongly(node)) and not lowerable(node)


def op_report(model) -> PreflightReport:
    """Count the model's ops and list those the TVM ONNX frontend cannot import."""
    ops = _all_op_types(model.graph)
    counts = Counter(op for _, op in ops)
    unsupported = sorted({op if domain == "ai.onnx" else f"{domain}.{op}"
                          for domain, op in set(ops) if tvm_lacks(domain, op)} | _attribute_refusals(model.graph)
                        | _operand_refusals(model.graph))
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    return PreflightReport(opset, dict(sorted(counts.items())), tuple(unsupported))


def output_specs(model, inputs: list[TensorSpec]) -> list[TensorSpec]:
    """Output names, dtypes and static shapes from ONNX shape inference (inputs fixed), else from TVM's import;
    nothing is run, so a model ONNX Runtime refuses (or that fails on all-zero inputs) still gets its shapes."""
    ranges = {d: b for spec in inputs for d, b in zip(spec.dims, spec.bounds) if d is not None}
    specs, unknown = [], []
    for value in model.graph.output:
        tensor_type = value.type.tensor_type
        dims = tensor_type.shape.dim if tensor_type.HasField("shape") else None
        static = dims is not None and all(dim.HasField("dim_value") or dim.dim_param in ranges for dim in dims)
        dtype = numpy_dtype(tensor_type.elem_type, f"output '{value.name}'") if tensor_type.elem_type else None
        specs.append(_output_spec(value.name, dtype, [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in dims], ranges)
                     if static and dtype else None)
        if specs[-1] is None:
            unknown.append(value.name)
    if unknown:
        specs = [spec or imported for spec, imported in zip(specs, _imported_output_specs(model, inputs, unknown))]
    return specs


def symbolic_shapes(inputs) -> dict[str, list]:
    """from_onnx's shape_dict: sizes, and one int64 TIR variable per dimension name (Relax symbolic shapes)."""
    import tvm

    variables: dict = {}
    return {spec.name: [n if not spec.dims or spec.dims[axis] is None else variables.setdefault(spec.dims[axis], tvm.tirx.Var(spec.dims[axis], "int64"))
                        for axis, n in enumerate(spec.shape)] for spec in inputs}


def import_with_tvm(model, inputs: list[TensorSpec]):
    """TVM's Relax import of an ONNX model whose inputs are `inputs` (byte containers for the low-precision types).

    The frontend prints the op it failed on to stdout ("Error converting operator X, with inputs: ..."): that line
    is kept off the user's terminal and its op named in the one-line error instead."""
    import contextlib
    import io
    import re

    from tvm.relax.frontend.onnx import from_onnx

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            return from_onnx(model, shape_dict=symbolic_shapes(inputs),
                             dtype_dict={s.name: container_dtype(s.dtype) for s in inputs}, keep_params_in_input=True)
    except Exception as exc:  # the frontend raises many types for ops it cannot convert
        problem = first_line(exc)
        saved_stderr = _stderr_off()  # the traceback's BlockBuilder, freed with it, logs a C++ warning to fd 2
    _stderr_back(saved_stderr)
    failed = re.search(r"Error converting operator (\w+)", printed.getvalue())
    where = f" (at its {failed.group(1)} node)" if failed else ""
    raise EdgepackError(f"TVM cannot import the model{where}: {problem}", "simplify or re-export the model")


def _stderr_off() -> int:
    """File descriptor 2 pointed at /dev/null; returns a copy of the real one for `_stderr_back`."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    return saved


def _stderr_back(saved: int) -> None:
    """Collect what a failure left (TVM logs as it is destroyed), then give file descriptor 2 back."""
    import gc
    import os

    try:
        gc.collect()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _imported_output_specs(model, inputs: list[TensorSpec], unknown: list[str]) -> list[TensorSpec]:
    """Output specs from the struct info of TVM's import of `main` (shapes it derives from the fixed inputs)."""
    ranges = {d: b for spec in inputs for d, b in zip(spec.dims, spec.bounds) if d is not None}
    module = import_with_tvm(model, inputs)
    info = module["main"].ret_ty
    fields = list(info.fields) if hasattr(info, "fields") else [info]
    specs = []
    for value, field in zip(model.graph.output, fields):
        if value.name not in unknown:
            specs.append(None)
            continue
        shape = getattr(field, "shape", None)
        values = getattr(shape, "values", None)
        sizes = [int(dim.value) if hasattr(dim, "value") else getattr(dim, "name", None) for dim in values or []]
        if values is None or not all(isinstance(size, int) or size in ranges for size in sizes):
            raise EdgepackError(f"output '{value.name}' has no static shape (it depends on input values, or is not a tensor)",
                                "bundles need tensor outputs whose sizes are fixed or named input dimensions")
        specs.append(_output_spec(value.name, str(field.dtype), sizes, ranges))
    return specs


def _output_spec(name: str, dtype: str, sizes: list, ranges: dict) -> TensorSpec:
    """An output spec from sizes that are ints or names of input dimensions (dynamic, smallest size in `shape`)."""
    if all(isinstance(size, int) for size in sizes):
        return TensorSpec(name, dtype, tuple(sizes))
    dims = tuple(None if isinstance(size, int) else size for size in sizes)
    bounds = tuple(None if d is None else tuple(ranges[d]) for d in dims)
    return TensorSpec(name, dtype, tuple(size if d is None else ranges[d][0] for size, d in zip(sizes, dims)), dims, bounds)


FOLD_ROUNDS = 3  # a folded value (Pad's pads) lets inference find more static shapes, which fold again


def _infer_and_fold(model, path: Path):
    """Shape inference (strict), then folding, again while folding finds something new; returns (model, FoldReport)."""
    import onnx

    total = FoldReport(0, 0)
    for _ in range(FOLD_ROUNDS):
        try:
            model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        except Exception as exc:  # onnx raises InferenceError and others; all mean an inconsistent graph
            raise EdgepackError(f"shape inference fails on '{path}': {first_line(exc)}",
                                "check the --input shapes against the model") from None
        model, folded = fold_shape_computations(model)
        total = FoldReport(total.folded_nodes + folded.folded_nodes, total.constant_initializers + folded.constant_initializers)
        if not folded.folded_nodes:
            break
    return model, total


def preflight(path: Path, overrides: dict[str, TensorSpec], workdir: Path,
              bound: dict[str, np.ndarray] | None = None, dim_ranges: dict | None = None) -> tuple[OnnxModel, StageRecord]:
    """Check an ONNX file, fix its input shapes, refuse unsupported ops; writes workdir/model.onnx.

    `bound` gives inputs their values at build time (edgepack.frontends.build_time): they become constants."""
    import onnx

    model = load_onnx(path)
    listed_weights = drop_listed_weights(model)
    model, upgraded_from = upgrade_old_opset(model)
    if model.graph.initializer:  # the converter keeps the old IR version, under which weights must be listed
        model.ir_version = max(model.ir_version, 4)
    if bound:
        bind_inputs(model, bound)
    refuse_runtime_operands(model, bound or {})
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise EdgepackError(f"'{path}' fails the ONNX checker: {first_line(exc)}", "re-export the model with a current exporter") from None
    inputs = fix_input_shapes(model, overrides, dim_ranges)
    for spec in inputs:  # before anything is allocated for them
        check_tensor_size(spec)
    model, expanded = expand_functions(model, needs_expansion)
    add_default_attributes(model)
    model, folded = _infer_and_fold(model, path)
    lowered, not_lowered = lower(model)
    if lowered:  # the new nodes' shapes, and what they let fold
        model, more = _infer_and_fold(model, path)
        folded = FoldReport(folded.folded_nodes + more.folded_nodes, folded.constant_initializers + more.constant_initializers)
    carried = carried_dtypes(model)  # the signature keeps these types; the model takes their containers
    legalized = {**carry_low_precision(model), **legalize(model)}
    report = op_report(model)
    # ops TVM imports but not as these nodes need (MaxUnpool's output_shape, Upsample's scales input)
    report = replace(report, unsupported=tuple(sorted(set(report.unsupported) | set(not_lowered))))
    if report.unsupported:
        ops = [f"{op} ({not_lowered[op]})" if op in not_lowered else op for op in report.unsupported]
        raise EdgepackError(f"TVM's ONNX frontend does not support these ops: {', '.join(ops)}",
                            "replace them in the model (or export with another opset) before building")
    outputs = [replace(spec, dtype=carried.get(spec.name, spec.dtype)) for spec in output_specs(model, inputs)]
    static_path = Path(workdir) / "model.onnx"
    onnx.save(model, str(static_path))
    record = StageRecord("preflight", {"input_overrides": {n: s.to_json() for n, s in overrides.items()}},
                         {**report.to_json(), "weights_listed_as_inputs": listed_weights, **folded.to_json(), "legalized": legalized, "expanded": expanded,
                          **({"lowered": lowered} if lowered else {}),
                          **({"opset_upgraded_from": upgraded_from} if upgraded_from else {})})
    return OnnxModel.at(static_path, inputs, outputs), record
