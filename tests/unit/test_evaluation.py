"""Quality measurement shared by the compression stages: data loading, metrics and the --max-drop gate."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.errors import EdgepackError, VerificationError
from edgepack.measure.evaluation import EvalData, compare_quality, load_eval_data, measure, parse_max_drop, predict, require_quality
from edgepack.runtime.bundle_format import TensorSpec

IMAGE = TensorSpec("image", "float32", (1, 1, 8, 8))


def test_eval_data_takes_samples_with_or_without_batch_axis(tmp_path):
    np.savez(tmp_path / "a.npz", image=np.zeros((5, 1, 8, 8), np.float32), labels=np.arange(5))
    np.savez(tmp_path / "b.npz", x=np.zeros((5, 1, 1, 8, 8), np.float64))
    a = load_eval_data(tmp_path / "a.npz", [IMAGE])
    b = load_eval_data(tmp_path / "b.npz", [IMAGE], limit=3)
    assert len(a) == 5 and a.labels.tolist() == [0, 1, 2, 3, 4]
    assert len(b) == 3 and b.labels is None and b.inputs[0].dtype == np.float32


@pytest.mark.parametrize("arrays, message", [
    ({"other": np.zeros((2, 1, 8, 8))}, "lacks arrays for input(s) image"),
    ({"image": np.zeros((2, 8, 8))}, "samples of shape"),
    ({"image": np.zeros((2, 1, 8, 8)), "labels": np.zeros(3)}, "2 samples but 3 labels"),
    ({"image": np.zeros((0, 1, 8, 8))}, "holds no samples"),
])
def test_bad_eval_data_is_one_line(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EdgepackError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_eval_data(tmp_path / "bad.npz", [IMAGE])


def test_not_an_npz_is_one_line(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EdgepackError, match="cannot read evaluation data"):
        load_eval_data(tmp_path / "junk.npz", [IMAGE])


def test_predict_batches_and_pads_the_last_batch():
    spec = TensorSpec("x", "float32", (4, 3))
    data = EvalData((np.arange(30, dtype=np.float32).reshape(10, 3),), None, "test")
    calls = []

    def run(arrays):
        calls.append(arrays[0].shape)
        return [arrays[0] * 2]

    (out,) = predict(run, [spec], data)
    assert calls == [(4, 3)] * 3 and out.shape == (10, 3)
    np.testing.assert_array_equal(out, np.arange(30).reshape(10, 3) * 2)


def test_metrics_and_gate():
    reference = np.eye(4, dtype=np.float32)
    labels = np.array([0, 1, 2, 0])
    same = measure(reference, labels, reference)
    assert same["accuracy"] == 0.75 and same["top1_agreement"] == 1.0 and same["cosine"] == pytest.approx(1.0)
    assert same["snr_db"] == float("inf")
    worse = reference[[0, 1, 3, 3]]
    comparison = compare_quality(reference, worse, labels, max_drop=0.2)
    assert comparison.metric == "accuracy" and comparison.drop == pytest.approx(0.25) and not comparison.passed
    with pytest.raises(VerificationError, match="loses too much: accuracy 0.7500 → 0.5000"):
        require_quality(comparison, "the model")
    unlabelled = compare_quality(reference, worse, None, max_drop=0.3)
    assert unlabelled.metric == "top1_agreement" and unlabelled.drop == pytest.approx(0.25) and unlabelled.passed


@pytest.mark.parametrize("text, value", [("1%", 0.01), ("0.5 %", 0.005), ("0.02", 0.02), ("0", 0.0)])
def test_parse_max_drop(text, value):
    assert parse_max_drop(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "150%", "-1%", "1"])
def test_parse_max_drop_refuses(text):
    with pytest.raises(EdgepackError):
        parse_max_drop(text)
