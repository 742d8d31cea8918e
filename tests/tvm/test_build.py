"""Real builds of the tiny models through the Python API: manifest, outputs, archive, --force.

The three session bundles (tests/conftest.py) are built once: the MLP from an ONNX file, the CNN
and the two-input/two-output model from `file.py:factory`. Tests that change a bundle use a copy.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tarfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from edgepack.build import build, plan_build, run_build
from edgepack.compiler.compile import CompileConfig
from edgepack.errors import EdgepackError, VerificationError
from edgepack.frontends.export import ExportConfig
from edgepack.runtime.bundle_format import BundleError, TensorSpec, read_manifest
from edgepack.runtime.loader import load
from edgepack.targets import load_target

pytestmark = pytest.mark.tvm

REPO = Path(__file__).resolve().parents[2]
CORE_FILES = {"model.so", "params.bin", "reference/model.onnx", "runtime/edgepack-run", "runtime/edgepack_loader.py",
              "runtime/libtvm_runtime.so", "runtime/libtvm_ffi.so"}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(directory: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `directory`, the manifest included."""
    return {p.relative_to(directory).as_posix(): sha256(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def onnxruntime_outputs(onnx_path: Path, specs, arrays) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {spec.name: array for spec, array in zip(specs, arrays)})


@pytest.fixture(params=["mlp", "small_cnn", "two_in_two_out"])
def built(request):
    """(model name, BuildResult) for each of the three session builds."""
    fixture = {"mlp": "mlp_build", "small_cnn": "cnn_build", "two_in_two_out": "two_build"}[request.param]
    return request.param, request.getfixturevalue(fixture)


def test_mlp_manifest_field_by_field(mlp_build, onnx_models):
    bundle, source = mlp_build.bundle.path, onnx_models["mlp"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest == mlp_build.bundle.manifest
    assert bundle.name == "mlp-0.1.0-x86_64"

    assert list(manifest)[:2] == ["schema_version", "created"]
    assert manifest["schema_version"] == 1
    assert (manifest["name"], manifest["version"]) == ("mlp", "0.1.0")
    created = dt.datetime.fromisoformat(manifest["created"])
    assert created.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.timezone.utc) - created) < dt.timedelta(hours=1)
    assert manifest["tools"] == {
        "edgepack": metadata.version("edgepack"), "tvm": metadata.version("apache-tvm"),
        "tvm_ffi": metadata.version("apache-tvm-ffi"), "onnx": metadata.version("onnx"),
        "onnxruntime": metadata.version("onnxruntime"), "torch": None, "numpy": metadata.version("numpy"),
    }
    assert manifest["target"] == load_target("x86_64").to_json()
    assert manifest["requires"]["arch"] == "x86_64"
    assert manifest["requires"]["cpu_features"] == ["avx2", "fma"]
    assert re.fullmatch(r"2\.\d+", manifest["requires"]["glibc"])

    import onnxruntime as ort

    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 4]}]
    assert manifest["outputs"] == [{"name": session.get_outputs()[0].name, "dtype": "float32", "shape": [1, 3]}]
    assert manifest["library"] == "model.so"
    assert manifest["params"] == {"file": "params.bin", "names": ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]}
    assert manifest["golden"] == {
        "atol": 1e-4, "rtol": 1e-3, "origin": "random", "reference": "onnxruntime",
        "cases": [{"inputs": [f"golden/{i}/input_0.npy"], "outputs": [f"golden/{i}/output_0.npy"]} for i in range(3)],
    }

    on_disk = set(snapshot(bundle)) - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert CORE_FILES <= on_disk
    for rel, entry in manifest["files"].items():
        assert entry == {"sha256": sha256(bundle / rel), "size": (bundle / rel).stat().st_size}, rel
    assert (bundle / "runtime/edgepack_loader.py").read_bytes() == (REPO / "edgepack/runtime/loader.py").read_bytes()
    assert os.access(bundle / "runtime/edgepack-run", os.X_OK)
    import onnx

    reference = onnx.load(str(bundle / "reference/model.onnx"))  # the checked, static-shape model that was compiled
    assert [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in reference.graph.input] == [[1, 4]]

    provenance = manifest["provenance"]
    assert provenance["source"] == {"kind": "onnx", "path": str(source), "sha256": sha256(source)}
    assert [stage["stage"] for stage in provenance["stages"]] == ["preflight", "compile"]
    preflight, compile_ = provenance["stages"]
    assert preflight["config"] == {"input_overrides": {}}
    assert preflight["report"]["op_counts"] == {"Gemm": 2, "Relu": 1}
    assert preflight["report"]["unsupported"] == []
    assert preflight["report"]["opset"] >= 17
    assert set(compile_["config"]) == set(asdict(CompileConfig())) | {"tvm_target"}  # every compile setting recorded
    assert compile_["config"]["tvm_target"] == dict(load_target("x86_64").tvm)
    assert compile_["config"]["pipeline"] == CompileConfig().pipeline
    assert compile_["report"]["n_params"] == 4
    assert compile_["report"]["library_bytes"] == manifest["files"]["model.so"]["size"]
    assert compile_["report"]["params_bytes"] == manifest["files"]["params.bin"]["size"]

    verification = manifest["verification"]
    assert verification["passed"] is True
    assert (verification["atol"], verification["rtol"], verification["cases"]) == (1e-4, 1e-3, 3)
    assert 0 <= verification["max_abs_err"] <= 1e-4
    python, native = verification["python_loader"], verification["native_loader"]
    assert (python["ran"], python["passed"], python["engine"]) == (True, True, "edgepack-python-loader")
    assert [case["case"] for case in python["cases"]] == [0, 1, 2]
    assert (native["ran"], native["passed"], native["exit_code"]) == (True, True, 0)
    assert native["emulator"] is None

    assert [record.stage for record in mlp_build.stages] == ["preflight", "compile", "package"]
    assert mlp_build.stages[-1].report["path"] == str(bundle)
    assert mlp_build.stages[-1].report["archive"] is None


def test_golden_vectors_are_onnxruntime_outputs(mlp_build, onnx_models):
    bundle = mlp_build.bundle.path
    spec = TensorSpec("x", "float32", (1, 4))
    for index, case in enumerate(mlp_build.bundle.manifest["golden"]["cases"]):
        inputs = [np.load(bundle / rel) for rel in case["inputs"]]
        outputs = [np.load(bundle / rel) for rel in case["outputs"]]
        assert inputs[0].dtype == np.float32 and inputs[0].shape == (1, 4)
        np.testing.assert_allclose(outputs[0], onnxruntime_outputs(onnx_models["mlp"], [spec], inputs)[0], rtol=1e-6, atol=1e-7)
        if index:
            assert not np.array_equal(inputs[0], np.load(bundle / "golden/0/input_0.npy")), "cases must differ"


def test_factory_build_records_torch_and_the_export(cnn_build, factory_specs):
    manifest = cnn_build.bundle.manifest
    path, factory = factory_specs["small_cnn"].rsplit(":", 1)
    assert cnn_build.bundle.path.name == "small_cnn-2.3.4-x86_64"  # name from the factory, version from __version__
    assert (manifest["name"], manifest["version"]) == ("small_cnn", "2.3.4")
    assert manifest["tools"]["torch"] == metadata.version("torch")
    assert manifest["inputs"] == [{"name": "image", "dtype": "float32", "shape": [1, 3, 8, 8]}]
    assert [out["shape"] for out in manifest["outputs"]] == [[1, 5]]
    assert manifest["provenance"]["source"] == {"kind": "torch-factory", "path": path, "sha256": sha256(Path(path)),
                                                "factory": factory}
    stages = manifest["provenance"]["stages"]
    assert [stage["stage"] for stage in stages] == ["export", "preflight", "compile"]
    assert stages[0]["config"] == asdict(ExportConfig())
    assert stages[0]["report"]["passed"] is True and stages[0]["report"]["cases"] == 2
    assert stages[1]["config"]["input_overrides"] == {"image": {"name": "image", "dtype": "float32", "shape": [1, 3, 8, 8]}}
    counts = stages[1]["report"]["op_counts"]
    assert counts["Conv"] == 2 and counts["Add"] >= 1  # two convolutions and the residual add survive the export
    assert manifest["verification"]["passed"] is True
    assert manifest["verification"]["native_loader"]["passed"] is True


def test_loader_matches_onnxruntime_and_torch(built, onnx_models):
    from models import FACTORIES, torch_outputs

    name, result = built
    bundle = load(result.bundle.path)
    assert bundle.signature() == {"inputs": result.bundle.manifest["inputs"], "outputs": result.bundle.manifest["outputs"]}
    rng = np.random.default_rng(1234)  # not the golden seed
    arrays = [rng.standard_normal(spec.shape).astype(spec.dtype) for spec in bundle.inputs]
    got = bundle.run(arrays)
    from_ort = onnxruntime_outputs(onnx_models[name], bundle.inputs, arrays)  # the test's own export, not the bundle's
    from_torch = torch_outputs(FACTORIES[name](), arrays)
    assert len(got) == len(from_ort) == len(from_torch) == len(bundle.outputs)
    for out, ref, ref_torch, spec in zip(got, from_ort, from_torch, bundle.outputs):
        assert (str(out.dtype), out.shape) == (spec.dtype, spec.shape)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(out, ref_torch, atol=1e-5, rtol=1e-4)
    by_name = bundle.run({spec.name: array for spec, array in reversed(list(zip(bundle.inputs, arrays)))})
    assert all(np.array_equal(a, b) for a, b in zip(got, by_name))


def test_two_inputs_two_outputs(two_build):
    bundle = load(two_build.bundle.path)
    assert [(s.name, s.shape) for s in bundle.inputs] == [("a", (1, 4)), ("b", (1, 6))]
    assert [s.shape for s in bundle.outputs] == [(1, 3), (1, 6)]
    a, b = np.full((1, 4), 0.5, np.float32), np.linspace(-1, 1, 6, dtype=np.float32)[None]
    first, second = bundle.run([a, b])
    np.testing.assert_allclose(second, 2 * np.tanh(b), atol=1e-6)
    assert first.shape == (1, 3)
    with pytest.raises(BundleError) as info:
        bundle.run([b, a])  # swapped: refused, not silently computed
    assert info.value.problem == "input 'a' dim 1: expected 4, got 6"
    with pytest.raises(BundleError, match=r"missing input\(s\): b"):
        bundle.run({"a": a})
    with pytest.raises(BundleError, match=r"expected 2 input\(s\) \(a, b\), got 1"):
        bundle.run([a])
    assert two_build.bundle.manifest["golden"]["cases"][0] == {
        "inputs": ["golden/0/input_0.npy", "golden/0/input_1.npy"],
        "outputs": ["golden/0/output_0.npy", "golden/0/output_1.npy"],
    }


def test_loaded_bundle_verifies_and_benches(two_build):
    bundle = load(two_build.bundle.path)
    report = bundle.verify()
    assert report["passed"] is True and len(report["cases"]) == 3
    assert report["max_abs_err"] <= 1e-4
    bench = bundle.bench(warmup=1, runs=5)
    assert bench["runs"] == 5 and bench["inputs_from"] == "golden"
    assert 0 < bench["min_ms"] <= bench["median_ms"] <= bench["p99_ms"]


def test_force_replaces_the_bundle_and_a_failed_build_keeps_it(onnx_models, mlp_bundle, copy_bundle, tmp_path):
    """Old bundle: a copy of the session MLP bundle (3 random golden cases), in a fresh out dir."""
    model, out = str(onnx_models["mlp"]), tmp_path / "dist"
    old = copy_bundle(mlp_bundle, out)
    before = snapshot(old)

    with pytest.raises(EdgepackError) as info:
        plan_build(model, "x86_64", out)
    assert info.value.problem == f"'{old}' already exists"

    # A forced build that fails: golden inputs of the wrong shape are refused at the package stage,
    # after preflight and compile ran (plan_build only checks that the file exists).
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 1, 5), np.float32))
    with pytest.raises(BundleError) as info:  # the loader's check_inputs, shared with the build
        run_build(plan_build(model, "x86_64", out, force=True, golden_inputs=bad))
    assert info.value.exit_code == 1
    assert info.value.problem == "input 'x' dim 1: expected 4, got 5"
    assert snapshot(old) == before
    assert sorted(os.listdir(out)) == [old.name]

    # A forced build that succeeds, with two real golden cases and an archive: the old bundle is gone.
    good_cases = np.random.default_rng(5).standard_normal((2, 1, 4)).astype(np.float32)
    np.savez(tmp_path / "good.npz", x=good_cases)
    result = build(model, "x86_64", out, force=True, archive=True, golden_inputs=tmp_path / "good.npz")
    assert result.bundle.path == old
    manifest = read_manifest(old)
    assert manifest["golden"]["origin"] == "user"
    assert len(manifest["golden"]["cases"]) == 2
    np.testing.assert_array_equal(np.load(old / "golden/1/input_0.npy"), good_cases[1])
    assert not (old / "golden" / "2").exists(), "the old bundle's third case must not survive"
    assert set(snapshot(old)) == set(manifest["files"]) | {"manifest.json"}
    assert manifest["verification"]["passed"] is True
    archive = out / f"{old.name}.tar.gz"
    assert sorted(os.listdir(out)) == [old.name, archive.name]  # no staging dir, no backup left
    assert result.stages[-1].report["archive"] == str(archive)

    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        assert set(members) == {f"{old.name}/{rel}" for rel in snapshot(old)}
        packed_manifest = json.load(tar.extractfile(f"{old.name}/manifest.json"))
        assert packed_manifest == manifest
        packed_lib = tar.extractfile(f"{old.name}/model.so").read()
        assert hashlib.sha256(packed_lib).hexdigest() == manifest["files"]["model.so"]["sha256"]
        assert members[f"{old.name}/runtime/edgepack-run"].mode & 0o111


def test_failure_inside_staging_leaves_the_old_bundle(mlp_bundle, copy_bundle, tmp_path):
    """write_bundle with a verify step that fails after every file was staged: nothing changes, nothing is left."""
    from edgepack.artifacts import CompiledModule, OnnxModel
    from edgepack.bundle.golden import GoldenVectors
    from edgepack.bundle.package import PackageConfig, write_bundle

    out = tmp_path / "dist"
    old = copy_bundle(mlp_bundle, out)
    before = snapshot(old)
    manifest = read_manifest(mlp_bundle)
    specs = [[TensorSpec.from_json(e) for e in manifest[kind]] for kind in ("inputs", "outputs")]
    compiled = CompiledModule(mlp_bundle / "model.so", mlp_bundle / "params.bin", tuple(manifest["params"]["names"]),
                              load_target("x86_64"), OnnxModel.at(mlp_bundle / "reference/model.onnx", *specs))
    golden = GoldenVectors(((np.zeros((1, 4), np.float32),),), ((np.zeros((1, 3), np.float32),),), 1e-4, 1e-3, "user")
    staged = []

    def failing_verify(staging: Path, staged_manifest: dict) -> dict:
        staged.append(set(snapshot(staging)))
        raise VerificationError("outputs differ", "loosen --atol")

    with pytest.raises(VerificationError):
        write_bundle(compiled, golden, PackageConfig("mlp", "0.1.0", out, force=True),
                     {"source": {"kind": "onnx"}, "stages": []}, verify=failing_verify)
    assert staged and CORE_FILES | {"manifest.json"} <= staged[0], "the failure came after staging"
    assert snapshot(old) == before
    assert sorted(os.listdir(out)) == [old.name]
