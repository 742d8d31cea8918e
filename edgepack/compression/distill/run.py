"""Stage: distill a teacher into a student (network, decision tree, SVM or rule set), then build its bundles.

Plan first (every file, target, toolchain and destination checked), then run: teacher outputs on the
training data, train or fit the student, write it beside the bundles (`NAME.onnx`, plus `NAME.pt2`
for a network and `NAME.rules.txt` for a tree or rule set) so `edgepack build` can take it further, then build
one bundle per target through the normal build with the distill record first in its provenance.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgepack.artifacts import Bundle, StageRecord
from edgepack.compression.distill.network import NetworkStudentConfig, TrainingProgress
from edgepack.compression.distill.teacher import Teacher, check_classifier, load_data, load_teacher
from edgepack.compression.distill.rules import RuleSetStudentConfig
from edgepack.compression.distill.svm import SvmStudentConfig
from edgepack.compression.distill.tree import TreeStudentConfig
from edgepack.errors import EdgepackError, VerificationError
from edgepack.measure.evaluation import EvalData, measure, onnx_predictor, predict
from edgepack.bundle.package import PackageConfig, check_destination
from edgepack.frontends.sources import OnnxSource, describe, parse_source

StudentConfig = NetworkStudentConfig | TreeStudentConfig | SvmStudentConfig | RuleSetStudentConfig
NAME_SUFFIX = {"network": "student", "tree": "tree", "svm": "svm", "rules": "rules"}
DEFAULT_VERSION = "0.1.0"
GOLDEN_CASES = 8
RULES_FILE = "rules.txt"


@dataclass(frozen=True)
class DistillPlan:
    """Everything a distillation will do, resolved and checked before any work starts."""

    teacher: str
    student: StudentConfig
    data: Path
    out_dir: Path
    name: str
    version: str
    eval_data: Path | None = None
    inputs: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    force: bool = False
    max_drop: float | None = None
    latency_runs: int = 50
    teacher_bundle: Path | None = None
    val_data: Path | None = None  # network: where the best epoch is chosen (default: a split of `data`)

    @property
    def model_path(self) -> Path:
        """The student as ONNX: what the bundles are built from."""
        return self.out_dir / f"{self.name}.onnx"

    @property
    def outputs(self) -> list[Path]:
        """Every model file the distillation writes beside the bundles."""
        extra = {"network": [f"{self.name}.pt2"], "tree": [f"{self.name}.rules.txt"], "rules": [f"{self.name}.rules.txt"]}
        return [self.model_path, *(self.out_dir / e for e in extra.get(self.student.kind, [])), self.summary_path]

    @property
    def summary_path(self) -> Path:
        """The distill record and comparison rows as JSON."""
        return self.out_dir / f"{self.name}.distill.json"

    @property
    def ships_rules(self) -> bool:
        return isinstance(self.student, (TreeStudentConfig, RuleSetStudentConfig))

    def describe(self) -> list[str]:
        """Human-readable lines for `--dry-run`."""
        return [
            f"teacher: {self.teacher}",
            f"student: {self.student}",
            f"data:    {self.data}" + (f"; eval {self.eval_data}" if self.eval_data else "; no eval data (fidelity on the training data)"),
            f"writes:  {', '.join(str(p) for p in self.outputs)}",
            f"bundles: {', '.join(f'{self.name}-{self.version}-{t}' for t in self.targets) or 'none (no --target)'}",
        ]


def plan_distill(teacher: str, student: StudentConfig, data: Path, out_dir: Path = Path("dist"), *,
                 eval_data: Path | None = None, inputs: tuple[str, ...] = (), name: str | None = None,
                 version: str | None = None, targets: tuple[str, ...] = (), force: bool = False,
                 max_drop: float | None = None, latency_runs: int = 50, teacher_bundle: Path | None = None,
                 val_data: Path | None = None) -> DistillPlan:
    """Resolve the teacher, student, data, targets and destinations; refuse anything wrong before work."""
    from edgepack.compiler.compile import check_toolchain
    from edgepack.targets import load_target

    student.check()
    source = parse_source(teacher)
    if isinstance(student, NetworkStudentConfig):
        parse_source(student.student)
    if val_data is not None and not isinstance(student, NetworkStudentConfig):
        raise EdgepackError("--val chooses a network student's best epoch; fitted students have no epochs", "drop --val")
    for label, path in (("training data", data), ("evaluation data", eval_data), ("validation data", val_data)):
        if path is not None and not Path(path).is_file():
            raise EdgepackError(f"{label} '{path}' does not exist",
                                "pass an .npz with one array per input (or 'x'), samples on axis 0, optional 'labels'")
    if max_drop is not None and eval_data is None:
        raise EdgepackError("--max-drop needs --eval data to measure the drop on", "add --eval data.npz")
    if teacher_bundle is not None and not (Path(teacher_bundle) / "manifest.json").is_file():
        raise EdgepackError(f"'{teacher_bundle}' is not a bundle directory", "pass a directory written by `edgepack build`")
    if latency_runs < 0:
        raise EdgepackError(f"--latency-runs {latency_runs} is negative", "pass 0 to skip timing")
    name = name or f"{source.default_name}_{NAME_SUFFIX[student.kind]}"
    version = version or DEFAULT_VERSION
    for label, value in (("name", name), ("version", version)):
        if not value or "/" in value or value.startswith("."):
            raise EdgepackError(f"student {label} '{value}' cannot be part of a file name", f"pass --{label} with letters, digits, . - _")
    plan = DistillPlan(teacher, student, Path(data), Path(out_dir), name, version, Path(eval_data) if eval_data else None,
                       tuple(inputs), tuple(dict.fromkeys(targets)), force, max_drop, latency_runs,
                       Path(teacher_bundle) if teacher_bundle else None, Path(val_data) if val_data else None)
    for path in plan.outputs:
        if path.exists() and not force:
            raise EdgepackError(f"'{path}' already exists", "pass --force to replace it, or choose another -o/--name")
    for target in plan.targets:
        spec = load_target(target)
        check_toolchain(spec)
        check_destination(PackageConfig(name, version, Path(out_dir), force), spec.name)
    return plan


@dataclass
class DistillResult:
    """The student files, the distill record, the bundles built from the student, and the comparison rows."""

    plan: DistillPlan
    record: StageRecord
    files: list[Path]
    bundles: list[Bundle] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


def _model_quality(outputs: np.ndarray, data: EvalData, teacher_outputs: np.ndarray) -> dict:
    report = measure(outputs, data.labels, reference=teacher_outputs)
    return {key: report[key] for key in ("samples", "accuracy", "top1_agreement") if key in report}


def _train_network(plan: DistillPlan, teacher: Teacher, train: EvalData, train_logits: np.ndarray, work: Path,
                   training) -> tuple[dict, list[tuple[Path, Path]]]:
    import torch

    from edgepack.compression.distill.network import epoch_evaluator, load_student, train_student, validation_split
    from edgepack.frontends.export import ExportConfig, TorchModel, export_to_onnx

    config: NetworkStudentConfig = plan.student
    alpha = config.resolved_alpha(train.labels is not None)
    if plan.val_data is not None:  # the best epoch is chosen here, never on the reported --eval data
        validation = load_data(plan.val_data, teacher, "validation data")
        val_logits, selected_on = teacher.logits(validation), f"--val {plan.val_data} ({len(validation)} samples)"
    elif config.val_fraction > 0:
        train, train_logits, validation, val_logits = validation_split(train, train_logits, config.val_fraction, config.seed)
        selected_on = f"{len(validation)} training samples held out (--val-fraction {config.val_fraction})"
    else:
        validation = None
    torch.manual_seed(config.seed)
    module = load_student(config.student)
    params = sum(p.numel() for p in module.parameters())
    evaluate = epoch_evaluator(validation.inputs, val_logits, validation.labels) if validation is not None else None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small students train faster on one thread than on contended cores
    try:
        module, history, best = train_student(module, train.inputs, train_logits, train.labels, config, alpha, evaluate, training)
    finally:
        torch.set_num_threads(threads)
    program_path, onnx_path = work / "student.pt2", work / "student.onnx"
    examples = tuple(torch.zeros(spec.shape, dtype=getattr(torch, spec.dtype)) for spec in teacher.inputs)
    try:
        torch.export.save(torch.export.export(module, examples), str(program_path))
    except Exception as exc:  # torch.export raises many types
        raise EdgepackError(f"the trained student cannot be saved with torch.export ({type(exc).__name__})",
                            "make the student exportable with torch.export") from None
    export = export_to_onnx(TorchModel(module, module, teacher.inputs, None), onnx_path, ExportConfig())
    report = {"alpha": alpha, "params": int(params), "epochs_run": len(history), "best_epoch": best,
              "selected_by": (("accuracy" if validation.labels is not None else "fidelity") + " on " + selected_on
                              if validation is not None else "last epoch (--val-fraction 0)"),
              "trained_on": len(train), "history": [h.to_json() for h in history], "export": export.report}
    return report, [(onnx_path, plan.model_path), (program_path, plan.outputs[1])]


def _fit(plan: DistillPlan, teacher: Teacher, train: EvalData, train_logits: np.ndarray, held: EvalData,
         work: Path, n_classes: int) -> tuple[dict, list[tuple[Path, Path]]]:
    from edgepack.compression.distill.fitted import fit_student

    report, onnx_path, listing = fit_student(plan.student, teacher, train, train_logits, held, work, n_classes, plan.teacher, plan.version)
    moves = [(onnx_path, plan.model_path)]
    if listing is not None:
        rules_path = work / RULES_FILE
        rules_path.write_text(listing, encoding="utf-8")
        moves.append((rules_path, plan.outputs[1]))
    return report, moves


def _teacher_onnx(plan: DistillPlan, teacher: Teacher, work: Path) -> Path:
    """The teacher as ONNX for measuring bundles against it (a PyTorch teacher is exported once)."""
    from edgepack.frontends.export import ExportConfig, export_to_onnx
    from edgepack.frontends.sources import OnnxSource

    if isinstance(teacher.source, OnnxSource):
        return teacher.source.path
    path = work / "teacher.onnx"
    if not path.exists():
        export_to_onnx(teacher.run, path, ExportConfig())
    return path


def _golden_inputs(teacher: Teacher, data: EvalData, work: Path) -> Path:
    """Real samples as golden inputs (random inputs would all reach the same few tree leaves)."""
    batch = teacher.inputs[0].shape[0] if teacher.inputs[0].shape else 1
    cases = min(GOLDEN_CASES, len(data) // batch)
    path = work / "golden_inputs.npz"
    np.savez(path, **{spec.name: stack[:cases * batch].reshape((cases, *spec.shape))
                      for spec, stack in zip(teacher.inputs, data.inputs)})
    return path


def _bundle_row(bundle: Bundle, kind: str) -> dict:
    manifest = bundle.manifest
    files = manifest["files"]
    quality = manifest.get("quality") or {}
    after = quality.get("after", {})
    return {"model": kind, "target": f"{manifest['target']['name']} bundle", "accuracy": after.get("accuracy"),
            "fidelity": after.get("top1_agreement"), "params": None,
            "model_bytes": files[manifest["library"]]["size"] + files[manifest["params"]["file"]]["size"],
            "bundle_bytes": sum(entry["size"] for entry in files.values()),
            "latency_ms": (quality.get("latency") or {}).get("median_ms"),
            "verified": manifest["verification"]["passed"], "path": str(bundle.path)}


def _teacher_bundle_row(path: Path, runs: int, teacher: Teacher, data: EvalData | None, logits: np.ndarray) -> dict:
    from edgepack.bench import BenchConfig, bench_bundle
    from edgepack.runtime.bundle_format import read_manifest
    from edgepack.runtime.loader import load

    manifest = read_manifest(path)
    files = manifest["files"]
    latency, quality = None, {}
    if manifest["target"]["arch"] == os.uname().machine:  # measured where it runs
        if data is not None:
            quality = _model_quality(predict(load(path).run, teacher.inputs, data)[0], data, logits)
        if runs:
            latency = bench_bundle(path, BenchConfig(warmup=5, runs=runs, rounds=min(5, runs)))["engines"]["edgepack"]["median_ms"]
    return {"model": "teacher", "target": f"{manifest['target']['name']} bundle", "accuracy": quality.get("accuracy"),
            "fidelity": quality.get("top1_agreement"), "params": None,
            "model_bytes": files[manifest["library"]]["size"] + files[manifest["params"]["file"]]["size"],
            "bundle_bytes": sum(entry["size"] for entry in files.values()), "latency_ms": latency,
            "verified": (manifest.get("verification") or {}).get("passed"), "path": str(path)}


def run_distill(plan: DistillPlan, progress: Callable[[str], None] = lambda line: None,
                training: Callable[[TrainingProgress], None] = lambda state: None) -> DistillResult:
    """Run a checked plan: teacher outputs, student, student files, then one bundle per target."""
    from edgepack.build import EvaluationConfig, plan_build, run_build

    started = time.perf_counter()
    progress("teacher")
    teacher = load_teacher(plan.teacher, plan.inputs)
    train = load_data(plan.data, teacher, "training data")
    evaluation = load_data(plan.eval_data, teacher, "evaluation data") if plan.eval_data else None
    train_logits = teacher.logits(train)
    n_classes = check_classifier(train_logits, f"teacher '{plan.teacher}'")
    held = evaluation or train
    held_logits = teacher.logits(evaluation) if evaluation else train_logits
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=plan.out_dir, prefix=f".{plan.name}.distill-") as workdir:
        work = Path(workdir)
        progress("student")
        if isinstance(plan.student, NetworkStudentConfig):
            student_report, moves = _train_network(plan, teacher, train, train_logits, work, training)
        else:
            student_report, moves = _fit(plan, teacher, train, train_logits, held, work, n_classes)
        progress("measure")
        student_outputs = predict(onnx_predictor(moves[0][0]), teacher.inputs, held)[0]
        student_quality = _model_quality(student_outputs, held, held_logits)
        teacher_quality = _model_quality(held_logits, held, held_logits)
        student_report.update(size_bytes=moves[0][0].stat().st_size, **student_quality)
        record = StageRecord("distill", {
            "teacher": describe(teacher.source), "student": plan.student.to_json(),
            "data": str(plan.data), "eval_data": str(plan.eval_data) if plan.eval_data else None,
            **({"val_data": str(plan.val_data)} if plan.val_data else {})},
            {"train_samples": len(train), "labelled": train.labels is not None, "classes": n_classes,
             "measured_on": "eval data" if evaluation else "training data (no --eval)",
             "teacher": {"params": teacher.params, "size_bytes": teacher.size_bytes, **teacher_quality},
             "student": student_report, "seconds": round(time.perf_counter() - started, 2)})
        if plan.max_drop is not None and "accuracy" in student_quality:  # refuse before building bundles
            drop = teacher_quality["accuracy"] - student_quality["accuracy"]
            if drop > plan.max_drop + 1e-12:
                raise VerificationError(f"the student loses too much: accuracy {teacher_quality['accuracy']:.4f} → "
                                        f"{student_quality['accuracy']:.4f} (drop {drop * 100:.2f} points, max {plan.max_drop * 100:.1f})",
                                        "train longer (--epochs), raise --temperature or the student's size, or raise --max-drop")
        for temporary, final in moves:
            os.replace(temporary, final)
        files = [final for _, final in moves]
        result = DistillResult(plan, record, files)
        result.rows = [
            {"model": "teacher", "target": "ONNX Runtime" if isinstance(teacher.source, OnnxSource) else "PyTorch", "accuracy": teacher_quality.get("accuracy"),
             "fidelity": 1.0, "params": teacher.params, "model_bytes": teacher.size_bytes, "bundle_bytes": None,
             "latency_ms": None, "verified": None, "path": str(teacher.source.path)},
            {"model": f"{plan.student.kind} student", "target": "ONNX Runtime", "accuracy": student_quality.get("accuracy"),
             "fidelity": student_quality["top1_agreement"], "params": student_report["params"],
             "model_bytes": student_report["size_bytes"], "bundle_bytes": None, "latency_ms": None, "verified": None,
             "path": str(plan.model_path)},
        ]
        if plan.teacher_bundle is not None:
            result.rows.append(_teacher_bundle_row(plan.teacher_bundle, plan.latency_runs, teacher, evaluation, held_logits))
        golden = _golden_inputs(teacher, held, work) if plan.targets else None
        for target in plan.targets:
            build_plan = plan_build(str(plan.model_path), target, plan.out_dir, name=plan.name, version=plan.version,
                                    force=plan.force, golden_inputs=golden, prior_stages=(record,),
                                    extra_files=((RULES_FILE, plan.outputs[1]),) if plan.ships_rules else ())
            if plan.eval_data and build_plan.target.runs_on_this_machine():
                measured = EvaluationConfig(plan.eval_data, plan.max_drop, baseline=_teacher_onnx(plan, teacher, work),
                                            latency_runs=plan.latency_runs)
                build_plan = replace(build_plan, evaluation=measured)
            built = run_build(build_plan, progress=lambda stage, t=target: progress(f"{t}: {stage}"))
            result.bundles.append(built.bundle)
            result.rows.append(_bundle_row(built.bundle, f"{plan.student.kind} student"))
    summary = {"record": record.to_json(), "files": [str(p) for p in files], "rows": result.rows}
    plan.summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    result.files.append(plan.summary_path)
    return result


def distill(teacher: str, student: StudentConfig, data: Path, out_dir: Path = Path("dist"), **options) -> DistillResult:
    """Plan and run a distillation in one call: the Python API behind `edgepack distill`."""
    return run_distill(plan_distill(teacher, student, data, out_dir, **options))
