"""bfloat16 inputs and outputs, built for x86_64 and verified through the Python and native loaders.

.npy files carry bfloat16 tensors as their raw bits (uint16); the manifest's dtype says how to read them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from models import bfloat16_onnx

ml_dtypes = pytest.importorskip("ml_dtypes")

pytestmark = [pytest.mark.tvm]


def _reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = x.astype(np.float32) * np.float32(1.5) + np.float32(0.25)
    return y, y.astype(ml_dtypes.bfloat16)


X = np.array([[1.0, -2.5, 3.140625, 1e-3, 65280.0], [0.0, -0.0, 7.5, 1e20, -3e-5]], np.float32).astype(ml_dtypes.bfloat16)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from edgepack.build import build

    root = tmp_path_factory.mktemp("bf16")
    result = build(str(bfloat16_onnx(root / "bf16.onnx")), "x86_64", root / "dist")
    return result.bundle.path


def test_manifest_and_golden_files_carry_bfloat16_as_raw_bits(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [s["dtype"] for s in manifest["inputs"]] == ["bfloat16"]
    assert [s["dtype"] for s in manifest["outputs"]] == ["float32", "bfloat16"]
    case = manifest["golden"]["cases"][0]
    x = np.load(bundle / case["inputs"][0])
    assert x.dtype == np.uint16
    assert np.load(bundle / case["outputs"][1]).dtype == np.uint16
    np.testing.assert_array_equal(np.load(bundle / case["outputs"][1]).view(ml_dtypes.bfloat16),
                                  _reference(x.view(ml_dtypes.bfloat16))[1])


def test_python_loader_runs_and_verifies(bundle, tmp_path):
    from edgepack.runtime.loader import load

    loaded = load(bundle)
    assert loaded.verify()["passed"]
    y, z = loaded.run([X])
    assert z.dtype == ml_dtypes.bfloat16
    ref_y, ref_z = _reference(X)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(z.view(np.uint16), ref_z.view(np.uint16))
    y2, z2 = loaded.run([X.view(np.uint16)])  # the raw bits, as a .npy file carries them
    np.testing.assert_array_equal(z2.view(np.uint16), ref_z.view(np.uint16))
    with pytest.raises(Exception, match="dtype: expected bfloat16, got float32"):
        loaded.run([X.astype(np.float32)])


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_native_loader_runs_and_verifies(bundle, tmp_path):
    loader = bundle / "runtime" / "edgepack-run"
    assert loader.is_file()
    verify = subprocess.run([str(loader), "verify"], env={}, capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    assert "6 of 6 outputs passed" in verify.stdout
    np.save(tmp_path / "x.npy", X.view(np.uint16))
    run = subprocess.run([str(loader), "run", "--input", str(tmp_path / "x.npy"), "--output-dir", str(tmp_path / "out")],
                         env={}, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    ref_y, ref_z = _reference(X)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "output_0.npy"), ref_y)
    z = np.load(tmp_path / "out" / "output_1.npy")
    assert z.dtype == np.uint16
    np.testing.assert_array_equal(z, ref_z.view(np.uint16))
    np.save(tmp_path / "f.npy", X.astype(np.float32))
    wrong = subprocess.run([str(loader), "run", "--input", str(tmp_path / "f.npy"), "--output-dir", str(tmp_path / "o")],
                           env={}, capture_output=True, text=True, check=False)
    assert wrong.returncode != 0 and "dtype: expected bfloat16, got float32" in wrong.stderr


def test_edgepack_run_cli_takes_raw_bits_and_writes_raw_bits(bundle, tmp_path, edgepack_cli):
    np.save(tmp_path / "x.npy", X.view(np.uint16))
    result = edgepack_cli("run", bundle, "--input", tmp_path / "x.npy", "--output-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    z = np.load(tmp_path / "out" / "output_1.npy")
    assert z.dtype == np.uint16
    np.testing.assert_array_equal(z, _reference(X)[1].view(np.uint16))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_both_loaders_refuse_an_ml_dtypes_npy_alike(bundle, tmp_path, edgepack_cli):
    """np.save of an ml_dtypes array writes descr '<V2', which names no type: both loaders refuse it, exit 1."""
    np.save(tmp_path / "v.npy", X)
    python = edgepack_cli("run", bundle, "--input", tmp_path / "v.npy", "--output-dir", tmp_path / "p")
    native = subprocess.run([str(bundle / "runtime" / "edgepack-run"), "run", "--input", str(tmp_path / "v.npy"),
                             "--output-dir", str(tmp_path / "n")], env={}, capture_output=True, text=True, check=False)
    assert python.returncode == native.returncode == 1
    for result in (python, native):
        assert "unsupported dtype '<V2'" in result.stderr and "bfloat16: its raw bits" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_bfloat16_arithmetic_runs_in_float32_between_casts(tmp_path):
    """TVM's Elu mixes a float32 constant with bfloat16 (import fails); pre-flight widens the node to float32."""
    import onnx
    from onnx import TensorProto, helper

    from edgepack.build import build
    from edgepack.runtime.loader import load

    graph = helper.make_graph([helper.make_node("Elu", ["x"], ["y"], alpha=0.5), helper.make_node("Mul", ["y", "x"], ["z"])], "elu",
                              [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 5])],
                              [helper.make_tensor_value_info("z", TensorProto.BFLOAT16, [2, 5])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]), str(tmp_path / "elu.onnx"))  # Elu: bfloat16 from 22
    from edgepack.bundle.golden import GoldenConfig

    # one bfloat16 ulp (2^-8 relative, up to 2^-7 near a power of two): exp is computed differently in each engine
    result = build(str(tmp_path / "elu.onnx"), "x86_64", tmp_path / "dist", golden=GoldenConfig(atol=1e-4, rtol=2 ** -7))
    preflight = next(s for s in result.bundle.manifest["provenance"]["stages"] if s["stage"] == "preflight")["report"]
    assert preflight["legalized"] == {"Elu": 1, "Mul": 1}
    (z,) = load(result.bundle.path).run([X])
    xf = X.astype(np.float32)
    with np.errstate(over="ignore"):  # exp(1e20) and 1e20 * 1e20 are inf in float32, as in the bundle
        y = np.where(xf > 0, xf, np.float32(0.5) * (np.exp(xf) - 1)).astype(np.float32).astype(ml_dtypes.bfloat16)
        ref = (y.astype(np.float32) * xf).astype(ml_dtypes.bfloat16)
    np.testing.assert_allclose(z.astype(np.float32), ref.astype(np.float32), rtol=2 ** -7, atol=1e-4)


def test_golden_inputs_npz_takes_bfloat16_as_raw_bits(tmp_path):
    from edgepack.build import build

    np.savez(tmp_path / "cases.npz", x=np.stack([X, -X]).view(np.uint16))
    result = build(str(bfloat16_onnx(tmp_path / "bf16.onnx")), "x86_64", tmp_path / "dist", golden_inputs=tmp_path / "cases.npz")
    case = result.bundle.manifest["golden"]["cases"][1]
    np.testing.assert_array_equal(np.load(result.bundle.path / case["inputs"][0]), (-X).view(np.uint16))
    assert result.bundle.manifest["verification"]["passed"]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_both_servers_refuse_bfloat16_bundles_alike(bundle):
    import sys

    python = subprocess.run([sys.executable, str(bundle / "runtime" / "edgepack_serve.py"), "--port", "0"],
                            capture_output=True, text=True, check=False, timeout=120)
    native = subprocess.run([str(bundle / "runtime" / "edgepack-run"), "serve", "--port", "0"], env={},
                            capture_output=True, text=True, check=False, timeout=120)
    assert python.returncode == native.returncode == 1
    line = "error: the server does not carry bfloat16 tensors yet (x, z); run the bundle with `run`, or cast them to float32 in the model"
    assert python.stderr.strip() == native.stderr.strip() == line
