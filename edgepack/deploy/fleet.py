"""Fleet deploys: one bundle to several devices in parallel, a bounded number at a time.

Each device is an independent `deploy` (its own store, lock, staging and health check), so a
failure on one device never changes another. The result is one row per device, in the order given.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from edgepack.deploy.checked import check_on_host
from edgepack.deploy.device import parse_device
from edgepack.deploy.health import EXIT_ROLLED_BACK, HealthCheckFailed, HealthConfig
from edgepack.deploy.operations import deploy
from edgepack.errors import EXIT_INTERNAL, EXIT_USER, BundleError, EdgepackError, first_line


@dataclass(frozen=True)
class FleetConfig:
    """How many devices are worked on at once, and what each single deploy gets."""

    jobs: int = 4
    force: bool = False
    health: HealthConfig = HealthConfig()


@dataclass(frozen=True)
class DeviceResult:
    """What happened on one device: `deployed`, `rolled back` (health check failed) or `failed` (nothing changed)."""

    device: str
    outcome: str
    exit_code: int
    detail: str
    seconds: float
    previous: str | None = None


class FleetFailed(BundleError):
    """Some devices did not end with the new version active; exit code: theirs when they agree, else 1."""

    def __init__(self, problem: str, fix: str, exit_code: int):
        super().__init__(problem, fix)
        self.exit_code = exit_code


def read_device_file(path: Path) -> list[str]:
    """Devices from a file, one per line; blank lines and `#` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgepackError(f"cannot read the device list '{path}' ({exc.strerror})", "pass a text file with one device per line") from None
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def check_devices(devices: list[str]) -> list[str]:
    """Refuse an empty list, an unparsable device and the same store named twice (before any work)."""
    if not devices:
        raise EdgepackError("no device given", "pass one or more DEVICE arguments or --devices FILE")
    seen: dict[str, str] = {}
    for device in devices:
        fs, root = parse_device(device)
        key = fs.describe(root)
        if key in seen:
            raise EdgepackError(f"device '{device}' names the same store as '{seen[key]}'", "list each device once")
        seen[key] = device
    return devices


def _deploy_one(bundle: Path, device: str, config: FleetConfig) -> DeviceResult:
    start = time.monotonic()
    try:
        result = deploy(bundle, device, force=config.force, health=config.health)
    except HealthCheckFailed as exc:
        return DeviceResult(device, "rolled back", EXIT_ROLLED_BACK, exc.problem, time.monotonic() - start)
    except BundleError as exc:
        return DeviceResult(device, "failed", exc.exit_code, f"{exc.problem}; {exc.fix}", time.monotonic() - start)
    except Exception as exc:  # a bug or an OS error on one device must not stop the others
        return DeviceResult(device, "failed", EXIT_INTERNAL, f"internal error ({type(exc).__name__}: {first_line(exc)})",
                            time.monotonic() - start)
    return DeviceResult(device, "deployed", 0, f"{result.model} {result.version} is active ({result.health.detail})",
                        time.monotonic() - start, result.previous)


def deploy_fleet(bundle: Path, devices: list[str], config: FleetConfig = FleetConfig()) -> list[DeviceResult]:
    """Deploy `bundle` to every device, at most `config.jobs` at a time; one DeviceResult per device, in order.

    The bundle is checked once first (as a loader would, `check_on_host`), so a broken or hostile
    bundle fails once and touches no device; each device's deploy checks it again with its keyring.
    """
    if config.jobs < 1:
        raise EdgepackError(f"--jobs must be at least 1, got {config.jobs}", "pass --jobs 1 or more")
    check_on_host(Path(bundle))
    check_devices(devices)
    with ThreadPoolExecutor(max_workers=min(config.jobs, len(devices)), thread_name_prefix="edgepack-fleet") as pool:
        futures = [pool.submit(_deploy_one, Path(bundle), device, config) for device in devices]
        return [future.result() for future in futures]


def fleet_error(results: list[DeviceResult]) -> FleetFailed | None:
    """The error to exit with when any device failed (None when every one deployed)."""
    failed = [row for row in results if row.exit_code != 0]
    if not failed:
        return None
    codes = {row.exit_code for row in failed}
    code = codes.pop() if len(codes) == 1 else EXIT_USER
    names = ", ".join(f"{row.device} ({row.outcome})" for row in failed)
    return FleetFailed(f"{len(failed)} of {len(results)} devices did not end with the new version active: {names}",
                       "see the table above; the other devices are deployed", code)
