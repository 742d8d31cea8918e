"""Staged rollouts: move a channel to a new bundle in waves, and halt when a wave fails.

The rollout admits a growing share of the fleet to the new bundle (1%, 10%, 100% by default; each
wave at least one device), waits for the admitted devices' agents to report, and counts the devices
that did not end on the new version. More than `max_failures` halts the rollout: the channel goes
back to the previous bundle for every device (agents roll back to it), and the command exits 5.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from edgepack.deploy.agent import FINAL, read_report
from edgepack.deploy.channels import ChannelRecord, device_key, read_channel, write_channel
from edgepack.deploy.device import parse_device
from edgepack.deploy.fleet import check_devices
from edgepack.deploy.health import EXIT_ROLLED_BACK
from edgepack.deploy.oci import Reference, bundle_annotations, fetch_manifest
from edgepack.errors import BundleError, EdgepackError

OK = ("deployed", "unchanged")


@dataclass(frozen=True)
class RolloutConfig:
    """The waves (percent of the fleet, increasing, ending at 100), the failures tolerated, the wait per wave."""

    waves: tuple[float, ...] = (1.0, 10.0, 100.0)
    max_failures: int = 0
    wave_timeout_s: float = 600.0
    poll_s: float = 1.0


@dataclass(frozen=True)
class WaveResult:
    percent: float
    devices: tuple[str, ...]
    outcomes: dict[str, str]

    @property
    def failures(self) -> list[str]:
        return [device for device, outcome in self.outcomes.items() if outcome not in OK]


class RolloutHalted(BundleError):
    """A wave had more failures than allowed; the channel was moved back (exit 5)."""

    exit_code = EXIT_ROLLED_BACK

    def __init__(self, problem: str, fix: str, waves: list[WaveResult]):
        super().__init__(problem, fix)
        self.waves = waves


def parse_waves(text: str) -> tuple[float, ...]:
    """`1%,10%,100%` → (1.0, 10.0, 100.0); increasing, each in (0, 100], the last 100."""
    try:
        waves = tuple(float(part.strip().rstrip("%")) for part in text.split(","))
    except ValueError:
        waves = ()
    if not waves or any(not 0 < wave <= 100 for wave in waves) or list(waves) != sorted(set(waves)) or waves[-1] != 100:
        raise EdgepackError(f"--wave '{text}' is not a list of increasing percentages ending at 100%", "pass e.g. --wave 1%,10%,100%")
    return waves


def wave_members(devices: list[str], percent: float) -> list[str]:
    """The devices admitted at `percent`: a stable order by device key, so each wave contains the last."""
    ordered = sorted(devices, key=device_key)
    return ordered[:max(1, math.ceil(len(devices) * percent / 100))]


def _outcome(device: str, channel: str, digest: str) -> str | None:
    """The device's final outcome for `digest`, or None while its agent has not finished with it."""
    fs, root = parse_device(device)
    report = read_report(fs, root, channel)
    if report is None or report.get("wanted") != digest or report.get("outcome") not in FINAL:
        return None
    return report["outcome"]


def _wait(devices: list[str], channel: str, digest: str, config: RolloutConfig) -> dict[str, str]:
    deadline = time.monotonic() + config.wave_timeout_s
    outcomes: dict[str, str] = {}
    while True:
        for device in devices:
            if device not in outcomes:
                found = _outcome(device, channel, digest)
                if found is not None:
                    outcomes[device] = found
        if len(outcomes) == len(devices) or time.monotonic() > deadline:
            return {device: outcomes.get(device, "no report") for device in devices}
        time.sleep(config.poll_s)


def rollout(source: Reference, channel: str, devices: list[str], config: RolloutConfig = RolloutConfig(),
            on_wave=None) -> list[WaveResult]:
    """Move `channel` of source's repository to the bundle `source` names, wave by wave."""
    check_devices(devices)
    manifest, digest, _ = fetch_manifest(source)
    bundle_annotations(manifest, source)
    repo = source.with_tag(channel)
    current = read_channel(repo, channel)
    previous = (current.bundle if current.admitted is None else current.previous) if current else None
    waves: list[WaveResult] = []
    for percent in config.waves:
        members = wave_members(devices, percent)
        admitted = None if len(members) == len(devices) else tuple(device_key(device) for device in members)
        write_channel(repo, channel, ChannelRecord(digest, previous, admitted))
        wave = WaveResult(percent, tuple(members), _wait(members, channel, digest, config))
        waves.append(wave)
        if on_wave is not None:
            on_wave(wave)
        if len(wave.failures) > config.max_failures:
            write_channel(repo, channel, ChannelRecord(previous, None, None, halted=digest))
            raise RolloutHalted(
                f"wave {percent:g}% had {len(wave.failures)} failing devices (allowed {config.max_failures}): "
                f"{', '.join(wave.failures[:5])}{' …' if len(wave.failures) > 5 else ''}; channel '{channel}' is back on "
                f"{previous[:19] if previous else 'nothing'}", "fix the bundle and roll out a new version", waves)
    return waves
