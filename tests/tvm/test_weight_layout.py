"""Weights transposed once at build time: Gemm(transB=1) imports without a per-call permute_dims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tvm


def _gemm_onnx(path: Path) -> Path:
    """y = relu(x @ W^T + b) with W stored as (out, in) and transB=1, as torch exports nn.Linear."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "weight", "bias"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["y"])],
        "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])], [weight, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_transposed_weight_is_stored_transposed(tmp_path):
    from edgepack.compiler.compile import import_relax
    from edgepack.frontends.preflight import preflight

    model, _ = preflight(_gemm_onnx(tmp_path / "gemm.onnx"), {}, tmp_path)
    module, params = import_relax(model)
    assert "permute_dims" not in module.script()
    assert [tuple(p.shape) for p in params["main"]] == [(32, 16), (16,)]


def test_pretransposed_build_matches_onnxruntime(tmp_path):
    from edgepack.build import build

    result = build(str(_gemm_onnx(tmp_path / "gemm.onnx")), "x86_64", tmp_path / "dist")
    assert result.bundle.manifest["verification"]["passed"]


def test_conv_weights_are_stored_output_channels_last(tmp_path):
    from edgepack.compiler.compile import import_relax
    from edgepack.frontends.preflight import preflight
    from tests.models import export_onnx, small_cnn

    model, _ = preflight(export_onnx(small_cnn(), tmp_path / "cnn.onnx"), {}, tmp_path)
    module, params = import_relax(model)
    assert 'kernel_layout="IHWO"' in module.script() and 'kernel_layout="OIHW"' not in module.script()
    assert tuple(params["main"][0].shape) == (3, 3, 3, 8)  # the stem's 8x3x3x3 OIHW weight as IHWO
