"""One pipeline: commands stopped at different stages hand their stage records on through the ONNX file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from edgepack.pipeline import STAGES_KEY, read_stages


def test_quantize_then_build_lists_the_quantization_in_provenance(onnx_models, tmp_path, edgepack_cli):
    quantized = tmp_path / "q.onnx"
    result = edgepack_cli("quantize", onnx_models["mlp"], "-o", quantized, "--mode", "int8-dynamic")
    assert result.returncode == 0, result.stderr
    assert [record.stage for record in read_stages(quantized)] == ["preflight", "quantize"]

    env = {**os.environ, "EDGEPACK_PROGRESS": "auto"}  # stderr is a pipe here, as in CI
    edgepack = Path(sys.executable).parent / "edgepack"
    result = subprocess.run([str(edgepack), "build", str(quantized), "-o", str(tmp_path / "dist"), "--json"],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    # stderr is a pipe here: one plain line per stage with its time, then the total
    lines = [line for line in result.stderr.splitlines() if line.startswith("build: ")]
    assert [line.split(" done in ")[0] for line in lines[:-1]] == ["build: preflight", "build: compile", "build: package"]
    assert all(re.fullmatch(r"build: \w+ done in \d+\.\d s", line) for line in lines[:-1]), lines
    assert re.fullmatch(r"build: finished in \d+\.\d s", lines[-1]), lines
    stages = [stage["stage"] for stage in json.loads(result.stdout)["provenance"]["stages"]]
    assert stages[:4] == ["preflight", "quantize", "preflight", "compile"]
    quantize = json.loads(result.stdout)["provenance"]["stages"][1]
    assert quantize["config"]["mode"] == "int8-dynamic" and quantize["report"]["weights_bytes"] > 0


def test_models_without_records_start_with_preflight(onnx_models):
    import onnx

    assert STAGES_KEY not in {prop.key for prop in onnx.load(str(onnx_models["mlp"])).metadata_props}
    assert read_stages(onnx_models["mlp"]) == ()
