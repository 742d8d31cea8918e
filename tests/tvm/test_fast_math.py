"""exp, erf, tanh, sigmoid, softmax and GELU legalize to polynomials (no libm call per element) and match ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tvm

TRANSCENDENTALS = ("T.exp(", "T.erf(", "T.tanh(", "T.sigmoid(")


def _activations_onnx(path: Path) -> Path:
    """softmax(x) + gelu(x) + sigmoid(x) + tanh(x) + erf(x) + exp(x / 8), x: 4x96 (one op each, opset 20)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    eighth = numpy_helper.from_array(np.array(0.125, np.float32), "eighth")
    nodes = [helper.make_node("Softmax", ["x"], ["s"], axis=-1), helper.make_node("Gelu", ["x"], ["g"]),
             helper.make_node("Sigmoid", ["x"], ["sg"]), helper.make_node("Tanh", ["x"], ["t"]),
             helper.make_node("Erf", ["x"], ["e"]), helper.make_node("Mul", ["x", "eighth"], ["x8"]),
             helper.make_node("Exp", ["x8"], ["ex"])]
    total = "s"
    for index, name in enumerate(("g", "sg", "t", "e", "ex")):
        out = "y" if index == 4 else f"sum{index}"
        nodes.append(helper.make_node("Add", [total, name], [out]))
        total = out
    graph = helper.make_graph(nodes, "activations", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 96])], [eighth])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


def test_transcendentals_lower_without_libm_calls(tmp_path):
    from edgepack.compiler.backends.cpu import lower_to_tir
    from edgepack.compiler.compile import import_relax
    from edgepack.frontends.preflight import preflight
    from edgepack.targets import load_target

    model, _ = preflight(_activations_onnx(tmp_path / "act.onnx"), {}, tmp_path)
    module, _ = import_relax(model)
    script = lower_to_tir(module, load_target("x86_64").tvm_target()).script()
    assert not [name for name in TRANSCENDENTALS if name in script]


def test_fast_forms_match_onnxruntime_over_a_wide_range(tmp_path):
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from edgepack.compiler.backends.cpu import lower_to_tir
    from edgepack.compiler.compile import import_relax
    from edgepack.frontends.preflight import preflight
    from edgepack.targets import load_target

    path = _activations_onnx(tmp_path / "act.onnx")
    model, _ = preflight(path, {}, tmp_path)
    module, params = import_relax(model)
    target = load_target("x86_64").tvm_target()
    x = np.linspace(-90.0, 90.0, 4 * 96, dtype=np.float32).reshape(4, 96)  # past exp's fp32 range at both ends
    x[1] = np.linspace(-6.0, 6.0, 96, dtype=np.float32)  # where erf and tanh bend
    with target:
        executable = relax.build(lower_to_tir(module, target), target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    ours = vm["main"](tvm.runtime.tensor(x), *params["main"]).numpy()
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, expected, rtol=2e-6, atol=2e-6)
