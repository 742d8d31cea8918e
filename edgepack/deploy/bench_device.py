"""`edgepack bench BUNDLE --device DEVICE`: the bundle's native loader benchmarks on the device itself.

The numbers are measured there by `runtime/edgepack-run bench` (warm-up, then timed calls of
`main` on inputs already in memory) and returned with the protocol that produced them. The
version installed in the device's store is benchmarked in place when it holds the same files;
otherwise the bundle is copied into a temporary `.staging-*` directory of the model's store,
checked digest by digest there, benchmarked and removed.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgepack.deploy.checked import check_on_host
from edgepack.deploy.device import parse_device
from edgepack.deploy.health import check_runnable
from edgepack.deploy.layout import check_name
from edgepack.deploy.recovery import open_store
from edgepack.deploy.transfer import stage_bundle
from edgepack.deploy.versioning import same_content
from edgepack.errors import EdgepackError

TIMED = "one call of main per run on inputs already in device memory; input and output copies are not timed"


@dataclass(frozen=True)
class DeviceBenchConfig:
    """Warm-up and timed runs, threads (None: the loader's default, every core of the device) and a time limit."""

    warmup: int = 10
    runs: int = 100
    threads: int | None = None
    timeout_s: float = 600.0


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else "no output"


def bench_on_device(bundle: Path, device: str, config: DeviceBenchConfig = DeviceBenchConfig()) -> dict:
    """Run `edgepack-run bench` on the device; returns its numbers, where they came from and the protocol."""
    if config.runs < 1 or config.warmup < 0 or (config.threads is not None and config.threads < 1):
        raise EdgepackError("bench needs --runs >= 1, --warmup >= 0 and --threads >= 1", "fix the option")
    checked = check_on_host(Path(bundle))  # before anything is copied to the device
    manifest = checked.manifest
    model = check_name("model name", str(manifest.get("name", "")))
    version = check_name("version", str(manifest.get("version", "")))
    fs, root = parse_device(device)
    check_runnable(manifest, fs)
    args = ["bench", "--warmup", str(config.warmup), "--runs", str(config.runs)]
    env = {"TVM_NUM_THREADS": str(config.threads)} if config.threads else {}
    with open_store(fs, root, model, create=True) as (store, state):
        installed = version in state["versions"] and same_content(store, version, manifest)
        if installed:
            where = store.version_dir(version)
            result = _run(fs, where, args, config, env)
        else:
            where, _ = stage_bundle(checked, store)
            try:
                result = _run(fs, where, args, config, env)
            finally:
                fs.rmtree(where)
        machine = fs.machine()
    try:
        numbers = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise EdgepackError(f"the device's loader printed no JSON ({_last_line(result)})", "run `edgepack-run bench` on the device by hand") from None
    protocol = {
        "where": "on the device", "loader": "runtime/edgepack-run bench", "environment": "empty (env -i)" + (
            f" + TVM_NUM_THREADS={config.threads}" if config.threads else ""),
        "threads": numbers.get("threads"), "threads_source": numbers.get("threads_source"),
        "warmup": numbers.get("warmup", config.warmup), "runs": numbers.get("runs", config.runs),
        "inputs_from": numbers.get("inputs_from"), "copies_timed": False, "timed": TIMED,
    }
    results = {key: numbers[key] for key in ("min_ms", "median_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s", "peak_rss_kb")
               if key in numbers}
    return {"bundle": str(bundle), "model": model, "version": version, "device": fs.describe(root), "machine": machine,
            "benchmarked": fs.describe(where), "copy": "installed version" if installed else "temporary copy, removed after",
            "protocol": protocol, "results": results}


def _run(fs, where, args: list[str], config: DeviceBenchConfig, env: dict) -> subprocess.CompletedProcess:
    try:
        result = fs.run_loader(where, args, config.timeout_s, env)
    except subprocess.TimeoutExpired:
        raise EdgepackError(f"the benchmark on the device ran past {config.timeout_s:g} s", "pass fewer --runs") from None
    if result.returncode < 0:
        raise EdgepackError(f"the device's loader crashed (signal {-result.returncode}) while benchmarking",
                            "run `edgepack-run verify` on the device to check the bundle there")
    if result.returncode != 0:
        raise EdgepackError(f"the device's loader failed (exit {result.returncode}: {_last_line(result)})",
                            "fix what it says, then benchmark again")
    return result
