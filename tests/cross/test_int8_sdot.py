"""int8 matmuls and convolutions on arm64 `sdot` (edgepack.compiler.int8_dot, targets with asimddp such as rpi5):
cross-compiled, run under qemu-aarch64 by the native loader, compared with ONNX Runtime's QDQ semantics, which the
x86 integer build matches exactly (tests/tvm/test_integer_ops.py): the sdot build must too (max error 0)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from edgepack.build import build
from tests.tvm.test_int8_dot import mlp_model
from tests.tvm.test_integer_ops import conv_model, quantize

pytestmark = [pytest.mark.cross, pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                                                    reason="needs g++-aarch64-linux-gnu and qemu-user (scripts/setup.sh installs them)")]


@pytest.mark.parametrize("model, activations, kernels", [(conv_model, "uint8", 3), (conv_model, "int8", 3), (mlp_model, "int8", 2)])
def test_sdot_build_is_exact_under_qemu(tmp_path, model, activations, kernels):
    path = quantize(model(tmp_path / "model.onnx"), activations)
    result = build(str(path), "rpi5", tmp_path / "dist")
    manifest = result.bundle.manifest
    native = manifest["verification"]["native_loader"]
    assert native["ran"] and native["passed"] and native["emulator"] == "qemu-aarch64"
    assert native["max_abs_err"] == 0.0, native
    compile_report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert compile_report["integer_ops"]["dot_product"]["feature"] == "asimddp"
    assert compile_report["integer_ops"]["dot_product"]["kernels"] == kernels
    assert any("int8 speed on 'rpi5' is unmeasured" in line for line in compile_report["warnings"]), compile_report["warnings"]
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump:
        library = next(result.bundle.path.rglob("model.so"))
        assert "\tsdot\t" in subprocess.run([objdump, "-d", str(library)], capture_output=True, text=True).stdout
