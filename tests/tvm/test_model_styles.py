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


def save_graph(path: Path, nodes, inputs, outputs, opset: int = 17) -> Path:
    from onnx import helper, save

    graph = helper.make_graph(nodes, path.stem, inputs, outputs)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def test_scalar_inputs_and_outputs_build_and_verify(tmp_path):
    """0-d tensors stay 0-d through golden writing and both loaders (Clip's scalar bounds; Size's scalar output)."""
    from onnx import TensorProto, helper

    float_value = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    path = save_graph(tmp_path / "scalars.onnx",
                      [helper.make_node("Clip", ["x", "low", "high"], ["y"]), helper.make_node("Size", ["x"], ["n"])],
                      [float_value("x", [2, 3]), float_value("low", []), float_value("high", [])],
                      [float_value("y", [2, 3]), helper.make_tensor_value_info("n", TensorProto.INT64, [])])
    result = build(str(path), out_dir=tmp_path / "dist")
    manifest = read_manifest(result.bundle.path)
    assert [spec["shape"] for spec in manifest["inputs"]] == [[2, 3], [], []]
    assert [spec["shape"] for spec in manifest["outputs"]] == [[2, 3], []]
    assert np.load(result.bundle.path / manifest["golden"]["cases"][0]["inputs"][1]).shape == ()
    assert (manifest["golden"]["origin"], manifest["golden"]["reference"]) == ("random", "onnxruntime")
    from typer.testing import CliRunner

    from edgepack.cli.app import app

    shown = CliRunner().invoke(app, ["inspect", str(result.bundle.path)]).output
    assert "golden vectors: 3 case(s), random inputs (not real data: pass --golden-inputs), references from onnxruntime" in shown
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    y, n = load(result.bundle.path).run([x, np.float32(-1), np.float32(0.5)])
    assert n.shape == () and int(n) == 6
    np.testing.assert_allclose(y, np.clip(x, -1, 0.5))


def test_integer_types_build_and_verify(tmp_path):
    """int16 and unsigned 16/32/64-bit inputs and outputs through pre-flight, golden vectors and both loaders
    (pre-flight refused them on main)."""
    from onnx import TensorProto, helper

    dtypes = {"int16": TensorProto.INT16, "uint16": TensorProto.UINT16, "uint32": TensorProto.UINT32,
              "uint64": TensorProto.UINT64}
    value = lambda name, dtype: helper.make_tensor_value_info(name, dtypes[dtype], [4])  # noqa: E731
    path = save_graph(tmp_path / "integers.onnx",
                      [helper.make_node("Add", [f"a_{d}", f"b_{d}"], [f"c_{d}"]) for d in dtypes],
                      [value(f"{side}_{d}", d) for d in dtypes for side in "ab"], [value(f"c_{d}", d) for d in dtypes])
    result = build(str(path), out_dir=tmp_path / "dist")
    assert [spec["dtype"] for spec in read_manifest(result.bundle.path)["outputs"]] == list(dtypes)
    arrays = [array for d in dtypes for array in (np.arange(4, dtype=d), np.full(4, 3, dtype=d))]
    for got, a, b in zip(load(result.bundle.path).run(arrays), arrays[::2], arrays[1::2]):
        assert got.dtype == a.dtype
        np.testing.assert_array_equal(got, a + b)


def _shipped_case(name: str) -> tuple[Path, list[np.ndarray]]:
    """A file of onnx's backend test data (pytorch-converted) and its first data set's input and output."""
    import onnx.backend.test
    from onnx import TensorProto, numpy_helper

    directory = Path(onnx.backend.test.__file__).parent / "data" / "pytorch-converted" / name
    tensors = []
    for file in ("input_0.pb", "output_0.pb"):
        tensor = TensorProto()
        tensor.ParseFromString((directory / "test_data_set_0" / file).read_bytes())
        tensors.append(numpy_helper.to_array(tensor))
    return directory / "model.onnx", tensors


@pytest.mark.parametrize("name", ["test_ConstantPad2d", "test_PReLU_2d_multiparam", "test_Softsign"])
def test_opset_6_file_shipped_with_onnx_is_upgraded_and_matches_its_expected_output(tmp_path, name):
    """IR-3, opset-6 files from onnx's backend test data: ONNX Runtime cannot load them (refused on main);
    pre-flight upgrades them with onnx.version_converter and says so in the report. PReLU's per-channel slope of
    shape [C] meant the channel axis before opset 7 (the converter kept it, and TVM's compile asserted)."""
    path, (x, expected) = _shipped_case(name)
    result = build(str(path), out_dir=tmp_path / "dist", name="old")
    manifest = read_manifest(result.bundle.path)
    preflight = next(stage for stage in manifest["provenance"]["stages"] if stage["stage"] == "preflight")
    assert preflight["report"]["opset_upgraded_from"] == 6 and preflight["report"]["opset"] == 13
    np.testing.assert_allclose(load(result.bundle.path).run([x])[0], expected, atol=1e-6)
