"""`edgepack build MODEL --target T`: compile and package a model into a verified bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from edgepack.cli.console import err, out
from edgepack.cli.inspect import print_summary
from edgepack.cli.progress import progress_reporter
from edgepack.cli.quantize import CalibrationMethod, QuantizeMode, quantize_pass
from edgepack.cli.prune import Criterion, Granularity, Scope, prune_config


def build_command(
    model: str = typer.Argument(..., help="model.onnx, program.pt2, or path/to/file.py:factory"),
    target: str = typer.Option("x86_64", "--target", "-t", help="target name (see `edgepack targets`) or a .toml path", rich_help_panel="Model"),
    out_dir: Path = typer.Option(Path("dist"), "--out", "-o", help="directory the bundle is written into", rich_help_panel="Bundle"),
    name: Optional[str] = typer.Option(None, help="bundle name (default: model file stem or factory name)", rich_help_panel="Bundle"),
    version: Optional[str] = typer.Option(None, help="bundle version (default: from the model file, else 0.1.0)", rich_help_panel="Bundle"),
    inputs: List[str] = typer.Option([], "--input", "-i", help="name:1x3x224x224:float32, for dynamic or torch inputs", rich_help_panel="Model"),
    dims: List[str] = typer.Option([], "--dim", help="range of a named (dynamic) axis, e.g. B=1..64 (default 1..64)", rich_help_panel="Model"),
    export_atol: float = typer.Option(1e-4, "--export-atol", help="PyTorch models: how far ONNX Runtime may differ from PyTorch "
                                      "after export (absolute; relative 1e-3)", rich_help_panel="Model"),
    golden_inputs: Optional[Path] = typer.Option(None, help=".npz of real inputs (one array per input, cases stacked on axis 0)", rich_help_panel="Golden check"),
    cases: int = typer.Option(3, help="random golden cases when --golden-inputs is not given", rich_help_panel="Golden check"),
    atol: float = typer.Option(1e-4, help="absolute tolerance of the golden check", rich_help_panel="Golden check"),
    rtol: float = typer.Option(1e-3, help="relative tolerance of the golden check", rich_help_panel="Golden check"),
    force: bool = typer.Option(False, "--force", help="replace a bundle already at the destination", rich_help_panel="Bundle"),
    archive: bool = typer.Option(False, "--archive", help="also write <bundle>.tar.gz", rich_help_panel="Bundle"),
    sign: Optional[Path] = typer.Option(None, "--sign", help="private key from `edgepack keygen`: sign the manifest (manifest.sig.json)", rich_help_panel="Bundle"),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="ship the ONNX model for --compare", rich_help_panel="Bundle"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved plan and stop", rich_help_panel="Bundle"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON when done", rich_help_panel="Bundle"),
    tune: int = typer.Option(0, "--tune", min=0, help="tune N MetaSchedule trials first (records kept for later builds)", rich_help_panel="Compile and tuning"),
    database: Optional[Path] = typer.Option(None, "--database", help="tuning database directory (default: see `edgepack tune`)", rich_help_panel="Compile and tuning"),
    rpc_tracker: Optional[str] = typer.Option(None, "--rpc-tracker", help="with --tune: host:port of a TVM RPC tracker to measure on", rich_help_panel="Compile and tuning"),
    rpc_key: Optional[str] = typer.Option(None, "--rpc-key", help="with --tune: device key registered at the tracker", rich_help_panel="Compile and tuning"),
    schedule: bool = typer.Option(True, "--schedule/--no-schedule", help="heuristic CPU schedules for untuned kernels", rich_help_panel="Compile and tuning"),
    integer_ops: bool = typer.Option(True, "--integer-ops/--no-integer-ops", help="run QDQ conv/matmul as int8 ops (else dequantize-then-float)", rich_help_panel="Compile and tuning"),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help=".npz of samples per input (+ 'labels'): measure the bundle against the original model", rich_help_panel="Quality"),
    max_drop: Optional[str] = typer.Option(None, "--max-drop", help="with --eval: fail when accuracy (or top-1 agreement) drops more, e.g. 1%", rich_help_panel="Quality"),
    quantize: Optional[QuantizeMode] = typer.Option(None, "--quantize", help="quantize after pre-flight (see `edgepack quantize`)", rich_help_panel="Quantization"),
    calib: Optional[str] = typer.Option(None, "--calib", help="with --quantize int8: .npz, folder of .npy, or file.py:function", rich_help_panel="Quantization"),
    calib_method: CalibrationMethod = typer.Option(CalibrationMethod.minmax, "--calib-method", help="activation calibration", rich_help_panel="Quantization"),
    auto: bool = typer.Option(False, "--auto", help="with --quantize and --max-drop: keep the most sensitive layers in float", rich_help_panel="Quantization"),
    prune: Optional[Granularity] = typer.Option(None, "--prune", help="prune before export: channels or weights (see `edgepack prune`)", rich_help_panel="Pruning"),
    prune_criterion: Criterion = typer.Option(Criterion.magnitude, "--prune-criterion", help="magnitude, or taylor (uses --calib .npz or --train)", rich_help_panel="Pruning"),
    prune_sparsity: Optional[str] = typer.Option(None, "--prune-sparsity", help="share removed, e.g. 50% (default 50%)", rich_help_panel="Pruning"),
    prune_threshold: Optional[float] = typer.Option(None, "--prune-threshold", help="remove scores <= this instead of a sparsity", rich_help_panel="Pruning"),
    prune_scope: Scope = typer.Option(Scope.layer, "--prune-scope", help="sparsity per layer or ranked over the whole model", rich_help_panel="Pruning"),
    train: Optional[str] = typer.Option(None, "--train", help="with --prune: fine-tune with file.py:function (inputs, labels)", rich_help_panel="Pruning"),
    epochs: int = typer.Option(3, "--epochs", min=1, help="with --train: fine-tuning epochs", rich_help_panel="Pruning"),
    lr: float = typer.Option(1e-3, "--lr", help="with --train: fine-tuning learning rate", rich_help_panel="Pruning"),
    max_seq_len: int = typer.Option(256, "--max-seq-len", help="language models: KV-cache positions (prompt + new tokens)", rich_help_panel="Language models"),
    group_size: int = typer.Option(32, "--group-size", help="language models with --quantize int8|int4: inputs per weight scale", rich_help_panel="Language models"),
    int8_activations: bool = typer.Option(True, "--int8-activations/--fp32-activations", help="language models with --quantize on AVX512-VNNI: decode quantizes its activations to int8 per group and runs integer dot products (as llama.cpp), else fp32", rich_help_panel="Language models"),
) -> None:
    """Compile MODEL for a target and write a self-contained, verified bundle.

    MODEL may also be a transformers model directory (config.json + model.safetensors) of the Llama, Qwen2
    or GPT-2 family: the bundle then generates tokens (docs/llm.md)."""
    from edgepack.llm.build import is_llm_dir

    if is_llm_dir(model):
        given = [flag for flag, value in (("--input", inputs), ("--golden-inputs", golden_inputs), ("--tune", tune),
                                          ("--eval", eval_data), ("--prune", prune), ("--calib", calib), ("--archive", archive))
                 if value]
        if given:
            from edgepack.errors import EdgepackError

            raise EdgepackError(f"{', '.join(given)} do(es) not apply to language-model builds ('{model}' holds config.json)",
                                "drop it; language models take --max-seq-len, --quantize int8|int4, --group-size (docs/llm.md)")
        _build_llm(model, target, out_dir, name, version, force, sign, dry_run, as_json, max_seq_len,
                   quantize.value if quantize else None, group_size, int8_activations)
        return
    from edgepack.build import EvaluationConfig, plan_build, run_build
    from edgepack.compiler.compile import CompileConfig
    from edgepack.bundle.golden import GoldenConfig
    from edgepack.errors import EdgepackError
    from edgepack.measure.evaluation import parse_max_drop
    from edgepack.compiler.tune import RpcTracker, TuneConfig
    from edgepack.frontends.export import ExportConfig
    from edgepack.pipeline import compression_passes

    if max_drop is not None and eval_data is None:
        raise EdgepackError("--max-drop needs --eval data to measure the drop on", "add --eval data.npz")
    evaluation = EvaluationConfig(eval_data, parse_max_drop(max_drop) if max_drop else None) if eval_data else None
    quantization = quantize_pass(quantize, calib, calib_method, eval_data, max_drop, auto) if quantize else None
    taylor_calib = prune is not None and prune_criterion is Criterion.taylor and calib is not None
    pruning = prune_config(model, prune, prune_criterion, prune_sparsity, prune_threshold, prune_scope,
                           Path(calib) if taylor_calib else None, train, epochs, lr, eval_data, max_drop, bench=True) if prune else None
    if pruning is None and train:
        raise EdgepackError("--train fine-tunes after pruning", "add --prune channels (or weights)")
    if quantization is None and (auto or (calib and not taylor_calib)):
        raise EdgepackError("--calib and --auto only apply to quantization", "add --quantize int8 (or another mode)")

    plan = plan_build(model, target, out_dir, name=name, version=version, inputs=inputs, dims=dims, force=force, archive=archive,
                      reference=reference, golden=GoldenConfig(cases=cases, atol=atol, rtol=rtol),
                      golden_inputs=golden_inputs, tune=TuneConfig(trials=tune, database=database, rpc=RpcTracker.parse(rpc_tracker, rpc_key) if rpc_tracker else None) if tune else None,
                      compile=CompileConfig(cpu_schedule=schedule, tuning_database=str(database) if database else None, integer_ops=integer_ops),
                      evaluation=evaluation, sign=sign, export=ExportConfig(atol=export_atol),
                      **compression_passes(pruning, quantization))
    if dry_run:
        for line in plan.describe():
            out.print(line, highlight=False, soft_wrap=True)  # one line each, however long, for scripts
        return
    with progress_reporter("build") as report:
        result = run_build(plan, progress=report)
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


def _build_llm(model, target, out_dir, name, version, force, sign, dry_run, as_json, max_seq_len, quantize, group_size,
               int8_activations) -> None:
    """`edgepack build MODEL_DIR`: a language-model bundle (edgepack.llm)."""
    from edgepack.llm.build import plan_llm_build, run_llm_build

    plan = plan_llm_build(model, target, out_dir, name=name, version=version, max_seq_len=max_seq_len, quantize=quantize,
                          group_size=group_size, force=force, sign=sign, int8_activations=int8_activations)
    if dry_run:
        for line in plan.describe():
            out.print(line, highlight=False, soft_wrap=True)
        return
    with err.status("building") as status:
        bundle, _ = run_llm_build(plan, progress=lambda stage: status.update(f"{stage}…"))
    if as_json:
        print(json.dumps(bundle.manifest, indent=2))
        return
    print_summary(bundle.path, bundle.manifest)


def register(app: typer.Typer) -> None:
    app.command("build")(build_command)
