"""`edgepack quantize MODEL -o out.onnx --mode int8|int8-dynamic|fp16|int4`: a quantized ONNX model and its report."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from edgepack.cli.console import err, out
from edgepack.cli.progress import progress_reporter


class QuantizeMode(str, Enum):
    int8 = "int8"
    int8_dynamic = "int8-dynamic"
    fp16 = "fp16"
    int4 = "int4"


class CalibrationMethod(str, Enum):
    minmax = "minmax"
    percentile = "percentile"
    entropy = "entropy"


def quantize_pass(mode: QuantizeMode, calib: Optional[str], method: CalibrationMethod, eval_data: Optional[Path],
                  max_drop: Optional[str], auto: bool, exclude: List[str] = (), group_size: int = 32):
    """The quantization config (an OnnxPass) for these options; shared by `quantize` and `build --quantize`."""
    from edgepack.measure.evaluation import parse_max_drop
    from edgepack.compression.quantize import QualityGate, quantization_config

    gate = QualityGate(eval_data, parse_max_drop(max_drop) if max_drop else None, auto)
    return quantization_config(mode.value, calibration=calib, method=method.value, gate=gate, exclude=exclude,
                               group_size=group_size)


def quantize_command(
    model: str = typer.Argument(..., help="model.onnx, program.pt2, or path/to/file.py:factory"),
    output: Path = typer.Option(..., "--out", "-o", help="the quantized .onnx file to write"),
    mode: QuantizeMode = typer.Option(..., "--mode", "-m", help="int8 (static, QDQ), int8-dynamic, fp16, int4 (weight-only)"),
    calib: Optional[str] = typer.Option(None, "--calib", help="int8: .npz, folder of .npy, or file.py:function yielding batches"),
    calib_method: CalibrationMethod = typer.Option(CalibrationMethod.minmax, "--calib-method", help="activation calibration"),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help=".npz of samples (+ 'labels'): accuracy, else agreement with fp32"),
    max_drop: Optional[str] = typer.Option(None, "--max-drop", help="with --eval: fail when accuracy (or top-1 agreement) drops more, e.g. 1%"),
    auto: bool = typer.Option(False, "--auto", help="with --max-drop: keep the most sensitive layers in float until it holds"),
    exclude: List[str] = typer.Option([], "--exclude", help="node name to keep in float (repeatable)"),
    group_size: int = typer.Option(32, "--group-size", help="int4: weights per scale"),
    inputs: List[str] = typer.Option([], "--input", "-i", help="name:1x3x224x224:float32, for dynamic or torch inputs"),
    target: str = typer.Option("x86_64", "--target", "-t", help="the target the model is meant for (capability notes)"),
    as_json: bool = typer.Option(False, "--json", help="print the stage report as JSON"),
) -> None:
    """Quantize MODEL into an ONNX file TVM can compile, with a size and quality report."""
    from edgepack.compression.quantize import quantize, summary_line

    config = quantize_pass(mode, calib, calib_method, eval_data, max_drop, auto, exclude, group_size)
    with progress_reporter("quantize") as report:
        record = quantize(model, output, config, inputs=inputs, target=target, progress=report)
    for warning in record.report["warnings"]:
        err.print(f"warning: {warning}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(record.to_json(), indent=2))
        return
    out.print(f"wrote {output}", highlight=False)
    out.print(summary_line(record.report), highlight=False, soft_wrap=True)
    for kept in record.report["kept_in_float"]:
        out.print(f"  kept in float: {kept['node']} ({kept['why']})", highlight=False, soft_wrap=True)
    for skipped in record.report["skipped"]:
        out.print(f"  skipped: {skipped['node']} ({skipped['op']}): {skipped['why']}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_command)
