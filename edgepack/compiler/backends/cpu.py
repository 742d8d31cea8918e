"""The CPU backend: TVM's default CPU pipeline in two halves around edgepack's kernel schedules."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

from edgepack.compiler.config import CompileConfig
from edgepack.compiler.fast_math import fast_math_pass
from edgepack.compiler.schedules import ScheduleReport, cpu_schedule_pass, vector_lanes
from edgepack.compiler.tuning_records import RECORD_FILE, open_database
from edgepack.targets import TargetSpec


class CpuBackend:
    """CPU targets (x86_64, aarch64): tuned or heuristic schedules, integer execution of QDQ graphs."""

    device = "cpu"
    integer_ops = True
    blocked_convs = True  # fp32 convolutions in NCHW[x]c (edgepack.compiler.conv_layout)

    def check_tools(self, target: TargetSpec) -> None:
        return None  # the C++ compiler (checked for every target) is all a CPU build needs

    def build(self, module, tvm_target, target: TargetSpec, config: CompileConfig) -> tuple[object, dict]:
        from tvm import relax

        with tvm_target:
            module = lower_to_tir(module, tvm_target)
            module, report = schedule_kernels(module, tvm_target, config)
            executable = relax.build(module, target=tvm_target, relax_pipeline=_finish_pipeline(tvm_target))
        return executable, report.to_json()

    def check_library(self, library: Path, target: TargetSpec) -> dict:
        return {}

    def runtime_libraries(self, target: TargetSpec) -> list[Path]:
        return []

    def requirements(self, target: TargetSpec) -> dict:
        return {}

    def verify_here(self, target: TargetSpec) -> tuple[bool, str | None]:
        """Natively, or under the target's emulator; else what to install, or where to verify."""
        if target.arch == platform.machine():
            if target.runs_on_this_machine():
                return True, None
            return False, f"verify on a CPU with {', '.join(target.cpu_features)} (this one lacks some; no emulator adds them)"
        if shutil.which(target.toolchain.emulator or "") is not None:
            return True, None
        return (
            False,
            f"apt-get install {' '.join(target.toolchain.emulator_apt_packages) or 'qemu-user'} "
            "(to verify builds here)",
        )


def lower_to_tir(module, tvm_target):
    """Legalize and fuse the imported Relax module into TIR kernels (the default CPU pipeline's first half).

    exp, erf, tanh, sigmoid, softmax and GELU legalize to vectorisable polynomials (edgepack.compiler.fast_math).
    Tuning (edgepack.compiler.tune) extracts its tasks from this module, so records match what compile sees."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    with tvm_target:
        passes = cpu.library_dispatch_passes(tvm_target) + [fast_math_pass()] + cpu.legalize_passes(tvm_target)
        return tvm.transform.Sequential(passes)(module)


def schedule_kernels(module, tvm_target, config: CompileConfig):
    """Apply tuning records where they match, then the heuristic CPU schedules to the other kernels."""
    from tvm import relax

    report = ScheduleReport()
    with tvm_target:
        if config.tuning_database and (Path(config.tuning_database) / RECORD_FILE).is_file():
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
            return tvm.transform.Sequential(cpu.dataflow_lower_passes(tvm_target) + cpu.finalize_passes(tvm_target))(
                module
            )

    return _pipeline
