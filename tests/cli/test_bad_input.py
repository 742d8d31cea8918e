"""Every bad input, one line: a table of hostile or broken inputs through the real `edgepack` command.

Each row runs a subprocess and checks exactly one stderr line `error: <problem>; <fix>`, the
documented exit code (1 user error, 3 integrity error), and that the working folder (outputs,
bundles, device stores) is byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.cli


def tiny_onnx(path: Path) -> Path:
    """y = x @ w, built with onnx.helper (no torch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [weight])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def external_outside(work: Path) -> Path:
    """An ONNX file whose external weights claim to live at ../secret.bin."""
    import onnx

    model = onnx.load(tiny_onnx(work / "m" / "plain.onnx"))
    onnx.save_model(model, work / "m" / "model.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    evil = onnx.load(work / "m" / "model.onnx", load_external_data=False)
    for tensor in evil.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save(evil, work / "m" / "evil.onnx")
    shutil.copy(work / "m" / "weights.bin", work / "secret.bin")
    return work / "m" / "evil.onnx"


GOOD_TARGET = (Path(__file__).resolve().parents[2] / "targets" / "x86_64.toml").read_text()

# (name, setup(work) -> argv, exit code, text in the line)
BUILD_ROWS = [
    ("onnx truncated", lambda w: ["build", _write(w / "t.onnx", tiny_onnx(w / "x" / "ok.onnx").read_bytes()[:40]), "-o", "dist"], 1, "not a readable ONNX model"),
    ("onnx garbage", lambda w: ["build", _write(w / "g.onnx", os.urandom(300)), "-o", "dist"], 1, "not a readable ONNX model"),
    ("onnx external data outside", lambda w: ["build", external_outside(w), "-o", "dist"], 1, "points outside"),
    ("target bad toml", lambda w: _build_with_target(w, "name = [unclosed\n"), 1, "is not valid TOML"),
    ("target empty", lambda w: _build_with_target(w, ""), 1, "lacks"),
    ("target unknown key", lambda w: _build_with_target(w, GOOD_TARGET + "\nflavour = 'x'\n"), 1, "unknown key 'flavour'"),
    ("target wrong type", lambda w: _build_with_target(w, GOOD_TARGET.replace('arch = "x86_64"', "arch = 3")), 1, "'arch' must be a string"),
    ("target binary", lambda w: _build_with_target(w, "\x00\x01\x02"), 1, "target file"),
    ("sign key missing", lambda w: ["build", tiny_onnx(w / "x" / "ok.onnx"), "--sign", "none.key", "-o", "dist"], 1, "signing key 'none.key' does not exist"),
    ("golden inputs object array", lambda w: _golden_inputs(w, lambda p: np.savez(p, x=np.array([{"a": 1}], dtype=object))), 1, "cannot read golden inputs"),
    ("golden inputs 0 bytes", lambda w: _golden_inputs(w, lambda p: p.write_bytes(b"")), 1, "cannot read golden inputs"),
    ("golden inputs one array", lambda w: _golden_inputs(w, lambda p: p.write_bytes(_npy_of(np.zeros((1, 1, 4), np.float32)))), 1, "hold one array"),
    ("factory calls sys.exit(0)", lambda w: ["build", f"{_write(w / 'f.py', b'import sys' + bytes([10]) + b'def make():' + bytes([10]) + b'    sys.exit(0)' + bytes([10]))}:make", "-o", "dist"], 1, "make() called sys.exit(0)"),
    ("model file calls sys.exit(0)", lambda w: ["build", f"{_write(w / 'g.py', b'import sys; sys.exit(0)' + bytes([10]))}:make", "-o", "dist"], 1, "called sys.exit(0)"),
    ("1e12 dimension", lambda w: ["build", huge_onnx(w / "huge.onnx"), "-o", "dist"], 1, "GiB per example"),
    ("1e12 dimension in --input", lambda w: ["build", tiny_onnx(w / "x" / "ok.onnx"), "--input", "x:1x1000000000000", "-o", "dist"], 1, "GiB per example"),
]


def _npy_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _golden_inputs(work: Path, write) -> list:
    write(work / "cases.npz")
    return ["build", tiny_onnx(work / "x" / "ok.onnx"), "--golden-inputs", work / "cases.npz", "-o", "dist"]


def huge_onnx(path: Path) -> Path:
    """y = relu(x) with x of shape [1, 10**12]: a dimension no example can be made for."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10**12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10**12])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _build_with_target(work: Path, text: str) -> list:
    (work / "bad.toml").write_text(text)
    return ["build", tiny_onnx(work / "x" / "ok.onnx"), "--target", "bad.toml", "-o", "dist"]


def _fake_bundle(work: Path, manifest: bytes) -> Path:
    bundle = work / "b"
    bundle.mkdir(exist_ok=True)
    (bundle / "model.so").write_bytes(b"\x7fELF" + bytes(60))
    (bundle / "manifest.json").write_bytes(manifest)
    return bundle


VALID = {"schema_version": 1, "name": "b", "version": "1"}
MANIFEST_ROWS = [
    ("manifest bad json", b'{"schema_version": 1,', 3, "is not valid JSON"),
    ("manifest duplicate keys", b'{"schema_version": 1, "files": {}, "files": {"model.so": {}}}', 3, "duplicate key 'files'"),
    ("manifest huge nesting", b"[" * 200_000 + b"]" * 200_000, 3, "nests too deeply"),
    ("manifest not utf-8", b"\xff\xfe{}", 3, "is not valid JSON"),
    ("manifest a list", b"[1, 2]", 3, "is not a JSON object"),
    ("manifest newer schema", json.dumps({**VALID, "schema_version": 99}).encode(), 3, "newer than this loader"),
    ("manifest missing fields", json.dumps(VALID).encode(), 3, "'files' lists no files"),
    ("manifest path escapes", json.dumps({**VALID, "files": {"../x": {"sha256": "0" * 64, "size": 1}}}).encode(), 3, "leaves the bundle"),
]


def error_line(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout[-500:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "; " in lines[0], lines[0]
    return lines[0]


def snapshot(directory: Path) -> dict[str, str]:
    """Every file, link and directory under `directory` with its content digest (or link target)."""
    state = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_symlink():
            state[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[rel] = "dir"
    return state


@pytest.fixture()
def work(tmp_path) -> Path:
    directory = tmp_path / "work"
    (directory / "dist").mkdir(parents=True)
    (directory / "dist" / "keep.txt").write_text("an existing output folder must stay as it is\n")
    return directory


def run_row(edgepack_cli, work: Path, argv: list, code: int, text: str) -> str:
    before = snapshot(work)
    line = error_line(edgepack_cli(*argv, cwd=work), code)
    assert text in line, line
    assert snapshot(work) == before
    return line


@pytest.mark.parametrize("name, setup, code, text", BUILD_ROWS, ids=[row[0] for row in BUILD_ROWS])
def test_bad_build_inputs(edgepack_cli, work, name, setup, code, text):
    run_row(edgepack_cli, work, setup(work), code, text)


@pytest.mark.parametrize("name, manifest, code, text", MANIFEST_ROWS, ids=[row[0] for row in MANIFEST_ROWS])
def test_bad_manifests(edgepack_cli, work, name, manifest, code, text):
    bundle = _fake_bundle(work, manifest)
    run_row(edgepack_cli, work, ["verify", bundle], code, text)
    if name in ("manifest bad json", "manifest huge nesting", "manifest duplicate keys"):
        run_row(edgepack_cli, work, ["inspect", bundle], code, text)
        (work / "store").mkdir(exist_ok=True)
        run_row(edgepack_cli, work, ["deploy", bundle, work / "store"], code, text)


def test_bad_archive_and_envelope(edgepack_cli, work):
    with tarfile.open(work / "evil.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("b/manifest.json")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    run_row(edgepack_cli, work, ["verify", "evil.tar.gz"], 3, "is a symbolic link")
    run_row(edgepack_cli, work, ["verify", "missing.tar.gz"], 3, "does not exist")
    bundle = _fake_bundle(work, json.dumps(VALID).encode())
    (bundle / "manifest.sig.json").write_text('{"payloadType": 1}')
    from edgepack.bundle.signing import generate_keypair

    generate_keypair(work / "k")
    run_row(edgepack_cli, work, ["verify", bundle, "--keyring", "k.pub"], 3, "manifest.sig.json: not an envelope")
    run_row(edgepack_cli, work, ["verify", bundle, "--keyring", "nowhere.pub"], 1, "keyring 'nowhere.pub' does not exist")


ARRAYS = [
    ("wrong shape", lambda p: np.save(p, np.zeros((1, 5), np.float32)), "dim 1: expected 4, got 5"),
    ("wrong dtype", lambda p: np.save(p, np.zeros((1, 4), np.float64)), "dtype: expected float32"),
    ("not npy", lambda p: p.write_bytes(b"hello"), "not a readable .npy"),
    ("pickled", lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), "not a readable .npy"),
    ("truncated npy", lambda p: (np.save(p, np.zeros((1, 4), np.float32)), p.write_bytes(p.read_bytes()[:-8])), "not a readable .npy"),
    ("0-byte npy", lambda p: p.write_bytes(b""), "not a readable .npy"),
    ("huge shape", lambda p: p.write_bytes(_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }")), "not a readable .npy"),
    ("overflowing shape", lambda p: p.write_bytes(_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (999999999999999999, 999999999999999999), }")), "not a readable .npy"),
    ("duplicate descr", lambda p: p.write_bytes(_npy_header("{'descr': '<f8', 'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }") + bytes(16)), "not a readable .npy"),
]


def _npy_header(header: str) -> bytes:
    text = header.encode() + b" " * (63 - (10 + len(header)) % 64) + bytes([10])
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


@pytest.mark.tvm
@pytest.mark.parametrize("name, write, text", ARRAYS, ids=[row[0] for row in ARRAYS])
def test_wrong_input_arrays_in_both_commands(edgepack_cli, mlp_bundle, copy_bundle, work, name, write, text):
    bundle = copy_bundle(mlp_bundle, work / "device")
    write(work / "x.npy")
    run_row(edgepack_cli, work, ["run", bundle, "--input", "x.npy", "-o", "dist/y.npy"], 1, text)
    before = snapshot(work)
    native = subprocess.run([str(bundle / "runtime" / "edgepack-run"), "run", "--input", "x.npy", "-o", "dist/y.npy"],
                            capture_output=True, text=True, cwd=work, env={}, timeout=60, check=False)
    error_line(native, 1)
    assert snapshot(work) == before


@pytest.fixture()
def full_disk(work):
    """A 4 MiB tmpfs under `work`, filled up (needs root; skipped where mounting is not allowed)."""
    mount = work / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _fill(mount: Path) -> None:
    with open(mount / "filler", "wb") as handle:
        try:
            while True:
                handle.write(bytes(1 << 16))
                handle.flush()
        except OSError:
            pass


@pytest.mark.tvm
def test_full_disk_is_one_line_and_leaves_nothing(edgepack_cli, mlp_bundle, work, full_disk):
    np.save(work / "x.npy", np.zeros((1, 4), np.float32))
    shutil.copy(tiny_onnx(work / "x" / "ok.onnx"), work / "ok.onnx")
    _fill(full_disk)
    run_row(edgepack_cli, work, ["run", mlp_bundle, "--input", "x.npy", "-o", "full/y.npy"], 1, "No space left on device")
    run_row(edgepack_cli, work, ["run", mlp_bundle, "--input", "x.npy", "--output-dir", "full/out"], 1, "No space left on device")
    run_row(edgepack_cli, work, ["keygen", "full/k"], 1, "No space left on device")
    line = run_row(edgepack_cli, work, ["build", "ok.onnx", "-o", "full/dist"], 1, "No space left on device")
    assert "writing 'full/dist/" in line and f"(filesystem at {full_disk})" in line, line  # the full disk, not the build's temp dir


@pytest.mark.tvm
def test_native_run_on_a_full_disk_exits_one_line_and_leaves_nothing(mlp_bundle, work, full_disk):
    """edgepack-run writes a temporary file beside the output, checks every write, fsync and close, renames."""
    np.save(work / "x.npy", np.zeros((1, 4), np.float32))
    (full_disk / "out").mkdir()
    _fill(full_disk)
    before = snapshot(work)
    native = [str(mlp_bundle / "runtime" / "edgepack-run"), "run", "--input", "x.npy"]
    for output in (["-o", "full/y.npy"], ["--output-dir", "full/out"], ["--output-dir", "full/new"]):
        result = subprocess.run([*native, *output], capture_output=True, text=True, cwd=work, env={}, timeout=60, check=False)
        line = error_line(result, 1)
        assert "No space left on device" in line and "full/" in line, line
        assert snapshot(work) == before
    (full_disk / "filler").unlink()
    result = subprocess.run([*native, "-o", "full/y.npy"], capture_output=True, text=True, cwd=work, env={}, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert np.load(work / "full" / "y.npy").shape == (1, 3)


def _rewrite(bundle: Path, change) -> Path:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


BUNDLE_ROWS = [
    ("inspect: provenance of the wrong type", ["inspect"], lambda m: m.__setitem__("provenance", 5), 3, "missing or mistyped field"),
    ("inspect: tools of the wrong type", ["inspect"], lambda m: m.__setitem__("tools", [1]), 3, "missing or mistyped field"),
    ("inspect: inputs of the wrong type", ["inspect"], lambda m: m.__setitem__("inputs", "x"), 3, "'inputs'"),
    ("inspect: NUL byte in name", ["inspect"], lambda m: m.__setitem__("name", "a\u0000b"), 3, "'name' must be a non-empty name"),
    ("verify: NUL byte in version", ["verify"], lambda m: m.__setitem__("version", "1\u0000"), 3, "'version' must be a non-empty name"),
    ("verify: empty golden cases", ["verify"], lambda m: m["golden"].__setitem__("cases", []), 4, "no golden cases"),
    ("verify: glibc refusal is a compatibility error", ["verify"], lambda m: m["requires"].__setitem__("glibc", "99.0"), 1, "needs glibc 99.0"),
]


@pytest.mark.tvm
@pytest.mark.parametrize("name, command, change, code, text", BUNDLE_ROWS, ids=[row[0] for row in BUNDLE_ROWS])
def test_bad_bundle_fields_are_one_line(edgepack_cli, mlp_bundle, copy_bundle, work, name, command, change, code, text):
    bundle = _rewrite(copy_bundle(mlp_bundle, work / "device"), change)
    run_row(edgepack_cli, work, [*command, bundle], code, text)
