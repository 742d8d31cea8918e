"""Staging writes on a local device store that never follow a link.

The staging directory is made fresh (mkdir fails if anything is there); every directory below it is
created and opened relative to its parent's descriptor with O_NOFOLLOW, and every file is created
with O_CREAT|O_EXCL|O_NOFOLLOW, so no link (planted before or during the copy) can redirect a
write outside the staging directory. The bytes are hashed as they are copied and must match the
host's check.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path, PurePosixPath

from edgepack.deploy.checked import CheckedBundle
from edgepack.deploy.faults import fault_point
from edgepack.errors import EdgepackError
from edgepack.runtime.bundle_format import IntegrityError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _open_parent(top: int, rel: str) -> int:
    """A descriptor of the directory that will hold `rel`, creating the missing ones below `top` (never through a link)."""
    fd = os.dup(top)
    try:
        for part in PurePosixPath(rel).parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _copy_one(checked: CheckedBundle, rel: str, top: int) -> None:
    source = os.open(checked.path / rel, os.O_RDONLY | os.O_NOFOLLOW)
    with open(source, "rb") as reader:
        mode = 0o755 if os.fstat(reader.fileno()).st_mode & stat.S_IXUSR else 0o644
        parent = _open_parent(top, rel)
        try:
            target = os.open(PurePosixPath(rel).name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=parent)
        finally:
            os.close(parent)
        digest, size = hashlib.sha256(), 0
        with open(target, "wb") as writer:
            for chunk in iter(lambda: reader.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
                writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
    entry = checked.entry(rel)
    if entry is not None and (size != entry["size"] or digest.hexdigest() != entry["sha256"]):
        raise IntegrityError(f"bundle file '{rel}' changed after the host checked it", "something is modifying the bundle; deploy it again")


def copy_into_fresh(checked: CheckedBundle, staging: Path) -> None:
    """Create `staging` (it must not exist) and copy the checked bundle's files into it, manifest last, each fsynced."""
    try:
        os.mkdir(staging, 0o755)
        top = os.open(staging, _DIR_FLAGS)
    except OSError as exc:
        raise EdgepackError(f"cannot create the staging directory {staging} ({exc.strerror})",
                            "check the device's disk space and permissions on the store") from None
    try:
        for number, rel in enumerate(checked.files):
            _copy_one(checked, rel, top)
            if number == 0:
                fault_point("copy")
        os.fsync(top)
    except OSError as exc:
        raise EdgepackError(f"cannot copy the bundle into {staging} ({exc.strerror})",
                             "check the device's disk space and that nothing else writes into the store") from None
    finally:
        os.close(top)
