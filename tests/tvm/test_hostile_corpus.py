"""One corpus of hostile manifests, signature envelopes and .npy headers through BOTH real loaders.

Each row mutates a copy of a real bundle, then runs the Python loader's command line (the source every
bundle ships as runtime/edgepack_loader.py) and the bundle's native loader (runtime/edgepack-run) with
`verify`; both must
give the documented exit code (0 accepted, 1 bad input, 3 integrity) with one `error:` line, and
neither may crash (no traceback, no signal). One format, one verdict.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgepack.bundle.signing import generate_keypair, sign_bundle
from edgepack.runtime import loader
from edgepack.runtime.bundle_format import MANIFEST, SIGNATURE

pytestmark = pytest.mark.tvm


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


def write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=1))


def replace_file(bundle: Path, rel: str, data: bytes) -> None:
    """Replace a bundle file and make the (unsigned) manifest match it, as an attacker without a key can."""
    (bundle / rel).write_bytes(data)
    manifest = manifest_of(bundle)
    manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    write_manifest(bundle, manifest)


def first_golden(bundle: Path) -> str:
    return manifest_of(bundle)["golden"]["cases"][0]["inputs"][0]


def npy_bytes(header: str, data: bytes = b"") -> bytes:
    """A version-1 .npy file with exactly this header text."""
    text = header.encode("latin-1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def golden_npy(header: str, data: bytes = b""):
    return lambda b, work: replace_file(b, first_golden(b), npy_bytes(header, data))


def edit(change):
    def apply(bundle: Path, work: Path) -> None:
        manifest = manifest_of(bundle)
        change(manifest, bundle, work)
        write_manifest(bundle, manifest)
    return apply


def raw_manifest(transform):
    def apply(bundle: Path, work: Path) -> None:
        (bundle / MANIFEST).write_bytes(transform((bundle / MANIFEST).read_bytes()))
    return apply


def outside_golden(manifest: dict, bundle: Path, work: Path) -> None:
    np.save(work / "outside.npy", np.zeros((1, 4), np.float32))
    manifest["golden"]["cases"][0]["inputs"][0] = "../outside.npy"


def unlisted_golden(manifest: dict, bundle: Path, work: Path) -> None:
    rel = manifest["golden"]["cases"][0]["inputs"][0]
    del manifest["files"][rel]
    (bundle / rel).unlink()


def nested(depth: int):
    def change(manifest: dict, bundle: Path, work: Path) -> None:
        value: object = 1
        for _ in range(depth - 1):  # the manifest object itself is level 1
            value = [value]
        manifest["provenance_extra"] = value
    return change


def duplicate_key(data: bytes) -> bytes:
    assert b'"name":' in data
    return b'{"name": "evil", ' + data.lstrip()[1:]


def nested_envelope(bundle: Path, work: Path) -> None:
    (bundle / SIGNATURE).write_bytes(b'{"a":' * 50_000 + b"1" + b"}" * 50_000)


def duplicate_payload(bundle: Path, work: Path) -> None:
    envelope = (bundle / SIGNATURE).read_text()
    other = base64.b64encode(b'{"schema_version": 1}').decode()
    (bundle / SIGNATURE).write_text(envelope.replace('"payload":', f'"payload": "{other}", "payload":', 1))


# (name, mutation(bundle, work), exit code, keyring kind: None / "key" / "key+dir")
CORPUS = [
    ("untouched bundle", lambda b, w: None, 0, None),
    ("signed bundle", lambda b, w: None, 0, "key"),
    ("golden input outside the bundle via ..", edit(outside_golden), 3, None),
    ("golden input not listed in files", edit(unlisted_golden), 3, None),
    ("files entry with ..", edit(lambda m, b, w: m["files"].__setitem__("../x", {"sha256": "0" * 64, "size": 1})), 3, None),
    ("files entry names the manifest", edit(lambda m, b, w: m["files"].__setitem__("manifest.json", m["files"][m["library"]])), 3, None),
    ("duplicate key in manifest", raw_manifest(duplicate_key), 3, None),
    ("non-UTF-8 byte in manifest", raw_manifest(lambda d: d.replace(b'"name": "', b'"name": "\xff', 1)), 3, None),
    ("UTF-8 BOM before the manifest", raw_manifest(lambda d: b"\xef\xbb\xbf" + d), 3, None),
    ("encoded surrogate in manifest", raw_manifest(lambda d: d.replace(b'"name": "', b'"name": "\xed\xa0\x80', 1)), 3, None),
    ("NaN tolerance", raw_manifest(lambda d: d.replace(b'"atol": ', b'"atol": NaN, "x": ', 1)), 3, None),
    ("trailing comma", raw_manifest(lambda d: d.rstrip()[:-1] + b",}"), 3, None),
    ("nesting 64 accepted", edit(nested(64)), 0, None),
    ("nesting 65 refused", edit(nested(65)), 3, None),
    ("nesting 200000 refused", raw_manifest(lambda d: d.replace(b'"name": ', b'"deep": ' + b"[" * 200_000 + b"]" * 200_000 + b', "name": ', 1)), 3, None),
    ("name is not a string", edit(lambda m, b, w: m.__setitem__("name", 7)), 3, None),
    ("NUL byte in name", edit(lambda m, b, w: m.__setitem__("name", "mlp\u0000x")), 3, None),
    ("slash in version", edit(lambda m, b, w: m.__setitem__("version", "../../etc")), 3, None),
    ("empty golden cases", edit(lambda m, b, w: m["golden"].__setitem__("cases", [])), 4, None),
    ("unknown tensor dtype", edit(lambda m, b, w: m["inputs"][0].__setitem__("dtype", "complex64")), 3, None),
    ("keyring dir holds a directory x.pub", lambda b, w: None, 1, "key+dir"),
    ("50,000-level nested envelope", nested_envelope, 3, "key"),
    ("duplicate payload in envelope", duplicate_payload, 3, "key"),
    ("npy duplicate descr", golden_npy("{'descr': '<f8', 'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }", bytes(16)), 1, None),
    ("npy unknown header key", golden_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), 'x': 1, }", bytes(16)), 1, None),
    ("npy huge shape", golden_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }"), 1, None),
    ("npy overflowing shape", golden_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (999999999999999999, 999999999999999999, 99), }"), 1, None),
    ("npy negative dim", golden_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 4), }", bytes(16)), 1, None),
    ("npy shape not a tuple", golden_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (16), }", bytes(64)), 1, None),
    ("npy extra data", golden_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }", bytes(20)), 1, None),
    ("npy object dtype", golden_npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", bytes(8)), 1, None),
    ("npy big-endian", golden_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (1, 4), }", bytes(16)), 1, None),
    ("npy 0 bytes", lambda b, w: replace_file(b, first_golden(b), b""), 1, None),
    ("npy header length past the end", lambda b, w: replace_file(b, first_golden(b), b"\x93NUMPY\x02\x00\xff\xff\xff\x7f"), 1, None),
]


@pytest.fixture(scope="module")
def keyring(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus-keys")
    pair = generate_keypair(directory / "signer")
    with_dir = directory / "with-dir"
    with_dir.mkdir()
    (with_dir / "signer.pub").write_bytes(pair.public.read_bytes())
    (with_dir / "x.pub").mkdir()
    return {"private": pair.private, "key": pair.public, "key+dir": with_dir}


def python_loader(bundle: Path, keyring: list[str], capsys) -> subprocess.CompletedProcess:
    """The Python loader's command line, in this process (the same source the bundle ships; no TVM import per row)."""
    capsys.readouterr()
    code = loader.main(["verify", "--bundle", str(bundle), *keyring])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([], code, captured.out, captured.err)


def native_loader(bundle: Path, keyring: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(bundle / "runtime" / "edgepack-run"), "verify", "--bundle", str(bundle), *keyring],
                          capture_output=True, text=True, env={}, timeout=300, check=False)


def verdict(result: subprocess.CompletedProcess, code: int, who: str) -> None:
    assert result.returncode == code, (who, result.returncode, result.stdout[-300:], result.stderr[-1500:])
    assert "Traceback" not in result.stderr, (who, result.stderr)
    if code:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], (who, result.stderr)


@pytest.mark.parametrize("name, mutate, code, keys", CORPUS, ids=[row[0] for row in CORPUS])
def test_both_loaders_give_the_same_verdict(mlp_bundle, copy_bundle, keyring, tmp_path, capsys, monkeypatch, name, mutate, code, keys):
    monkeypatch.delenv("EDGEPACK_KEYRING", raising=False)
    bundle = copy_bundle(mlp_bundle, tmp_path / "device")
    work = tmp_path
    if keys:
        sign_bundle(bundle, keyring["private"])
    mutate(bundle, work)
    args = ["--keyring", str(keyring[keys])] if keys else []
    verdict(native_loader(bundle, args), code, "native loader")
    verdict(python_loader(bundle, args, capsys), code, "Python loader")
