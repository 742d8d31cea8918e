"""Quantization without a TVM build: calibration readers, configs and their one-line errors, every mode's graph,
the quality gate and the --auto fallback (ONNX Runtime is the engine here; TVM builds are in tests/tvm)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.compression.calibration import calibration_reader, load_calibration
from edgepack.errors import EdgepackError, VerificationError
from edgepack.frontends.preflight import op_report
from edgepack.compression.quantize import (Float16, Int4WeightOnly, Int8Dynamic, Int8Static, QualityGate, output_step, quantization_config,
                               quantize, weight_bytes)
from edgepack.runtime.bundle_format import TensorSpec

IMAGE = TensorSpec("image", "float32", (1, 2, 6, 6))


def _tiny_cnn(path, seed: int = 0):
    """image[1,2,6,6] → Conv(8,3x3) → Relu → Flatten → Gemm(288→16) → Relu → MatMul(16→4): every weight op."""
    rng = np.random.default_rng(seed)
    weights = {"conv_w": rng.standard_normal((8, 2, 3, 3)).astype(np.float32) * 0.3, "conv_b": rng.standard_normal(8).astype(np.float32) * 0.1,
               "fc_w": rng.standard_normal((16, 288)).astype(np.float32) * 0.1, "fc_b": rng.standard_normal(16).astype(np.float32) * 0.1,
               "out_w": rng.standard_normal((16, 4)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["g"], transB=1, name="fc"),
             helper.make_node("Relu", ["g"], ["h"], name="relu2"),
             helper.make_node("MatMul", ["h", "out_w"], ["logits"], name="out")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(value, name) for name, value in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("quantize")
    model = _tiny_cnn(directory / "tiny.onnx")
    rng = np.random.default_rng(1)
    images = rng.random((64, 2, 6, 6)).astype(np.float32)
    np.savez(directory / "calib.npz", image=images[:32])
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    labels = np.array([session.run(None, {"image": image[None]})[0].argmax() for image in images[32:]])
    np.savez(directory / "eval.npz", image=images[32:], labels=labels)  # the fp32 model is right on every sample
    return directory


# ------------------------------------------------------------------ calibration readers

def test_npz_folder_and_function_give_the_same_samples(tmp_path):
    images = np.random.default_rng(0).random((5, 2, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "c.npz", image=images)
    folder = tmp_path / "npy"
    folder.mkdir()
    for index, image in enumerate(images):  # one sample per file, with and without the batch axis
        np.save(folder / f"{index:02d}.npy", image[None] if index % 2 else image)
    (tmp_path / "feed.py").write_text("import numpy as np\n"
                                      f"def batches():\n    x = np.load({str(tmp_path / 'c.npz')!r})['image']\n"
                                      "    yield x[:2]\n    yield {'image': x[2:]}\n")
    for source in (tmp_path / "c.npz", folder, f"{tmp_path / 'feed.py'}:batches"):
        samples = load_calibration(source, [IMAGE])
        np.testing.assert_array_equal(samples.inputs[0], images)
    reader = calibration_reader(load_calibration(tmp_path / "c.npz", [IMAGE], limit=3), [IMAGE])
    feeds = list(iter(reader.get_next, None))
    assert [feed["image"].shape for feed in feeds] == [(1, 2, 6, 6)] * 3
    reader.rewind()
    assert reader.get_next() is not None


def test_folder_with_one_file_per_input_name(tmp_path):
    a, b = TensorSpec("a", "float32", (2, 3)), TensorSpec("b", "float32", (2, 4))
    np.save(tmp_path / "a.npy", np.ones((6, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((6, 4), np.float32))
    samples = load_calibration(tmp_path, [a, b])
    assert len(samples) == 6
    assert [feed["a"].shape for feed in samples.batches([a, b])] == [(2, 3)] * 3


@pytest.mark.parametrize("setup, message", [
    (lambda d: d / "missing.npz", "does not exist"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "holds no .npy files"),
    (lambda d: np.save(d / "x.npy", np.zeros((3, 5), np.float32)) or d, "does not fit input 'image'"),
    (lambda d: (d / "f.py").write_text("def g():\n    return iter([])\n") and f"{d / 'f.py'}:g", "yielded no batches"),
    (lambda d: (d / "f.py").write_text("def g():\n    raise RuntimeError('boom')\n    yield\n") and f"{d / 'f.py'}:g", "raised RuntimeError: boom"),
    (lambda d: (d / "f.py").write_text("x = 1\n") and f"{d / 'f.py'}:nope", "has no function 'nope'"),
    (lambda d: (d / "f.py").write_text("def g():\n    yield (1, 2)\n") and f"{d / 'f.py'}:g", "has 2 array(s)"),
])
def test_calibration_errors_are_one_line(tmp_path, setup, message):
    with pytest.raises(EdgepackError) as caught:
        load_calibration(setup(tmp_path), [IMAGE])
    assert message in caught.value.problem and "\n" not in caught.value.problem


# ------------------------------------------------------------------ configs

@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="int9"), "unknown quantization mode 'int9'"),
    (dict(mode="int8"), "needs calibration data"),
    (dict(mode="int8", calibration="nowhere.npz"), "does not exist"),
    (dict(mode="fp16", calibration="x.npz"), "only used by --quantize int8"),
    (dict(mode="int4", gate=QualityGate(max_drop=0.01)), "--max-drop needs --eval"),
    (dict(mode="int4", gate=QualityGate(data="e.npz", auto=True)), "no --max-drop"),
    (dict(mode="int8", calibration=".", method="kl"), "unknown calibration method 'kl'"),
    (dict(mode="int4", group_size=3), "must be even"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(EdgepackError) as caught:
        quantization_config(**kwargs)
    assert message in caught.value.problem


def test_modes_are_onnx_passes_with_their_own_config_classes(tiny):
    from edgepack.compression.passes import OnnxPass

    configs = [quantization_config("int8", calibration=str(tiny / "calib.npz")), quantization_config("int8-dynamic"),
               quantization_config("fp16"), quantization_config("int4")]
    assert [type(c) for c in configs] == [Int8Static, Int8Dynamic, Float16, Int4WeightOnly]
    assert all(isinstance(c, OnnxPass) and c.stage == "quantize" for c in configs)


# ------------------------------------------------------------------ every mode: importable ops, smaller weights

@pytest.mark.parametrize("mode, forbidden", [("int8", {"QLinearConv", "QGemm", "ConvInteger"}), ("int8-dynamic", {"ConvInteger"}),
                                             ("fp16", set()), ("int4", {"MatMulNBits"})])
def test_each_mode_writes_an_importable_smaller_model(tiny, tmp_path, mode, forbidden):
    config = quantization_config(mode, calibration=str(tiny / "calib.npz") if mode == "int8" else None,
                                 gate=QualityGate(tiny / "eval.npz"))
    record = quantize(tiny / "tiny.onnx", tmp_path / "q.onnx", config)
    result = onnx.load(str(tmp_path / "q.onnx"))
    ops = {node.op_type for node in result.graph.node}
    assert not ops & forbidden and op_report(result).unsupported == ()
    report = record.report
    assert report["weights_bytes"] == weight_bytes(result) < report["weights_bytes_fp32"] == weight_bytes(onnx.load(str(tiny / "tiny.onnx")))
    assert report["quality"]["metric"] == "accuracy" and report["quality"]["before"]["accuracy"] == 1.0
    assert report["quality"]["after"]["cosine"] > 0.9
    dtypes = {numpy_helper.to_array(init).dtype for init in result.graph.initializer if init.name.startswith(("conv", "fc", "out"))}
    expected = {"int8": np.int8, "int8-dynamic": np.int8, "fp16": np.float16, "int4": np.uint8}[mode]
    assert np.dtype(expected) in dtypes
    if mode == "int8":
        assert "DequantizeLinear" in ops and output_step(tmp_path / "q.onnx") > 0
    if mode == "int8-dynamic":
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops  # MatMul via ONNX Runtime, Conv/Gemm written as QDQ
    if mode == "int4":
        assert {"BitShift", "BitwiseAnd"} <= ops
        assert report["weights_bytes"] < report["weights_bytes_fp32"] / 4


def test_int4_unpack_reproduces_group_quantized_weights(tiny, tmp_path):
    """The in-graph unpack gives back each weight within half a group step of the float weight."""
    quantize(tiny / "tiny.onnx", tmp_path / "q4.onnx", quantization_config("int4", group_size=16))
    model = onnx.load(str(tmp_path / "q4.onnx"))
    model.graph.output.append(helper.make_tensor_value_info("fc.int4_weight", TensorProto.FLOAT, None))
    onnx.save(model, str(tmp_path / "probe.onnx"))
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "probe.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["fc.int4_weight"], {"image": np.zeros((1, 2, 6, 6), np.float32)})[0]
    original = numpy_helper.to_array(next(i for i in onnx.load(str(tiny / "tiny.onnx")).graph.initializer if i.name == "fc_w"))
    step = np.abs(original.reshape(16, -1, 16)).max(axis=2, keepdims=True) / 7
    assert got.shape == original.shape
    assert np.all(np.abs(got - original).reshape(16, -1, 16) <= step / 2 + 1e-3 * step)


def test_fp16_warns_on_a_target_without_fp16(tiny, tmp_path):
    record = quantize(tiny / "tiny.onnx", tmp_path / "h.onnx", quantization_config("fp16"), target="x86_64-generic")
    assert "emulated" in record.report["warnings"][0]


# ------------------------------------------------------------------ gate and --auto

def test_gate_fails_in_one_line_and_writes_nothing(tiny, tmp_path):
    config = quantization_config("int4", gate=QualityGate(tiny / "eval.npz", max_drop=0.0))
    config = Int4WeightOnly(group_size=288, gate=config.gate)  # one coarse group per row: loses accuracy here
    with pytest.raises(VerificationError) as caught:
        quantize(tiny / "tiny.onnx", tmp_path / "q.onnx", config)
    assert "int4 quantization loses too much: accuracy 1.0000 →" in caught.value.problem
    assert not (tmp_path / "q.onnx").exists()


def test_auto_keeps_the_most_sensitive_layers_in_float_until_the_gate_holds(tiny, tmp_path):
    gate = QualityGate(tiny / "eval.npz", max_drop=0.0, auto=True)
    record = quantize(tiny / "tiny.onnx", tmp_path / "q.onnx", Int4WeightOnly(group_size=288, gate=gate))
    report = record.report
    assert report["quality"]["passed"] and report["quality"]["drop"] == 0.0
    kept = report["kept_in_float"]
    assert 1 <= len(kept) <= 3 and all("most sensitive" in entry["why"] for entry in kept)
    assert report["attempts"] == 1 + 3 + len(kept)  # all layers, each alone in float, then the greedy steps
    names = {node.name: node for node in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    for entry in kept:  # a kept layer still reads its float weight
        assert not names[entry["node"]].input[1].endswith("int4_weight")


def test_exclude_keeps_named_layers_in_float(tiny, tmp_path):
    record = quantize(tiny / "tiny.onnx", tmp_path / "q.onnx", quantization_config("int8-dynamic", exclude=["fc"]))
    assert record.report["kept_in_float"] == [{"node": "fc", "why": "--exclude"}]
    with pytest.raises(EdgepackError, match="does not have: nope"):
        quantize(tiny / "tiny.onnx", tmp_path / "q2.onnx", quantization_config("int8-dynamic", exclude=["nope"]))


# ------------------------------------------------------------------ CLI

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgepack.cli", *map(str, args)], capture_output=True, text=True, check=False)


def test_cli_quantize_writes_the_model_and_reports(tiny, tmp_path):
    result = _cli("quantize", tiny / "tiny.onnx", "-o", tmp_path / "q.onnx", "--mode", "int8", "--calib", tiny / "calib.npz",
                  "--calib-method", "percentile", "--eval", tiny / "eval.npz")
    assert result.returncode == 0, result.stderr
    assert "int8: weights" in result.stdout and "accuracy 1.0000 →" in result.stdout
    assert (tmp_path / "q.onnx").is_file()


@pytest.mark.parametrize("args, message, code", [
    (["--mode", "int8"], "error: int8 static quantization needs calibration data; pass --calib", 1),
    (["--mode", "int4", "--max-drop", "1%"], "error: --max-drop needs --eval data", 1),
    (["--mode", "int4", "--group-size", "288", "--eval", "EVAL", "--max-drop", "0%"], "error: int4 quantization loses too much", 4),
    (["--mode", "int8", "--calib", "missing.npz"], "error: calibration data 'missing.npz' does not exist", 1),
])
def test_cli_errors_are_one_line(tiny, tmp_path, args, message, code):
    args = [str(tiny / "eval.npz") if arg == "EVAL" else arg for arg in args]
    result = _cli("quantize", tiny / "tiny.onnx", "-o", tmp_path / "q.onnx", *args)
    assert result.returncode == code
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q.onnx").exists()


def test_build_dry_run_plans_the_quantize_stage(tiny, tmp_path):
    result = _cli("build", tiny / "tiny.onnx", "-o", tmp_path, "--quantize", "int8", "--calib", tiny / "calib.npz",
                  "--calib-method", "entropy", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "preflight → quantize → compile" in result.stdout
    assert "quantize:Int8Static(" in result.stdout.replace(" ", "") and "method='entropy'" in result.stdout
    refused = _cli("build", tiny / "tiny.onnx", "-o", tmp_path, "--calib", tiny / "calib.npz", "--dry-run")
    assert refused.returncode == 1 and refused.stderr.startswith("error: --calib and --auto only apply to quantization")
