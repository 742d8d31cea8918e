"""Blocked NCHW[x]c convolutions (edgepack.compiler.conv_layout): which convolutions go blocked, weights packed at
build time, and bundles that match ONNX Runtime and the NCHW build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from models import MixedConvs, mixed_convs_onnx

from edgepack.build import build
from edgepack.compiler.compile import CompileConfig, import_relax
from edgepack.runtime import loader

pytestmark = pytest.mark.tvm

RESNET = f"{Path(__file__).resolve().parents[2] / 'edgepack' / 'examples' / 'resnet.py'}:resnet_small"


def _ops(module) -> list[str]:
    return [binding.value.op.name for block in module["main"].body.blocks for binding in block.bindings
            if hasattr(binding.value, "op") and hasattr(binding.value.op, "name")]


def test_only_blockable_convolutions_go_blocked_and_weights_are_packed(tmp_path):
    model = mixed_convs_onnx(tmp_path)
    report: dict = {}
    module, params = import_relax(model, conv_block=8, layout_report=report)
    # down, same and both depthwise; the stem (3 in), the grouped conv and the head (10 out) stay NCHW
    assert report == {"layout": "NCHW8c", "blocked_convs": 4}
    function = module["main"]
    weights = {var.name: tuple(int(d) for d in var.ty.shape) for var in function.params[1:]}
    assert weights["down.weight"] == (4, 2, 3, 3, 8, 8) and weights["same.weight"] == (4, 4, 3, 3, 8, 8)
    assert weights["depthwise.weight"] == (4, 1, 3, 3, 1, 8) and weights["depthwise_down.weight"] == (4, 1, 5, 5, 1, 8)
    assert weights["stem.weight"] == (3, 3, 3, 16)  # NCHW conv: IHWO as before (weight_layout)
    ops = _ops(module)
    assert ops.count("relax.layout_transform") == 2  # into the blocked region and out of it, nothing per weight
    assert ops.count("relax.nn.conv2d") == 3
    packed = dict(zip([v.name for v in function.params[1:]], params["main"]))
    original = MixedConvs().same.weight.detach().numpy()  # [O, I, KH, KW] → [O/8, I/8, KH, KW, 8i, 8o]
    expected = original.reshape(4, 8, 4, 8, 3, 3).transpose(0, 2, 4, 5, 3, 1)
    np.testing.assert_array_equal(packed["same.weight"].numpy(), expected)


def test_mixed_model_builds_blocked_and_matches_onnxruntime(tmp_path):
    model = mixed_convs_onnx(tmp_path)
    manifest = build(str(model.path), "x86_64", tmp_path / "dist", compile=CompileConfig(tuning_database=str(tmp_path / "none"))
                     ).bundle.manifest
    report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert report["conv_layout"]["blocked_convs"] == 4 and report["kernels"]["unscheduled"] == {}
    assert manifest["verification"]["passed"] and manifest["verification"]["max_abs_err"] < 1e-4


def test_blocked_bundle_matches_onnxruntime_and_the_nchw_build(tmp_path):
    blocked = build(RESNET, "x86_64", tmp_path / "blocked", compile=CompileConfig(tuning_database=str(tmp_path / "none")))
    plain = build(RESNET, "x86_64", tmp_path / "plain", compile=CompileConfig(tuning_database=str(tmp_path / "none"),
                                                                               blocked_convs=False))
    manifest = json.loads((blocked.bundle.path / "manifest.json").read_text())
    report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert report["conv_layout"] == {"layout": "NCHW8c", "blocked_convs": 19}  # every conv but the 3-channel stem
    assert report["kernels"]["unscheduled"] == {}
    assert manifest["verification"]["passed"] and manifest["verification"]["max_abs_err"] < 1e-4
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(loader.load(blocked.bundle.path).run([x])[0], loader.load(plain.bundle.path).run([x])[0],
                               atol=1e-4, rtol=1e-4)


def test_a_model_the_layout_pass_cannot_convert_stays_nchw(tmp_path):
    """ConvNeXt's channels-first LayerNorm (permute, normalise, permute back) breaks TVM's layout inference on a
    blocked tensor: the model keeps NCHW and says why, instead of failing the build."""
    import torch

    from edgepack.artifacts import OnnxModel
    from edgepack.examples.bench_models import ConvNeXtStyle
    from edgepack.runtime.bundle_format import TensorSpec

    path = tmp_path / "convnext.onnx"
    torch.onnx.export(ConvNeXtStyle(classes=10, depths=(1, 1), widths=(16, 32)).eval(), (torch.zeros(1, 3, 32, 32),), str(path),
                      input_names=["x"], output_names=["y"], dynamo=False)
    model = OnnxModel.at(path, [TensorSpec("x", "float32", (1, 3, 32, 32))], [TensorSpec("y", "float32", (1, 10))])
    report: dict = {}
    import_relax(model, conv_block=8, layout_report=report)
    assert report["layout"] == "NCHW" and report["blocked_convs"] == 0 and "layout conversion failed" in report["skipped"]
