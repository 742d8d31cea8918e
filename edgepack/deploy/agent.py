"""The pull agent: runs beside a device store, follows a release channel, installs what it carries.

Each poll reads the channel record, works out the bundle digest this device should run and, when it
is not the active one, pulls it into a private directory and installs it through the same
health-gated `deploy` (or `rollback`, when that version is already on the device). A digest that
failed its health check here is not tried again until the channel moves on. The outcome of every
poll is written to `<root>/.edgepack-agent/<channel>.json`, which `edgepack fleet status` and
`rollout` read.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from edgepack.deploy.channels import read_channel
from edgepack.deploy.device import parse_device
from edgepack.deploy.fs import DeviceFS
from edgepack.deploy.health import HealthCheckFailed, HealthConfig
from edgepack.deploy.layout import unique
from edgepack.deploy.oci import Reference, bundle_annotations, fetch_manifest, pull
from edgepack.deploy.operations import deploy, rollback, versions
from edgepack.deploy.state import now
from edgepack.errors import BundleError, EdgepackError

REPORT_DIR = ".edgepack-agent"
FINAL = ("deployed", "unchanged", "rolled back", "failed")


@dataclass(frozen=True)
class AgentConfig:
    """Where the agent pulls from, which channel it follows, and how the health check runs."""

    repo: Reference
    channel: str = "stable"
    device_id: str | None = None  # default: the DEVICE argument
    interval_s: float = 30.0
    health: HealthConfig = field(default_factory=HealthConfig)


def report_path(root: PurePosixPath, channel: str) -> PurePosixPath:
    return root / REPORT_DIR / f"{channel}.json"


def read_report(fs: DeviceFS, root: PurePosixPath, channel: str) -> dict | None:
    """The agent's last report on this device, or None (no agent yet, or an unreadable report)."""
    text = fs.read_text(report_path(root, channel))
    try:
        report = json.loads(text) if text else None
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _write_report(fs: DeviceFS, root: PurePosixPath, channel: str, report: dict) -> None:
    fs.mkdirs(root / REPORT_DIR)
    fs.write_atomic(report_path(root, channel), json.dumps(report, indent=2, sort_keys=True) + "\n",
                    unique(root / REPORT_DIR, f".{channel}.json."))


def _installed(device: str, model: str) -> dict[str, bool]:
    """Installed versions of a model on the device → whether each is active (empty when none)."""
    try:
        return {row["version"]: row["active"] for row in versions(device, model)}
    except EdgepackError:
        return {}


def _apply(device: str, ref: Reference, config: AgentConfig) -> tuple[str, str, str]:
    """Bring the device to the bundle `ref` pins; returns (outcome, version, detail)."""
    manifest, _, _ = fetch_manifest(ref)
    facts = bundle_annotations(manifest, ref)
    model, version = facts.get("name", ""), facts.get("version", "")
    installed = _installed(device, model)
    if installed.get(version):
        return "unchanged", version, f"{model} {version} is already active"
    try:
        if version in installed:
            result = rollback(device, to=version, model=model, health=config.health)
        else:
            scratch = Path(tempfile.mkdtemp(prefix="edgepack-agent-"))
            try:
                bundle, _ = pull(ref, scratch)
                result = deploy(bundle, device, health=config.health)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except HealthCheckFailed as exc:
        return "rolled back", version, exc.problem
    return "deployed", version, f"{result.model} {result.version} is active ({result.health.detail})"


def poll_once(device: str, config: AgentConfig) -> dict:
    """One poll: read the channel, install what it wants for this device, write and return the report."""
    fs, root = parse_device(device)
    device_id = config.device_id or device
    report = read_report(fs, root, config.channel) or {"failed": []}
    report.update(device=device_id, channel=config.channel, time=now())
    try:
        record = read_channel(config.repo, config.channel)
        wanted = record.wanted_by(device_id) if record else None
        report["wanted"] = wanted
        if wanted is None:
            report.update(outcome="idle", detail=f"channel '{config.channel}' carries nothing for this device")
        elif wanted in report["failed"]:
            report.update(outcome="failed", detail=f"{wanted[:19]} failed here before; waiting for the channel to move on")
        else:
            outcome, version, detail = _apply(device, config.repo.with_digest(wanted), config)
            report.update(outcome=outcome, version=version, detail=detail)
            if outcome == "rolled back":
                report["failed"].append(wanted)
            else:
                report["installed"] = wanted
    except BundleError as exc:  # the registry or the bundle: reported, and tried again at the next poll
        report.update(outcome="error", detail=f"{exc.problem}; {exc.fix}")
    _write_report(fs, root, config.channel, report)
    return report


def run_agent(device: str, config: AgentConfig, polls: int | None = None, on_report=None) -> None:
    """Poll every `interval_s` seconds, forever or `polls` times; `on_report` sees each report."""
    if config.interval_s <= 0:
        raise EdgepackError(f"--interval must be positive, got {config.interval_s}", "pass --interval SECONDS")
    parse_device(device)
    done = 0
    while polls is None or done < polls:
        report = poll_once(device, config)
        if on_report is not None:
            on_report(report)
        done += 1
        if polls is None or done < polls:
            time.sleep(config.interval_s)
