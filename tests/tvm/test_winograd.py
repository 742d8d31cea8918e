"""Winograd F(m x m, 3x3) for blocked 3x3 stride-1 convolutions (edgepack.compiler.winograd): which convolutions take
it, the epilogue fused after the output transform, and a bundle that matches ONNX Runtime and the direct build."""

from __future__ import annotations

import numpy as np
import pytest
from models import winograd_convs_onnx

from edgepack.build import build
from edgepack.compiler import winograd
from edgepack.compiler.backends.cpu import lower_to_tir
from edgepack.compiler.compile import CompileConfig, import_relax
from edgepack.runtime import loader
from edgepack.targets import load_target

pytestmark = pytest.mark.tvm


def test_only_blocked_3x3_stride_1_convolutions_run_winograd(tmp_path):
    model = winograd_convs_onnx(tmp_path)
    report: dict = {}
    module, params = import_relax(model, conv_block=8, layout_report=report)
    assert report["blocked_convs"] == 4 and report["winograd_convs"] == 3  # not the stride-2 one, the stem or the head
    weights = {var.name: tuple(int(d) for d in var.ty.shape) for var in module["main"].params[1:]}
    assert weights["same.weight"] == (6, 6, 4, 8, 8, 16) and weights["widen.weight"] == (6, 6, 8, 8, 8, 16)  # F(4,3): 8 lanes
    assert weights["small.weight"] == (6, 6, 8, 16, 8, 16)  # [alpha, alpha, K/z, C/x, x, z], z two vectors
    assert weights["down.weight"] == (16, 16, 3, 3, 8, 8)  # packed for the direct kernel
    lowered = lower_to_tir(module, load_target("x86_64").tvm_target())
    names = [gvar.name_hint for gvar in lowered.functions]
    assert any(name.startswith("fused_winograd_output") and "relu" in name for name in names)  # epilogue fused
    direct: dict = {}
    import_relax(model, conv_block=8, layout_report=direct, winograd=False)
    assert direct["winograd_convs"] == 0


def test_winograd_bundle_matches_onnxruntime_and_the_direct_build(tmp_path):
    model = winograd_convs_onnx(tmp_path)
    none = str(tmp_path / "none")
    fast = build(str(model.path), "x86_64", tmp_path / "winograd", compile=CompileConfig(tuning_database=none)).bundle
    direct = build(str(model.path), "x86_64", tmp_path / "direct", compile=CompileConfig(tuning_database=none, winograd=False)).bundle
    report = next(s for s in fast.manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert report["conv_layout"]["winograd_convs"] == 3 and report["kernels"]["unscheduled"] == {}
    assert fast.manifest["verification"]["passed"] and fast.manifest["verification"]["max_abs_err"] < 1e-4
    x = np.random.default_rng(0).standard_normal((1, 3, 26, 26)).astype(np.float32)
    np.testing.assert_allclose(loader.load(fast.path).run([x])[0], loader.load(direct.path).run([x])[0], atol=1e-5, rtol=1e-4)


def test_f2_tiles_match_onnxruntime(tmp_path, monkeypatch):
    """F(2,3), which the rule picks for small maps at 16 lanes only, forced on the x86_64 (8-lane) build."""
    monkeypatch.setattr(winograd, "tile_for", lambda *shape: 2)
    model = winograd_convs_onnx(tmp_path)
    manifest = build(str(model.path), "x86_64", tmp_path / "f2", compile=CompileConfig(tuning_database=str(tmp_path / "none"))
                     ).bundle.manifest
    report = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]
    assert report["conv_layout"]["winograd_convs"] == 3
    assert manifest["verification"]["passed"] and manifest["verification"]["max_abs_err"] < 1e-4
