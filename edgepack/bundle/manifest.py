"""The bundle manifest: what it records and how it is written (format: docs/bundle-format.md)."""

from __future__ import annotations

import datetime as dt
import json
from importlib import metadata
from pathlib import Path

from edgepack.runtime.bundle_format import MANIFEST, SCHEMA_VERSION, sha256_file

_TOOLS = {"edgepack": "edgepack", "tvm": "apache-tvm", "tvm_ffi": "apache-tvm-ffi", "onnx": "onnx",
          "onnxruntime": "onnxruntime", "torch": "torch", "numpy": "numpy"}


def tool_versions(used_torch: bool) -> dict:
    """Versions of the tools that made the bundle (torch only when the model came from torch)."""
    versions = {}
    for key, distribution in _TOOLS.items():
        if key == "torch" and not used_torch:
            versions[key] = None
            continue
        try:
            versions[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def file_entries(bundle_dir: Path) -> dict:
    """`{relative path: {sha256, size}}` for every file in the bundle except the manifest."""
    entries = {}
    for path in sorted(bundle_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            rel = path.relative_to(bundle_dir).as_posix()
            entries[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return entries


def new_manifest(**fields) -> dict:
    """A manifest with the schema version and creation time first, then `fields` in order."""
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    return {"schema_version": SCHEMA_VERSION, "created": created, **fields}


def write_manifest(bundle_dir: Path, manifest: dict) -> None:
    """Write manifest.json (sorted keys are not used: the order above is the reading order)."""
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
