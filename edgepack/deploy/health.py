"""The health check a version must pass to stay active: the bundle's own native loader on the device.

`verify` runs the golden vectors (digests first); with a latency budget, `bench` must also report a
median at or under it. A failure, a crash (killed by a signal) or a timeout fails the check.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import PurePosixPath

from edgepack.deploy.faults import fault_point
from edgepack.deploy.fs import DeviceFS
from edgepack.errors import BundleError, EdgepackError

EXIT_ROLLED_BACK = 5


@dataclass(frozen=True)
class HealthConfig:
    """How a version is checked: the loader's time limit and an optional latency budget."""

    timeout_s: float = 120.0
    latency_budget_ms: float | None = None
    bench_runs: int = 20
    keyring: str | None = None  # trusted .pub keys on the device: the loader refuses bundles not signed by one


@dataclass(frozen=True)
class HealthResult:
    """Whether the check passed, one line saying why, and the measured median when benchmarked."""

    passed: bool
    detail: str
    median_ms: float | None = None


class HealthCheckFailed(BundleError):
    """A version failed its health check and was not kept active (exit 5)."""

    exit_code = EXIT_ROLLED_BACK


def check_runnable(manifest: dict, fs: DeviceFS) -> None:
    """Refuse, before installing, a bundle whose loader cannot run on the device's machine."""
    arch, machine = manifest.get("target", {}).get("arch"), fs.machine()
    if arch != machine:
        raise EdgepackError(f"the bundle is built for {arch} but the device runs {machine}, so its health check cannot run",
                            f"deploy a bundle built for a {machine} target")


def _loader(fs: DeviceFS, bundle: PurePosixPath, config: HealthConfig, *args: str) -> tuple[subprocess.CompletedProcess | None, str]:
    """Run the native loader on the device; (result, "") or (None, why it did not finish)."""
    try:
        result = fs.run_loader(bundle, [*args, *(["--keyring", config.keyring] if config.keyring else [])], config.timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"{args[0]} timed out after {config.timeout_s:g} s"
    except OSError as exc:
        return None, f"{args[0]} could not start ({exc.strerror})"
    if result.returncode < 0:
        return None, f"{args[0]} crashed (signal {-result.returncode})"
    return result, ""


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[-1] if lines else "no output"


def check_health(fs: DeviceFS, bundle: PurePosixPath, config: HealthConfig) -> HealthResult:
    """Run `edgepack-run verify` (and `bench` under a latency budget) on the device's bundle at `bundle`."""
    fault_point("health")
    result, why = _loader(fs, bundle, config, "verify")
    if result is None:
        return HealthResult(False, why)
    if result.returncode != 0:
        return HealthResult(False, f"verify exited {result.returncode}: {_last_line(result)}")
    if config.latency_budget_ms is None:
        return HealthResult(True, _last_line(result))
    result, why = _loader(fs, bundle, config, "bench", "--runs", str(config.bench_runs))
    if result is None or result.returncode != 0:
        return HealthResult(False, why or f"bench exited {result.returncode}: {_last_line(result)}")
    try:
        median = float(json.loads(result.stdout)["median_ms"])
    except (ValueError, KeyError, TypeError):
        return HealthResult(False, f"bench printed no median_ms: {_last_line(result)}")
    if median > config.latency_budget_ms:
        return HealthResult(False, f"median latency {median:.3f} ms exceeds the budget of {config.latency_budget_ms:g} ms", median)
    return HealthResult(True, f"golden vectors passed; median {median:.3f} ms within {config.latency_budget_ms:g} ms", median)
