"""Integer execution of QDQ models (edgepack.compiler.integer_ops) against ONNX Runtime, within one quantization step.

The fp32 graphs are written with onnx.helper and quantized by ONNX Runtime's quantize_static (QDQ,
per-channel symmetric int8 weights, uint8 or int8 activations), so nothing is exported from torch here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.compiler.compile import CompileConfig, compile_model, import_relax
from edgepack.compiler.integer_ops import IntegerReport
from edgepack.frontends.preflight import preflight
from edgepack.targets import load_target

pytestmark = pytest.mark.tvm

CASES = 3  # random inputs compared per model


def _init(rs, name, *shape, scale=0.3):
    return numpy_helper.from_array((rs.randn(*shape) * scale).astype(np.float32), name)


def conv_model(path: Path) -> Path:
    """x[1,3,8,8] → Conv+bias → ReLU → (Conv+bias, residual Add) → ReLU → depthwise Conv → Flatten → Gemm(transB)."""
    rs = np.random.RandomState(0)
    inits = [_init(rs, "w1", 8, 3, 3, 3), _init(rs, "b1", 8, scale=0.1), _init(rs, "w2", 8, 8, 3, 3, scale=0.15),
             _init(rs, "b2", 8, scale=0.1), _init(rs, "w3", 8, 1, 3, 3), _init(rs, "b3", 8, scale=0.1),
             _init(rs, "wf", 10, 512, scale=0.05), _init(rs, "bf", 10, scale=0.1)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["r1", "c2"], ["s"]),
             helper.make_node("Relu", ["s"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], group=8),
             helper.make_node("Flatten", ["c3"], ["f"]),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return _save(graph, path)


def matmul_model(path: Path) -> Path:
    """x[2,16] → MatMul → Add(bias) → ReLU → Gemm(bias, transB=0)."""
    rs = np.random.RandomState(1)
    inits = [_init(rs, "w1", 16, 12), _init(rs, "b1", 12, scale=0.1), _init(rs, "w2", 12, 5), _init(rs, "b2", 5, scale=0.1)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"]), helper.make_node("Add", ["m", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Gemm", ["r", "w2", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], inits)
    return _save(graph, path)


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def quantize(fp32: Path, activations: str, *, reduce_range: bool = False, op_types=None) -> Path:
    """ONNX Runtime quantize_static: QDQ, per-channel symmetric int8 weights, calibrated on 8 seeded batches."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    shape = [d.dim_value for d in onnx.load(str(fp32)).graph.input[0].type.tensor_type.shape.dim]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": np.random.RandomState(100 + i).randn(*shape).astype(np.float32)} for i in range(8)])

        def get_next(self):
            return next(self.batches, None)

    out = fp32.with_name(f"{fp32.stem}.{activations}{'.rr' if reduce_range else ''}.qdq.onnx")
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, reduce_range=reduce_range, op_types_to_quantize=op_types,
                    activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8)
    return out


def output_step(path: Path) -> float:
    """The scale of the DequantizeLinear that produces the graph output: one quantization step of the result."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}[model.graph.output[0].name]
    assert producer.op_type == "DequantizeLinear", producer.op_type
    return float(inits[producer.input[1]])


def ort_outputs(path: Path, inputs: list[np.ndarray], optimized: bool) -> list[np.ndarray]:
    """ONNX Runtime's results: optimized (fused QLinear kernels) or the plain QDQ semantics (no graph rewrites)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [session.run(None, {"x": x})[0] for x in inputs]


def compiled_outputs(path: Path, workdir: Path, inputs: list[np.ndarray], integer_ops: bool = True, target: str = "x86_64"):
    """Compile with edgepack for `target` (x86_64 by default) and run through the TVM runtime; returns (outputs, compile report)."""
    import tvm
    from tvm import relax

    workdir.mkdir(parents=True, exist_ok=True)
    model, _ = preflight(path, {}, workdir)
    compiled, record = compile_model(model, load_target(target), workdir, CompileConfig(integer_ops=integer_ops))
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(compiled.library)), tvm.cpu())
    data = compiled.params.read_bytes()
    if compiled.params.suffix == ".sparse":  # written by edgepack.bundle.sparse_params when zeros make it smaller
        from edgepack.bundle.sparse_params import decode

        data = decode(data)
    params = tvm.runtime.load_param_dict(data)
    weights = [params[name] for name in compiled.param_names]
    return [vm["main"](tvm.runtime.tensor(x), *weights).numpy() for x in inputs], record.report


def random_inputs(path: Path) -> list[np.ndarray]:
    shape = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    return [np.random.RandomState(7 + i).randn(*shape).astype(np.float32) * 1.2 for i in range(CASES)]


def assert_within_steps(ours, reference, step: float, steps: int = 1) -> None:
    for got, want in zip(ours, reference):
        np.testing.assert_allclose(got, want, rtol=0, atol=step * steps + 1e-6)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("qdq")
    conv, mm = conv_model(directory / "conv.onnx"), matmul_model(directory / "mm.onnx")
    return {"conv_u8": quantize(conv, "uint8", reduce_range=True), "conv_s8": quantize(conv, "int8"),
            "mm_u8": quantize(mm, "uint8"), "conv_gemm_only": quantize(conv, "uint8", op_types=["Gemm"])}


def _model(path: Path, workdir: Path):
    return preflight(path, {}, workdir)[0]


@pytest.mark.parametrize("name, integer", [("conv_u8", 4), ("conv_s8", 4), ("mm_u8", 2)])
def test_integer_build_matches_onnxruntime_within_one_step(models, tmp_path, name, integer):
    path = models[name]
    inputs = random_inputs(path)
    ours, report = compiled_outputs(path, tmp_path, inputs)
    assert report["integer_ops"]["integer"] == integer, report["integer_ops"]
    assert report["integer_ops"]["float"] == 0, report["integer_ops"]
    assert any("int8 is likely slower than fp32" in line for line in report["warnings"]), report["warnings"]
    step = output_step(path)
    # the QDQ semantics (ONNX Runtime with its graph rewrites off: dequantize, float op, quantize)
    assert_within_steps(ours, ort_outputs(path, inputs, optimized=False), step)
    # ONNX Runtime's fused integer kernels (QLinearConv/QGemm); mm_u8 uses full-range weights, where ORT's
    # u8s8 AVX2 kernels may saturate 16-bit sums, so it is compared with the QDQ semantics only
    if name != "mm_u8":
        assert_within_steps(ours, ort_outputs(path, inputs, optimized=True), step)


def test_rewrite_really_makes_integer_ops(models, tmp_path):
    """The Relax module holds int8 conv2d/matmul with int32 accumulation and no float conv2d/matmul."""
    from tvm import relax

    report = IntegerReport()
    module, params = import_relax(_model(models["conv_u8"], tmp_path), integer_ops=True, report=report)
    calls = []
    relax.analysis.post_order_visit(module["main"].body,
                                    lambda e: calls.append(e) if isinstance(e, relax.Call) and hasattr(e.op, "name") else None)
    cores = [c for c in calls if c.op.name in ("relax.nn.conv2d", "relax.matmul")]
    assert len(cores) == 4
    for call in cores:
        assert str(call.attrs.out_dtype) == "int32"
        assert str(call.args[0].ty.dtype) in ("uint8", "int8", "int16")
        assert str(call.args[1].ty.dtype) == "int8"
    weights = set(module["main"].params)  # no weight is dequantized to fp32 any more
    assert not any(c.op.name == "relax.dequantize" and c.args[0] in weights for c in calls)
    # weights stay int8 parameters (params.bin keeps them small); scales/zero points were bound as constants
    dtypes = sorted(str(p.dtype) for p in params["main"])
    assert dtypes.count("int8") == 4 and report.bound_params > 0
    assert sorted(report.integer) == sorted(["conv2d w1_quantized", "conv2d w2_quantized", "conv2d w3_quantized",
                                             "matmul wf_quantized"])


def test_unquantized_convs_stay_float_and_are_reported(models, tmp_path):
    path = models["conv_gemm_only"]
    inputs = random_inputs(path)
    ours, report = compiled_outputs(path, tmp_path, inputs)
    integer = report["integer_ops"]
    assert integer["integer_ops"] == ["matmul wf_quantized"], integer
    assert set(integer["float_ops"]) == {"w1", "w2", "w3"}, integer
    assert all("not quantized" in why for why in integer["float_ops"].values()), integer
    assert any("3 of 4 conv/matmul ops of the quantized model run dequantize-then-float" in line
               for line in report["warnings"]), report["warnings"]
    assert_within_steps(ours, ort_outputs(path, inputs, optimized=False), output_step(path))


def test_integer_ops_off_keeps_dequantize_then_float(models, tmp_path):
    path = models["mm_u8"]
    inputs = random_inputs(path)
    ours, report = compiled_outputs(path, tmp_path, inputs, integer_ops=False)
    assert report["integer_ops"]["integer"] == 0 and report["integer_ops"]["quantized"]
    assert set(report["integer_ops"]["float_ops"].values()) == {"integer execution is off"}
    assert_within_steps(ours, ort_outputs(path, inputs, optimized=False), output_step(path))


def test_fp32_model_is_untouched_and_not_warned(tmp_path):
    from edgepack.compiler.integer_ops import speed_warnings

    report = IntegerReport()
    model = _model(conv_model(tmp_path / "fp32.onnx"), tmp_path)
    import_relax(model, integer_ops=True, report=report)
    assert not report.quantized and report.integer == [] and len(report.float) == 4
    assert set(report.float.values()) == {"the model is not quantized"}
    assert speed_warnings(report, load_target("x86_64")) == []
