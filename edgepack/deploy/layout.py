"""The on-device layout of one model's store (paths only; the file operations live in fs/ssh).

    <root>/<model>/versions/<version>/   unpacked, digest-checked bundles
    <root>/<model>/current               symlink → versions/<active version> (absent: none active)
    <root>/<model>/state.json            active, previous, trial, per-version health
    <root>/<model>/history.jsonl         one JSON object per event, append-only
    <root>/<model>/.lock                 flock held by the command working on the model
    <root>/<model>/logs/<version>.jsonl  the bundle server's JSON-lines request log (edgepack_serve.py)
    <root>/<model>/logs/serve.json       the running server's address, pid and version
    <root>/<model>/.staging-*, .trash-*, .current-*, .state.json.*   leftovers of an interrupted run
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import PurePosixPath

from edgepack.deploy.fs import DeviceFS
from edgepack.errors import EdgepackError

LEFTOVER_PREFIXES = (".staging-", ".trash-", ".current-", ".state.json.")


def check_name(label: str, value: str) -> str:
    """Refuse a model name or version that cannot be one directory name."""
    if not value or "/" in value or "\\" in value or value.startswith(".") or value != value.strip() or "'" in value:
        raise EdgepackError(f"{label} '{value}' cannot be a directory name on the device", f"rebuild with a plain {label}")
    return value


def unique(directory: PurePosixPath, prefix: str) -> PurePosixPath:
    """A fresh path `<directory>/<prefix><random>`."""
    return directory / f"{prefix}{secrets.token_hex(6)}"


@dataclass(frozen=True)
class ModelStore:
    """One model's store on a device: its paths, and the file system (LocalFS or SshFS) that reaches them."""

    fs: DeviceFS
    root: PurePosixPath
    model: str

    @property
    def where(self) -> str:
        return self.fs.describe(self.root)

    @property
    def dir(self) -> PurePosixPath:
        return self.root / self.model

    @property
    def versions_dir(self) -> PurePosixPath:
        return self.dir / "versions"

    @property
    def current(self) -> PurePosixPath:
        return self.dir / "current"

    @property
    def state_file(self) -> PurePosixPath:
        return self.dir / "state.json"

    @property
    def history_file(self) -> PurePosixPath:
        return self.dir / "history.jsonl"

    @property
    def lock_file(self) -> PurePosixPath:
        return self.dir / ".lock"

    @property
    def logs_dir(self) -> PurePosixPath:
        return self.dir / "logs"

    def serve_log(self, version: str) -> PurePosixPath:
        """JSON-lines log that the bundle's server (runtime/edgepack_serve.py) writes for `version`."""
        return self.logs_dir / f"{version}.jsonl"

    @property
    def serve_status(self) -> PurePosixPath:
        """The running server's address, pid and version, written by it at start, removed at stop."""
        return self.logs_dir / "serve.json"

    def version_dir(self, version: str) -> PurePosixPath:
        return self.versions_dir / version

    def installed(self) -> list[str]:
        """Version directories present under versions/."""
        return [name for name in self.fs.listdir(self.versions_dir) if not name.startswith(".")]

    def linked_version(self) -> str | None:
        """The version `current` points at, or None when there is no link."""
        target = self.fs.readlink(self.current)
        return PurePosixPath(target).name if target else None

    def leftovers(self) -> list[PurePosixPath]:
        """Staging, trash, temporary links and state temp files left by an interrupted run."""
        return [place / name for place in (self.dir, self.versions_dir) for name in self.fs.listdir(place)
                if name.startswith(LEFTOVER_PREFIXES)]
