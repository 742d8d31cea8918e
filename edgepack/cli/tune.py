"""`edgepack tune MODEL --target T --trials N`: tune the model's kernels into the target's tuning database."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from edgepack.cli.console import err, out
from edgepack.cli.progress import progress_reporter
from edgepack.progress import ProgressEvent


@contextmanager
def _stdout_to_stderr(enabled: bool):
    """Send everything written to file descriptor 1 (MetaSchedule's logs and task tables, from Python,
    C++ and worker processes alike) to stderr, so that stdout holds only the JSON document."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def tune_command(
    model: str = typer.Argument(..., help="model.onnx, program.pt2, or path/to/file.py:factory"),
    target: str = typer.Option("x86_64", "--target", "-t", help="target name (see `edgepack targets`) or a .toml path"),
    trials: int = typer.Option(64, "--trials", "-n", min=1, help="measured candidates over all kernels"),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="stop after this many minutes even if trials remain "
                                            "(records kept); pair it with a large --trials"),
    database: Optional[Path] = typer.Option(None, "--database", help="database directory "
                                            "(default: $EDGEPACK_TUNING_DIR/<target>, else <cache>/tuning/<target>)"),
    inputs: List[str] = typer.Option([], "--input", "-i", help="name:1x3x224x224:float32, for dynamic or torch inputs"),
    as_json: bool = typer.Option(False, "--json", help="print the tuning report as JSON"),
    rpc_tracker: Optional[str] = typer.Option(None, "--rpc-tracker", help="host:port of a TVM RPC tracker: measure on its devices"),
    rpc_key: Optional[str] = typer.Option(None, "--rpc-key", help="device key registered at the tracker"),
) -> None:
    """Tune MODEL's kernels with MetaSchedule; later builds of any model with the same kernels use the records.

    Ctrl-C stops tuning and keeps every record measured so far."""
    from edgepack.targets import load_target
    from edgepack.api import tune
    from edgepack.compiler.tune import RpcTracker, TuneConfig, TuningInterrupted, tuning_dir

    rpc = RpcTracker.parse(rpc_tracker, rpc_key) if rpc_tracker else None
    directory = database or tuning_dir(load_target(target))
    try:
        with _stdout_to_stderr(as_json), progress_reporter("tune") as report_progress:
            report_progress(ProgressEvent("prepare", "export, pre-flight, kernel extraction"))
            record = tune(model, target, TuneConfig(trials=trials, database=directory, rpc=rpc, max_minutes=minutes), inputs,
                          progress=lambda state: report_progress(
                              ProgressEvent("tuning", state.line(), state.trials_done, state.trials_total)))
    except TuningInterrupted as stopped:
        report = stopped.record.report
        err.print(f"interrupted: kept {report.get('new_records', 0)} new records ({report.get('trials', 0)} trials) "
                  f"in {directory}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        err.print(f"interrupted: the records measured so far are kept in {directory}", highlight=False)
        raise typer.Exit(130) from None
    if as_json:
        print(json.dumps({"config": record.config, "report": record.report}, indent=2))
        return
    report = record.report
    out.print(f"tuned {report.get('kernels', 0)} kernel(s) with {report.get('trials', 0)} trials "
              f"({report.get('failed_trials', 0)} failed) in {report.get('seconds', 0)} s"
              f"{' (time budget spent)' if report.get('stopped_by_time_budget') else ''}; "
              f"{report.get('new_records', 0)} new records in {directory}", highlight=False, soft_wrap=True)
    if report.get("skipped"):
        out.print(f"{len(report['skipped'])} kernel(s) MetaSchedule cannot search keep the heuristic schedule "
                  "(--json lists them with TVM's reason)", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_command)
