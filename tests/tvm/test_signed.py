"""Signed bundles through both real loaders, and the bytes that get loaded.

A "planted" library whose constructor writes a marker file stands in for hostile code: after any
refusal the marker must not exist. The control case shows the planted library does run when a
loader is tricked into loading it (an unsigned bundle whose manifest was rewritten, no keyring).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgepack.runtime import bundle_format

from edgepack.runtime import loader
from edgepack.runtime.bundle_format import MANIFEST, SIGNATURE, IntegrityError
from edgepack.bundle.signing import generate_keypair, sign_bundle

pytestmark = pytest.mark.tvm

PLANTED = """
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
  FILE* marker = fopen("%s", "w");
  if (marker) { fputs("planted code ran\\n", marker); fclose(marker); }
}
"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    return {name: generate_keypair(directory / name) for name in ("trusted", "other")}


@pytest.fixture()
def planted(tmp_path):
    """`planted()` → (library path, marker path): a fresh shared library that writes a marker when loaded."""
    count = iter(range(100))

    def make() -> tuple[Path, Path]:
        number = next(count)
        marker = tmp_path / f"marker-{number}"
        source = tmp_path / f"planted-{number}.c"
        source.write_text(PLANTED % marker)
        library = tmp_path / f"planted-{number}.so"
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
        return library, marker
    return make


@pytest.fixture()
def signed(mlp_bundle, copy_bundle, keys, tmp_path) -> Path:
    bundle = copy_bundle(mlp_bundle, tmp_path / "device")
    sign_bundle(bundle, keys["trusted"].private)
    return bundle


def native(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bundle / "runtime" / "edgepack-run"), "verify", "--bundle", str(bundle), *args],
                          capture_output=True, text=True, env={}, timeout=120, check=False)


def one_error_line(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], result.stderr
    return lines[0]


def rewrite_manifest_for(bundle: Path, rel: str) -> None:
    """What an attacker without the key can do: make manifest.json match a swapped file."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    data = (bundle / rel).read_bytes()
    manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2))


def test_signed_bundle_runs_with_the_keyring_in_both_loaders(signed, keys):
    result = native(signed, "--keyring", str(keys["trusted"].public))
    assert result.returncode == 0, result.stderr
    assert loader.load(signed, keys["trusted"].public).verify()["passed"]


def test_keyring_refuses_unsigned_and_wrongly_signed_bundles(signed, mlp_bundle, copy_bundle, keys, tmp_path):
    unsigned = copy_bundle(mlp_bundle, tmp_path / "unsigned")
    for bundle, key, message in ((unsigned, "trusted", "is not signed"),
                                 (signed, "other", "signed only by keys this device does not trust")):
        ring = str(keys[key].public)
        assert message in one_error_line(native(bundle, "--keyring", ring), 3)
        with pytest.raises(IntegrityError, match=message):
            loader.load(bundle, ring)
    # $EDGEPACK_KEYRING configures the native loader as well
    result = subprocess.run([str(unsigned / "runtime" / "edgepack-run"), "verify"], capture_output=True, text=True,
                            env={"EDGEPACK_KEYRING": str(keys["trusted"].public)}, timeout=120, check=False)
    assert "is not signed" in one_error_line(result, 3)


def test_planted_library_runs_when_an_unsigned_manifest_is_rewritten(mlp_bundle, copy_bundle, planted, tmp_path):
    """Control: without a keyring, rewriting the manifest is enough to run code (what signing is for)."""
    bundle = copy_bundle(mlp_bundle, tmp_path / "device")
    library, marker = planted()
    shutil.copy(library, bundle / "model.so")
    rewrite_manifest_for(bundle, "model.so")
    result = native(bundle)
    assert result.returncode != 0
    assert marker.exists()


def test_no_refusal_runs_planted_code(signed, keys, planted, monkeypatch):
    ring = str(keys["trusted"].public)
    # 1. swapped library, manifest untouched: both loaders refuse on the digest
    library, marker = planted()
    original, original_manifest = (signed / "model.so").read_bytes(), (signed / MANIFEST).read_bytes()
    shutil.copy(library, signed / "model.so")
    assert "bundle file 'model.so' has" in one_error_line(native(signed), 3)  # size first, then SHA-256
    with pytest.raises(IntegrityError, match="bundle file 'model.so' has"):
        loader.load(signed)
    assert not marker.exists()
    # 2. swapped library and a rewritten manifest: the signature no longer covers it
    rewrite_manifest_for(signed, "model.so")
    assert "is not the manifest that was signed" in one_error_line(native(signed, "--keyring", ring), 3)
    with pytest.raises(IntegrityError, match="is not the manifest that was signed"):
        loader.load(signed, ring)
    assert not marker.exists()
    # 3. a library planted beside the listed files (where the loader's rpath or a dlopen could find it)
    (signed / "model.so").write_bytes(original)
    (signed / MANIFEST).write_bytes(original_manifest)
    library, marker = planted()
    shutil.copy(library, signed / "runtime" / "libcrypto.so.3")
    assert "'runtime/libcrypto.so.3', which manifest.json does not list" in one_error_line(native(signed, "--keyring", ring), 3)
    with pytest.raises(IntegrityError, match="does not list"):
        loader.load(signed, ring)
    assert not marker.exists()
    (signed / "runtime" / "libcrypto.so.3").unlink()
    # 4. swapped between the digest check and the load: the loader loads a private copy, hashed while copied
    library, marker = planted()
    checked = bundle_format.check_compatibility

    def swap_after_check(bundle, manifest):
        checked(bundle, manifest)
        shutil.copy(library, Path(bundle) / "model.so")

    monkeypatch.setattr(loader, "check_compatibility", swap_after_check)
    with pytest.raises(IntegrityError, match="'model.so' changed after it was checked"):
        loader.load(signed, ring)
    assert not marker.exists()


def test_verify_never_runs_a_native_loader_swapped_after_the_check(signed, keys, tmp_path, monkeypatch):
    """`edgepack verify --keyring` runs the native loader from a private copy hashed while copied, never in place."""
    from edgepack.bundle import verify as verify_stage

    marker = tmp_path / "marker"
    checked_python = verify_stage.verify_python

    def swap_after_python(bundle, target, keyring=None):
        report = checked_python(bundle, target, keyring)
        swapped = Path(bundle) / "runtime" / "edgepack-run"
        swapped.unlink()
        swapped.write_text(f"#!/bin/sh\necho 'case 0: max_abs_err 0 PASS' > {marker}\nexit 0\n")
        swapped.chmod(0o755)
        return report

    monkeypatch.setattr(verify_stage, "verify_python", swap_after_python)
    with pytest.raises(IntegrityError, match="'runtime/edgepack-run' changed after it was checked"):
        verify_stage.verify_bundle(signed, keyring=keys["trusted"].public)
    assert not marker.exists()


def test_golden_file_swapped_after_the_check_cannot_flip_the_verdict(signed, keys):
    """Golden vectors are read once, digest-checked, and those bytes are compared (no second read)."""
    import numpy as np

    bundle = loader.load(signed, keys["trusted"].public)  # every digest checked here
    rel = bundle.manifest["golden"]["cases"][0]["outputs"][0]
    reference = np.load(signed / rel)
    np.save(signed / rel, reference + 1.0)  # same shape and size, other values
    with pytest.raises(IntegrityError, match=f"'{rel}' changed after it was checked"):
        bundle.verify()


def test_private_copy_is_removed_after_loading(signed, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    loader.load(signed)
    assert list(scratch.iterdir()) == []
    result = subprocess.run([str(signed / "runtime" / "edgepack-run"), "verify"], capture_output=True, text=True,
                            env={"TMPDIR": str(scratch)}, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert list(scratch.iterdir()) == []


def test_cli_sign_then_verify_with_keyring(mlp_bundle, copy_bundle, keys, edgepack_cli, tmp_path):
    bundle = copy_bundle(mlp_bundle, tmp_path / "device")
    refused = edgepack_cli("verify", bundle, "--keyring", keys["trusted"].public)
    assert "is not signed" in one_error_line(refused, 3)
    signed = edgepack_cli("sign", bundle, keys["trusted"].private)
    assert signed.returncode == 0, signed.stderr
    assert keys["trusted"].keyid in signed.stdout
    result = edgepack_cli("verify", bundle, "--keyring", keys["trusted"].public)
    assert result.returncode == 0, result.stderr
    assert "python loader: passed" in result.stdout and "native loader: passed" in result.stdout


def test_build_with_sign_writes_a_verifying_envelope(onnx_models, keys, tmp_path, edgepack_cli):
    result = edgepack_cli("build", onnx_models["mlp"], "--sign", keys["trusted"].private, "--archive", "-o", tmp_path / "dist")
    assert result.returncode == 0, result.stderr
    bundle = next((tmp_path / "dist").glob("mlp-*-x86_64"))
    assert (bundle / SIGNATURE).is_file()
    assert native(bundle, "--keyring", str(keys["trusted"].public)).returncode == 0
    assert bundle_format.read_trusted_manifest(bundle, keys["trusted"].public)["name"] == "mlp"
    missing = edgepack_cli("build", onnx_models["mlp"], "--sign", tmp_path / "none.key", "-o", tmp_path / "dist2")
    assert "signing key" in one_error_line(missing, 1)
    assert not (tmp_path / "dist2").exists()


def test_deploy_with_a_device_keyring(mlp_bundle, copy_bundle, keys, tmp_path):
    from edgepack.deploy import HealthConfig, deploy

    store, ring = tmp_path / "store", str(keys["trusted"].public)
    signed = copy_bundle(mlp_bundle, tmp_path / "signed")
    sign_bundle(signed, keys["trusted"].private)
    result = deploy(signed, str(store), health=HealthConfig(keyring=ring))
    assert result.health.passed
    assert (store / "mlp" / "current" / SIGNATURE).is_file()  # the envelope travelled with the bundle
    unsigned = copy_bundle(mlp_bundle, tmp_path / "unsigned")
    manifest = json.loads((unsigned / MANIFEST).read_text())
    manifest["version"] = "9.0.0"
    (unsigned / MANIFEST).write_text(json.dumps(manifest, indent=2))
    before = sorted((p.relative_to(store), p.is_symlink() and os.readlink(p)) for p in store.rglob("*"))
    with pytest.raises(IntegrityError, match="is not signed") as info:  # refused on the host, before any write
        deploy(unsigned, str(store), health=HealthConfig(keyring=ring))
    assert info.value.exit_code == 3
    assert sorted((p.relative_to(store), p.is_symlink() and os.readlink(p)) for p in store.rglob("*")) == before
    assert os.readlink(store / "mlp" / "current").endswith(result.version)
