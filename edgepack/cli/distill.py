"""`edgepack distill TEACHER --data train.npz (--student file.py:factory | --tree | --svm | --rules)`: a smaller model, then its bundles."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from edgepack.cli.console import err, out


class Kernel(str, Enum):
    linear = "linear"
    rbf = "rbf"


class FitTo(str, Enum):
    labels = "labels"
    scores = "scores"


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fraction(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def comparison_table(rows: list[dict]) -> Table:
    """Teacher vs student: accuracy, fidelity, parameters, sizes, latency."""
    table = Table("model", "runs on", "accuracy", "fidelity", "params", "model size", "bundle size", "latency", "verified",
                  title="teacher vs student", title_justify="left")
    for row in rows:
        verified = {True: "yes", False: "NO", None: "—"}[row.get("verified")]
        table.add_row(row["model"], row["target"], _fraction(row["accuracy"]), _fraction(row["fidelity"]),
                      "—" if row["params"] is None else f"{row['params']:,}", _size(row["model_bytes"]),
                      _size(row["bundle_bytes"]), "—" if row["latency_ms"] is None else f"{row['latency_ms']:.3f} ms", verified)
    return table


def distill_command(
    teacher: str = typer.Argument(..., help="teacher: model.onnx, program.pt2, or path/to/file.py:factory"),
    data: Path = typer.Option(..., "--data", help="training .npz: one array per input (or 'x'), samples on axis 0, optional 'labels'"),
    student: Optional[str] = typer.Option(None, "--student", help="network student: path/to/file.py:factory (untrained nn.Module)"),
    tree: bool = typer.Option(False, "--tree", help="rule student: a decision tree fitted to the teacher's predictions"),
    svm: bool = typer.Option(False, "--svm", help="SVM student fitted to the teacher's classes or scores"),
    rules: bool = typer.Option(False, "--rules", help="rule-set student: ordered if-then rules read off a shallow forest"),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help=".npz to report on and to measure the bundles (never used to choose)"),
    val_data: Optional[Path] = typer.Option(None, "--val", help="network: .npz to choose the best epoch on (default: --val-fraction of --data)"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="network: training samples held out to choose the best epoch (0: last epoch)"),
    temperature: float = typer.Option(4.0, "--temperature", "-T", help="network: softening temperature T"),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="network: weight of the distillation term (default 0.5; 1 without labels)"),
    epochs: int = typer.Option(30, "--epochs", help="network: training epochs"),
    lr: float = typer.Option(1e-2, "--lr", help="network: Adam learning rate (cosine schedule)"),
    batch_size: int = typer.Option(64, "--batch-size", help="network: samples per step"),
    seed: int = typer.Option(0, "--seed", help="random seed"),
    max_depth: Optional[int] = typer.Option(8, "--max-depth", help="tree: depth limit"),
    max_leaf_nodes: Optional[int] = typer.Option(None, "--max-leaf-nodes", help="tree: leaf (rule) limit"),
    min_samples_leaf: int = typer.Option(1, "--min-samples-leaf", help="tree: training samples per leaf at least"),
    augment: int = typer.Option(0, "--augment", help="tree/svm/rules: also fit on N noisy copies of training samples, labelled by the teacher"),
    noise: float = typer.Option(0.5, "--noise", help="tree/svm/rules: --augment noise, as a fraction of each feature's standard deviation"),
    kernel: Kernel = typer.Option(Kernel.linear, "--kernel", help="svm: linear, or rbf through a Nyström map"),
    svm_fit: FitTo = typer.Option(FitTo.labels, "--svm-fit", help="svm: fit the teacher's classes (LinearSVC) or scores (LinearSVR per class)"),
    svm_c: float = typer.Option(1.0, "--svm-c", help="svm: regularisation C"),
    components: int = typer.Option(100, "--components", help="svm rbf: Nyström components (program size ~ components × features)"),
    gamma: Optional[float] = typer.Option(None, "--gamma", help="svm rbf: kernel width γ (default 1/features, features standardised)"),
    max_rules: int = typer.Option(24, "--max-rules", help="rules: rules at most, the default rule included"),
    max_conditions: int = typer.Option(3, "--max-conditions", help="rules: conditions per rule at most"),
    feature_names: Optional[Path] = typer.Option(None, "--feature-names", help="rules: text file, one name per flattened input feature, for rules.txt"),
    targets: List[str] = typer.Option([], "--target", "-t", help="build the student's bundle for this target (repeatable)"),
    out_dir: Path = typer.Option(Path("dist"), "--out", "-o", help="directory for the student files and bundles"),
    name: Optional[str] = typer.Option(None, help="student name (default: <teacher>_student, _tree, _svm or _rules)"),
    version: Optional[str] = typer.Option(None, help="student bundle version (default 0.1.0)"),
    inputs: List[str] = typer.Option([], "--input", "-i", help="teacher input name:1x3x224x224:float32, for dynamic or torch inputs"),
    max_drop: Optional[str] = typer.Option(None, "--max-drop", help="with --eval: fail when a bundle's accuracy is more below the teacher's, e.g. 2%"),
    teacher_bundle: Optional[Path] = typer.Option(None, "--teacher-bundle", help="the teacher's bundle, for its size and latency in the table"),
    latency_runs: int = typer.Option(50, "--latency-runs", help="timed runs per bundle built for this machine (0: none)"),
    force: bool = typer.Option(False, "--force", help="replace student files and bundles already there"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved plan and stop"),
    as_json: bool = typer.Option(False, "--json", help="print the distill record and the table as JSON"),
) -> None:
    """Distill TEACHER into a smaller network, a decision tree, an SVM or a rule set, and build the student's bundles."""
    from edgepack.compression.distill import (NetworkStudentConfig, RuleSetStudentConfig, SvmStudentConfig, TreeStudentConfig,
                                              plan_distill, run_distill)
    from edgepack.errors import EdgepackError
    from edgepack.measure.evaluation import parse_max_drop

    if (student is not None) + tree + svm + rules != 1:
        raise EdgepackError("say which one student to distill into", "pass one of --student file.py:factory, --tree, --svm, --rules")
    if feature_names is not None and not rules:
        raise EdgepackError("--feature-names names the features of a rule set", "add --rules, or drop --feature-names")
    if student:
        config = NetworkStudentConfig(student, temperature, alpha, epochs, lr, batch_size, seed=seed, val_fraction=val_fraction)
    elif svm:
        config = SvmStudentConfig(kernel.value, svm_fit.value, svm_c, components, gamma, seed=seed, augment=augment, noise=noise)
    elif rules:
        config = RuleSetStudentConfig(max_rules, max_conditions, seed=seed, augment=augment, noise=noise, feature_names=feature_names)
    else:
        config = TreeStudentConfig(max_depth, max_leaf_nodes, min_samples_leaf, seed=seed, augment=augment, noise=noise)
    plan = plan_distill(teacher, config, data, out_dir, eval_data=eval_data, val_data=val_data, inputs=tuple(inputs), name=name, version=version,
                        targets=tuple(targets), force=force, max_drop=parse_max_drop(max_drop) if max_drop else None,
                        latency_runs=latency_runs, teacher_bundle=teacher_bundle)
    if dry_run:
        for line in plan.describe():
            out.print(line, highlight=False, soft_wrap=True)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("teacher", total=None)

        def on_training(state) -> None:
            last = state.last
            scores = "" if last is None else "".join(
                f", {label} {value * 100:.1f}%" for label, value in (("acc", last.accuracy), ("fid", last.fidelity)) if value is not None)
            bar.update(task, total=state.steps, completed=state.step,
                       description=f"epoch {state.epoch}/{state.epochs} loss {state.loss:.3f}{scores}")

        result = run_distill(plan, progress=lambda line: bar.update(task, description=line, total=None), training=on_training)
    if as_json:
        print(json.dumps({"record": result.record.to_json(), "rows": result.rows, "files": [str(p) for p in result.files]}, indent=2))
        return
    report = result.record.report["student"]
    if "best_epoch" in report:
        out.print(f"kept epoch {report['best_epoch']} of {report['epochs_run']} (best {report['selected_by']}); α {report['alpha']}",
                  highlight=False)
    else:
        shape = {"tree": lambda: f"depth {report['depth']}, {report['leaves']} rules",
                 "svm": lambda: f"{report['kernel']} kernel, {report['params']:,} parameters",
                 "rules": lambda: f"{report['rules']} rules, {report['conditions']} conditions"}[plan.student.kind]()
        out.print(f"{plan.student.kind}: {shape}; its ONNX program predicts exactly as the fitted student "
                  f"on {sum(v['samples'] for v in report['onnx_equals_student'].values())} samples", highlight=False)
    out.print(comparison_table(result.rows))
    out.print("wrote " + ", ".join(str(p) for p in result.files), highlight=False, soft_wrap=True)
    for bundle in result.bundles:
        out.print(f"bundle {bundle.path}", highlight=False, soft_wrap=True)
    if not plan.targets:
        out.print(f"build it with: edgepack build {plan.model_path} --target x86_64 -o {plan.out_dir}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_command)
