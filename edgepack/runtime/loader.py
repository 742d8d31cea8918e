"""Python loader for edgepack bundles: load, signature, run, verify, bench.

This file is an island. It imports the standard library, numpy and the TVM *runtime* only, so it
is copied into every bundle as `runtime/edgepack_loader.py` and runs on devices where neither
edgepack, torch, onnx nor the TVM compiler is installed:

    TVM_USE_RUNTIME_LIB=1 python3 runtime/edgepack_loader.py verify
    python3 runtime/edgepack_loader.py run --input x.npy -o y.npy
    python3 runtime/edgepack_loader.py bench --runs 100

The bundle format it reads is documented in docs/bundle-format.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

EXIT_USER = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_VERIFY = 4
EXIT_INTERNAL = 70


class BundleError(Exception):
    """A problem the user can act on; printed as `error: <problem>; <fix>`."""

    exit_code = EXIT_USER

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix


class IntegrityError(BundleError):
    """A bundle's files do not match its manifest, or its schema is unknown."""

    exit_code = EXIT_INTEGRITY


class VerificationError(BundleError):
    """Outputs differ from the reference beyond tolerance."""

    exit_code = EXIT_VERIFY


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and static shape of one model input or output."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def from_json(cls, entry: Mapping) -> "TensorSpec":
        return cls(str(entry["name"]), str(entry["dtype"]), tuple(int(d) for d in entry["shape"]))

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle: Path) -> dict:
    """Parse a bundle's manifest and refuse a schema newer than this loader."""
    path = Path(bundle) / MANIFEST
    if not Path(bundle).is_dir():
        raise BundleError(f"bundle '{bundle}' is not a directory", "pass the bundle directory edgepack build wrote")
    if not path.is_file():
        raise IntegrityError(f"'{bundle}' has no {MANIFEST}", "pass a bundle directory made by edgepack build")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path} is not valid JSON ({exc})", "rebuild the bundle") from None
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{path} is not a JSON object", "rebuild the bundle")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise IntegrityError(f"{path} has no integer schema_version", "rebuild the bundle")
    if version > SCHEMA_VERSION:
        raise IntegrityError(
            f"bundle schema_version {version} is newer than this loader's {SCHEMA_VERSION}",
            "update the loader (or edgepack) to one that reads it",
        )
    return manifest


def check_files(bundle: Path, manifest: Mapping) -> None:
    """Check every file listed in the manifest: present, same size, same SHA-256."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise IntegrityError("manifest lists no files", "rebuild the bundle")
    root = Path(bundle).resolve()
    for rel, entry in sorted(files.items()):
        path = (root / rel).resolve()
        if root not in path.parents:
            raise IntegrityError(f"manifest names a file outside the bundle: '{rel}'", "rebuild the bundle")
        if not path.is_file():
            raise IntegrityError(f"bundle file '{rel}' is missing", "copy the whole bundle directory again")
        if path.stat().st_size != entry.get("size"):
            raise IntegrityError(
                f"bundle file '{rel}' has {path.stat().st_size} bytes, manifest says {entry.get('size')}",
                "the bundle was modified or truncated; copy it again or rebuild it",
            )
        if sha256_file(path) != entry.get("sha256"):
            raise IntegrityError(
                f"bundle file '{rel}' does not match its SHA-256 in the manifest",
                "the bundle was modified; copy it again or rebuild it",
            )


_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm"}


def elf_arch(path: Path) -> str:
    """The architecture an ELF file was built for, from its header."""
    header = Path(path).read_bytes()[:20]
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise IntegrityError(f"'{Path(path).name}' is not an ELF shared library", "rebuild the bundle")
    machine = int.from_bytes(header[18:20], "little")
    return _ELF_MACHINES.get(machine, f"ELF machine {machine}")


def cpu_features() -> set[str]:
    """This CPU's features as /proc/cpuinfo names them ("flags" on x86, "Features" on Arm)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    features = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            features.update(value.split())
    return features


def check_compatibility(bundle: Path, manifest: Mapping) -> None:
    """Refuse, before loading, a library for another architecture or a CPU missing a required feature.

    (The glibc floor in `requires` is the native loader's; this loader uses the device's TVM runtime.)
    """
    import platform

    built_for = elf_arch(Path(bundle) / manifest["library"])
    here = platform.machine()
    if built_for != here:
        raise BundleError(f"bundle is built for {built_for}, this machine is {here}",
                          f"run it on {built_for} hardware (or `edgepack verify --emulate`), or build it for a {here} target")
    required = manifest.get("requires", {}).get("cpu_features", [])
    available = cpu_features()
    missing = [feature for feature in required if available and feature not in available]
    if missing:
        raise BundleError(f"this CPU lacks {', '.join(missing)}, which the bundle's target requires",
                          "build for a target without those features (see `edgepack targets`)")


def check_inputs(specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]) -> None:
    """Refuse inputs whose count, dtype or any dimension differs from the signature."""
    if len(arrays) != len(specs):
        names = ", ".join(spec.name for spec in specs)
        raise BundleError(f"expected {len(specs)} input(s) ({names}), got {len(arrays)}", "pass one array per input, in this order")
    for spec, array in zip(specs, arrays):
        if array.dtype != np.dtype(spec.dtype):
            raise BundleError(f"input '{spec.name}' dtype: expected {spec.dtype}, got {array.dtype}", f"convert the array to {spec.dtype}")
        if array.ndim != len(spec.shape):
            raise BundleError(
                f"input '{spec.name}' rank: expected {len(spec.shape)} {list(spec.shape)}, got {array.ndim} {list(array.shape)}",
                "reshape the array to the bundle's input shape",
            )
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
            if want != got:
                raise BundleError(f"input '{spec.name}' dim {axis}: expected {want}, got {got}", "reshape the array to the bundle's input shape")


def compare(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> dict:
    """Element-wise `|got-ref| <= atol + rtol*|ref|`; returns passed and the worst errors."""
    if got.shape != ref.shape:
        return {"passed": False, "max_abs_err": float("inf"), "max_rel_err": float("inf"), "reason": f"shape {list(got.shape)} != {list(ref.shape)}"}
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    # NaN and ±inf match only themselves (as in the native loader); finite values use the bound.
    special = ~np.isfinite(got64) | ~np.isfinite(ref64)
    same_special = (got64 == ref64) | (np.isnan(got64) & np.isnan(ref64))
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got64 - ref64)
        bound = atol + rtol * np.abs(ref64)
    err = np.where(same_special, 0.0, np.where(special, np.inf, err))
    max_abs = float(np.max(err)) if err.size else 0.0
    rel = err / np.maximum(np.abs(np.where(special, 1.0, ref64)), 1e-12)
    max_rel = float(np.max(rel)) if rel.size else 0.0
    passed = bool(np.all(np.where(special, same_special, err <= bound)))
    return {"passed": passed, "max_abs_err": max_abs, "max_rel_err": max_rel}


def load_npy(path: Path) -> np.ndarray:
    """Read one .npy file (no pickles) with a one-line error when it is not one."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BundleError(f"input file '{path}' does not exist", "check the path") from None
    except (ValueError, OSError) as exc:
        raise BundleError(f"'{path}' is not a readable .npy file ({exc})", "save the array with numpy.save") from None


def _percentile(sorted_ms: Sequence[float], q: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(q / 100 * (len(sorted_ms) - 1))))
    return sorted_ms[index]


def timing_summary(times_ms: Sequence[float]) -> dict:
    """min/median/p90/p99/mean and throughput of a list of latencies in milliseconds."""
    ordered = sorted(times_ms)
    median = statistics.median(ordered)
    return {
        "runs": len(ordered),
        "min_ms": ordered[0],
        "median_ms": median,
        "p90_ms": _percentile(ordered, 90),
        "p99_ms": _percentile(ordered, 99),
        "mean_ms": statistics.fmean(ordered),
        "throughput_per_s": 1000.0 / median if median > 0 else float("inf"),
    }


def peak_rss_kb() -> int:
    """Peak resident set size of this process in KiB."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class LoadedBundle:
    """A bundle whose files were checked and whose library is loaded into the TVM runtime VM."""

    def __init__(self, bundle: Path, manifest: dict, vm, params: list):
        self.path = Path(bundle)
        self.manifest = manifest
        self.inputs = [TensorSpec.from_json(entry) for entry in manifest["inputs"]]
        self.outputs = [TensorSpec.from_json(entry) for entry in manifest["outputs"]]
        self._vm = vm
        self._params = params

    def signature(self) -> dict:
        """The I/O signature as plain data."""
        return {"inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs]}

    def run(self, arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model on inputs given in signature order or by name; returns the outputs."""
        if isinstance(arrays, Mapping):
            missing = [spec.name for spec in self.inputs if spec.name not in arrays]
            if missing:
                raise BundleError(f"missing input(s): {', '.join(missing)}", "pass every input named in the signature")
            arrays = [arrays[spec.name] for spec in self.inputs]
        arrays = [np.asarray(array) for array in arrays]
        check_inputs(self.inputs, arrays)
        return [out.numpy() for out in self.invoke(self.to_device(arrays))]

    def to_device(self, arrays: Sequence[np.ndarray]) -> list:
        """Copy checked numpy inputs into TVM tensors, ready for `invoke`."""
        import tvm

        return [tvm.runtime.tensor(np.ascontiguousarray(array), tvm.cpu()) for array in arrays]

    def invoke(self, tensors: list) -> list:
        """Call `main` on TVM tensors; returns the output tensors (no copies back to numpy)."""
        result = self._vm["main"](*tensors, *self._params)
        return [result] if hasattr(result, "numpy") else list(result)

    def golden_cases(self) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
        """The golden (inputs, reference outputs) pairs stored in the bundle."""
        cases = []
        for case in self.manifest["golden"]["cases"]:
            inputs = [load_npy(self.path / rel) for rel in case["inputs"]]
            outputs = [load_npy(self.path / rel) for rel in case["outputs"]]
            cases.append((inputs, outputs))
        return cases

    def verify(self) -> dict:
        """Run every golden case and compare with the stored references."""
        golden = self.manifest["golden"]
        atol, rtol = float(golden["atol"]), float(golden["rtol"])
        cases = []
        for index, (inputs, refs) in enumerate(self.golden_cases()):
            outputs = self.run(inputs)
            results = [compare(got, ref, atol, rtol) for got, ref in zip(outputs, refs)]
            cases.append({
                "case": index,
                "passed": all(r["passed"] for r in results),
                "max_abs_err": max(r["max_abs_err"] for r in results),
                "max_rel_err": max(r["max_rel_err"] for r in results),
            })
        return {
            "engine": "edgepack-python-loader",
            "passed": all(case["passed"] for case in cases),
            "atol": atol,
            "rtol": rtol,
            "max_abs_err": max(case["max_abs_err"] for case in cases),
            "max_rel_err": max(case["max_rel_err"] for case in cases),
            "cases": cases,
        }

    def bench(self, warmup: int = 10, runs: int = 100, arrays: Sequence[np.ndarray] | None = None) -> dict:
        """Time `main` on device-resident inputs: warm-up, then `runs` timed calls."""
        if runs < 1 or warmup < 0:
            raise BundleError("bench needs runs >= 1 and warmup >= 0", "pass --runs 1 or more")
        source = "files" if arrays is not None else "golden"
        if arrays is None:
            arrays = self.golden_cases()[0][0]
        arrays = [np.asarray(array) for array in arrays]
        check_inputs(self.inputs, arrays)
        tensors = self.to_device(arrays)
        for _ in range(warmup):
            self.invoke(tensors)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.invoke(tensors)
            times.append((time.perf_counter() - start) * 1000.0)
        return {
            "engine": "edgepack-python-loader",
            "warmup": warmup,
            **timing_summary(times),
            "threads": runtime_threads(),
            "peak_rss_kb": peak_rss_kb(),
            "inputs_from": source,
        }


def runtime_threads() -> int:
    """Threads the TVM runtime's pool uses."""
    import tvm_ffi

    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


def load(bundle: Path | str) -> LoadedBundle:
    """Check a bundle's schema and every file digest, then load its library and weights."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    check_files(bundle, manifest)
    check_compatibility(bundle, manifest)
    import tvm
    from tvm.runtime.vm import VirtualMachine

    try:
        library = tvm.runtime.load_module(str(bundle / manifest["library"]))
        vm = VirtualMachine(library, tvm.cpu())
        param_dict = tvm.runtime.load_param_dict((bundle / manifest["params"]["file"]).read_bytes())
        params = [param_dict[name] for name in manifest["params"]["names"]]
    except Exception as exc:  # the TVM runtime raises several types; all mean the same to the user
        raise BundleError(f"cannot load bundle '{bundle}': {first_line(exc)}", "rebuild it for this machine's target") from None
    return LoadedBundle(bundle, manifest, vm, params)


def _default_bundle() -> Path:
    """The bundle this file ships in: runtime/edgepack_loader.py → its parent's parent."""
    return Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgepack_loader", description="Run an edgepack bundle with the TVM runtime.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "verify", "bench", "signature"):
        sub = commands.add_parser(name)
        sub.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the one holding this file)")
        if name in ("run", "bench"):
            sub.add_argument("--input", action="append", type=Path, default=[], help=".npy file per input, in signature order")
        if name == "run":
            sub.add_argument("-o", "--output", type=Path, help="output .npy (single-output models)")
            sub.add_argument("--output-dir", type=Path, help="directory for output_<i>.npy")
        if name == "bench":
            sub.add_argument("--warmup", type=int, default=10)
            sub.add_argument("--runs", type=int, default=100)
    return parser


def write_outputs(outputs: list[np.ndarray], output: Path | None, output_dir: Path | None) -> list[Path]:
    """Save outputs to `output` (one output) or `output_dir/output_<i>.npy`; returns the paths."""
    if output is not None:
        if len(outputs) != 1:
            raise BundleError(f"the model has {len(outputs)} outputs", "use --output-dir instead of -o")
        np.save(output, outputs[0])
        return [Path(output)]
    if output_dir is None:
        raise BundleError("no output given", "pass -o OUT.npy or --output-dir DIR")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    paths = [Path(output_dir) / f"output_{index}.npy" for index in range(len(outputs))]
    for path, array in zip(paths, outputs):
        np.save(path, array)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    args = _parser().parse_args(argv)
    try:
        bundle = load(args.bundle or _default_bundle())
        if args.command == "signature":
            print(json.dumps(bundle.signature(), indent=2))
        elif args.command == "run":
            outputs = bundle.run([load_npy(path) for path in args.input])
            write_outputs(outputs, args.output, args.output_dir)
        elif args.command == "verify":
            report = bundle.verify()
            for case in report["cases"]:
                print(f"case {case['case']}: max_abs_err={case['max_abs_err']:.3g} {'PASS' if case['passed'] else 'FAIL'}")
            if not report["passed"]:
                raise VerificationError("outputs differ from the golden vectors beyond tolerance", "rebuild the bundle or check the device")
        else:
            arrays = [load_npy(path) for path in args.input] or None
            print(json.dumps(bundle.bench(args.warmup, args.runs, arrays), indent=2))
    except BundleError as exc:
        print(f"error: {exc.problem}; {exc.fix}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
