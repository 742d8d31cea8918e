"""Bundles as OCI artifacts: push a bundle to a registry, pull one back into a private directory.

One bundle is one OCI image manifest: every bundle file is a layer whose title annotation is its
path inside the bundle, the config blob is the bundle's manifest.json, and the manifest carries
the bundle's name, version, target and manifest digest as annotations. The protocol (auth, blob
uploads) is oras-py's; the layer list and every check on the way back in are ours, because a
registry is not trusted: a pulled layer must name a plain relative path, match its size and
digest, and land in a fresh directory that nothing else can have put a link into.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import oras.provider
import requests

from edgepack.errors import EdgepackError, IntegrityError
from edgepack.runtime.bundle_format import MANIFEST, read_manifest, sha256_file

BUNDLE_CONFIG_TYPE = "application/vnd.edgepack.bundle.v1+json"
FILE_LAYER_TYPE = "application/vnd.edgepack.file.v1"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
TITLE = "org.opencontainers.image.title"
ANNOTATION = "org.edgepack."
EXECUTABLE = ANNOTATION + "executable"
MAX_LAYERS = 10_000
MAX_MANIFEST_BYTES = 4 << 20
_REF = re.compile(r"^oci://(?P<host>[A-Za-z0-9.\-]+(?::\d+)?)/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
                  r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


@dataclass(frozen=True)
class Reference:
    """`oci://HOST[:PORT]/REPO[:TAG][@sha256:DIGEST]`, parsed."""

    host: str
    repo: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What the registry's manifest URL takes: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_tag(self, tag: str) -> "Reference":
        return Reference(self.host, self.repo, tag, None)

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.host, self.repo, self.tag, digest)

    def __str__(self) -> str:
        return f"oci://{self.host}/{self.repo}" + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(text: str, need_tag: bool = False) -> Reference:
    """Parse an `oci://` reference; one line naming the expected form when it does not parse."""
    match = _REF.match(text)
    if match is None:
        raise EdgepackError(f"'{text}' is not an OCI reference", "use oci://HOST[:PORT]/REPO[:TAG][@sha256:DIGEST], e.g. oci://localhost:5000/models/digits:1.0")
    ref = Reference(match["host"], match["repo"], match["tag"], match["digest"])
    if need_tag and not ref.tag:
        raise EdgepackError(f"'{text}' has no tag", "add :TAG to the reference")
    return ref


def is_oci(text: str) -> bool:
    return str(text).startswith("oci://")


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ("localhost", "127.0.0.1", "::1") or name.startswith("127.")


PROBE_TIMEOUT_S = 5
_answered: set[str] = set()


def _client(ref: Reference) -> oras.provider.Registry:
    """An oras registry client: plain HTTP for a loopback registry (as docker does), HTTPS otherwise.

    The registry must answer one probe first: oras retries a refused connection for about two minutes,
    which is right for a registry that went away mid-upload and wrong for a mistyped address."""
    client = oras.provider.Registry(hostname=ref.host, insecure=_loopback(ref.host) or os.environ.get("EDGEPACK_OCI_INSECURE") == "1")
    _probe(client, ref)
    return client


def _probe(client: oras.provider.Registry, ref: Reference) -> None:
    """One request to the registry's API root without retries; any HTTP answer (401 included) counts."""
    root = f"{client.prefix}://{ref.host}/v2/"
    if root in _answered:
        return
    try:
        requests.get(root, timeout=PROBE_TIMEOUT_S, allow_redirects=False).close()
    except (requests.RequestException, OSError) as exc:
        raise _unreachable(ref, exc) from None
    _answered.add(root)


def _container(client: oras.provider.Registry, ref: Reference):
    return client.get_container(f"{ref.host}/{ref.repo}:{ref.tag or 'latest'}" if not ref.digest else f"{ref.host}/{ref.repo}@{ref.digest}")


def _unreachable(ref: Reference, exc: Exception) -> EdgepackError:
    return EdgepackError(f"cannot reach the registry {ref.host} for {ref} ({type(exc).__name__})",
                         "check the address and that the registry is running (docker-registry, Harbor, ...)")


def _request(client: oras.provider.Registry, ref: Reference, url: str, method: str = "GET", **kwargs) -> requests.Response:
    try:
        return client.do_request(url, method, **kwargs)
    except (requests.RequestException, OSError) as exc:
        raise _unreachable(ref, exc) from None


def _manifest_url(client: oras.provider.Registry, ref: Reference, reference: str | None = None) -> str:
    return f"{client.prefix}://{ref.host}/v2/{ref.repo}/manifests/{reference or ref.reference}"


def fetch_manifest(ref: Reference) -> tuple[dict, str, bytes]:
    """The OCI manifest a reference names, its digest and its exact bytes (checked against a pinned digest)."""
    client = _client(ref)
    response = _request(client, ref, _manifest_url(client, ref), headers={"Accept": MANIFEST_TYPE})
    if response.status_code == 404:
        raise EdgepackError(f"{ref} is not in the registry", "push it first (edgepack push BUNDLE REF) or check the tag")
    if response.status_code != 200:
        raise EdgepackError(f"the registry answered {response.status_code} for {ref}", "check the reference and your registry login")
    raw = response.content
    if len(raw) > MAX_MANIFEST_BYTES:
        raise IntegrityError(f"the OCI manifest of {ref} is {len(raw)} bytes", "this is not an edgepack bundle")
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if ref.digest and digest != ref.digest:
        raise IntegrityError(f"the registry returned a manifest with digest {digest} for {ref}", "the registry is not trustworthy; do not deploy from it")
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise IntegrityError(f"the OCI manifest of {ref} is not JSON", "this is not an edgepack bundle") from None
    if not isinstance(manifest, dict):
        raise IntegrityError(f"the OCI manifest of {ref} is not an object", "this is not an edgepack bundle")
    return manifest, digest, raw


def _bundle_files(bundle: Path) -> list[str]:
    """Every file of a checked bundle, relative, in a stable order (manifest.json first)."""
    manifest = read_manifest(bundle)
    names = [MANIFEST] + sorted(manifest["files"])
    if (bundle / "manifest.sig.json").is_file():
        names.append("manifest.sig.json")
    return names


def push(bundle: Path, ref: Reference) -> str:
    """Upload a bundle as one OCI artifact under `ref`'s tag; returns the manifest digest to pin."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    client = _client(ref)
    container = _container(client, ref)
    layers = []
    try:
        for rel in _bundle_files(bundle):
            path = bundle / rel
            layer = {"mediaType": FILE_LAYER_TYPE, "digest": "sha256:" + sha256_file(path), "size": path.stat().st_size,
                     "annotations": {TITLE: rel, **({EXECUTABLE: "true"} if os.access(path, os.X_OK) else {})}}
            client._check_200_response(client.upload_blob(str(path), container, layer))
            layers.append(layer)
        config = {"mediaType": BUNDLE_CONFIG_TYPE, "digest": layers[0]["digest"], "size": layers[0]["size"]}
        oci_manifest = {
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE, "artifactType": BUNDLE_CONFIG_TYPE, "config": config, "layers": layers,
            "annotations": {ANNOTATION + "name": str(manifest["name"]), ANNOTATION + "version": str(manifest["version"]),
                            ANNOTATION + "target": str(manifest.get("target", {}).get("name", "")),
                            ANNOTATION + "manifest.sha256": layers[0]["digest"],
                            ANNOTATION + "signed": "true" if (bundle / "manifest.sig.json").is_file() else "false"},
        }
    except (requests.RequestException, OSError) as exc:
        raise _unreachable(ref, exc) from None
    except ValueError as exc:  # oras raises ValueError for a refused upload
        raise EdgepackError(f"the registry refused an upload to {ref} ({exc})", "check your registry login and permissions") from None
    return put_manifest(ref, json.dumps(oci_manifest, sort_keys=True).encode())


def put_manifest(ref: Reference, raw: bytes) -> str:
    """Store manifest bytes under ref's tag exactly as given (so the digest is kept); returns the digest."""
    client = _client(ref)
    response = _request(client, ref, _manifest_url(client, ref, ref.tag), "PUT", data=raw, headers={"Content-Type": MANIFEST_TYPE})
    if response.status_code not in (200, 201):
        raise EdgepackError(f"the registry refused the manifest for {ref} ({response.status_code}: {response.text[:120]})",
                            "check your registry login and permissions")
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def upload_bytes(ref: Reference, raw: bytes, media_type: str) -> dict:
    """Upload a small blob; returns its descriptor (media type, digest, size)."""
    descriptor = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    client = _client(ref)
    with tempfile.NamedTemporaryFile(prefix="edgepack-blob-") as blob:
        blob.write(raw)
        blob.flush()
        try:
            client._check_200_response(client.upload_blob(blob.name, _container(client, ref), descriptor))
        except (requests.RequestException, OSError) as exc:
            raise _unreachable(ref, exc) from None
        except ValueError as exc:
            raise EdgepackError(f"the registry refused an upload to {ref} ({exc})", "check your registry login and permissions") from None
    return descriptor


def fetch_blob(ref: Reference, descriptor: dict, limit: int) -> bytes:
    """A small blob's bytes, checked against its descriptor's size limit and digest."""
    size, digest = descriptor.get("size"), descriptor.get("digest")
    if not isinstance(size, int) or not 0 <= size <= limit or not isinstance(digest, str):
        raise IntegrityError(f"{ref} names a blob larger than {limit} bytes or without a digest", "write it again with edgepack")
    client = _client(ref)
    try:
        response = client.get_blob(_container(client, ref), digest)
    except (requests.RequestException, OSError) as exc:
        raise _unreachable(ref, exc) from None
    raw = response.content
    if response.status_code != 200 or len(raw) != size or "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
        raise IntegrityError(f"a blob of {ref} does not match its digest or size", "write it again with edgepack")
    return raw


def move_tag(source: Reference, tag: str) -> str:
    """Point `tag` in the same repository at what `source` names; returns the digest it now names."""
    _, digest, raw = fetch_manifest(source)
    put_manifest(source.with_tag(tag), raw)
    return digest


def bundle_annotations(manifest: dict, ref: Reference) -> dict[str, str]:
    """The edgepack annotations of a bundle artifact; refuses an artifact that is not a bundle."""
    if manifest.get("artifactType") != BUNDLE_CONFIG_TYPE and (manifest.get("config") or {}).get("mediaType") != BUNDLE_CONFIG_TYPE:
        raise EdgepackError(f"{ref} is not an edgepack bundle (artifact type {manifest.get('artifactType')!r})",
                            "pass a reference written by edgepack push")
    annotations = manifest.get("annotations") or {}
    return {key[len(ANNOTATION):]: value for key, value in annotations.items() if key.startswith(ANNOTATION) and isinstance(value, str)}


def _layer_path(layer: object, ref: Reference, seen: set[str]) -> tuple[str, str, int, int]:
    """A layer's (relative path, digest, size, file mode), refusing anything that is not a plain new relative path."""
    if not isinstance(layer, dict) or layer.get("mediaType") != FILE_LAYER_TYPE:
        raise IntegrityError(f"{ref} has a layer that is not an edgepack file", "pull only artifacts written by edgepack push")
    rel = (layer.get("annotations") or {}).get(TITLE)
    digest, size = layer.get("digest"), layer.get("size")
    parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
    if (not parts or rel.startswith("/") or "\\" in rel or "\0" in rel or any(part in ("..", ".") for part in parts)
            or str(PurePosixPath(*parts)) != rel or rel in seen):
        raise IntegrityError(f"{ref} names a file {rel!r} that is not a plain relative path inside the bundle",
                             "do not deploy from this registry entry")
    if not (isinstance(digest, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", digest)) or not isinstance(size, int) or size < 0:
        raise IntegrityError(f"{ref} gives file {rel!r} a bad digest or size", "do not deploy from this registry entry")
    seen.add(rel)
    return rel, digest, size, 0o755 if layer["annotations"].get(EXECUTABLE) == "true" else 0o644


def _make_parents(root: Path, rel: str) -> Path:
    """Create the directories of `rel` under a fresh root ourselves (never through an existing link)."""
    current = root
    for part in PurePosixPath(rel).parts[:-1]:
        current = current / part
        if not current.is_dir() or current.is_symlink():
            os.mkdir(current, 0o755)
    return current / PurePosixPath(rel).name


def _download(client, container, ref: Reference, rel: str, digest: str, size: int, mode: int, dest: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    hasher, written = hashlib.sha256(), 0
    try:
        response = client.get_blob(container, digest, stream=True)
    except (requests.RequestException, OSError) as exc:
        raise _unreachable(ref, exc) from None
    with response:
        if response.status_code != 200:
            raise EdgepackError(f"the registry answered {response.status_code} for file {rel!r} of {ref}", "push the bundle again")
        fd = os.open(dest, flags, 0o600)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            for chunk in response.iter_content(chunk_size=1 << 20):
                written += len(chunk)
                if written > size:
                    break
                hasher.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    if written != size or "sha256:" + hasher.hexdigest() != digest:
        raise IntegrityError(f"file {rel!r} of {ref} does not match its digest or size", "the registry copy is damaged; push the bundle again")


def pull(ref: Reference, parent: Path) -> tuple[Path, str]:
    """Download the bundle `ref` names into a fresh private directory under `parent`; returns (bundle dir, digest).

    The caller removes the directory when done; the bundle is then checked as any other bundle is.
    """
    manifest, digest, _ = fetch_manifest(ref)
    bundle_annotations(manifest, ref)
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not 0 < len(layers) <= MAX_LAYERS:
        raise IntegrityError(f"{ref} lists no files or too many", "pull only artifacts written by edgepack push")
    seen: set[str] = set()
    entries = [_layer_path(layer, ref, seen) for layer in layers]
    if MANIFEST not in seen:
        raise IntegrityError(f"{ref} has no {MANIFEST}", "pull only artifacts written by edgepack push")
    root = Path(tempfile.mkdtemp(prefix="edgepack-pull-", dir=parent))
    client = _client(ref)
    container = _container(client, ref)
    for rel, layer_digest, size, mode in entries:
        _download(client, container, ref, rel, layer_digest, size, mode, _make_parents(root, rel))
    return root, digest


@contextlib.contextmanager
def local_bundle(source: str | Path) -> Iterator[Path]:
    """A bundle directory for `source`: the path itself, or an `oci://` reference pulled into a private directory."""
    if not is_oci(str(source)):
        yield Path(source)
        return
    scratch = Path(tempfile.mkdtemp(prefix="edgepack-oci-"))
    try:
        bundle, _ = pull(parse_reference(str(source)), scratch)
        yield bundle
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
