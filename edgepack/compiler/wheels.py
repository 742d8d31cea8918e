"""Files the compiler keeps between runs: the cache directory, and library files from another arch's pip wheels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgepack.errors import EdgepackError


def cache_dir() -> Path:
    """Where edgepack caches built loaders and downloaded runtimes (EDGEPACK_CACHE overrides)."""
    override = os.environ.get("EDGEPACK_CACHE")
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgepack"


def fetch_wheel_files(
    arch: str,
    destination: Path,
    requirements: list[str],
    members: dict[str, str],
    platforms: tuple[str, ...],
    what: str,
    docs: str,
) -> None:
    """pip-download `requirements` built for `arch` and keep only `members` in `destination`.

    `members` maps a wheel's file-name prefix (e.g. `apache_tvm`) to the path suffix of the file to
    keep from it; the files land under their own names, and the folder is moved into place whole."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".fetch-") as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            *(f"--platform={tag}" for tag in platforms),
            "--python-version",
            f"{sys.version_info.major}.{sys.version_info.minor}",
            "--dest",
            scratch,
            *requirements,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgepackError(
                f"cannot download the {arch} {what} wheels ({last})",
                f"connect to the package index once, or fill {destination} by hand ({docs})",
            )
        staged = Path(scratch) / "libs"
        staged.mkdir()
        for prefix, suffix in members.items():
            _wheel_member(next(Path(scratch).glob(f"{prefix}-*.whl")), suffix, staged / Path(suffix).name)
        try:
            os.replace(staged, destination)
        except OSError:
            if not destination.is_dir():  # another build filled it meanwhile: fine
                raise


def _wheel_member(wheel: Path, suffix: str, destination: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        member = next((name for name in archive.namelist() if name.endswith(suffix)), None)
        if member is None:
            raise EdgepackError(f"{wheel.name} has no {suffix}", "report it; the wheel layout changed")
        with archive.open(member) as source, open(destination, "wb") as target:
            shutil.copyfileobj(source, target)
