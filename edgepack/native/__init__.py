"""The native bundle loader `edgepack-run` (C++ sources in this package) and its build."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

__all__ = ["build_native_loader"]

_SOURCE_DIR = Path(__file__).parent
_FLAGS = ("-Os", "-std=c++17", "-s", "-pthread")  # -Os: the loader is glue around the TVM runtime; size matters on boards
_LIBS = ("-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-ldl", "-Wl,-rpath,$ORIGIN")


def build_native_loader(
    cxx: str, link_dirs: Sequence[Path], cache_dir: Path, extra_flags: Sequence[str] = ()
) -> Path:
    """Compile `edgepack-run` with `cxx` against the TVM runtime libraries in `link_dirs`.

    Returns the cached binary, `cache_dir/<key>/edgepack-run`, building it first if needed.
    """
    from tvm_ffi import libinfo  # noqa: PLC0415

    if shutil.which(cxx) is None:
        raise _error(
            f"C++ compiler '{cxx}' not found",
            "install it (e.g. apt-get install g++ or g++-aarch64-linux-gnu) or pick another toolchain",
        )
    for lib in ("libtvm_runtime.so", "libtvm_ffi.so"):
        if not any((Path(d) / lib).is_file() for d in link_dirs):
            raise _error(
                f"{lib} not found in {', '.join(map(str, link_dirs)) or 'no link directory'}",
                "pass the directories holding the target's TVM runtime libraries",
            )
    includes = sorted({libinfo.find_include_path(), libinfo.find_dlpack_include_path()})
    flags = [*_FLAGS, *(f"-I{d}" for d in includes), *extra_flags]
    link = [*(f"-L{d}" for d in link_dirs), *_LIBS]

    key = hashlib.sha256()
    for source in sorted([*_SOURCE_DIR.glob("*.h"), *_SOURCE_DIR.glob("third_party/*/*.h"), _SOURCE_DIR / "loader.cc"]):
        key.update(source.relative_to(_SOURCE_DIR).as_posix().encode() + b"\0" + source.read_bytes() + b"\0")
    key.update("\0".join([cxx, *flags, *link, metadata.version("apache-tvm-ffi")]).encode())
    binary = Path(cache_dir) / key.hexdigest()[:16] / "edgepack-run"
    if binary.is_file():
        return binary

    binary.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".edgepack-run.", dir=binary.parent)
    os.close(fd)
    try:
        result = subprocess.run(
            [cxx, *flags, str(_SOURCE_DIR / "loader.cc"), "-o", tmp, *link],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["no output"]
            detail = next((line for line in lines if "error" in line), lines[-1])
            raise _error(
                f"compiling edgepack-run with {cxx} failed: {detail}",
                "check the toolchain and that the link directories match the target architecture",
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return binary


def _error(problem: str, fix: str) -> Exception:
    from edgepack.errors import EdgepackError  # noqa: PLC0415 (this module imports without it)

    return EdgepackError(problem, fix)
