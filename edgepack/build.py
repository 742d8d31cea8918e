"""The build: resolve and check a plan first, then run the stages in order."""

from __future__ import annotations

import sys
import tempfile
import types
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgepack.artifacts import Bundle, StageRecord
from edgepack.compiler.compile import CompileConfig, check_toolchain, compile_model
from edgepack.errors import EdgepackError
from edgepack.measure.evaluation import EvalData, compare_quality, load_eval_data, onnx_predictor, predict, require_quality
from edgepack.frontends.export import ExportConfig
from edgepack.bundle.golden import GoldenConfig, cases_from_samples, load_input_cases, make_golden, samples_needed
from edgepack.bundle.signing import load_private_key
from edgepack.compression.passes import OnnxPass, TorchPass
from edgepack.compression.quantize import golden_rule, recorded_quantization
from edgepack.bundle.package import PackageConfig, bundle_path, check_destination, write_bundle
from edgepack.frontends.preflight import load_onnx
from edgepack.compression.quantize import quantization_config
from edgepack.pipeline import FrontPlan, compression_passes, plan_front, run_front
from edgepack.progress import Progress, ProgressEvent, ignore
from edgepack.runtime.bundle_format import TensorSpec
from edgepack.frontends.sources import FactorySource, ModelSource, OnnxSource, describe, import_file
from edgepack.targets import TargetSpec
from edgepack.compiler.tune import TuneConfig, tune_event, tune_model, tuning_dir
from edgepack.bundle.verify import verify_bundle

DEFAULT_VERSION = "0.1.0"


@dataclass(frozen=True)
class EvaluationConfig:
    """`--eval data.npz [--max-drop 1%]`: the bundle's quality on real data against the original model."""

    data: Path
    max_drop: float | None = None
    limit: int | None = None  # evaluate at most this many samples
    baseline: Path | None = None  # compare with this ONNX model instead of the original (distill: the teacher)
    latency_runs: int = 0  # also time the staged bundle (median of this many runs) into quality["latency"]


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
    prior_stages: tuple[StageRecord, ...] = ()  # stages that made the model before this build (distill), first in provenance
    dim_ranges: dict = field(default_factory=dict)  # `--dim B=1..64`: sizes a named (dynamic) axis may take

    @property
    def front(self) -> FrontPlan:
        """The front half of this build (source to pre-flighted, compressed ONNX), shared with quantize/prune/tune."""
        return FrontPlan(self.source, self.target, self.input_overrides, self.export, self.torch_passes, self.onnx_passes,
                         dim_ranges=self.dim_ranges)

    @property
    def stages(self) -> list[str]:
        return ([r.stage for r in self.prior_stages] + self.front.stages + (["tune"] if self.tune else [])
                + ["compile", "package", "verify"] + (["evaluate"] if self.evaluation else []))

    def describe(self) -> list[str]:
        """Human-readable lines for `--dry-run`."""
        lines = [
            f"model:   {self.source.path} ({describe(self.source)['kind']})",
            f"target:  {self.target.name} ({self.target.description}); compiler {self.target.toolchain.cxx}",
            f"bundle:  {bundle_path(self.package, self.target.name)}" + (" (+ .tar.gz)" if self.package.archive else "")
            + (f", signed with {self.package.sign_key}" if self.package.sign_key else ""),
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
               evaluation: EvaluationConfig | None = None, sign: Path | None = None,
               extra_files: tuple[tuple[str, Path], ...] = (), prior_stages: tuple[StageRecord, ...] = (),
               dims: list[str] = ()) -> BuildPlan:
    """Resolve the model, target, toolchain and destination; refuse anything wrong before work."""
    front = plan_front(model, target, inputs, export=export, torch_passes=torch_passes, onnx_passes=onnx_passes, dims=dims)
    source, spec = front.source, front.target
    check_toolchain(spec)
    package = PackageConfig(name or source.default_name, version or _declared_version(source) or DEFAULT_VERSION,
                            Path(out_dir), force, archive, reference)
    for label, value in (("name", package.name), ("version", package.version)):
        if not value or "/" in value or value.startswith("."):
            raise EdgepackError(f"bundle {label} '{value}' cannot be part of a directory name", f"pass --{label} with letters, digits, . - _")
    check_destination(package, spec.name)
    if extra_files:
        package = replace(package, extra_files=_check_extra_files(extra_files))
    if sign is not None:  # `--sign KEY`: a missing or bad key is refused before any work
        load_private_key(sign)
        package = replace(package, sign_key=Path(sign))
    if evaluation is not None and not Path(evaluation.data).is_file():
        raise EdgepackError(f"evaluation data '{evaluation.data}' does not exist", "pass an .npz with one array per input and 'labels'")
    if golden_inputs is not None and not Path(golden_inputs).is_file():
        raise EdgepackError(f"golden inputs file '{golden_inputs}' does not exist", "pass an .npz with one array per input")
    if compile.tuning_database is None:  # the target's tuning database, applied whenever it holds records
        database = tune.database if tune is not None and tune.database else tuning_dir(spec)
        compile = replace(compile, tuning_database=str(database))
    if tune is not None:
        tune = replace(tune, database=Path(compile.tuning_database))
        if tune.rpc is None and not spec.runs_on_this_machine():
            raise EdgepackError(f"--tune measures on this machine, which cannot run target '{spec.name}' ({spec.arch})",
                                "tune on the device, or build without --tune (records already tuned are applied)")
    return BuildPlan(source, spec, package, front.input_overrides, front.export,
                     compile=compile, golden=golden, golden_inputs=golden_inputs, tune=tune,
                     torch_passes=front.torch_passes, onnx_passes=front.onnx_passes, evaluation=evaluation,
                     prior_stages=(*prior_stages, *front.prior_stages), dim_ranges=front.dim_ranges)


def _check_extra_files(extra_files) -> tuple[tuple[str, Path], ...]:
    """Extra bundle files must exist and land inside the bundle, beside (not over) the files a build writes."""
    checked = []
    for rel, source_file in extra_files:
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or ".." in parts or parts[0] in ("runtime", "golden", "reference", "model.so",
                                                                                  "params.bin", "manifest.json"):
            raise EdgepackError(f"extra bundle file '{rel}' would land outside the bundle or over a file the build writes",
                                "give it a relative path of its own, such as rules.txt or extra/notes.txt")
        if not Path(source_file).is_file():
            raise EdgepackError(f"extra bundle file '{source_file}' does not exist", "check the path")
        checked.append((Path(rel).as_posix(), Path(source_file)))
    return tuple(checked)


@dataclass
class BuildResult:
    """The bundle a build wrote and the records of every stage."""

    bundle: Bundle
    stages: list[StageRecord] = field(default_factory=list)


def run_build(plan: BuildPlan, progress: Progress = ignore) -> BuildResult:
    """Run the stages of a checked plan; the bundle appears only when every stage passed."""
    with tempfile.TemporaryDirectory(prefix="edgepack-build-") as workdir:
        work = Path(workdir)
        front = run_front(plan.front, work, progress, golden=plan.golden)
        records, model, original, golden_config = front.records, front.model, front.original, front.golden
        samples = front.samples
        recorded = recorded_quantization(plan.source.path, original.inputs) if isinstance(plan.source, OnnxSource) else None
        if recorded is not None:  # a file from `edgepack quantize`: its mode's tolerance, its real samples
            if not plan.onnx_passes:
                golden_config = golden_rule(recorded[0], original, golden_config)
            samples = samples or recorded[1]
        if plan.tune is not None:
            progress(ProgressEvent("tune"))
            records.append(tune_model(model, plan.target, plan.tune, progress=lambda state: progress(tune_event(state))))
        progress(ProgressEvent("compile"))
        compiled, record = compile_model(model, plan.target, work, plan.compile)
        records.append(record)
        progress(ProgressEvent("package"))
        cases, data = _golden_cases(plan, model, samples)
        golden = make_golden(model, golden_config, cases, data)
        provenance = {"source": describe(plan.source), "stages": [r.to_json() for r in (*plan.prior_stages, *records)]}
        assess = None
        if plan.evaluation is not None:
            progress(ProgressEvent("evaluate"))
            data = load_eval_data(plan.evaluation.data, original.inputs, plan.evaluation.limit)
            assess = lambda staging: evaluate_bundle(staging, original, data, plan.evaluation,  # noqa: E731
                                                     compiled=model, target=plan.target)
        bundle, record = write_bundle(compiled, golden, plan.package, provenance,
                                      verify=lambda staging, manifest: verify_bundle(staging), assess=assess)
        records.append(record)
    return BuildResult(bundle, records)


def _golden_cases(plan: BuildPlan, model, samples) -> tuple[list | None, str]:
    """Golden inputs from the user's data: --golden-inputs, else --eval data, else the samples a
    quantization saw (in this build or recorded by `edgepack quantize`); None (random) only without any."""
    if plan.golden_inputs:
        return load_input_cases(plan.golden_inputs, model), f"golden inputs {plan.golden_inputs}"
    if plan.evaluation is not None:
        data = load_eval_data(plan.evaluation.data, model.inputs, samples_needed(model.inputs, plan.golden.cases))
        return cases_from_samples(data.inputs, model.inputs, plan.golden.cases) or None, f"evaluation data {plan.evaluation.data}"
    if samples is not None:
        return cases_from_samples(samples.inputs, model.inputs, plan.golden.cases) or None, samples.origin
    return None, ""


def evaluate_bundle(bundle_dir: Path, original, data: EvalData, config: EvaluationConfig,
                    compiled=None, target: TargetSpec | None = None) -> dict:
    """Run the staged bundle and the original ONNX model on the evaluation data; gate on `max_drop`.

    A bundle this machine cannot run (another architecture, a GPU) is stood in for by the compiled
    ONNX model in ONNX Runtime, which the bundle's golden check ties it to; the report says so."""
    from edgepack.runtime.loader import load

    before = predict(onnx_predictor(config.baseline or original.path), original.inputs, data)[0]
    runs_here = target is None or target.runs_on_this_machine()
    if runs_here:
        after = predict(load(bundle_dir).run, original.inputs, data)[0]
        measured = "the compiled bundle"
    else:
        after = predict(onnx_predictor(compiled.path, fuse=False), original.inputs, data)[0]
        measured = (f"the compiled ONNX model in ONNX Runtime (this machine cannot run bundles for "
                    f"{target.arch} {target.device}; the golden check ties the bundle to that model)")
    comparison = compare_quality(before, after, data.labels, config.max_drop)
    require_quality(comparison, "the compiled bundle" if runs_here else "the compiled model")
    baseline = f"{config.baseline} in ONNX Runtime" if config.baseline else "original model in ONNX Runtime"
    report = {"data": data.origin, "baseline": baseline, "measured": measured, **comparison.to_json()}
    if config.latency_runs and runs_here:
        from edgepack.bench import BenchConfig, bench_bundle

        timing = bench_bundle(bundle_dir, BenchConfig(warmup=5, runs=config.latency_runs, rounds=min(5, config.latency_runs)))
        report["latency"] = {**timing["engines"]["edgepack"], "threads": timing["protocol"]["threads"]}
    return report


def build(model: str | Path, target: str = "x86_64", out_dir: str | Path = Path("dist"), *, quantize=None, prune=None,
          tune: int | TuneConfig | None = None, progress: Progress = ignore,
          **options) -> BuildResult:
    """Plan and run a build in one call: the Python API behind `edgepack build` (`edgepack.build(...)`).

    `quantize`: a mode name ("int8-dynamic", "fp16", "int4") or a config from `quantization_config`;
    `prune`: ChannelPrune / WeightPrune (PyTorch models) or OnnxWeightPrune; `tune`: trials or a
    TuneConfig. Other options are plan_build's (name, version, inputs, force, golden, evaluation, ...)."""
    quantization = quantization_config(quantize) if isinstance(quantize, str) else quantize
    tune_config = TuneConfig(trials=tune) if isinstance(tune, int) and tune > 0 else (tune or None)
    passes = compression_passes(prune, quantization)  # after any passes given as torch_passes / onnx_passes
    for kind in ("torch_passes", "onnx_passes"):
        passes[kind] = (*options.pop(kind, ()), *passes[kind])
    plan = plan_build(str(model), target, Path(out_dir), tune=tune_config, **passes, **options)
    return run_build(plan, progress)


class _CallableModule(types.ModuleType):
    """`edgepack.build(...)` builds: Python binds the package attribute `build` to this module, so the module calls `build`."""

    def __call__(self, *args, **kwargs) -> BuildResult:
        return build(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
