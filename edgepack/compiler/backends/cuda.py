"""The CUDA backend: TVM's default CUDA pipeline (dlight schedules), cubins checked, CUDA's runtime shipped.

The CUDA mechanics (toolkit, NVRTC, driver stub, cubin reading, runtime wheels) live in edgepack.compiler.cuda."""

from __future__ import annotations

import platform
from pathlib import Path

from edgepack.compiler import cuda
from edgepack.compiler.config import CompileConfig
from edgepack.runtime.bundle_format import cuda_problem
from edgepack.targets import TargetSpec


class CudaBackend:
    """NVIDIA GPUs: host code for the target's arch plus cubins for its GPU arch."""

    device = "cuda"
    integer_ops = False  # integer execution is built for CPU targets only
    blocked_convs = False  # the CUDA pipeline schedules NCHW convolutions itself

    def check_tools(self, target: TargetSpec) -> None:
        cuda.check_build_tools(target)  # NVRTC, CUDA headers, the driver stub's C compiler

    def build(self, module, tvm_target, target: TargetSpec, config: CompileConfig) -> tuple[object, dict]:
        return cuda.build_for_gpu(module, tvm_target, target)

    def check_library(self, library: Path, target: TargetSpec) -> dict:
        return cuda.require_gpu_code(library, target)

    def runtime_libraries(self, target: TargetSpec) -> list[Path]:
        return cuda.runtime_libraries(target)  # TVM's CUDA runtime module and libcudart of the host arch

    def requirements(self, target: TargetSpec) -> dict:
        return {"cuda": cuda.requirements(target)}  # GPU arch, CUDA driver floor, shipped CUDA runtime

    def verify_here(self, target: TargetSpec) -> tuple[bool, str | None]:
        """No emulator runs CUDA: verifying needs a fit GPU on this machine (docs/cuda.md)."""
        native = target.arch == platform.machine()
        if native and cuda_problem({"gpu_arch": target.gpu_arch, "driver": "0.0"}) is None:
            return True, None
        return False, f"verify on a machine with an NVIDIA GPU for {target.gpu_arch} (no fit GPU here)"
