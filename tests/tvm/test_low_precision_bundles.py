"""float8 and int4 inputs and outputs, carried in byte containers (frontends/low_precision.py), built for x86_64 and
verified through the Python and native loaders, bit-exact against ONNX's reference.

.npy files carry float8 as its raw bits (uint8) and int4/uint4 as values, one per byte (int8/uint8)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from models import FLOAT8_SWEEP, INT4_SWEEP, float8_onnx, int4_onnx

ml_dtypes = pytest.importorskip("ml_dtypes")

pytestmark = [pytest.mark.tvm]

W8 = np.array([0.5, -0.0, 448.0, np.nan], np.float32).astype(ml_dtypes.float8_e4m3fn)
U4 = np.array([0, 3, 9, 15], np.uint8).astype(ml_dtypes.uint4)


def _float8_reference(x: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
    from onnx import TensorProto
    from onnx.reference.ops.op_cast import cast_to

    return [cast_to(x, TensorProto.FLOAT8E4M3FN, True), (x / np.float32(2)).astype(ml_dtypes.float8_e5m2), w.astype(np.float32)]


def _int4_reference(x: np.ndarray, u: np.ndarray) -> list[np.ndarray]:
    q = np.clip(np.rint(x / np.float32(0.5)) + 1, -8, 7)
    return [q.astype(ml_dtypes.int4), ((q - 1) * np.float32(0.5)).astype(np.float32), u.astype(np.float32)]


def _same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype
    if got.dtype.name.startswith("float8"):
        nan = np.isnan(want.astype(np.float32))
        assert np.array_equal(np.isnan(got.astype(np.float32)), nan)
        np.testing.assert_array_equal(got.view(np.uint8)[~nan], want.view(np.uint8)[~nan])
    else:
        np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    from edgepack.build import build

    root = tmp_path_factory.mktemp("low")
    np.savez(root / "f8.npz", x=FLOAT8_SWEEP[None], w=W8.view(np.uint8)[None])
    np.savez(root / "i4.npz", x=INT4_SWEEP[None], u=U4.astype(np.uint8)[None])
    return {"float8": build(str(float8_onnx(root / "f8.onnx")), "x86_64", root / "f8", golden_inputs=root / "f8.npz").bundle.path,
            "int4": build(str(int4_onnx(root / "i4.onnx")), "x86_64", root / "i4", golden_inputs=root / "i4.npz").bundle.path}


def test_manifest_names_the_types_and_their_containers(bundles):
    f8 = json.loads((bundles["float8"] / "manifest.json").read_text())
    assert [(s["dtype"], s.get("container")) for s in f8["inputs"]] == [("float32", None), ("float8_e4m3fn", "uint8")]
    assert [(s["dtype"], s.get("container")) for s in f8["outputs"]] == [
        ("float8_e4m3fn", "uint8"), ("float8_e5m2", "uint8"), ("float32", None)]
    i4 = json.loads((bundles["int4"] / "manifest.json").read_text())
    assert [s["dtype"] for s in i4["inputs"] + i4["outputs"]] == ["float32", "uint4", "int4", "float32", "float32"]
    case = f8["golden"]["cases"][0]
    assert np.load(bundles["float8"] / case["inputs"][1]).dtype == np.uint8
    assert np.load(bundles["int4"] / i4["golden"]["cases"][0]["outputs"][0]).dtype == np.int8


def test_python_loader_is_bit_exact(bundles):
    from edgepack.runtime.loader import load

    f8 = load(bundles["float8"])
    assert f8.verify()["passed"]
    for got, want in zip(f8.run([FLOAT8_SWEEP, W8]), _float8_reference(FLOAT8_SWEEP, W8)):
        _same_bits(got, want)
    i4 = load(bundles["int4"])
    assert i4.verify()["passed"]
    for got, want in zip(i4.run([INT4_SWEEP, U4.astype(np.uint8)]), _int4_reference(INT4_SWEEP, U4)):  # values, as .npy carries them
        _same_bits(got, want)
    with pytest.raises(Exception, match="outside 0..15"):
        i4.run([INT4_SWEEP, np.array([0, 1, 2, 16], np.uint8)])


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_native_loader_verifies_and_writes_containers(bundles, tmp_path):
    loader = bundles["float8"] / "runtime" / "edgepack-run"
    verify = subprocess.run([str(loader), "verify"], env={}, capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "3 of 3 outputs passed" in verify.stdout, verify.stdout + verify.stderr
    np.save(tmp_path / "x.npy", FLOAT8_SWEEP)
    np.save(tmp_path / "w.npy", W8.view(np.uint8))
    run = subprocess.run([str(loader), "run", "--input", str(tmp_path / "x.npy"), "--input", str(tmp_path / "w.npy"),
                          "--output-dir", str(tmp_path / "out")], env={}, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    outputs = [np.load(tmp_path / "out" / f"output_{i}.npy") for i in range(3)]
    assert [o.dtype for o in outputs] == [np.uint8, np.uint8, np.float32]
    for got, want in zip([outputs[0].view(ml_dtypes.float8_e4m3fn), outputs[1].view(ml_dtypes.float8_e5m2), outputs[2]],
                         _float8_reference(FLOAT8_SWEEP, W8)):
        _same_bits(got, want)
    i4 = bundles["int4"] / "runtime" / "edgepack-run"
    assert subprocess.run([str(i4), "verify"], env={}, capture_output=True, text=True, check=False).returncode == 0
    np.save(tmp_path / "x4.npy", INT4_SWEEP)
    np.save(tmp_path / "u.npy", np.array([0, 1, 2, 16], np.uint8))
    wrong = subprocess.run([str(i4), "run", "--input", str(tmp_path / "x4.npy"), "--input", str(tmp_path / "u.npy"),
                            "--output-dir", str(tmp_path / "o")], env={}, capture_output=True, text=True, check=False)
    assert wrong.returncode == 1 and "a uint4 tensor holds values outside 0..15" in wrong.stderr


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_edgepack_run_and_the_native_loader_write_the_same_container_files(bundles, tmp_path, edgepack_cli):
    bundle = bundles["int4"]
    np.save(tmp_path / "x.npy", INT4_SWEEP)
    np.save(tmp_path / "u.npy", U4.astype(np.uint8))
    inputs = ["--input", tmp_path / "x.npy", "--input", tmp_path / "u.npy"]
    python = edgepack_cli("run", bundle, *inputs, "--output-dir", tmp_path / "p")
    native = subprocess.run([str(bundle / "runtime" / "edgepack-run"), "run", *map(str, inputs), "--output-dir", str(tmp_path / "n")],
                            env={}, capture_output=True, text=True, check=False)
    assert python.returncode == native.returncode == 0, python.stderr + native.stderr
    for index in range(3):
        got, want = np.load(tmp_path / "p" / f"output_{index}.npy"), np.load(tmp_path / "n" / f"output_{index}.npy")
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert np.load(tmp_path / "p" / "output_0.npy").dtype == np.int8  # int4 values, one per byte
    _same_bits(np.load(tmp_path / "p" / "output_0.npy").astype(ml_dtypes.int4), _int4_reference(INT4_SWEEP, U4)[0])


def test_float64_to_float8_is_refused_in_preflight_naming_why(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgepack.errors import EdgepackError
    from edgepack.frontends.preflight import preflight

    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E4M3FN)], "f64",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT8E4M3FN, [4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(tmp_path / "f64.onnx"))
    (tmp_path / "pre").mkdir()
    with pytest.raises(EdgepackError, match="Cast 'y' on float8_e4m3fn .from float64 it would round twice"):
        preflight(tmp_path / "f64.onnx", {}, tmp_path / "pre", {})


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_both_servers_refuse_carried_types_in_the_same_line(bundles):
    import sys

    bundle = bundles["float8"]
    python = subprocess.run([sys.executable, str(bundle / "runtime" / "edgepack_serve.py"), "--port", "0"],
                            capture_output=True, text=True, check=False, timeout=120)
    native = subprocess.run([str(bundle / "runtime" / "edgepack-run"), "serve", "--port", "0"], env={},
                            capture_output=True, text=True, check=False, timeout=120)
    assert python.returncode == native.returncode == 1
    line = ("error: the server does not carry float8_e4m3fn, float8_e5m2 tensors yet (w, y8, q); run the bundle with `run`, "
            "or cast them to float32 in the model")
    assert python.stderr.strip() == native.stderr.strip() == line


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_both_loaders_refuse_an_ml_dtypes_float8_npy_in_the_same_line(bundles, tmp_path, edgepack_cli):
    """np.save of an ml_dtypes float8 array writes descr '<f1', which no loader reads: both name the fix."""
    bundle = bundles["float8"]
    np.save(tmp_path / "x.npy", FLOAT8_SWEEP)
    np.save(tmp_path / "w.npy", W8)
    inputs = ["--input", tmp_path / "x.npy", "--input", tmp_path / "w.npy"]
    python = edgepack_cli("run", bundle, *inputs, "--output-dir", tmp_path / "p")
    native = subprocess.run([str(bundle / "runtime" / "edgepack-run"), "run", *map(str, inputs), "--output-dir", str(tmp_path / "n")],
                            env={}, capture_output=True, text=True, check=False)
    assert python.returncode == native.returncode == 1
    assert "float8: a.view(numpy.uint8)" in python.stderr
    assert python.stderr.strip().splitlines()[-1].split("(unsupported dtype")[1] == native.stderr.strip().splitlines()[-1].split("(unsupported dtype")[1]
