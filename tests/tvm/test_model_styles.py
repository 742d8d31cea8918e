"""ONNX files in the styles users bring them: weights listed among the graph inputs, scalar inputs and outputs,
integer types beyond the common ones. Each is built for real and verified through both loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.build import build
from edgepack.runtime.bundle_format import read_manifest
from edgepack.runtime.loader import load

pytestmark = pytest.mark.tvm


class ConvBnLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.linear = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        features = nn.functional.relu6(self.norm(self.conv(x))).mean((2, 3))
        return self.linear(features).reshape(2, 2)


def onnxruntime_run(path: Path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_weights_listed_as_graph_inputs_build_and_match(tmp_path):
    """The old exporters' default (`keep_initializers_as_inputs=True`): TVM orders those weights ahead of the
    others in `main`, which paired scalar bounds and transposed weights with the wrong values (exit 70 on main)."""
    torch.manual_seed(0)
    path = tmp_path / "listed.onnx"
    torch.onnx.export(ConvBnLinear().eval(), (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, opset_version=11,
                      keep_initializers_as_inputs=True, do_constant_folding=False, input_names=["x"])
    import onnx

    assert len(onnx.load(str(path)).graph.input) > 1  # the weights are listed
    result = build(str(path), out_dir=tmp_path / "dist")
    manifest = read_manifest(result.bundle.path)
    assert [spec["name"] for spec in manifest["inputs"]] == ["x"]
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = load(result.bundle.path).run([x])[0]
    np.testing.assert_allclose(got, onnxruntime_run(path, {"x": x})[0], atol=1e-4, rtol=1e-3)
    preflight = next(stage for stage in manifest["provenance"]["stages"] if stage["stage"] == "preflight")
    assert preflight["report"]["weights_listed_as_inputs"] == 8
