"""Sparse encoding of a bundle's params file: `params.sparse` instead of `params.bin`.

Layout (little-endian), documented in docs/bundle-format.md:

    magic      8 bytes  b"EPSPARSE"
    version    u32      1
    reserved   u32      0
    dense      u64      length in bytes of the params.bin stream it encodes
    sha256     32 bytes SHA-256 of those dense bytes
    bitmap     ceil(words / 8) bytes, one bit per 4-byte word of the dense stream (LSB first):
               1 = the word is nonzero and follows below
    values     4 bytes per nonzero word, in order

The loaders decode it in memory back to the exact params.bin bytes (checking the SHA-256) and load
those as before; the Python decoder is runtime/loader.py's decode_params, the native one sparse_params.h.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np


MAGIC = b"EPSPARSE"
VERSION = 1
ENCODING = "sparse-words-v1"
DENSE_NAME = "params.bin"
SPARSE_NAME = "params.sparse"
MIN_SAVING = 0.10  # ship params.sparse only when it is at least this much smaller than params.bin
_HEADER = struct.Struct("<8sIIQ32s")


def encode(dense: bytes) -> bytes:
    """The params.sparse bytes for a dense params.bin stream."""
    padded = dense + b"\0" * (-len(dense) % 4)
    words = np.frombuffer(padded, dtype="<u4")
    nonzero = words != 0
    header = _HEADER.pack(MAGIC, VERSION, 0, len(dense), hashlib.sha256(dense).digest())
    return header + np.packbits(nonzero, bitorder="little").tobytes() + words[nonzero].tobytes()


def decode(data: bytes) -> bytes:
    """The exact params.bin bytes a params.sparse file encodes; IntegrityError when it is damaged.

    The bundle's Python loader holds the one decoder (it cannot import edgepack; edgepack can import it)."""
    from edgepack.runtime.bundle_format import decode_params

    return decode_params(data, {"encoding": ENCODING})


def write_params(directory: Path, dense: bytes, min_saving: float = MIN_SAVING) -> tuple[Path, dict]:
    """Write params.bin, or params.sparse when that is at least `min_saving` smaller.

    Returns the path written and its manifest fields (`encoding` and `dense_bytes` for the sparse file)."""
    sparse = encode(dense)
    if len(sparse) <= (1 - min_saving) * len(dense):
        path = Path(directory) / SPARSE_NAME
        path.write_bytes(sparse)
        return path, {"encoding": ENCODING, "dense_bytes": len(dense)}
    path = Path(directory) / DENSE_NAME
    path.write_bytes(dense)
    return path, {}


def manifest_fields(path: Path) -> dict:
    """The manifest `params` fields describing a params file already written (empty for params.bin)."""
    path = Path(path)
    if path.name != SPARSE_NAME:
        return {}
    with open(path, "rb") as handle:
        header = handle.read(_HEADER.size)
    return {"encoding": ENCODING, "dense_bytes": _HEADER.unpack(header)[3]}


def zero_word_fraction(dense: bytes) -> float:
    """Share of 4-byte words that are zero (what the sparse encoding can drop)."""
    padded = dense + b"\0" * (-len(dense) % 4)
    words = np.frombuffer(padded, dtype="<u4")
    return float(np.mean(words == 0)) if len(words) else 0.0
