"""arm64 bundles: cross-compiled with Debian's aarch64 toolchain, verified under qemu-aarch64."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack.build import build
from edgepack.runtime.bundle_format import elf_arch, load_npy
from edgepack.bundle.verify import emulator_command, run_native_loader

pytestmark = [pytest.mark.cross, pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                                                    reason="needs g++-aarch64-linux-gnu and qemu-user (scripts/setup.sh installs them)")]

EXAMPLES = Path(__file__).resolve().parents[2] / "edgepack" / "examples"
MODELS = {"digits": f"{EXAMPLES / 'digits.py'}:digits_cnn", "resnet": f"{EXAMPLES / 'resnet.py'}:resnet_small"}


@pytest.fixture(scope="session")
def arm_bundles(tmp_path_factory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("arm")
    bundles = {}
    for model, source in MODELS.items():
        for target in ("arm64", "rpi4"):
            bundles[model, target] = build(source, target, out).bundle.path
    return bundles


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("target", ["arm64", "rpi4"])
def test_build_is_verified_under_qemu_within_tolerance(arm_bundles, model, target):
    manifest = json.loads((arm_bundles[model, target] / "manifest.json").read_text())
    verification = manifest["verification"]
    assert verification["passed"] is True
    assert verification["native_loader"]["ran"] and verification["native_loader"]["emulator"] == "qemu-aarch64"
    assert verification["python_loader"]["ran"] is False
    assert verification["max_abs_err"] < manifest["golden"]["atol"]
    assert manifest["requires"]["arch"] == "aarch64"
    assert elf_arch(arm_bundles[model, target] / "model.so") == "aarch64"
    assert elf_arch(arm_bundles[model, target] / "runtime" / "edgepack-run") == "aarch64"


def test_emulated_run_matches_onnxruntime_on_x86(arm_bundles, tmp_path):
    bundle = arm_bundles["resnet", "rpi4"]
    import onnxruntime as ort

    x = np.random.default_rng(7).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_native_loader(bundle, "run", "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                               prefix=emulator_command(json.loads((bundle / "manifest.json").read_text())["target"]))
    assert result.returncode == 0, result.stderr
    session = ort.InferenceSession(str(bundle / "reference" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(load_npy(tmp_path / "y.npy"), expected, atol=1e-4, rtol=1e-3)


def test_digits_arm64_bundle_is_under_6_mb(arm_bundles):
    manifest = json.loads((arm_bundles["digits", "arm64"] / "manifest.json").read_text())
    assert sum(entry["size"] for entry in manifest["files"].values()) < 6_000_000


def _edgepack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack.cli", *args], capture_output=True, text=True, check=False)


def test_cli_verify_emulate_prints_pass_with_error(arm_bundles):
    result = _edgepack("verify", str(arm_bundles["digits", "arm64"]), "--emulate")
    assert result.returncode == 0, result.stderr
    assert "native loader under qemu-aarch64: passed, max abs err" in result.stdout


def test_arm64_bundle_is_refused_on_x86_with_one_line(arm_bundles, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    result = _edgepack("run", str(arm_bundles["digits", "arm64"]), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"))
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: bundle is built for aarch64, this machine is x86_64; run it on aarch64 hardware "
                                     "(or `edgepack verify --emulate`), or build it for a x86_64 target")
    assert not (tmp_path / "y.npy").exists()


def test_resnet_runs_blocked_nchw4c_convolutions_under_qemu(arm_bundles):
    """NEON has 4 fp32 lanes: ResNet's convolutions run as NCHW4c with packed weights, verified under qemu above."""
    for target in ("arm64", "rpi4"):
        manifest = json.loads((arm_bundles["resnet", target] / "manifest.json").read_text())
        report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
        assert report["conv_layout"] == {"layout": "NCHW4c", "blocked_convs": 19}
        assert manifest["verification"]["passed"]


def test_blocked_and_depthwise_convolutions_match_onnxruntime_under_qemu(tmp_path):
    """Stride-1/2 one-group and depthwise convolutions in NCHW4c (NEON) next to NCHW ones, verified under qemu."""
    from models import mixed_convs_onnx

    manifest = build(str(mixed_convs_onnx(tmp_path).path), "arm64", tmp_path / "dist").bundle.manifest
    report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert report["conv_layout"] == {"layout": "NCHW4c", "blocked_convs": 4}
    assert manifest["verification"]["passed"] and manifest["verification"]["native_loader"]["emulator"] == "qemu-aarch64"
    assert manifest["verification"]["max_abs_err"] < 1e-4
