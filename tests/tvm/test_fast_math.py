"""exp, erf, tanh, sigmoid, softmax and GELU legalize to polynomials (no libm call per element) and match ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from tests.models import activations_onnx

pytestmark = pytest.mark.tvm

TRANSCENDENTALS = ("T.exp(", "T.erf(", "T.tanh(", "T.sigmoid(")


def test_transcendentals_lower_without_libm_calls(tmp_path):
    from edgepack.compiler.backends.cpu import lower_to_tir
    from edgepack.compiler.compile import import_relax
    from edgepack.frontends.preflight import preflight
    from edgepack.targets import load_target

    model, _ = preflight(activations_onnx(tmp_path / "act.onnx"), {}, tmp_path)
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

    path = activations_onnx(tmp_path / "act.onnx")
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
