"""arm64 bundles: cross-compiled with Debian's aarch64 toolchain, verified under qemu-aarch64."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
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


class _BuiltOnDemand(dict):
    """(model, target) → bundle path, each built the first time a test asks for it."""

    def __init__(self, out: Path):
        super().__init__()
        self.out = out

    def __missing__(self, key: tuple[str, str]) -> Path:
        model, target = key
        self[key] = build(MODELS[model], target, self.out / f"{model}-{target}").bundle.path
        return self[key]


def _layout(report: dict) -> dict:
    """A compile report's conv_layout without the per-convolution blocks."""
    return {key: report[key] for key in ("layout", "blocked_convs")}


@pytest.fixture(scope="session")
def arm_bundles(tmp_path_factory) -> dict[tuple[str, str], Path]:
    return _BuiltOnDemand(tmp_path_factory.mktemp("arm"))


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
    manifest = json.loads((bundle / "manifest.json").read_text())
    result = run_native_loader(bundle, manifest["files"], "run", "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                               prefix=emulator_command(manifest["target"]))
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


def test_native_server_answers_v2_clients_under_qemu(arm_bundles):
    """`edgepack-run serve` of an arm64 bundle under qemu-aarch64: curl and tritonclient, unchanged."""
    import tritonclient.http as triton

    bundle = arm_bundles["digits", "arm64"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    prefix = emulator_command(manifest["target"])
    process = subprocess.Popen([*prefix, str(bundle / "runtime" / "edgepack-run"), "serve", "--port", "0", "--bundle", str(bundle)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={})
    try:
        line = process.stdout.readline()
        assert line.startswith(f"serving {manifest['name']} "), (line, process.stderr.read() if not line else "")
        url = line.split()[-1]
        case = manifest["golden"]["cases"][0]
        x, y = load_npy(bundle / case["inputs"][0]), load_npy(bundle / case["outputs"][0])
        spec = manifest["inputs"][0]
        body = json.dumps({"inputs": [{"name": spec["name"], "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})
        if shutil.which("curl"):
            curl = subprocess.run(["curl", "-sS", "-X", "POST", "--data-binary", body, f"{url}/v2/models/{manifest['name']}/infer"],
                                  capture_output=True, text=True, timeout=120)
            answer = json.loads(curl.stdout)
            np.testing.assert_allclose(np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(y.shape), y, atol=1e-4, rtol=1e-3)
        client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=120.0)
        assert client.is_model_ready(manifest["name"])
        tensor = triton.InferInput(spec["name"], list(x.shape), "FP32")
        tensor.set_data_from_numpy(x.astype(np.float32), binary_data=True)
        np.testing.assert_allclose(client.infer(manifest["name"], [tensor]).as_numpy(manifest["outputs"][0]["name"]), y, atol=1e-4, rtol=1e-3)
        with urllib.request.urlopen(f"{url}/healthz", timeout=60) as response:
            assert json.loads(response.read())["status"] == "ok"
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0


def test_resnet_runs_blocked_nchw4c_convolutions_under_qemu(arm_bundles):
    """NEON has 4 fp32 lanes: ResNet's convolutions run as NCHW4c with packed weights, verified under qemu above."""
    for target in ("arm64", "rpi4"):
        manifest = json.loads((arm_bundles["resnet", target] / "manifest.json").read_text())
        report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
        assert _layout(report["conv_layout"]) == {"layout": "NCHW4c", "blocked_convs": 19}
        assert manifest["verification"]["passed"]


def test_blocked_and_depthwise_convolutions_match_onnxruntime_under_qemu(tmp_path):
    """Stride-1/2 one-group and depthwise convolutions in NCHW4c (NEON) next to NCHW ones, verified under qemu."""
    from models import mixed_convs_onnx

    manifest = build(str(mixed_convs_onnx(tmp_path).path), "arm64", tmp_path / "dist").bundle.manifest
    report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert _layout(report["conv_layout"]) == {"layout": "NCHW4c", "blocked_convs": 4}
    assert manifest["verification"]["passed"] and manifest["verification"]["native_loader"]["emulator"] == "qemu-aarch64"
    assert manifest["verification"]["max_abs_err"] < 1e-4


def test_fast_math_and_padded_attention_match_onnxruntime_under_qemu(tmp_path):
    """The polynomial exp/erf/tanh/sigmoid/softmax/GELU and the padded 197-token matmul, built for arm64, verified under qemu."""
    from models import activations_onnx, attention_scores_onnx

    for onnx_file in (activations_onnx(tmp_path / "act.onnx"), attention_scores_onnx(tmp_path / "scores.onnx")):
        manifest = build(str(onnx_file), "arm64", tmp_path / onnx_file.stem).bundle.manifest
        assert manifest["verification"]["passed"] and manifest["verification"]["native_loader"]["emulator"] == "qemu-aarch64"


def test_channel_shuffles_absorbed_match_onnxruntime_under_qemu(tmp_path):
    """ShuffleNetV2's units with their shuffles absorbed into the weights and 15-channel convolutions padded to 16
    (edgepack.compiler.channel_shuffle), arm64."""
    from models import tiny_shufflenet_onnx

    manifest = build(str(tiny_shufflenet_onnx(tmp_path / "shufflenet.onnx")), "arm64", tmp_path / "dist").bundle.manifest
    report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert report["channel_shuffles"] == {"found": 4, "removed": 4, "gathers": 0, "padded_convs": 5}
    assert manifest["verification"]["passed"] and manifest["verification"]["native_loader"]["emulator"] == "qemu-aarch64"
    assert manifest["verification"]["max_abs_err"] < 1e-4


def test_a_model_whose_kernels_all_fold_away_links_for_arm64(tmp_path):
    """Shape(x): no kernel is left, so TVM exports C source and packs its imports with the triple of the host's g++
    (the cross link then failed with a traceback); the packed object is now made for the cross compiler's triple."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Shape", ["x"], ["y"])], "shape",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "shape.onnx"))
    bundle = build(str(tmp_path / "shape.onnx"), "arm64", tmp_path / "dist").bundle
    assert elf_arch(bundle.path / "model.so") == "aarch64"
    assert bundle.manifest["verification"]["passed"] and bundle.manifest["verification"]["native_loader"]["emulator"] == "qemu-aarch64"
