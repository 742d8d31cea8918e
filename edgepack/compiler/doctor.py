"""What this machine can build and verify, target by target, and what to install for the rest."""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass

from edgepack.compiler.backends import backend_for
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
    emulator, fix = backend_for(target).verify_here(target)
    if fix:
        todo.append(fix)
    can_build = shutil.which(target.toolchain.cxx) is not None
    return TargetReadiness(target, can_build, can_build and emulator, runtime, tuple(todo))


def check_all() -> list[TargetReadiness]:
    """Readiness of every shipped target."""
    return [check_target(load_target(name)) for name in target_names()]


def fullest_native_target(targets: list[TargetSpec]) -> TargetSpec | None:
    """Of the CPU targets whose code runs on this machine, the one that uses the most of its CPU features
    (on an AVX-512 machine the AVX-512 target, not the AVX2 default); None when none runs here."""
    native = [target for target in targets if target.runs_on_this_machine()]
    return max(native, key=lambda target: len(target.cpu_features), default=None)
