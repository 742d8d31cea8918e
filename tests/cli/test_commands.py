"""The commands through typer's CliRunner (in process): what they print and what they write."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgepack.cli.app import app
from edgepack.targets import load_target, target_names

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def test_targets_lists_every_shipped_target():
    result = invoke("targets")
    assert result.exit_code == 0
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 4}
    assert set(target_names()) <= set(rows)
    for name in target_names():
        assert load_target(name).arch in rows[name]
    assert "yes" in rows["x86_64"]  # g++ is installed here


def test_build_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    from models import write_factory_file

    factory = write_factory_file(tmp_path / "net.py", "mlp")
    out = tmp_path / ("a-long-directory-name-" * 6) / "dist"  # lines longer than the 120 columns of a pipe
    result = invoke("build", f"{factory}:mlp", "-o", out, "--archive", "--cases", "2", "--atol", "0.01", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["model", "target", "bundle", "stages", "export", "compile", "golden"]
    assert lines[0] == f"model:   {factory} (torch-factory)"
    assert lines[1] == "target:  x86_64 (x86-64 Linux, AVX2 + FMA (x86-64-v3)); compiler g++"
    assert lines[2] == f"bundle:  {out / 'mlp-2.3.4-x86_64'} (+ .tar.gz)"
    assert len(lines[2]) > 120
    assert lines[3] == "stages:  export → preflight → compile → package → verify"
    assert lines[6] == "golden:  2 random case(s); atol 0.01, rtol 0.001"
    assert not out.exists()


def test_dry_run_refusals_propagate_as_errors(tmp_path):
    from edgepack.errors import EdgepackError

    (tmp_path / "x.onnx").write_bytes(b"not read: the target is refused first")
    with pytest.raises(EdgepackError, match="unknown target 'nope'"):
        invoke("build", tmp_path / "x.onnx", "--target", "nope", "--dry-run")


@pytest.mark.tvm
def test_inspect_json_is_the_manifest(mlp_bundle):
    result = invoke("inspect", mlp_bundle, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads((mlp_bundle / "manifest.json").read_text())


@pytest.mark.tvm
def test_inspect_summary(mlp_bundle):
    result = invoke("inspect", mlp_bundle)
    assert result.exit_code == 0
    text = result.stdout
    assert f"mlp 0.1.0 for x86_64 (x86_64)  {mlp_bundle}" in text
    assert "verification: passed; 3 golden case(s), atol 0.0001, rtol 0.001" in text
    assert "python loader: passed" in text and "native loader: passed" in text
    assert "stages: preflight → compile" in text
    for rel in ("model.so", "params.bin", "runtime/edgepack-run"):
        assert rel in text


@pytest.mark.tvm
def test_verify_runs_both_loaders(two_build):
    result = invoke("verify", two_build.bundle.path)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "verification: passed; 3 golden case(s), atol 0.0001, rtol 0.001"
    assert lines[1].startswith("  python loader: passed, max abs err ")
    assert lines[2].startswith("  native loader: passed, max abs err ")


@pytest.mark.tvm
def test_run_writes_every_output(two_build, tmp_path):
    bundle = two_build.bundle.path
    inputs = [bundle / "golden/0/input_0.npy", bundle / "golden/0/input_1.npy"]
    result = invoke("run", bundle, "--input", inputs[0], "--input", inputs[1], "--output-dir", tmp_path / "outs")
    assert result.exit_code == 0
    for index in range(2):
        np.testing.assert_allclose(np.load(tmp_path / "outs" / f"output_{index}.npy"),
                                   np.load(bundle / f"golden/0/output_{index}.npy"), atol=1e-4, rtol=1e-3)
