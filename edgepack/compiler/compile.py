"""Stage: compile an ONNX model with TVM Relax for a target, weights kept in a separate file."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepack.artifacts import CompiledModule, OnnxModel, StageRecord
from edgepack.errors import EdgepackError, first_line
from edgepack.frontends.preflight import symbolic_shapes
from edgepack.targets import TargetSpec

LIBRARY_NAME = "model.so"
PARAMS_NAME = "params.bin"


@dataclass(frozen=True)
class CompileConfig:
    """How TVM compiles: the Relax pipeline, the schedules of the kernels, the tuning records applied."""

    pipeline: str = "default"  # relax.get_default_pipeline(target)'s passes: folds constants and fuses ops
    # kernels without tuning records get edgepack.compiler.schedules' register-tiled, multi-threaded schedules
    # (ResNet-18 here: 2.4 s naive -> ~0.1 s); False keeps TVM's naive single-threaded loops
    cpu_schedule: bool = True
    # MetaSchedule database (edgepack.compiler.tune) whose records replace the heuristic where workloads match;
    # None applies none
    tuning_database: str | None = None
    # QDQ conv2d/matmul run as int8 ops with int32 accumulation + requantize (edgepack.compiler.integer_ops); CPU targets
    integer_ops: bool = True


def check_toolchain(target: TargetSpec) -> str:
    """The path of the target's C++ compiler; refuses, with the install command, when absent."""
    found = shutil.which(target.toolchain.cxx)
    if found is None:
        packages = " ".join(target.toolchain.apt_packages) or target.toolchain.cxx
        raise EdgepackError(f"target '{target.name}' needs the compiler '{target.toolchain.cxx}', which is not installed",
                            f"install it: apt-get install {packages}")
    if target.device == "cuda":  # NVRTC, CUDA headers, the driver stub's C compiler
        from edgepack.compiler.cuda import check_build_tools

        check_build_tools(target)
    return found


def import_relax(model: OnnxModel, integer_ops: bool = True, report=None):
    """The model as a Relax module with detached params; with `integer_ops`, QDQ chains rewritten to integer ops
    (edgepack.compiler.integer_ops), filling `report` (an IntegerReport) when given. Tuning and compiling both import here."""
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    try:
        module = from_onnx(onnx.load(str(model.path)), shape_dict=symbolic_shapes(model.inputs),
                           dtype_dict={s.name: s.dtype for s in model.inputs}, keep_params_in_input=True)
    except Exception as exc:  # the frontend raises many types for ops it cannot convert
        raise EdgepackError(f"TVM cannot import the model: {first_line(exc)}", "simplify or re-export the model") from None
    module, params = relax.frontend.detach_params(module)
    upper = {d: b[1] for spec in model.inputs for d, b in zip(spec.dims, spec.bounds) if d is not None}
    if upper:  # memory planned once for the largest sizes, not allocated call by call
        module["main"] = module["main"].with_attr("tir_var_upper_bound", upper)
    from edgepack.compiler.integer_ops import integerize, survey

    module, params, integer = integerize(module, params) if integer_ops else (module, params, survey(module))
    if report is not None:
        report.merge(integer)
    from edgepack.compiler.weight_layout import pretranspose_weights

    module, weights = embed_scalar_params(module, params.get("main", []))
    module, weights, _ = pretranspose_weights(module, weights)
    return module, {**params, "main": weights}


def embed_scalar_params(module, params: list) -> tuple[object, list]:
    """One-element params of `main` (a Clip's bounds, a quantizer's scale) become constants of the module.

    As runtime params they cannot be folded: the ONNX frontend's NaN handling of Clip bounds
    (`where(isnan(bound), ...)`) then stays in every fused convolution + ReLU6 kernel as scalar blocks,
    on which MetaSchedule's rules fail (18 of MobileNetV2's 32 kernels could not be tuned)."""
    from edgepack.compiler.relax_params import bind_as_constants, input_count

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


def lower_to_tir(module, tvm_target):
    """Legalize and fuse the imported Relax module into TIR kernels (the default CPU pipeline's first half).

    Tuning (edgepack.compiler.tune) extracts its tasks from this module, so records match what compile sees."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    with tvm_target:
        return tvm.transform.Sequential(cpu.library_dispatch_passes(tvm_target) + cpu.legalize_passes(tvm_target))(module)


def schedule_kernels(module, tvm_target, config: CompileConfig):
    """Apply tuning records where they match, then the heuristic CPU schedules to the other kernels."""
    from tvm import relax

    from edgepack.compiler.schedules import ScheduleReport, cpu_schedule_pass, vector_lanes

    report = ScheduleReport()
    with tvm_target:
        if config.tuning_database and (Path(config.tuning_database) / "database_tuning_record.json").is_file():
            from edgepack.compiler.tune import open_database

            with open_database(Path(config.tuning_database)):
                module = relax.transform.MetaScheduleApplyDatabase()(module)
        if config.cpu_schedule and tvm_target.kind.name == "llvm":
            module = cpu_schedule_pass(report, vector_lanes(tvm_target))(module)
    return module, report


def _finish_pipeline(tvm_target):
    """The default CPU pipeline's second half: lower dataflow, plan memory, finalize for the VM."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="EdgepackFinish")
    def _pipeline(module, _ctx):
        with tvm_target:
            return tvm.transform.Sequential(cpu.dataflow_lower_passes(tvm_target) + cpu.finalize_passes(tvm_target))(module)

    return _pipeline


def compile_model(model: OnnxModel, target: TargetSpec, workdir: Path, config: CompileConfig = CompileConfig()) -> tuple[CompiledModule, StageRecord]:
    """Import the ONNX model into Relax, build it for `target`, write library and params into workdir."""
    import tvm
    from tvm import relax

    cxx = check_toolchain(target)
    started = time.perf_counter()
    from edgepack.compiler.integer_ops import IntegerReport, speed_warnings

    integer_report = IntegerReport()
    module, params = import_relax(model, config.integer_ops and target.device == "cpu", integer_report)
    if config.integer_ops and target.device != "cpu":
        integer_report.note = f"integer execution is built for CPU targets only, not {target.device}"
    function = module["main"]
    names = _param_names(function, len(model.inputs))
    tvm_target = target.tvm_target()
    schedule_report = None
    try:
        if target.device == "cuda":  # GPU: the default CUDA pipeline with dlight schedules (edgepack.compiler.cuda)
            from edgepack.compiler.cuda import build_for_gpu

            executable, gpu_report = build_for_gpu(module, tvm_target, target)
        else:
            with tvm_target:
                module = lower_to_tir(module, tvm_target)
                module, schedule_report = schedule_kernels(module, tvm_target, config)
                executable = relax.build(module, target=tvm_target, relax_pipeline=_finish_pipeline(tvm_target))
    except EdgepackError:
        raise
    except Exception as exc:  # TVM raises many types while lowering
        raise EdgepackError(f"TVM failed to compile the model for '{target.name}': {first_line(exc)}",
                            "report the model and target; try another target file meanwhile") from None
    library = Path(workdir) / LIBRARY_NAME
    executable.export_library(str(library), cc=cxx)
    if target.device == "cuda":
        from edgepack.compiler.cuda import require_gpu_code

        gpu_report.update(require_gpu_code(library, target))
    from edgepack.bundle.sparse_params import write_params  # params.sparse when zeros make it >10% smaller

    param_file, param_encoding = write_params(Path(workdir), tvm.runtime.save_param_dict(dict(zip(names, params.get("main", [])))))
    report = {
        "seconds": round(time.perf_counter() - started, 2),
        "library_bytes": library.stat().st_size,
        "params_bytes": param_file.stat().st_size,
        "params_file": param_file.name,
        **({"params_dense_bytes": param_encoding["dense_bytes"]} if param_encoding else {}),
        "n_params": len(names),
        "kernels": gpu_report if target.device == "cuda" else schedule_report.to_json(),
        "integer_ops": integer_report.to_json(),
        "warnings": speed_warnings(integer_report, target),
    }
    compiled = CompiledModule(library, param_file, names, target, model)
    return compiled, StageRecord("compile", {**asdict(config), "tvm_target": dict(target.tvm)}, report)
