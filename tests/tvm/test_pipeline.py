"""One pipeline: commands stopped at different stages hand their stage records on through the ONNX file."""

from __future__ import annotations

import json

from edgepack.pipeline import STAGES_KEY, read_stages


def test_quantize_then_build_lists_the_quantization_in_provenance(onnx_models, tmp_path, edgepack_cli):
    quantized = tmp_path / "q.onnx"
    result = edgepack_cli("quantize", onnx_models["mlp"], "-o", quantized, "--mode", "int8-dynamic")
    assert result.returncode == 0, result.stderr
    assert [record.stage for record in read_stages(quantized)] == ["preflight", "quantize"]

    result = edgepack_cli("build", quantized, "-o", tmp_path / "dist", "--json")
    assert result.returncode == 0, result.stderr
    stages = [stage["stage"] for stage in json.loads(result.stdout)["provenance"]["stages"]]
    assert stages[:4] == ["preflight", "quantize", "preflight", "compile"]
    quantize = json.loads(result.stdout)["provenance"]["stages"][1]
    assert quantize["config"]["mode"] == "int8-dynamic" and quantize["report"]["weights_bytes"] > 0


def test_models_without_records_start_with_preflight(onnx_models):
    import onnx

    assert STAGES_KEY not in {prop.key for prop in onnx.load(str(onnx_models["mlp"])).metadata_props}
    assert read_stages(onnx_models["mlp"]) == ()
