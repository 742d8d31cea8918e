"""The files that make a bundle self-contained: runtime libraries and the two loaders."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from edgepack.errors import EdgepackError
from edgepack.targets import TargetSpec

RUNTIME_LIBRARIES = ("libtvm_runtime.so", "libtvm_ffi.so")
NATIVE_LOADER = "edgepack-run"
PYTHON_LOADER = "edgepack_loader.py"


def cache_dir() -> Path:
    """Where edgepack caches built loaders and downloaded runtimes (EDGEPACK_CACHE overrides)."""
    override = os.environ.get("EDGEPACK_CACHE")
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgepack"


def runtime_library_dirs(target: TargetSpec) -> list[Path]:
    """Directories holding libtvm_runtime.so and libtvm_ffi.so built for the target's architecture."""
    if target.arch != platform.machine():
        raise EdgepackError(f"target '{target.name}' is {target.arch}; runtime libraries for it are not available on this "
                            f"{platform.machine()} machine yet", "build for a target of this machine's architecture")
    import tvm_ffi
    import tvm

    return [Path(tvm.__file__).parent / "lib", Path(tvm_ffi.__file__).parent / "lib"]


def runtime_libraries(target: TargetSpec) -> list[Path]:
    """The runtime library files to ship for the target."""
    found = {}
    for directory in runtime_library_dirs(target):
        for name in RUNTIME_LIBRARIES:
            if (directory / name).is_file() and name not in found:
                found[name] = directory / name
    missing = [name for name in RUNTIME_LIBRARIES if name not in found]
    if missing:
        raise EdgepackError(f"runtime libraries {', '.join(missing)} for {target.arch} were not found",
                            "reinstall apache-tvm and apache-tvm-ffi")
    return [found[name] for name in RUNTIME_LIBRARIES]


def native_loader(target: TargetSpec) -> Path:
    """The native loader built (or taken from the cache) with the target's toolchain."""
    from edgepack.compile import check_toolchain
    from edgepack.native import build_native_loader

    cxx = check_toolchain(target)
    return build_native_loader(cxx, runtime_library_dirs(target), cache_dir() / "native")


def python_loader() -> Path:
    """The Python loader's source, copied verbatim into every bundle."""
    from edgepack.runtime import loader

    return Path(loader.__file__)
