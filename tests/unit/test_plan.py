"""The build plan: resolved and checked before any work, printed by --dry-run. No TVM build here."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepack.build import plan_build
from edgepack.errors import EdgepackError
from edgepack.bundle.golden import GoldenConfig
from edgepack.runtime.bundle_format import TensorSpec
from edgepack.frontends.sources import FactorySource, OnnxSource, parse_source


def write_onnx(path: Path, version: str | None = None, model_version: int = 0) -> Path:
    """y = Relu(x), x[1,4], optionally declaring a version in metadata_props or model_version."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.model_version = model_version
    if version:
        helper.set_model_props(model, {"version": version})
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def relu(tmp_path) -> Path:
    return write_onnx(tmp_path / "relu.onnx")


def test_onnx_plan_resolves_everything(relu, tmp_path):
    out = tmp_path / "dist"
    plan = plan_build(str(relu), "x86_64", out, inputs=["x:1x4"])
    assert plan.source == OnnxSource(relu)
    assert plan.target.name == "x86_64"
    assert (plan.package.name, plan.package.version) == ("relu", "0.1.0")
    assert plan.package.out_dir == out
    assert plan.input_overrides == {"x": TensorSpec("x", "float32", (1, 4))}
    assert plan.export is None
    assert plan.stages == ["preflight", "compile", "package", "verify"]
    assert not out.exists(), "planning must not create anything"


def test_dry_run_lines(relu, tmp_path):
    plan = plan_build(str(relu), "x86_64", tmp_path / "dist", archive=True, golden=GoldenConfig(cases=2, atol=1e-3, rtol=0.0))
    assert plan.describe() == [
        f"model:   {relu} (onnx)",
        "target:  x86_64 (x86-64 Linux, AVX2 + FMA (x86-64-v3)); compiler g++",
        f"bundle:  {tmp_path / 'dist' / 'relu-0.1.0-x86_64'} (+ .tar.gz)",
        "stages:  preflight → compile → package → verify",
        "compile: " + str(plan.compile),
        "golden:  2 random case(s); atol 0.001, rtol 0.0",
    ]


def test_factory_plan_adds_the_export_stage(tmp_path):
    factory = tmp_path / "net.py"
    factory.write_text("__version__ = '4.5.6'\ndef make():\n    raise RuntimeError('not called while planning')\n")
    plan = plan_build(f"{factory}:make", "x86_64", tmp_path / "dist")
    assert plan.source == FactorySource(factory, "make")
    assert (plan.package.name, plan.package.version) == ("make", "4.5.6")
    assert plan.stages == ["export", "preflight", "compile", "package", "verify"]
    assert plan.describe()[3] == "stages:  export → preflight → compile → package → verify"
    assert plan.describe()[4].startswith("export:  ExportConfig(")


@pytest.mark.parametrize("props, model_version, expected", [({"version": "3.1"}, 0, "3.1"), ({}, 7, "7"), ({}, 0, "0.1.0")])
def test_version_comes_from_the_onnx_file(tmp_path, props, model_version, expected):
    path = write_onnx(tmp_path / "m.onnx", props.get("version"), model_version)
    assert plan_build(str(path), "x86_64", tmp_path / "dist").package.version == expected
    assert plan_build(str(path), "x86_64", tmp_path / "dist", version="9.9").package.version == "9.9"


def test_existing_destination_is_refused_without_force(relu, tmp_path):
    bundle = tmp_path / "dist" / "relu-0.1.0-x86_64"
    bundle.mkdir(parents=True)
    with pytest.raises(EdgepackError) as info:
        plan_build(str(relu), "x86_64", tmp_path / "dist")
    assert info.value.problem == f"'{bundle}' already exists"
    assert "--force" in info.value.fix
    assert plan_build(str(relu), "x86_64", tmp_path / "dist", force=True).package.force


def test_existing_archive_is_refused_too(relu, tmp_path):
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "relu-0.1.0-x86_64.tar.gz").write_bytes(b"")
    with pytest.raises(EdgepackError, match=r"relu-0.1.0-x86_64.tar.gz' already exists"):
        plan_build(str(relu), "x86_64", tmp_path / "dist")


@pytest.mark.parametrize("options, message", [
    ({"name": "../up"}, "bundle name '../up' cannot be part of a directory name"),
    ({"name": ".hidden"}, "bundle name '.hidden' cannot be part of a directory name"),
    ({"version": "1/2"}, "bundle version '1/2' cannot be part of a directory name"),
    ({"golden_inputs": Path("/nonexistent/inputs.npz")}, "golden inputs file '/nonexistent/inputs.npz' does not exist"),
    ({"inputs": ["x"]}, "cannot read input spec 'x'"),
])
def test_bad_options_are_refused_before_work(relu, tmp_path, options, message):
    with pytest.raises(EdgepackError) as info:
        plan_build(str(relu), "x86_64", tmp_path / "dist", **options)
    assert info.value.problem == message
    assert not (tmp_path / "dist").exists()


def test_unknown_target_is_refused_before_the_model_is_read(tmp_path):
    with pytest.raises(EdgepackError, match="unknown target 'x86'"):
        plan_build(str(write_onnx(tmp_path / "m.onnx")), "x86", tmp_path / "dist")


@pytest.mark.parametrize("text, message", [
    ("missing.onnx", "model file 'missing.onnx' does not exist"),
    ("net.py", "'net.py' names a Python file but no factory"),
    ("net.py:not-a-name", "'not-a-name' is not a Python function name"),
    ("missing.py:make", "model file 'missing.py' does not exist"),
])
def test_model_argument_forms(text, message):
    with pytest.raises(EdgepackError) as info:
        parse_source(text)
    assert info.value.problem == message


def test_pruning_a_pt2_program_is_refused_before_work(tmp_path):
    import torch

    from edgepack.compression.prune.config import ChannelPrune

    program = torch.export.export(torch.nn.Sequential(torch.nn.Linear(4, 2)).eval(), (torch.zeros(1, 4),))
    torch.export.save(program, str(tmp_path / "net.pt2"))
    with pytest.raises(EdgepackError, match="does not keep"):
        plan_build(str(tmp_path / "net.pt2"), "x86_64", tmp_path / "dist", torch_passes=(ChannelPrune(),))
