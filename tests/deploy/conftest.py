"""Bundles for the deploy tests: one real x86_64 build of a tiny MatMul+Add ONNX model per session,
and variants of it made by editing copies (new version numbers, a failing golden file, a flipped byte).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy_helpers import tiny_onnx
from deploy_sshd import SSHD, start_sshd

pytestmark = pytest.mark.tvm


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _variant(base: Path, out: Path, version: str) -> Path:
    """A copy of the bundle carrying another version number (the manifest is not digested)."""
    bundle = out / f"tiny-{version}-x86_64"
    shutil.copytree(base, bundle)
    manifest = _manifest(bundle)
    manifest["version"] = version
    _write_manifest(bundle, manifest)
    return bundle


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """good1/good2/good3: healthy versions 1.0.0, 2.0.0, 3.0.0; bad: 9.0.0 whose golden output was
    changed with its digest updated (only verify fails); corrupt: 8.0.0 with a byte of params.bin flipped."""
    from edgepack.build import build

    work = tmp_path_factory.mktemp("deploy-bundles")
    base = build(str(tiny_onnx(work / "tiny.onnx")), "x86_64", work / "dist", name="tiny", version="1.0.0").bundle.path
    out = work / "variants"
    out.mkdir()
    found = {"good1": base, "good2": _variant(base, out, "2.0.0"), "good3": _variant(base, out, "3.0.0")}

    bad = _variant(base, out, "9.0.0")
    manifest = _manifest(bad)
    rel = manifest["golden"]["cases"][0]["outputs"][0]
    golden = np.load(bad / rel)
    np.save(bad / rel, golden + 1.0)
    manifest["files"][rel] = {"sha256": hashlib.sha256((bad / rel).read_bytes()).hexdigest(), "size": (bad / rel).stat().st_size}
    _write_manifest(bad, manifest)
    found["bad"] = bad

    corrupt = _variant(base, out, "8.0.0")
    data = bytearray((corrupt / "params.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt / "params.bin").write_bytes(bytes(data))
    found["corrupt"] = corrupt
    return found


@pytest.fixture()
def device(tmp_path) -> Path:
    return tmp_path / "device"


@pytest.fixture(scope="session")
def cli():
    """`cli(*args, fault=None)`: run `python -m edgepack.cli` in a subprocess, optionally with a fault step."""
    def run(*args, fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("EDGEPACK_DEPLOY_FAULT", None)
        if fault:
            env["EDGEPACK_DEPLOY_FAULT"] = fault
        return subprocess.run([sys.executable, "-m", "edgepack.cli", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=timeout, check=False)
    return run


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory):
    """A real sshd on 127.0.0.1 for the whole session: (port, client config file); skips where sshd is absent."""
    if SSHD is None:
        pytest.skip("OpenSSH server (sshd) is not installed")
    directory = tmp_path_factory.mktemp("sshd")
    process, port, config = start_sshd(directory)
    yield port, config
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture()
def ssh_url(ssh_server, monkeypatch):
    """`ssh_url(path)`: an ssh:// URL for a local directory, with EDGEPACK_SSH pointing at the throwaway keys."""
    port, config = ssh_server
    monkeypatch.setenv("EDGEPACK_SSH", f"ssh -F {config}")
    return lambda path: f"ssh://{getpass.getuser()}@127.0.0.1:{port}{path}"


@pytest.fixture()
def remote(ssh_url, device) -> str:
    """An ssh:// URL for the test's device directory."""
    return ssh_url(device)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A real OCI registry (docker-registry) on loopback for the session: its "127.0.0.1:PORT"."""
    from deploy_registry import REGISTRY, start_registry

    assert REGISTRY, "docker-registry is not installed: run bash scripts/test.sh, which installs it"
    process, address = start_registry(tmp_path_factory.mktemp("registry"))
    yield address
    process.terminate()
    process.wait(timeout=10)
