"""Signed bundles: ed25519 keys, and a DSSE envelope over the exact bytes of manifest.json.

    manifest.sig.json = {"payloadType": "application/vnd.edgepack.manifest+json",
                         "payload": base64(manifest.json bytes),
                         "signatures": [{"keyid": sha256(raw public key) hex, "sig": base64(ed25519 signature)}]}

The signature covers DSSE's pre-authentication encoding of the payload type and payload. Since the
manifest lists every file's size and SHA-256, one signature covers the whole bundle. Verification
lives in the loaders (runtime/loader.py, native/loader.cc), which take the trusted public keys from
the device (a keyring), never from the bundle. Threat model: docs/security.md.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import EdgepackError
from edgepack.runtime.bundle_format import MANIFEST, MAX_MANIFEST_BYTES, PAYLOAD_TYPE, SIGNATURE, IntegrityError, check_files, key_id, pae, parse_envelope, read_manifest

__all__ = ["KeyPair", "generate_keypair", "load_private_key", "sign_bundle", "public_key_pem"]


@dataclass(frozen=True)
class KeyPair:
    """Where `edgepack keygen` wrote a key pair, and the public key's id."""

    private: Path
    public: Path
    keyid: str


def _crypto():
    """The `cryptography` primitives used here (a dependency of edgepack, optional for the loader)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return serialization, Ed25519PrivateKey


def _raw_public(private_key) -> bytes:
    serialization, _ = _crypto()
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_pem(private_key) -> bytes:
    """The SubjectPublicKeyInfo PEM of a private key's public half (what a keyring holds)."""
    serialization, _ = _crypto()
    return private_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_new(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write a file atomically with `mode`; refuse to replace one unless `force`."""
    if path.exists() and not force:
        raise EdgepackError(f"'{path}' already exists", "pass --force to replace it, or choose another name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise EdgepackError(f"cannot write '{path}' ({exc.strerror})", "choose a writable place with free space") from None
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise EdgepackError(f"cannot write '{path}' ({exc.strerror})", "free space on that disk or choose another place") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def generate_keypair(stem: Path | str, force: bool = False) -> KeyPair:
    """Write `<stem>.key` (PKCS#8 PEM, mode 0600, unencrypted: keep it off devices) and `<stem>.pub`."""
    serialization, Ed25519PrivateKey = _crypto()
    stem = Path(stem)
    if stem.suffix in (".key", ".pub"):
        stem = stem.with_suffix("")
    private, public = stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")
    for path in (private, public):
        if path.exists() and not force:
            raise EdgepackError(f"'{path}' already exists", "pass --force to replace the key pair, or choose another name")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_new(private, pem, 0o600, force)
    _write_new(public, public_key_pem(key), 0o644, force)
    return KeyPair(private, public, key_id(_raw_public(key)))


def load_private_key(path: Path | str):
    """An ed25519 private key from a PEM file made by `edgepack keygen` (one-line errors otherwise)."""
    serialization, Ed25519PrivateKey = _crypto()
    path = Path(path)
    fix = "pass the .key file written by `edgepack keygen NAME`"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EdgepackError(f"signing key '{path}' does not exist", fix) from None
    except OSError as exc:
        raise EdgepackError(f"cannot read signing key '{path}' ({exc.strerror})", fix) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise EdgepackError(f"signing key '{path}' is encrypted", "use an unencrypted key made by `edgepack keygen`") from None
    except Exception as exc:  # cryptography reports bad PEM as ValueError or UnsupportedAlgorithm
        raise EdgepackError(f"'{path}' is not a PEM private key ({type(exc).__name__})", fix) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EdgepackError(f"signing key '{path}' is not an ed25519 key", fix)
    return key


def _envelope(payload: bytes, signatures: list[dict]) -> bytes:
    envelope = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode("ascii"), "signatures": signatures}
    return (json.dumps(envelope, indent=2) + "\n").encode("utf-8")


def sign_bundle(bundle: Path | str, key_path: Path | str, check: bool = True) -> str:
    """Sign a bundle's manifest.json with the key at `key_path`; returns the key id.

    With `check`, every file is first checked against the manifest, so a tampered bundle is never
    blessed. An existing envelope over the same manifest keeps its other signatures (co-signing,
    key rotation); one over another manifest is replaced.
    """
    key = load_private_key(key_path)  # first: a bad key is refused before the bundle is read
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if check:
        check_files(bundle, manifest)
    payload = (bundle / MANIFEST).read_bytes()
    keyid = key_id(_raw_public(key))
    signatures = []
    existing = bundle / SIGNATURE
    if existing.is_file() and existing.stat().st_size <= MAX_MANIFEST_BYTES:
        try:
            old_payload, old = parse_envelope(existing.read_bytes(), str(existing))
        except IntegrityError:
            old_payload, old = b"", []
        if old_payload == payload:
            signatures = [{"keyid": kid, "sig": base64.b64encode(sig).decode("ascii")} for kid, sig in old if kid != keyid]
    signatures.append({"keyid": keyid, "sig": base64.b64encode(key.sign(pae(PAYLOAD_TYPE, payload))).decode("ascii")})
    _write_new(existing, _envelope(payload, signatures), 0o644, force=True)
    return keyid
