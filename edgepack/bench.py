"""Benchmark a bundle against ONNX Runtime, OpenVINO and PyTorch in one run, at the same thread count."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.bundle.package import REFERENCE_MODEL
from edgepack.runtime import bundle_format
from edgepack.runtime import loader
from edgepack.measure.timing import SETTLE_S, TURN_WARMUP, timed_rounds
from edgepack.runtime.loader import peak_rss_kb, timing_summary

ENGINES = ("onnxruntime", "openvino", "torch")


@dataclass(frozen=True)
class BenchConfig:
    """Warm-up and timed runs per engine, the thread count, and the engines to compare with."""

    warmup: int = 10
    runs: int = 100
    threads: int = os.cpu_count() or 1
    compare: tuple[str, ...] = ()
    rounds: int = 5  # engines alternate round by round, so drift affects all alike


def _reference_model(bundle: loader.LoadedBundle) -> Path:
    path = bundle.path / REFERENCE_MODEL
    if not path.is_file():
        raise EdgepackError(f"bundle has no {REFERENCE_MODEL} to compare with", "rebuild without --no-reference")
    return path


def _onnxruntime_runner(bundle: loader.LoadedBundle, threads: int) -> Callable[[list[np.ndarray]], object]:
    from edgepack.measure.reference import onnxruntime_session

    session = onnxruntime_session(_reference_model(bundle), threads)
    names = [spec.name for spec in bundle.inputs]
    return lambda arrays: session.run(None, dict(zip(names, arrays)))


def _openvino_runner(bundle: loader.LoadedBundle, threads: int) -> Callable[[list[np.ndarray]], object]:
    from edgepack.measure.openvino_engine import openvino_runner

    return openvino_runner(_reference_model(bundle), threads)


def _torch_runner(bundle: loader.LoadedBundle, threads: int) -> Callable[[list[np.ndarray]], object]:
    import torch

    from edgepack.frontends.export import load_torch_model
    from edgepack.frontends.sources import parse_source

    source = bundle.manifest["provenance"]["source"]
    if source["kind"] == "onnx":
        raise EdgepackError("this bundle was built from ONNX, so there is no PyTorch model to compare with",
                            "compare with onnxruntime only")
    model_arg = f"{source['path']}:{source['factory']}" if "factory" in source else source["path"]
    model = load_torch_model(parse_source(model_arg), {spec.name: spec for spec in bundle.inputs})
    torch.set_num_threads(threads)

    def run(arrays):
        with torch.no_grad():
            result = model.module(*[torch.from_numpy(array) for array in arrays])
        return [result] if isinstance(result, torch.Tensor) else list(result)

    return run


def max_abs_difference(outputs, expected: list[np.ndarray]) -> float:
    """The largest absolute difference between an engine's outputs and the expected ones (inf if shapes differ)."""
    arrays = [np.asarray(out.numpy() if hasattr(out, "numpy") else out) for out in outputs]
    if len(arrays) != len(expected) or any(a.shape != e.shape for a, e in zip(arrays, expected)):
        return float("inf")
    return max((float(np.max(np.abs(a.astype(np.float64) - e))) for a, e in zip(arrays, expected) if a.size), default=0.0)


def bench_bundle(bundle_dir: Path, config: BenchConfig, arrays: list[np.ndarray] | None = None) -> dict:
    """Time the bundle and each compared engine on the same inputs; returns one row per engine."""
    for engine in config.compare:
        if engine not in ENGINES:
            raise EdgepackError(f"unknown engine '{engine}' for --compare", f"use one of {', '.join(ENGINES)}")
    if config.runs < config.rounds or config.warmup < 0:
        raise EdgepackError(f"--runs must be at least {config.rounds} and --warmup at least 0", "raise --runs")
    os.environ["TVM_NUM_THREADS"] = str(config.threads)
    bundle = loader.load(bundle_dir)
    arrays = [np.asarray(a) for a in arrays] if arrays is not None else bundle.golden_cases()[0][0]
    bundle_format.check_inputs(bundle.inputs, arrays)
    device_arrays = bundle.to_device(arrays)
    calls: dict[str, Callable[[], object]] = {"edgepack": lambda: bundle.invoke(device_arrays)}
    builders = {"onnxruntime": _onnxruntime_runner, "openvino": _openvino_runner, "torch": _torch_runner}
    for engine in config.compare:
        calls[engine] = lambda run=builders[engine](bundle, config.threads): run(arrays)
    expected = [np.asarray(out.numpy()) for out in bundle.invoke(device_arrays)]
    differences = {name: max_abs_difference(call(), expected) for name, call in calls.items()}
    per_round = config.runs // config.rounds
    times = timed_rounds(calls, config.warmup, per_round, config.rounds)
    rows = {name: {**timing_summary(samples), "max_abs_diff_vs_edgepack": differences[name]} for name, samples in times.items()}
    baseline = rows.get("onnxruntime", {}).get("median_ms")
    for row in rows.values():
        row["vs_onnxruntime"] = row["median_ms"] / baseline if baseline else None
    return {
        "bundle": str(bundle_dir),
        "protocol": {"warmup": config.warmup, "runs": per_round * config.rounds, "rounds": config.rounds,
                     "threads": config.threads, "tvm_runtime_threads": loader.runtime_threads(),
                     "timed": f"one call of main on inputs already in memory; engines alternate by round, each turn "
                              f"after a {SETTLE_S} s pause and {TURN_WARMUP} untimed calls"},
        "engines": rows,
        "peak_rss_kb": peak_rss_kb(),
        "samples_ms": times,  # every timed call per engine (`bench --plot` draws their distribution)
    }
