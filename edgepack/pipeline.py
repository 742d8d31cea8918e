"""The front half of every command: source → (torch passes) → export → pre-flight → ONNX passes.

`build`, `quantize`, `prune` and `tune` are this one pipeline stopped at different stages: `prune`
to a .pt2 stops after the torch passes, `quantize`/`prune` to ONNX after the ONNX passes, `tune`
after pre-flight, and `build` goes on to compile and package (edgepack.build).

Stage records travel with the artifact: a file written between commands carries them in the ONNX
`metadata_props` (key `edgepack.stages`), and a later command reading it lists them first, so a
bundle's provenance names every stage its model went through, whichever commands made it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Sequence

from edgepack.artifacts import OnnxModel, StageRecord
from edgepack.bundle.golden import GoldenConfig
from edgepack.compression.passes import OnnxPass, PassContext, TorchPass
from edgepack.errors import EdgepackError
from edgepack.measure.evaluation import EvalData
from edgepack.frontends.export import ExportConfig, TorchModel, export_to_onnx, load_torch_model
from edgepack.frontends.preflight import load_onnx, preflight
from edgepack.frontends.signature import parse_dim_ranges, parse_input_specs, with_dim_ranges
from edgepack.frontends.sources import ExportedProgramSource, ModelSource, OnnxSource, parse_source
from edgepack.progress import Progress, ProgressEvent, ignore, step_reporter
from edgepack.runtime.bundle_format import TensorSpec
from edgepack.targets import TargetSpec, load_target

STAGES_KEY = "edgepack.stages"  # ONNX metadata_props key holding the stage records of a written model
StopAt = Literal["torch", "preflight", "passes"]


@dataclass(frozen=True)
class FrontPlan:
    """The front half resolved and checked: what to read, for which target, and which passes to run."""

    source: ModelSource
    target: TargetSpec
    input_overrides: dict[str, TensorSpec]
    export: ExportConfig | None  # None for ONNX sources
    torch_passes: tuple[TorchPass, ...] = ()
    onnx_passes: tuple[OnnxPass, ...] = ()
    prior_stages: tuple[StageRecord, ...] = ()  # stages that made the source file (read from its metadata)
    dim_ranges: dict = field(default_factory=dict)  # `--dim B=1..64`: sizes a named (dynamic) axis may take

    @property
    def stages(self) -> list[str]:
        return (
            [r.stage for r in self.prior_stages]
            + [p.stage for p in self.torch_passes]
            + (["export"] if self.export else [])
            + ["preflight"]
            + [p.stage for p in self.onnx_passes]
        )


@dataclass
class FrontResult:
    """What the front half made: the pre-flighted model before and after the ONNX passes, and the records."""

    model: OnnxModel | None  # None when stopped at "torch"
    original: OnnxModel | None  # pre-flighted, before the ONNX passes
    records: list[StageRecord] = field(default_factory=list)
    golden: GoldenConfig = GoldenConfig()  # the golden tolerance the passes ask for
    torch_model: TorchModel | None = None  # after the torch passes (PyTorch sources)
    samples: EvalData | None = None  # real samples a pass saw (quantization: --eval or calibration data)
    written: OnnxModel | None = None  # the last ONNX pass's own output, before pre-flight checked it again


def plan_front(
    model: str,
    target: str | TargetSpec,
    inputs: list[str] | dict[str, TensorSpec] = (),
    *,
    export: ExportConfig = ExportConfig(),
    torch_passes: tuple = (),
    onnx_passes: tuple = (),
    dims: Sequence[str] = (),
) -> FrontPlan:
    """Parse the source and target, read the stages recorded in an ONNX source, refuse passes the source cannot take."""
    source = parse_source(str(model))
    spec = target if isinstance(target, TargetSpec) else load_target(target)
    dim_ranges = parse_dim_ranges(list(dims))
    overrides = inputs if isinstance(inputs, dict) else parse_input_specs(list(inputs))
    overrides = {name: with_dim_ranges(item, dim_ranges) for name, item in overrides.items()}
    if any(item.dynamic for item in overrides.values()) and not isinstance(source, OnnxSource):
        raise EdgepackError(f"named (dynamic) axes need an ONNX model; '{source.path}' is exported with fixed shapes",
                            "export it to ONNX with dynamic axes first, or give fixed sizes in --input")
    if torch_passes and isinstance(source, ExportedProgramSource):
        raise EdgepackError(
            f"{', '.join(p.stage for p in torch_passes)} needs the model's nn.Module layers, "
            f"which the .pt2 program '{source.path}' does not keep",
            "pass the model as file.py:factory",
        )
    if torch_passes and isinstance(source, OnnxSource):
        raise EdgepackError(
            f"{', '.join(p.stage for p in torch_passes)} needs a PyTorch model, '{source.path}' is ONNX",
            "pass file.py:factory or a .pt2 program",
        )
    is_onnx = isinstance(source, OnnxSource)
    prior = _recorded_stages(source.path) if is_onnx else ()
    return FrontPlan(
        source, spec, overrides, None if is_onnx else export, tuple(torch_passes), tuple(onnx_passes), prior, dim_ranges
    )


def run_front(
    plan: FrontPlan,
    work: Path,
    progress: Progress = ignore,
    *,
    golden: GoldenConfig = GoldenConfig(),
    stop: StopAt = "passes",
) -> FrontResult:
    """Run the front half in `work` (a private directory) up to `stop`; every artifact lands under it."""
    result = FrontResult(None, None, golden=golden)
    onnx_path, overrides = plan.source.path, plan.input_overrides
    if plan.export is not None:
        torch_model = load_torch_model(plan.source, overrides)
        for stage_pass in plan.torch_passes:
            progress(ProgressEvent(stage_pass.stage))
            torch_model, record = stage_pass.run(
                torch_model, pass_context(plan.target, work, stage_pass.stage, progress)
            )
            result.records.append(record)
        result.torch_model = torch_model
        if stop == "torch":
            return result
        progress(ProgressEvent("export"))
        onnx_path = work / "exported.onnx"
        result.records.append(export_to_onnx(torch_model, onnx_path, plan.export))
        overrides = {spec.name: spec for spec in torch_model.inputs}
    progress(ProgressEvent("preflight"))
    (work / "preflight").mkdir(parents=True, exist_ok=True)
    model, record = preflight(onnx_path, overrides, work / "preflight", dim_ranges=plan.dim_ranges)
    result.records.append(record)
    check_dim_names(plan.dim_ranges, model)
    result.model = result.original = model
    if stop == "preflight":
        return result
    for stage_pass in plan.onnx_passes:
        progress(ProgressEvent(stage_pass.stage))
        context = pass_context(plan.target, work, stage_pass.stage, progress)
        changed, record = stage_pass.run(result.model, context)
        result.records.append(record)
        result.written = changed
        result.samples = result.samples or _pass_samples(stage_pass, result.model, context)
        (context.workdir / "preflight").mkdir()
        result.model, _ = preflight(changed.path, {}, context.workdir / "preflight", dim_ranges=plan.dim_ranges)
        result.golden = stage_pass.golden_config(result.model, result.golden)
    return result


def check_dim_names(dim_ranges: dict, model: OnnxModel) -> None:
    """Every `--dim NAME` must name a dynamic axis of the model's inputs."""
    named = {d for spec in model.inputs for d in spec.dims if d is not None}
    unknown = sorted(set(dim_ranges) - named)
    if unknown:
        raise EdgepackError(f"--dim names {', '.join(unknown)}, which no input axis is called",
                            f"name an axis in --input (e.g. x:{unknown[0]}x30:float32); named axes: {', '.join(sorted(named)) or 'none'}")


def _pass_samples(stage_pass, model: OnnxModel, context: PassContext) -> EvalData | None:
    """The real samples a pass saw (quantization: --eval or calibration data), if it has any."""
    recorded = getattr(stage_pass, "recorded_samples", None)
    return recorded(model, context) if recorded is not None else None


def pass_context(target: TargetSpec, work: Path, stage: str, progress: Progress) -> PassContext:
    """A pass's private work directory under `work`, the target, and progress lines prefixed with the stage."""
    workdir = work / f"pass-{stage}"
    workdir.mkdir(parents=True, exist_ok=True)
    return PassContext(workdir, target, step_reporter(stage, progress))


def _recorded_stages(path: Path) -> tuple[StageRecord, ...]:
    """read_stages for planning: a file that cannot be read yet has none (pre-flight reports why when it runs)."""
    try:
        model = load_onnx(path)
    except EdgepackError:
        return ()
    return read_stages(path, model)


def read_stages(path: Path, model=None) -> tuple[StageRecord, ...]:
    """The stage records an earlier edgepack command wrote into this ONNX file (none for other files)."""
    props = {prop.key: prop.value for prop in (model or load_onnx(path)).metadata_props}
    if STAGES_KEY not in props:
        return ()
    try:
        return tuple(StageRecord.from_json(item) for item in json.loads(props[STAGES_KEY]))
    except (ValueError, TypeError, KeyError):
        raise EdgepackError(
            f"'{path}' has unreadable edgepack stage records (metadata '{STAGES_KEY}')",
            "write the model again with edgepack, or remove that metadata entry",
        ) from None


def write_onnx(model: OnnxModel, out: Path, records: list[StageRecord] | tuple[StageRecord, ...]) -> Path:
    """Write `model` to `out` atomically with `records` (all the stages that made it) in its metadata_props."""
    import onnx

    proto = load_onnx(model.path)
    kept = [prop for prop in proto.metadata_props if prop.key != STAGES_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = STAGES_KEY, json.dumps([r.to_json() for r in records])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        onnx.save(proto, str(temporary))
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
    return out


def with_prior(plan: FrontPlan, prior: tuple[StageRecord, ...]) -> FrontPlan:
    """The plan with stages that made the model before it (e.g. distillation) listed first."""
    return replace(plan, prior_stages=(*prior, *plan.prior_stages))


def compression_passes(prune=None, quantize=None) -> dict[str, tuple]:
    """`torch_passes` and `onnx_passes` for a build: torch pruning runs before export, ONNX magnitude
    pruning after pre-flight and before quantization, quantization last."""
    quantized = (quantize,) if quantize is not None else ()
    if prune is None:
        return {"torch_passes": (), "onnx_passes": quantized}
    if isinstance(prune, OnnxPass):
        return {"torch_passes": (), "onnx_passes": (prune, *quantized)}
    return {"torch_passes": (prune,), "onnx_passes": quantized}
