"""Property-based fuzzing of everything that reads untrusted bytes: only edgepack's own errors may escape.

Parsers under test: the manifest parser and field check, the signature envelope, the archive reader,
the target-file parser, and `verify` on a bundle with a mutated manifest. A fixed, small budget runs
in CI (EDGEPACK_FUZZ_EXAMPLES, default 60 per property); `python scripts/fuzz.py` runs long.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepack.bundle.archive import ArchiveError, ArchiveLimits, extract_archive
from edgepack.errors import BundleError
from edgepack.bundle.manifest import file_entries, new_manifest, write_manifest
from edgepack.runtime.bundle_format import MANIFEST, SIGNATURE, check_manifest_fields, load_keyring, parse_envelope, parse_manifest, read_signed_manifest
from edgepack.bundle.signing import generate_keypair, sign_bundle
from edgepack.targets import parse_target

from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "edgepack-hypothesis")  # not .hypothesis/ in the checkout
EXAMPLES = int(os.environ.get("EDGEPACK_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=os.environ.get("EDGEPACK_FUZZ_RANDOM") is None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
ROOT = Path(__file__).resolve().parents[2]


def mutate(value, data):
    """Replace, delete or retype one node of a JSON value, chosen by hypothesis."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        action = data.draw(st.sampled_from(["replace", "delete", "recurse"]))
        if action == "delete":
            del value[key]
        elif action == "replace":
            value[key] = data.draw(JSON)
        else:
            value[key] = mutate(value[key], data)
        return value
    if isinstance(value, list) and value and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(value) - 1))
        value[index] = mutate(value[index], data)
        return value
    return data.draw(JSON)


@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory) -> Path:
    """A bundle-shaped directory (random bytes for the library) with a complete, consistent manifest."""
    root = tmp_path_factory.mktemp("fuzz") / "b"
    (root / "golden" / "0").mkdir(parents=True)
    (root / "model.so").write_bytes(os.urandom(64))
    (root / "params.bin").write_bytes(b"w" * 32)
    np.save(root / "golden" / "0" / "input_0.npy", np.zeros((1, 4), np.float32))
    np.save(root / "golden" / "0" / "output_0.npy", np.zeros((1, 3), np.float32))
    write_manifest(root, new_manifest(
        name="b", version="1", target={"name": "x86_64", "arch": "x86_64", "toolchain": {}},
        requires={"arch": "x86_64", "cpu_features": [], "glibc": "2.34"},
        inputs=[{"name": "x", "dtype": "float32", "shape": [1, 4]}],
        outputs=[{"name": "y", "dtype": "float32", "shape": [1, 3]}],
        library="model.so", params={"file": "params.bin", "names": ["w"]},
        golden={"atol": 1e-4, "rtol": 1e-3, "cases": [{"inputs": ["golden/0/input_0.npy"], "outputs": ["golden/0/output_0.npy"]}]},
        files=file_entries(root)))
    return root


# ---------------------------------------------------------------- manifest


@FUZZ
@given(st.binary(max_size=400))
def test_manifest_parser_on_arbitrary_bytes(data):
    try:
        check_manifest_fields(parse_manifest(data))
    except BundleError:
        pass


@FUZZ
@given(st.data())
def test_manifest_parser_on_mutated_manifests(fake_bundle, data):
    manifest = mutate(json.loads((fake_bundle / MANIFEST).read_text()), data)
    text = json.dumps(manifest)
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(text)))
        text = text[:cut] + data.draw(st.sampled_from(["", "{", "[[[", '"', "\\u", "}}", ',"a":1,"a":2}']))
    try:
        check_manifest_fields(parse_manifest(text.encode()))
    except BundleError:
        pass


@FUZZ
@given(st.integers(1, 200_000))
def test_deep_nesting_is_one_error(depth):
    with pytest.raises(BundleError):
        check_manifest_fields(parse_manifest(b"[" * depth + b"]" * depth))


# ---------------------------------------------------------------- signature envelope


@pytest.fixture(scope="module")
def signing(tmp_path_factory, fake_bundle):
    keys = generate_keypair(tmp_path_factory.mktemp("keys") / "k")
    signed = fake_bundle.parent / "signed"
    shutil.copytree(fake_bundle, signed)
    sign_bundle(signed, keys.private)
    return signed, load_keyring(keys.public)


@FUZZ
@given(st.binary(max_size=300))
def test_envelope_parser_on_arbitrary_bytes(data):
    try:
        parse_envelope(data)
    except BundleError:
        pass


@FUZZ
@given(st.data())
def test_signed_manifest_with_mutated_envelopes(signing, data):
    signed, keys = signing
    envelope = json.loads((signed / SIGNATURE).read_text())
    original = copy.deepcopy(envelope)
    envelope = mutate(envelope, data)
    if data.draw(st.booleans()) and isinstance(envelope, dict) and isinstance(envelope.get("payload"), str):
        raw = bytearray(base64.b64decode(original["payload"]))
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        envelope["payload"] = base64.b64encode(bytes(raw)).decode()
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(scratch) / "b"
        shutil.copytree(signed, bundle)
        (bundle / SIGNATURE).write_text(json.dumps(envelope))
        try:
            manifest = read_signed_manifest(bundle, keys)
        except BundleError:
            return
    assert envelope == original or envelope.get("signatures") == original["signatures"]  # accepted only if still genuine
    assert manifest["name"] == "b"


# ---------------------------------------------------------------- archives

NAMES = st.sampled_from(["b/manifest.json", "b/model.so", "b/runtime/x", "/abs", "../up", "b/../../up", "b/./a", "b//c",
                         "b\\d", "", ".", "b/" + "n" * 300, "b/\x01", "b/a", "b/a/b"])
TYPES = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                         tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"Z"])
MEMBER = st.tuples(NAMES, TYPES, st.sampled_from([0o644, 0o755, 0o4755, 0o2755, 0o1777, 0o7777]),
                   st.binary(max_size=64), st.sampled_from(["", "b/a", "/etc/passwd", "../x"]))


def _archive_bytes(members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode, data, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            if kind in (tarfile.REGTYPE, tarfile.CONTTYPE):
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def _check_archive(payload: bytes, limits: ArchiveLimits = ArchiveLimits()) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        archive, staging = Path(scratch) / "a.tar.gz", Path(scratch) / "staging"
        archive.write_bytes(payload)
        try:
            extract_archive(archive, staging, limits)
        except ArchiveError:
            assert sorted(os.listdir(scratch)) == ["a.tar.gz"]  # nothing left, nothing written beside it
            return
        for path in staging.rglob("*"):
            assert not path.is_symlink() and (path.is_file() or path.is_dir())
            assert path.resolve().is_relative_to(staging.resolve())
            assert not path.stat().st_mode & 0o7000
        assert sorted(os.listdir(scratch)) == ["a.tar.gz", "staging"]


@FUZZ
@given(st.lists(MEMBER, max_size=6))
def test_archive_reader_on_generated_archives(members):
    _check_archive(_archive_bytes(members), ArchiveLimits(max_members=5, max_bytes=1 << 16))


@FUZZ
@given(st.lists(MEMBER, min_size=1, max_size=3), st.data())
def test_archive_reader_on_corrupted_archives(members, data):
    payload = bytearray(_archive_bytes(members))
    for _ in range(data.draw(st.integers(1, 4))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    _check_archive(bytes(payload[:cut] if data.draw(st.booleans()) else payload))


@FUZZ
@given(st.binary(max_size=300))
def test_archive_reader_on_arbitrary_bytes(payload):
    _check_archive(payload)


# ---------------------------------------------------------------- target files


@FUZZ
@given(st.text(max_size=300))
def test_target_parser_on_arbitrary_text(text):
    try:
        parse_target(text, "fuzz.toml")
    except BundleError:
        pass


@FUZZ
@given(st.data())
def test_target_parser_on_mutated_targets(data):
    import tomllib

    shipped = sorted((ROOT / "targets").glob("*.toml"))
    spec = tomllib.loads(data.draw(st.sampled_from(shipped)).read_text())
    spec = mutate(spec, data)
    if not isinstance(spec, dict):
        spec = {"value": spec}

    def toml_value(value) -> str:
        if isinstance(value, dict):
            return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ", ".join(toml_value(v) for v in value) + "]"
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None:
            return '""'
        if isinstance(value, float) and value != value:
            return "nan"
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return json.dumps(value)

    text = "\n".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in spec.items())
    try:
        parse_target(text, "fuzz.toml")
    except BundleError:
        pass


# ---------------------------------------------------------------- verify


@FUZZ
@given(st.data())
def test_verify_on_mutated_bundles(fake_bundle, data):
    from edgepack.bundle.verify import verify_bundle

    manifest = mutate(json.loads((fake_bundle / MANIFEST).read_text()), data)
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(scratch) / "b"
        shutil.copytree(fake_bundle, bundle)
        (bundle / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(BundleError):  # the library is random bytes: every path must end in a refusal
            verify_bundle(bundle, emulate=False)
