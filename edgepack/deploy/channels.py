"""Release channels in an OCI registry: which bundle each device of a fleet should run.

A channel (`stable`, `beta`, ...) is a tag in the bundle's repository that names a small record
artifact instead of a bundle. The record says which bundle digest the channel carries and, during a
staged rollout, which devices are admitted to it: the others keep the previous digest. Agents on the
devices read the record; `edgepack fleet rollout` writes it, wave by wave.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from edgepack.deploy.oci import MANIFEST_TYPE, Reference, fetch_blob, fetch_manifest, put_manifest, upload_bytes
from edgepack.errors import EdgepackError, IntegrityError

CHANNEL_TYPE = "application/vnd.edgepack.channel.v1+json"
MAX_RECORD_BYTES = 1 << 20


def device_key(device_id: str) -> str:
    """A device's key in a channel record: the first 16 hex digits of SHA-256 of its id."""
    return hashlib.sha256(device_id.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ChannelRecord:
    """What a channel carries: `bundle` for admitted devices (all when `admitted` is None), `previous` for the rest."""

    bundle: str | None
    previous: str | None = None
    admitted: tuple[str, ...] | None = None
    halted: str | None = None

    def wanted_by(self, device_id: str) -> str | None:
        """The bundle digest this device should run."""
        if self.admitted is None or device_key(device_id) in self.admitted:
            return self.bundle
        return self.previous

    def to_json(self) -> bytes:
        return json.dumps({"schema": 1, "bundle": self.bundle, "previous": self.previous,
                           "admitted": list(self.admitted) if self.admitted is not None else None,
                           "halted": self.halted}, sort_keys=True).encode()


def _parse_record(raw: bytes, where: str) -> ChannelRecord:
    def digest_or_none(value: object) -> str | None:
        if value is None or (isinstance(value, str) and value.startswith("sha256:") and len(value) == 71):
            return value
        raise IntegrityError(f"channel record {where} holds a bad digest {value!r}", "write the channel again with edgepack fleet rollout")

    try:
        data = json.loads(raw)
    except ValueError:
        raise IntegrityError(f"channel record {where} is not JSON", "write the channel again with edgepack fleet rollout") from None
    admitted = data.get("admitted") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("schema") != 1 or not (
            admitted is None or (isinstance(admitted, list) and all(isinstance(key, str) for key in admitted))):
        raise IntegrityError(f"channel record {where} is not a schema-1 record", "update edgepack, or write the channel again")
    return ChannelRecord(digest_or_none(data.get("bundle")), digest_or_none(data.get("previous")),
                         tuple(admitted) if admitted is not None else None, digest_or_none(data.get("halted")))


def read_channel(repo: Reference, channel: str) -> ChannelRecord | None:
    """The record the channel tag names, or None when the repository has no such channel yet."""
    ref = repo.with_tag(channel)
    try:
        manifest, _, _ = fetch_manifest(ref)
    except EdgepackError as exc:
        if "is not in the registry" in exc.problem:
            return None
        raise
    config = manifest.get("config") or {}
    if manifest.get("artifactType") != CHANNEL_TYPE or config.get("mediaType") != CHANNEL_TYPE:
        raise EdgepackError(f"tag '{channel}' of {repo.host}/{repo.repo} names something that is not a channel record",
                            "pick another channel name; channel tags are written by edgepack fleet rollout")
    raw = fetch_blob(ref, config, MAX_RECORD_BYTES)
    return _parse_record(raw, str(ref))


def write_channel(repo: Reference, channel: str, record: ChannelRecord) -> str:
    """Point the channel tag at a new record; returns the record manifest's digest."""
    ref = repo.with_tag(channel)
    descriptor = upload_bytes(ref, record.to_json(), CHANNEL_TYPE)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "artifactType": CHANNEL_TYPE,
                "config": descriptor, "layers": [descriptor]}
    return put_manifest(ref, json.dumps(manifest, sort_keys=True).encode())
