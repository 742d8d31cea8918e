"""The native loader `edgepack-run` runs, verifies and benchmarks a bundle with no Python around."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.tvm,
    pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++"),
]

ATOL = RTOL = 1e-5


def _onnx_dense():
    """x[2,3] -> relu(x @ W + B)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Add", ["m", "B"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _onnx_two_outputs():
    """(x[1,4] float32, k[3] int64) -> (tanh(x @ W + B), k * 2)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "B"),
        numpy_helper.from_array(np.array([2, 2, 2], dtype=np.int64), "two"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Add", ["m", "B"], ["a"]),
        helper.make_node("Tanh", ["a"], ["y"]),
        helper.make_node("Mul", ["k", "two"], ["k2"]),
    ]
    graph = helper.make_graph(
        nodes, "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("k2", TensorProto.INT64, [3])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def make_bundle(model, inputs: list[np.ndarray], dest: Path, loader_cache: Path) -> Path:
    """Build a bundle per docs/bundle-format.md directly with TVM (stand-in for `edgepack build`)."""
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.onnx import from_onnx
    from tvm_ffi import libinfo

    from edgepack.native import build_native_loader

    mod, params = detach_params(from_onnx(model, keep_params_in_input=True))
    main = mod["main"]
    num_inputs = int(main.attrs["num_input"])
    names = [p.name for p in main.params[num_inputs:]]
    target_dict = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
    target = tvm.target.Target(target_dict)
    with target:
        executable = relax.build(mod, target, relax_pipeline=relax.get_default_pipeline(target))

    (dest / "golden" / "0").mkdir(parents=True)
    (dest / "runtime").mkdir()
    executable.export_library(str(dest / "model.so"))
    (dest / "params.bin").write_bytes(
        tvm.runtime.save_param_dict(dict(zip(names, params.get("main", []), strict=True)))
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a for i, a in zip(session.get_inputs(), inputs, strict=True)}
    outputs = session.run(None, feeds)
    case = {"inputs": [], "outputs": []}
    for kind, arrays in (("input", inputs), ("output", outputs)):
        for i, array in enumerate(arrays):
            np.save(dest / "golden" / "0" / f"{kind}_{i}.npy", array)
            case[f"{kind}s"].append(f"golden/0/{kind}_{i}.npy")

    tvm_lib = Path(tvm.__file__).parent / "lib"
    ffi_lib = Path(libinfo.find_libtvm_ffi()).parent
    shutil.copy(tvm_lib / "libtvm_runtime.so", dest / "runtime")
    shutil.copy(ffi_lib / "libtvm_ffi.so", dest / "runtime")
    shutil.copy(build_native_loader("g++", [tvm_lib, ffi_lib], loader_cache), dest / "runtime")

    def signature(values, arrays):
        return [{"name": v.name, "dtype": str(a.dtype), "shape": list(a.shape)}
                for v, a in zip(values, arrays, strict=True)]

    files = {
        p.relative_to(dest).as_posix(): {
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size,
        }
        for p in sorted(dest.rglob("*")) if p.is_file()
    }
    manifest = {
        "schema_version": 1,
        "name": model.graph.name, "version": "0.0.1", "created": "2025-01-01T00:00:00Z",
        "tools": {"tvm": tvm.__version__, "numpy": np.__version__, "torch": None},
        "target": {"name": "x86_64", "arch": "x86_64", "tvm": target_dict, "toolchain": "g++",
                   "runtime": "cpu", "capabilities": []},
        "inputs": signature(session.get_inputs(), inputs),
        "outputs": signature(session.get_outputs(), outputs),
        "library": "model.so",
        "params": {"file": "params.bin", "names": names},
        "golden": {"atol": ATOL, "rtol": RTOL, "cases": [case]},
        "files": files,
        "provenance": {"source": {"kind": "onnx"}, "stages": []},
        "verification": {"passed": True, "engine": "onnxruntime", "atol": ATOL, "rtol": RTOL},
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("built")
    cache = root / "loader-cache"
    dense = [np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)]
    two = [np.random.default_rng(3).standard_normal((1, 4)).astype(np.float32),
           np.array([1, -5, 7], dtype=np.int64)]
    return {
        "dense": make_bundle(_onnx_dense(), dense, root / "dense", cache),
        "two": make_bundle(_onnx_two_outputs(), two, root / "two", cache),
    }


@pytest.fixture()
def dense(built, tmp_path) -> Path:
    """A copy of the dense bundle in a fresh directory: the copy alone must suffice."""
    return Path(shutil.copytree(built["dense"], tmp_path / "dense-copy"))


@pytest.fixture()
def two(built, tmp_path) -> Path:
    return Path(shutil.copytree(built["two"], tmp_path / "two-copy"))


def run(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs the bundle's own loader with an empty environment (no Python, no LD_LIBRARY_PATH)."""
    return subprocess.run([str(bundle / "runtime" / "edgepack-run"), *args],
                          env={}, capture_output=True, text=True, check=False)


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_run_matches_onnxruntime(dense, tmp_path):
    out = tmp_path / "y.npy"
    result = run(dense, "run", "--input", str(dense / "golden/0/input_0.npy"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(out), np.load(dense / "golden/0/output_0.npy"), atol=1e-5, rtol=0)


def test_run_two_outputs_to_directory(two, tmp_path):
    golden = two / "golden/0"
    inputs = ["--input", str(golden / "input_0.npy"), "--input", str(golden / "input_1.npy")]
    result = run(two, "run", "--bundle", str(two), *inputs, "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out/output_0.npy"), np.load(golden / "output_0.npy"),
                               atol=1e-5, rtol=0)
    k2 = np.load(tmp_path / "out/output_1.npy")
    assert k2.dtype == np.int64 and k2.tolist() == [2, -10, 14]

    result = run(two, "run", *inputs, "-o", str(tmp_path / "one.npy"))
    assert result.returncode == 2
    assert "--output-dir" in error_line(result)


def test_verify_passes(two):
    result = run(two, "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("PASS") == 2 and "FAIL" not in result.stdout


def test_verify_fails_on_wrong_golden(dense):
    ref = dense / "golden/0/output_0.npy"
    np.save(ref, np.load(ref) + 0.1)
    manifest = json.loads((dense / "manifest.json").read_text())
    manifest["files"]["golden/0/output_0.npy"] = {
        "sha256": hashlib.sha256(ref.read_bytes()).hexdigest(), "size": ref.stat().st_size,
    }
    (dense / "manifest.json").write_text(json.dumps(manifest))
    result = run(dense, "verify")
    assert result.returncode == 4
    assert "FAIL" in result.stdout
    assert error_line(result).startswith("error: 1 golden output(s) differ")


def test_bench_prints_json(dense):
    result = run(dense, "bench", "--warmup", "1", "--runs", "5")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["runs"] == 5 and report["warmup"] == 1 and report["inputs_from"] == "golden"
    assert 0 < report["min_ms"] <= report["median_ms"] <= report["p90_ms"] <= report["p99_ms"]
    assert report["mean_ms"] > 0 and report["throughput_per_s"] > 0
    assert report["threads"] >= 1 and report["peak_rss_kb"] > 0

    result = run(dense, "bench", "--runs", "2", "--input", str(dense / "golden/0/input_0.npy"))
    assert json.loads(result.stdout)["inputs_from"] == "files"


def test_wrong_shape_and_dtype_are_user_errors(dense, tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((2, 4), np.float32))
    result = run(dense, "run", "--input", str(tmp_path / "wide.npy"), "-o", str(tmp_path / "y.npy"))
    assert result.returncode == 1
    assert error_line(result) == (
        "error: input 'x' dim 1: expected 3, got 4; pass a float32 array of shape (2, 3)"
    )
    np.save(tmp_path / "ints.npy", np.zeros((2, 3), np.int64))
    result = run(dense, "run", "--input", str(tmp_path / "ints.npy"), "-o", str(tmp_path / "y.npy"))
    assert result.returncode == 1
    assert error_line(result).startswith("error: input 'x' dtype: expected float32, got int64; ")
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("name", ["params.bin", "model.so"])
def test_changed_file_is_refused_before_loading(dense, tmp_path, name):
    path = dense / name
    data = bytearray(path.read_bytes())
    if name == "model.so":  # garbage of the same size: loading it would fail differently
        data = bytearray(b"\x00" * len(data))
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = run(dense, "run", "--input", str(dense / "golden/0/input_0.npy"), "-o", str(tmp_path / "y.npy"))
    assert result.returncode == 3
    assert error_line(result).startswith(f"error: bundle file '{name}' does not match its SHA-256")


def test_missing_file_is_refused(dense):
    (dense / "golden/0/output_0.npy").unlink()
    result = run(dense, "verify")
    assert result.returncode == 3
    assert error_line(result).startswith("error: bundle file 'golden/0/output_0.npy' is missing")


def test_newer_schema_version_is_refused(dense):
    manifest = json.loads((dense / "manifest.json").read_text())
    manifest["schema_version"] = 2
    (dense / "manifest.json").write_text(json.dumps(manifest))
    result = run(dense, "verify")
    assert result.returncode == 3
    line = error_line(result)
    assert "schema_version 2" in line and "schema_version 1" in line


def test_usage_errors(dense):
    result = run(dense, "run", "--frobnicate")
    assert result.returncode == 2
    assert error_line(result).startswith("error: unknown option '--frobnicate' for 'run'")
    assert run(dense, "launch").returncode == 2
    assert run(dense, "--help").returncode == 0


def test_build_is_cached_and_reports_a_missing_compiler(built, tmp_path):
    from edgepack.errors import EdgepackError
    from edgepack.native import build_native_loader

    libs = [built["dense"] / "runtime"]
    first = build_native_loader("g++", libs, tmp_path)
    assert first.is_file() and first.stat().st_size < 1_000_000
    assert build_native_loader("g++", libs, tmp_path) == first
    assert [p.name for p in first.parent.iterdir()] == ["edgepack-run"]  # no temp files left
    with pytest.raises(EdgepackError, match="no-such-g"):
        build_native_loader("no-such-g++", libs, tmp_path)
