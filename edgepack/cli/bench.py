"""`edgepack bench BUNDLE --compare onnxruntime`: latency of the bundle beside other engines."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import List

import typer
from rich.table import Table

from edgepack.cli.console import out


class Engine(str, Enum):
    onnxruntime = "onnxruntime"
    torch = "torch"


def bench_command(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    compare: List[Engine] = typer.Option([], "--compare", "-c", help="also time this engine (repeatable)"),
    runs: int = typer.Option(100, help="timed runs per engine"),
    warmup: int = typer.Option(10, help="untimed runs per engine first"),
    threads: int = typer.Option(os.cpu_count() or 1, help="threads for every engine"),
    inputs: List[Path] = typer.Option([], "--input", "-i", help=".npy per input (default: golden case 0)"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
) -> None:
    """Time the bundle (warm-up, then N runs) and compare with ONNX Runtime / PyTorch in the same run."""
    from edgepack.bench import BenchConfig, bench_bundle
    from edgepack.runtime.loader import load_npy

    arrays = [load_npy(path) for path in inputs] or None
    config = BenchConfig(warmup=warmup, runs=runs, threads=threads, compare=tuple(e.value for e in compare))
    report = bench_bundle(bundle, config, arrays)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table("engine", "median ms", "p90 ms", "p99 ms", "min ms", "mean ms", "per s", "× onnxruntime",
                  title=f"{bundle}  ({report['protocol']['runs']} runs, {threads} threads)", title_justify="left")
    for engine, row in report["engines"].items():
        ratio = f"{row['vs_onnxruntime']:.2f}" if row["vs_onnxruntime"] else "—"
        table.add_row(engine, *(f"{row[k]:.3f}" for k in ("median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms")),
                      f"{row['throughput_per_s']:.0f}", ratio)
    out.print(table)
    out.print(f"peak RSS {report['peak_rss_kb'] / 1024:.0f} MiB; {report['protocol']['timed']}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
