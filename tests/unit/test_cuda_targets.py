"""CUDA targets without a GPU: target files, the driver stub against the installed TVM, cubin parsing,
and the loaders' GPU checks (which here can only say, clearly, that there is no GPU)."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest

from edgepack.errors import EdgepackError
from edgepack.runtime import bundle_format
from edgepack.targets import load_target, parse_target

CUDA = """\
name = "gpu-box"
arch = "x86_64"
device = "cuda"

[tvm]
kind = "cuda"
arch = "sm_86"

[tvm.host]
kind = "llvm"
mtriple = "x86_64-linux-gnu"

[toolchain]
cxx = "g++"
"""


@pytest.mark.parametrize("name, arch, host", [
    ("cuda", "sm_80", "x86_64"), ("cuda-sm86", "sm_86", "x86_64"), ("cuda-sm89", "sm_89", "x86_64"),
    ("cuda-sm90", "sm_90", "x86_64"), ("jetson-orin", "sm_87", "aarch64"),
])
def test_shipped_cuda_targets(name, arch, host):
    spec = load_target(name)
    assert (spec.device, spec.gpu_arch, spec.arch) == ("cuda", arch, host)
    assert spec.tvm["kind"] == "cuda" and spec.tvm["host"]["mtriple"].startswith(host)
    assert spec.supports(arch) and spec.supports("float16") and not spec.supports("sm_75")
    assert spec.to_json()["capabilities"]["gpu_arch"] == arch
    assert not spec.runs_on_this_machine()  # GPU code is never assumed runnable here


def test_cpu_targets_have_no_gpu_arch():
    spec = load_target("x86_64")
    assert spec.gpu_arch is None and "gpu_arch" not in spec.to_json()["capabilities"]


@pytest.mark.parametrize("old, new, message", [
    ('kind = "cuda"', 'kind = "llvm"', 'device "cuda" needs [tvm] kind = "cuda"'),
    ('arch = "sm_86"', 'arch = "86"', "[tvm] arch must name the GPU's compute capability"),
    ('[tvm.host]\nkind = "llvm"', '[tvm.host]\nkind = "c"', "needs a [tvm.host] table"),
    ('mtriple = "x86_64-linux-gnu"', 'mtriple = "aarch64-linux-gnu"', "does not match arch 'x86_64'"),
    ('device = "cuda"', 'device = "gpu"', "unknown device 'gpu'"),
])
def test_bad_cuda_targets_are_refused_in_one_line(old, new, message):
    assert CUDA.count(old) == 1
    with pytest.raises(EdgepackError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        parse_target(CUDA.replace(old, new), "gpu-box.toml")
    assert "\n" not in str(info.value)


def test_a_target_file_picks_any_arch():
    assert parse_target(CUDA.replace("sm_86", "sm_90a"), "gpu-box.toml").gpu_arch == "sm_90a"


def _symbols(path: Path, which: str) -> set[str]:
    output = subprocess.run(["nm", "-D", which, str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].split("@")[0] for line in output.splitlines() if line.split()}


def test_stub_exports_every_driver_symbol_tvm_imports_and_no_cuinit(tmp_path):
    from edgepack.compiler.cuda import stub_driver, tvm_cuda_runtime

    stub = stub_driver(tmp_path)
    assert stub == stub_driver(tmp_path)  # cached
    imported = {name for name in _symbols(tvm_cuda_runtime(), "--undefined-only") if name.startswith("cu") and not name.startswith("cuda")}
    assert len(imported) >= 5
    assert imported <= _symbols(stub, "--defined-only")
    handle = ctypes.CDLL(str(stub))
    assert not hasattr(handle, "cuInit")  # how the loaders tell it from NVIDIA's driver
    assert handle.cuModuleLoadData(None, None) == 34  # CUDA_ERROR_STUB_LIBRARY


def test_cudart_soname_matches_the_wheel():
    from edgepack.compiler.cuda import cudart_soname

    assert cudart_soname() == "libcudart.so.13"


def _fake_cubin(abi_version: int, flags: int) -> bytes:
    """An ELF header as NVIDIA's cubins start (EM_CUDA, no sections): enough for the arch field."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[7], header[8] = 0x41, abi_version
    header[18:20] = (190).to_bytes(2, "little")
    header[48:52] = flags.to_bytes(4, "little")
    return bytes(header)


def test_cubin_arch_is_read_from_both_elf_abi_layouts(tmp_path):
    from edgepack.compiler.cuda import cubin_archs

    library = tmp_path / "lib.so"
    library.write_bytes(b"\x7fELF\x02\x01host" + b"\0" * 100 + _fake_cubin(8, 0x6005704) + b"pad" + _fake_cubin(7, 0x500056))
    assert cubin_archs(library) == ["sm_87", "sm_86"]


@pytest.mark.parametrize("arch, capability, runs", [
    ("sm_80", (8, 0), True), ("sm_80", (8, 6), True), ("sm_80", (8, 9), True), ("sm_80", (9, 0), False),
    ("sm_86", (8, 0), False), ("sm_87", (8, 7), True), ("sm_90", (9, 0), True), ("sm_90a", (9, 0), True),
    ("sm_90a", (10, 0), False), ("sm_75", (8, 0), False),
])
def test_which_gpus_run_which_cubins(arch, capability, runs):
    assert bundle_format.gpu_runs_arch(arch, *capability) is runs


def test_loader_says_there_is_no_gpu_here():
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        driver = None
    if driver is not None and hasattr(driver, "cuInit"):
        pytest.skip("this machine has an NVIDIA driver")
    problem = bundle_format.cuda_problem({"gpu_arch": "sm_80", "driver": "13.0"})
    assert problem is not None and problem.startswith("no GPU: no CUDA driver")


def test_nvrtc_environment_is_set_for_the_build_only(monkeypatch):
    from edgepack.compiler.cuda import find_toolkit, nvrtc_environment

    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("TVM_CUDA_NVRTC_EXTRA_OPTS", "--ftz=false")
    toolkit = find_toolkit()
    assert (toolkit.home / "include" / "cuda_runtime.h").is_file() and toolkit.cudart.name == "libcudart.so.13"
    with nvrtc_environment(toolkit):
        import os

        assert os.environ["CUDA_PATH"] == str(toolkit.home) and os.environ["TVM_CUDA_COMPILE_MODE"] == "nvrtc"
        assert os.environ["TVM_CUDA_NVRTC_EXTRA_OPTS"].startswith("--ftz=false -I")
    assert "CUDA_PATH" not in os.environ and os.environ["TVM_CUDA_NVRTC_EXTRA_OPTS"] == "--ftz=false"


def test_dry_run_of_a_cuda_build_checks_the_tools(tmp_path):
    from edgepack.build import plan_build

    (tmp_path / "m.onnx").write_bytes(b"not read by the plan")
    plan = plan_build(str(tmp_path / "m.onnx"), "jetson-orin", tmp_path / "dist", version="1.0")
    assert plan.target.gpu_arch == "sm_87" and plan.describe()[1].startswith("target:  jetson-orin")
