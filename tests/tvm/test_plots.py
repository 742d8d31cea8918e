"""Pictures next to the JSON: `bench --plot` and the quantization trade-off, drawn from real measurements."""

from __future__ import annotations

from plot_helpers import keep_picture

from edgepack.compression.quantize import quantization_config, quantize
from edgepack.measure.plots import tradeoff_plot


def test_bench_plot_draws_the_latency_distribution(mlp_bundle, tmp_path, edgepack_cli):
    picture = tmp_path / "bench-latency.png"
    result = edgepack_cli("bench", mlp_bundle, "--compare", "onnxruntime", "--runs", "40", "--warmup", "2", "--plot", picture)
    assert result.returncode == 0, result.stderr
    assert f"wrote {picture}" in result.stdout
    keep_picture(picture)


def test_bench_plot_is_refused_for_a_device(mlp_bundle, tmp_path, edgepack_cli):
    result = edgepack_cli("bench", mlp_bundle, "--device", tmp_path, "--plot", tmp_path / "x.png")
    assert result.returncode == 1 and result.stderr.startswith("error: --plot draws the calls timed on this machine")


def test_quantize_tradeoff_picture(onnx_models, tmp_path):
    rows = []
    for mode in ("int8-dynamic", "fp16", "int4"):
        report = quantize(onnx_models["small_cnn"], tmp_path / f"{mode}.onnx", quantization_config(mode)).report
        quality = report["quality"]
        metric = quality["metric"]
        if not rows:
            rows.append({"label": "fp32", "size_bytes": report["weights_bytes_fp32"], "quality": quality["before"].get(metric, 1.0),
                         "metric": metric})
        rows.append({"label": mode, "size_bytes": report["weights_bytes"], "quality": quality["after"][metric], "metric": metric})
    assert all(row["size_bytes"] < rows[0]["size_bytes"] for row in rows[1:])
    keep_picture(tradeoff_plot(rows, tmp_path / "quantize-tradeoff.png", title="small CNN: quantization modes"))
