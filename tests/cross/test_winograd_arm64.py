"""Winograd convolutions (edgepack.compiler.winograd) built for arm64 (NCHW4c, NEON), verified under qemu-aarch64."""

from __future__ import annotations

import shutil

import pytest
from models import winograd_convs_onnx

from edgepack.build import build

pytestmark = [pytest.mark.cross, pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                                                    reason="needs g++-aarch64-linux-gnu and qemu-user (scripts/setup.sh installs them)")]


def test_winograd_convolutions_match_onnxruntime_under_qemu(tmp_path):
    manifest = build(str(winograd_convs_onnx(tmp_path).path), "arm64", tmp_path / "dist").bundle.manifest
    report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert report["conv_layout"]["layout"] == "NCHW4c" and report["conv_layout"]["winograd_convs"] == 3
    verification = manifest["verification"]
    assert verification["passed"] and verification["native_loader"]["emulator"] == "qemu-aarch64"
    assert verification["max_abs_err"] < 1e-4
