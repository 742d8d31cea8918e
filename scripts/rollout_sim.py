#!/usr/bin/env python3
"""A staged rollout to a simulated fleet: N device stores on this machine, one `edgepack agent` process
each, a real OCI registry (docker-registry) on loopback.

Steps: roll out a good 1.0.0 to everyone (waves), then a failing 9.0.0 (its golden output is wrong,
so every health check fails) which must halt in its first wave, then a good 2.0.0. After each step
every device must be on a good version whose own loader passes verify. Prints one JSON document.

    .venv/bin/python scripts/rollout_sim.py --devices 50 [--out docs/rollout_sim.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "deploy"))
from deploy_registry import start_registry  # noqa: E402

from edgepack.build import build  # noqa: E402
from edgepack.examples.digits import digits_cnn  # noqa: E402,F401  (the model the demo builds)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack.cli", *args], capture_output=True, text=True, check=False)


def _variant(base: Path, out: Path, version: str, break_golden: bool = False) -> Path:
    bundle = out / f"{base.name}-{version}"
    shutil.copytree(base, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = version
    if break_golden:  # only the device's health check can tell
        rel = manifest["golden"]["cases"][0]["outputs"][0]
        np.save(bundle / rel, np.load(bundle / rel) + 1.0)
        manifest["files"][rel] = {"sha256": hashlib.sha256((bundle / rel).read_bytes()).hexdigest(), "size": (bundle / rel).stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return bundle


def _active(device: Path) -> list[tuple[str | None, bool]]:
    rows = []
    for model in sorted(p for p in device.iterdir() if (p / "state.json").exists()):
        link = model / "current"
        ok = subprocess.run([str(link / "runtime" / "edgepack-run"), "verify"], capture_output=True, env={}, check=False).returncode == 0
        rows.append((os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None, ok))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--interval", type=float, default=2.0, help="agent poll interval, seconds")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgepack-rollout-"))
    registry, address = start_registry(work)
    agents = []
    try:
        source = Path(__file__).resolve().parents[1] / "edgepack" / "examples" / "digits.py"
        base = build(f"{source}:digits_cnn", "x86_64", work / "dist", name="digits", version="1.0.0").bundle.path
        good2, bad = _variant(base, work / "dist", "2.0.0"), _variant(base, work / "dist", "9.0.0", break_golden=True)
        repo = f"oci://{address}/fleet/digits"
        for bundle, tag in ((base, "1.0.0"), (bad, "9.0.0"), (good2, "2.0.0")):
            assert _cli("push", str(bundle), f"{repo}:{tag}").returncode == 0
        devices = [work / "fleet" / f"device-{i:03d}" for i in range(args.devices)]
        listing = work / "devices.txt"
        listing.write_text("".join(f"{device}\n" for device in devices))
        log = open(work / "agents.log", "wb")
        agents = [subprocess.Popen([sys.executable, "-m", "edgepack.cli", "agent", str(device), "--from", repo, "--channel", "stable",
                                    "--interval", str(args.interval)], stdout=log, stderr=subprocess.STDOUT) for device in devices]
        steps = []
        for tag, waves, expected_rc, expected in (("1.0.0", "2%,10%,100%", 0, "1.0.0"), ("9.0.0", "2%,10%,100%", 5, "1.0.0"),
                                                  ("2.0.0", "2%,10%,50%,100%", 0, "2.0.0")):
            start = time.monotonic()
            result = _cli("fleet", "rollout", f"{repo}:{tag}", "--devices", str(listing), "--wave", waves, "--wave-timeout", "900")
            seconds = time.monotonic() - start
            time.sleep(3 * args.interval)  # after a halt, the agents that took the new version go back
            states = [_active(device) for device in devices]
            on_expected = sum(1 for rows in states if rows == [(expected, True)])
            steps.append({"bundle": tag, "waves": waves, "exit_code": result.returncode, "seconds": round(seconds, 1),
                          "wave_lines": [line for line in result.stdout.splitlines() if line.startswith("wave")],
                          "error": result.stderr.strip(), "devices_on_good_version": on_expected})
            assert result.returncode == expected_rc, result.stderr
            assert on_expected == len(devices), f"{len(devices) - on_expected} devices are not on {expected}"
        print(json.dumps({"devices": len(devices), "agent_interval_s": args.interval, "cpu_cores": os.cpu_count(), "steps": steps}, indent=2))
        if args.out:
            args.out.write_text(json.dumps({"devices": len(devices), "agent_interval_s": args.interval, "steps": steps}, indent=2) + "\n")
    finally:
        for agent in agents:
            agent.terminate()
        for agent in agents:
            agent.wait(timeout=60)
        registry.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
