"""A bfloat16 input and output built for arm64, verified by the arm64 native loader under qemu-aarch64."""

from __future__ import annotations

import shutil

import pytest

from edgepack.build import build

pytestmark = [pytest.mark.cross, pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                                                    reason="needs g++-aarch64-linux-gnu and qemu-user (scripts/setup.sh installs them)")]


def test_bfloat16_bundle_is_exact_under_qemu(tmp_path):
    from models import bfloat16_onnx

    manifest = build(str(bfloat16_onnx(tmp_path / "bf16.onnx")), "arm64", tmp_path / "dist").bundle.manifest
    assert [s["dtype"] for s in manifest["inputs"] + manifest["outputs"]] == ["bfloat16", "float32", "bfloat16"]
    verification = manifest["verification"]
    assert verification["passed"] and verification["native_loader"]["emulator"] == "qemu-aarch64"
    assert verification["max_abs_err"] == 0
