"""Signing without TVM: keys, the DSSE envelope over manifest.json, keyrings, and what a keyring refuses."""

from __future__ import annotations

import base64
import json
import stat
import sys

import pytest

from edgepack.errors import BundleError, EdgepackError, IntegrityError
from edgepack.runtime import bundle_format
from edgepack.runtime.bundle_format import MANIFEST, PAYLOAD_TYPE, SIGNATURE, check_files, load_keyring, pae, parse_envelope, read_signed_manifest, read_trusted_manifest
from edgepack.bundle.signing import generate_keypair, load_private_key, sign_bundle


@pytest.fixture()
def keys(tmp_path):
    """Two key pairs: `a` (trusted by the keyring) and `b` (not)."""
    return {name: generate_keypair(tmp_path / "keys" / name) for name in ("a", "b")}


def test_keygen_writes_a_private_key_only_its_owner_reads(keys):
    pair = keys["a"]
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert pair.public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert set(load_keyring(pair.public)) == {pair.keyid} and len(pair.keyid) == 64
    with pytest.raises(EdgepackError, match="already exists"):
        generate_keypair(pair.private.with_suffix(""))


def test_signed_bundle_verifies_and_the_payload_is_the_exact_manifest(bundle, keys):
    keyid = sign_bundle(bundle, keys["a"].private)
    envelope = json.loads((bundle / SIGNATURE).read_text())
    assert envelope["payloadType"] == PAYLOAD_TYPE
    assert base64.b64decode(envelope["payload"]) == (bundle / MANIFEST).read_bytes()
    assert [s["keyid"] for s in envelope["signatures"]] == [keyid]
    assert read_signed_manifest(bundle, load_keyring(keys["a"].public))["name"] == "b"
    assert read_trusted_manifest(bundle, keys["a"].public)["name"] == "b"


def test_pae_is_dsse_v1():
    assert pae("t", b"hello") == b"DSSEv1 1 t 5 hello"


def test_unsigned_bundle_is_refused_with_a_keyring(bundle, keys):
    with pytest.raises(IntegrityError, match="is not signed") as info:
        read_trusted_manifest(bundle, keys["a"].public)
    assert info.value.exit_code == 3


def test_untrusted_key_is_refused(bundle, keys):
    sign_bundle(bundle, keys["b"].private)
    with pytest.raises(IntegrityError, match="signed only by keys this device does not trust"):
        read_trusted_manifest(bundle, keys["a"].public)


def test_forged_signature_under_a_trusted_keyid_is_refused(bundle, keys):
    sign_bundle(bundle, keys["b"].private)
    envelope = json.loads((bundle / SIGNATURE).read_text())
    envelope["signatures"][0]["keyid"] = keys["a"].keyid  # claims the trusted key, signed by another
    (bundle / SIGNATURE).write_text(json.dumps(envelope))
    with pytest.raises(IntegrityError, match="does not verify"):
        read_trusted_manifest(bundle, keys["a"].public)


def test_manifest_changed_after_signing_is_refused(bundle, keys):
    sign_bundle(bundle, keys["a"].private)
    text = (bundle / MANIFEST).read_text()
    (bundle / MANIFEST).write_text(text.replace('"version": "1"', '"version": "2"'))
    with pytest.raises(IntegrityError, match="is not the manifest that was signed"):
        read_trusted_manifest(bundle, keys["a"].public)


def test_payload_changed_in_the_envelope_is_refused(bundle, keys):
    sign_bundle(bundle, keys["a"].private)
    envelope = json.loads((bundle / SIGNATURE).read_text())
    forged = (bundle / MANIFEST).read_bytes().replace(b'"version": "1"', b'"version": "2"')
    envelope["payload"] = base64.b64encode(forged).decode()
    (bundle / SIGNATURE).write_text(json.dumps(envelope))
    (bundle / MANIFEST).write_bytes(forged)
    with pytest.raises(IntegrityError, match="does not verify"):
        read_trusted_manifest(bundle, keys["a"].public)


@pytest.mark.parametrize("text, message", [
    ("not json", "not valid JSON"),
    ('{"payloadType": "x", "payload": "", "signatures": []}', "payloadType"),
    (f'{{"payloadType": "{PAYLOAD_TYPE}", "payload": "!!", "signatures": [{{"keyid": "k", "sig": "AA=="}}]}}', "base64"),
    (f'{{"payloadType": "{PAYLOAD_TYPE}", "payload": "", "signatures": []}}', "non-empty 'signatures'"),
    (f'{{"payloadType": "{PAYLOAD_TYPE}", "payloadType": "{PAYLOAD_TYPE}"}}', "duplicate key"),
    ("[" * 100000, "nests too deeply"),
])
def test_malformed_envelopes_are_integrity_errors(text, message):
    with pytest.raises(IntegrityError, match=message):
        parse_envelope(text.encode())


def test_keyring_directory_holds_several_keys_and_refuses_other_key_types(tmp_path, keys, bundle):
    ring = tmp_path / "ring"
    ring.mkdir()
    for pair in keys.values():
        (ring / pair.public.name).write_bytes(pair.public.read_bytes())
    assert set(load_keyring(ring)) == {keys["a"].keyid, keys["b"].keyid}
    sign_bundle(bundle, keys["b"].private)
    assert read_trusted_manifest(bundle, ring)["name"] == "b"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (ring / "ecdsa.pub").write_bytes(pem)
    with pytest.raises(BundleError, match="not ed25519"):
        load_keyring(ring)
    with pytest.raises(BundleError, match="does not exist"):
        load_keyring(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="holds no ed25519 public keys"):
        load_keyring(tmp_path / "empty")


def test_cosigning_keeps_both_signatures_for_key_rotation(bundle, keys):
    sign_bundle(bundle, keys["a"].private)
    sign_bundle(bundle, keys["b"].private)
    envelope = json.loads((bundle / SIGNATURE).read_text())
    assert sorted(s["keyid"] for s in envelope["signatures"]) == sorted([keys["a"].keyid, keys["b"].keyid])
    for pair in keys.values():
        assert read_trusted_manifest(bundle, pair.public)["name"] == "b"


def test_sign_refuses_a_tampered_bundle_and_a_bad_key(bundle, keys, tmp_path):
    (bundle / "params.bin").write_bytes(b"WEIGHTS" * 10)
    with pytest.raises(IntegrityError, match="params.bin"):
        sign_bundle(bundle, keys["a"].private)
    assert not (bundle / SIGNATURE).exists()
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(EdgepackError, match="is not a PEM private key"):
        load_private_key(tmp_path / "bad.key")
    with pytest.raises(EdgepackError, match="does not exist"):
        load_private_key(tmp_path / "missing.key")
    with pytest.raises(EdgepackError, match="is not a PEM private key"):
        load_private_key(keys["a"].public)


def test_keyring_without_cryptography_is_refused_clearly(bundle, keys, monkeypatch):
    sign_bundle(bundle, keys["a"].private)
    ring = load_keyring(keys["a"].public)
    for name in [m for m in sys.modules if m.startswith("cryptography")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)  # import cryptography → ImportError
    with pytest.raises(BundleError, match="'cryptography' is not installed") as info:
        read_signed_manifest(bundle, ring)
    assert "native loader" in info.value.fix


def test_extra_files_and_links_are_refused(bundle):
    manifest = bundle_format.read_manifest(bundle)
    check_files(bundle, manifest)
    (bundle / SIGNATURE).write_text("{}")  # the envelope is the one file besides the manifest allowed
    check_files(bundle, manifest)
    (bundle / "golden" / "planted.so").write_bytes(b"\x7fELF")
    with pytest.raises(IntegrityError, match="'golden/planted.so', which the manifest does not list"):
        check_files(bundle, manifest)
    (bundle / "golden" / "planted.so").unlink()
    (bundle / "runtime").symlink_to("/etc")
    with pytest.raises(IntegrityError, match="'runtime', which the manifest does not list"):
        check_files(bundle, manifest)
