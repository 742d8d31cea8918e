"""GPU check: build CUDA bundles, run them with the native loader on the GPU, compare and time them.

    .venv/bin/python scripts/gpu_check.py                      # picks the target from GPU 0's arch
    .venv/bin/python scripts/gpu_check.py --target cuda-sm90 --runs 200 --json-out gpu.json

For the digits CNN (edgepack/examples/digits.py:digits_cnn) and a small ResNet-style model
(edgepack/examples/resnet.py:resnet_small) it:
1. builds a bundle for the GPU's target (the build itself verifies the golden vectors through both
   loaders on the GPU, so it fails if the GPU code is wrong);
2. runs the bundle's native loader (`runtime/edgepack-run run --device cuda`) on the golden input and
   compares with ONNX Runtime on the CPU;
3. times `edgepack-run bench --device cuda` (kernels only, inputs resident, synchronized; and with
   host<->device copies), ONNX Runtime on the CPU, ONNX Runtime's CUDA provider when installed, and
   PyTorch on the GPU when torch has CUDA.

Needs an NVIDIA GPU, a CUDA 13 driver and edgepack's environment (scripts/setup.sh). Exits 1 with one
line when there is no usable GPU; 4 when outputs differ beyond tolerance.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {
    "digits": "edgepack/examples/digits.py:digits_cnn",
    "resnet_small": "edgepack/examples/resnet.py:resnet_small",
}


def gpu_capability() -> tuple[int, int] | None:
    """GPU 0's compute capability through the driver, None without a usable one."""
    import ctypes

    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    if not hasattr(driver, "cuInit") or driver.cuInit(0) != 0:
        return None
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    driver.cuDeviceGetAttribute(ctypes.byref(major), 75, 0)
    driver.cuDeviceGetAttribute(ctypes.byref(minor), 76, 0)
    return major.value, minor.value


def target_for(capability: tuple[int, int], work: Path) -> str:
    """A shipped target for this GPU, else a copy of targets/cuda.toml with its arch (still declarative)."""
    from edgepack.targets import target_names

    arch = f"sm_{capability[0]}{capability[1]}"
    host = platform.machine()
    shipped = {("aarch64", "sm_87"): "jetson-orin", ("x86_64", "sm_86"): "cuda-sm86", ("x86_64", "sm_89"): "cuda-sm89",
               ("x86_64", "sm_90"): "cuda-sm90", ("x86_64", "sm_80"): "cuda"}
    if shipped.get((host, arch)) in target_names():
        return shipped[(host, arch)]
    text = (ROOT / "targets" / "cuda.toml").read_text().replace('name = "cuda"', f'name = "cuda-{arch}"')
    text = text.replace('arch = "sm_80"', f'arch = "{arch}"')
    if host == "aarch64":
        text = text.replace('arch = "x86_64"', 'arch = "aarch64"').replace("x86_64-linux-gnu", "aarch64-linux-gnu")
        text = text.replace('mcpu = "x86-64"', 'mattr = ["+neon"]')
    path = work / f"cuda-{arch}.toml"
    path.write_text(text)
    return str(path)


def median_ms(step, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def onnxruntime_times(model: Path, feeds: dict, warmup: int, runs: int) -> dict:
    import onnxruntime as ort

    out = {}
    cpu = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out["onnxruntime_cpu_ms"] = median_ms(lambda: cpu.run(None, feeds), warmup, runs)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        gpu = ort.InferenceSession(str(model), providers=["CUDAExecutionProvider"])
        if "CUDAExecutionProvider" in gpu.get_providers():
            out["onnxruntime_cuda_ms"] = median_ms(lambda: gpu.run(None, feeds), warmup, runs)
    out.setdefault("onnxruntime_cuda_ms", None)
    return out


def torch_gpu_ms(spec: str, feeds: dict, warmup: int, runs: int) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    from edgepack.frontends.sources import import_file

    path, factory = spec.rsplit(":", 1)
    model = getattr(import_file(ROOT / path), factory)().eval().cuda()
    inputs = [torch.from_numpy(array).cuda() for array in feeds.values()]

    def step():
        with torch.inference_mode():
            model(*inputs)
        torch.cuda.synchronize()

    return median_ms(step, warmup, runs)


def check_model(name: str, spec: str, target: str, out_dir: Path, runs: int) -> dict:
    from edgepack.build import build

    started = time.perf_counter()
    bundle = build(str(ROOT / spec.split(":")[0]) + ":" + spec.split(":")[1], target, out_dir, force=True).bundle
    build_s = time.perf_counter() - started
    manifest = bundle.manifest
    loader = bundle.path / "runtime" / "edgepack-run"
    case = manifest["golden"]["cases"][0]
    inputs = [bundle.path / rel for rel in case["inputs"]]
    output = out_dir / f"{name}-out.npy"
    subprocess.run([str(loader), "run", "--device", "cuda", *(f"--input={p}" for p in inputs), "-o", str(output)], check=True)
    import onnxruntime as ort

    reference = bundle.path / "reference" / "model.onnx"
    feeds = {spec_in["name"]: np.load(path) for spec_in, path in zip(manifest["inputs"], inputs)}
    expected = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = np.load(output)
    error = float(np.max(np.abs(got.astype(np.float64) - expected)))
    bench = json.loads(subprocess.run([str(loader), "bench", "--device", "cuda", "--runs", str(runs)],
                                      capture_output=True, text=True, check=True).stdout)
    return {
        "model": name, "target": manifest["target"]["name"], "gpu_arch": manifest["requires"]["cuda"]["gpu_arch"],
        "build_s": round(build_s, 1), "verification": manifest["verification"]["passed"],
        "max_abs_err_vs_onnxruntime_cpu": error,
        "within_tolerance": bool(np.allclose(got, expected, atol=manifest["golden"]["atol"], rtol=manifest["golden"]["rtol"])),
        "edgepack_gpu_ms": bench["median_ms"], "edgepack_gpu_with_transfers_ms": bench.get("with_transfers_median_ms"),
        **onnxruntime_times(reference, feeds, 10, runs),
        "torch_gpu_ms": torch_gpu_ms(spec, feeds, 10, runs),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="target name or .toml (default: from GPU 0's compute capability)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="where bundles go (default: a temporary directory)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    from edgepack.errors import BundleError
    capability = gpu_capability()
    if capability is None:
        print("error: no usable NVIDIA GPU (libcuda.so.1 missing or cuInit fails); run this on a machine with a GPU and a CUDA 13 driver",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="edgepack-gpu-check-") as scratch:
        out_dir = args.out or Path(scratch)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = args.target or target_for(capability, Path(scratch))
        print(f"GPU 0: compute capability {capability[0]}.{capability[1]}; target {target}", flush=True)
        try:  # the build verifies the golden vectors on the GPU through both loaders
            rows = [check_model(name, MODELS[name], target, out_dir, args.runs) for name in args.models]
        except BundleError as exc:
            print(f"error: {exc.problem}; {exc.fix}", file=sys.stderr)
            return exc.exit_code
    columns = ["model", "max_abs_err_vs_onnxruntime_cpu", "edgepack_gpu_ms", "edgepack_gpu_with_transfers_ms",
               "onnxruntime_cuda_ms", "torch_gpu_ms", "onnxruntime_cpu_ms", "build_s"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    if args.json_out:
        args.json_out.write_text(json.dumps({"capability": list(capability), "rows": rows}, indent=2) + "\n")
    return 0 if all(row["within_tolerance"] for row in rows) else 4


if __name__ == "__main__":
    sys.exit(main())
