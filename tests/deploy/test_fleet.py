"""Fleet deploys: several local stores and a store behind a real sshd, in parallel, failures isolated."""

from __future__ import annotations

import fcntl
import json
import threading
import time

import pytest

from edgepack.deploy import deploy
from edgepack.deploy import fleet as fleet_module
from edgepack.deploy.fleet import FleetConfig, deploy_fleet, read_device_file
from edgepack.errors import EdgepackError
from deploy_helpers import current_verifies, history, leftovers, linked, model_dir, state

pytestmark = [pytest.mark.tvm, pytest.mark.cli]


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_fleet_deploys_everywhere_it_can_and_changes_nothing_elsewhere(bundles, tmp_path, ssh_url, cli):
    a, b, locked, over_ssh = (tmp_path / name for name in ("a", "b", "locked", "ssh-device"))
    deploy(bundles["good1"], str(locked))
    before = ((model_dir(locked) / "state.json").read_text(), (model_dir(locked) / "history.jsonl").read_text())
    unreachable = "ssh://nobody@127.0.0.1:1/srv/models"
    devices_file = tmp_path / "devices.txt"
    devices_file.write_text(f"# the fleet\n{b}\n\n{ssh_url(over_ssh)}   # a board\n{unreachable}\n")
    assert read_device_file(devices_file) == [str(b), ssh_url(over_ssh), unreachable]

    with open(model_dir(locked) / ".lock", "a") as lock:  # another command is working on this device
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = cli("deploy", bundles["good2"], a, locked, "--devices", devices_file, "--jobs", "3", "--json")

    assert result.returncode == 1, result.stderr
    assert _one_line(result).startswith(f"error: 2 of 5 devices did not end with the new version active: {locked} (failed), {unreachable} (failed)")
    rows = {row["device"]: row for row in json.loads(result.stdout)}
    assert list(rows) == [str(a), str(locked), str(b), ssh_url(over_ssh), unreachable]  # the order given
    for device in (a, b):
        assert rows[str(device)]["outcome"] == "deployed" and rows[str(device)]["exit_code"] == 0
    assert rows[ssh_url(over_ssh)]["outcome"] == "deployed"
    assert "another edgepack command is working on 'tiny'" in rows[str(locked)]["detail"]
    assert "cannot reach" in rows[unreachable]["detail"]
    for device in (a, b, over_ssh):
        assert linked(device) == "2.0.0" and state(device)["active"] == "2.0.0" and current_verifies(device)
        assert leftovers(device) == []
    after = ((model_dir(locked) / "state.json").read_text(), (model_dir(locked) / "history.jsonl").read_text())
    assert after == before and linked(locked) == "1.0.0"

    table = cli("deploy", bundles["good2"], a, b, "--jobs", "2")  # already active on both: refused, shown as a table
    assert table.returncode == 1 and "already the active version" in table.stdout
    assert "device" in table.stdout and "result" in table.stdout and table.stdout.count("failed") == 2
    assert _one_line(table).startswith("error: 2 of 2 devices did not end with the new version active")


def test_fleet_exit_code_is_the_failures_shared_code(bundles, tmp_path, cli):
    devices = [tmp_path / "c", tmp_path / "d"]
    assert cli("deploy", bundles["good1"], *devices).returncode == 0
    failed = cli("deploy", bundles["bad"], *devices)
    assert failed.returncode == 5  # every device rolled back: the rollback code
    assert "rolled back" in failed.stdout
    for device in devices:
        assert linked(device) == "1.0.0" and state(device)["versions"]["9.0.0"]["health"] == "bad"
        assert history(device)[-1]["event"] == "rolled_back"


def test_workers_are_bounded(bundles, tmp_path, monkeypatch):
    running, peak, guard = [0], [0], threading.Lock()
    real_deploy = fleet_module.deploy

    def counted(*args, **kwargs):
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.3)  # let the workers overlap
            return real_deploy(*args, **kwargs)
        finally:
            with guard:
                running[0] -= 1

    monkeypatch.setattr(fleet_module, "deploy", counted)
    devices = [str(tmp_path / f"dev{i}") for i in range(3)]
    results = deploy_fleet(bundles["good1"], devices, FleetConfig(jobs=2))
    assert [row.outcome for row in results] == ["deployed"] * 3 and peak[0] == 2


def test_fleet_refuses_bad_lists_before_any_work(bundles, tmp_path):
    with pytest.raises(EdgepackError, match="names the same store"):
        deploy_fleet(bundles["good1"], [str(tmp_path / "x"), f"file://{tmp_path / 'x'}"])
    with pytest.raises(EdgepackError, match="no device given"):
        deploy_fleet(bundles["good1"], [])
    with pytest.raises(EdgepackError, match="--jobs must be at least 1"):
        deploy_fleet(bundles["good1"], [str(tmp_path / "x")], FleetConfig(jobs=0))
    with pytest.raises(EdgepackError, match="unknown device scheme"):
        deploy_fleet(bundles["good1"], [str(tmp_path / "x"), "ftp://host/x"])
    with pytest.raises(EdgepackError, match="cannot read the device list"):
        read_device_file(tmp_path / "missing.txt")
    assert not (tmp_path / "x").exists()
