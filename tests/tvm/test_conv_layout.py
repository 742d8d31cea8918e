"""Blocked NCHW[x]c convolutions (edgepack.compiler.conv_layout): which convolutions go blocked, weights packed at
build time, and bundles that match ONNX Runtime and the NCHW build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from models import ClippedConvs, MixedConvs, conv_model_onnx, mixed_convs_onnx

from edgepack.build import build
from edgepack.compiler.compile import CompileConfig, import_relax
from edgepack.runtime import loader

pytestmark = pytest.mark.tvm

RESNET = f"{Path(__file__).resolve().parents[2] / 'edgepack' / 'examples' / 'resnet.py'}:resnet_small"


def _layout(report: dict) -> dict:
    """A compile report's conv_layout without the per-convolution blocks."""
    return {key: report[key] for key in ("layout", "blocked_convs")}


def _ops(module) -> list[str]:
    return [binding.value.op.name for block in module["main"].body.blocks for binding in block.bindings
            if hasattr(binding.value, "op") and hasattr(binding.value.op, "name")]


def test_only_blockable_convolutions_go_blocked_and_weights_are_packed(tmp_path):
    model = mixed_convs_onnx(tmp_path)
    report: dict = {}
    module, params = import_relax(model, conv_block=8, layout_report=report)
    # down, same and both depthwise; the stem (3 in), the grouped conv and the head (10 out) stay NCHW
    assert _layout(report) == {"layout": "NCHW8c", "blocked_convs": 4}
    assert report["blocks"] == {"stem.weight": 0, "down.weight": 8, "same.weight": 8, "depthwise.weight": 8,
                                "depthwise_down.weight": 8, "grouped.weight": 0, "head.weight": 0}
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
    assert _layout(report["conv_layout"]) == {"layout": "NCHW8c", "blocked_convs": 19}  # every conv but the 3-channel stem
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


def test_clips_between_convolutions_stay_blocked(tmp_path):
    """ReLU6 (the importer's call_tir maximum/minimum), Hardswish and Hardsigmoid (R.clip) become R.maximum/R.minimum by
    a constant, which the layout pass keeps blocked: activations change layout only at the blocked region's edges."""
    report: dict = {}
    module, _ = import_relax(conv_model_onnx(tmp_path, ClippedConvs()), conv_block=8, layout_report=report)
    assert _layout(report) == {"layout": "NCHW8c", "blocked_convs": 5}  # all but the 3-channel stem and the 10-class head
    ops = _ops(module)
    assert ops.count("relax.layout_transform") == 2  # after the stem (one transform for both its uses), before the head
    assert "relax.clip" not in ops and ops.count("relax.maximum") == ops.count("relax.minimum") == 4


@pytest.mark.parametrize("opset", [10, 17])
def test_both_forms_of_the_importers_clip_become_maximum_and_minimum(tmp_path, opset):
    """Opset 10's Clip carries its bounds as attributes (immediates in the kernel), opset 11+ as inputs (guarded
    against NaN by the importer): both are recognised."""
    import onnx
    import torch
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from edgepack.compiler.clip_ops import rewrite_clips
    from edgepack.compiler.compile import embed_scalar_params

    path = tmp_path / "relu6.onnx"
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU6()).eval()
    torch.onnx.export(net, (torch.zeros(1, 8, 4, 4),), str(path), input_names=["x"], output_names=["y"], dynamo=False,
                      opset_version=opset)
    module, params = relax.frontend.detach_params(from_onnx(onnx.load(str(path)), keep_params_in_input=True))
    module, _ = embed_scalar_params(module, params["main"])
    assert _ops(module).count("relax.call_tir") == 2
    rewritten, count = rewrite_clips(module)
    ops = _ops(rewritten)
    assert count == 2 and "relax.call_tir" not in ops and ops.count("relax.maximum") == ops.count("relax.minimum") == 1
    x = np.random.default_rng(1).standard_normal((1, 8, 4, 4)).astype(np.float32) * 8
    weights = [p.numpy() for p in params["main"]]
    assert np.array_equal(_run(module, x, weights), _run(rewritten, x, weights))


def _run(module, x, weights):
    import tvm
    from tvm import relax

    target = tvm.target.Target({"kind": "llvm"})
    executable = relax.build(module, target=target, relax_pipeline=relax.get_default_pipeline(target))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(w) for w in weights]).numpy()


def test_clipped_model_builds_blocked_and_matches_onnxruntime(tmp_path):
    model = conv_model_onnx(tmp_path, ClippedConvs())
    manifest = build(str(model.path), "x86_64", tmp_path / "dist", compile=CompileConfig(tuning_database=str(tmp_path / "none"))
                     ).bundle.manifest
    report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert _layout(report["conv_layout"]) == {"layout": "NCHW8c", "blocked_convs": 5} and report["kernels"]["unscheduled"] == {}
    assert manifest["verification"]["passed"] and manifest["verification"]["max_abs_err"] < 1e-4


def test_a_model_without_convolutions_skips_the_layout_pass(tmp_path, edgepack_cli):
    """TVM's ConvertLayout died with SIGFPE on ONNX's DynamicQuantizeLinear body (no convolution in it): the pass
    is not run where nothing can block, and the build verifies (a subprocess, so a regression fails, not kills)."""
    import onnx
    from onnx.backend.test.case.node import collect_testcases

    case = next(c for c in collect_testcases("") if c.name == "test_dynamicquantizelinear_expanded")
    onnx.save(case.model, tmp_path / "dql.onnx")
    result = edgepack_cli("build", tmp_path / "dql.onnx", "--target", "x86_64", "-o", tmp_path / "dist")
    assert result.returncode == 0, result.stderr[-600:]
