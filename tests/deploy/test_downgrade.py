"""No downgrade: an older version, or the same version with other files, is refused unless forced."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest

from edgepack.deploy import HealthCheckFailed, deploy, rollback
from edgepack.deploy.versioning import compare_versions, version_key
from edgepack.errors import EdgepackError
from deploy_helpers import current_verifies, history, linked, model_dir, state


def _snapshot(device) -> tuple:
    root = model_dir(device)
    return ((root / "state.json").read_text(), (root / "history.jsonl").read_text(),
            sorted(p.name for p in (root / "versions").iterdir()), linked(device))


def _other_files(bundle, into, version: str):
    """A copy carrying `version` whose golden input file differs (digest updated): same number, other content."""
    copy = into / f"tiny-{version}-other"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] = version
    rel = manifest["golden"]["cases"][0]["inputs"][0]
    np.save(copy / rel, np.load(copy / rel) * 2.0)
    manifest["files"][rel] = {"sha256": hashlib.sha256((copy / rel).read_bytes()).hexdigest(), "size": (copy / rel).stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("older, newer", [("1.9.0", "1.10.0"), ("2.0.0rc1", "2.0.0"), ("1.0.0", "1.0.1.post1"), ("0.9", "1")])
def test_versions_compare_as_pep440(older, newer):
    assert compare_versions(older, newer) == -1 and compare_versions(newer, older) == 1
    assert compare_versions("1.0", "1.0.0") == 0
    assert compare_versions("nightly-build", "1.0") is None


def test_dotted_numbers_without_packaging(monkeypatch):
    monkeypatch.setitem(sys.modules, "packaging.version", None)  # `from packaging.version import ...` now fails
    assert version_key("1.10") == (1, (1, 10)) and compare_versions("1.9", "1.10") == -1
    assert compare_versions("v2.0", "2") == 0 and version_key("2.0rc1") is None


@pytest.mark.tvm
def test_older_version_is_refused_unless_forced_and_rollback_stays_allowed(bundles, device):
    deploy(bundles["good1"], str(device))
    deploy(bundles["good3"], str(device))
    rollback(str(device))  # 1.0.0 again: a retained, checked version may always be rolled back to
    assert linked(device) == "1.0.0"
    before = _snapshot(device)
    with pytest.raises(EdgepackError, match=r"tiny 2\.0\.0 is older than 3\.0\.0 on the device \(a downgrade\)"):
        deploy(bundles["good2"], str(device))
    assert _snapshot(device) == before

    result = deploy(bundles["good2"], str(device), force=True)
    assert result.version == "2.0.0" and linked(device) == "2.0.0" and current_verifies(device)
    installed = [event for event in history(device) if event["event"] == "installed"][-1]
    assert installed["version"] == "2.0.0" and installed["downgrade_from"] == "3.0.0"
    assert rollback(str(device), to="3.0.0").version == "3.0.0"


@pytest.mark.tvm
def test_a_version_that_never_passed_does_not_block_a_fix(bundles, device):
    deploy(bundles["good1"], str(device))
    with pytest.raises(HealthCheckFailed):
        deploy(bundles["bad"], str(device))  # 9.0.0, rolled back
    assert deploy(bundles["good2"], str(device)).version == "2.0.0"
    assert state(device)["versions"]["9.0.0"]["health"] == "bad"


@pytest.mark.tvm
def test_same_version_with_other_files_is_refused(bundles, device, tmp_path):
    deploy(bundles["good1"], str(device))
    deploy(bundles["good2"], str(device))
    before = _snapshot(device)
    with pytest.raises(EdgepackError, match=r"tiny 1\.0\.0 on the device holds other files"):
        deploy(_other_files(bundles["good1"], tmp_path, "1.0.0"), str(device))
    with pytest.raises(EdgepackError, match=r"tiny 2\.0\.0 is active on the device with other files"):
        deploy(_other_files(bundles["good1"], tmp_path, "2.0.0"), str(device))
    assert _snapshot(device) == before


@pytest.mark.tvm
@pytest.mark.cli
def test_cli_downgrade_is_one_line_exit_1(bundles, device, cli):
    assert cli("deploy", bundles["good2"], device).returncode == 0
    refused = cli("deploy", bundles["good1"], device)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == ["error: tiny 1.0.0 is older than 2.0.0 on the device (a downgrade); deploy a newer "
                                                   "version, roll back to a retained one with `edgepack rollback DEVICE --to VERSION`, "
                                                   "or pass --force to install it anyway"]
    assert cli("deploy", bundles["good1"], device, "--force").returncode == 0 and linked(device) == "1.0.0"
