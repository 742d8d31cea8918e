"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgepack.bundle.manifest import file_entries, new_manifest, write_manifest


@pytest.fixture()
def bundle(tmp_path) -> Path:
    """A directory shaped like a bundle (no real library): files listed with digests in a manifest."""
    root = tmp_path / "b"
    (root / "golden" / "0").mkdir(parents=True)
    (root / "model.so").write_bytes(os.urandom(256))
    (root / "params.bin").write_bytes(b"weights" * 10)
    np.save(root / "golden" / "0" / "input_0.npy", np.arange(4, dtype=np.float32))
    write_manifest(root, new_manifest(name="b", version="1", files=file_entries(root)))
    return root
