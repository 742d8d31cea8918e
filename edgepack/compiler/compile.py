"""Stage: compile an ONNX model with TVM Relax for a target, weights kept in a separate file."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgepack.artifacts import CompiledModule, OnnxModel, StageRecord
from edgepack.bundle.sparse_params import write_params
from edgepack.compiler.backends import backend_for, check_toolchain
from edgepack.compiler.backends.cpu import lower_to_tir, schedule_kernels
from edgepack.compiler.channel_shuffle import remove_channel_shuffles
from edgepack.compiler.config import CompileConfig
from edgepack.compiler.conv_layout import block_convolutions
from edgepack.compiler.int8_dot import DotReport, dot_feature, use_dot_kernels
from edgepack.compiler.integer_ops import IntegerReport, integerize, speed_warnings, survey
from edgepack.compiler.relax_params import bind_as_constants, input_count
from edgepack.compiler.schedules import vector_lanes
from edgepack.compiler.weight_layout import pretranspose_weights
from edgepack.errors import EdgepackError, first_line
from edgepack.frontends.preflight import import_with_tvm
from edgepack.targets import TargetSpec

__all__ = ["CompileConfig", "check_toolchain", "compile_model", "import_relax", "lower_to_tir", "schedule_kernels",
           "embed_scalar_params", "export_shared_library", "LIBRARY_NAME", "PARAMS_NAME"]

LIBRARY_NAME = "model.so"
#: linker options of the shipped library: no symbol table or debug info (its functions are found through the
#: dynamic symbol table, which stays); the digits CNN's arm64 model.so: 115 KB -> 67 KB
LIBRARY_LINK_OPTIONS = ["-s"]
PARAMS_NAME = "params.bin"


def import_relax(model: OnnxModel, integer_ops: bool = True, report=None, conv_block: int = 0, layout_report: dict | None = None,
                 int8_dot: str | None = None, dot_report: DotReport | None = None, remove_shuffles: bool = True,
                 shuffle_report: dict | None = None, winograd: bool = True):
    """The model as a Relax module with detached params; with `integer_ops`, QDQ chains rewritten to integer ops
    (edgepack.compiler.integer_ops), filling `report` (an IntegerReport) when given; with `conv_block`, convolutions
    blocked by that many channels (edgepack.compiler.conv_layout), counted in `layout_report` when given; with
    `int8_dot` (a cpu_features name, edgepack.compiler.int8_dot.dot_feature), integer matmuls on that
    instruction's kernel, listed in `dot_report`; with `remove_shuffles`, channel shuffles absorbed into the
    convolutions around them (edgepack.compiler.channel_shuffle), counted in `shuffle_report` when given; with
    `winograd`, blocked 3x3 stride-1 convolutions where it wins as Winograd kernels (edgepack.compiler.winograd). Tuning
    and compiling both import here."""
    import onnx
    from tvm import relax

    graph = onnx.load(str(model.path))
    if remove_shuffles:
        graph, shuffles = remove_channel_shuffles(graph, conv_block)  # shapes: pre-flight's inference, saved with it
        if shuffle_report is not None and (shuffles.found or shuffles.padded_convs):
            shuffle_report.update(shuffles.to_json())
    module = import_with_tvm(graph, model.inputs)
    module, params = relax.frontend.detach_params(module)
    upper = {d: b[1] for spec in model.inputs for d, b in zip(spec.dims, spec.bounds) if d is not None}
    if upper:  # memory planned once for the largest sizes, not allocated call by call
        module["main"] = module["main"].with_attr("tir_var_upper_bound", upper)
    module, params, integer = integerize(module, params) if integer_ops else (module, params, survey(module))
    if report is not None:
        report.merge(integer)
    module, weights = embed_scalar_params(module, params.get("main", []))
    if conv_block:
        module, weights, layout = block_convolutions(module, weights, input_count(module["main"]), conv_block, winograd)
        if layout_report is not None:
            layout_report.update(layout)
    module, weights, _ = pretranspose_weights(module, weights)
    if integer_ops and int8_dot:
        module, weights = use_dot_kernels(module, weights, int8_dot, dot_report)
    return module, {**params, "main": weights}


def export_shared_library(executable, workdir: Path, cxx: str, target: TargetSpec) -> Path:
    """Link the built executable into workdir/model.so with the target's C++ compiler.

    The packed-imports object is made for the triple `cxx -dumpmachine` names: TVM's default asks the host's g++,
    which breaks a cross build whose kernels all folded away (no LLVM module to take the triple from)."""
    from tvm.support import cc

    library = Path(workdir) / LIBRARY_NAME
    fcompile = cc.cross_compiler(cxx, options=list(LIBRARY_LINK_OPTIONS), get_target_triple=cc.get_target_by_dump_machine(cxx))
    try:
        executable.export_library(str(library), fcompile=fcompile)
    except RuntimeError as exc:  # TVM's cc wrapper raises the linker's output
        raise EdgepackError(f"linking the model for '{target.name}' with {cxx} failed: {first_line(exc)}",
                            "report the model and target; check the target's toolchain meanwhile") from None
    return library


def embed_scalar_params(module, params: list) -> tuple[object, list]:
    """One-element params of `main` (a Clip's bounds, a quantizer's scale) become constants of the module.

    As runtime params they cannot be folded: the ONNX frontend's NaN handling of Clip bounds
    (`where(isnan(bound), ...)`) then stays in every fused convolution + ReLU6 kernel as scalar blocks,
    on which MetaSchedule's rules fail (18 of MobileNetV2's 32 kernels could not be tuned)."""
    function = module["main"]
    weights = function.params[input_count(function):]
    return bind_as_constants(module, params, {var for var, value in zip(weights, params) if int(np.prod(value.shape)) == 1})


def _param_names(function, n_inputs: int) -> tuple[str, ...]:
    names, seen = [], set()
    for index, var in enumerate(function.params[n_inputs:]):
        name = var.name or f"param_{index}"
        if name in seen:
            name = f"{name}_{index}"
        seen.add(name)
        names.append(name)
    return tuple(names)


def compile_model(model: OnnxModel, target: TargetSpec, workdir: Path, config: CompileConfig = CompileConfig()) -> tuple[CompiledModule, StageRecord]:
    """Import the ONNX model into Relax, build it with the target's backend, write library and params into workdir."""
    import tvm

    backend = backend_for(target)
    cxx = check_toolchain(target)
    started = time.perf_counter()
    integer_report = IntegerReport()
    tvm_target = target.tvm_target()
    conv_block = vector_lanes(tvm_target) if config.blocked_convs and backend.blocked_convs else 0
    layout_report: dict = {"layout": "NCHW", "blocked_convs": 0}
    integer = config.integer_ops and backend.integer_ops
    dot_report = DotReport()
    shuffle_report: dict = {}
    module, params = import_relax(model, integer, integer_report, conv_block, layout_report,
                                  dot_feature(target) if integer else None, dot_report, config.remove_shuffles, shuffle_report,
                                  config.winograd)
    if config.integer_ops and not backend.integer_ops:
        integer_report.note = f"integer execution is built for CPU targets only, not {target.device}"
    names = _param_names(module["main"], len(model.inputs))
    try:
        executable, kernels = backend.build(module, target.tvm_target(), target, config)
    except EdgepackError:
        raise
    except Exception as exc:  # TVM raises many types while lowering
        raise EdgepackError(f"TVM failed to compile the model for '{target.name}': {first_line(exc)}",
                            "report the model and target; try another target file meanwhile") from None
    library = export_shared_library(executable, Path(workdir), cxx, target)
    kernels.update(backend.check_library(library, target))
    # params.sparse when zeros make it >10% smaller
    param_file, param_encoding = write_params(Path(workdir), tvm.runtime.save_param_dict(dict(zip(names, params.get("main", [])))))
    report = {
        "seconds": round(time.perf_counter() - started, 2),
        "library_bytes": library.stat().st_size,
        "params_bytes": param_file.stat().st_size,
        "params_file": param_file.name,
        **({"params_dense_bytes": param_encoding["dense_bytes"]} if param_encoding else {}),
        "n_params": len(names),
        "kernels": kernels,
        "integer_ops": {**integer_report.to_json(), "dot_product": dot_report.to_json()},
        "conv_layout": layout_report,
        **({"channel_shuffles": shuffle_report} if shuffle_report else {}),
        "warnings": speed_warnings(integer_report, target, dot_report),
    }
    compiled = CompiledModule(library, param_file, names, target, model)
    return compiled, StageRecord("compile", {**asdict(config), "tvm_target": dict(target.tvm)}, report)
