"""The files that make a bundle self-contained: runtime libraries and the two loaders."""

from __future__ import annotations

import platform
import re
from importlib import metadata
from pathlib import Path

from edgepack.compiler.backends import backend_for, check_toolchain
from edgepack.compiler.wheels import cache_dir, fetch_wheel_files
from edgepack.errors import EdgepackError
from edgepack.native import build_native_loader
from edgepack.runtime import bundle_format, loader, serve
from edgepack.targets import TargetSpec

RUNTIME_LIBRARIES = ("libtvm_runtime.so", "libtvm_ffi.so")
NATIVE_LOADER = "edgepack-run"
PYTHON_LOADER = "edgepack_loader.py"
FORMAT_MODULE = "edgepack_format.py"  # the bundle format (edgepack/runtime/bundle_format.py), imported by the loader
SERVE_MODULE = "edgepack_serve.py"  # HTTP server (edgepack/runtime/serve.py), beside the Python loader
GENERATE_MODULE = "edgepack_generate.py"  # language-model bundles: token generation (edgepack/runtime/generate.py)


_WHEEL_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}
_WHEEL_MEMBERS = {"apache-tvm": "tvm/lib/libtvm_runtime.so", "apache-tvm-ffi": "tvm_ffi/lib/libtvm_ffi.so"}


def _installed_versions() -> dict[str, str]:
    return {distribution: metadata.version(distribution) for distribution in _WHEEL_MEMBERS}


def foreign_runtime_dir(arch: str) -> Path:
    """Cache folder for another architecture's runtime libraries, keyed by the installed TVM versions."""
    versions = _installed_versions()
    return cache_dir() / "runtime" / arch / f"tvm-{versions['apache-tvm']}-ffi-{versions['apache-tvm-ffi']}"


def _fetch_foreign_runtime(arch: str, destination: Path) -> None:
    """The arch's libtvm_runtime.so and libtvm_ffi.so from its apache-tvm / apache-tvm-ffi wheels."""
    versions = _installed_versions()
    fetch_wheel_files(arch, destination, [f"{name}=={version}" for name, version in versions.items()],
                      {name.replace("-", "_"): member for name, member in _WHEEL_MEMBERS.items()},
                      (_WHEEL_PLATFORMS[arch],), "TVM runtime", "see README")


def runtime_library_dirs(target: TargetSpec) -> list[Path]:
    """Directories holding libtvm_runtime.so and libtvm_ffi.so built for the target's architecture.

    This machine's architecture uses the installed wheels; another one's libraries are taken from
    that architecture's wheels, downloaded once into the cache (offline builds work once it is warm).
    """
    if target.arch == platform.machine():
        import tvm
        import tvm_ffi

        return [Path(tvm.__file__).parent / "lib", Path(tvm_ffi.__file__).parent / "lib"]
    if target.arch not in _WHEEL_PLATFORMS:
        raise EdgepackError(f"no TVM runtime wheels are known for arch '{target.arch}'", f"use one of {', '.join(_WHEEL_PLATFORMS)}")
    directory = foreign_runtime_dir(target.arch)
    if not all((directory / name).is_file() for name in RUNTIME_LIBRARIES):
        _fetch_foreign_runtime(target.arch, directory)
    return [directory]


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
    return [found[name] for name in RUNTIME_LIBRARIES] + backend_for(target).runtime_libraries(target)


def native_loader(target: TargetSpec) -> Path:
    """The native loader built (or taken from the cache) with the target's toolchain."""
    cxx = check_toolchain(target)
    return build_native_loader(cxx, runtime_library_dirs(target), cache_dir() / "native")


def python_loader() -> Path:
    """The Python loader's source, copied verbatim into every bundle."""
    return Path(loader.__file__)


def format_module() -> Path:
    """The bundle-format module's source (an island the Python loader imports), copied verbatim into every bundle."""
    return Path(bundle_format.__file__)


def serve_module() -> Path:
    """The HTTP server's source (an island beside the Python loader), copied verbatim into every bundle."""
    return Path(serve.__file__)


def generate_module() -> Path:
    """The generation module's source (an island beside the Python loader), copied into language-model bundles."""
    from edgepack.runtime import generate

    return Path(generate.__file__)


_GLIBC_VERSION = re.compile(rb"GLIBC_(\d+)\.(\d+)")


def glibc_needed(paths: list[Path]) -> str:
    """The newest GLIBC_x.y symbol version named by these ELF files: the glibc floor they need."""
    newest = (2, 17)
    for path in paths:
        for major, minor in _GLIBC_VERSION.findall(Path(path).read_bytes()):
            newest = max(newest, (int(major), int(minor)))
    return f"{newest[0]}.{newest[1]}"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def device_requirements(target: TargetSpec, elf_files: list[Path]) -> dict:
    """The manifest's `requires`: arch, CPU features and the measured glibc floor of the shipped code.

    Refuses a build whose code needs a newer glibc than the target file promises.
    """
    needed = glibc_needed(elf_files)
    if _version_tuple(needed) > _version_tuple(target.toolchain.glibc):
        raise EdgepackError(f"the built code needs glibc {needed}, but target '{target.name}' promises {target.toolchain.glibc}",
                            "raise [toolchain] glibc in the target file, or use a toolchain for an older glibc")
    return {"arch": target.arch, "cpu_features": list(target.cpu_features), "glibc": needed,
            **backend_for(target).requirements(target)}
