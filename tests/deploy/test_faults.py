"""A deploy killed at each step (EDGEPACK_DEPLOY_FAULT) leaves a working active version and its history."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepack.deploy.faults import FAULT_EXIT, STEPS
from deploy_helpers import current_verifies, history, leftovers, linked, state

pytestmark = [pytest.mark.tvm, pytest.mark.cli]

LEFT_BY = {"copy": ".staging-", "stage": ".staging-", "link": ".current-"}  # what each kill leaves behind
ON_DISK = {"copy": (False, False), "stage": (False, False), "rename": (True, False),  # (directory, in state)
           "link": (True, True), "swap": (True, True), "health": (True, True)}


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_each_step(bundles, device, cli, step):
    assert cli("deploy", bundles["good1"], device).returncode == 0
    before = history(device)

    killed = cli("deploy", bundles["good2"], device, fault=step)
    assert killed.returncode == FAULT_EXIT, killed.stderr
    assert current_verifies(device)  # before any edgepack command runs again
    assert history(device)[:len(before)] == before
    left = leftovers(device)
    assert any(name.startswith(LEFT_BY[step]) for name in left) if step in LEFT_BY else not left
    assert ((device / "tiny" / "versions" / "2.0.0").is_dir(), "2.0.0" in state(device)["versions"]) == ON_DISK[step]

    after = cli("status", device)  # the next start cleans up and undoes an interrupted trial
    assert after.returncode == 0, after.stderr
    assert "active:     1.0.0" in after.stdout
    assert linked(device) == "1.0.0" and current_verifies(device)
    assert state(device)["trial"] is None and leftovers(device) == []
    assert history(device)[:len(before)] == before

    again = cli("deploy", bundles["good2"], device, "--force")
    assert again.returncode == 0, again.stderr
    assert linked(device) == "2.0.0" and current_verifies(device)
    assert history(device)[:len(before)] == before


def test_kill_during_a_failing_health_check_keeps_the_good_version(bundles, device, cli):
    assert cli("deploy", bundles["good1"], device).returncode == 0
    assert cli("deploy", bundles["bad"], device, fault="health").returncode == FAULT_EXIT
    assert linked(device) == "1.0.0"  # the trial is checked in its own directory: `current` never left the good version
    assert cli("status", device).returncode == 0
    assert linked(device) == "1.0.0" and current_verifies(device)
    assert state(device)["versions"]["9.0.0"]["health"] == "bad"
    assert history(device)[-1]["event"] == "recovered"


def _blocking_bundle(good: Path, work: Path, marker: Path) -> Path:
    """A bundle (6.0.0) whose loader announces itself and then blocks, so a deploy can be killed mid-check."""
    bundle = work / "blocking"
    shutil.copytree(good, bundle)
    loader = bundle / "runtime" / "edgepack-run"
    loader.write_text(f"#!/bin/sh\ntouch {marker}\nexec sleep 120\n")
    loader.chmod(0o755)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = "6.0.0"
    manifest["files"]["runtime/edgepack-run"] = {"sha256": hashlib.sha256(loader.read_bytes()).hexdigest(), "size": loader.stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return bundle


def test_current_stays_on_the_good_version_while_a_trial_is_checked(bundles, device, tmp_path, cli):
    """Issue 21, item 7: a deploy killed during the health check never leaves `current` on the unverified trial."""
    assert cli("deploy", bundles["good1"], device).returncode == 0
    marker = tmp_path / "health-check-running"
    bundle = _blocking_bundle(bundles["good1"], tmp_path, marker)
    process = subprocess.Popen([sys.executable, "-m", "edgepack.cli", "deploy", str(bundle), str(device)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the health check never started"
        assert state(device)["trial"]["version"] == "6.0.0"  # the check of 6.0.0 is running now
        assert linked(device) == "1.0.0" and current_verifies(device)  # what a service starting now would run
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # deploy and the loader it started, as a power cut would
        process.wait()
    assert linked(device) == "1.0.0" and current_verifies(device)
    after = cli("status", device)
    assert after.returncode == 0 and "active:     1.0.0" in after.stdout, after.stderr
    assert state(device)["versions"]["6.0.0"]["health"] == "bad" and linked(device) == "1.0.0"
