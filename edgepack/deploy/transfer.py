"""Copy a bundle into a staging directory on the device and check it there, digest by digest."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from edgepack.deploy.layout import ModelStore, unique
from edgepack.runtime.bundle_format import SIGNATURE


def stage_bundle(bundle: Path, manifest: dict, store: ModelStore) -> tuple[PurePosixPath, dict]:
    """Copy the manifest and every file it lists into `<model>/.staging-<random>/`, then check it there.

    Returns the staging directory and the manifest as read on the device. On an error the staging
    directory is removed and the error raised; an interrupted copy is cleaned at the next start.
    """
    staging = unique(store.dir, ".staging-")
    try:
        signature = [SIGNATURE] if (Path(bundle) / SIGNATURE).is_file() else []  # the envelope travels too
        store.fs.upload(Path(bundle), sorted(manifest.get("files") or {}) + signature, staging)
        staged = store.fs.check_bundle(staging)
    except BaseException:
        store.fs.rmtree(staging)
        raise
    return staging, staged
