"""What this machine can build and verify, target by target, and what to install for the rest."""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass

from edgepack.compiler.runtime_files import RUNTIME_LIBRARIES, foreign_runtime_dir
from edgepack.targets import TargetSpec, load_target, target_names


@dataclass(frozen=True)
class TargetReadiness:
    """Whether a target can be built and verified here, and the steps that would make it so."""

    target: TargetSpec
    can_build: bool
    can_verify: bool
    runtime: str
    todo: tuple[str, ...]


def check_target(target: TargetSpec) -> TargetReadiness:
    """Compiler, runtime libraries and emulator for one target."""
    todo = []
    if shutil.which(target.toolchain.cxx) is None:
        todo.append(f"apt-get install {' '.join(target.toolchain.apt_packages) or target.toolchain.cxx}")
    native = target.arch == platform.machine()
    if native:
        runtime = "installed wheels"
    else:
        directory = foreign_runtime_dir(target.arch)
        cached = all((directory / name).is_file() for name in RUNTIME_LIBRARIES)
        runtime = f"cached in {directory}" if cached else "downloaded by pip at the first build"
    emulator = native or shutil.which(target.toolchain.emulator or "") is not None
    if target.device == "cuda":  # no emulator runs CUDA: verifying needs a fit GPU here (docs/cuda.md)
        from edgepack.runtime.bundle_format import cuda_problem

        problem = "" if native and cuda_problem({"gpu_arch": target.gpu_arch, "driver": "0.0"}) is None else "no fit GPU here"
        emulator = not problem
        if problem:
            todo.append(f"verify on a machine with an NVIDIA GPU for {target.gpu_arch} ({problem})")
    elif not emulator:
        todo.append(f"apt-get install {' '.join(target.toolchain.emulator_apt_packages) or 'qemu-user'} (to verify builds here)")
    can_build = shutil.which(target.toolchain.cxx) is not None
    return TargetReadiness(target, can_build, can_build and emulator, runtime, tuple(todo))


def check_all() -> list[TargetReadiness]:
    """Readiness of every shipped target."""
    return [check_target(load_target(name)) for name in target_names()]
