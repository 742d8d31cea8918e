"""Parse a DEVICE argument into the file system that reaches it and the store root, and pick a model."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from edgepack.deploy.fs import DeviceFS, LocalFS
from edgepack.errors import EdgepackError


def parse_device(device: str) -> tuple[DeviceFS, PurePosixPath]:
    """A directory path, `file:///path` or `ssh://[user@]host[:port]/root` → (LocalFS or SshFS, root)."""
    if "://" not in device:
        return LocalFS(), PurePosixPath(Path(device).expanduser().absolute())
    url = urlparse(device)
    if url.scheme == "file":
        if url.netloc not in ("", "localhost"):
            raise EdgepackError(f"file URL '{device}' names host '{url.netloc}'", "use file:///absolute/path")
        return LocalFS(), PurePosixPath(Path(unquote(url.path)).absolute())
    if url.scheme == "ssh":
        from edgepack.deploy.ssh import SshFS

        if not url.hostname or not url.path or url.path == "/":
            raise EdgepackError(f"SSH device '{device}' needs a host and a store directory", "use ssh://user@host[:port]/absolute/path")
        try:
            port = url.port
        except ValueError:
            raise EdgepackError(f"SSH device '{device}' has a bad port", "use ssh://user@host:PORT/path") from None
        return SshFS(url.hostname, url.username, port), PurePosixPath(unquote(url.path))
    raise EdgepackError(f"unknown device scheme '{url.scheme}' in '{device}'", "use a directory path, file:///path or ssh://user@host/path")


def existing_root(device: str) -> tuple[DeviceFS, PurePosixPath]:
    """The file system and store root of a device that must already hold deployments."""
    fs, root = parse_device(device)
    if not fs.is_dir(root):
        raise EdgepackError(f"device store '{fs.describe(root)}' does not exist", "deploy a bundle to it first (edgepack deploy BUNDLE DEVICE)")
    return fs, root


def models_in(fs: DeviceFS, root: PurePosixPath) -> list[str]:
    """The models deployed under a store root (directories holding a state.json or a versions/ directory)."""
    return [name for name in fs.listdir(root) if {"state.json", "versions"} & set(fs.listdir(root / name))]


def pick_model(fs: DeviceFS, root: PurePosixPath, model: str | None) -> str:
    """The model a command works on: the one named, or the only one under the root."""
    found = models_in(fs, root)
    where = fs.describe(root)
    if model is not None:
        if model not in found:
            raise EdgepackError(f"no model '{model}' on device '{where}' (models: {', '.join(found) or 'none'})",
                                "pass --model with one of those")
        return model
    if not found:
        raise EdgepackError(f"device store '{where}' holds no deployed model", "deploy a bundle to it first")
    if len(found) > 1:
        raise EdgepackError(f"device '{where}' holds several models ({', '.join(found)})", "pass --model NAME")
    return found[0]
