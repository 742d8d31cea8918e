"""The Python loader's checks, without loading code: manifest schema, file digests, inputs, compare."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack.runtime import bundle_format

from edgepack.runtime import loader
from edgepack.runtime.bundle_format import SCHEMA_VERSION, BundleError, IntegrityError, TensorSpec, check_files, check_inputs, compare, elf_arch, load_npy, read_manifest
from edgepack.runtime.loader import timing_summary, write_outputs


def rewrite_manifest(root: Path, **changes) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(changes)
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_lists_every_file_but_itself(bundle):
    manifest = read_manifest(bundle)
    assert manifest["schema_version"] == SCHEMA_VERSION == 1
    assert sorted(manifest["files"]) == ["golden/0/input_0.npy", "model.so", "params.bin"]
    assert manifest["files"]["params.bin"] == {"sha256": bundle_format.sha256_file(bundle / "params.bin"), "size": 70}
    check_files(bundle, manifest)


def test_newer_schema_is_refused_naming_both_versions(bundle):
    rewrite_manifest(bundle, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(IntegrityError) as info:
        read_manifest(bundle)
    assert info.value.problem == f"bundle schema_version {SCHEMA_VERSION + 1} is newer than this loader's {SCHEMA_VERSION}"
    assert info.value.exit_code == 3


def test_older_schema_and_unknown_fields_are_accepted(bundle):
    rewrite_manifest(bundle, schema_version=0, field_from_the_future={"x": 1})
    assert read_manifest(bundle)["field_from_the_future"] == {"x": 1}


@pytest.mark.parametrize("version", ["1", 1.0, True, None])
def test_non_integer_schema_version_is_refused(bundle, version):
    rewrite_manifest(bundle, schema_version=version)
    with pytest.raises(IntegrityError, match="has no integer schema_version"):
        read_manifest(bundle)


@pytest.mark.parametrize("text, message", [("{not json", "is not valid JSON"), ("[1, 2]", "is not a JSON object")])
def test_unreadable_manifest_is_an_integrity_error(bundle, text, message):
    (bundle / "manifest.json").write_text(text)
    with pytest.raises(IntegrityError, match=message):
        read_manifest(bundle)


def test_missing_manifest_and_missing_directory(bundle, tmp_path):
    (bundle / "manifest.json").unlink()
    with pytest.raises(IntegrityError, match="has no manifest.json"):
        read_manifest(bundle)
    with pytest.raises(BundleError) as info:
        read_manifest(tmp_path / "nowhere")
    assert info.value.exit_code == 1
    assert "is not a directory" in info.value.problem


def test_tampered_file_same_size(bundle):
    manifest = read_manifest(bundle)
    data = bytearray((bundle / "params.bin").read_bytes())
    data[3] ^= 0xFF
    (bundle / "params.bin").write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as info:
        check_files(bundle, manifest)
    assert info.value.problem == "bundle file 'params.bin' does not match its SHA-256 in the manifest"


def test_resized_file(bundle):
    manifest = read_manifest(bundle)
    with open(bundle / "model.so", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(IntegrityError) as info:
        check_files(bundle, manifest)
    assert info.value.problem == "bundle file 'model.so' has 257 bytes, manifest says 256"


def test_missing_file(bundle):
    manifest = read_manifest(bundle)
    (bundle / "golden" / "0" / "input_0.npy").unlink()
    with pytest.raises(IntegrityError) as info:
        check_files(bundle, manifest)
    assert info.value.problem == "bundle file 'golden/0/input_0.npy' is missing"
    assert info.value.exit_code == 3


def test_file_outside_the_bundle_is_refused(bundle):
    (bundle.parent / "outside.txt").write_text("x")
    manifest = read_manifest(bundle)
    manifest["files"]["../outside.txt"] = {"sha256": bundle_format.sha256_file(bundle.parent / "outside.txt"), "size": 1}
    with pytest.raises(IntegrityError, match="outside the bundle: '../outside.txt'"):
        check_files(bundle, manifest)


def test_manifest_without_files_is_refused(bundle):
    with pytest.raises(IntegrityError, match="lists no files"):
        check_files(bundle, {"schema_version": 1, "files": {}})


SPECS = [TensorSpec("x", "float32", (1, 3)), TensorSpec("ids", "int64", (2,))]


def test_matching_inputs_pass():
    check_inputs(SPECS, [np.zeros((1, 3), np.float32), np.zeros(2, np.int64)])


@pytest.mark.parametrize("arrays, problem, fix", [
    ([np.zeros((1, 4), np.float32), np.zeros(2, np.int64)],
     "input 'x' dim 1: expected 3, got 4", "reshape the array to the bundle's input shape"),
    ([np.zeros((1, 3), np.float32), np.zeros(3, np.int64)],
     "input 'ids' dim 0: expected 2, got 3", "reshape the array to the bundle's input shape"),
    ([np.zeros((1, 3), np.float64), np.zeros(2, np.int64)],
     "input 'x' dtype: expected float32, got float64", "convert the array to float32"),
    ([np.zeros((3,), np.float32), np.zeros(2, np.int64)],
     "input 'x' rank: expected 2 [1, 3], got 1 [3]", "reshape the array to the bundle's input shape"),
    ([np.zeros((1, 3), np.float32)],
     "expected 2 input(s) (x, ids), got 1", "pass one array per input, in this order"),
])
def test_wrong_inputs_are_refused_with_exact_messages(arrays, problem, fix):
    with pytest.raises(BundleError) as info:
        check_inputs(SPECS, arrays)
    assert (info.value.problem, info.value.fix) == (problem, fix)
    assert str(info.value) == f"{problem}; {fix}"
    assert info.value.exit_code == 1


def test_compare_within_and_beyond_tolerance():
    ref = np.array([1.0, -2.0, 100.0], np.float32)
    same = compare(ref.copy(), ref, 0.0, 0.0)
    assert same == {"passed": True, "max_abs_err": 0.0, "max_rel_err": 0.0}
    near = compare(ref + np.float32(0.05), ref, atol=0.01, rtol=0.001)  # bound at 100 is 0.11, at 1 only 0.011
    assert not near["passed"]
    assert near["max_abs_err"] == pytest.approx(0.05, rel=1e-3)
    assert near["max_rel_err"] == pytest.approx(0.05, rel=1e-3)
    assert compare(ref + np.float32(0.05), ref, atol=0.06, rtol=0.0)["passed"]
    scaled = compare(np.array([100.5], np.float32), np.array([100.0], np.float32), atol=0.0, rtol=0.01)
    assert scaled["passed"] and scaled["max_rel_err"] == pytest.approx(0.005)


def test_compare_nan_and_inf_match_only_themselves():
    """As the native loader does: both NaN, or the same infinity, pass; anything else against them fails."""
    ref = np.array([np.nan, np.inf, -np.inf, 1.0])
    same = compare(ref.copy(), ref, 0.0, 0.0)
    assert same == {"passed": True, "max_abs_err": 0.0, "max_rel_err": 0.0}
    for got in ([0.0, np.inf, -np.inf, 1.0], [np.nan, 1e308, -np.inf, 1.0], [np.nan, -np.inf, -np.inf, 1.0],
                [np.nan, np.inf, -np.inf, np.nan], [np.nan, np.inf, -np.inf, np.inf]):
        result = compare(np.array(got), ref, atol=1.0, rtol=1.0)  # a loose bound that would take inf - 1e308
        assert not result["passed"], got
        assert result["max_abs_err"] == np.inf


def test_compare_shape_mismatch():
    mismatch = compare(np.zeros((1, 3)), np.zeros((3,)), 1.0, 1.0)
    assert not mismatch["passed"]
    assert mismatch["reason"] == "shape [1, 3] != [3]"


def test_compare_integer_outputs():
    assert compare(np.array([2, 4], np.int64), np.array([2, 4], np.int64), 0.0, 0.0)["passed"]
    assert not compare(np.array([2, 5], np.int64), np.array([2, 4], np.int64), 0.0, 0.0)["passed"]


def test_load_npy_errors(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_npy(tmp_path / "missing.npy")
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(BundleError, match="is not a readable .npy file"):
        load_npy(tmp_path / "text.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match="is not a readable .npy file"):
        load_npy(tmp_path / "objects.npy")
    np.save(tmp_path / "ok.npy", np.arange(3))
    assert load_npy(tmp_path / "ok.npy").tolist() == [0, 1, 2]


def test_write_outputs(tmp_path):
    one, two = np.ones(2, np.float32), np.zeros(3, np.int64)
    assert write_outputs([one], tmp_path / "y.npy", None) == [tmp_path / "y.npy"]
    assert np.array_equal(np.load(tmp_path / "y.npy"), one)
    paths = write_outputs([one, two], None, tmp_path / "outs")
    assert paths == [tmp_path / "outs" / "output_0.npy", tmp_path / "outs" / "output_1.npy"]
    assert np.array_equal(np.load(paths[1]), two)
    with pytest.raises(BundleError, match="the model has 2 outputs"):
        write_outputs([one, two], tmp_path / "y.npy", None)
    with pytest.raises(BundleError, match="no output given"):
        write_outputs([one], None, None)


def test_timing_summary():
    summary = timing_summary([4.0, 1.0, 3.0, 2.0, 5.0])
    assert summary == {"runs": 5, "min_ms": 1.0, "median_ms": 3.0, "p90_ms": 5.0, "p99_ms": 5.0, "mean_ms": 3.0,
                       "throughput_per_s": pytest.approx(1000.0 / 3.0)}


def test_elf_arch(tmp_path):
    import platform

    assert elf_arch(Path(sys.executable).resolve()) == platform.machine()
    (tmp_path / "fake.so").write_bytes(b"MZ" + bytes(100))
    with pytest.raises(IntegrityError, match="'fake.so' is not an ELF shared library"):
        elf_arch(tmp_path / "fake.so")


def _imports(path: Path) -> set[str]:
    """Absolute module names a source file imports; its one relative import may only be the format module."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert (node.level, node.module) == (1, "bundle_format"), f"relative import in {path.name}"
            else:
                imported.add(node.module)
    return imported


@pytest.mark.parametrize("module", [loader, bundle_format], ids=["loader", "bundle_format"])
def test_loader_source_imports_only_stdlib_numpy_and_the_tvm_runtime(module):
    """Static half of the island check (tests/tvm/test_island.py runs it where the rest cannot import)."""
    imported = _imports(Path(module.__file__))
    foreign = {name for name in imported
               if name.split(".")[0] not in sys.stdlib_module_names
               and name not in ("numpy", "tvm", "tvm.runtime", "tvm.runtime.vm", "tvm_ffi", "edgepack_format",
                                "ml_dtypes")  # bfloat16 only: apache-tvm requires it and its runtime imports it too
               and name.split(".")[0] != "cryptography"}  # optional: only to check signatures with a keyring
    assert foreign == set()
    if module is loader:
        assert "tvm.runtime.vm" in imported  # the check sees the loader's real imports
