"""The server's pieces without a model: running statistics, request decoding, the Prometheus text, the island's imports."""

from __future__ import annotations

import ast
import base64
import io
import math
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgepack.runtime import serve
from edgepack.runtime.bundle_format import TensorSpec

SPECS = [TensorSpec("x", "float32", (1, 4)), TensorSpec("ids", "int8", (2,))]


def test_running_stats_merge_batches_exactly():
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 2.0, size) for size in (1, 7, 100, 3)]
    stats = serve.RunningStats()
    for batch in batches:
        stats.add(batch)
    stats.add(np.array([np.nan, np.inf]))
    everything = np.concatenate(batches)
    assert (stats.count, stats.nonfinite) == (everything.size, 2)
    assert stats.mean == pytest.approx(everything.mean()) and stats.std == pytest.approx(everything.std())
    assert math.isnan(serve.RunningStats().std)


def test_decode_inputs_by_name_by_position_and_npy():
    buffer = io.BytesIO()
    np.save(buffer, np.array([1, -2], dtype=np.int8))
    by_name = serve.decode_inputs({"inputs": {"x": [[1, 2, 3, 4]], "ids": {"npy": base64.b64encode(buffer.getvalue()).decode()}}}, SPECS)
    assert by_name[0].dtype == np.float32 and by_name[1].tolist() == [1, -2]
    by_position = serve.decode_inputs({"inputs": [[[0.5, 1, 2, 3]], [3, 4]]}, SPECS)
    assert by_position[1].dtype == np.int8


@pytest.mark.parametrize("payload, words", [
    ([], "no \"inputs\""),
    ({"inputs": "x"}, "must be an object or a list"),
    ({"inputs": [[[1, 2, 3, 4]]]}, "expected 2 input(s)"),
    ({"inputs": {"x": [[1, 2, 3, 4]]}}, "missing: ids"),
    ({"inputs": [[[1, 2], [3]], [1, 2]]}, "ragged"),
    ({"inputs": [[[1, 2, 3, 4]], [0.5, 1]]}, "holds float64 values, the model takes int8"),
    ({"inputs": [[[1, 2, 3, 4]], [1000, 1]]}, "outside the int8 range"),
    ({"inputs": [[[1, 2, 3, 4]], {"npy": "AAAA", "extra": 1}]}, "must be {\"npy\""),
    ({"inputs": [[[1, 2, 3, 4]], {"npy": base64.b64encode(b"not npy").decode()}]}, "not base64 .npy data"),
])
def test_bad_requests_are_400_with_one_line(payload, words):
    with pytest.raises(serve.RequestError) as caught:
        serve.decode_inputs(payload, SPECS)
    assert caught.value.code == 400 and words in str(caught.value) and "\n" not in str(caught.value)


def test_metrics_text_parses_as_prometheus_and_escapes_labels():
    golden = {"x": serve.RunningStats()}
    golden["x"].add(np.array([0.0, 2.0]))
    metrics = serve.Metrics('m"odel\\', "1.0.0", "x86_64", golden, ["x"])
    metrics.observe(200, 0.002, [np.array([4.0, 6.0])])
    metrics.observe(400, 0.0001)
    families = {family.name: family for family in text_string_to_metric_families(metrics.render())}
    info = families["edgepack_model_info"].samples[0]
    assert info.labels["model"] == 'm"odel\\' and info.value == 1
    assert {s.labels["code"]: s.value for s in families["edgepack_requests"].samples} == {"200": 1, "400": 1}
    buckets = {s.labels["le"]: s.value for s in families["edgepack_request_latency_seconds"].samples if s.name.endswith("_bucket")}
    assert (buckets["0.0005"], buckets["0.0025"], buckets["+Inf"]) == (1, 2, 2)
    drift = families["edgepack_input_drift"].samples[0]
    assert drift.labels["input"] == "x" and drift.value == pytest.approx(4.0)  # |5 - 1| / 1


def test_serve_is_an_island():
    """Only the standard library, numpy, the loader and the token generator (as siblings or within the package)."""
    tree = ast.parse(Path(serve.__file__).read_text())
    allowed = {"__future__", "argparse", "base64", "binascii", "io", "json", "math", "os", "signal", "socket", "sys",
               "threading", "time", "datetime", "http", "pathlib", "typing", "numpy", "edgepack_loader", "edgepack_generate", "re", "urllib"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert {alias.name.split(".")[0] for alias in node.names} <= allowed
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 1 and [a.name for a in node.names] in (["loader"], ["generate"]) if node.level else node.module.split(".")[0] in allowed


def test_strict_json_in_and_out():
    assert serve.strict_list(np.array([[np.nan, np.inf], [-np.inf, 1.5]], dtype=np.float32)) == [["NaN", "Infinity"], ["-Infinity", 1.5]]
    assert serve.strict_list(np.array([1, 2], dtype=np.int8)) == [1, 2]
    for body, code_words in ((b"[" * 65 + b"]" * 65, "nested deeper"), (b"[" + b"1" * 41 + b"]", "digits"),
                             (b"[NaN]", "not JSON"), (b"[Infinity]", "not JSON"), (b"\xff", "not JSON")):
        with pytest.raises(serve.RequestError) as caught:
            serve.parse_json(body)
        assert caught.value.code == 400 and code_words in str(caught.value)
    assert serve.parse_json(b'{"s": "[[[[", "x": [[1e5, -2]]}') == {"s": "[[[[", "x": [[1e5, -2]]}


def test_feature_drift_psi_needs_a_real_baseline():
    rng = np.random.default_rng(3)
    golden = [rng.standard_normal((1, 3)) for _ in range(300)]
    drift = serve.FeatureDrift((1, 3), golden, baseline=True)
    for _ in range(300):
        sample = rng.standard_normal((1, 3))
        sample[0, 1] += 2.0
        drift.add(sample)
    assert drift.psi(1) > 1.0 and drift.psi(0) < 0.25 and drift.psi(2) < 0.25
    random_golden = serve.FeatureDrift((1, 3), golden, baseline=False)
    random_golden.add(np.full((1, 3), 9.0))
    assert math.isnan(random_golden.psi(0))
