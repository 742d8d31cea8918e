"""Stage: verify a bundle through its own loaders against the golden vectors (ONNX Runtime's outputs).

On this machine's architecture both loaders run. A bundle for another architecture is checked by
its own native loader under the target's user-mode emulator (qemu-user) when that is installed.
"""

from __future__ import annotations

import math
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgepack.errors import EXIT_INTEGRITY, EXIT_USAGE, EXIT_USER, EdgepackError, IntegrityError, VerificationError
from edgepack.runtime import bundle_format
from edgepack.runtime import loader
from edgepack.compiler.runtime_files import NATIVE_LOADER, RUNTIME_LIBRARIES

NATIVE_TIMEOUT_S = 600
_CASE_ERROR = re.compile(r"max_abs_err (\S+) (PASS|FAIL)")


def emulator_command(target: dict) -> list[str] | None:
    """The emulator prefix (`qemu-aarch64 -L sysroot`) for a manifest target, or None if not installed."""
    toolchain = target.get("toolchain", {})
    found = shutil.which(toolchain.get("emulator") or "")
    if not found:
        return None
    return [found, *(["-L", toolchain["sysroot"]] if toolchain.get("sysroot") else [])]


def private_native_loader(bundle_dir: Path, files: dict, directory: Path) -> Path:
    """Copy the bundle's native loader and the runtime libraries beside it into `directory` (fresh,
    0700), hashing while copying: what runs is exactly the checked bytes, never a file in the bundle."""
    for rel in [f"runtime/{NATIVE_LOADER}", *(f"runtime/{name}" for name in RUNTIME_LIBRARIES)]:
        if rel not in files:
            raise IntegrityError(f"the bundle's manifest does not list {rel}", "rebuild the bundle with `edgepack build`")
        bundle_format.private_copy(bundle_dir, rel, files[rel], directory)
    loader = directory / NATIVE_LOADER
    loader.chmod(0o700)
    return loader


def run_native_loader(bundle_dir: Path, files: dict, *args: str, prefix: list[str] = (),
                      timeout: float = NATIVE_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run the bundle's own native loader (under `prefix`, an emulator) with an empty environment,
    from a private copy checked against `files` (the manifest's) while copying."""
    directory = Path(tempfile.mkdtemp(prefix="edgepack-verify-"))
    try:
        loader = private_native_loader(Path(bundle_dir), files, directory)
        command = [*prefix, str(loader), *args, "--bundle", str(bundle_dir)]
        try:
            return subprocess.run(command, capture_output=True, text=True, env={}, timeout=timeout, check=False)
        except PermissionError:
            raise EdgepackError(f"cannot run the private copy of the native loader in {directory} (the filesystem is noexec?)",
                                "set TMPDIR to a writable directory that allows executables") from None
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def gpu_missing(manifest: dict) -> str | None:
    """Why a CUDA bundle's GPU code cannot run here (None for CPU bundles and where a fit GPU is present).

    No emulator runs CUDA: a GPU bundle for another host arch is never run here."""
    target = manifest["target"]
    if target.get("device") != "cuda":
        return None
    need = manifest.get("requires", {}).get("cuda", {})
    if target["arch"] != platform.machine():
        return f"no GPU: {target['arch']} + {need.get('gpu_arch')} code cannot run on this {platform.machine()} machine (no emulator runs CUDA)"
    return bundle_format.cuda_problem(need)


def verify_native(bundle_dir: Path, manifest: dict, emulate: bool, keyring: Path | None = None) -> dict:
    """Golden check with the native loader (a private copy): directly on this arch, under the emulator on another."""
    target = manifest["target"]
    prefix: list[str] = []
    if target["arch"] != platform.machine():
        if not emulate:
            return {"ran": False, "reason": f"{target['arch']} code cannot run on this {platform.machine()} machine"}
        prefix = emulator_command(target)
        if prefix is None:
            packages = " ".join(target["toolchain"].get("emulator_apt_packages") or ["qemu-user"])
            return {"ran": False, "reason": f"emulator '{target['toolchain'].get('emulator')}' is not installed "
                                            f"(apt-get install {packages})"}
    elif (lacking := cpu_lacks(target)) is not None:
        return {"ran": False, "reason": lacking}
    result = run_native_loader(bundle_dir, manifest["files"], "verify", *keyring_args(keyring), prefix=prefix)
    errors = [float(value) for value, _ in _CASE_ERROR.findall(result.stdout)]
    return {
        "ran": True,
        "passed": result.returncode == 0,
        "exit_code": result.returncode,
        "emulator": Path(prefix[0]).name if prefix else None,
        "max_abs_err": max(errors) if errors else None,
        "output": (result.stdout + result.stderr).strip().splitlines()[-3:],
    }


def keyring_args(keyring: Path | str | None) -> list[str]:
    """`--keyring PATH` for the native loader when a keyring is configured (it runs with an empty environment)."""
    return ["--keyring", str(Path(keyring).absolute())] if keyring else []


def cpu_lacks(target: dict) -> str | None:
    """Why this CPU cannot run a bundle of its own arch (features its target requires, e.g. AVX-512), or None.

    No emulator here adds them (qemu-user has no AVX-512): such a bundle is verified on a machine that has them."""
    missing = bundle_format.missing_cpu_features(target.get("capabilities", {}).get("cpu_features", []))
    if not missing:
        return None
    return f"this CPU lacks {', '.join(missing)}, which target '{target['name']}' requires"


def verify_python(bundle_dir: Path, target: dict, keyring: Path | None = None) -> dict:
    """Golden check with the Python loader, in this process, where the target's code can run here."""
    if target["arch"] != platform.machine():
        return {"ran": False, "reason": f"{target['arch']} libraries cannot be loaded on this {platform.machine()} machine"}
    if (lacking := cpu_lacks(target)) is not None:
        return {"ran": False, "reason": lacking}
    return {"ran": True, **loader.load(bundle_dir, keyring).verify()}


def verify_generation(bundle_dir: Path, manifest: dict, python: dict, native: dict, keyring: Path | None = None) -> dict:
    """Language-model bundles: the golden prompt's greedy continuation, token by token, through every loader
    that ran the logits check (the Python generator and `edgepack-run generate`)."""
    from edgepack.runtime.generate import Generator

    golden = manifest["generator"]["golden"]
    expected = [int(t) for t in golden["tokens"]]
    report = {"prompt_ids": golden["prompt_ids"], "expected": expected}
    if python["ran"]:
        report["python_loader"] = Generator(loader.load(bundle_dir, keyring)).generate(golden["prompt_ids"], len(expected))
    if native["ran"]:
        prefix = emulator_command(manifest["target"]) if manifest["target"]["arch"] != platform.machine() else []
        result = run_native_loader(bundle_dir, manifest["files"], "generate", "--prompt-ids", ",".join(map(str, golden["prompt_ids"])),
                                   "--max-new-tokens", str(len(expected)), *keyring_args(keyring), prefix=prefix or [])
        report["native_loader"] = ([int(t) for t in result.stdout.split()] if result.returncode == 0
                                   else (result.stderr.strip().splitlines() or ["no output"])[-1])
    mismatched = [name for name in ("python_loader", "native_loader") if name in report and report[name] != expected]
    report["passed"] = not mismatched
    if mismatched:
        raise VerificationError(f"the greedy continuation through the {' and '.join(m.replace('_', ' ') for m in mismatched)} "
                                f"differs from PyTorch's: {report[mismatched[0]]} vs {expected}",
                                "rebuild with --fp32-activations (its decode quantizes activations to int8, as llama.cpp's "
                                "does, and a near tie can then go the other way)"
                                if manifest["generator"].get("decode_activations") == "int8" else
                                "report the model's config.json; the logits check is in the verification report")
    return report


def verify_bundle(bundle_dir: Path, emulate: bool = True, keyring: Path | None = None) -> dict:
    """Check digests and golden vectors with every loader that can run here; raises if one fails.

    `passed` is None when no loader could run (a foreign-arch bundle without an emulator).
    """
    manifest = bundle_format.read_trusted_manifest(bundle_dir, keyring)  # with a keyring: the signature first
    bundle_format.check_manifest_fields(manifest, Path(bundle_dir) / bundle_format.MANIFEST)
    bundle_format.check_files(bundle_dir, manifest)
    target = manifest["target"]
    golden = manifest["golden"]
    if (no_gpu := gpu_missing(manifest)) is not None:
        python = native = {"ran": False, "reason": no_gpu, "gpu": True}
    else:
        python = verify_python(bundle_dir, target, keyring)
        native = verify_native(bundle_dir, manifest, emulate, keyring)
    ran = [engine for engine in (python, native) if engine["ran"]]
    errors = [engine["max_abs_err"] for engine in ran if engine.get("max_abs_err") is not None]
    report = {
        "passed": all(engine["passed"] for engine in ran) if ran else None,
        "atol": golden["atol"],
        "rtol": golden["rtol"],
        "cases": len(golden["cases"]),
        "max_abs_err": max(errors) if errors else None,
        "python_loader": python,
        "native_loader": native,
    }
    refuse_as_the_loader_did(native)
    failed = [name for name, engine in (("Python loader", python), ("native loader", native)) if engine["ran"] and not engine["passed"]]
    if failed:
        worst = report["max_abs_err"]
        if not worst and "native loader" in failed:  # it stopped before comparing (an input it refused)
            worst = None
        size = f"max abs err {worst:.3g}" if worst is not None else "; ".join(native.get("output", [])) or "outputs differ"
        where = f"{golden.get('origin', 'random')} inputs" + (f" from {golden['data']}" if golden.get("data") else "")
        raise VerificationError(
            f"the bundle does not match ONNX Runtime through the {' and '.join(failed)}: {size} on {len(golden['cases'])} "
            f"golden case(s) of {where}, beyond atol {golden['atol']:.3g}, rtol {golden['rtol']:.3g}",
            (f"pass --atol {_round_up(worst)} if a difference of {worst:.3g} is acceptable" if worst is not None else
             "loosen --atol/--rtol if the difference is acceptable") + ", or report the model",
        )
    if "generator" in manifest and ran:
        report["generation"] = verify_generation(Path(bundle_dir), manifest, python, native, keyring)
    return report


_REFUSALS = {EXIT_USER: EdgepackError, EXIT_USAGE: EdgepackError, EXIT_INTEGRITY: IntegrityError}


def refuse_as_the_loader_did(native: dict) -> None:
    """A native loader that refused the bundle (compatibility: exit 1, integrity: exit 3) is not a
    verification failure (exit 4): re-raise its own one line with its own exit code."""
    code = native.get("exit_code")
    if not native["ran"] or code not in _REFUSALS:
        return
    line = next((text for text in reversed(native["output"]) if text.startswith("error: ")), "")
    problem, _, fix = line.removeprefix("error: ").partition("; ")
    error = _REFUSALS[code](f"the native loader refused the bundle: {problem or f'exit {code}'}", fix or "see the line above")
    error.exit_code = code
    raise error


def _round_up(value: float) -> str:
    """A tolerance just above `value`, in two significant digits."""
    if value <= 0 or not math.isfinite(value):
        return f"{value:.3g}"
    exponent = math.floor(math.log10(value)) - 1
    return f"{math.ceil(value / 10 ** exponent) * 10 ** exponent:.2g}"


def require_verified(report: dict, emulate: bool) -> None:
    """Refuse a verify request in which no loader could run (the CLI's `verify`)."""
    if report["passed"] is None:
        reason = report["native_loader"]["reason"]
        fix = "install the emulator it names" if emulate else "pass --emulate to run it under qemu-user, or verify on the device"
        if report["native_loader"].get("gpu"):  # digests passed; the golden vectors need the GPU
            fix = "file digests are fine; run `runtime/edgepack-run verify` on a machine with the GPU (docs/cuda.md)"
        raise EdgepackError(f"nothing could run this bundle here: {reason}", fix)
