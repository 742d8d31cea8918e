"""Quantized digits bundles: int8 keeps test accuracy within 1 point in the compiled bundle, weights stay
int8 / packed int4 / fp16 in params.bin, and both loaders pass the golden check in quantization steps."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits CNN exported once to ONNX, with calibration (train split) and evaluation (test split) data."""
    from edgepack.examples import digits
    from edgepack.frontends.export import ExportConfig, export_to_onnx, load_torch_model
    from edgepack.frontends.sources import parse_source

    directory = tmp_path_factory.mktemp("quantized-digits")
    model = load_torch_model(parse_source(f"{digits.__file__}:digits_cnn"), {})
    export_to_onnx(model, directory / "digits.onnx", ExportConfig())
    train_x, _, _, _ = digits.digits_split()
    np.savez(directory / "calib.npz", image=train_x[:256])
    digits.write_eval_data(directory / "eval.npz")
    return directory


def _build(digits, mode: str, **options):
    from edgepack.build import EvaluationConfig, build
    from edgepack.compression.quantize import QualityGate, quantization_config

    gate = QualityGate(digits / "eval.npz", max_drop=0.01)
    config = quantization_config(mode, calibration=str(digits / "calib.npz") if mode == "int8" else None, gate=gate)
    return build(str(digits / "digits.onnx"), "x86_64", digits / "dist", name=f"digits-{mode}", onnx_passes=(config,),
                 evaluation=EvaluationConfig(digits / "eval.npz", max_drop=0.01), **options)


def _params(bundle) -> tuple[int, set[str]]:
    """Size of the bundle's params file (params.bin, or params.sparse) and the dtypes of the weights it holds."""
    import tvm

    from edgepack.runtime.bundle_format import decode_params

    entry = bundle.manifest["params"]
    data = (bundle.path / entry["file"]).read_bytes()
    return len(data), {str(value.dtype) for value in tvm.runtime.load_param_dict(decode_params(data, entry)).values()}


def test_int8_digits_bundle_loses_at_most_one_point_and_keeps_int8_weights(digits):
    result = _build(digits, "int8")
    manifest = result.bundle.manifest
    quality = manifest["quality"]
    assert quality["metric"] == "accuracy" and quality["passed"]
    assert quality["before"]["accuracy"] - quality["after"]["accuracy"] <= 0.01
    assert quality["after"]["accuracy"] > 0.95
    stage = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "quantize")
    assert stage["config"]["mode"] == "int8" and stage["report"]["quality"]["passed"]
    size, dtypes = _params(result.bundle)
    assert "int8" in dtypes
    assert size < 0.45 * stage["report"]["weights_bytes_fp32"]  # int8 weights, not folded back to fp32
    verification = manifest["verification"]
    assert verification["python_loader"]["passed"] and verification["native_loader"]["passed"]
    assert manifest["golden"]["atol"] > 1e-4  # atol + one output quantization step


@pytest.mark.parametrize("mode, dtype, ratio", [("int4", "uint8", 0.35), ("fp16", "float16", 0.6)])
def test_int4_and_fp16_digits_bundles(digits, mode, dtype, ratio):
    result = _build(digits, mode)
    manifest = result.bundle.manifest
    assert manifest["verification"]["passed"] and manifest["quality"]["passed"]
    size, dtypes = _params(result.bundle)
    assert dtype in dtypes
    stage = next(s for s in manifest["provenance"]["stages"] if s["stage"] == "quantize")
    assert size < ratio * stage["report"]["weights_bytes_fp32"]


def test_cli_inspect_shows_the_quantization_line(digits, edgepack_cli):
    bundle = digits / "dist" / "digits-int8-0.1.0-x86_64"
    if not bundle.is_dir():
        pytest.skip("needs the int8 bundle of the test above")
    result = edgepack_cli("inspect", bundle)
    assert result.returncode == 0
    line = next(line for line in result.stdout.splitlines() if line.startswith("quantization:"))
    assert "int8: weights" in line and "params." in line and "accuracy" in line
