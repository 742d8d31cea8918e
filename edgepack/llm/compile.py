"""Stage: build the language model's Relax module for a target; weights (compressed when quantized, interleaved by
the target's vector lanes) in params.bin."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError, first_line
from edgepack.llm.weights import block_weights
from edgepack.llm.relax_model import ModelPlan, build_module, weight_shapes
from edgepack.targets import TargetSpec

PARAMS_NAME = "params.bin"


def compile_llm(plan: ModelPlan, weights: dict[str, np.ndarray], target: TargetSpec, workdir: Path) -> tuple[Path, Path, list[str], dict]:
    """(library, params file, param names in call order, report) for `plan` on `target` (CPU targets)."""
    import tvm
    from tvm import relax

    from edgepack.compiler.compile import check_toolchain, export_shared_library, lower_to_tir
    from edgepack.compiler.schedules import ScheduleReport, cpu_schedule_pass, vector_lanes

    if target.device != "cpu":
        raise EdgepackError(f"language models are built for CPU targets only, not '{target.name}' ({target.device})",
                            "pick a CPU target (see `edgepack targets`)")
    cxx = check_toolchain(target)
    started = time.perf_counter()
    tvm_target = target.tvm_target()
    plan = replace(plan, lanes=vector_lanes(tvm_target))
    plan, integer_dot = _integer_dot(plan, target)
    weights = block_weights(weights, plan.config, plan.scheme, plan.lanes)
    names = [name for name, _, _ in weight_shapes(plan, weights)]
    schedule = ScheduleReport()
    try:
        module = build_module(plan, weights)
        with tvm_target:
            module = lower_to_tir(module, tvm_target)
            module = cpu_schedule_pass(schedule, vector_lanes(tvm_target))(module)
            from tvm.relax.backend.cpu_generic import pipeline as cpu

            finish = tvm.transform.Sequential(cpu.dataflow_lower_passes(tvm_target) + cpu.finalize_passes(tvm_target))
            executable = relax.build(module, target=tvm_target, relax_pipeline=finish)
    except EdgepackError:
        raise
    except Exception as exc:  # TVM raises many types while lowering
        raise EdgepackError(f"TVM failed to compile the language model for '{target.name}': {first_line(exc)}",
                            "report the model's config.json and the target") from None
    library = export_shared_library(executable, Path(workdir), cxx, target)
    params = Path(workdir) / PARAMS_NAME
    params.write_bytes(tvm.runtime.save_param_dict({name: weights[name] for name in names}))
    report = {
        "seconds": round(time.perf_counter() - started, 2),
        "library_bytes": library.stat().st_size,
        "params_bytes": params.stat().st_size,
        "params_file": params.name,
        "n_params": len(names),
        "kernels": schedule.to_json(),
        "integer_dot": integer_dot,
    }
    return library, params, names, report


def _integer_dot(plan: ModelPlan, target: TargetSpec) -> tuple[ModelPlan, dict]:
    """The plan with `integer_dot` kept only where the target and weights allow it, and the report's entry."""
    from edgepack.compiler.int8_dot import dot_feature
    from edgepack.llm.dot_kernels import unsupported

    if not plan.integer_dot or plan.scheme is None:
        return replace(plan, integer_dot=False), {"used": False, "why": "not asked for" if plan.scheme else "fp32 weights"}
    why = unsupported(plan.config.hidden_size, plan.scheme, plan.lanes, dot_feature(target))
    if why is not None:
        return replace(plan, integer_dot=False), {"used": False, "why": why}
    return plan, {"used": True, "feature": "avx512_vnni", "activations": f"int8, one scale per {plan.scheme.group} inputs",
                  "functions": "decode (static single-row matmuls)"}
