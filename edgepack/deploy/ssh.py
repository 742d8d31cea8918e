"""SshFS: the store operations of fs.LocalFS, run on a device over the system's OpenSSH client.

The device needs a POSIX shell, GNU coreutils (`mv -T`, `sha256sum`, `timeout`, `sync`), `tar` and
util-linux `flock`; not Python and not edgepack. Keys and options come from the user's ssh agent and
config; `EDGEPACK_SSH` replaces the client command (e.g. `ssh -F ./ssh_config`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shlex
import stat
import subprocess
import tarfile
from pathlib import PurePosixPath
from typing import Iterator

from edgepack.deploy.faults import fault_point
from edgepack.errors import EdgepackError
from edgepack.deploy.checked import CheckedBundle
from edgepack.runtime.bundle_format import (
    MANIFEST, SIGNATURE, BundleError, IntegrityError, check_manifest_fields, parse_manifest, parse_public_keys,
)
from edgepack.compiler.runtime_files import NATIVE_LOADER

_MISSING = 10  # exit status our remote scripts use for "no such file"
_SSH_FAILED = 255
_q = shlex.quote


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "no output"


class SshFS:
    """A device store reached as `ssh://[user@]host[:port]/root`."""

    def __init__(self, host: str, user: str | None = None, port: int | None = None):
        for label, value in (("host", host), ("user", user or "")):
            if value.startswith("-"):  # ssh would read it as an option
                raise EdgepackError(f"SSH {label} '{value}' starts with '-'", "use a plain host name or address: ssh://user@host/path")
        self.host, self.user, self.port = host, user, port

    def describe(self, path: PurePosixPath) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{self.host}{port}{path}"

    def _command(self, script: str) -> list[str]:
        client = shlex.split(os.environ.get("EDGEPACK_SSH", "ssh"))
        options = ["-o", "BatchMode=yes", *(["-p", str(self.port)] if self.port else []), *(["-l", self.user] if self.user else [])]
        return [*client, *options, self.host, "--", script]

    def _unreachable(self, stderr: str) -> EdgepackError:
        return EdgepackError(f"cannot reach {self.describe(PurePosixPath('/'))} ({_last_line(stderr)})",
                             "check the host and port, and that `ssh` to it works without a password (agent or ~/.ssh/config)")

    def _run(self, script: str, data: str | None = None, ok: tuple[int, ...] = (0,), timeout: float | None = 300) -> subprocess.CompletedProcess:
        """Run a shell script on the device; raise on an ssh failure or an exit status not in `ok`."""
        result = subprocess.run(self._command(script), input=data, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode == _SSH_FAILED:
            raise self._unreachable(result.stderr)
        if result.returncode not in ok:
            raise EdgepackError(f"a command on {self.describe(PurePosixPath('/'))} failed (exit {result.returncode}: "
                                f"{_last_line(result.stderr)})", "check the device's disk space and permissions on the store")
        return result

    def machine(self) -> str:
        return self._run("uname -m").stdout.strip()

    def is_dir(self, path: PurePosixPath) -> bool:
        return self._run(f"test -d {_q(str(path))}", ok=(0, 1)).returncode == 0

    def listdir(self, path: PurePosixPath) -> list[str]:
        out = self._run(f"if [ -d {_q(str(path))} ]; then ls -A {_q(str(path))}; fi").stdout
        return sorted(line for line in out.splitlines() if line)

    def mkdirs(self, path: PurePosixPath) -> None:
        self._run(f"mkdir -p {_q(str(path))}")

    def read_text(self, path: PurePosixPath) -> str | None:
        result = self._run(f"if [ -f {_q(str(path))} ]; then cat {_q(str(path))}; else exit {_MISSING}; fi", ok=(0, _MISSING))
        return None if result.returncode == _MISSING else result.stdout

    def write_atomic(self, path: PurePosixPath, text: str, temp: PurePosixPath) -> None:
        """Write to `temp`, sync, rename over `path` (rename(2)), sync."""
        self._run(f"cat > {_q(str(temp))} && sync && mv -fT {_q(str(temp))} {_q(str(path))} && sync", data=text)

    def append_line(self, path: PurePosixPath, line: str) -> None:
        """Append one line and sync; a previous line cut short by a crash is ended first."""
        p = _q(str(path))
        self._run(f"if [ -s {p} ] && [ -n \"$(tail -c 1 {p})\" ]; then printf '\\n' >> {p}; fi; cat >> {p} && sync", data=line)

    def readlink(self, path: PurePosixPath) -> str | None:
        result = self._run(f"if [ -L {_q(str(path))} ]; then readlink {_q(str(path))}; else exit {_MISSING}; fi", ok=(0, _MISSING))
        return None if result.returncode == _MISSING else result.stdout.strip()

    def symlink(self, target: str, path: PurePosixPath) -> None:
        self._run(f"ln -s {_q(target)} {_q(str(path))}")

    def replace(self, source: PurePosixPath, destination: PurePosixPath) -> None:
        """rename(2) `source` over `destination` (`mv -T`), then sync."""
        self._run(f"mv -fT {_q(str(source))} {_q(str(destination))} && sync")

    def unlink(self, path: PurePosixPath) -> None:
        self._run(f"rm -f {_q(str(path))} && sync")

    def rmtree(self, path: PurePosixPath) -> None:
        self._run(f"rm -rf {_q(str(path))}")

    def _tar_entry(self, checked: CheckedBundle, rel: str) -> tuple[tarfile.TarInfo, bytes]:
        """One tar member built from bytes read without following a link and matched against the host's check."""
        with open(os.open(checked.path / rel, os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
            executable = os.fstat(handle.fileno()).st_mode & stat.S_IXUSR
            data = handle.read()
        entry = checked.entry(rel)
        if entry is not None and (len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]):
            raise IntegrityError(f"bundle file '{rel}' changed after the host checked it", "something is modifying the bundle; deploy it again")
        info = tarfile.TarInfo(rel)
        info.size, info.mode, info.type = len(data), 0o755 if executable else 0o644, tarfile.REGTYPE
        return info, data

    def _send(self, checked: CheckedBundle, names: tuple[str, ...], staging: PurePosixPath) -> None:
        """Stream regular-file tar members into `staging`: no owners, no overwriting, then sync (the device checks after)."""
        extract = f"tar --extract --no-same-owner --no-same-permissions --keep-old-files --file=- --directory={_q(str(staging))} && sync"
        process = subprocess.Popen(self._command(extract), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=process.stdin, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                for name in names:
                    info, data = self._tar_entry(checked, name)
                    archive.addfile(info, io.BytesIO(data))
        except OSError as exc:
            raise IntegrityError(f"cannot read bundle file for the copy ({exc.strerror})", "copy the whole bundle directory again") from None
        finally:
            process.stdin.close()
            stderr = process.stderr.read().decode(errors="replace")
            process.wait()
        if process.returncode == _SSH_FAILED:
            raise self._unreachable(stderr)
        if process.returncode != 0:
            raise EdgepackError(f"copying to the device failed ({_last_line(stderr)})", "check the device's disk space")

    def upload(self, checked: CheckedBundle, staging: PurePosixPath) -> None:
        """Create a fresh `staging` (mkdir fails if anything is there) and stream the checked files into it, manifest last."""
        self._run(f"mkdir -m 755 {_q(str(staging))}")
        self._send(checked, checked.files[:1], staging)
        fault_point("copy")
        self._send(checked, checked.files[1:], staging)

    def check_bundle(self, path: PurePosixPath) -> dict:
        """The device's own check of its copy: no link or special file, exactly the listed files, sizes and SHA-256 (sha256sum)."""
        text = self.read_text(path / MANIFEST)
        try:
            manifest = parse_manifest(text.encode("utf-8"), self.describe(path / MANIFEST)) if text is not None else None
        except IntegrityError:
            manifest = None
        if manifest is None:
            raise IntegrityError("the manifest copied to the device is missing or unreadable", "deploy again")
        check_manifest_fields(manifest, self.describe(path / MANIFEST))
        p = _q(str(path))
        odd = self._run(f"cd {p} && find . -mindepth 1 ! -type f ! -type d").stdout.split("\n")[0]
        if odd:
            raise IntegrityError(f"the copy on the device holds '{odd[2:]}', which is not a regular file", "deploy again")
        present = {line[2:] for line in self._run(f"cd {p} && find . -type f").stdout.splitlines()}
        extra = sorted(present - set(manifest["files"]) - {MANIFEST, SIGNATURE})
        if extra:
            raise IntegrityError(f"the copy on the device holds '{extra[0]}', which the manifest does not list", "deploy again")
        names = sorted(manifest["files"])
        script = f"cd {p} && for f in " + " ".join(_q(n) for n in names) + \
            "; do if [ -f \"$f\" ] && [ ! -L \"$f\" ]; then echo \"$(wc -c < \"$f\") $(sha256sum < \"$f\" | cut -d' ' -f1)\"; else echo missing; fi; done"
        lines = self._run(script).stdout.splitlines()
        for name, line in zip(names, lines):
            entry = manifest["files"][name]
            if line == "missing":
                raise IntegrityError(f"bundle file '{name}' is missing on the device", "deploy again")
            size, digest = line.split()
            if int(size) != entry.get("size") or digest != entry.get("sha256"):
                raise IntegrityError(f"bundle file '{name}' does not match its SHA-256 (or size) in the manifest on the device",
                                     "the bundle or the transfer was corrupted; rebuild the bundle or deploy again")
        return manifest

    def read_keyring(self, path: PurePosixPath) -> dict[str, bytes]:
        """The trusted keys of a keyring on the device: a .pub file, or the regular `*.pub` files of a directory."""
        p = _q(str(path))
        script = (f"if [ -d {p} ]; then for f in {p}/*.pub; do if [ -f \"$f\" ] && [ ! -L \"$f\" ]; then cat \"$f\"; echo; fi; done; "
                  f"elif [ -f {p} ]; then cat {p}; else exit {_MISSING}; fi")
        result = self._run(script, ok=(0, _MISSING))
        where = self.describe(path)
        if result.returncode == _MISSING:
            raise BundleError(f"keyring '{where}' does not exist", "pass a .pub file or a directory of .pub files made by `edgepack keygen`")
        keys = parse_public_keys(result.stdout, where)
        if not keys:
            raise BundleError(f"keyring '{where}' holds no ed25519 public keys", "add a .pub file made by `edgepack keygen`")
        return keys

    def run_loader(self, bundle: PurePosixPath, args: list[str], timeout: float,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """The bundle's native loader on the device, empty environment (plus `env`), under `timeout` there."""
        loader = _q(str(bundle / "runtime" / NATIVE_LOADER))
        variables = " ".join(_q(f"{key}={value}") for key, value in (env or {}).items())
        script = f"exec env -i {variables} timeout {timeout:g} {loader} {' '.join(_q(a) for a in args)} --bundle {_q(str(bundle))}"
        result = subprocess.run(self._command(script), capture_output=True, text=True, timeout=timeout + 60, check=False)
        if result.returncode == _SSH_FAILED:
            raise self._unreachable(result.stderr)
        if result.returncode == 124:
            raise subprocess.TimeoutExpired(script, timeout)
        if 128 < result.returncode < 160:  # killed by a signal on the device
            result.returncode = 128 - result.returncode
        return result

    @contextlib.contextmanager
    def lock(self, path: PurePosixPath, what: str) -> Iterator[None]:
        """Hold `flock` on the device for as long as an ssh session lives; a dead client releases it."""
        script = f"exec flock -n {_q(str(path))} sh -c 'echo locked; exec cat'"
        process = subprocess.Popen(self._command(script), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if process.stdout.readline().strip() != "locked":
                process.wait()
                if process.returncode == _SSH_FAILED:
                    raise self._unreachable(process.stderr.read())
                raise EdgepackError(f"another edgepack command is working on {what}", "wait for it to finish, then run this again")
            yield
        finally:
            if process.stdin and not process.stdin.closed:
                process.stdin.close()
            process.wait()

    def tail(self, path: PurePosixPath, lines: int) -> list[str] | None:
        """The last `lines` lines of a file on the device, or None when there is no such file."""
        p = _q(str(path))
        result = self._run(f"if [ -f {p} ]; then tail -n {int(lines)} {p}; else exit {_MISSING}; fi", ok=(0, _MISSING))
        return None if result.returncode == _MISSING else result.stdout.splitlines()

    def fetch(self, url: str, timeout: float) -> str:
        """GET `url` on the device (curl, wget or python3 there), so that a server bound to its loopback answers."""
        u, t = _q(url), f"{timeout:g}"
        python = _q(f"import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout={t}).read().decode())")
        script = (f"if command -v curl >/dev/null 2>&1; then curl -fsS --max-time {t} {u}; "
                  f"elif command -v wget >/dev/null 2>&1; then wget -qO- -T {t} {u}; "
                  f"else python3 -c {python} {u}; fi")
        result = self._run(script, ok=tuple(range(0, 255)), timeout=timeout + 60)
        if result.returncode != 0:
            raise EdgepackError(f"{url} is not answering on {self.describe(PurePosixPath('/'))} ({_last_line(result.stderr)})",
                                "start the server on the device (runtime/edgepack_serve.py)")
        return result.stdout
