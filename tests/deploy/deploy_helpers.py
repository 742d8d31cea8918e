"""Assertions about a device store shared by the deploy tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def model_dir(device: Path, model: str = "tiny") -> Path:
    return device / model


def state(device: Path, model: str = "tiny") -> dict:
    return json.loads((model_dir(device, model) / "state.json").read_text())


def history(device: Path, model: str = "tiny") -> list[dict]:
    path = model_dir(device, model) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def linked(device: Path, model: str = "tiny") -> str | None:
    link = model_dir(device, model) / "current"
    return Path(os.readlink(link)).name if link.is_symlink() else None


def current_verifies(device: Path, model: str = "tiny") -> bool:
    """The active version's own native loader passes its golden vectors, as the device would run it."""
    loader = model_dir(device, model) / "current" / "runtime" / "edgepack-run"
    result = subprocess.run([str(loader), "verify"], capture_output=True, text=True, env={}, timeout=120, check=False)
    return result.returncode == 0


def leftovers(device: Path, model: str = "tiny") -> list[str]:
    root = model_dir(device, model)
    return sorted(p.name for place in (root, root / "versions") for p in place.iterdir() if p.name.startswith((".staging-", ".trash-", ".current-", ".state.json.")))
