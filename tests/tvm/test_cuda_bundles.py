"""CUDA and Jetson bundles built on a machine without a GPU (CI has none): the library carries
cubins for the requested arch, the bundle carries the CUDA runtime of its host arch and records what
the device needs, and the loaders say clearly why they cannot run it here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack.compiler.cuda import cubins
from edgepack.runtime.bundle_format import elf_arch

pytestmark = [pytest.mark.tvm, pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")]

EDGEPACK = Path(sys.executable).parent / "edgepack"


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory) -> Path:
    from models import export_onnx

    from edgepack.examples.digits import digits_cnn

    return export_onnx(digits_cnn(), tmp_path_factory.mktemp("digits") / "digits.onnx")


@pytest.fixture(scope="module")
def cuda_bundle(digits_onnx, tmp_path_factory):
    from edgepack.build import build

    saved = os.environ.get("CUDA_PATH")
    result = build(str(digits_onnx), "cuda-sm86", tmp_path_factory.mktemp("dist-cuda"))
    assert os.environ.get("CUDA_PATH") == saved  # the NVRTC environment is the build's only
    return result.bundle


def _no_gpu_here() -> bool:
    import ctypes

    try:
        return not hasattr(ctypes.CDLL("libcuda.so.1"), "cuInit")
    except OSError:
        return True


def test_cuda_library_holds_cubins_for_the_requested_arch(cuda_bundle):
    found = cubins(cuda_bundle.path / "model.so")
    assert [cubin["arch"] for cubin in found] == ["sm_86"]
    assert any("conv2d" in kernel for kernel in found[0]["kernels"])
    compile_report = next(s for s in cuda_bundle.manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert compile_report["kernels"]["cubin_arch"] == "sm_86"
    assert compile_report["kernels"]["gpu_kernels"] == len(found[0]["kernels"])
    assert compile_report["kernels"]["scheduler"].startswith("dlight")


def test_cuda_bundle_carries_its_runtime_and_records_what_the_device_needs(cuda_bundle):
    manifest = cuda_bundle.manifest
    assert manifest["target"]["device"] == "cuda" and manifest["target"]["tvm"]["arch"] == "sm_86"
    need = manifest["requires"]["cuda"]
    assert need["gpu_arch"] == "sm_86" and need["driver"] == "13.0" and need["runtime"].startswith("13.")
    assert need["libraries"] == ["libtvm_runtime_cuda.so", "libcudart.so.13"]
    for name in (*need["libraries"], "libtvm_runtime.so", "libtvm_ffi.so"):
        assert f"runtime/{name}" in manifest["files"]
        assert elf_arch(cuda_bundle.path / "runtime" / name) == "x86_64"


@pytest.mark.skipif(not _no_gpu_here(), reason="this machine has a GPU driver: the golden vectors run")
def test_verification_records_not_run_no_gpu(cuda_bundle):
    report = cuda_bundle.manifest["verification"]
    assert report["passed"] is None
    for engine in ("python_loader", "native_loader"):
        assert report[engine]["ran"] is False and report[engine]["reason"].startswith("no GPU")


@pytest.mark.skipif(not _no_gpu_here(), reason="this machine has a GPU driver")
def test_native_loader_refuses_with_no_cuda_driver(cuda_bundle):
    loader = cuda_bundle.path / "runtime" / "edgepack-run"
    for args in (["verify"], ["bench", "--runs", "1", "--device", "cuda"]):
        result = subprocess.run([str(loader), *args], capture_output=True, text=True, env={}, check=False)
        assert result.returncode == 1
        assert result.stderr.startswith("error: no CUDA driver: libcuda.so.1 is not installed") and result.stderr.count("\n") == 1
    cpu = subprocess.run([str(loader), "verify", "--device", "cpu"], capture_output=True, text=True, env={}, check=False)
    assert cpu.returncode == 2 and "GPU code (sm_86)" in cpu.stderr


@pytest.mark.skipif(not _no_gpu_here(), reason="this machine has a GPU driver")
def test_cli_verify_says_no_gpu(cuda_bundle):
    result = subprocess.run([str(EDGEPACK), "verify", str(cuda_bundle.path)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "nothing could run this bundle here: no GPU" in result.stderr and "file digests are fine" in result.stderr


def test_cpu_bundle_refuses_device_cuda(mlp_bundle):
    result = subprocess.run([str(mlp_bundle / "runtime" / "edgepack-run"), "verify", "--device", "cuda"],
                            capture_output=True, text=True, env={}, check=False)
    assert result.returncode == 2 and "holds no GPU code" in result.stderr


@pytest.mark.cross
@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="needs g++-aarch64-linux-gnu")
def test_jetson_orin_bundle_is_aarch64_with_sm87_cubins(digits_onnx, tmp_path):
    from edgepack.build import build

    bundle = build(str(digits_onnx), "jetson-orin", tmp_path).bundle
    assert elf_arch(bundle.path / "model.so") == "aarch64"
    assert [cubin["arch"] for cubin in cubins(bundle.path / "model.so")] == ["sm_87"]
    for name in ("libtvm_runtime_cuda.so", "libcudart.so.13", "libtvm_runtime.so", "edgepack-run"):
        assert elf_arch(bundle.path / "runtime" / name) == "aarch64"
    assert bundle.manifest["requires"]["cuda"]["gpu_arch"] == "sm_87"
    native = bundle.manifest["verification"]["native_loader"]
    assert native["ran"] is False and "no emulator runs CUDA" in native["reason"]
    if shutil.which("qemu-aarch64"):  # its aarch64 loader runs the device checks under qemu: no driver there
        result = subprocess.run(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(bundle.path / "runtime" / "edgepack-run"), "verify"],
                                capture_output=True, text=True, env={}, check=False)
        assert result.returncode == 1 and result.stderr.startswith("error: no CUDA driver"), result.stderr
