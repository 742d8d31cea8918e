"""Reading bundle archives (`.tar.gz`) safely: anything suspicious refuses the whole archive.

An archive is refused, never "cleaned": absolute names, `..`, links (symbolic or hard), devices,
FIFOs, duplicate names, setuid/setgid/sticky bits, too many members, too many bytes or a wild
compression ratio each stop the read with one line (exit 3). Members are written by this module
(never `tarfile.extract`) into a fresh staging directory that is removed again on any refusal, so
nothing is written outside it. Python's tarfile `data` filter alone is not enough: it rewrites
absolute names and allows links that stay inside the destination.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from edgepack.errors import IntegrityError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
_FIX = "unpack only archives written by `edgepack build --archive`, or rebuild it"


class ArchiveError(IntegrityError):
    """A bundle archive that is refused as a whole (exit 3)."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may hold: members, uncompressed bytes, and uncompressed/compressed ratio."""

    max_members: int = 10_000
    max_bytes: int = 8 << 30
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 1 << 20  # small archives (mostly tar padding) are not judged by ratio


def is_archive(path: Path | str) -> bool:
    """Whether a path names a bundle archive (by suffix) rather than a bundle directory."""
    return str(path).endswith(ARCHIVE_SUFFIXES)


class _CountingReader:
    """A read-only stream over the decompressed bytes that stops at the byte and ratio limits."""

    def __init__(self, stream, archive: Path, compressed: int, limits: ArchiveLimits):
        self._stream, self._archive, self._limits = stream, archive, limits
        self._compressed = max(compressed, 1)
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size if size is not None and size >= 0 else 1 << 20)
        self.count += len(data)
        if self.count > self._limits.max_bytes:
            raise ArchiveError(f"archive '{self._archive}' is refused: it unpacks to more than {self._limits.max_bytes} bytes", _FIX)
        if self.count > self._limits.ratio_floor_bytes and self.count > self._limits.max_ratio * self._compressed:
            raise ArchiveError(f"archive '{self._archive}' is refused: it expands more than {self._limits.max_ratio:g}x "
                               f"(a compression bomb?)", _FIX)
        return data


def _member_path(archive: Path, name: str) -> PurePosixPath:
    """The checked relative path of a member name; refuses absolute names, `..`, and odd characters."""
    def refuse(why: str):
        raise ArchiveError(f"archive '{archive}' is refused: member {name!r} {why}", _FIX)

    if not name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        refuse("has an absolute or empty name")
    if "\\" in name or any(ord(c) < 0x20 or ord(c) == 0x7f for c in name):
        refuse("has a backslash or a control character in its name")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        refuse("climbs out with '..'")
    if not parts or any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in parts):
        refuse("has an empty or overlong name")
    return PurePosixPath(*parts)


def _check_member(archive: Path, member: tarfile.TarInfo, path: PurePosixPath) -> None:
    def refuse(why: str):
        raise ArchiveError(f"archive '{archive}' is refused: member '{path}' {why}", _FIX)

    if member.issym() or member.islnk():
        refuse(f"is a {'symbolic' if member.issym() else 'hard'} link (to {member.linkname!r})")
    if member.ischr() or member.isblk():
        refuse("is a device file")
    if member.isfifo():
        refuse("is a FIFO")
    if member.issparse():
        refuse("is a sparse file")
    if not (member.isreg() or member.isdir()):
        refuse(f"has tar type {member.type!r}, not a file or directory")
    if member.mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
        refuse(f"has setuid, setgid or sticky bits (mode {member.mode:o})")


def extract_archive(archive: Path | str, destination: Path | str, limits: ArchiveLimits = ArchiveLimits()) -> None:
    """Unpack a .tar.gz into `destination` (created here, must not exist); refuse the whole archive on anything odd.

    On a refusal (ArchiveError, exit 3) `destination` is removed again.
    """
    archive, destination = Path(archive), Path(destination)
    if not archive.is_file():
        raise ArchiveError(f"archive '{archive}' does not exist or is not a file", "pass a bundle directory or its .tar.gz")
    destination.mkdir(mode=0o700)
    try:
        _extract(archive, destination, limits)
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def _extract(archive: Path, destination: Path, limits: ArchiveLimits) -> None:
    seen: set[PurePosixPath] = set()
    files: set[PurePosixPath] = set()
    members = 0
    with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
        reader = _CountingReader(unzipped, archive, archive.stat().st_size, limits)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for member in tar:
                    members += 1
                    if members > limits.max_members:
                        raise ArchiveError(f"archive '{archive}' is refused: it has more than {limits.max_members} members", _FIX)
                    path = _member_path(archive, member.name)
                    _check_member(archive, member, path)
                    if path in seen:
                        raise ArchiveError(f"archive '{archive}' is refused: member '{path}' appears twice", _FIX)
                    if any(parent in files for parent in path.parents):
                        raise ArchiveError(f"archive '{archive}' is refused: member '{path}' is inside a file", _FIX)
                    seen.add(path)
                    target = destination.joinpath(*path.parts)
                    if member.isdir():
                        target.mkdir(mode=0o755, parents=True, exist_ok=True)
                        continue
                    files.add(path)
                    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    mode = 0o755 if member.mode & 0o111 else 0o644
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
                    with os.fdopen(fd, "wb") as out, tar.extractfile(member) as source:
                        shutil.copyfileobj(source, out, 1 << 20)
        except ArchiveError:
            raise
        except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error, UnicodeError) as exc:
            raise ArchiveError(f"archive '{archive}' is not a readable .tar.gz ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'truncated'})", _FIX) from None
        except OSError as exc:
            raise ArchiveError(f"archive '{archive}' cannot be unpacked ({exc.strerror or exc})",
                               "check free space in the temporary directory (TMPDIR)") from None
    if members == 0:
        raise ArchiveError(f"archive '{archive}' is empty", _FIX)


def bundle_in(directory: Path, archive: Path) -> Path:
    """The one bundle directory (holding manifest.json) at the top of an unpacked archive."""
    tops = list(directory.iterdir())
    if len(tops) != 1 or not tops[0].is_dir() or not (tops[0] / "manifest.json").is_file():
        raise ArchiveError(f"archive '{archive}' does not hold exactly one bundle directory with a manifest.json", _FIX)
    return tops[0]


@contextlib.contextmanager
def unpacked(bundle: Path | str, limits: ArchiveLimits = ArchiveLimits()) -> Iterator[Path]:
    """A bundle directory as given, or a `.tar.gz` bundle unpacked safely into a temporary directory."""
    bundle = Path(bundle)
    if not is_archive(bundle) or bundle.is_dir():
        yield bundle
        return
    with tempfile.TemporaryDirectory(prefix="edgepack-archive-") as scratch:
        staging = Path(scratch) / "unpacked"
        extract_archive(bundle, staging, limits)
        yield bundle_in(staging, bundle)
