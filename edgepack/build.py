"""The build: resolve and check a plan first, then run the stages in order."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from edgepack.artifacts import Bundle, StageRecord
from edgepack.compile import CompileConfig, check_toolchain, compile_model
from edgepack.errors import EdgepackError
from edgepack.evaluation import EvalData, compare_quality, load_eval_data, onnx_predictor, predict, require_quality
from edgepack.export import ExportConfig, export_to_onnx, load_torch_model
from edgepack.golden import GoldenConfig, load_input_cases, make_golden
from edgepack.passes import OnnxPass, PassContext, TorchPass
from edgepack.package import PackageConfig, bundle_path, check_destination, write_bundle
from edgepack.preflight import load_onnx, preflight
from edgepack.runtime.loader import TensorSpec
from edgepack.signature import parse_input_specs
from edgepack.sources import FactorySource, ModelSource, OnnxSource, describe, import_file, parse_source
from edgepack.targets import TargetSpec, load_target
from edgepack.tune import TuneConfig, tune_model, tuning_dir
from edgepack.verify import verify_bundle

DEFAULT_VERSION = "0.1.0"


@dataclass(frozen=True)
class EvaluationConfig:
    """`--eval data.npz [--max-drop 1%]`: the bundle's quality on real data against the original model."""

    data: Path
    max_drop: float | None = None
    limit: int | None = None  # evaluate at most this many samples


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build will do, resolved and checked before any work starts."""

    source: ModelSource
    target: TargetSpec
    package: PackageConfig
    input_overrides: dict[str, TensorSpec]
    export: ExportConfig | None
    compile: CompileConfig = CompileConfig()
    golden: GoldenConfig = GoldenConfig()
    golden_inputs: Path | None = None
    tune: TuneConfig | None = None  # `--tune N`: tune before compiling, into compile.tuning_database
    torch_passes: tuple[TorchPass, ...] = ()  # before export (prune)
    onnx_passes: tuple[OnnxPass, ...] = ()  # after pre-flight (quantize)
    evaluation: EvaluationConfig | None = None  # measure the bundle against the original model

    @property
    def stages(self) -> list[str]:
        return ([p.stage for p in self.torch_passes] + (["export"] if self.export else []) + ["preflight"]
                + [p.stage for p in self.onnx_passes] + (["tune"] if self.tune else []) + ["compile", "package", "verify"]
                + (["evaluate"] if self.evaluation else []))

    def describe(self) -> list[str]:
        """Human-readable lines for `--dry-run`."""
        lines = [
            f"model:   {self.source.path} ({describe(self.source)['kind']})",
            f"target:  {self.target.name} ({self.target.description}); compiler {self.target.toolchain.cxx}",
            f"bundle:  {bundle_path(self.package, self.target.name)}" + (" (+ .tar.gz)" if self.package.archive else ""),
            f"stages:  {' → '.join(self.stages)}",
        ]
        if self.export:
            lines.append(f"export:  {self.export}")
        if self.tune:
            lines.append(f"tune:    {self.tune.trials} trials into {self.compile.tuning_database}")
        lines.append(f"compile: {self.compile}")
        for stage_pass in (*self.torch_passes, *self.onnx_passes):
            lines.append(f"{stage_pass.stage + ':':9}{stage_pass}")
        if self.evaluation:
            lines.append(f"evaluate: {self.evaluation}")
        golden_from = self.golden_inputs or f"{self.golden.cases} random case(s)"
        lines.append(f"golden:  {golden_from}; atol {self.golden.atol}, rtol {self.golden.rtol}")
        return lines


def _declared_version(source: ModelSource) -> str | None:
    if isinstance(source, OnnxSource):
        model = load_onnx(source.path)
        props = {prop.key: prop.value for prop in model.metadata_props}
        return props.get("version") or (str(model.model_version) if model.model_version > 0 else None)
    if isinstance(source, FactorySource):
        return getattr(import_file(source.path), "__version__", None)
    return None


def plan_build(model: str, target: str, out_dir: Path, *, name: str | None = None, version: str | None = None,
               inputs: list[str] = (), force: bool = False, archive: bool = False, reference: bool = True,
               golden: GoldenConfig = GoldenConfig(), golden_inputs: Path | None = None,
               export: ExportConfig = ExportConfig(), tune: TuneConfig | None = None,
               compile: CompileConfig = CompileConfig(), torch_passes: tuple = (), onnx_passes: tuple = (),
               evaluation: EvaluationConfig | None = None) -> BuildPlan:
    """Resolve the model, target, toolchain and destination; refuse anything wrong before work."""
    source = parse_source(model)
    spec = load_target(target)
    check_toolchain(spec)
    overrides = parse_input_specs(list(inputs))
    package = PackageConfig(name or source.default_name, version or _declared_version(source) or DEFAULT_VERSION,
                            Path(out_dir), force, archive, reference)
    for label, value in (("name", package.name), ("version", package.version)):
        if not value or "/" in value or value.startswith("."):
            raise EdgepackError(f"bundle {label} '{value}' cannot be part of a directory name", f"pass --{label} with letters, digits, . - _")
    check_destination(package, spec.name)
    if torch_passes and isinstance(source, OnnxSource):
        raise EdgepackError(f"{', '.join(p.stage for p in torch_passes)} needs a PyTorch model, '{source.path}' is ONNX",
                            "pass file.py:factory or a .pt2 program")
    if evaluation is not None and not Path(evaluation.data).is_file():
        raise EdgepackError(f"evaluation data '{evaluation.data}' does not exist", "pass an .npz with one array per input and 'labels'")
    if golden_inputs is not None and not Path(golden_inputs).is_file():
        raise EdgepackError(f"golden inputs file '{golden_inputs}' does not exist", "pass an .npz with one array per input")
    if compile.tuning_database is None:  # the target's tuning database, applied whenever it holds records
        database = tune.database if tune is not None and tune.database else tuning_dir(spec)
        compile = replace(compile, tuning_database=str(database))
    if tune is not None:
        tune = replace(tune, database=Path(compile.tuning_database))
        if not spec.runs_on_this_machine():
            raise EdgepackError(f"--tune measures on this machine, which cannot run target '{spec.name}' ({spec.arch})",
                                "tune on the device, or build without --tune (records already tuned are applied)")
    return BuildPlan(source, spec, package, overrides, None if isinstance(source, OnnxSource) else export,
                     compile=compile, golden=golden, golden_inputs=golden_inputs, tune=tune,
                     torch_passes=tuple(torch_passes), onnx_passes=tuple(onnx_passes), evaluation=evaluation)


@dataclass
class BuildResult:
    """The bundle a build wrote and the records of every stage."""

    bundle: Bundle
    stages: list[StageRecord] = field(default_factory=list)


def run_build(plan: BuildPlan, progress: Callable[[str], None] = lambda stage: None) -> BuildResult:
    """Run the stages of a checked plan; the bundle appears only when every stage passed."""
    records: list[StageRecord] = []
    with tempfile.TemporaryDirectory(prefix="edgepack-build-") as workdir:
        work = Path(workdir)
        onnx_path, overrides = plan.source.path, plan.input_overrides
        if plan.export is not None:
            torch_model = load_torch_model(plan.source, overrides)
            for stage_pass in plan.torch_passes:
                progress(stage_pass.stage)
                torch_model, record = stage_pass.run(torch_model, _context(plan, work, stage_pass.stage, progress))
                records.append(record)
            progress("export")
            onnx_path = work / "exported.onnx"
            records.append(export_to_onnx(torch_model, onnx_path, plan.export))
            overrides = {spec.name: spec for spec in torch_model.inputs}
        progress("preflight")
        model, record = preflight(onnx_path, overrides, work)
        records.append(record)
        original = model
        for stage_pass in plan.onnx_passes:
            progress(stage_pass.stage)
            context = _context(plan, work, stage_pass.stage, progress)
            changed, record = stage_pass.run(model, context)
            records.append(record)
            (context.workdir / "preflight").mkdir()
            model, _ = preflight(changed.path, {}, context.workdir / "preflight")
        if plan.tune is not None:
            progress("tune")
            records.append(tune_model(model, plan.target, plan.tune, progress=lambda state: progress(f"tune: {state.line()}")))
        progress("compile")
        compiled, record = compile_model(model, plan.target, work, plan.compile)
        records.append(record)
        progress("package")
        cases = load_input_cases(plan.golden_inputs, model) if plan.golden_inputs else None
        golden = make_golden(model, plan.golden, cases)
        provenance = {"source": describe(plan.source), "stages": [r.to_json() for r in records]}
        assess = None
        if plan.evaluation is not None:
            progress("evaluate")
            data = load_eval_data(plan.evaluation.data, original.inputs, plan.evaluation.limit)
            assess = lambda staging: evaluate_bundle(staging, original, data, plan.evaluation)  # noqa: E731
        bundle, record = write_bundle(compiled, golden, plan.package, provenance,
                                      verify=lambda staging, manifest: verify_bundle(staging), assess=assess)
        records.append(record)
    return BuildResult(bundle, records)


def _context(plan: BuildPlan, work: Path, stage: str, progress: Callable[[str], None]) -> PassContext:
    workdir = work / f"pass-{stage}"
    workdir.mkdir(parents=True, exist_ok=True)
    return PassContext(workdir, plan.target, lambda line: progress(f"{stage}: {line}"))


def evaluate_bundle(bundle_dir: Path, original, data: EvalData, config: EvaluationConfig) -> dict:
    """Run the staged bundle and the original ONNX model on the evaluation data; gate on `max_drop`."""
    from edgepack.runtime.loader import load

    loaded = load(bundle_dir)
    before = predict(onnx_predictor(original.path), original.inputs, data)[0]
    after = predict(loaded.run, original.inputs, data)[0]
    comparison = compare_quality(before, after, data.labels, config.max_drop)
    require_quality(comparison, "the compiled bundle")
    return {"data": data.origin, "baseline": "original model in ONNX Runtime", **comparison.to_json()}


def build(model: str, target: str = "x86_64", out_dir: Path = Path("dist"), **options) -> BuildResult:
    """Plan and run a build in one call: the Python API behind `edgepack build`."""
    return run_build(plan_build(model, target, out_dir, **options))
