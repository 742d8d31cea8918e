"""int8 matmuls on AVX512-VNNI `vpdpbusd` (edgepack.compiler.int8_dot): the same integers as the widened path.

The kernel is checked alone against numpy on odd shapes (K not a multiple of 4, N not of 16, rows not of 4),
and whole quantized models built for x86_64-vnni against the same models built for x86_64 (today's
widened int32 loops, itself checked against ONNX Runtime in test_integer_ops.py): outputs must be equal.
Running needs a CPU with avx512_vnni; on others those tests skip with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgepack.compiler.int8_dot import column_correction, pack_conv_weight, pack_weight, vnni_conv2d, vnni_dense
from edgepack.runtime.bundle_format import cpu_features
from edgepack.targets import load_target
from tests.tvm.test_integer_ops import _init, _save, compiled_outputs, conv_model, quantize, random_inputs

pytestmark = pytest.mark.tvm

needs_vnni = pytest.mark.skipif("avx512_vnni" not in cpu_features(), reason="this CPU has no avx512_vnni (vpdpbusd)")


def test_packed_layout_and_correction_reproduce_the_matmul():
    """numpy only: the packed weight read as [N/16, K/4, 16, 4] and the correction give Σ (x - zx)·w."""
    rs = np.random.RandomState(0)
    w = rs.randint(-128, 128, (7, 19)).astype(np.int8)
    x = rs.randint(-128, 128, (3, 7)).astype(np.int64)
    packed = pack_weight(w)
    assert packed.shape == (2, 2, 16, 4) and packed.dtype == np.int8
    unpacked = packed.transpose(1, 3, 0, 2).reshape(8, 32)
    assert np.array_equal(unpacked[:7, :19], w) and not unpacked[7:].any() and not unpacked[:, 19:].any()
    flipped = np.pad(x + 128, ((0, 0), (0, 1)))  # int8 activations enter as uint8 x + 128
    got = flipped @ unpacked.astype(np.int64) + column_correction(w, 5, offset=128)
    assert np.array_equal(got[:, :19], (x - 5) @ w.astype(np.int64))


@needs_vnni
@pytest.mark.parametrize("m, k, n, signed, zero_point", [(1, 64, 64, True, 0), (3, 67, 33, True, -7),
                                                         (5, 1, 17, False, 0), (8, 130, 200, False, 131)])
def test_vnni_kernel_is_exact(m, k, n, signed, zero_point):
    import tvm

    target = load_target("x86_64-vnni").tvm_target()
    library = tvm.compile(tvm.IRModule({"main": vnni_dense(m, k, n, signed).with_attr("global_symbol", "main")}), target=target)
    rs = np.random.RandomState(m * 1000 + k)
    x = rs.randint(-128, 128, (m, k)).astype(np.int8) if signed else rs.randint(0, 256, (m, k)).astype(np.uint8)
    w = rs.randint(-128, 128, (k, n)).astype(np.int8)
    out = tvm.runtime.tensor(np.zeros((m, -(-n // 16) * 16), np.int32))
    library(tvm.runtime.tensor(x), tvm.runtime.tensor(pack_weight(w)),
            tvm.runtime.tensor(column_correction(w, zero_point, 128 if signed else 0)), out)
    assert np.array_equal(out.numpy()[:, :n], (x.astype(np.int64) - zero_point) @ w.astype(np.int64))


def _reference_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int, dilation: int) -> np.ndarray:
    """NCHW x OIHW in int64, zero padding (x already has its zero point subtracted)."""
    o, _, kh, kw = w.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (padded.shape[2] - dilation * (kh - 1) - 1) // stride + 1
    ow = (padded.shape[3] - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((x.shape[0], o, oh, ow), np.int64)
    for y in range(kh):
        for z in range(kw):
            patch = padded[:, :, y * dilation: y * dilation + stride * (oh - 1) + 1: stride,
                           z * dilation: z * dilation + stride * (ow - 1) + 1: stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, y, z].astype(np.int64))
    return out


@needs_vnni
@pytest.mark.parametrize("n, c, h, w, o, k, stride, pad, dilation, signed, zero_point", [
    (1, 3, 8, 8, 8, 3, 1, 1, 1, True, 0), (2, 5, 9, 7, 20, 3, 2, 1, 1, False, 17), (1, 16, 6, 6, 33, 1, 1, 0, 1, True, -5),
    (1, 8, 10, 10, 16, 3, 1, 2, 2, True, 3), (1, 4, 16, 16, 64, 3, 1, 1, 1, False, 128)])
def test_vnni_conv_kernel_is_exact(n, c, h, w, o, k, stride, pad, dilation, signed, zero_point):
    """The input as _emit_conv2d prepares it: padded with the zero point, NHWC, channels padded to 4."""
    import tvm

    rs = np.random.RandomState(c * 100 + o)
    x = rs.randint(-128, 128, (n, c, h, w)).astype(np.int8) if signed else rs.randint(0, 256, (n, c, h, w)).astype(np.uint8)
    weight = rs.randint(-128, 128, (o, c, k, k)).astype(np.int8)
    want = _reference_conv(x.astype(np.int64) - zero_point, weight, stride, pad, dilation)
    nhwc = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=zero_point).transpose(0, 2, 3, 1)
    nhwc = np.ascontiguousarray(np.pad(nhwc, ((0, 0), (0, 0), (0, 0), (0, -c % 4))))
    blocks = -(-o // 16)
    kernel = vnni_conv2d(nhwc.shape, (k, k), want.shape[2:], blocks, (stride, stride), (dilation, dilation), signed)
    library = tvm.compile(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}),
                          target=load_target("x86_64-vnni").tvm_target())
    out = tvm.runtime.tensor(np.zeros((n, *want.shape[2:], blocks * 16), np.int32))
    library(tvm.runtime.tensor(nhwc), tvm.runtime.tensor(pack_conv_weight(weight)),
            tvm.runtime.tensor(column_correction(weight.reshape(o, -1).T, zero_point, 128 if signed else 0)), out)
    assert np.array_equal(out.numpy()[..., :o].transpose(0, 3, 1, 2), want)


def mlp_model(path: Path) -> Path:
    """x[3,37] → MatMul(37x21) → Add → ReLU → Gemm(transB=1, 21→19) + bias: odd sizes everywhere."""
    rs = np.random.RandomState(3)
    inits = [_init(rs, "w1", 37, 21), _init(rs, "b1", 21, scale=0.1), _init(rs, "w2", 19, 21), _init(rs, "b2", 19, scale=0.1)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"]), helper.make_node("Add", ["m", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 37])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 19])], inits)
    return _save(graph, path)


def _vnni_report_equal_to_widened(path, tmp_path) -> dict:
    """Build `path` for x86_64 (widened integer kernels) and x86_64-vnni, check their outputs are equal on the same
    inputs, and return the VNNI build's report."""
    inputs = random_inputs(path)
    widened, _ = compiled_outputs(path, tmp_path / "x86_64", inputs)
    vnni, report = compiled_outputs(path, tmp_path / "vnni", inputs, target="x86_64-vnni")
    for got, want in zip(vnni, widened):
        assert np.array_equal(got, want)
    return report


@needs_vnni
@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_vnni_build_equals_widened_build(tmp_path, activations):
    report = _vnni_report_equal_to_widened(quantize(mlp_model(tmp_path / "mlp.onnx"), activations), tmp_path)
    dot = report["integer_ops"]["dot_product"]
    assert dot["feature"] == "avx512_vnni" and dot["kernels"] == 2 and "skipped" not in dot, dot
    assert not any("likely slower" in line for line in report["warnings"]), report["warnings"]
    if shutil.which("objdump"):
        def disassembly(workdir):
            return subprocess.run(["objdump", "-d", str(workdir / "model.so")], capture_output=True, text=True).stdout
        assert "vpdpbusd" in disassembly(tmp_path / "vnni") and "vpdpbusd" not in disassembly(tmp_path / "x86_64")


@needs_vnni
@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_vnni_convolutions_equal_widened_build(tmp_path, activations):
    """conv_model: a 3-channel stem (channels padded to 4), a 3x3 conv with a residual, a depthwise conv (stays
    widened: one group only) and a Gemm; with zero points (uint8) and the +128 flip (int8) at padded borders."""
    report = _vnni_report_equal_to_widened(quantize(conv_model(tmp_path / "conv.onnx"), activations), tmp_path)
    dot = report["integer_ops"]["dot_product"]
    assert report["kernels"]["hand_written"] == 3 and report["kernels"]["tuned"] == 0, report["kernels"]
    assert dot["kernels"] == 3 and list(dot["skipped"].values()) == ["grouped or depthwise convolution (one group only)"], dot
    assert any("1 of its 4 integer conv/matmul kernels are widened" in line for line in report["warnings"]), report["warnings"]


def test_vnni_build_and_tuning_tasks_without_running(tmp_path):
    """Compile-only, on any x86 host: the kernels are in the library, and tuning does not extract them as tasks."""
    from edgepack.compiler.compile import CompileConfig, compile_model
    from edgepack.compiler.tune import extract_kernels
    from edgepack.frontends.preflight import preflight

    path = quantize(conv_model(tmp_path / "conv.onnx"), "int8")
    model, _ = preflight(path, {}, tmp_path)
    _, record = compile_model(model, load_target("x86_64-vnni"), tmp_path, CompileConfig())
    assert record.report["integer_ops"]["dot_product"]["kernel_ops"] == ["conv2d w1_quantized", "conv2d w2_quantized",
                                                                         "matmul wf_quantized"]
    _, vnni = extract_kernels(model, load_target("x86_64-vnni"))
    _, widened = extract_kernels(model, load_target("x86_64-v4"))
    names = [task.task_name for task in vnni]
    convs = [name for name in names if "conv2d" in name]  # the depthwise one only
    assert not any("int8_dot" in name for name in names) and len(convs) == 1, names
    assert sum("conv2d" in task.task_name for task in widened) == 3


def test_dynamic_batch_keeps_the_widened_path_with_the_reason(tmp_path):
    """Compile-only: a symbolic batch is not taken (the kernels need static shapes); the warning says why."""
    import onnx

    from edgepack.compiler.compile import CompileConfig, compile_model
    from edgepack.frontends.preflight import preflight

    path = quantize(mlp_model(tmp_path / "mlp.onnx"), "int8")
    model = onnx.load(str(path))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(model, str(tmp_path / "dynamic.onnx"))
    compiled_model, _ = preflight(tmp_path / "dynamic.onnx", {}, tmp_path)
    _, record = compile_model(compiled_model, load_target("x86_64-vnni"), tmp_path, CompileConfig())
    dot = record.report["integer_ops"]["dot_product"]
    assert dot["kernels"] == 0 and set(dot["skipped"].values()) == {"its activation's shape is not static"}, dot
    assert any("2 of its 2 integer conv/matmul kernels are widened" in line and "do not take them" in line
               for line in record.report["warnings"]), record.report["warnings"]


def test_targets_without_vnni_keep_the_widened_path(tmp_path):
    """x86_64 (AVX2) and x86_64-v4 have no VNNI: no dot-product kernel, the warning still says int8 is slower."""
    from edgepack.compiler.int8_dot import dot_feature

    assert dot_feature(load_target("x86_64")) is None and dot_feature(load_target("x86_64-v4")) is None
    assert dot_feature(load_target("x86_64-vnni")) == "avx512_vnni"
