"""The safe archive reader: every suspicious .tar.gz is refused whole, nothing lands outside a fresh staging dir."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from edgepack.bundle.archive import ArchiveError, ArchiveLimits, extract_archive, unpacked

_FIX = "unpack only archives written by `edgepack build --archive`"


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x", mode: int = 0o644, **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    tar.addfile(info)


def make_archive(path: Path, build) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        build(tar)
    return path


@pytest.fixture()
def place(tmp_path):
    """(archive path, staging destination) inside a `work` dir, so escapes would land in tmp_path."""
    work = tmp_path / "work"
    work.mkdir()
    return work / "bundle.tar.gz", work / "staging"


def outside(tmp_path: Path) -> set[str]:
    return {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if "staging" not in p.parts}


def test_good_archive_unpacks_with_plain_modes(place):
    archive, staging = place
    make_archive(archive, lambda tar: (add_file(tar, "b/manifest.json", b"{}"), add_file(tar, "b/runtime/run", b"#!", 0o775)))
    extract_archive(archive, staging)
    assert (staging / "b" / "manifest.json").read_bytes() == b"{}"
    assert stat.S_IMODE((staging / "b" / "runtime" / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700


BAD = {
    "absolute name": (lambda tar: add_file(tar, "/tmp/evil-absolute"), "absolute"),
    "dot-dot": (lambda tar: add_file(tar, "b/../../evil"), "climbs out"),
    "symlink inside": (lambda tar: (add_file(tar, "b/a"), add_special(tar, "b/link", tarfile.SYMTYPE, "a")), "symbolic link"),
    "symlink outside": (lambda tar: add_special(tar, "b/link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    "hard link": (lambda tar: (add_file(tar, "b/a"), add_special(tar, "b/hard", tarfile.LNKTYPE, "b/a")), "hard link"),
    "char device": (lambda tar: add_special(tar, "b/null", tarfile.CHRTYPE), "device"),
    "block device": (lambda tar: add_special(tar, "b/sda", tarfile.BLKTYPE), "device"),
    "fifo": (lambda tar: add_special(tar, "b/pipe", tarfile.FIFOTYPE), "FIFO"),
    "duplicate": (lambda tar: (add_file(tar, "b/a", b"1"), add_file(tar, "b/./a", b"2")), "appears twice"),
    "setuid": (lambda tar: add_file(tar, "b/run", b"#!", 0o4755), "setuid"),
    "setgid": (lambda tar: add_file(tar, "b/run", b"#!", 0o2755), "setuid, setgid"),
    "file then dir under it": (lambda tar: (add_file(tar, "b/a"), add_file(tar, "b/a/b")), "inside a file"),
    "backslash": (lambda tar: add_file(tar, "b\\..\\evil"), "backslash"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_suspicious_archives_are_refused_whole(case, place, tmp_path):
    archive, staging = place
    build, message = BAD[case]
    make_archive(archive, lambda tar: (add_file(tar, "b/manifest.json", b"{}"), build(tar)))
    before = outside(tmp_path)
    with pytest.raises(ArchiveError, match=message) as info:
        extract_archive(archive, staging)
    assert info.value.exit_code == 3 and "\n" not in str(info.value) and _FIX in info.value.fix
    assert not staging.exists()  # the good member written before the refusal is gone too
    assert outside(tmp_path) == before
    assert not Path("/tmp/evil-absolute").exists()


def test_member_count_and_byte_limits(place):
    archive, staging = place
    make_archive(archive, lambda tar: [add_file(tar, f"b/f{i}", b"y" * 1000) for i in range(20)])
    with pytest.raises(ArchiveError, match="more than 10 members"):
        extract_archive(archive, staging, ArchiveLimits(max_members=10))
    with pytest.raises(ArchiveError, match="more than 5000 bytes"):
        extract_archive(archive, staging, ArchiveLimits(max_bytes=5000))
    assert not staging.exists()
    extract_archive(archive, staging)


def test_compression_bomb_is_refused_by_ratio(place):
    archive, staging = place
    make_archive(archive, lambda tar: add_file(tar, "b/zeros", bytes(8 << 20)))  # 8 MiB of zeros → ~8 KiB
    assert archive.stat().st_size < 64 << 10
    with pytest.raises(ArchiveError, match="expands more than 200x"):
        extract_archive(archive, staging)
    assert not staging.exists()


@pytest.mark.parametrize("content", [b"", b"not a gzip file at all", None])
def test_unreadable_archives_are_one_line(place, tmp_path, content):
    archive, staging = place
    if content is None:  # a real archive cut in half
        make_archive(archive, lambda tar: add_file(tar, "b/data", os.urandom(50_000)))
        content = archive.read_bytes()[:20_000]
    archive.write_bytes(content)
    with pytest.raises(ArchiveError) as info:
        extract_archive(archive, staging)
    assert "\n" not in str(info.value)
    assert not staging.exists()


def test_unpacked_yields_the_one_bundle_and_cleans_up(place, tmp_path):
    archive, _ = place
    make_archive(archive, lambda tar: add_file(tar, "b/manifest.json", b"{}"))
    with unpacked(archive) as bundle:
        assert bundle.name == "b" and (bundle / "manifest.json").is_file()
        scratch = bundle.parent.parent
    assert not scratch.exists()
    make_archive(archive, lambda tar: (add_file(tar, "b/manifest.json", b"{}"), add_file(tar, "c/manifest.json", b"{}")))
    with pytest.raises(ArchiveError, match="exactly one bundle directory"):
        with unpacked(archive):
            pass


def test_cli_inspect_and_verify_take_archives(tmp_path, edgepack_cli):
    manifest = {"schema_version": 1, "name": "b", "version": "1"}
    good = make_archive(tmp_path / "good.tar.gz", lambda tar: add_file(tar, "b/manifest.json", json.dumps(manifest).encode()))
    result = edgepack_cli("inspect", good, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "b"
    evil = make_archive(tmp_path / "evil.tar.gz", lambda tar: add_special(tar, "b/manifest.json", tarfile.SYMTYPE, "/etc/passwd"))
    for command in ("inspect", "verify"):
        result = edgepack_cli(command, evil)
        assert result.returncode == 3, result.stderr
        assert result.stderr.count("\n") == 1 and "is a symbolic link" in result.stderr
