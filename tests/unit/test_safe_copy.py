"""Staging writes never follow a link and copy only the bytes the host checked (issue 15, item 1)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from edgepack.deploy.checked import CheckedBundle
from edgepack.deploy.safe_copy import copy_into_fresh
from edgepack.errors import BundleError
from edgepack.runtime.bundle_format import IntegrityError, check_plain_tree


def _bundle(root: Path) -> CheckedBundle:
    files = {"model.so": b"\x7fELF library", "golden/out.npy": b"npy bytes", "runtime/edgepack-run": b"#!/bin/sh\n"}
    entries = {}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        entries[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (root / "runtime" / "edgepack-run").chmod(0o755)
    manifest = {"schema_version": 1, "files": entries}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return CheckedBundle(root, manifest, tuple(sorted(entries)) + ("manifest.json",))


def test_copy_lands_in_a_fresh_directory_with_modes(tmp_path):
    checked = _bundle(tmp_path / "b")
    copy_into_fresh(checked, tmp_path / "staging")
    assert (tmp_path / "staging" / "golden" / "out.npy").read_bytes() == b"npy bytes"
    assert os.access(tmp_path / "staging" / "runtime" / "edgepack-run", os.X_OK)
    assert not os.access(tmp_path / "staging" / "model.so", os.X_OK)


def test_an_existing_staging_path_or_link_is_never_written_through(tmp_path):
    checked = _bundle(tmp_path / "b")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "staging")
    with pytest.raises(BundleError):
        copy_into_fresh(checked, tmp_path / "staging")
    assert list(elsewhere.iterdir()) == []


def test_a_file_swapped_after_the_check_is_refused(tmp_path):
    checked = _bundle(tmp_path / "b")
    (tmp_path / "b" / "model.so").write_bytes(b"\x7fELF other code")
    with pytest.raises(IntegrityError, match="changed after the host checked it"):
        copy_into_fresh(checked, tmp_path / "s1")
    (tmp_path / "b" / "model.so").unlink()
    (tmp_path / "outside.so").write_bytes(b"\x7fELF library")
    os.symlink(tmp_path / "outside.so", tmp_path / "b" / "model.so")
    with pytest.raises(BundleError):
        copy_into_fresh(checked, tmp_path / "s2")


@pytest.mark.parametrize("plant", ["dir-link", "file-link", "fifo", "extra"])
def test_check_plain_tree_refuses_links_special_and_extra_files(tmp_path, plant):
    root = tmp_path / "b"
    _bundle(root)
    if plant == "dir-link":
        os.symlink(tmp_path, root / "up")
    elif plant == "file-link":
        os.symlink(root / "model.so", root / "alias.so")
    elif plant == "fifo":
        os.mkfifo(root / "pipe")
    else:
        (root / "golden" / "extra.npy").write_bytes(b"x")
    with pytest.raises(IntegrityError):
        check_plain_tree(root)
