"""`edgepack bench --compare`: ONNX Runtime, OpenVINO and PyTorch timed beside the bundle, outputs checked."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgepack.bench import BenchConfig, bench_bundle
from edgepack.cli.app import app

pytestmark = pytest.mark.tvm


def test_every_engine_is_timed_on_the_same_inputs_and_agrees(cnn_build):
    report = bench_bundle(cnn_build.bundle.path, BenchConfig(warmup=1, runs=5, threads=2,
                                                             compare=("onnxruntime", "openvino", "torch")))
    assert set(report["engines"]) == {"edgepack", "onnxruntime", "openvino", "torch"}
    for row in report["engines"].values():
        assert row["median_ms"] > 0 and row["max_abs_diff_vs_edgepack"] < 1e-4
    assert report["engines"]["openvino"]["vs_onnxruntime"] > 0


def test_cli_compares_with_openvino(cnn_build):
    result = CliRunner().invoke(app, ["bench", str(cnn_build.bundle.path), "--compare", "openvino", "--runs", "5",
                                      "--warmup", "1", "--threads", "1", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    engines = json.loads(result.stdout)["engines"]
    assert set(engines) == {"edgepack", "openvino"} and engines["openvino"]["max_abs_diff_vs_edgepack"] < 1e-4

