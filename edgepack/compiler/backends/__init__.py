"""Backends as data: one per device kind (cpu, cuda), chosen from the target file's `device`.

A backend owns what differs between device kinds: the build tools it checks before any work, how
a Relax module becomes an executable, the checks on the exported library, the runtime files a bundle
ships and the requirements its manifest states. Callers ask `backend_for(target)`; nothing outside
this package branches on the device kind.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from edgepack.compiler.backends.cpu import CpuBackend
from edgepack.compiler.backends.cuda import CudaBackend
from edgepack.compiler.config import CompileConfig
from edgepack.errors import EdgepackError
from edgepack.targets import TargetSpec


class Backend(Protocol):
    """What one device kind needs from the build."""

    device: str
    integer_ops: bool  # QDQ conv/matmul can run as integer ops (edgepack.compiler.integer_ops)
    blocked_convs: bool  # fp32 convolutions can run in the blocked NCHW[x]c layout (edgepack.compiler.conv_layout)

    def check_tools(self, target: TargetSpec) -> None:
        """Refuse, before any work, a build this machine lacks the tools for (beyond the C++ compiler)."""

    def build(self, module, tvm_target, target: TargetSpec, config: CompileConfig) -> tuple[object, dict]:
        """relax.build for this device kind: (executable, report of how its kernels were scheduled)."""

    def check_library(self, library: Path, target: TargetSpec) -> dict:
        """Checks on the exported library (e.g. GPU code present); returns what it found."""

    def runtime_libraries(self, target: TargetSpec) -> list[Path]:
        """Runtime files shipped beside TVM's runtime (e.g. CUDA's)."""

    def requirements(self, target: TargetSpec) -> dict:
        """Entries for the manifest's `requires` beyond arch, CPU features and glibc."""

    def verify_here(self, target: TargetSpec) -> tuple[bool, str | None]:
        """Whether this machine can verify the target's bundles, and if not, what to do about it."""


BACKENDS: dict[str, Backend] = {backend.device: backend for backend in (CpuBackend(), CudaBackend())}


def backend_for(target: TargetSpec) -> Backend:
    """The backend of the target's device kind."""
    try:
        return BACKENDS[target.device]
    except KeyError:
        raise EdgepackError(
            f"target '{target.name}' has device '{target.device}', which no backend builds for",
            f"use one of {', '.join(BACKENDS)}",
        ) from None


def check_toolchain(target: TargetSpec) -> str:
    """The path of the target's C++ compiler, after the backend's own tool checks.

    Refuses, with the install command, when a tool is absent."""
    found = shutil.which(target.toolchain.cxx)
    if found is None:
        packages = " ".join(target.toolchain.apt_packages) or target.toolchain.cxx
        raise EdgepackError(
            f"target '{target.name}' needs the compiler '{target.toolchain.cxx}', which is not installed",
            f"install it: apt-get install {packages}",
        )
    backend_for(target).check_tools(target)
    return found
