"""`edgepack` in a real subprocess: every refusal is one `error: <problem>; <fix>` line and a documented exit code.

Exit codes (docs/bundle-format.md): 1 user error, 2 usage error, 3 integrity error.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.cli

TARGETS = ", ".join(sorted(path.stem for path in (Path(__file__).resolve().parents[2] / "targets").glob("*.toml")))
RESHAPE = "reshape the array to the bundle's input shape"
MODIFIED = "the bundle was modified; copy it again or rebuild it"


def error_line(result: subprocess.CompletedProcess, code: int) -> str:
    """The one stderr line of a refusal, after checking its shape and the exit code."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: ") and "; " in line, line
    return line


def snapshot(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- build: bad models and targets


def test_missing_model_file(edgepack_cli, tmp_path):
    result = edgepack_cli("build", "missing.onnx", "-o", "dist", cwd=tmp_path)
    assert error_line(result, 1) == ("error: model file 'missing.onnx' does not exist; "
                                     "pass a .onnx file, a .pt2 torch.export program, or path/to/file.py:factory")
    assert not (tmp_path / "dist").exists()


def test_a_file_that_is_not_onnx(edgepack_cli, tmp_path):
    (tmp_path / "model.onnx").write_text("this is a text file, not an ONNX model\n" * 20)
    result = edgepack_cli("build", "model.onnx", "-o", "dist", cwd=tmp_path)
    line = error_line(result, 1)
    assert line.startswith("error: 'model.onnx' is not a readable ONNX model")
    assert not (tmp_path / "dist").exists()


def test_a_truncated_onnx_file(edgepack_cli, onnx_models, tmp_path):
    data = onnx_models["mlp"].read_bytes()
    (tmp_path / "mlp.onnx").write_bytes(data[: len(data) // 2])
    result = edgepack_cli("build", "mlp.onnx", "-o", "dist", cwd=tmp_path)
    line = error_line(result, 1)
    assert line.startswith("error: 'mlp.onnx' is not a readable ONNX model")
    assert "truncated" in line


def test_an_unsupported_op(edgepack_cli, tmp_path):
    from models import unsupported_op_onnx

    unsupported_op_onnx(tmp_path / "det.onnx")
    result = edgepack_cli("build", "det.onnx", "-o", "dist", cwd=tmp_path)
    assert error_line(result, 1) == ("error: TVM's ONNX frontend does not support these ops: "
                                     "Det (a 5x5 matrix is larger than the 4x4 edgepack expands); "
                                     "replace them in the model (or export with another opset) before building")
    assert not (tmp_path / "dist").exists()


def test_an_op_tvm_fails_to_import_is_named_in_one_line(edgepack_cli, tmp_path):
    """A file shipped with onnx whose SplitToSequence TVM's frontend cannot convert: the frontend's own print of the
    node stays off the terminal, and the one error line names the op."""
    import onnx.backend.test

    model = Path(onnx.backend.test.__file__).parent / "data" / "simple" / "test_sequence_model8" / "model.onnx"
    result = edgepack_cli("build", str(model), "-o", "dist", cwd=tmp_path)
    assert error_line(result, 1).startswith("error: TVM cannot import the model (at its SplitToSequence node): ")
    assert "Error converting operator" not in result.stdout + result.stderr
    assert not (tmp_path / "dist").exists()


def test_an_unknown_target(edgepack_cli, onnx_models, tmp_path):
    result = edgepack_cli("build", onnx_models["mlp"], "--target", "x86-64", "-o", "dist", cwd=tmp_path)
    assert error_line(result, 1) == f"error: unknown target 'x86-64'; did you mean 'x86_64'? valid targets: {TARGETS}"


def test_a_target_file_with_an_unknown_key(edgepack_cli, onnx_models, tmp_path):
    text = (Path(__file__).resolve().parents[2] / "targets" / "x86_64.toml").read_text()
    (tmp_path / "board.toml").write_text(text.replace("[toolchain]\n", "[toolchain]\ncompiler = \"g++\"\n"))
    result = edgepack_cli("build", onnx_models["mlp"], "--target", "board.toml", cwd=tmp_path)
    line = error_line(result, 1)
    assert line.startswith("error: target file board.toml: unknown key 'compiler' in [toolchain]; ")


# ---------------------------------------------------------------- build: an existing destination


@pytest.mark.tvm
def test_existing_bundle_is_not_replaced_without_force(edgepack_cli, onnx_models, mlp_bundle, copy_bundle, tmp_path):
    old = copy_bundle(mlp_bundle, tmp_path / "dist")
    before = snapshot(old)
    result = edgepack_cli("build", onnx_models["mlp"], "-o", "dist", cwd=tmp_path)
    assert error_line(result, 1) == (f"error: 'dist/{old.name}' already exists; "
                                     "pass --force to replace it, or choose another -o/--version")
    assert snapshot(old) == before
    assert [p.name for p in (tmp_path / "dist").iterdir()] == [old.name]


# ---------------------------------------------------------------- run: wrong inputs


@pytest.fixture()
def bundle_copy(mlp_bundle, copy_bundle) -> Path:
    return copy_bundle(mlp_bundle)


@pytest.mark.tvm
@pytest.mark.parametrize("array, message", [
    (np.zeros((1, 5), np.float32), f"input 'x' dim 1: expected 4, got 5; {RESHAPE}"),
    (np.zeros((1, 4), np.float64), "input 'x' dtype: expected float32, got float64; convert the array to float32"),
])
def test_run_with_wrong_inputs(edgepack_cli, mlp_bundle, tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    result = edgepack_cli("run", mlp_bundle, "--input", "x.npy", "-o", "y.npy", cwd=tmp_path)
    assert error_line(result, 1) == f"error: {message}"
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.tvm
def test_run_writes_the_output(edgepack_cli, mlp_bundle, tmp_path):
    """The positive control of the refusals above: the same command with a good input."""
    np.save(tmp_path / "x.npy", np.load(mlp_bundle / "golden/0/input_0.npy"))
    result = edgepack_cli("run", mlp_bundle, "--input", "x.npy", "-o", "y.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.load(mlp_bundle / "golden/0/output_0.npy"), atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------- integrity: modified bundles

EVIL_LIBRARY = r"""
#include <fcntl.h>
#include <unistd.h>
// Runs the moment the library is loaded: leaves a marker and kills the process with exit 99.
__attribute__((constructor)) static void loaded() {
  int fd = open(MARKER, O_CREAT | O_WRONLY, 0644);
  if (fd >= 0) close(fd);
  _exit(99);
}
"""


def plant_evil_library(bundle: Path, marker: Path, workdir: Path) -> None:
    """Replace model.so with a same-size valid ELF library that exits 99 as soon as it is loaded."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    source = workdir / "evil.cc"
    source.write_text(EVIL_LIBRARY)
    library = workdir / "evil.so"
    subprocess.run(["g++", "-shared", "-fPIC", f'-DMARKER="{marker}"', str(source), "-o", str(library)], check=True)
    size = (bundle / "model.so").stat().st_size
    data = library.read_bytes()
    assert len(data) <= size, "the stand-in must fit in the original's size"
    (bundle / "model.so").write_bytes(data + bytes(size - len(data)))  # trailing zeros do not affect loading


def fix_digest(bundle: Path, rel: str) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][rel]["sha256"] = hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.tvm
def test_modified_library_is_refused_before_it_is_loaded(edgepack_cli, bundle_copy, tmp_path):
    marker = tmp_path / "library-was-loaded"
    plant_evil_library(bundle_copy, marker, tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    result = edgepack_cli("run", bundle_copy, "--input", "x.npy", "-o", "y.npy", cwd=tmp_path)
    assert error_line(result, 3) == f"error: bundle file 'model.so' does not match its SHA-256 in the manifest; {MODIFIED}"
    assert not marker.exists()

    # Control: with the manifest made to agree, the same library is loaded (and fires), so the
    # refusal above is what kept it out.
    fix_digest(bundle_copy, "model.so")
    result = edgepack_cli("run", bundle_copy, "--input", "x.npy", "-o", "y.npy", cwd=tmp_path)
    assert result.returncode == 99 and marker.exists()


@pytest.mark.tvm
def test_modified_params_are_refused(edgepack_cli, bundle_copy, tmp_path):
    params = bundle_copy / "params.bin"
    data = bytearray(params.read_bytes())
    data[len(data) // 2] ^= 0x40
    params.write_bytes(bytes(data))
    result = edgepack_cli("verify", bundle_copy, cwd=tmp_path)
    assert error_line(result, 3) == f"error: bundle file 'params.bin' does not match its SHA-256 in the manifest; {MODIFIED}"


@pytest.mark.tvm
def test_truncated_library_is_refused(edgepack_cli, bundle_copy, tmp_path):
    library = bundle_copy / "model.so"
    size = library.stat().st_size
    library.write_bytes(library.read_bytes()[:1000])
    result = edgepack_cli("verify", bundle_copy, cwd=tmp_path)
    assert error_line(result, 3) == (f"error: bundle file 'model.so' has 1000 bytes, manifest says {size}; "
                                     "the bundle was modified or truncated; copy it again or rebuild it")


@pytest.mark.tvm
@pytest.mark.parametrize("command", ["run", "inspect"])
def test_future_schema_version_is_refused(edgepack_cli, bundle_copy, tmp_path, command):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["schema_version"] = 2
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    extra = ["--input", "x.npy", "-o", "y.npy"] if command == "run" else []
    result = edgepack_cli(command, bundle_copy, *extra, cwd=tmp_path)
    assert error_line(result, 3) == ("error: bundle schema_version 2 is newer than this loader's 1; "
                                     "update the loader (or edgepack) to one that reads it")


# ---------------------------------------------------------------- usage errors: one line, typer's code 2


@pytest.mark.parametrize("args", [["build"], ["run", "somewhere", "--no-such-option"], ["frobnicate"], ["inspect"]])
def test_usage_errors_exit_2(edgepack_cli, tmp_path, args):
    result = edgepack_cli(*args, cwd=tmp_path)
    line = error_line(result, 2)
    assert "see `edgepack" in line and "--help`" in line
