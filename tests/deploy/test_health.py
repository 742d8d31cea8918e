"""Health-gated activation: a failing, slow or timed-out version is rolled back; a corrupt one refused."""

from __future__ import annotations

import pytest

from edgepack.deploy import EXIT_ROLLED_BACK, HealthCheckFailed, HealthConfig, deploy, rollback
from edgepack.errors import IntegrityError
from deploy_helpers import current_verifies, history, leftovers, linked, model_dir, state

pytestmark = pytest.mark.tvm


def test_failing_golden_check_restores_the_previous_version(bundles, device):
    deploy(bundles["good1"], str(device))
    with pytest.raises(HealthCheckFailed, match=r"tiny 9\.0\.0 failed its health check \(verify exited 4.*so 1\.0\.0 is active") as caught:
        deploy(bundles["bad"], str(device))
    assert caught.value.exit_code == EXIT_ROLLED_BACK == 5
    saved = state(device)
    assert (saved["active"], saved["previous"], saved["trial"]) == ("1.0.0", None, None)
    assert saved["versions"]["9.0.0"]["health"] == "bad"
    assert linked(device) == "1.0.0" and current_verifies(device)
    assert history(device)[-1]["event"] == "rolled_back" and history(device)[-1]["active"] == "1.0.0"


def test_failing_first_deploy_leaves_nothing_active(bundles, device):
    with pytest.raises(HealthCheckFailed, match="so no version is active"):
        deploy(bundles["bad"], str(device))
    assert linked(device) is None and state(device)["active"] is None


def test_latency_budget_and_timeout_fail_the_check(bundles, device):
    deploy(bundles["good1"], str(device))
    with pytest.raises(HealthCheckFailed, match="exceeds the budget"):
        deploy(bundles["good2"], str(device), health=HealthConfig(latency_budget_ms=1e-6))
    with pytest.raises(HealthCheckFailed, match="timed out"):
        deploy(bundles["good3"], str(device), health=HealthConfig(timeout_s=0.001))
    assert linked(device) == "1.0.0" and state(device)["active"] == "1.0.0"
    result = deploy(bundles["good2"], str(device), force=True, health=HealthConfig(latency_budget_ms=10_000))
    assert result.health.median_ms is not None and state(device)["versions"]["2.0.0"]["median_ms"] == result.health.median_ms


def test_rollback_is_health_gated_too(bundles, device):
    deploy(bundles["good1"], str(device))
    with pytest.raises(HealthCheckFailed):
        deploy(bundles["bad"], str(device))
    with pytest.raises(HealthCheckFailed, match="9.0.0 failed.*so 1.0.0 is active"):
        rollback(str(device), to="9.0.0")
    assert linked(device) == "1.0.0"


def test_corrupt_bundle_is_refused_by_digest_and_nothing_changes(bundles, device):
    deploy(bundles["good1"], str(device))
    before = ((model_dir(device) / "state.json").read_text(), (model_dir(device) / "history.jsonl").read_text())
    with pytest.raises(IntegrityError, match="params.bin"):
        deploy(bundles["corrupt"], str(device))
    after = ((model_dir(device) / "state.json").read_text(), (model_dir(device) / "history.jsonl").read_text())
    assert after == before
    assert sorted(p.name for p in (model_dir(device) / "versions").iterdir()) == ["1.0.0"]
    assert leftovers(device) == [] and linked(device) == "1.0.0"


@pytest.mark.cli
def test_cli_exit_codes_and_one_line(bundles, device, cli):
    ok = cli("deploy", bundles["good1"], device)
    assert ok.returncode == 0 and "tiny 1.0.0 is active" in ok.stdout
    failed = cli("deploy", bundles["bad"], device)
    assert failed.returncode == 5
    assert failed.stderr.strip().splitlines() == [failed.stderr.strip()]
    assert failed.stderr.startswith("error: tiny 9.0.0 failed its health check") and "so 1.0.0 is active" in failed.stderr
    corrupt = cli("deploy", bundles["corrupt"], device)
    assert corrupt.returncode == 3 and "params.bin" in corrupt.stderr
    refused = cli("remove", device, "1.0.0")
    assert refused.returncode == 1 and refused.stderr.startswith("error: tiny 1.0.0 is the active version;")
    status = cli("status", device)
    assert status.returncode == 0 and "active:     1.0.0" in status.stdout and "health:     good" in status.stdout
    listed = cli("versions", device)
    assert listed.returncode == 0 and listed.stdout.splitlines()[0].startswith("* 1.0.0")
    assert cli("remove", device, "9.0.0").returncode == 0
    assert cli("rollback", device).returncode == 1


def test_interrupt_during_the_trial_restores_the_active_version(bundles, device, monkeypatch):
    import edgepack.deploy.activate as activate

    deploy(bundles["good1"], str(device))
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(activate, "check_health", interrupted)
    with pytest.raises(KeyboardInterrupt):
        deploy(bundles["good2"], str(device))
    assert linked(device) == "1.0.0" and state(device)["trial"] is None
    assert state(device)["versions"]["2.0.0"]["health"] == "bad"
