"""Golden vectors from real data: `edgepack quantize` then `edgepack build q.onnx` passes through the real CLI,
golden inputs come from the user's data when there is any, and a mismatch error gives its size."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from models import export_onnx, small_cnn

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    directory = tmp_path_factory.mktemp("golden-data")
    export_onnx(small_cnn(), directory / "cnn.onnx")
    rng = np.random.default_rng(0)
    np.savez(directory / "calib.npz", image=rng.uniform(0, 1, (16, 3, 8, 8)).astype(np.float32))
    return directory


def _golden(bundle_root):
    manifest = json.loads(next(bundle_root.glob("*/manifest.json")).read_text())
    return manifest["golden"], next(bundle_root.glob("*/manifest.json")).parent


def test_quantized_file_builds_with_the_recorded_calibration_samples(cnn, edgepack_cli):
    quantized = edgepack_cli("quantize", cnn / "cnn.onnx", "-o", cnn / "q8.onnx", "--mode", "int8", "--calib", cnn / "calib.npz")
    assert quantized.returncode == 0, quantized.stderr
    built = edgepack_cli("build", cnn / "q8.onnx", "-o", cnn / "dist8")
    assert built.returncode == 0, built.stderr
    golden, bundle = _golden(cnn / "dist8")
    assert golden["origin"] == "user" and "calibration data" in golden["data"] and "recorded by edgepack quantize" in golden["data"]
    calib = np.load(cnn / "calib.npz")["image"]
    np.testing.assert_array_equal(np.load(bundle / golden["cases"][1]["inputs"][0]), calib[1:2])
    assert golden["atol"] > 1e-4  # the int8 rule: one output quantization step on top of --atol
    shown = edgepack_cli("inspect", bundle)
    assert "inputs from the user's data (calibration data" in shown.stdout


def test_fp16_file_without_data_builds_and_says_its_golden_inputs_are_random(cnn, edgepack_cli):
    # on main: exit 4, "max_abs_err 0.000262" beyond atol 0.0001 (the quantized tolerance was lost)
    assert edgepack_cli("quantize", cnn / "cnn.onnx", "-o", cnn / "q16.onnx", "--mode", "fp16").returncode == 0
    built = edgepack_cli("build", cnn / "q16.onnx", "-o", cnn / "dist16")
    assert built.returncode == 0, built.stderr
    assert "random inputs (not real data" in built.stdout
    golden, _ = _golden(cnn / "dist16")
    assert golden["origin"] == "random" and "data" not in golden


def test_eval_data_wins_over_recorded_samples_and_a_mismatch_gives_its_size(cnn, edgepack_cli):
    rng = np.random.default_rng(1)
    np.savez(cnn / "eval.npz", image=rng.uniform(0, 1, (8, 3, 8, 8)).astype(np.float32), labels=np.zeros(8, np.int64))
    built = edgepack_cli("build", cnn / "q8.onnx", "-o", cnn / "dist-eval", "--eval", cnn / "eval.npz")
    assert built.returncode == 0, built.stderr
    golden, _ = _golden(cnn / "dist-eval")
    assert golden["data"].startswith("evaluation data")
    plain = onnx.load(str(cnn / "q16.onnx"))  # the same fp16 file without edgepack's record: float tolerance
    del plain.metadata_props[:]
    onnx.save(plain, str(cnn / "q16-plain.onnx"))
    failed = edgepack_cli("build", cnn / "q16-plain.onnx", "-o", cnn / "dist-tight")
    assert failed.returncode == 4
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "max abs err " in line and "pass --atol " in line, line
