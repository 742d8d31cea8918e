"""The bundle format, shared by the host and both Python-side readers of bundles.

Constants, errors and exit codes, the I/O signature, manifest parsing and checks, file digests,
signatures, the compatibility gate and .npy I/O: what a bundle *is* (docs/bundle-format.md), as
opposed to what the loader *does* with one. Like the loader it is an island (standard library and
numpy only) and ships beside it in every bundle as `runtime/edgepack_format.py`; host code imports
the format from here, so a host-side change never edits the loader that runs on devices.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

SCHEMA_VERSION = 1

MANIFEST = "manifest.json"

SIGNATURE = "manifest.sig.json"  # DSSE envelope over the exact bytes of manifest.json (docs/security.md)

PAYLOAD_TYPE = "application/vnd.edgepack.manifest+json"

KEYRING_ENV = "EDGEPACK_KEYRING"

MAX_MANIFEST_BYTES = 16 << 20

EXIT_USER = 1

EXIT_USAGE = 2

EXIT_INTEGRITY = 3

EXIT_VERIFY = 4

EXIT_INTERNAL = 70



class BundleError(Exception):
    """A problem the user can act on; printed as `error: <problem>; <fix>`."""

    exit_code = EXIT_USER

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix



class IntegrityError(BundleError):
    """A bundle's files do not match its manifest, or its schema is unknown."""

    exit_code = EXIT_INTEGRITY



class VerificationError(BundleError):
    """Outputs differ from the reference beyond tolerance."""

    exit_code = EXIT_VERIFY



def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__



@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and shape of one model input or output.

    A dynamic axis has a name in `dims` (None for a fixed axis) and its inclusive size range in
    `bounds`; `shape` then holds its smallest size."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    dims: tuple = ()  # per axis: the dimension's name, or None where the size is fixed; () when all are fixed
    bounds: tuple = ()  # per axis: (smallest, largest) for a named axis, else None

    @classmethod
    def from_json(cls, entry: Mapping, dim_ranges: Mapping | None = None) -> "TensorSpec":
        shape = tuple(int(d) for d in entry["shape"])
        dims = tuple(entry.get("dims") or ())
        ranges = dim_ranges or {}
        bounds = tuple((int(ranges[d][0]), int(ranges[d][1])) if d is not None else None for d in dims)
        return cls(str(entry["name"]), str(entry["dtype"]), shape, dims, bounds)

    def to_json(self) -> dict:
        entry = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.dtype in CARRIED:  # what the model takes and the .npy files hold (informational: the dtype implies it)
            entry["container"] = CARRIED[self.dtype]
        if any(d is not None for d in self.dims):
            entry["dims"] = list(self.dims)
        return entry

    @property
    def dynamic(self) -> bool:
        return any(d is not None for d in self.dims)

    def at(self, sizes: Mapping[str, int]) -> "TensorSpec":
        """This spec with its named axes set to `sizes` (a static spec)."""
        if not self.dynamic:
            return self
        shape = tuple(sizes[d] if d is not None else n for d, n in zip(self.dims, self.shape))
        return TensorSpec(self.name, self.dtype, shape)


def dim_ranges_of(specs: Sequence["TensorSpec"]) -> dict[str, list[int]]:
    """{name: [smallest, largest]} of the named axes of `specs`."""
    return {d: list(b) for spec in specs for d, b in zip(spec.dims, spec.bounds) if d is not None}



def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()



def read_manifest(bundle: Path) -> dict:
    """Parse a bundle's manifest and refuse a schema newer than this loader."""
    path = Path(bundle) / MANIFEST
    if not Path(bundle).is_dir():
        raise BundleError(f"bundle '{bundle}' is not a directory", "pass the bundle directory edgepack build wrote")
    if not path.is_file():
        raise IntegrityError(f"'{bundle}' has no {MANIFEST}", "pass a bundle directory made by edgepack build")
    return parse_manifest(_read_limited(path, MAX_MANIFEST_BYTES), path)



def _unique_keys(pairs: list) -> dict:
    """json object_pairs_hook: refuse duplicate keys (two readers could otherwise see two manifests)."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key '{key}'")
        result[key] = value
    return result



MAX_JSON_DEPTH = 64  # the native loader's limit too (edgepack/native/manifest_json.h)



def _no_constant(name: str):
    """json parse_constant: refuse NaN and Infinity, which JSON does not have (the native loader refuses them)."""
    raise ValueError(f"'{name}' is not JSON")



def _json_depth(value) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (a scalar: 0), without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest



def strict_json(data: bytes):
    """Parse JSON bytes as both loaders do: UTF-8, unique keys, no NaN/Infinity, nesting at most MAX_JSON_DEPTH.

    Raises ValueError (bad text) or RecursionError (too deep)."""
    value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise RecursionError("nests too deeply")
    return value



def _read_limited(path: Path, limit: int) -> bytes:
    """A small file's bytes; refuses one larger than `limit` (a manifest or an envelope)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise IntegrityError(f"cannot read {path} ({exc.strerror})", "check the bundle's permissions") from None
    if len(data) > limit:
        raise IntegrityError(f"{path} is larger than {limit >> 20} MiB", "rebuild the bundle")
    return data



def parse_manifest(data: bytes, path: Path | str = MANIFEST) -> dict:
    """Parse manifest bytes (duplicate keys and runaway nesting refused) and check the fields loaders use."""
    try:
        manifest = strict_json(data)
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise IntegrityError(f"{path} is not valid JSON ({first_line(exc)})", "rebuild the bundle") from None
    except RecursionError:
        raise IntegrityError(f"{path} nests too deeply to be a manifest", "rebuild the bundle") from None
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{path} is not a JSON object", "rebuild the bundle")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise IntegrityError(f"{path} has no integer schema_version", "rebuild the bundle")
    if version > SCHEMA_VERSION:
        raise IntegrityError(
            f"bundle schema_version {version} is newer than this loader's {SCHEMA_VERSION}",
            "update the loader (or edgepack) to one that reads it",
        )
    return manifest



# Element types numpy lacks (ml_dtypes, installed with TVM): .npy files hold their raw bits as the unsigned
# integer of the same width, and the manifest's dtype says how to read them (docs/bundle-format.md).
RAW_BITS = {"bfloat16": "uint16", "float8_e4m3fn": "uint8", "float8_e4m3fnuz": "uint8", "float8_e5m2": "uint8",
            "float8_e5m2fnuz": "uint8", "float4_e2m1fn": "uint8", "float8_e8m0fnu": "uint8"}
# Integers narrower than a byte: .npy files hold their values, one per byte, in this type.
BY_VALUE = {"int4": "int8", "uint4": "uint8", "int2": "int8", "uint2": "uint8"}
# Types the compiled model itself sees as their container (TVM has none of them, or casts them wrongly):
# every RAW_BITS type but bfloat16, which TVM carries, and every BY_VALUE type.
CARRIED = {**{name: bits for name, bits in RAW_BITS.items() if name != "bfloat16"}, **BY_VALUE}

_DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool",
           *RAW_BITS, *BY_VALUE)


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a manifest dtype name (bfloat16, float8, int4...: ml_dtypes')."""
    if name in RAW_BITS or name in BY_VALUE:
        try:
            import ml_dtypes  # a dependency of apache-tvm; TVM's runtime imports it too
        except ImportError:
            raise BundleError(f"{name} tensors need the ml_dtypes package", "pip install ml_dtypes") from None
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def container_dtype(name: str) -> str:
    """The dtype the compiled model takes or returns for a manifest dtype (CARRIED: its container)."""
    return CARRIED.get(name, name)


def from_bits(array: np.ndarray, dtype: str) -> np.ndarray:
    """`array` as the manifest's `dtype` when it holds that type's raw bits (RAW_BITS) or narrow values (BY_VALUE);
    else as is. Values outside a BY_VALUE type's range are refused."""
    if dtype in RAW_BITS and array.dtype == np.dtype(RAW_BITS[dtype]):
        return array.view(np_dtype(dtype))
    if dtype in BY_VALUE and array.dtype == np.dtype(BY_VALUE[dtype]):
        import ml_dtypes

        info = ml_dtypes.iinfo(np_dtype(dtype))
        if array.size and (array.min() < int(info.min) or array.max() > int(info.max)):
            raise BundleError(f"a {dtype} tensor holds values outside {int(info.min)}..{int(info.max)}",
                              f"store {dtype} values one per byte as {BY_VALUE[dtype]}, within that range")
        return array.astype(np_dtype(dtype))
    return array


def to_bits(array: np.ndarray) -> np.ndarray:
    """`array` as .npy files carry it: a RAW_BITS type viewed as its raw bits, a BY_VALUE type as its values; else as is."""
    if (bits := RAW_BITS.get(array.dtype.name)) is not None:
        return array.view(bits)
    if (values := BY_VALUE.get(array.dtype.name)) is not None:
        return array.astype(values)
    return array


def to_container(array: np.ndarray) -> np.ndarray:
    """`array` as the compiled model takes it: a CARRIED type as its container (bits or values); else as is."""
    return to_bits(array) if array.dtype.name in CARRIED else array



def check_manifest_fields(manifest: Mapping, path: Path | str = MANIFEST) -> None:
    """Refuse a manifest whose fields the loaders read have the wrong shape (one line, exit 3).

    Every file the loaders open (library, params, golden vectors) must be listed in `files`, so it
    is digest-checked before use.
    """
    def bad(what: str):
        raise IntegrityError(f"{path}: {what}", "rebuild the bundle with `edgepack build`")

    def is_str_list(value) -> bool:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        bad("'files' lists no files")
    for rel, entry in files.items():
        if (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel or ".." in rel.split("/")
                or rel in (MANIFEST, SIGNATURE)):
            bad(f"file path '{rel}' leaves the bundle or names the manifest")
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64
                or not is_int(entry.get("size")) or entry["size"] < 0):
            bad(f"'files' entry '{rel}' needs a sha256 (64 hex digits) and a size")
    for key in ("name", "version", "library"):
        if not isinstance(manifest.get(key), str):
            bad(f"'{key}' must be a string")
    for key in ("name", "version"):  # they name directories on devices
        if not manifest[key] or manifest[key] in (".", "..") or any(ch == "/" or ord(ch) < 32 or ord(ch) == 127 for ch in manifest[key]):
            bad(f"'{key}' must be a non-empty name without '/', NUL or control characters")
    target = manifest.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("arch"), str):
        bad("'target' must be an object with an 'arch'")
    for key in ("inputs", "outputs"):
        specs = manifest.get(key)
        if not isinstance(specs, list):
            bad(f"'{key}' must be a list")
        for spec in specs:
            if (not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or spec.get("dtype") not in _DTYPES
                    or not isinstance(spec.get("shape"), list) or not all(is_int(d) and d >= 0 for d in spec["shape"])):
                bad(f"an entry of '{key}' needs a name, a dtype ({', '.join(_DTYPES)}) and a shape of ints")
    ranges = manifest.get("dim_ranges", {})
    if not isinstance(ranges, dict) or not all(isinstance(r, list) and len(r) == 2 and all(is_int(n) for n in r)
                                               and 1 <= r[0] <= r[1] for r in ranges.values()):
        bad("'dim_ranges' must map dimension names to [smallest, largest] sizes")
    for key in ("inputs", "outputs"):
        for spec in manifest[key]:
            dims = spec.get("dims")
            if dims is not None and (not isinstance(dims, list) or len(dims) != len(spec["shape"])
                                     or not all(d is None or d in ranges for d in dims)):
                bad(f"'{key}' entry '{spec['name']}': 'dims' needs one name of 'dim_ranges' (or null) per axis")
    params = manifest.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("file"), str) or not is_str_list(params.get("names")):
        bad("'params' must be an object with a 'file' and a list of 'names'")
    golden = manifest.get("golden")
    if (not isinstance(golden, dict) or not isinstance(golden.get("cases"), list)
            or not all(isinstance(golden.get(k), (int, float)) and not isinstance(golden.get(k), bool) for k in ("atol", "rtol"))):
        bad("'golden' must be an object with numeric 'atol', 'rtol' and a list of 'cases'")
    used = [manifest["library"], params["file"]]
    for case in golden["cases"]:
        if not isinstance(case, dict) or not is_str_list(case.get("inputs")) or not is_str_list(case.get("outputs")):
            bad("a golden case needs lists of 'inputs' and 'outputs' paths")
        used += case["inputs"] + case["outputs"]
    requires = manifest.get("requires", {})
    if not isinstance(requires, dict) or not is_str_list(requires.get("cpu_features", [])):
        bad("'requires' must be an object with a list of 'cpu_features'")
    unlisted = sorted({rel for rel in used if rel not in files})
    if unlisted:
        bad(f"'{unlisted[0]}' is used but not listed in 'files'")



def check_files(bundle: Path, manifest: Mapping) -> None:
    """Check every file listed in the manifest: present, same size, same SHA-256."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise IntegrityError("manifest lists no files", "rebuild the bundle")
    root = Path(bundle).resolve()
    check_no_extra_files(root, files)
    for rel, entry in sorted(files.items()):
        path = (root / rel).resolve()
        if root not in path.parents:
            raise IntegrityError(f"manifest names a file outside the bundle: '{rel}'", "rebuild the bundle")
        if not path.is_file():
            raise IntegrityError(f"bundle file '{rel}' is missing", "copy the whole bundle directory again")
        if path.stat().st_size != entry.get("size"):
            raise IntegrityError(
                f"bundle file '{rel}' has {path.stat().st_size} bytes, manifest says {entry.get('size')}",
                "the bundle was modified or truncated; copy it again or rebuild it",
            )
        if sha256_file(path) != entry.get("sha256"):
            raise IntegrityError(
                f"bundle file '{rel}' does not match its SHA-256 in the manifest",
                "the bundle was modified; copy it again or rebuild it",
            )



def check_no_extra_files(root: Path, files: Mapping) -> None:
    """Refuse a bundle holding a file (or link) its manifest does not list: nothing unchecked rides along."""
    for directory, subdirs, names in os.walk(root):
        for name in names + [d for d in subdirs if os.path.islink(os.path.join(directory, d))]:
            rel = Path(directory, name).relative_to(root).as_posix()
            if rel not in files and rel not in (MANIFEST, SIGNATURE):
                raise IntegrityError(f"bundle holds '{rel}', which the manifest does not list",
                                     "remove it, or copy the bundle again from its source")



def _plain_tree(root: Path) -> set[str]:
    """Every regular file under `root` (relative POSIX paths); refuses a link or a special file anywhere."""
    found, pending = set(), [Path(root)]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise IntegrityError(f"cannot list '{directory}' ({exc.strerror})", "check the bundle's permissions") from None
        for entry in entries:
            rel = Path(entry.path).relative_to(root).as_posix()
            if entry.is_symlink():
                raise IntegrityError(f"bundle holds a symbolic link '{rel}'", "bundles hold regular files only; rebuild the bundle")
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                found.add(rel)
            else:
                raise IntegrityError(f"bundle holds '{rel}', which is not a regular file", "rebuild the bundle")
    return found



def check_plain_file(root: Path | str, rel: str, entry: Mapping) -> None:
    """Hash one listed file opened without following a final link; refuse a size or SHA-256 that differs."""
    digest, size = hashlib.sha256(), 0
    try:
        with open(os.open(Path(root) / rel, os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise IntegrityError(f"cannot read bundle file '{rel}' ({exc.strerror})", "copy the whole bundle directory again") from None
    if size != entry.get("size"):
        raise IntegrityError(f"bundle file '{rel}' has {size} bytes, manifest says {entry.get('size')}",
                             "the bundle was modified or truncated; copy it again or rebuild it")
    if digest.hexdigest() != entry.get("sha256"):
        raise IntegrityError(f"bundle file '{rel}' does not match its SHA-256 in the manifest",
                             "the bundle was modified; copy it again or rebuild it")



def check_plain_tree(root: Path | str, keyring: Path | str | Mapping[str, bytes] | None = None) -> dict:
    """Check a bundle the way a loader would, without following any link; returns its manifest.

    No symbolic link or special file anywhere under `root`; the manifest's fields well formed, every
    path relative without `..`; exactly the listed files (plus the manifest and its signature) and
    each one's size and SHA-256; when `keyring` (a path or `{keyid: key}`) is given, a valid
    signature by one of its keys. Nothing is written.
    """
    root = Path(root)
    if root.is_symlink() or not root.is_dir():
        raise BundleError(f"bundle '{root}' is not a directory", "pass the bundle directory edgepack build wrote")
    present = _plain_tree(root)
    if keyring is None or (not isinstance(keyring, Mapping) and str(keyring) == ""):
        manifest = read_manifest(root)
    else:
        manifest = read_signed_manifest(root, keyring if isinstance(keyring, Mapping) else load_keyring(keyring))
    check_manifest_fields(manifest, root / MANIFEST)
    files = manifest["files"]
    extra = sorted(present - set(files) - {MANIFEST, SIGNATURE})
    if extra:
        raise IntegrityError(f"bundle holds '{extra[0]}', which the manifest does not list",
                             "remove it, or copy the bundle again from its source")
    for rel, entry in sorted(files.items()):
        if rel not in present:
            raise IntegrityError(f"bundle file '{rel}' is missing", "copy the whole bundle directory again")
        check_plain_file(root, rel, entry)
    return manifest



def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what the signature covers (type and payload, length-prefixed)."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)



def key_id(raw_public_key: bytes) -> str:
    """A public key's id: the SHA-256 of its 32 raw bytes, in hex."""
    return hashlib.sha256(raw_public_key).hexdigest()



_PEM_BEGIN, _PEM_END = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"

_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")



def parse_public_keys(text: str, where: str) -> dict[str, bytes]:
    """`{keyid: raw 32-byte key}` from PEM `PUBLIC KEY` blocks (ed25519 SubjectPublicKeyInfo) in `text`."""
    keys = {}
    for block in text.split(_PEM_BEGIN)[1:]:
        body, found, _ = block.partition(_PEM_END)
        try:
            der = base64.b64decode("".join(body.split()), validate=True) if found else b""
        except binascii.Error:
            der = b""
        if len(der) != 44 or not der.startswith(_ED25519_SPKI_PREFIX):
            raise BundleError(f"keyring file '{where}' holds a public key that is not ed25519",
                              "put only keys made by `edgepack keygen` (NAME.pub) in the keyring")
        keys[key_id(der[12:])] = der[12:]
    return keys



def load_keyring(path: Path | str) -> dict[str, bytes]:
    """The trusted public keys: a PEM file, or a directory of `*.pub` PEM files. Never from a bundle."""
    path = Path(path)
    if path.is_dir():
        sources = sorted(path.glob("*.pub"))
    elif path.is_file():
        sources = [path]
    else:
        raise BundleError(f"keyring '{path}' does not exist", "pass a .pub file or a directory of .pub files made by `edgepack keygen`")
    keys = {}
    for source in sources:
        try:
            keys.update(parse_public_keys(source.read_text(encoding="utf-8", errors="replace"), str(source)))
        except OSError as exc:
            raise BundleError(f"cannot read keyring file '{source}' ({exc.strerror})", "check its permissions") from None
    if not keys:
        raise BundleError(f"keyring '{path}' holds no ed25519 public keys", "add a .pub file made by `edgepack keygen`")
    return keys



def _ed25519_verify(raw_public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        raise BundleError("a keyring is configured but the Python package 'cryptography' is not installed",
                          "pip install cryptography, or use the native loader runtime/edgepack-run") from None
    try:
        Ed25519PublicKey.from_public_bytes(raw_public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True



def parse_envelope(data: bytes, where: str = SIGNATURE) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The payload and `[(keyid, signature)]` of a DSSE envelope; refuses anything malformed (exit 3)."""
    def bad(what: str):
        raise IntegrityError(f"{where}: {what}", "sign the bundle again with `edgepack sign`")

    try:
        envelope = strict_json(data)
    except (UnicodeDecodeError, ValueError) as exc:
        bad(f"not valid JSON ({first_line(exc)})")
    except RecursionError:
        bad("nests too deeply")
    if not isinstance(envelope, dict) or envelope.get("payloadType") != PAYLOAD_TYPE:
        bad(f"not an envelope with payloadType '{PAYLOAD_TYPE}'")
    signatures = envelope.get("signatures")
    if not isinstance(envelope.get("payload"), str) or not isinstance(signatures, list) or not signatures:
        bad("needs a 'payload' string and a non-empty 'signatures' list")
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        pairs = [(entry["keyid"], base64.b64decode(entry["sig"], validate=True)) for entry in signatures]
    except (binascii.Error, ValueError, TypeError, KeyError):
        bad("payload and signatures must be base64 strings, each signature with a 'keyid'")
    if not all(isinstance(keyid, str) for keyid, _ in pairs):
        bad("every signature's 'keyid' must be a string")
    return payload, pairs



def read_signed_manifest(bundle: Path | str, keys: Mapping[str, bytes]) -> dict:
    """The manifest, parsed only after its envelope's signature checks out against a trusted key.

    The signed payload must be byte-for-byte the bundle's manifest.json.
    """
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle '{bundle}' is not a directory", "pass the bundle directory edgepack build wrote")
    envelope_path = bundle / SIGNATURE
    if not envelope_path.is_file():
        raise IntegrityError(f"bundle '{bundle}' is not signed ({SIGNATURE} is missing) and this device only accepts signed bundles",
                             "sign it with `edgepack sign BUNDLE KEY` using a key in the device's keyring")
    payload, signatures = parse_envelope(_read_limited(envelope_path, MAX_MANIFEST_BYTES), str(envelope_path))
    message = pae(PAYLOAD_TYPE, payload)
    trusted = [(keyid, sig) for keyid, sig in signatures if keyid in keys]
    if not trusted:
        raise IntegrityError(f"bundle '{bundle}' is signed only by keys this device does not trust",
                             "sign it with a key whose .pub is in the device's keyring")
    if not any(_ed25519_verify(keys[keyid], sig, message) for keyid, sig in trusted):
        raise IntegrityError(f"the signature of bundle '{bundle}' does not verify",
                             "the manifest or its signature was modified; copy the bundle again or sign it again")
    manifest_path = bundle / MANIFEST
    if not manifest_path.is_file() or _read_limited(manifest_path, MAX_MANIFEST_BYTES) != payload:
        raise IntegrityError(f"{manifest_path} is not the manifest that was signed",
                             "copy the bundle again, or sign it again with `edgepack sign`")
    return parse_manifest(payload, manifest_path)



def read_trusted_manifest(bundle: Path | str, keyring: Path | str | None) -> dict:
    """`read_signed_manifest` against the keyring when one is configured, else `read_manifest`."""
    if keyring is None or str(keyring) == "":
        return read_manifest(Path(bundle))
    return read_signed_manifest(bundle, load_keyring(keyring))



def private_copy(bundle: Path, rel: str, entry: Mapping, directory: Path | None = None) -> Path:
    """Copy a bundle file into a fresh 0700 directory (or `directory`, one made so) while hashing it;
    refuse if it differs from `entry`.

    The caller loads or runs the copy (so a file swapped after the digest check cannot run) and
    removes its directory. TMPDIR chooses where (it must allow mapping code: not noexec).
    """
    directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="edgepack-load-"))
    copy = directory / Path(rel).name
    digest, size = hashlib.sha256(), 0
    try:
        with open(Path(bundle) / rel, "rb") as source, open(copy, "xb") as target:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
                target.write(chunk)
        if size != entry.get("size") or digest.hexdigest() != entry.get("sha256"):
            raise IntegrityError(f"bundle file '{rel}' changed after it was checked",
                                 "something is modifying the bundle; copy it again")
    except OSError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise BundleError(f"cannot copy '{rel}' to {directory} for loading ({exc.strerror})",
                          "set TMPDIR to a writable directory that allows executables") from None
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return copy



def read_checked(bundle: Path, rel: str, entry: Mapping) -> bytes:
    """A bundle file's bytes, read once and checked against its manifest entry."""
    data = (Path(bundle) / rel).read_bytes()
    if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise IntegrityError(f"bundle file '{rel}' changed after it was checked", "something is modifying the bundle; copy it again")
    return data



SPARSE_PARAMS_ENCODING = "sparse-words-v1"  # params.sparse (docs/bundle-format.md); mirrors edgepack/bundle/sparse_params.py



def decode_params(data: bytes, params: Mapping) -> bytes:
    """The params.bin bytes of a params file: as is, or decoded from params.sparse (SHA-256 checked)."""
    encoding = params.get("encoding")
    if encoding is None:
        return data
    if encoding != SPARSE_PARAMS_ENCODING:
        raise IntegrityError(f"params encoding '{encoding}' is unknown to this loader", "run the bundle with its own runtime/ loaders")
    header = 56  # magic 8, version u32, reserved u32, dense length u64, sha256 32
    if len(data) < header or data[:8] != b"EPSPARSE" or int.from_bytes(data[8:12], "little") != 1:
        raise IntegrityError("params file is not a version-1 sparse params file", "rebuild the bundle")
    dense = int.from_bytes(data[16:24], "little")
    count = (dense + 3) // 4
    bitmap_end = header + (count + 7) // 8
    nonzero = np.unpackbits(np.frombuffer(data[header:bitmap_end], dtype=np.uint8), bitorder="little")[:count].astype(bool)
    values = data[bitmap_end:]
    if len(nonzero) != count or len(values) != 4 * int(nonzero.sum()):
        raise IntegrityError("sparse params file is truncated or inconsistent", "copy the bundle again or rebuild it")
    words = np.zeros(count, dtype="<u4")
    words[nonzero] = np.frombuffer(values, dtype="<u4")
    result = words.tobytes()[:dense]
    if hashlib.sha256(result).digest() != data[24:56]:
        raise IntegrityError("decoded params do not match their SHA-256", "copy the bundle again or rebuild it")
    return result



_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm"}



def elf_arch(path: Path) -> str:
    """The architecture an ELF file was built for, from its header."""
    header = Path(path).read_bytes()[:20]
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise IntegrityError(f"'{Path(path).name}' is not an ELF shared library", "rebuild the bundle")
    machine = int.from_bytes(header[18:20], "little")
    return _ELF_MACHINES.get(machine, f"ELF machine {machine}")



def cpu_features() -> set[str]:
    """This CPU's features as /proc/cpuinfo names them ("flags" on x86, "Features" on Arm)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    features = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            features.update(value.split())
    return features



def missing_cpu_features(required) -> list[str]:
    """The features in `required` this CPU lacks (none when /proc/cpuinfo cannot be read: nothing to go by)."""
    available = cpu_features()
    return [feature for feature in required if available and feature not in available]



def check_compatibility(bundle: Path, manifest: Mapping) -> None:
    """Refuse, before loading, a library for another architecture or a CPU missing a required feature.

    (The glibc floor in `requires` is the native loader's; this loader uses the device's TVM runtime.)
    """
    import platform

    built_for = elf_arch(Path(bundle) / manifest["library"])
    here = platform.machine()
    if built_for != here:
        raise BundleError(f"bundle is built for {built_for}, this machine is {here}",
                          f"run it on {built_for} hardware (or `edgepack verify --emulate`), or build it for a {here} target")
    missing = missing_cpu_features(manifest.get("requires", {}).get("cpu_features", []))
    if missing:
        raise BundleError(f"this CPU lacks {', '.join(missing)}, which the bundle's target requires",
                          "build for a target without those features (see `edgepack targets`)")



_CU_COMPUTE_MAJOR, _CU_COMPUTE_MINOR = 75, 76  # CUdevice_attribute values



def _version_text(driver_version: int) -> str:
    return f"{driver_version // 1000}.{driver_version % 1000 // 10}"



def gpu_runs_arch(arch: str, major: int, minor: int) -> bool:
    """Whether a GPU of compute capability major.minor runs cubins for `arch` (sm_XY: same X, minor >= Y;
    sm_XYa/f: exactly X.Y)."""
    digits = arch.removeprefix("sm_").rstrip("af")
    want_major, want_minor = int(digits[:-1]), int(digits[-1])
    if arch[-1] in "af":
        return (major, minor) == (want_major, want_minor)
    return major == want_major and minor >= want_minor



def cuda_problem(need: Mapping) -> str | None:
    """Why this machine cannot run a CUDA bundle's GPU code (`requires.cuda`), or None when it can.

    Asks the NVIDIA driver (libcuda.so.1) through ctypes: its CUDA version, a device, its compute capability.
    """
    import ctypes

    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no GPU: no CUDA driver (libcuda.so.1) on this machine"
    if not hasattr(driver, "cuInit"):  # edgepack's build-machine stub exports no cuInit
        return "no GPU: no CUDA driver on this machine (only edgepack's build stub of libcuda.so.1)"
    version = ctypes.c_int(0)
    driver.cuDriverGetVersion(ctypes.byref(version))
    wanted = [int(part) for part in str(need.get("driver", "0.0")).split(".")[:2]]
    if [version.value // 1000, version.value % 1000 // 10] < wanted:
        return f"the CUDA driver here supports CUDA {_version_text(version.value)}, the bundle needs CUDA {need.get('driver')} or newer"
    status = driver.cuInit(0)
    count = ctypes.c_int(0)
    if status != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return f"no GPU: the CUDA driver finds no usable device (cuInit error {status})"
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    driver.cuDeviceGetAttribute(ctypes.byref(major), _CU_COMPUTE_MAJOR, 0)
    driver.cuDeviceGetAttribute(ctypes.byref(minor), _CU_COMPUTE_MINOR, 0)
    arch = str(need.get("gpu_arch", ""))
    if arch and not gpu_runs_arch(arch, major.value, minor.value):
        return f"GPU 0 has compute capability {major.value}.{minor.value}, the bundle's GPU code is for {arch}"
    return None



def check_cuda(bundle: Path, manifest: Mapping) -> None:
    """Refuse, before loading, a CUDA bundle this machine's driver or GPU cannot run (no-op for CPU bundles)."""
    need = manifest.get("requires", {}).get("cuda")
    if need is None:
        return
    if not isinstance(need, dict) or not isinstance(need.get("gpu_arch"), str) or not isinstance(need.get("driver"), str):
        raise IntegrityError("manifest 'requires.cuda' needs a 'gpu_arch' and a 'driver'", "rebuild the bundle with `edgepack build`")
    missing = [name for name in need.get("libraries", []) if not (Path(bundle) / "runtime" / name).is_file()]
    if missing:
        raise IntegrityError(f"the bundle lacks runtime/{missing[0]}", "copy the whole bundle directory again")
    problem = cuda_problem(need)
    if problem:
        raise BundleError(problem, f"run it on a machine with an NVIDIA GPU for {need['gpu_arch']} and a CUDA {need['driver']}+ driver "
                                   "(docs/cuda.md), or build for a CPU target")



def check_inputs(specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]) -> None:
    """Refuse inputs whose count, dtype or any dimension differs from the signature (a named axis: outside its range)."""
    bound: dict[str, int] = {}
    if len(arrays) != len(specs):
        names = ", ".join(spec.name for spec in specs)
        raise BundleError(f"expected {len(specs)} input(s) ({names}), got {len(arrays)}", "pass one array per input, in this order")
    for spec, array in zip(specs, arrays):
        if array.dtype != np_dtype(spec.dtype):
            raise BundleError(f"input '{spec.name}' dtype: expected {spec.dtype}, got {array.dtype}", f"convert the array to {spec.dtype}")
        if array.ndim != len(spec.shape):
            raise BundleError(
                f"input '{spec.name}' rank: expected {len(spec.shape)} {list(spec.shape)}, got {array.ndim} {list(array.shape)}",
                "reshape the array to the bundle's input shape",
            )
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
            name = spec.dims[axis] if spec.dims else None
            if name is None and want != got:
                raise BundleError(f"input '{spec.name}' dim {axis}: expected {want}, got {got}", "reshape the array to the bundle's input shape")
            if name is None:
                continue
            low, high = spec.bounds[axis]
            if not low <= got <= high:
                raise BundleError(f"input '{spec.name}' dim {axis} ({name}): {got} is outside the bundle's range {low}..{high}",
                                  f"pass between {low} and {high} along that axis (split larger inputs), or rebuild with --dim {name}={low}..{got}")
            if bound.setdefault(name, got) != got:
                raise BundleError(f"input '{spec.name}' dim {axis} ({name}): {got}, but another input gave {name} = {bound[name]}",
                                  f"give every axis named {name} the same size")



def compare(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> dict:
    """Element-wise `|got-ref| <= atol + rtol*|ref|`; returns passed and the worst errors."""
    if got.shape != ref.shape:
        return {"passed": False, "max_abs_err": float("inf"), "max_rel_err": float("inf"), "reason": f"shape {list(got.shape)} != {list(ref.shape)}"}
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    # NaN and ±inf match only themselves (as in the native loader); finite values use the bound.
    special = ~np.isfinite(got64) | ~np.isfinite(ref64)
    same_special = (got64 == ref64) | (np.isnan(got64) & np.isnan(ref64))
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got64 - ref64)
        bound = atol + rtol * np.abs(ref64)
    err = np.where(same_special, 0.0, np.where(special, np.inf, err))
    max_abs = float(np.max(err)) if err.size else 0.0
    rel = err / np.maximum(np.abs(np.where(special, 1.0, ref64)), 1e-12)
    max_rel = float(np.max(rel)) if rel.size else 0.0
    passed = bool(np.all(np.where(special, same_special, err <= bound)))
    return {"passed": passed, "max_abs_err": max_abs, "max_rel_err": max_rel}



NPY_DESCRS = {"<f4": "float32", "<f8": "float64", "<f2": "float16", "<i8": "int64", "<i4": "int32", "<i2": "int16",
              "|i1": "int8", "<u8": "uint64", "<u4": "uint32", "<u2": "uint16", "|u1": "uint8", "|b1": "bool",
              "<i1": "int8", "<u1": "uint8", "<b1": "bool"}

_NPY_SPACE = " \t\n\r"



def _npy_header(text: str) -> tuple[str, bool, tuple[int, ...]]:
    """(descr, fortran_order, shape) of a .npy header dict, read strictly (the native loader's grammar:
    exactly the keys descr, fortran_order and shape, each once; a quoted descr, True/False, a tuple of ints).

    Raises ValueError naming the problem."""
    at = 0

    def space():
        nonlocal at
        while at < len(text) and text[at] in _NPY_SPACE:
            at += 1

    def eat(char: str) -> bool:
        nonlocal at
        space()
        if text.startswith(char, at):
            at += 1
            return True
        return False

    def quoted() -> str | None:
        nonlocal at
        space()
        close = text.find("'", at + 1) if text.startswith("'", at) else -1
        if close < 0 or "\\" in text[at + 1:close]:
            return None
        value, at = text[at + 1:close], close + 1
        return value

    found: dict = {}
    if not eat("{"):
        raise ValueError("header is not a dict")
    while not eat("}"):
        key = quoted()
        if key is None or not eat(":"):
            raise ValueError("header is not a dict of quoted keys")
        if key not in ("descr", "fortran_order", "shape"):
            raise ValueError(f"header has an unknown key '{key}'")
        if key in found:
            raise ValueError(f"header repeats the key '{key}'")
        space()
        if key == "descr":
            found[key] = quoted()
            if found[key] is None:
                raise ValueError("descr is not a quoted string")
        elif key == "fortran_order":
            word = "True" if text.startswith("True", at) else "False" if text.startswith("False", at) else None
            if word is None:
                raise ValueError("fortran_order is not True or False")
            found[key], at = word == "True", at + len(word)
        else:
            if not eat("("):
                raise ValueError("shape is not a tuple")
            dims, comma = [], False
            while not eat(")"):
                space()
                start = at
                while at < len(text) and text[at] in "0123456789":
                    at += 1
                if at == start or at - start > 18:
                    raise ValueError("shape holds something other than a dimension")
                dims.append(int(text[start:at]))
                comma = eat(",")
                if not comma and not eat(")"):
                    raise ValueError("shape is not a tuple")
                if not comma:
                    break
            if len(dims) == 1 and not comma:
                raise ValueError("shape is not a tuple")
            found[key] = tuple(dims)
        if not eat(","):
            if not eat("}"):
                raise ValueError("header is not a dict")
            break
    space()
    if at != len(text):
        raise ValueError("extra text after the header")
    if len(found) != 3:
        raise ValueError("header lacks descr, fortran_order or shape")
    return found["descr"], found["fortran_order"], found["shape"]



def parse_npy(data: bytes, what: str) -> np.ndarray:
    """An array from .npy bytes (`what` names them in errors), read as strictly as the native loader reads
    them: header grammar, a known little-endian dtype, C order, data exactly as long as the shape says
    (checked before anything is allocated). Raises BundleError (exit 1)."""
    def bad(why: str):
        raise BundleError(f"'{what}' is not a readable .npy file ({why})", "write it with numpy.save")

    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        bad("no .npy magic")
    if data[6] not in (1, 2, 3) or data[7] != 0:
        bad("unknown .npy version")
    prefix = 10 if data[6] == 1 else 12
    if len(data) < prefix:
        bad("truncated header")
    header_len = int.from_bytes(data[8:prefix], "little")
    if header_len > len(data) - prefix:
        bad("truncated header")
    try:
        descr, fortran, shape = _npy_header(data[prefix:prefix + header_len].decode("latin-1"))
    except ValueError as exc:
        bad(str(exc))
    if descr not in NPY_DESCRS:
        raise BundleError(f"'{what}' is not a readable .npy file (unsupported dtype '{descr}')",
                          "save it as little-endian " + ", ".join(dict.fromkeys(NPY_DESCRS.values()))
                          + " (bfloat16: its raw bits, numpy.save(path, a.view(numpy.uint16)); float8: a.view(numpy.uint8); "
                          "int4: a.astype(numpy.int8))")
    if fortran:
        raise BundleError(f"'{what}' is stored in Fortran order",
                          "save a C-ordered array: numpy.save(path, numpy.ascontiguousarray(a))")
    dtype = np.dtype(NPY_DESCRS[descr])
    size = dtype.itemsize
    for dim in shape:
        size *= dim
    shape_text = "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
    if size >= 1 << 64:
        bad(f"shape {shape_text} is too large")
    available = len(data) - prefix - header_len
    if size > available:
        bad(f"truncated data: shape {shape_text} needs {size} bytes")
    if size < available:
        bad("extra bytes after the data")
    return np.frombuffer(data, dtype=dtype, offset=prefix + header_len).reshape(shape).copy()



def load_npy(path: Path) -> np.ndarray:
    """Read one .npy file (no pickles, strict header: parse_npy) with a one-line error when it is not one."""
    path = Path(path)
    try:
        if not path.is_file():
            if not path.exists():
                raise BundleError(f"input file '{path}' does not exist", "check the path")
            raise BundleError(f"'{path}' is not a regular file", "pass a .npy file written with numpy.save")
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read '{path}' ({exc.strerror})", "check the path") from None
    return parse_npy(data, str(path))



def save_npy(path: Path | str, array: np.ndarray) -> Path:
    """Write an .npy atomically (temp file, then rename): a full disk leaves no partial file behind."""
    path = Path(path)
    if path.suffix != ".npy":  # as numpy.save names it
        path = path.with_name(path.name + ".npy")
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(handle, 0o666 & ~mask)
        with os.fdopen(handle, "wb") as out:
            np.save(out, to_bits(np.asarray(array)), allow_pickle=False)
        os.replace(temporary, path)
    except OSError as exc:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise BundleError(f"cannot write '{path}' ({exc.strerror})", "free space on that disk or choose another output path") from None
    return path
