"""`edgepack prune MODEL`: prune by weight magnitude or Taylor score, whole channels or single weights."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from edgepack.cli.console import out
from edgepack.cli.progress import progress_reporter


class Granularity(str, Enum):
    channels = "channels"  # structured: whole conv filters / linear neurons
    weights = "weights"  # unstructured: single weights


class Criterion(str, Enum):
    magnitude = "magnitude"
    taylor = "taylor"


class Scope(str, Enum):
    layer = "layer"
    global_ = "global"


def prune_config(model: str, granularity: Granularity, criterion: Criterion, sparsity: Optional[str], threshold: Optional[float],
                 scope: Scope, calib: Optional[Path], train: Optional[str], epochs: int, lr: float,
                 eval_data: Optional[Path], max_drop: Optional[str], bench: bool = False):
    """The pruning pass the options describe (shared by `edgepack prune` and `edgepack build --prune`)."""
    from edgepack.errors import EdgepackError
    from edgepack.measure.evaluation import parse_max_drop
    from edgepack.compression.prune import ChannelPrune, FineTune, Magnitude, OnnxWeightPrune, Taylor, WeightPrune, parse_sparsity
    from edgepack.compression.prune.data import parse_train_function
    from edgepack.frontends.sources import OnnxSource, parse_source

    if max_drop is not None and eval_data is None:
        raise EdgepackError("--max-drop needs --eval data to measure the drop on", "add --eval data.npz")
    for label, path in (("--calib", calib), ("--eval", eval_data)):
        if path is not None and not Path(path).is_file():
            raise EdgepackError(f"{label} file '{path}' does not exist", "pass an .npz with one array per input (+ 'labels')")
    amount = parse_sparsity(sparsity) if sparsity is not None else (None if threshold is not None else 0.5)
    drop = parse_max_drop(max_drop) if max_drop else None
    if isinstance(parse_source(model), OnnxSource):
        if granularity is not Granularity.weights or criterion is not Criterion.magnitude or train or calib:
            raise EdgepackError("an ONNX model can only be pruned by weight magnitude (no gradients, no channel rewiring)",
                                "prune it by weights with the magnitude criterion, or prune the PyTorch model")
        return OnnxWeightPrune(amount, threshold, scope.value, eval_data, drop)
    if train is not None:
        parse_train_function(train)  # fail before any work
    finetune = FineTune(train, epochs=epochs, lr=lr) if train else None
    chosen = Taylor(calib=calib) if criterion is Criterion.taylor else Magnitude()
    if calib is not None and criterion is not Criterion.taylor:
        raise EdgepackError("--calib is used by the taylor criterion only", "add --criterion taylor or drop --calib")
    kind = ChannelPrune if granularity is Granularity.channels else WeightPrune
    return kind(amount, threshold, scope.value, chosen, finetune, eval_data, drop, bench)


def prune_command(
    model: str = typer.Argument(..., help="path/to/file.py:factory, program.pt2, or model.onnx (magnitude weights only)"),
    out_path: Path = typer.Option(..., "--out", "-o", help="pruned model: .onnx (or .pt2 for PyTorch models)"),
    granularity: Granularity = typer.Option(Granularity.channels, "--granularity", "-g", help="channels (structured) or weights"),
    criterion: Criterion = typer.Option(Criterion.magnitude, "--criterion", "-c", help="magnitude |w| or taylor |w·dL/dw|"),
    sparsity: Optional[str] = typer.Option(None, "--sparsity", "-s", help="share removed, e.g. 50% (default 50% unless --threshold)"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="remove scores <= this (channels: score / layer mean)"),
    scope: Scope = typer.Option(Scope.layer, "--scope", help="sparsity per layer or ranked over the whole model"),
    calib: Optional[Path] = typer.Option(None, "--calib", help="taylor: .npz of inputs (+ 'labels'; else own predictions)"),
    train: Optional[str] = typer.Option(None, "--train", help="fine-tune with file.py:function returning (inputs, labels) or yielding batches"),
    epochs: int = typer.Option(3, "--epochs", min=1, help="fine-tuning epochs"),
    lr: float = typer.Option(1e-3, "--lr", help="fine-tuning learning rate (Adam)"),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help=".npz of samples (+ 'labels'): quality before and after"),
    max_drop: Optional[str] = typer.Option(None, "--max-drop", help="with --eval: fail when accuracy (or agreement) drops more, e.g. 1%"),
    bench: bool = typer.Option(False, "--bench", help="compile both models for the target and time them"),
    target: str = typer.Option("x86_64", "--target", "-t", help="target for --bench"),
    inputs: List[str] = typer.Option([], "--input", "-i", help="name:1x3x224x224:float32, for dynamic or torch inputs"),
    force: bool = typer.Option(False, "--force", help="replace --out if it exists"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Prune MODEL and write the pruned model; prints what changed (a table) before and after."""
    from edgepack.compression.prune import prune
    from edgepack.compression.prune.api import check_output
    from edgepack.compression.prune.report import print_report

    config = prune_config(model, granularity, criterion, sparsity, threshold, scope, calib, train, epochs, lr, eval_data, max_drop, bench)
    check_output(out_path, force)
    with progress_reporter("prune") as report:
        result = prune(model, config, target, out_path, inputs, force, progress=report)
    if as_json:
        print(json.dumps({"path": str(result.path), **result.record.to_json()}, indent=2))
        return
    print_report(result.record.report, out)
    out.print(f"wrote {result.path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_command)
