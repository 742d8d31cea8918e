"""A hostile bundle is refused on the host before one byte reaches the device (issue 15, item 1).

Each case is a copy of a good bundle edited as an attacker would: a manifest entry `../X`, an entry
that walks through a link inside the bundle to overwrite a file elsewhere, a listed file that is a
link, and an unsigned bundle for a device with a keyring. Every one must exit 3 and leave the
whole store (every byte, every link) and the file aimed at unchanged, on a local store and over
ssh, for `deploy`, fleet deploys and `bench --device`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from edgepack.bundle.signing import generate_keypair
from edgepack.deploy import deploy
from edgepack.deploy.device import parse_device
from edgepack.errors import EdgepackError
from deploy_helpers import linked
from deploy_sshd import SSHD

pytestmark = [pytest.mark.tvm, pytest.mark.cli]


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under `root` with its kind and content (a link's target, a file's SHA-256), links not followed."""
    found = {}
    for directory, subdirs, names in os.walk(root):
        for name in subdirs + names:
            path = Path(directory, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = "link " + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = "file " + hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _entry(path: Path) -> dict:
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size}


def _edit(bundle: Path, change) -> Path:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = "7.0.0"
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return bundle


def hostile_bundles(good: Path, work: Path) -> dict[str, tuple[Path, Path]]:
    """name → (bundle, the outside file it aims at); the device store is `work/device`."""
    cases = {}

    dotdot = work / "dotdot" / "b"
    shutil.copytree(good, dotdot)
    (work / "dotdot" / "X").write_text("attacker's file\n")
    _edit(dotdot, lambda m: m["files"].update({"../X": _entry(work / "dotdot" / "X")}))
    cases["dotdot"] = (dotdot, work / "device" / "tiny" / "X")

    # `l` links to a deep chain; the entry climbs out of it on the host and out of staging on the device
    walk = work / "walk" / "b"
    shutil.copytree(good, walk)
    chain = work / "walk" / "chain" / "a" / "b" / "c" / "d"
    chain.mkdir(parents=True)
    (work / "walk" / "chain" / "victim").mkdir()
    (work / "walk" / "chain" / "victim" / "authorized_keys").write_text("ssh-ed25519 ATTACKER\n")
    os.symlink(chain, walk / "l")
    rel = "l/../../../../victim/authorized_keys"
    _edit(walk, lambda m: m["files"].update({rel: _entry(work / "walk" / "chain" / "victim" / "authorized_keys")}))
    cases["walk"] = (walk, work / "victim" / "authorized_keys")

    linked_file = work / "linkfile" / "b"
    shutil.copytree(good, linked_file)
    outside = work / "linkfile" / "params.bin"
    shutil.move(linked_file / "params.bin", outside)
    os.symlink(outside, linked_file / "params.bin")
    _edit(linked_file, lambda m: None)
    cases["link"] = (linked_file, outside)
    return cases


@pytest.fixture(params=["local", "ssh"])
def store_url(request, device):
    if request.param == "local":
        return str(device)
    if SSHD is None:
        pytest.skip("OpenSSH server (sshd) is not installed")
    return request.getfixturevalue("ssh_url")(device)


def test_hostile_bundles_are_refused_before_any_write(bundles, tmp_path, device, store_url, cli):
    device.mkdir()
    deploy(bundles["good1"], store_url)
    victim = tmp_path / "victim" / "authorized_keys"
    victim.parent.mkdir()
    victim.write_text("ssh-ed25519 OWNER\n")
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_keypair(keys / "builder")
    cases = {name: (bundle, target, []) for name, (bundle, target) in hostile_bundles(bundles["good1"], tmp_path).items()}
    cases["unsigned"] = (bundles["good2"], victim, ["--keyring", keys])  # the device trusts a key; the bundle is not signed
    before = tree_digest(device)
    for name, (bundle, target, options) in cases.items():
        aimed = target.read_bytes() if target.exists() else None
        result = cli("deploy", bundle, store_url, *options)
        assert result.returncode == 3, (name, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), (name, result.stderr)
        assert tree_digest(device) == before, name  # no `bad` version, no staging, no state change
        assert (target.read_bytes() if target.exists() else None) == aimed, name
    assert victim.read_text() == "ssh-ed25519 OWNER\n" and linked(device) == "1.0.0"


def test_fleet_and_bench_device_check_before_copying(bundles, tmp_path, cli):
    devices = [tmp_path / "a", tmp_path / "b"]
    bundle = hostile_bundles(bundles["good1"], tmp_path)["dotdot"][0]
    fleet = cli("deploy", bundle, *devices)
    assert fleet.returncode == 3 and "leaves the bundle" in fleet.stderr, fleet.stderr
    bench = cli("bench", bundle, "--device", devices[0])
    assert bench.returncode == 3, bench.stderr
    assert not any(path.exists() for path in devices) and not (tmp_path / "X").exists()


def test_ssh_host_that_looks_like_an_option_is_refused():
    for device in ("ssh://-oProxyCommand=touch%20x/srv", "ssh://-oProxyCommand=x@host/srv"):
        with pytest.raises(EdgepackError, match="starts with '-'"):
            parse_device(device)
