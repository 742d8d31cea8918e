"""`edgepack build MODEL --target T`: compile and package a model into a verified bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from edgepack.cli.console import err, out
from edgepack.cli.inspect import print_summary


def build_command(
    model: str = typer.Argument(..., help="model.onnx, program.pt2, or path/to/file.py:factory"),
    target: str = typer.Option("x86_64", "--target", "-t", help="target name (see `edgepack targets`) or a .toml path"),
    out_dir: Path = typer.Option(Path("dist"), "--out", "-o", help="directory the bundle is written into"),
    name: Optional[str] = typer.Option(None, help="bundle name (default: model file stem or factory name)"),
    version: Optional[str] = typer.Option(None, help="bundle version (default: from the model file, else 0.1.0)"),
    inputs: List[str] = typer.Option([], "--input", "-i", help="name:1x3x224x224:float32, for dynamic or torch inputs"),
    golden_inputs: Optional[Path] = typer.Option(None, help=".npz of real inputs (one array per input, cases stacked on axis 0)"),
    cases: int = typer.Option(3, help="random golden cases when --golden-inputs is not given"),
    atol: float = typer.Option(1e-4, help="absolute tolerance of the golden check"),
    rtol: float = typer.Option(1e-3, help="relative tolerance of the golden check"),
    force: bool = typer.Option(False, "--force", help="replace a bundle already at the destination"),
    archive: bool = typer.Option(False, "--archive", help="also write <bundle>.tar.gz"),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="ship the ONNX model for --compare"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved plan and stop"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON when done"),
    tune: int = typer.Option(0, "--tune", min=0, help="tune N MetaSchedule trials first (records kept for later builds)"),
    database: Optional[Path] = typer.Option(None, "--database", help="tuning database directory (default: see `edgepack tune`)"),
    schedule: bool = typer.Option(True, "--schedule/--no-schedule", help="heuristic CPU schedules for untuned kernels"),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help=".npz of samples per input (+ 'labels'): measure the bundle against the original model"),
    max_drop: Optional[str] = typer.Option(None, "--max-drop", help="with --eval: fail when accuracy (or top-1 agreement) drops more, e.g. 1%"),
) -> None:
    """Compile MODEL for a target and write a self-contained, verified bundle."""
    from edgepack.build import EvaluationConfig, plan_build, run_build
    from edgepack.compile import CompileConfig
    from edgepack.golden import GoldenConfig
    from edgepack.errors import EdgepackError
    from edgepack.evaluation import parse_max_drop
    from edgepack.tune import TuneConfig

    if max_drop is not None and eval_data is None:
        raise EdgepackError("--max-drop needs --eval data to measure the drop on", "add --eval data.npz")
    evaluation = EvaluationConfig(eval_data, parse_max_drop(max_drop) if max_drop else None) if eval_data else None

    plan = plan_build(model, target, out_dir, name=name, version=version, inputs=inputs, force=force, archive=archive,
                      reference=reference, golden=GoldenConfig(cases=cases, atol=atol, rtol=rtol),
                      golden_inputs=golden_inputs, tune=TuneConfig(trials=tune, database=database) if tune else None,
                      compile=CompileConfig(cpu_schedule=schedule, tuning_database=str(database) if database else None),
                      evaluation=evaluation)
    if dry_run:
        for line in plan.describe():
            out.print(line, highlight=False, soft_wrap=True)  # one line each, however long, for scripts
        return
    with err.status("building") as status:
        result = run_build(plan, progress=lambda stage: status.update(f"{stage}…"))
    if as_json:
        print(json.dumps(result.bundle.manifest, indent=2))
        return
    print_summary(result.bundle.path, result.bundle.manifest)


def register(app: typer.Typer) -> None:
    app.command("build")(build_command)
