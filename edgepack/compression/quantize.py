"""Stage: quantize a pre-flighted ONNX model (int8 static, int8 dynamic, fp16, int4 weight-only), gated by quality.

Every mode is its own frozen config class and an OnnxPass (`stage = "quantize"`). The results
hold only ops TVM's ONNX frontend imports (QDQ, DynamicQuantizeLinear, MatMulInteger, plain
integer ops), never QOperator or ConvInteger, and the weights stay int8 / packed int4 / fp16 in
the bundle's params.bin (the compile keeps weights as inputs, so nothing folds them back to fp32).

Quality is measured with ONNX Runtime running the quantized graph as written (its int8 kernel
fusions are off: on x86 CPUs without VNNI they saturate u8·s8 pairs and differ from the graph by
several output steps, while TVM computes what the graph says). With `--max-drop` the stage fails,
or with `auto` keeps the most sensitive layers in float until the bound holds.
"""

from __future__ import annotations

import contextlib
import os
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from edgepack.artifacts import OnnxModel, StageRecord
from edgepack.errors import EdgepackError, InternalError, VerificationError, first_line
from edgepack.measure.evaluation import EvalData, QualityComparison, compare_quality, load_eval_data, onnx_predictor, predict
from edgepack.bundle.golden import GoldenConfig
from edgepack.compression.passes import PassContext

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")  # the layers whose weights are quantized, and the unit of --auto
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
RANDOM_SAMPLES = 32  # agreement samples when neither evaluation nor calibration data is given
GOLDEN_SAMPLES = 3  # real samples a quantized file keeps for the golden vectors of a later build
RECORD_KEY = "edgepack.quantize"  # metadata of a file written by `edgepack quantize`: mode and real samples


@dataclass(frozen=True)
class QualityGate:
    """What the stage measures quality on and how much it may lose (`--eval`, `--max-drop`, `--auto`)."""

    data: Path | None = None  # .npz: accuracy with 'labels', else agreement with the fp32 model
    max_drop: float | None = None  # largest allowed drop (fraction); None: report only
    auto: bool = False  # keep the most sensitive layers in float until max_drop holds
    limit: int | None = None  # at most this many samples


@dataclass(frozen=True, kw_only=True)
class _Quantization:
    """Shared by every mode: layers kept in float and the quality gate."""

    stage: ClassVar[str] = "quantize"
    mode: ClassVar[str] = ""
    exclude: tuple[str, ...] = ()  # node names kept in float
    gate: QualityGate = QualityGate()

    def run(self, model: OnnxModel, context: PassContext) -> tuple[OnnxModel, StageRecord]:
        return quantize_model(self, model, context)

    def golden_config(self, model: OnnxModel, golden: GoldenConfig) -> GoldenConfig:
        """The golden check of the quantized build: references from the graph as written (see each mode)."""
        return replace(golden, unfused=True)

    def recorded_samples(self, model: OnnxModel, context: PassContext):
        """The real samples this quantization saw (--eval, else calibration data), or None: kept in the
        written file so that a later `edgepack build` makes its golden vectors from them."""
        if self.gate.data is not None:
            return load_eval_data(self.gate.data, model.inputs, GOLDEN_SAMPLES)
        return None

    def config_json(self) -> dict:
        data = asdict(self)
        data["gate"] = {key: str(value) if isinstance(value, Path) else value for key, value in data["gate"].items()}
        return {"mode": self.mode, **{key: str(value) if isinstance(value, Path) else value for key, value in data.items()}}

    def _write(self, source, out: Path, exclude: Sequence[str], context: PassContext) -> list[dict]:
        raise NotImplementedError

    def notes(self, context: PassContext) -> list[str]:
        return []


@dataclass(frozen=True, kw_only=True)
class Int8Static(_Quantization):
    """int8 post-training quantization in QDQ form: per-channel symmetric int8 weights, calibrated activations.

    ONNX Runtime's quantize_static (QDQ format) with its MinMax / Percentile / Entropy calibrators."""

    mode: ClassVar[str] = "int8"
    calibration: str  # .npz, folder of .npy, or file.py:function (see edgepack.compression.calibration)
    method: str = "minmax"
    calibration_limit: int | None = 512
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights (only helps ONNX Runtime's own x86 kernels without VNNI)
    percentile: float = 99.999

    def __post_init__(self):
        if self.method not in CALIBRATION_METHODS:
            raise EdgepackError(f"unknown calibration method '{self.method}'", f"use one of {', '.join(CALIBRATION_METHODS)}")

    def _write(self, source, out: Path, exclude: Sequence[str], context: PassContext) -> list[dict]:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        from edgepack.compression.calibration import calibration_reader

        samples = _calibration(self, source.spec, context)
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[self.method]
        cache = context.workdir / f"calibration-{self.method}.json"  # calibrate once, reuse in --auto's retries
        extra = {"CalibPercentile": self.percentile} if self.method == "percentile" else {}
        with _quiet():
            quantize_static(str(source.path), str(out), calibration_reader(samples, source.spec.inputs),
                            quant_format=QuantFormat.QDQ, per_channel=self.per_channel, reduce_range=self.reduce_range,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                            nodes_to_exclude=list(exclude), extra_options=extra, calibration_cache_path=cache)
        return []

    def golden_config(self, model: OnnxModel, golden: GoldenConfig) -> GoldenConfig:
        """One output quantization step on top of --atol: TVM runs QDQ dequantize-then-float."""
        return replace(golden, step=output_step(model.path), steps=1.0, unfused=True)

    def recorded_samples(self, model: OnnxModel, context: PassContext):
        if self.gate.data is not None:
            return super().recorded_samples(model, context)
        samples = _calibration(self, model, context)
        return EvalData(tuple(stack[:GOLDEN_SAMPLES] for stack in samples.inputs), None, f"calibration data {samples.origin}")


@dataclass(frozen=True, kw_only=True)
class Int8Dynamic(_Quantization):
    """int8 weights, activations quantized at run time (DynamicQuantizeLinear).

    MatMul goes through ONNX Runtime's quantize_dynamic (MatMulInteger, which TVM imports). Its
    Conv form (ConvInteger) does not import, so Conv and Gemm are written here as
    DynamicQuantizeLinear → DequantizeLinear on the activation and per-channel int8 weights
    through DequantizeLinear: the same arithmetic in ops TVM compiles."""

    mode: ClassVar[str] = "int8-dynamic"
    per_channel: bool = True

    def _write(self, source, out: Path, exclude: Sequence[str], context: PassContext) -> list[dict]:
        import onnx

        skipped = []
        path = source.path
        matmuls = [node.name for node in source.proto.graph.node
                   if node.op_type == "MatMul" and node.name not in exclude and _weight(source.proto, node) is not None]
        if matmuls:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            path = context.workdir / "dynamic-matmul.onnx"
            with _quiet():
                quantize_dynamic(str(source.path), str(path), op_types_to_quantize=["MatMul"], nodes_to_quantize=matmuls,
                                 per_channel=False, weight_type=QuantType.QInt8)
        model = onnx.load(str(path))
        skipped += _dynamic_qdq(model, exclude, self.per_channel)
        onnx.save(model, str(out))
        return skipped

    def golden_config(self, model: OnnxModel, golden: GoldenConfig) -> GoldenConfig:
        """Float outputs, but a run-time scale that TVM rounds differently can flip an activation by one step:
        two steps of a uint8 quantization of the output's range (2 × max|output| / 255) on top of --atol."""
        return replace(golden, step=2 * output_magnitude(model) / 255, steps=2.0, unfused=True)


@dataclass(frozen=True, kw_only=True)
class Float16(_Quantization):
    """fp16 weights and compute, fp32 inputs and outputs (ONNX Runtime's convert_float_to_float16)."""

    mode: ClassVar[str] = "fp16"

    def _write(self, source, out: Path, exclude: Sequence[str], context: PassContext) -> list[dict]:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        with _quiet():
            converted = convert_float_to_float16(onnx.load(str(source.path)), keep_io_types=True,
                                                 node_block_list=list(exclude) or None)
        _topological_sort(converted)  # the converter appends the input casts at the end
        onnx.save(converted, str(out))
        return []

    def golden_config(self, model: OnnxModel, golden: GoldenConfig) -> GoldenConfig:
        """fp16 rounding: a step of 2^-10 of the output magnitude, 16 of them (TVM accumulates in fp16, ONNX Runtime partly in fp32)."""
        return replace(golden, rtol=max(golden.rtol, 8 * 2.0 ** -10), step=2.0 ** -10 * output_magnitude(model), steps=16.0, unfused=True)

    def notes(self, context: PassContext) -> list[str]:
        if context.target.supports("float16"):
            return []
        return [f"target '{context.target.name}' lists no float16 arithmetic: fp16 is emulated there and "
                "usually slower than fp32 (only the size shrinks)"]


@dataclass(frozen=True, kw_only=True)
class Int4WeightOnly(_Quantization):
    """int4 weight-only: group-wise symmetric scales, two weights per byte, unpacked in the graph.

    ONNX Runtime's int4 form (MatMulNBits, com.microsoft) does not import into TVM, so the graph is
    written here: a uint8 initializer of nibbles, unpacked by BitwiseAnd/BitShift, Cast, Sub 8, Mul by
    the fp16 group scales and Reshape, so the stored weights are 4-bit and TVM compiles the unpack."""

    mode: ClassVar[str] = "int4"
    group_size: int = 32
    min_elements: int = 64  # smaller weights stay float (the unpack costs more than it saves)

    def __post_init__(self):
        if self.group_size < 2 or self.group_size % 2:
            raise EdgepackError(f"int4 group size {self.group_size} must be even and at least 2", "use 32, 64 or 128")

    def _write(self, source, out: Path, exclude: Sequence[str], context: PassContext) -> list[dict]:
        import onnx

        model = onnx.load(str(source.path))
        opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
        if opset < 18:  # BitwiseAnd needs opset 18
            model = onnx.version_converter.convert_version(model, 18)
        skipped = _pack_int4(model, exclude, self.group_size, self.min_elements)
        onnx.save(model, str(out))
        return skipped


MODES = {cls.mode: cls for cls in (Int8Static, Int8Dynamic, Float16, Int4WeightOnly)}


def quantization_config(mode: str, *, calibration: str | None = None, method: str = "minmax",
                        gate: QualityGate = QualityGate(), exclude: Sequence[str] = (), group_size: int = 32):
    """The config of a mode by name (`int8`, `int8-dynamic`, `fp16`, `int4`), checked before any work."""
    if mode not in MODES:
        raise EdgepackError(f"unknown quantization mode '{mode}'", f"use one of {', '.join(MODES)}")
    if gate.max_drop is not None and gate.data is None:
        raise EdgepackError("--max-drop needs --eval data to measure the drop on", "add --eval data.npz")
    if gate.auto and gate.max_drop is None:
        raise EdgepackError("--auto keeps layers in float until --max-drop holds, but no --max-drop is given", "add --max-drop 1%")
    if gate.data is not None and not Path(gate.data).is_file():
        raise EdgepackError(f"evaluation data '{gate.data}' does not exist", "pass an .npz with one array per input and 'labels'")
    common = {"gate": gate, "exclude": tuple(exclude)}
    if mode == "int8":
        if calibration is None:
            raise EdgepackError("int8 static quantization needs calibration data",
                                "pass --calib data.npz (or a folder of .npy, or file.py:function), or use --quantize int8-dynamic")
        if not Path(calibration).exists() and not Path(str(calibration).rpartition(":")[0]).is_file():
            raise EdgepackError(f"calibration data '{calibration}' does not exist",
                                "pass an .npz, a folder of .npy files, or file.py:function yielding batches")
        return Int8Static(calibration=str(calibration), method=method, **common)
    if calibration is not None:
        raise EdgepackError(f"--calib is only used by --quantize int8, not {mode}", "drop --calib or use int8")
    if mode == "int4":
        return Int4WeightOnly(group_size=group_size, **common)
    return MODES[mode](**common)


# ---------------------------------------------------------------------------------------------- the stage

@dataclass(frozen=True)
class _Source:
    path: Path
    proto: object
    spec: OnnxModel


def quantize_model(config: _Quantization, model: OnnxModel, context: PassContext) -> tuple[OnnxModel, StageRecord]:
    """Quantize `model` as `config` says, measure it, apply the gate; writes context.workdir/quantized.onnx."""
    import onnx

    proto = onnx.load(str(model.path))
    _name_nodes(proto)
    named = context.workdir / "float.onnx"
    onnx.save(proto, str(named))
    source = _Source(named, proto, OnnxModel.at(named, model.inputs, model.outputs))
    layers = [node.name for node in proto.graph.node if node.op_type in WEIGHT_OPS and _weight(proto, node) is not None]
    unknown = sorted(set(config.exclude) - {node.name for node in proto.graph.node})
    if unknown:
        raise EdgepackError(f"--exclude names node(s) the model does not have: {', '.join(unknown)}",
                            f"quantizable layers: {', '.join(layers) or 'none'}")

    context.progress("measuring the float model")
    data = _quality_data(config, source, context)
    before = predict(onnx_predictor(named), model.inputs, data)[0]

    attempts = 0

    def attempt(exclude: Sequence[str]) -> tuple[Path, list[dict], QualityComparison]:
        nonlocal attempts
        attempts += 1
        out = context.workdir / f"quantized-{attempts}.onnx"
        try:
            skipped = config._write(source, out, exclude, context)
        except EdgepackError:
            raise
        except Exception as exc:  # ONNX Runtime's quantizer and onnx raise many types
            raise EdgepackError(f"{config.mode} quantization failed: {first_line(exc)}",
                                "keep the failing layers in float with --exclude, or report the model") from None
        _check_importable(out, config.mode)
        after = predict(_graph_predictor(out), model.inputs, data)[0]
        return out, skipped, compare_quality(before, after, data.labels, config.gate.max_drop)

    context.progress(f"{config.mode}: quantizing")
    exclude = list(config.exclude)
    out, skipped, comparison = attempt(exclude)
    kept: list[dict] = []
    if not comparison.passed and config.gate.auto:
        out, skipped, comparison, kept = _auto_fallback(config, layers, exclude, comparison, attempt, context)
    if not comparison.passed:
        raise VerificationError(f"{config.mode} quantization loses too much: {comparison.line()}",
                                "raise --max-drop, add --auto to keep sensitive layers in float, or use another mode")
    final = context.workdir / "quantized.onnx"
    shutil.copyfile(out, final)
    result = OnnxModel.at(final, model.inputs, model.outputs)
    before_bytes, after_bytes = weight_bytes(proto), weight_bytes(onnx.load(str(final)))
    report = {
        "mode": config.mode,
        "weights_bytes_fp32": before_bytes,
        "weights_bytes": after_bytes,
        "weights_ratio": round(after_bytes / before_bytes, 4) if before_bytes else None,
        "layers": len(layers),
        "quality": {"data": data.origin, "baseline": "fp32 model in ONNX Runtime", **comparison.to_json()},
        "kept_in_float": [{"node": name, "why": "--exclude"} for name in config.exclude] + kept,
        "skipped": skipped,
        "attempts": attempts,
        "op_counts": _op_counts(final),
        "warnings": config.notes(context),
    }
    context.progress(f"{config.mode}: {comparison.line()}")
    return result, StageRecord("quantize", config.config_json(), report)


def _auto_fallback(config, layers, exclude, comparison, attempt, context):
    """Rank layers by sensitivity (each one alone kept in float), then keep the worst in float until the gate holds."""
    candidates = [name for name in layers if name not in exclude]
    base = comparison
    sensitivity = []
    for index, name in enumerate(candidates):
        context.progress(f"--auto: sensitivity of {name} ({index + 1}/{len(candidates)})")
        _, _, alone = attempt([*exclude, name])
        gain = (base.drop - alone.drop, alone.after.get("snr_db", 0.0) - base.after.get("snr_db", 0.0))
        sensitivity.append((gain, name, alone))
    sensitivity.sort(key=lambda item: item[0], reverse=True)
    kept: list[dict] = []
    current = list(exclude)
    result = None
    for gain, name, alone in sensitivity:
        current.append(name)
        context.progress(f"--auto: keeping {len(kept) + 1} layer(s) in float")
        result = attempt(current)
        kept.append({"node": name, "why": f"most sensitive left: alone in float it recovers {gain[0] * 100:.2f} points "
                                          f"and {gain[1]:+.1f} dB SNR; with it in float {result[2].line()}"})
        if result[2].passed:
            return (*result, kept)
    if result is None:
        return (*attempt(current), kept)
    return (*result, kept)


def _quality_data(config: _Quantization, source: _Source, context: PassContext) -> EvalData:
    """--eval data, else the calibration samples (agreement only), else reproducible random inputs."""
    if config.gate.data is not None:
        return load_eval_data(config.gate.data, source.spec.inputs, config.gate.limit)
    if isinstance(config, Int8Static):
        samples = _calibration(config, source.spec, context)
        return EvalData(samples.inputs, None, f"calibration data {samples.origin}")
    from edgepack.frontends.signature import random_inputs

    sample_specs = [replace(spec, shape=spec.shape[1:]) for spec in source.spec.inputs]
    cases = [random_inputs(sample_specs, seed) for seed in range(RANDOM_SAMPLES)]
    return EvalData(tuple(np.stack(parts) for parts in zip(*cases)), None, f"{RANDOM_SAMPLES} random inputs")


_CALIBRATION_CACHE: dict = {}


def _calibration(config: Int8Static, model: OnnxModel, context: PassContext):
    from edgepack.compression.calibration import load_calibration

    path = Path(config.calibration.rpartition(":")[0] if ".py:" in config.calibration else config.calibration)
    key = (config.calibration, path.stat().st_mtime_ns if path.exists() else None, model.inputs, config.calibration_limit)
    if key not in _CALIBRATION_CACHE:
        _CALIBRATION_CACHE.clear()
        _CALIBRATION_CACHE[key] = load_calibration(config.calibration, model.inputs, config.calibration_limit)
    return _CALIBRATION_CACHE[key]


def _graph_predictor(path: Path):
    """ONNX Runtime running the quantized graph as written (basic optimizations, no int8 kernel fusion)."""
    from edgepack.measure.reference import onnxruntime_session

    session = onnxruntime_session(path, fuse=False)
    names = [value.name for value in session.get_inputs()]
    return lambda arrays: session.run(None, dict(zip(names, arrays)))


def _check_importable(path: Path, mode: str) -> None:
    """The result must hold only ops the pre-flight accepts (never QOperator / ConvInteger)."""
    import onnx

    from edgepack.frontends.preflight import op_report

    unsupported = op_report(onnx.load(str(path))).unsupported
    if unsupported:
        raise InternalError(f"{mode} quantization produced ops TVM cannot import: {', '.join(unsupported)}")


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs advice through the root logger and its calibrators print progress;
    keep the CLI to its own output."""
    import io

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


# ---------------------------------------------------------------------------------------------- graph helpers

def _name_nodes(model) -> None:
    """Give every node a unique name (the unit of --exclude and --auto)."""
    seen = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


def _initializers(model) -> dict:
    return {init.name: init for init in model.graph.initializer}


def _weight(model, node):
    """The constant weight initializer of a Conv/Gemm/MatMul node, or None."""
    if len(node.input) < 2:
        return None
    return _initializers(model).get(node.input[1])


def weight_bytes(model) -> int:
    """Bytes of all initializers as stored (int8, packed int4, fp16 or fp32)."""
    from onnx import numpy_helper

    return int(sum(numpy_helper.to_array(init).nbytes for init in model.graph.initializer))


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def output_step(path: Path) -> float:
    """The quantization step of the model's outputs: the largest scale of a DequantizeLinear producing one."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = _initializers(model)
    outputs = {value.name for value in model.graph.output}
    scales = [float(np.max(numpy_helper.to_array(inits[node.input[1]]))) for node in model.graph.node
              if node.op_type == "DequantizeLinear" and node.output[0] in outputs and node.input[1] in inits]
    return max(scales, default=0.0)


def output_magnitude(model: OnnxModel, cases: int = 3) -> float:
    """The largest |output| on a few random inputs (scales fp16's relative rounding into an absolute step)."""
    from edgepack.measure.reference import run_onnxruntime
    from edgepack.frontends.signature import random_inputs

    return max(float(np.max(np.abs(out))) for seed in range(cases)
               for out in run_onnxruntime(model.path, model.inputs, random_inputs(model.inputs, seed)))


def _per_channel_int8(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel along `axis`: q in [-127, 127], scale = max|w| / 127."""
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    scale = np.maximum(np.abs(moved).max(axis=1), 1e-12) / 127.0
    shape = [1] * weight.ndim
    shape[axis] = -1
    quantized = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    return quantized, scale.astype(np.float32)


def _dynamic_qdq(model, exclude: Sequence[str], per_channel: bool) -> list[dict]:
    """Conv/Gemm with constant weights → DynamicQuantizeLinear/DequantizeLinear activations and int8 weights."""
    from onnx import helper, numpy_helper

    inits = _initializers(model)
    skipped, new_nodes, quantized_inputs = [], [], {}
    for node in list(model.graph.node):
        if node.op_type not in ("Conv", "Gemm"):
            new_nodes.append(node)
            continue
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
        reason = ("kept in float (--exclude or --auto)" if node.name in exclude else
                  "weight is not a constant" if weight is None else
                  "Gemm with transA is not supported" if node.op_type == "Gemm" and attrs.get("transA", 0) else None)
        if reason:
            if node.name not in exclude:
                skipped.append({"node": node.name, "op": node.op_type, "why": reason})
            new_nodes.append(node)
            continue
        array = numpy_helper.to_array(weight)
        axis = 0 if node.op_type == "Conv" or attrs.get("transB", 0) else 1
        if per_channel:
            q, scale = _per_channel_int8(array, axis)
        else:
            q, scale = _per_channel_int8(array.reshape(1, -1), 0)
            q, scale = q.reshape(array.shape), scale.reshape(())
        base = node.name
        model.graph.initializer.extend([numpy_helper.from_array(q, f"{base}.weight_int8"),
                                        numpy_helper.from_array(scale, f"{base}.weight_scale")])
        activation = node.input[0]
        if activation not in quantized_inputs:  # one run-time quantization per activation tensor
            names = [f"{activation}_dq_{part}" for part in ("q", "scale", "zero_point", "float")]
            new_nodes.append(helper.make_node("DynamicQuantizeLinear", [activation], names[:3], name=f"{base}_input_quantize"))
            new_nodes.append(helper.make_node("DequantizeLinear", names[:3], [names[3]], name=f"{base}_input_dequantize"))
            quantized_inputs[activation] = names[3]
        dq_weight = f"{base}.weight_dequantized"
        weight_dq = helper.make_node("DequantizeLinear", [f"{base}.weight_int8", f"{base}.weight_scale"], [dq_weight],
                                     name=f"{base}_weight_dequantize", **({"axis": axis} if per_channel else {}))
        new_nodes.append(weight_dq)
        node.input[0] = quantized_inputs[activation]
        node.input[1] = dq_weight
        new_nodes.append(node)
    _drop_unused_initializers(model, new_nodes)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return skipped


def _pack_int4(model, exclude: Sequence[str], group_size: int, min_elements: int) -> list[dict]:
    """Replace Conv/Gemm/MatMul weights by packed int4 nibbles + fp16 group scales and an in-graph unpack."""
    from onnx import TensorProto, helper, numpy_helper

    inits = _initializers(model)
    skipped, new_nodes, users = [], [], {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for node in list(model.graph.node):
        weight = inits.get(node.input[1]) if node.op_type in WEIGHT_OPS and len(node.input) > 1 else None
        if node.op_type not in WEIGHT_OPS:
            new_nodes.append(node)
            continue
        attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
        array = numpy_helper.to_array(weight) if weight is not None else None
        reason = ("kept in float (--exclude or --auto)" if node.name in exclude else
                  "weight is not a constant" if weight is None else
                  "weight is shared with other nodes" if users.get(node.input[1], 0) > 1 else
                  f"weight dtype {array.dtype} is not float32" if array.dtype != np.float32 else
                  f"weight has rank {array.ndim}, only 2-D MatMul weights are packed" if node.op_type == "MatMul" and array.ndim != 2 else
                  "Gemm with transA is not supported" if node.op_type == "Gemm" and attrs.get("transA", 0) else
                  f"only {array.size} weights (< {min_elements}): the unpack would cost more than it saves"
                  if array.size < min_elements else None)
        if reason:
            if node.name not in exclude:
                skipped.append({"node": node.name, "op": node.op_type, "why": reason})
            new_nodes.append(node)
            continue
        # rows = output channels, columns = the reduction axis the groups run along
        transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not attrs.get("transB", 0))
        matrix = array.T if transposed else array.reshape(array.shape[0], -1)
        rows, columns = matrix.shape
        group = min(group_size, columns + columns % 2)
        padded = -(-columns // group) * group
        full = np.zeros((rows, padded), np.float32)
        full[:, :columns] = matrix
        groups = full.reshape(rows, padded // group, group)
        scale = (np.maximum(np.abs(groups).max(axis=2, keepdims=True), 1e-12) / 7.0).astype(np.float16)
        q = np.clip(np.round(groups / scale.astype(np.float32)), -8, 7).astype(np.int16) + 8  # 0..15
        flat = q.reshape(-1).astype(np.uint8)
        packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)  # low nibble first
        base = node.name
        names = {key: f"{base}.int4_{key}" for key in ("packed", "scale", "mask", "shift", "eight", "pairs", "groups", "matrix", "perm")}
        model.graph.initializer.extend([
            numpy_helper.from_array(packed, names["packed"]),
            numpy_helper.from_array(scale, names["scale"]),
            numpy_helper.from_array(np.array(15, np.uint8), names["mask"]),
            numpy_helper.from_array(np.array(4, np.uint8), names["shift"]),
            numpy_helper.from_array(np.array(8.0, np.float32), names["eight"]),
            numpy_helper.from_array(np.array([-1, 1], np.int64), names["pairs"]),
            numpy_helper.from_array(np.array([rows, padded // group, group], np.int64), names["groups"]),
            numpy_helper.from_array(np.array([rows, padded], np.int64), names["matrix"]),
        ])
        t = lambda suffix: f"{base}.int4_{suffix}"  # noqa: E731
        unpack = [
            helper.make_node("BitwiseAnd", [names["packed"], names["mask"]], [t("low")], name=t("low_node")),
            helper.make_node("BitShift", [names["packed"], names["shift"]], [t("high")], direction="RIGHT", name=t("high_node")),
            helper.make_node("Reshape", [t("low"), names["pairs"]], [t("low2")], name=t("low_reshape")),
            helper.make_node("Reshape", [t("high"), names["pairs"]], [t("high2")], name=t("high_reshape")),
            helper.make_node("Concat", [t("low2"), t("high2")], [t("nibbles")], axis=1, name=t("interleave")),
            helper.make_node("Reshape", [t("nibbles"), names["groups"]], [t("grouped")], name=t("group_reshape")),
            helper.make_node("Cast", [t("grouped")], [t("float")], to=TensorProto.FLOAT, name=t("cast")),
            helper.make_node("Sub", [t("float"), names["eight"]], [t("centered")], name=t("center")),
            helper.make_node("Cast", [names["scale"]], [t("scale32")], to=TensorProto.FLOAT, name=t("scale_cast")),
            helper.make_node("Mul", [t("centered"), t("scale32")], [t("scaled")], name=t("scale_mul")),
            helper.make_node("Reshape", [t("scaled"), names["matrix"]], [t("rows")], name=t("matrix_reshape")),
        ]
        current = t("rows")
        if padded != columns:
            model.graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), t("start")),
                                            numpy_helper.from_array(np.array([columns], np.int64), t("end")),
                                            numpy_helper.from_array(np.array([1], np.int64), t("axis"))])
            unpack.append(helper.make_node("Slice", [current, t("start"), t("end"), t("axis")], [t("sliced")], name=t("slice")))
            current = t("sliced")
        if transposed:
            unpack.append(helper.make_node("Transpose", [current], [t("weight")], perm=[1, 0], name=t("transpose")))
        else:
            model.graph.initializer.append(numpy_helper.from_array(np.array(array.shape, np.int64), t("shape")))
            unpack.append(helper.make_node("Reshape", [current, t("shape")], [t("weight")], name=t("shape_reshape")))
        new_nodes.extend(unpack)
        node.input[1] = t("weight")
        new_nodes.append(node)
    _drop_unused_initializers(model, new_nodes)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return skipped


def _topological_sort(model) -> None:
    """Order the graph's nodes so every input is produced before it is used (as onnx.checker demands)."""
    available = {init.name for init in model.graph.initializer} | {value.name for value in model.graph.input} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise InternalError("the quantized graph has a cycle or an undefined input")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [node for node in pending if node not in ready]
    copies = [type(node)() for node in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del model.graph.node[:]
    model.graph.node.extend(copies)


def _drop_unused_initializers(model, nodes) -> None:
    used = {name for node in nodes for name in node.input} | {value.name for value in model.graph.output}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    inputs = [value for value in model.graph.input if value.name in used or value.name not in {i.name for i in kept}]
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def quantize(model: str | Path, out: Path, config: _Quantization, *, inputs: Sequence[str] = (),
             target: str = "x86_64", progress=lambda line: None) -> StageRecord:
    """The Python API behind `edgepack quantize`: the pipeline's front half stopped after this pass, written to `out`.

    `out` carries every stage record in its ONNX metadata, so a later build lists them. Nothing is
    written when a stage fails (the quality gate included)."""
    import tempfile

    from edgepack.pipeline import plan_front, run_front, write_onnx

    out = Path(out)
    if out.suffix != ".onnx":
        raise EdgepackError(f"output '{out}' is not an .onnx file", "pass -o model.int8.onnx")
    plan = plan_front(str(model), target, list(inputs), onnx_passes=(config,))
    with tempfile.TemporaryDirectory(prefix="edgepack-quantize-") as workdir:
        work = Path(workdir)
        result = run_front(plan, work, progress)
        # the quantized file as the pass wrote it (what its report measured), not pre-flight's folded copy
        written = write_onnx(result.written, work / "written.onnx", [*plan.prior_stages, *result.records])
        (work / "record").mkdir()
        samples = config.recorded_samples(result.original, PassContext(work / "record", plan.target, progress))
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            _record(written, temporary, config.mode, samples, result.original.inputs)
            os.replace(temporary, out)
        finally:
            temporary.unlink(missing_ok=True)
    return result.records[-1]


def _record(path: Path, out: Path, mode: str, samples: EvalData | None, specs) -> None:
    """Write `path` to `out` with metadata RECORD_KEY: the mode, and up to GOLDEN_SAMPLES real samples (base64 .npz)."""
    import base64
    import io
    import json

    import onnx

    proto = onnx.load(str(path))
    entry = {"mode": mode}
    if samples is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **{spec.name: stack[:GOLDEN_SAMPLES] for spec, stack in zip(specs, samples.inputs)})
        entry.update(samples=base64.b64encode(buffer.getvalue()).decode("ascii"), origin=samples.origin)
    kept = [prop for prop in proto.metadata_props if prop.key != RECORD_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=RECORD_KEY, value=json.dumps(entry))
    onnx.save(proto, str(out))


def recorded_quantization(path: Path, specs) -> tuple[str, EvalData | None] | None:
    """What `edgepack quantize` recorded in the file at `path`: its mode and real samples (or None); None if nothing."""
    import base64
    import io
    import json

    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    value = next((prop.value for prop in proto.metadata_props if prop.key == RECORD_KEY), None)
    if value is None:
        return None
    try:
        entry = json.loads(value)
        samples = None
        if "samples" in entry:
            archive = np.load(io.BytesIO(base64.b64decode(entry["samples"])), allow_pickle=False)
            stacks = tuple(archive[spec.name].astype(spec.dtype, copy=False) for spec in specs)
            if any(tuple(stack.shape[1:]) != tuple(spec.shape[1:]) for stack, spec in zip(stacks, specs)):
                stacks = None  # recorded for other input shapes (`--input` changed them): not usable
            samples = EvalData(stacks, None, f"{entry.get('origin', 'data')} recorded by edgepack quantize") if stacks else None
        return str(entry["mode"]), samples
    except (ValueError, KeyError, TypeError, OSError):
        return None  # metadata written by something else: treat the file as not recorded


def golden_rule(mode: str, model: OnnxModel, golden: GoldenConfig) -> GoldenConfig:
    """The golden tolerance of a build of a file already quantized in `mode` (the mode's own rule)."""
    modes = {cls.mode: cls for cls in (Int8Static, Int8Dynamic, Float16, Int4WeightOnly)}
    if mode not in modes:
        return replace(golden, unfused=True)
    return modes[mode].golden_config(None, model, golden)  # the rules read only the model, not the config


def summary_line(report: dict) -> str:
    """One line for `inspect` and the CLI: mode, weight bytes, quality, layers kept in float."""
    quality = report.get("quality", {})
    metric = quality.get("metric")
    line = f"{report['mode']}: weights {report['weights_bytes_fp32'] / 1024:.1f} KiB fp32 → {report['weights_bytes'] / 1024:.1f} KiB"
    if metric:
        before = quality["before"].get(metric, 1.0)
        line += f"; {metric} {before:.4f} → {quality['after'][metric]:.4f} (drop {quality['drop'] * 100:.2f} points)"
    if report.get("kept_in_float"):
        line += f"; {len(report['kept_in_float'])} layer(s) kept in float"
    if report.get("skipped"):
        line += f"; {len(report['skipped'])} layer(s) skipped"
    return line
