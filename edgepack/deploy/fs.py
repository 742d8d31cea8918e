"""The file-system operations a device store needs, on this machine (LocalFS).

Paths are PurePosixPath so that the same store code drives a remote device (ssh.SshFS). Every
operation that changes the store is durable when it returns (fsync of files and directories).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Iterator, Protocol

from edgepack.errors import EdgepackError
from edgepack.deploy.checked import CheckedBundle
from edgepack.deploy.safe_copy import copy_into_fresh
from edgepack.runtime.bundle_format import check_plain_tree, load_keyring
from edgepack.compiler.runtime_files import NATIVE_LOADER


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DeviceFS(Protocol):
    """What the store code asks of a device's file system (LocalFS here, ssh.SshFS over SSH)."""

    def describe(self, path: PurePosixPath) -> str: ...
    def machine(self) -> str: ...
    def is_dir(self, path: PurePosixPath) -> bool: ...
    def listdir(self, path: PurePosixPath) -> list[str]: ...
    def mkdirs(self, path: PurePosixPath) -> None: ...
    def read_text(self, path: PurePosixPath) -> str | None: ...
    def write_atomic(self, path: PurePosixPath, text: str, temp: PurePosixPath) -> None: ...
    def append_line(self, path: PurePosixPath, line: str) -> None: ...
    def readlink(self, path: PurePosixPath) -> str | None: ...
    def symlink(self, target: str, path: PurePosixPath) -> None: ...
    def replace(self, source: PurePosixPath, destination: PurePosixPath) -> None: ...
    def unlink(self, path: PurePosixPath) -> None: ...
    def rmtree(self, path: PurePosixPath) -> None: ...
    def upload(self, checked: CheckedBundle, staging: PurePosixPath) -> None: ...
    def check_bundle(self, path: PurePosixPath) -> dict: ...
    def read_keyring(self, path: PurePosixPath) -> dict[str, bytes]: ...
    def run_loader(self, bundle: PurePosixPath, args: list[str], timeout: float,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess: ...
    def lock(self, path: PurePosixPath, what: str) -> contextlib.AbstractContextManager[None]: ...
    def tail(self, path: PurePosixPath, lines: int) -> list[str] | None: ...
    def fetch(self, url: str, timeout: float) -> str: ...


class LocalFS:
    """A device store on a local (or mounted) file system; the device is this machine."""

    def describe(self, path: PurePosixPath) -> str:
        return str(path)

    def machine(self) -> str:
        return platform.machine()

    def is_dir(self, path: PurePosixPath) -> bool:
        return Path(path).is_dir()

    def listdir(self, path: PurePosixPath) -> list[str]:
        return sorted(os.listdir(path)) if Path(path).is_dir() else []

    def mkdirs(self, path: PurePosixPath) -> None:
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgepackError(f"cannot create the store directory '{path}' ({exc.strerror})",
                                "pass a device directory you can write to") from None

    def read_text(self, path: PurePosixPath) -> str | None:
        return Path(path).read_text(encoding="utf-8") if Path(path).is_file() else None

    def write_atomic(self, path: PurePosixPath, text: str, temp: PurePosixPath) -> None:
        """Write to `temp`, fsync, rename over `path`, fsync the directory."""
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        _sync_dir(Path(path).parent)

    def append_line(self, path: PurePosixPath, line: str) -> None:
        """Append one line and fsync; a previous line cut short by a crash is ended first."""
        target = Path(path)
        if target.is_file() and target.stat().st_size:
            with open(target, "rb") as handle:
                handle.seek(-1, os.SEEK_END)
                line = ("" if handle.read(1) == b"\n" else "\n") + line
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def readlink(self, path: PurePosixPath) -> str | None:
        return os.readlink(path) if Path(path).is_symlink() else None

    def symlink(self, target: str, path: PurePosixPath) -> None:
        os.symlink(target, path)

    def replace(self, source: PurePosixPath, destination: PurePosixPath) -> None:
        """Rename atomically (a directory, or a link over a link) and fsync the destination's directory."""
        os.replace(source, destination)
        _sync_dir(Path(destination).parent)

    def unlink(self, path: PurePosixPath) -> None:
        Path(path).unlink(missing_ok=True)
        _sync_dir(Path(path).parent)

    def rmtree(self, path: PurePosixPath) -> None:
        target = Path(path)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)

    def upload(self, checked: CheckedBundle, staging: PurePosixPath) -> None:
        """Copy the checked bundle into a fresh `staging` directory, never through a link (safe_copy), manifest last."""
        copy_into_fresh(checked, Path(staging))
        _sync_dir(Path(staging).parent)

    def check_bundle(self, path: PurePosixPath) -> dict:
        """The device's own check of its copy: no link, exactly the listed files, sizes and SHA-256 (check_plain_tree)."""
        return check_plain_tree(Path(path))

    def read_keyring(self, path: PurePosixPath) -> dict[str, bytes]:
        """The trusted keys of a keyring on this machine (the device)."""
        return load_keyring(Path(path))

    def run_loader(self, bundle: PurePosixPath, args: list[str], timeout: float,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """The bundle's native loader in an empty environment (plus `env`); raises subprocess.TimeoutExpired past `timeout`."""
        command = [str(Path(bundle) / "runtime" / NATIVE_LOADER), *args, "--bundle", str(bundle)]
        return subprocess.run(command, capture_output=True, text=True, env=dict(env or {}), timeout=timeout, check=False)

    @contextlib.contextmanager
    def lock(self, path: PurePosixPath, what: str) -> Iterator[None]:
        """Hold an exclusive flock on `path`; refuse at once when another command holds it."""
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EdgepackError(f"another edgepack command is working on {what}", "wait for it to finish, then run this again") from None
            yield


    def tail(self, path: PurePosixPath, lines: int) -> list[str] | None:
        """The last `lines` lines of a file (read from its end), or None when there is no such file."""
        target = Path(path)
        if not target.is_file():
            return None
        with open(target, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block, data = 1 << 16, b""
            while size > 0 and data.count(b"\n") <= lines:
                step = min(block, size)
                size -= step
                handle.seek(size)
                data = handle.read(step) + data
        return data.decode("utf-8", errors="replace").splitlines()[-lines:] if lines > 0 else []

    def fetch(self, url: str, timeout: float) -> str:
        """GET `url` from this machine (the device) and return the body."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise EdgepackError(f"{url} is not answering ({reason})", "start the server on the device (runtime/edgepack_serve.py)") from None
