"""`edgepack build MODEL --target T`: compile and package a model into a verified bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from edgepack.cli.console import err, out
from edgepack.cli.inspect import print_summary
from edgepack.cli.quantize import CalibrationMethod, QuantizeMode, quantize_pass
from edgepack.cli.prune import Criterion, Granularity, Scope, prune_config


def build_command(
    model: str = typer.Argument(..., help="model.onnx, program.pt2, or path/to/file.py:factory"),
    target: str = typer.Option("x86_64", "--target", "-t", help="target name (see `edgepack targets`) or a .toml path"),
    out_dir: Path = typer.Option(Path("dist"), "--out", "-o", help="directory the bundle is written into"),
    name: Optional[str] = typer.Option(None, help="bundle name (default: model file stem or factory name)"),
    version: Optional[str] = typer.Option(None, help="bundle version (default: from the model file, else 0.1.0)"),
    inputs: List[str] = typer.Option([], "--input", "-i", help="name:1x3x224x224:float32, for dynamic or torch inputs; a name for a dynamic axis: x:Bx30:float32"),
    dims: List[str] = typer.Option([], "--dim", help="range of a named (dynamic) axis, e.g. B=1..64 (default 1..64)"),
    golden_inputs: Optional[Path] = typer.Option(None, help=".npz of real inputs (one array per input, cases stacked on axis 0)"),
    cases: int = typer.Option(3, help="random golden cases when --golden-inputs is not given"),
    atol: float = typer.Option(1e-4, help="absolute tolerance of the golden check"),
    rtol: float = typer.Option(1e-3, help="relative tolerance of the golden check"),
    force: bool = typer.Option(False, "--force", help="replace a bundle already at the destination"),
    archive: bool = typer.Option(False, "--archive", help="also write <bundle>.tar.gz"),
    sign: Optional[Path] = typer.Option(None, "--sign", help="private key from `edgepack keygen`: sign the manifest (manifest.sig.json)"),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="ship the ONNX model for --compare"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved plan and stop"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON when done"),
    tune: int = typer.Option(0, "--tune", min=0, help="tune N MetaSchedule trials first (records kept for later builds)"),
    database: Optional[Path] = typer.Option(None, "--database", help="tuning database directory (default: see `edgepack tune`)"),
    rpc_tracker: Optional[str] = typer.Option(None, "--rpc-tracker", help="with --tune: host:port of a TVM RPC tracker to measure on"),
    rpc_key: Optional[str] = typer.Option(None, "--rpc-key", help="with --tune: device key registered at the tracker"),
    schedule: bool = typer.Option(True, "--schedule/--no-schedule", help="heuristic CPU schedules for untuned kernels"),
    integer_ops: bool = typer.Option(True, "--integer-ops/--no-integer-ops", help="run QDQ conv/matmul as int8 ops (else dequantize-then-float)"),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help=".npz of samples per input (+ 'labels'): measure the bundle against the original model"),
    max_drop: Optional[str] = typer.Option(None, "--max-drop", help="with --eval: fail when accuracy (or top-1 agreement) drops more, e.g. 1%"),
    quantize: Optional[QuantizeMode] = typer.Option(None, "--quantize", help="quantize after pre-flight (see `edgepack quantize`)"),
    calib: Optional[str] = typer.Option(None, "--calib", help="with --quantize int8: .npz, folder of .npy, or file.py:function"),
    calib_method: CalibrationMethod = typer.Option(CalibrationMethod.minmax, "--calib-method", help="activation calibration"),
    auto: bool = typer.Option(False, "--auto", help="with --quantize and --max-drop: keep the most sensitive layers in float"),
    prune: Optional[Granularity] = typer.Option(None, "--prune", help="prune before export: channels or weights (see `edgepack prune`)"),
    prune_criterion: Criterion = typer.Option(Criterion.magnitude, "--prune-criterion", help="magnitude, or taylor (uses --calib .npz or --train)"),
    prune_sparsity: Optional[str] = typer.Option(None, "--prune-sparsity", help="share removed, e.g. 50% (default 50%)"),
    prune_threshold: Optional[float] = typer.Option(None, "--prune-threshold", help="remove scores <= this instead of a sparsity"),
    prune_scope: Scope = typer.Option(Scope.layer, "--prune-scope", help="sparsity per layer or ranked over the whole model"),
    train: Optional[str] = typer.Option(None, "--train", help="with --prune: fine-tune with file.py:function (inputs, labels)"),
    epochs: int = typer.Option(3, "--epochs", min=1, help="with --train: fine-tuning epochs"),
    lr: float = typer.Option(1e-3, "--lr", help="with --train: fine-tuning learning rate"),
) -> None:
    """Compile MODEL for a target and write a self-contained, verified bundle."""
    from edgepack.build import EvaluationConfig, plan_build, run_build
    from edgepack.compiler.compile import CompileConfig
    from edgepack.bundle.golden import GoldenConfig
    from edgepack.errors import EdgepackError
    from edgepack.measure.evaluation import parse_max_drop
    from edgepack.compiler.tune import RpcTracker, TuneConfig

    if max_drop is not None and eval_data is None:
        raise EdgepackError("--max-drop needs --eval data to measure the drop on", "add --eval data.npz")
    evaluation = EvaluationConfig(eval_data, parse_max_drop(max_drop) if max_drop else None) if eval_data else None
    quantization = quantize_pass(quantize, calib, calib_method, eval_data, max_drop, auto) if quantize else None
    taylor_calib = prune is not None and prune_criterion is Criterion.taylor and calib is not None
    pruning = prune_config(model, prune, prune_criterion, prune_sparsity, prune_threshold, prune_scope,
                           Path(calib) if taylor_calib else None, train, epochs, lr, eval_data, max_drop) if prune else None
    if pruning is None and train:
        raise EdgepackError("--train fine-tunes after pruning", "add --prune channels (or weights)")
    if quantization is None and (auto or (calib and not taylor_calib)):
        raise EdgepackError("--calib and --auto only apply to quantization", "add --quantize int8 (or another mode)")

    plan = plan_build(model, target, out_dir, name=name, version=version, inputs=inputs, dims=dims, force=force, archive=archive,
                      reference=reference, golden=GoldenConfig(cases=cases, atol=atol, rtol=rtol),
                      golden_inputs=golden_inputs, tune=TuneConfig(trials=tune, database=database, rpc=RpcTracker.parse(rpc_tracker, rpc_key) if rpc_tracker else None) if tune else None,
                      compile=CompileConfig(cpu_schedule=schedule, tuning_database=str(database) if database else None, integer_ops=integer_ops),
                      evaluation=evaluation, sign=sign, **_passes(pruning, quantization))
    if dry_run:
        for line in plan.describe():
            out.print(line, highlight=False, soft_wrap=True)  # one line each, however long, for scripts
        return
    with err.status("building") as status:
        result = run_build(plan, progress=lambda stage: status.update(f"{stage}…"))
    for record in result.stages:  # e.g. fp16 on a target without fp16 arithmetic
        for warning in record.report.get("warnings", []):
            err.print(f"warning: {warning}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(result.bundle.manifest, indent=2))
        return
    for record in result.stages:
        if record.stage == "prune":
            from edgepack.compression.prune.report import print_report

            print_report(record.report, out)
    print_summary(result.bundle.path, result.bundle.manifest)


def _passes(pruning, quantization) -> dict:
    """torch_passes and onnx_passes: torch pruning before export; ONNX magnitude pruning before quantization."""
    quantize = (quantization,) if quantization else ()
    if pruning is None:
        return {"torch_passes": (), "onnx_passes": quantize}
    from edgepack.compression.passes import OnnxPass

    if isinstance(pruning, OnnxPass):
        return {"torch_passes": (), "onnx_passes": (pruning, *quantize)}
    return {"torch_passes": (pruning,), "onnx_passes": quantize}


def register(app: typer.Typer) -> None:
    app.command("build")(build_command)
