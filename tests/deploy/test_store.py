"""Device store: layout, activation, rollback, removal, several models, cleanup of leftovers."""

from __future__ import annotations

import json
import shutil

import pytest

from edgepack.deploy import deploy, remove, rollback, status, versions
from edgepack.errors import EdgepackError
from deploy_helpers import current_verifies, history, leftovers, linked, model_dir, state

pytestmark = pytest.mark.tvm


def test_first_deploy_writes_the_documented_layout(bundles, device):
    result = deploy(bundles["good1"], str(device))
    assert (result.model, result.version, result.previous, result.health.passed) == ("tiny", "1.0.0", None, True)
    root = model_dir(device)
    assert (root / "versions" / "1.0.0" / "manifest.json").is_file()
    assert linked(device) == "1.0.0" and current_verifies(device)
    saved = state(device)
    assert (saved["active"], saved["previous"], saved["trial"]) == ("1.0.0", None, None)
    assert saved["versions"]["1.0.0"]["health"] == "good" and saved["versions"]["1.0.0"]["last_check"]
    assert [event["event"] for event in history(device)] == ["installed", "activated"]
    assert leftovers(device) == []


def test_deploy_rollback_and_remove(bundles, device):
    deploy(bundles["good1"], str(device))
    deploy(bundles["good2"], f"file://{device}")
    assert (status(str(device))["active"], status(str(device))["previous"]) == ("2.0.0", "1.0.0")
    assert linked(device) == "2.0.0"

    back = rollback(str(device))
    assert (back.version, back.previous) == ("1.0.0", "2.0.0") and linked(device) == "1.0.0"
    assert rollback(str(device), to="2.0.0").version == "2.0.0"

    with pytest.raises(EdgepackError, match="is the active version"):
        remove(str(device), "2.0.0")
    remove(str(device), "1.0.0")
    assert not (model_dir(device) / "versions" / "1.0.0").exists()
    assert [row["version"] for row in versions(str(device))] == ["2.0.0"]
    assert state(device)["previous"] is None
    assert [event["event"] for event in history(device)][-2:] == ["activated", "removed"]
    with pytest.raises(EdgepackError, match="no previous version"):
        rollback(str(device))
    assert current_verifies(device)


def test_same_version_needs_force_and_never_replaces_the_active_one(bundles, device):
    deploy(bundles["good1"], str(device))
    deploy(bundles["good2"], str(device))
    with pytest.raises(EdgepackError, match="already on the device"):
        deploy(bundles["good1"], str(device))
    with pytest.raises(EdgepackError, match="already the active version"):
        deploy(bundles["good2"], str(device))
    with pytest.raises(EdgepackError, match="cannot be replaced in place"):
        deploy(bundles["good2"], str(device), force=True)
    result = deploy(bundles["good1"], str(device), force=True)
    assert result.version == "1.0.0" and linked(device) == "1.0.0" and current_verifies(device)
    assert "replaced" in [event["event"] for event in history(device)]


def test_several_models_need_model(bundles, device, tmp_path):
    other = tmp_path / "other-1.0.0-x86_64"
    shutil.copytree(bundles["good1"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["name"] = "other"
    (other / "manifest.json").write_text(json.dumps(manifest))
    deploy(bundles["good1"], str(device))
    deploy(other, str(device))
    with pytest.raises(EdgepackError, match="several models"):
        status(str(device))
    assert status(str(device), model="other")["active"] == "1.0.0"
    with pytest.raises(EdgepackError, match="no model 'nope'.*other, tiny"):
        status(str(device), model="nope")


def test_stale_staging_is_cleaned_at_the_next_start(bundles, device):
    deploy(bundles["good1"], str(device))
    (model_dir(device) / ".staging-dead").mkdir()
    (model_dir(device) / ".staging-dead" / "model.so").write_bytes(b"half")
    (model_dir(device) / ".state.json.abcd").write_text("{")
    status(str(device))
    assert leftovers(device) == []


def test_device_arguments(device):
    with pytest.raises(EdgepackError, match="needs a host and a store directory"):
        deploy(__file__, "ssh://pi@host")
    with pytest.raises(EdgepackError, match="unknown device scheme"):
        status("ftp://host/x")
    with pytest.raises(EdgepackError, match="does not exist"):
        status(str(device))


def test_a_second_command_is_refused_while_one_holds_the_lock(bundles, device):
    import fcntl

    deploy(bundles["good1"], str(device))
    with open(model_dir(device) / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(EdgepackError, match="another edgepack command is working on 'tiny'"):
            deploy(bundles["good2"], str(device))
    assert deploy(bundles["good2"], str(device)).version == "2.0.0"
