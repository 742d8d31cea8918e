"""The SSH transport against a real sshd on 127.0.0.1 (skipped where OpenSSH's server is not installed)."""

from __future__ import annotations

import pytest

from edgepack.deploy import HealthCheckFailed, deploy, remove, rollback, status, versions
from edgepack.deploy.faults import FAULT_EXIT, STEPS
from edgepack.errors import EdgepackError, IntegrityError
from deploy_helpers import current_verifies, history, leftovers, linked, state
from deploy_sshd import SSHD

pytestmark = [pytest.mark.tvm, pytest.mark.skipif(SSHD is None, reason="OpenSSH server (sshd) is not installed")]


def test_deploy_rollback_remove_over_ssh(bundles, device, remote):
    assert deploy(bundles["good1"], remote).version == "1.0.0"
    assert deploy(bundles["good2"], remote).previous == "1.0.0"
    info = status(remote)
    assert (info["active"], info["previous"], info["health"]) == ("2.0.0", "1.0.0", "good")
    assert info["device"] == remote
    assert linked(device) == "2.0.0" and current_verifies(device)
    assert rollback(remote).version == "1.0.0" and linked(device) == "1.0.0"
    with pytest.raises(EdgepackError, match="is the active version"):
        remove(remote, "1.0.0")
    remove(remote, "2.0.0")
    assert [row["version"] for row in versions(remote)] == ["1.0.0"]
    assert [event["event"] for event in history(device)] == ["installed", "activated", "installed", "activated",
                                                              "activated", "removed"]
    assert leftovers(device) == []


def test_health_failure_and_corruption_over_ssh(bundles, device, remote):
    deploy(bundles["good1"], remote)
    with pytest.raises(HealthCheckFailed, match="so 1.0.0 is active"):
        deploy(bundles["bad"], remote)
    before = (device / "tiny" / "state.json").read_text()
    with pytest.raises(IntegrityError, match="params.bin"):
        deploy(bundles["corrupt"], remote)
    assert (device / "tiny" / "state.json").read_text() == before
    assert linked(device) == "1.0.0" and leftovers(device) == [] and state(device)["versions"]["9.0.0"]["health"] == "bad"


@pytest.mark.cli
@pytest.mark.parametrize("step", STEPS)
def test_kill_over_ssh(bundles, device, remote, cli, step):
    assert cli("deploy", bundles["good1"], remote).returncode == 0
    before = history(device)
    assert cli("deploy", bundles["good2"], remote, fault=step).returncode == FAULT_EXIT
    assert current_verifies(device)
    after = cli("status", remote)
    assert after.returncode == 0, after.stderr
    assert linked(device) == "1.0.0" and leftovers(device) == [] and history(device)[:len(before)] == before


def test_unreachable_device_is_one_error(bundles, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEPACK_SSH", "ssh -o ConnectTimeout=5")
    with pytest.raises(EdgepackError, match="cannot reach"):
        status("ssh://nobody@127.0.0.1:1/srv")
