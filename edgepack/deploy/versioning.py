"""No downgrade: a bundle older than what the device has, or a same-numbered bundle with other files,
is refused unless forced. Versions compare as PEP 440 (packaging.version), else as dotted numbers.
"""

from __future__ import annotations

import json
import re
from typing import Any

from edgepack.deploy.layout import ModelStore
from edgepack.errors import EdgepackError
from edgepack.runtime.bundle_format import MANIFEST

_DOTTED = re.compile(r"v?(\d+(?:\.\d+)*)")


def version_key(text: str) -> Any:
    """A sortable key for a version string, or None when it is neither PEP 440 nor dotted numbers."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # packaging is optional: fall back to dotted numbers
        Version = None
    if Version is not None:
        try:
            return (0, Version(text))
        except InvalidVersion:
            pass
    match = _DOTTED.fullmatch(text.strip())
    if match is None:
        return None
    parts = [int(part) for part in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:  # 1.0 == 1.0.0
        parts.pop()
    return (1, tuple(parts))


def compare_versions(a: str, b: str) -> int | None:
    """-1, 0 or 1 as `a` is older, equal or newer than `b`; None when they cannot be compared."""
    key_a, key_b = version_key(a), version_key(b)
    if key_a is None or key_b is None or key_a[0] != key_b[0]:
        return None
    return (key_a[1] > key_b[1]) - (key_a[1] < key_b[1])


def newest_good(state: dict) -> str | None:
    """The newest installed version that passed its health check (the active one is always among them)."""
    good = [version for version, entry in state["versions"].items() if entry.get("health") == "good"]
    comparable = [version for version in good if version_key(version) is not None]
    newest = None
    for version in comparable:
        if newest is None or (compare_versions(version, newest) or 0) > 0:
            newest = version
    return newest


def same_content(store: ModelStore, version: str, manifest: dict) -> bool:
    """Whether the installed `version` lists exactly the files (digests and sizes) of `manifest`."""
    text = store.fs.read_text(store.version_dir(version) / MANIFEST)
    try:
        installed = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return False
    return isinstance(installed, dict) and installed.get("files") == manifest.get("files")


def check_not_downgrade(store: ModelStore, state: dict, manifest: dict) -> str | None:
    """Refuse a version older than the newest good one on the device; returns that version (None: no check applied).

    Only versions that passed their health check count: a version that never ran as active does
    not block a fix. Call it only without --force.
    """
    version = manifest["version"]
    newest = newest_good(state)
    if newest is None:
        return None
    order = compare_versions(version, newest)
    if order is None:
        raise EdgepackError(f"cannot tell whether {store.model} {version} is older than {newest} on the device "
                            "(not PEP 440 or dotted-number versions)", "pass --force to install it anyway")
    if order < 0:
        raise EdgepackError(f"{store.model} {version} is older than {newest} on the device (a downgrade)",
                            "deploy a newer version, roll back to a retained one with `edgepack rollback DEVICE --to VERSION`, "
                            "or pass --force to install it anyway")
    return newest
