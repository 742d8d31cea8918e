"""Copy a host-checked bundle into a fresh staging directory on the device and check it there again."""

from __future__ import annotations

from pathlib import PurePosixPath

from edgepack.deploy.checked import CheckedBundle
from edgepack.deploy.layout import ModelStore, unique
from edgepack.runtime.bundle_format import IntegrityError


def stage_bundle(checked: CheckedBundle, store: ModelStore) -> tuple[PurePosixPath, dict]:
    """Copy the checked bundle into `<model>/.staging-<random>/` (made fresh), then check it on the device.

    Returns the staging directory and the manifest as read on the device, which must list the files
    the host checked. On an error the staging directory is removed and the error raised; an
    interrupted copy is cleaned at the next start.
    """
    staging = unique(store.dir, ".staging-")
    try:
        store.fs.upload(checked, staging)
        staged = store.fs.check_bundle(staging)
        if staged["files"] != checked.manifest["files"]:
            raise IntegrityError("the manifest on the device differs from the one the host checked",
                                 "something is modifying the bundle; deploy it again")
    except BaseException:
        store.fs.rmtree(staging)
        raise
    return staging, staged
