"""Bundles through a real OCI registry: push, deploy by tag and by digest, hostile artifacts, agents and rollouts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from edgepack.deploy import oci
from edgepack.deploy.channels import read_channel
from edgepack.deploy.oci import FILE_LAYER_TYPE, MANIFEST_TYPE, TITLE, parse_reference, put_manifest, upload_bytes
from edgepack.errors import EdgepackError
from deploy_helpers import current_verifies, linked, state

pytestmark = [pytest.mark.tvm, pytest.mark.cli]


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _tree(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))} if root.exists() else {}


def test_push_then_deploy_by_tag_and_by_digest_and_a_moving_tag(bundles, registry, tmp_path, cli):
    repo = f"oci://{registry}/models/tiny"
    pushed = cli("push", bundles["good1"], f"{repo}:1.0.0", "--tag", "stable")
    assert pushed.returncode == 0, pushed.stderr
    digest = pushed.stdout.split("(")[1].split(")")[0]
    assert digest.startswith("sha256:") and f"{repo}:1.0.0@{digest}" in pushed.stdout.replace("\n", "")

    first = tmp_path / "first"
    result = cli("deploy", f"{repo}:stable", first)
    assert result.returncode == 0, result.stderr
    assert linked(first) == "1.0.0" and current_verifies(first)

    assert cli("push", bundles["good2"], f"{repo}:2.0.0", "--tag", "stable").returncode == 0  # the tag moves
    assert cli("deploy", f"{repo}:stable", first).returncode == 0
    assert linked(first) == "2.0.0"

    pinned = tmp_path / "pinned"  # a digest pin keeps naming 1.0.0 after the tag moved
    assert cli("deploy", f"{repo}@{digest}", pinned).returncode == 0
    assert linked(pinned) == "1.0.0" and current_verifies(pinned)


@pytest.mark.parametrize("title", ["../escaped", "/abs/path", "runtime/../../x", "a//b", "./manifest.json"])
def test_a_hostile_artifact_is_refused_before_a_byte_lands(bundles, registry, tmp_path, cli, title):
    ref = parse_reference(f"oci://{registry}/evil/tiny:bad")
    manifest_bytes = (bundles["good1"] / "manifest.json").read_bytes()
    config = upload_bytes(ref, manifest_bytes, oci.BUNDLE_CONFIG_TYPE)
    payload = upload_bytes(ref, b"owned\n", FILE_LAYER_TYPE)
    layers = [{**config, "mediaType": FILE_LAYER_TYPE, "annotations": {TITLE: "manifest.json"}},
              {**payload, "annotations": {TITLE: title}}]
    put_manifest(ref, json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "artifactType": oci.BUNDLE_CONFIG_TYPE,
                                  "config": config, "layers": layers}).encode())
    device = tmp_path / "store" / "device"
    device.mkdir(parents=True)
    before = _tree(tmp_path)
    result = cli("deploy", str(ref), device)
    assert result.returncode == 3, result.stderr
    assert "not a plain relative path" in _one_line(result)
    assert _tree(tmp_path) == before


def test_registry_errors_are_one_line(registry, bundles, tmp_path, cli):
    for args, expected in [(("deploy", "oci://bad ref", tmp_path / "d"), "is not an OCI reference"),
                           (("deploy", f"oci://{registry}/nothing/here:1", tmp_path / "d"), "is not in the registry"),
                           (("push", bundles["good1"], "oci://127.0.0.1:1/models/tiny:1"), "cannot reach the registry"),
                           (("fleet", "rollout", f"oci://{registry}/models/tiny:1", "--device", str(tmp_path), "--wave", "10%,5%"),
                            "is not a list of increasing percentages")]:
        started = time.monotonic()
        result = cli(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert expected in _one_line(result)
        assert time.monotonic() - started < 60, "an unreachable registry is not retried for minutes (oras's backoff took ~130 s)"
    with pytest.raises(EdgepackError, match="names something that is not a channel record"):
        read_channel(parse_reference(f"oci://{registry}/models/tiny"), "1.0.0")


def _agent(device, registry, log):
    return subprocess.Popen([sys.executable, "-m", "edgepack.cli", "agent", str(device), "--from", f"oci://{registry}/fleet/tiny",
                             "--channel", "stable", "--interval", "0.5"], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


def test_agents_follow_a_staged_rollout_and_a_failing_wave_halts_it(bundles, registry, tmp_path, cli):
    repo = f"oci://{registry}/fleet/tiny"
    for name, tag in (("good1", "1.0.0"), ("bad", "9.0.0"), ("good2", "2.0.0")):
        assert cli("push", bundles[name], f"{repo}:{tag}").returncode == 0
    devices = [tmp_path / f"device-{i}" for i in range(3)]
    listing = tmp_path / "devices.txt"
    listing.write_text("".join(f"{device}\n" for device in devices))
    with open(tmp_path / "agents.log", "wb") as log:
        agents = [_agent(device, registry, log) for device in devices]
        try:
            first = cli("fleet", "rollout", f"{repo}:1.0.0", "--devices", listing, "--wave", "34%,100%", "--wave-timeout", "240")
            assert first.returncode == 0, first.stderr + first.stdout
            assert "wave 34%: 2 devices, 0 failing" in first.stdout and "wave 100%: 3 devices, 0 failing" in first.stdout
            assert all(linked(device) == "1.0.0" for device in devices)

            halted = cli("fleet", "rollout", f"{repo}:9.0.0", "--devices", listing, "--wave", "1%,50%,100%", "--wave-timeout", "240")
            assert halted.returncode == 5, halted.stderr + halted.stdout
            assert "wave 1%: 1 devices, 1 failing" in halted.stdout and "wave 50%" not in halted.stdout
            assert "had 1 failing devices (allowed 0)" in _one_line(halted)
            time.sleep(2)  # the agents see the channel moved back
            for device in devices:
                assert linked(device) == "1.0.0" and state(device)["active"] == "1.0.0" and current_verifies(device)

            last = cli("fleet", "rollout", f"{repo}:2.0.0", "--devices", listing, "--wave", "50%,100%", "--wave-timeout", "240")
            assert last.returncode == 0, last.stderr + last.stdout
            assert all(linked(device) == "2.0.0" and current_verifies(device) for device in devices)
            status = cli("fleet", "status", "--devices", listing, "--json")
            rows = json.loads(status.stdout)
            assert [row["version"] for row in rows] == ["2.0.0"] * 3 and {row["outcome"] for row in rows} <= {"deployed", "unchanged"}
        finally:
            for agent in agents:
                agent.terminate()
            for agent in agents:
                agent.wait(timeout=30)
