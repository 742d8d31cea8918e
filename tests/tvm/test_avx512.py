"""The AVX-512 target (x86_64-v4): 16-lane schedules and NCHW16c convolutions, checked against ONNX Runtime where this
CPU has AVX-512; a bundle whose target needs CPU features this machine lacks is built but not run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from models import ClippedConvs, MixedWidths, conv_model_onnx

from edgepack.build import build
from edgepack.compiler.compile import CompileConfig, import_relax
from edgepack.compiler.conv_layout import Plan, choose_plan
from edgepack.errors import BundleError
from edgepack.runtime import loader
from edgepack.runtime.bundle_format import cpu_features

pytestmark = pytest.mark.tvm

RESNET = f"{Path(__file__).resolve().parents[2] / 'edgepack' / 'examples' / 'resnet.py'}:resnet_small"
AVX512 = "avx512f" in cpu_features()


def _layout(report: dict) -> dict:
    """A compile report's conv_layout without the per-convolution blocks."""
    return {key: report[key] for key in ("layout", "blocked_convs")}


def _compile_report(manifest: dict) -> dict:
    return next(s for s in manifest["provenance"]["stages"] if s["stage"] == "compile")["report"]


@pytest.mark.skipif(not AVX512, reason="this CPU has no AVX-512 (no avx512f in /proc/cpuinfo)")
def test_v4_bundle_runs_blocked_by_16_and_matches_onnxruntime(tmp_path):
    result = build(RESNET, "x86_64-v4", tmp_path / "v4", compile=CompileConfig(tuning_database=str(tmp_path / "none")))
    manifest = result.bundle.manifest
    report = _compile_report(manifest)
    assert _layout(report["conv_layout"]) == {"layout": "NCHW16c", "blocked_convs": 19} and report["kernels"]["unscheduled"] == {}
    assert manifest["requires"]["cpu_features"][:3] == ["avx2", "fma", "avx512f"]
    verification = manifest["verification"]
    assert verification["python_loader"]["ran"] and verification["native_loader"]["ran"]
    assert verification["passed"] and verification["max_abs_err"] < 1e-4


@pytest.mark.skipif(not AVX512, reason="this CPU has no AVX-512 (no avx512f in /proc/cpuinfo)")
def test_v4_clipped_model_matches_the_avx2_build(tmp_path):
    """Clips and depthwise convolutions at 16 lanes; NCHW convolutions (stem, head) with the 16-lane heuristic."""
    model = conv_model_onnx(tmp_path, ClippedConvs())
    config = CompileConfig(tuning_database=str(tmp_path / "none"))
    v4 = build(str(model.path), "x86_64-v4", tmp_path / "v4", compile=config)
    v3 = build(str(model.path), "x86_64", tmp_path / "v3", compile=config)
    assert _layout(_compile_report(v4.bundle.manifest)["conv_layout"]) == {"layout": "NCHW16c", "blocked_convs": 5}
    assert v4.bundle.manifest["verification"]["passed"]
    x = np.random.default_rng(6).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(loader.load(v4.bundle.path).run([x])[0], loader.load(v3.bundle.path).run([x])[0],
                               atol=1e-4, rtol=1e-4)


def test_v4_blocks_by_8_when_more_convolutions_block_than_by_16(tmp_path):
    """24- and 40-channel convolutions between 32- and 48-channel ones: at 16 only the stem's successor would block
    (the rest would stay NCHW with transforms around them), at 8 all six do, so the model takes 8 (ymm on AVX-512);
    the report gives each convolution's block by its weight. The AVX2 and NEON targets keep their one block."""
    model = conv_model_onnx(tmp_path, MixedWidths())
    report: dict = {}
    import_relax(model, conv_block=16, layout_report=report)
    assert report["layout"] == "NCHW8c" and report["blocked_convs"] == 6
    assert report["blocks"] == {"stem.weight": 0, "project.weight": 8, "expand.weight": 8, "depthwise.weight": 8,
                                "back.weight": 8, "widen.weight": 8, "depthwise40.weight": 8, "head.weight": 0}
    clipped: dict = {}
    import_relax(conv_model_onnx(tmp_path, ClippedConvs()), conv_block=16, layout_report=clipped)
    assert clipped["layout"] == "NCHW16c"  # a tie in blocked convolutions and transforms: the wider block
    # MobileNetV2's counts: 8 wins; EfficientNet-B0's (24 transforms for 58 convolutions at 8c) would not gain
    assert choose_plan([Plan(16, None, 47, 6), Plan(8, None, 51, 2)]).block == 8
    assert choose_plan([Plan(16, None, 48, 34), Plan(8, None, 58, 24)]).score <= 0
    for lanes in (8, 4):
        narrow: dict = {}
        import_relax(model, conv_block=lanes, layout_report=narrow)
        assert narrow["layout"] == f"NCHW{lanes}c" and narrow["blocked_convs"] == 6


@pytest.mark.skipif(not AVX512, reason="this CPU has no AVX-512 (no avx512f in /proc/cpuinfo)")
def test_v4_model_blocked_by_8_matches_onnxruntime_and_the_avx2_build(tmp_path):
    model = conv_model_onnx(tmp_path, MixedWidths())
    config = CompileConfig(tuning_database=str(tmp_path / "none"))
    v4 = build(str(model.path), "x86_64-v4", tmp_path / "v4", compile=config)
    v3 = build(str(model.path), "x86_64", tmp_path / "v3", compile=config)
    report = _compile_report(v4.bundle.manifest)
    assert _layout(report["conv_layout"]) == {"layout": "NCHW8c", "blocked_convs": 6} and report["kernels"]["unscheduled"] == {}
    verification = v4.bundle.manifest["verification"]
    assert verification["native_loader"]["ran"] and verification["passed"] and verification["max_abs_err"] < 1e-4
    x = np.random.default_rng(8).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(loader.load(v4.bundle.path).run([x])[0], loader.load(v3.bundle.path).run([x])[0],
                               atol=1e-4, rtol=1e-4)


def test_bundle_for_cpu_features_this_machine_lacks_is_built_but_not_run(tmp_path):
    """What an AVX-512 build does on a CI host without AVX-512, shown with a feature no CPU has: the build succeeds,
    neither loader runs it (reason given), and loading it is refused with one line instead of an illegal instruction."""
    target = tmp_path / "future.toml"
    text = (Path(__file__).resolve().parents[2] / "targets" / "x86_64.toml").read_text()
    target.write_text(text.replace('name = "x86_64"', 'name = "future-x86"')
                      .replace('cpu_features = ["avx2", "fma"]', 'cpu_features = ["avx2", "fma", "edgepack_test_feature"]'))
    model = conv_model_onnx(tmp_path, ClippedConvs())
    result = build(str(model.path), str(target), tmp_path / "dist", compile=CompileConfig(tuning_database=str(tmp_path / "none")))
    verification = result.bundle.manifest["verification"]
    assert verification["passed"] is None
    for engine in ("python_loader", "native_loader"):
        assert not verification[engine]["ran"]
        assert verification[engine]["reason"] == "this CPU lacks edgepack_test_feature, which target 'future-x86' requires"
    with pytest.raises(BundleError, match="this CPU lacks edgepack_test_feature"):
        loader.load(result.bundle.path)
