"""Pictures made by tests: checked to be real PNGs, and copied into docs/images when EDGEPACK_DOCS_IMAGES is set
(`EDGEPACK_DOCS_IMAGES=docs/images pytest tests/tvm/test_plots.py tests/tvm/test_tune.py` refreshes the docs)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def keep_picture(path: Path) -> Path:
    """Assert `path` is a PNG with content; copy it to $EDGEPACK_DOCS_IMAGES when set."""
    data = Path(path).read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, f"{path} is not a drawn PNG"
    if os.environ.get("EDGEPACK_DOCS_IMAGES"):
        destination = Path(os.environ["EDGEPACK_DOCS_IMAGES"])
        destination.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination / Path(path).name)
    return Path(path)
