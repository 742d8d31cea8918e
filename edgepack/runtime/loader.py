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
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

try:  # in the package: the format module beside this one
    from .bundle_format import (
        BundleError, CARRIED, IntegrityError, KEYRING_ENV, MANIFEST, TensorSpec, VerificationError, check_compatibility, check_cuda,
        check_files, check_inputs, check_manifest_fields, compare, decode_params, first_line, from_bits, load_npy, to_container,
        parse_npy, private_copy, read_checked, read_trusted_manifest, save_npy,
    )
except ImportError:  # inside a bundle: runtime/edgepack_format.py sits beside this file
    sys.dont_write_bytecode = True  # no runtime/__pycache__/: a bundle holds exactly the files its manifest lists
    from edgepack_format import (  # type: ignore[no-redef]
        BundleError, CARRIED, IntegrityError, KEYRING_ENV, MANIFEST, TensorSpec, VerificationError, check_compatibility, check_cuda,
        check_files, check_inputs, check_manifest_fields, compare, decode_params, first_line, from_bits, load_npy, to_container,
        parse_npy, private_copy, read_checked, read_trusted_manifest, save_npy,
    )


def load_cuda_runtime(bundle: Path, manifest: Mapping) -> None:
    """Unless the installed TVM already has CUDA, load the bundle's libcudart, then its TVM CUDA module
    (the installed `tvm` could not load its own without a libcudart on the library path)."""
    import ctypes

    import tvm

    if tvm.runtime.enabled("cuda"):
        return
    names = manifest["requires"]["cuda"].get("libraries", [])
    files = manifest["files"]
    directory = Path(tempfile.mkdtemp(prefix="edgepack-load-"))  # opened from checked private copies, never in place
    try:
        for name in sorted(names, key=lambda name: name.startswith("libtvm")):  # libcudart first
            rel = f"runtime/{name}"
            if "/" in name or rel not in files:
                raise IntegrityError(f"requires.cuda.libraries names '{name}', which is not a file listed under runtime/",
                                     "rebuild the bundle with `edgepack build`")
            ctypes.CDLL(str(private_copy(bundle, rel, files[rel], directory)), mode=ctypes.RTLD_GLOBAL)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if not tvm.runtime.enabled("cuda"):
        raise BundleError("the TVM runtime here has no CUDA support", "install the apache-tvm wheel the bundle was built with")



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

    def __init__(self, bundle: Path, manifest: dict, vm, params: list, device=None):
        self.path = Path(bundle)
        self.manifest = manifest
        self.device = device  # the TVM device of the inputs and weights; None: the CPU
        self.inputs = [TensorSpec.from_json(entry, manifest.get("dim_ranges")) for entry in manifest["inputs"]]
        self.outputs = [TensorSpec.from_json(entry, manifest.get("dim_ranges")) for entry in manifest["outputs"]]
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
        arrays = self.typed(arrays)
        check_inputs(self.inputs, arrays)
        outputs = [out.numpy() for out in self.invoke(self.to_device(arrays))]
        return [from_bits(out, spec.dtype) for out, spec in zip(outputs, self.outputs)] + outputs[len(self.outputs):]

    def ml_dtypes_tensors(self) -> list[TensorSpec]:
        """Inputs and outputs of types numpy lacks (bfloat16, and the float8/int4... types carried in bytes: CARRIED)."""
        return [spec for spec in [*self.inputs, *self.outputs] if spec.dtype == "bfloat16" or spec.dtype in CARRIED]

    def typed(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Numpy inputs, those holding a bfloat16 input's raw bits (uint16, as .npy files carry it) viewed as bfloat16."""
        arrays = [np.asarray(array) for array in arrays]
        if len(arrays) != len(self.inputs):
            return arrays  # check_inputs names the miscount
        return [from_bits(array, spec.dtype) for spec, array in zip(self.inputs, arrays)]

    def to_device(self, arrays: Sequence[np.ndarray]) -> list:
        """Copy checked numpy inputs into TVM tensors, ready for `invoke`."""
        import tvm

        # float8, int4...: their containers, as the model takes them
        return [tvm.runtime.tensor(to_container(np.asarray(array, order="C")), self.device or tvm.cpu()) for array in arrays]

    def invoke(self, tensors: list) -> list:
        """Call `main` on TVM tensors; returns the output tensors (no copies back to numpy)."""
        result = self._vm["main"](*tensors, *self._params)
        if self.device is not None:  # GPU kernels run asynchronously
            self.device.sync()
        return [result] if hasattr(result, "numpy") else list(result)

    def call_function(self, name: str, *args, with_params: bool = True):
        """Call the library's function `name` on TVM values, followed by the weights (language models:
        prefill, decode, create_cache); returns what it returns, on the device."""
        return self._vm[name](*args, *(self._params if with_params else ()))

    def golden_cases(self) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
        """The golden (inputs, reference outputs) pairs stored in the bundle."""
        cases = []
        files = self.manifest["files"]

        def checked(rel: str) -> np.ndarray:  # read once, digest-checked, parsed from those bytes
            return parse_npy(read_checked(self.path, rel, files[rel]), rel)

        for case in self.manifest["golden"]["cases"]:
            refs = [checked(rel) for rel in case["outputs"]]
            refs = [from_bits(ref, spec.dtype) for ref, spec in zip(refs, self.outputs)] + refs[len(self.outputs):]
            inputs = [checked(rel) for rel in case["inputs"]]
            inputs = [from_bits(array, spec.dtype) for array, spec in zip(inputs, self.inputs)] + inputs[len(self.inputs):]
            cases.append((inputs, refs))
        return cases

    def verify(self) -> dict:
        """Run every golden case and compare with the stored references."""
        golden = self.manifest["golden"]
        if not golden["cases"]:  # as the native loader: nothing to check is not a pass
            raise VerificationError("the bundle has no golden cases", "rebuild the bundle with golden vectors")
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
            if not self.manifest["golden"]["cases"]:
                raise BundleError("the bundle has no golden inputs to benchmark with", "pass --input for each model input")
            arrays = self.golden_cases()[0][0]
        arrays = self.typed(arrays)
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
            "device": "cuda" if self.device is not None else "cpu",
            "transfers_included": False,  # inputs are on the device before the timed calls
        }



def runtime_threads() -> int:
    """Threads the TVM runtime's pool uses."""
    import tvm_ffi

    return int(tvm_ffi.get_global_func("runtime.NumThreads")())



def load(bundle: Path | str, keyring: Path | str | None = None) -> LoadedBundle:
    """Check the signature (with a keyring), schema and every file digest, then load its library and weights.

    The library is loaded from a private copy hashed while copying, the weights from bytes checked once read.
    """
    bundle = Path(bundle)
    manifest = read_trusted_manifest(bundle, keyring)
    check_manifest_fields(manifest, bundle / MANIFEST)
    check_files(bundle, manifest)
    check_compatibility(bundle, manifest)
    check_cuda(bundle, manifest)
    if manifest.get("requires", {}).get("cuda"):
        load_cuda_runtime(bundle, manifest)
    import tvm
    from tvm.runtime.vm import VirtualMachine

    files = manifest["files"]
    library_rel, params_rel = manifest["library"], manifest["params"]["file"]
    copy = private_copy(bundle, library_rel, files[library_rel])
    try:
        library = tvm.runtime.load_module(str(copy))
        device = tvm.cuda(0) if manifest.get("requires", {}).get("cuda") else None
        vm = VirtualMachine(library, [device, tvm.cpu()] if device else tvm.cpu())
        param_dict = tvm.runtime.load_param_dict(decode_params(read_checked(bundle, params_rel, files[params_rel]), manifest["params"]))
        params = [param_dict[name] for name in manifest["params"]["names"]]
        if device is not None:  # weights go to the GPU once
            params = [param.copyto(device) for param in params]
    except BundleError:
        raise
    except Exception as exc:  # the TVM runtime raises several types; all mean the same to the user
        raise BundleError(f"cannot load bundle '{bundle}': {first_line(exc)}", "rebuild it for this machine's target") from None
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)
    return LoadedBundle(bundle, manifest, vm, params, device)



def _default_bundle() -> Path:
    """The bundle this file ships in: runtime/edgepack_loader.py → its parent's parent."""
    return Path(__file__).resolve().parent.parent



def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgepack_loader", description="Run an edgepack bundle with the TVM runtime.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "verify", "bench", "signature"):
        sub = commands.add_parser(name)
        sub.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the one holding this file)")
        sub.add_argument("--keyring", type=Path, default=None,
                         help=f"trusted public keys (.pub file or directory); refuse unsigned bundles (default: ${KEYRING_ENV})")
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
        return [save_npy(output, outputs[0])]
    if output_dir is None:
        raise BundleError("no output given", "pass -o OUT.npy or --output-dir DIR")
    created = not Path(output_dir).exists()
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(f"cannot create output directory '{output_dir}' ({exc.strerror})", "choose a writable place") from None
    written: list[Path] = []
    try:
        for index, array in enumerate(outputs):
            written.append(save_npy(Path(output_dir) / f"output_{index}.npy", array))
    except BundleError:  # all or nothing: no half set of outputs, no directory made for them
        for path in written:
            path.unlink(missing_ok=True)
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    return written



def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        bundle = load(args.bundle or _default_bundle(), args.keyring or os.environ.get(KEYRING_ENV) or None)
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
    # only TVM's runtime library on the device; set here, not in main(), so that a host process calling
    # main() keeps the compiler for its own later work and children
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    sys.exit(main())
