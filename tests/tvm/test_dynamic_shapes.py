"""Dynamic dimensions: `--input x:Bx30:float32 --dim B=1..256` (or the model's own dynamic axis, 1..64 by default)
builds a bundle with Relax symbolic shapes that both loaders run at any size inside the range and refuse
outside it with the same line and exit code; golden vectors cover the smallest and largest size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from models import mlp_with_dynamic_batch

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dynamic")
    mlp_with_dynamic_batch(directory / "mlp.onnx")
    np.save(directory / "x171.npy", np.random.default_rng(1).standard_normal((171, 30)).astype(np.float32))
    return directory


def _reference(model, x):
    import onnxruntime

    return onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _bundle(root):
    return next(root.glob("*/manifest.json")).parent


def test_named_axis_with_a_range_runs_171_rows_through_both_loaders(work, edgepack_cli):
    built = edgepack_cli("build", work / "mlp.onnx", "-o", work / "wide", "--input", "x:Bx30:float32", "--dim", "B=1..256")
    assert built.returncode == 0, built.stderr
    bundle = _bundle(work / "wide")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 30], "dims": ["B", None]}]
    assert manifest["outputs"][0]["dims"] == ["B", None] and manifest["dim_ranges"] == {"B": [1, 256]}
    sizes = [np.load(bundle / case["inputs"][0]).shape[0] for case in manifest["golden"]["cases"]]
    assert min(sizes) == 1 and max(sizes) == 256  # golden vectors at the smallest and the largest size
    x = np.load(work / "x171.npy")
    expected = _reference(work / "mlp.onnx", x)
    python = edgepack_cli("run", bundle, "--input", work / "x171.npy", "-o", work / "py.npy")
    assert python.returncode == 0, python.stderr
    native = edgepack_cli("verify", bundle)  # both loaders' golden check at sizes 1 and 256
    assert native.returncode == 0, native.stdout + native.stderr
    import subprocess

    ran = subprocess.run([str(bundle / "runtime" / "edgepack-run"), "run", "--bundle", str(bundle), "--input", str(work / "x171.npy"),
                          "--output", str(work / "native.npy")], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    for path in ("py.npy", "native.npy"):
        got = np.load(work / path)
        assert got.shape == (171, 5)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    shown = edgepack_cli("inspect", bundle)
    assert "B×30" in shown.stdout and "B = 1..256" in shown.stdout


def test_models_own_dynamic_axis_defaults_to_1_to_64_and_both_loaders_refuse_171_alike(work, edgepack_cli):
    import subprocess

    built = edgepack_cli("build", work / "mlp.onnx", "-o", work / "default")
    assert built.returncode == 0, built.stderr  # on main: "input 'x' has dynamic dimension(s) at axis 0"
    bundle = _bundle(work / "default")
    assert json.loads((bundle / "manifest.json").read_text())["dim_ranges"] == {"N": [1, 64]}
    python = edgepack_cli("run", bundle, "--input", work / "x171.npy", "-o", work / "refused.npy")
    native = subprocess.run([str(bundle / "runtime" / "edgepack-run"), "run", "--bundle", str(bundle), "--input", str(work / "x171.npy"),
                             "--output", str(work / "refused-native.npy")], capture_output=True, text=True, timeout=120)
    line = "error: input 'x' dim 0 (N): 171 is outside the bundle's range 1..64"
    assert python.returncode == native.returncode == 1
    assert python.stderr.strip().splitlines()[-1].startswith(line) and native.stderr.strip().splitlines()[-1].startswith(line)
    assert python.stderr.strip().splitlines()[-1] == native.stderr.strip().splitlines()[-1]
    assert not (work / "refused.npy").exists() and not (work / "refused-native.npy").exists()


def test_a_dim_that_names_no_axis_is_refused_in_one_line(work, edgepack_cli):
    refused = edgepack_cli("build", work / "mlp.onnx", "-o", work / "none", "--dim", "T=1..8")
    assert refused.returncode != 0 and refused.stderr.strip().splitlines()[-1].startswith("error: --dim names T")
    bad = edgepack_cli("build", work / "mlp.onnx", "-o", work / "none", "--input", "x:Bx30:float32", "--dim", "B=9..2")
    assert bad.returncode != 0 and "cannot read --dim 'B=9..2'" in bad.stderr
    assert not (work / "none").exists()


def test_named_axes_on_a_pytorch_model_are_refused_before_work(tmp_path, edgepack_cli):
    from models import write_factory_file

    factory = write_factory_file(tmp_path / "net.py", "mlp")
    refused = edgepack_cli("build", f"{factory}:mlp", "-o", tmp_path / "dist", "--input", "x:Bx4:float32")
    assert refused.returncode != 0 and "named (dynamic) axes need an ONNX model" in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "dist").exists()
