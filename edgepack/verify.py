"""Stage: verify a bundle through its own loaders against the golden vectors (ONNX Runtime's outputs)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from edgepack.errors import VerificationError
from edgepack.runtime import loader
from edgepack.runtime_files import NATIVE_LOADER

NATIVE_TIMEOUT_S = 300


def run_native_loader(bundle_dir: Path, *args: str, timeout: float = NATIVE_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run the bundle's own native loader with an empty environment (no Python, no venv)."""
    command = [str(bundle_dir / "runtime" / NATIVE_LOADER), *args, "--bundle", str(bundle_dir)]
    return subprocess.run(command, capture_output=True, text=True, env={}, timeout=timeout, check=False)


def verify_native(bundle_dir: Path, arch: str) -> dict:
    """Golden check with the native loader where this machine can execute `arch` code."""
    if arch != platform.machine():
        return {"ran": False, "reason": f"{arch} code cannot run on this {platform.machine()} machine"}
    result = run_native_loader(bundle_dir, "verify")
    return {"ran": True, "passed": result.returncode == 0, "exit_code": result.returncode,
            "output": (result.stdout + result.stderr).strip().splitlines()[-5:]}


def verify_bundle(bundle_dir: Path, arch: str) -> dict:
    """Verify with the Python loader (in-process) and the native loader; raises when either fails."""
    report = loader.load(bundle_dir).verify()
    report["native"] = verify_native(bundle_dir, arch)
    native_failed = report["native"]["ran"] and not report["native"]["passed"]
    if not report["passed"] or native_failed:
        which = "native loader" if report["passed"] else "Python loader"
        detail = "; ".join(report["native"].get("output", [])) if native_failed else f"max abs err {report['max_abs_err']:.3g}"
        raise VerificationError(
            f"the compiled bundle does not match ONNX Runtime through the {which} ({detail}; atol {report['atol']}, rtol {report['rtol']})",
            "nothing was written; loosen --atol/--rtol if the difference is acceptable, or report the model",
        )
    return report
