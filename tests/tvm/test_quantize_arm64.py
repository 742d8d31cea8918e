"""A quantized (int8, QDQ) digits bundle for arm64: cross-compiled, its weights int8, verified under qemu-aarch64."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytestmark = [pytest.mark.cross, pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                                                    reason="needs g++-aarch64-linux-gnu and qemu-user (scripts/setup.sh installs them)")]


def test_int8_digits_bundle_for_arm64_passes_under_qemu(tmp_path):
    from edgepack.build import build
    from edgepack.examples import digits
    from edgepack.compression.quantize import QualityGate, quantization_config

    train_x, _, _, _ = digits.digits_split()
    np.savez(tmp_path / "calib.npz", image=train_x[:128])
    digits.write_eval_data(tmp_path / "eval.npz")
    config = quantization_config("int8", calibration=str(tmp_path / "calib.npz"), gate=QualityGate(tmp_path / "eval.npz", max_drop=0.01))
    manifest = build(f"{digits.__file__}:digits_cnn", "arm64", tmp_path / "dist", onnx_passes=(config,)).bundle.manifest
    native = manifest["verification"]["native_loader"]
    assert native["ran"] and native["passed"] and native["emulator"] == "qemu-aarch64"
    assert manifest["golden"]["atol"] > 1e-4 and native["max_abs_err"] <= manifest["golden"]["atol"]
    report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "quantize")["report"]
    assert report["quality"]["passed"] and report["weights_bytes"] < 0.35 * report["weights_bytes_fp32"]
    assert manifest["files"][manifest["params"]["file"]]["size"] < 0.45 * report["weights_bytes_fp32"]
