"""float8 inputs and outputs (raw bits in uint8) built for arm64, verified by the arm64 native loader under qemu-aarch64."""

from __future__ import annotations

import shutil

import pytest

from edgepack.build import build

pytestmark = [pytest.mark.cross, pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                                                    reason="needs g++-aarch64-linux-gnu and qemu-user (scripts/setup.sh installs them)")]


def test_float8_bundle_is_exact_under_qemu(tmp_path):
    from models import float8_onnx

    manifest = build(str(float8_onnx(tmp_path / "f8.onnx")), "arm64", tmp_path / "dist").bundle.manifest
    assert [s["dtype"] for s in manifest["inputs"] + manifest["outputs"]] == [
        "float32", "float8_e4m3fn", "float8_e4m3fn", "float8_e5m2", "float32"]
    verification = manifest["verification"]
    assert verification["passed"] and verification["native_loader"]["emulator"] == "qemu-aarch64"
    assert verification["max_abs_err"] == 0
