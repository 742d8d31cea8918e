"""A deploy killed at each step (EDGEPACK_DEPLOY_FAULT) leaves a working active version and its history."""

from __future__ import annotations

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
    assert linked(device) == "9.0.0"  # the trial was cut short with the bad version linked
    assert cli("status", device).returncode == 0
    assert linked(device) == "1.0.0" and current_verifies(device)
    assert state(device)["versions"]["9.0.0"]["health"] == "bad"
    assert history(device)[-1]["event"] == "recovered"
