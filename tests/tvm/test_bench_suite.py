"""scripts/bench_suite.py --quick: the benchmark suite's CI mode runs from the checkout and checks every engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tvm

SUITE = Path(__file__).resolve().parents[2] / "scripts" / "bench_suite.py"


def test_quick_suite_times_every_engine_and_checks_outputs(tmp_path):
    result = subprocess.run([sys.executable, str(SUITE), "--quick", "--runs", "5", "--work", str(tmp_path / "work"),
                             "--json-out", str(tmp_path / "r.json"), "--markdown-out", str(tmp_path / "r.md")],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results["models"]) == {"mlp", "digits_cnn"}
    for model in results["models"].values():
        assert set(model["engines"]) == {"onnxruntime", "openvino", "torch", "edgepack-untuned"}
        for row in model["engines"].values():
            assert row["median_ms"] > 0 and row["max_abs_diff_vs_onnxruntime"] < 1e-3
    assert results["protocol"]["peak_gflops"] > 0 and "pause" in results["protocol"]["timed"]
    assert "| digits_cnn |" in (tmp_path / "r.md").read_text()


def test_unknown_model_in_time_budget_is_refused(tmp_path):
    result = subprocess.run([sys.executable, str(SUITE), "--tune-minutes", "nosuch=3"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "unknown model 'nosuch'" in result.stderr and "Traceback" not in result.stderr
