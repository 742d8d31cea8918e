"""The host's check of a bundle before any byte of it goes to a device (docs/security.md).

A deploy, `bench --device` and a fleet deploy copy only a `CheckedBundle`: the bundle was read the
way a loader reads it (no link anywhere, exactly the listed regular files, sizes and SHA-256, and
the signature against the device's keyring when one is given) before the store is even opened, so
a refused bundle leaves the device byte-for-byte unchanged. The device checks its copy again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Mapping

from edgepack.runtime.bundle_format import MANIFEST, SIGNATURE, check_plain_tree


@dataclass(frozen=True)
class CheckedBundle:
    """A bundle that passed `check_plain_tree` on the host: its path, manifest and the files to copy (manifest last)."""

    path: Path
    manifest: dict
    files: tuple[str, ...]

    def entry(self, rel: str) -> Mapping | None:
        """The manifest's size and digest for `rel` (None for the manifest and its signature)."""
        return self.manifest["files"].get(rel)


def check_on_host(bundle: Path, keys: Mapping[str, bytes] | None = None) -> CheckedBundle:
    """Check `bundle` (with `keys`: its signature too) and list what a copy must carry; raises IntegrityError (exit 3)."""
    path = Path(bundle)
    manifest = check_plain_tree(path, keys)
    signature = [SIGNATURE] if (path / SIGNATURE).is_file() else []  # the envelope travels too
    return CheckedBundle(path, manifest, tuple(sorted(manifest["files"])) + tuple(signature) + (MANIFEST,))


def device_keys(fs, keyring: str | None) -> dict[str, bytes] | None:
    """The trusted keys of the device's keyring (a path ON the device), read through its file system; None without one."""
    if not keyring:
        return None
    return fs.read_keyring(PurePosixPath(keyring))
