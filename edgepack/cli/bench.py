"""`edgepack bench BUNDLE --compare onnxruntime --compare openvino`: latency of the bundle beside other engines."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from edgepack.cli.console import out


class Engine(str, Enum):
    onnxruntime = "onnxruntime"
    openvino = "openvino"
    torch = "torch"


def bench_command(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    compare: List[Engine] = typer.Option([], "--compare", "-c", help="also time this engine (repeatable)"),
    runs: int = typer.Option(100, help="timed runs per engine"),
    warmup: int = typer.Option(10, help="untimed runs per engine first"),
    threads: Optional[int] = typer.Option(None, help="threads for every engine (default: every core of the machine that runs it)"),
    inputs: List[Path] = typer.Option([], "--input", "-i", help=".npy per input (default: golden case 0)"),
    device: Optional[str] = typer.Option(None, "--device", help="benchmark on this device with its native loader: "
                                         "a store directory or ssh://[user@]host[:port]/path"),
    rpc_tracker: Optional[str] = typer.Option(None, "--rpc-tracker", help="benchmark through TVM RPC: the tracker's HOST:PORT"),
    rpc_key: Optional[str] = typer.Option(None, "--rpc-key", help="the device key the RPC server registered under"),
    repeat: int = typer.Option(10, "--repeat", help="RPC: timings of runs/repeat calls each (time_evaluator's repeat)"),
    timeout: float = typer.Option(600.0, "--timeout", help="--device: seconds the device's loader may run"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="also draw the latency distribution per engine into this PNG"),
) -> None:
    """Time the bundle (warm-up, then N runs) here beside ONNX Runtime / OpenVINO / PyTorch, or on a device (--device, --rpc-tracker)."""
    from edgepack.errors import EdgepackError
    from edgepack.runtime.bundle_format import load_npy

    if plot is not None and (device is not None or rpc_tracker is not None or rpc_key is not None):
        raise EdgepackError("--plot draws the calls timed on this machine; a device reports only a summary",
                            "drop --plot, or bench here without --device/--rpc-tracker")
    if device is not None or rpc_tracker is not None or rpc_key is not None:
        _bench_remote(bundle, device, rpc_tracker, rpc_key, compare, runs, warmup, threads, repeat, timeout, inputs, as_json)
        return
    from edgepack.bench import BenchConfig, bench_bundle

    threads = threads or os.cpu_count() or 1
    arrays = [load_npy(path) for path in inputs] or None
    config = BenchConfig(warmup=warmup, runs=runs, threads=threads, compare=tuple(e.value for e in compare))
    report = bench_bundle(bundle, config, arrays)
    if plot is not None:
        try:
            from edgepack.measure.plots import latency_plot
        except ImportError:
            raise EdgepackError("--plot needs matplotlib, which is not installed", "pip install 'edgepack[plots]'") from None
        latency_plot(report["samples_ms"], plot, title=f"{Path(bundle).name}: {report['protocol']['runs']} calls, {threads} threads")
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table("engine", "median ms", "p90 ms", "p99 ms", "min ms", "mean ms", "per s", "× onnxruntime", "max |diff|",
                  title=f"{bundle}  ({report['protocol']['runs']} runs, {threads} threads)", title_justify="left")
    for engine, row in report["engines"].items():
        ratio = f"{row['vs_onnxruntime']:.2f}" if row["vs_onnxruntime"] else "—"
        table.add_row(engine, *(f"{row[k]:.3f}" for k in ("median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms")),
                      f"{row['throughput_per_s']:.0f}", ratio, f"{row['max_abs_diff_vs_edgepack']:.1e}")
    out.print(table)
    out.print(f"peak RSS {report['peak_rss_kb'] / 1024:.0f} MiB; {report['protocol']['timed']}; "
              "max |diff|: largest absolute difference from edgepack's outputs", highlight=False)
    if plot is not None:
        out.print(f"wrote {plot}", highlight=False)


def _bench_remote(bundle: Path, device: Optional[str], rpc_tracker: Optional[str], rpc_key: Optional[str], compare: list,
                  runs: int, warmup: int, threads: Optional[int], repeat: int, timeout: float, inputs: List[Path], as_json: bool) -> None:
    """`--device` (the native loader's bench on the device) or `--rpc-tracker/--rpc-key` (TVM RPC)."""
    from edgepack.errors import EdgepackError, VerificationError
    from edgepack.runtime.bundle_format import load_npy

    if compare:
        raise EdgepackError("--compare times engines on this machine, not on a device", "drop --compare, or drop --device/--rpc-tracker")
    if device is not None and (rpc_tracker or rpc_key):
        raise EdgepackError("--device and --rpc-tracker/--rpc-key pick two different ways to reach a board", "pass one of them")
    if device is not None:
        from edgepack.deploy.bench_device import DeviceBenchConfig, bench_on_device

        if inputs:
            raise EdgepackError("--input is not sent to the device; --device benchmarks on the golden inputs", "drop --input")
        report = bench_on_device(bundle, device, DeviceBenchConfig(warmup=warmup, runs=runs, threads=threads, timeout_s=timeout))
    else:
        from edgepack.deploy.rpc_bench import RpcBenchConfig, bench_rpc

        if not rpc_tracker or not rpc_key:
            raise EdgepackError("RPC benchmarking needs both --rpc-tracker HOST:PORT and --rpc-key KEY", "pass both")
        if threads is not None:
            raise EdgepackError("--threads cannot be set through RPC", "start the RPC server with TVM_NUM_THREADS set instead")
        if repeat < 1 or runs < repeat:
            raise EdgepackError(f"--runs ({runs}) must be at least --repeat ({repeat}) and --repeat at least 1", "raise --runs")
        arrays = [load_npy(path) for path in inputs] or None
        report = bench_rpc(bundle, RpcBenchConfig(rpc_tracker, rpc_key, warmup=warmup, number=runs // repeat, repeat=repeat), arrays)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        protocol, results = report["protocol"], report["results"]
        table = Table("where", *(f"{key.removesuffix('_ms')} ms" for key in ("median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms")
                                 if key in results),
                      title=f"{bundle} on {report['device']}", title_justify="left")
        table.add_row(report.get("machine") or protocol["where"],
                      *(f"{results[key]:.3f}" for key in ("median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms") if key in results))
        out.print(table)
        runs_text = (f"{protocol['repeat']} x {protocol['number']} runs" if "repeat" in protocol else f"{protocol['runs']} runs")
        out.print(f"measured {protocol['where']}: {protocol['warmup']} warm-up, {runs_text}, threads {protocol['threads'] or 'unknown'}"
                  f" ({protocol['threads_source']}), inputs from {protocol['inputs_from']}; {protocol['timed']}", highlight=False)
        if "copy" in report:
            out.print(f"benchmarked {report['benchmarked']} ({report['copy']})", highlight=False)
    check = report.get("golden_check")
    if check is not None and not check["passed"]:
        raise VerificationError(f"the outputs on {report['device']} differ from the golden vectors (max abs error {check['max_abs_err']:.3g})",
                                "check that the board matches the bundle's target")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
