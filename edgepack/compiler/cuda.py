"""CUDA targets: real GPU code built on a machine without a GPU, the runtime a device needs, and checks.

Building needs no GPU and no driver, but TVM only embeds compiled GPU code when its CUDA runtime
module (`libtvm_runtime_cuda.so`) is loaded, and that library links against the driver
`libcuda.so.1` and `libcudart.so.13`. Without them `import tvm` silently disables CUDA and
`relax.build` embeds CUDA *source* that no device can load. So a CUDA build here:

1. loads the real driver when there is one, otherwise a build-machine-only stub `libcuda.so.1`
   (edgepack/native/cuda_stub.c, compiled once with the C compiler into edgepack's cache) that
   exports the driver symbols the runtime module imports and fails every call;
2. loads `libcudart.so.13` from the pip package `nvidia-cuda-runtime`, then TVM's CUDA runtime
   module (both into this process, before the build; `import tvm` may already have happened);
3. compiles kernels with NVRTC (pip `cuda-bindings` + `nvidia-cuda-nvrtc`) against the CUDA
   headers of `nvidia-cuda-runtime` and `nvidia-cuda-cccl` (CUDA_PATH set for the build only),
   inside `with target:` so the compile callback reads the requested arch;
4. refuses, in one line, a library that does not carry a cubin for the requested arch.

The stub never ships: a bundle carries TVM's CUDA runtime module and libcudart of the device's
architecture, and records the driver it needs (manifest `requires.cuda`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgepack.compiler.wheels import cache_dir, fetch_wheel_files
from edgepack.errors import EdgepackError, first_line
from edgepack.targets import TargetSpec

TVM_CUDA_RUNTIME = "libtvm_runtime_cuda.so"
STUB_SOURCE = Path(__file__).parent.parent / "native" / "cuda_stub.c"
EM_CUDA = 190  # ELF e_machine of a cubin
# the pip packages a CUDA build needs (pinned in pyproject.toml)
PIP_PACKAGES = ("cuda-bindings", "nvidia-cuda-nvrtc", "nvidia-cuda-runtime", "nvidia-cuda-cccl")
_PIP_FIX = "install them: pip install 'edgepack[cuda]' (" + ", ".join(PIP_PACKAGES) + ", pinned in pyproject.toml)"
_WHEEL_PLATFORMS = {"aarch64": ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")}


@dataclass(frozen=True)
class CudaToolkit:
    """What NVRTC compiles against: the CUDA root (CUDA_PATH), its CCCL headers and libcudart."""

    home: Path
    cccl_include: Path | None
    cudart: Path
    runtime_version: str  # of nvidia-cuda-runtime, e.g. "13.0.96"
    nvrtc_version: str


def tvm_cuda_runtime(lib_dir: Path | None = None) -> Path:
    """This machine's TVM CUDA runtime module (from the installed apache-tvm wheel)."""
    if lib_dir is None:
        import tvm

        lib_dir = Path(tvm.__file__).parent / "lib"
    return Path(lib_dir) / TVM_CUDA_RUNTIME


def cudart_soname(runtime_module: Path | None = None) -> str:
    """The libcudart soname TVM's CUDA runtime module links against (`libcudart.so.13`)."""
    found = re.search(rb"libcudart\.so\.\d+", Path(runtime_module or tvm_cuda_runtime()).read_bytes())
    if found is None:
        raise EdgepackError(f"cannot tell which libcudart {TVM_CUDA_RUNTIME} needs", "reinstall apache-tvm")
    return found.group().decode()


def _cuda_major() -> str:
    return cudart_soname().rsplit(".", 1)[1]


def find_toolkit() -> CudaToolkit:
    """The CUDA headers and libcudart from the pip packages (or CUDA_PATH); one-line refusal if absent."""
    soname, major = cudart_soname(), _cuda_major()
    try:
        import nvidia  # namespace package of the nvidia-cuda-* wheels

        homes = [Path(entry) / f"cu{major}" for entry in nvidia.__path__]
    except ImportError:
        homes = []
    if os.environ.get("CUDA_PATH"):
        homes.insert(0, Path(os.environ["CUDA_PATH"]))
    home = next((h for h in homes if (h / "include" / "cuda_runtime.h").is_file()), None)
    if home is None:
        raise EdgepackError(f"CUDA {major} headers (cuda_runtime.h) were not found", _PIP_FIX)
    cudart = next((d / soname for d in (home / "lib", home / "lib64") if (d / soname).is_file()), None)
    if cudart is None:
        raise EdgepackError(f"{soname} was not found under {home}", _PIP_FIX)
    cccl = home / "include" / "cccl"
    if not (cccl / "cuda" / "std" / "cstdint").is_file() and not (home / "include" / "cuda" / "std" / "cstdint").is_file():
        raise EdgepackError(f"the CCCL headers (cuda/std/cstdint) were not found under {home}", _PIP_FIX)
    try:
        from cuda.bindings import nvrtc

        status, nv_major, nv_minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # ImportError, or the bindings' RuntimeError when libnvrtc cannot be found
        raise EdgepackError(f"NVRTC is not usable ({first_line(exc)})", _PIP_FIX) from None
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise EdgepackError(f"NVRTC does not answer ({status})", _PIP_FIX)
    if str(nv_major) != major:
        raise EdgepackError(f"NVRTC {nv_major}.{nv_minor} is installed, TVM's CUDA runtime is built for CUDA {major}",
                            f"install nvidia-cuda-nvrtc {major}.x")
    try:
        runtime_version = metadata.version("nvidia-cuda-runtime")
    except metadata.PackageNotFoundError:
        runtime_version = f"{major}.0"
    return CudaToolkit(home, cccl if cccl.is_dir() else None, cudart, runtime_version, f"{nv_major}.{nv_minor}")


def check_build_tools(target: TargetSpec) -> None:
    """Refuse, before any work, a CUDA build this machine lacks the tools for."""
    find_toolkit()
    if _c_compiler() is None:
        raise EdgepackError("building for a CUDA target needs a C compiler (gcc or cc) for the driver stub",
                            "install it: apt-get install gcc")


def _c_compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")


def stub_driver(cache: Path | None = None) -> Path:
    """The build-only stub libcuda.so.1, compiled from cuda_stub.c into the cache once."""
    source = STUB_SOURCE.read_bytes()
    compiler = _c_compiler()
    if compiler is None:
        raise EdgepackError("no C compiler to build the CUDA driver stub", "install it: apt-get install gcc")
    key = hashlib.sha256(source + compiler.encode()).hexdigest()[:16]
    library = (cache or cache_dir()) / "cuda-stub" / key / "libcuda.so.1"
    if library.is_file():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".libcuda.", dir=library.parent)
    os.close(fd)
    try:
        result = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1", str(STUB_SOURCE), "-o", temporary],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise EdgepackError(f"compiling the CUDA driver stub failed: {first_line(RuntimeError(result.stderr))}",
                                "check the C compiler (apt-get install gcc)")
        os.replace(temporary, library)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return library


_handles: list = []  # libraries loaded into this process for CUDA code generation (kept alive)


def driver_is_real(handle) -> bool:
    """Whether a loaded libcuda.so.1 is NVIDIA's driver (the stub has no cuInit)."""
    return hasattr(handle, "cuInit")


def enable_cuda_codegen() -> str:
    """Make TVM able to embed compiled GPU code in this process; returns which driver is loaded.

    Loads the driver (real one if present, else the stub), libcudart and TVM's CUDA runtime module,
    in that order, with RTLD_GLOBAL so the module's NEEDED entries resolve by soname. Idempotent.
    """
    import tvm

    toolkit = find_toolkit()
    try:
        driver = ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        driver = ctypes.CDLL(str(stub_driver()), mode=ctypes.RTLD_GLOBAL)
    which = "driver" if driver_is_real(driver) else "build stub"
    if tvm.runtime.enabled("cuda"):
        return which
    _handles.append(driver)
    _handles.append(ctypes.CDLL(str(toolkit.cudart), mode=ctypes.RTLD_GLOBAL))
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                           extra_lib_paths=[tvm_cuda_runtime().parent], mode="RTLD_LOCAL")
    except (OSError, RuntimeError) as exc:
        raise EdgepackError(f"TVM's CUDA runtime module does not load: {first_line(exc)}",
                            "reinstall apache-tvm; the driver stub may lack a symbol this TVM version imports") from None
    if not tvm.runtime.enabled("cuda"):
        raise EdgepackError("TVM's CUDA support stays disabled after loading its runtime module", "reinstall apache-tvm")
    return which


@contextlib.contextmanager
def nvrtc_environment(toolkit: CudaToolkit):
    """CUDA_PATH and NVRTC options for the duration of one build; the environment is restored after."""
    values = {"CUDA_PATH": str(toolkit.home), "TVM_CUDA_COMPILE_MODE": "nvrtc"}
    extra = os.environ.get("TVM_CUDA_NVRTC_EXTRA_OPTS", "")
    if toolkit.cccl_include is not None:  # TVM only looks for cccl under targets/<triple>/include
        values["TVM_CUDA_NVRTC_EXTRA_OPTS"] = f"{extra} -I{toolkit.cccl_include}".strip()
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _walk(module):
    yield module
    for child in module.imports:
        yield from _walk(child)


def gpu_modules(executable) -> list:
    """The `cuda` modules a built executable imports (empty: TVM built no GPU code)."""
    return [module for module in _walk(executable.mod) if module.kind == "cuda"]


def build_for_gpu(module, tvm_target, target: TargetSpec):
    """relax.build with the default CUDA pipeline (dlight GPU schedules); returns (executable, report)."""
    from tvm import relax

    toolkit = find_toolkit()
    driver = enable_cuda_codegen()
    with nvrtc_environment(toolkit), tvm_target:
        executable = relax.build(module, target=tvm_target, relax_pipeline=relax.get_default_pipeline(tvm_target))
    modules = gpu_modules(executable)
    if not modules:
        raise EdgepackError(f"TVM built no GPU code for '{target.name}' (the library would only hold host code)",
                            "report the model; check `python -c 'import tvm; print(tvm.runtime.enabled(\"cuda\"))'`")
    report = {"gpu_arch": target.gpu_arch, "scheduler": "dlight (default CUDA pipeline)",
              "compiler": f"NVRTC {toolkit.nvrtc_version}", "driver_at_build": driver}
    return executable, report


def _u(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at:at + size], "little")


def _cubin_kernels(data: bytes, start: int) -> list[str]:
    """Kernel names of the cubin at `start`: its `.text.<kernel>` sections."""
    shoff, shentsize, shnum, shstrndx = _u(data, start + 40, 8), _u(data, start + 58, 2), _u(data, start + 60, 2), _u(data, start + 62, 2)

    def section(index: int) -> tuple[int, int]:  # (name offset, file offset)
        at = start + shoff + index * shentsize
        return _u(data, at, 4), _u(data, at + 24, 8)

    if shstrndx >= shnum or start + shoff + shnum * shentsize > len(data):
        return []
    strings = start + section(shstrndx)[1]
    names = []
    for index in range(shnum):
        offset = strings + section(index)[0]
        names.append(data[offset:data.find(b"\0", offset)].decode("ascii", "replace"))
    return [name.removeprefix(".text.") for name in names if name.startswith(".text.")]


def cubins(library: Path) -> list[dict]:
    """Every cubin (ELF, e_machine EM_CUDA) embedded in a library: its `sm_XY` and kernel names."""
    data = Path(library).read_bytes()
    found = []
    for match in re.finditer(rb"\x7fELF\x02\x01", data):
        start = match.start()
        if len(data) < start + 64 or _u(data, start + 18, 2) != EM_CUDA:
            continue
        flags, abi_version = _u(data, start + 48, 4), data[start + 8]
        sm = (flags >> 8) & 0xFF if abi_version >= 8 else flags & 0xFF  # the SM field moved in ELF ABI v8
        found.append({"arch": f"sm_{sm}", "kernels": _cubin_kernels(data, start)})
    return found


def cubin_archs(library: Path) -> list[str]:
    """The `sm_XY` of every cubin embedded in a library, in order."""
    return [cubin["arch"] for cubin in cubins(library)]


def require_gpu_code(library: Path, target: TargetSpec) -> dict:
    """Refuse a library without a cubin for the target's arch; returns what was found."""
    found = cubins(library)
    archs = sorted({cubin["arch"] for cubin in found})
    wanted = re.sub(r"[af]$", "", target.gpu_arch or "")
    if not found:
        raise EdgepackError(f"'{Path(library).name}' holds no compiled GPU code for '{target.name}' (source only)",
                            "the build environment lost CUDA support; rerun with --debug and report it")
    if archs != [wanted]:
        raise EdgepackError(f"'{Path(library).name}' holds GPU code for {', '.join(archs)}, not {target.gpu_arch}",
                            "report it; the target's arch did not reach the CUDA compiler")
    return {"cubins": len(found), "cubin_arch": wanted, "gpu_kernels": sum(len(cubin["kernels"]) for cubin in found)}


# ------------------------------------------------------------------ what the device needs


def foreign_cuda_dir(arch: str) -> Path:
    """Cache folder for another architecture's CUDA runtime libraries, keyed by the installed versions."""
    versions = f"tvm-{metadata.version('apache-tvm')}-cudart-{find_toolkit().runtime_version}"
    return cache_dir() / "runtime" / arch / f"cuda-{versions}"


def _fetch_foreign(arch: str, destination: Path, soname: str) -> None:
    """TVM's CUDA runtime module and libcudart for `arch`, from its apache-tvm and nvidia-cuda-runtime wheels."""
    fetch_wheel_files(arch, destination,
                      [f"apache-tvm=={metadata.version('apache-tvm')}", f"nvidia-cuda-runtime=={find_toolkit().runtime_version}"],
                      {"apache_tvm": f"tvm/lib/{TVM_CUDA_RUNTIME}", "nvidia_cuda_runtime": f"/lib/{soname}"},
                      _WHEEL_PLATFORMS[arch], "CUDA runtime", "docs/cuda.md")


def runtime_libraries(target: TargetSpec) -> list[Path]:
    """TVM's CUDA runtime module and libcudart for the target's host arch (shipped in runtime/)."""
    soname = cudart_soname()
    if target.arch == platform.machine():
        return [tvm_cuda_runtime(), find_toolkit().cudart]
    if target.arch not in _WHEEL_PLATFORMS:
        raise EdgepackError(f"no CUDA runtime wheels are known for arch '{target.arch}'", "use an x86_64 or aarch64 host")
    directory = foreign_cuda_dir(target.arch)
    if not all((directory / name).is_file() for name in (TVM_CUDA_RUNTIME, soname)):
        _fetch_foreign(target.arch, directory, soname)
    return [directory / TVM_CUDA_RUNTIME, directory / soname]


def requirements(target: TargetSpec) -> dict:
    """The manifest's `requires.cuda`: GPU arch, driver floor and the shipped CUDA runtime."""
    soname = cudart_soname()
    major = soname.rsplit(".", 1)[1]
    return {
        "gpu_arch": target.gpu_arch,
        # libcudart N.x runs on any driver of CUDA N.0 or newer (minor version compatibility)
        "driver": f"{major}.0",
        "runtime": find_toolkit().runtime_version,
        "libraries": [TVM_CUDA_RUNTIME, soname],
    }
