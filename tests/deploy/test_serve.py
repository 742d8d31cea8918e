"""The bundle's HTTP server over real HTTP: a deployed bundle's runtime/edgepack_serve.py runs in a
subprocess where edgepack, torch and onnx cannot be imported, on port 0; requests go through urllib;
/metrics is read with prometheus_client's parser; `edgepack monitor` reads it all back.
"""

from __future__ import annotations

import base64
import io
import json
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgepack.deploy import deploy
from edgepack.deploy.monitor import monitor
from deploy_sshd import SSHD

pytestmark = pytest.mark.tvm

BLOCKER = """\
import sys

class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("edgepack", "torch", "onnx", "onnxruntime", "onnxscript", "sklearn") or name.startswith("tvm.relax"):
            raise ImportError(f"{name} is blocked on this island")
        return None

sys.meta_path.insert(0, _Blocker())
"""


def _start(script: Path, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """Start the server, wait for its `serving ... at URL` line, return (process, url)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(blocker), "HOME": str(tmp_path), "TVM_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(script), "--port", "0", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            assert line.startswith("serving tiny 1.0.0 at http://127.0.0.1:"), (line, process.stderr.read() if not line else "")
            return process, line.split()[-1]
        assert process.poll() is None, process.stderr.read()
    process.kill()
    raise AssertionError("the server did not start within 180 s")


def _request(url: str, data: bytes | None = None, method: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _infer(url: str, payload) -> tuple[int, dict]:
    code, body = _request(f"{url}/v1/infer", json.dumps(payload).encode() if not isinstance(payload, bytes) else payload)
    return code, json.loads(body)


def _npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return base64.b64encode(buffer.getvalue()).decode()


def _metrics(url: str) -> dict:
    code, body = _request(f"{url}/metrics")
    assert code == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("model", "version")))
            samples[(sample.name, labels)] = sample.value
    return samples


@pytest.fixture()
def served(bundles, device, tmp_path):
    """good1 deployed to a local store, its server started from the store's `current` link."""
    deploy(bundles["good1"], str(device))
    process, url = _start(device / "tiny" / "current" / "runtime" / "edgepack_serve.py", tmp_path, "--max-body-mb", "0.01")
    yield process, url
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def test_infer_health_metrics_log_and_monitor(served, bundles, device, cli, request):
    process, url = served
    bundle = bundles["good1"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    x = np.load(bundle / manifest["golden"]["cases"][0]["inputs"][0])
    y = np.load(bundle / manifest["golden"]["cases"][0]["outputs"][0])

    code, body = _request(f"{url}/healthz")
    assert code == 200 and json.loads(body) == {"status": "ok", "model": "tiny", "version": "1.0.0"}
    code, body = _request(f"{url}/v1/model")
    assert code == 200 and json.loads(body)["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 4]}]

    code, answer = _infer(url, {"inputs": {"x": x.tolist()}})  # nested lists, by name
    assert code == 200 and (answer["model"], answer["version"]) == ("tiny", "1.0.0") and answer["latency_ms"] > 0
    np.testing.assert_allclose(np.array(answer["outputs"]["y"], dtype=np.float32), y, atol=1e-4, rtol=1e-3)
    code, answer = _infer(url, {"inputs": [{"npy": _npy(x)}], "output_format": "npy"})  # .npy in and out, by position
    assert code == 200
    got = np.load(io.BytesIO(base64.b64decode(answer["outputs"]["y"]["npy"])), allow_pickle=False)
    assert got.dtype == np.float32 and got.shape == (1, 3)
    np.testing.assert_allclose(got, y, atol=1e-4, rtol=1e-3)
    code, answer = _infer(url, {"inputs": [x.astype(int).tolist()]})  # integers are cast to float32
    assert code == 200

    refusals = [
        ({"inputs": {"x": [[1.0, 2.0, 3.0]]}}, 400, "input 'x' dim 1: expected 4, got 3"),
        ({"inputs": {"x": x.tolist(), "z": [1]}}, 400, "unknown: z"),
        ({"inputs": {"x": [["a", "b", "c", "d"]]}}, 400, "not a nested list of numbers"),
        ({"inputs": {"x": {"npy": _npy(x.astype(np.float64))}}}, 400, "dtype: expected float32, got float64"),
        ({"inputs": {"x": {"npy": "not base64!"}}}, 400, "not base64 .npy data"),
        ({"outputs": 1}, 400, "no \"inputs\""),
        (b"{not json", 400, "not JSON"),
        (json.dumps({"inputs": {"x": [[0.0] * 4] * 1000}}).encode(), 413, "more than"),
    ]
    for payload, expected, words in refusals:
        code, answer = _infer(url, payload)
        assert code == expected and words in answer["error"], (payload, answer)
    assert _request(f"{url}/v1/infer")[0] == 405
    assert _request(f"{url}/nope")[0] == 404
    assert _request(f"{url}/healthz")[0] == 200  # still serving after every refusal

    metrics = _metrics(url)
    errors = len(refusals)
    assert metrics[("edgepack_requests_total", (("code", "200"),))] == 3
    assert metrics[("edgepack_requests_total", (("code", "400"),))] == errors - 1
    assert metrics[("edgepack_requests_total", (("code", "413"),))] == 1
    assert metrics[("edgepack_request_errors_total", ())] == errors
    assert metrics[("edgepack_request_latency_seconds_count", ())] == 3 + errors
    assert metrics[("edgepack_request_latency_seconds_bucket", (("le", "+Inf"),))] == 3 + errors
    buckets = sorted((float(labels[0][1]), value) for (name, labels), value in metrics.items() if name.endswith("_bucket"))
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert metrics[("edgepack_model_info", (("target", "x86_64"),))] == 1
    seen = np.concatenate([x.ravel(), x.ravel(), x.astype(int).astype(np.float64).ravel()])
    golden = np.concatenate([np.load(bundle / case["inputs"][0]).ravel() for case in manifest["golden"]["cases"]]).astype(np.float64)
    assert metrics[("edgepack_input_mean", (("input", "x"),))] == pytest.approx(seen.mean())
    assert metrics[("edgepack_input_std", (("input", "x"),))] == pytest.approx(seen.std())
    assert metrics[("edgepack_input_golden_mean", (("input", "x"),))] == pytest.approx(golden.mean())
    assert metrics[("edgepack_input_golden_std", (("input", "x"),))] == pytest.approx(golden.std())
    assert metrics[("edgepack_input_drift", (("input", "x"),))] == pytest.approx(abs(seen.mean() - golden.mean()) / golden.std())
    assert metrics[("edgepack_input_values_total", (("input", "x"),))] == seen.size

    log_file = device / "tiny" / "logs" / "1.0.0.jsonl"  # the store's place for the active version's log
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert records[0]["status"] == "started" and records[0]["url"] == url
    requests = records[1:]
    assert [r["status"] for r in requests] == ["ok"] * 3 + ["error"] * errors
    for record in requests:
        assert {"time", "model", "version", "latency_ms", "status", "code"} <= set(record) and record["model"] == "tiny"
        assert record["version"] == "1.0.0" and record["latency_ms"] >= 0
    assert "dim 1: expected 4, got 3" in requests[3]["error"]
    status_file = json.loads((device / "tiny" / "logs" / "serve.json").read_text())
    assert (status_file["url"], status_file["pid"], status_file["version"]) == (url, process.pid, "1.0.0")

    report = monitor(str(device))
    assert report["metrics"]["requests"] == {"200": 3, "400": errors - 1, "413": 1} and report["metrics"]["errors"] == errors
    assert report["metrics"]["inputs"]["x"]["drift"] == pytest.approx(abs(seen.mean() - golden.mean()) / golden.std())
    assert [r["status"] for r in report["log"]][-2:] == ["error", "error"] and report["serve"]["pid"] == process.pid
    shown = cli("monitor", device, "--lines", "5")
    assert shown.returncode == 0, shown.stderr
    assert "requests: 3 ok, errors: 8" in shown.stdout and "(up)" in shown.stdout and "drift:    x:" in shown.stdout
    assert "last 5 lines" in shown.stdout
    if SSHD is not None:  # the same device reached over ssh: the scrape runs on the device
        over_ssh = monitor(request.getfixturevalue("remote"))
        assert over_ssh["metrics"]["requests"]["200"] == 3 and len(over_ssh["log"]) == 12

    process.terminate()
    assert process.wait(timeout=30) == 0
    assert not (device / "tiny" / "logs" / "serve.json").exists()
    assert json.loads(log_file.read_text().splitlines()[-1])["status"] == "stopped"
    after = monitor(str(device))
    assert after["serve"] is None and after["metrics"] is None and "no server is running" in after["metrics_error"]


def test_monitor_without_a_server_shows_the_log_only(bundles, device, cli):
    deploy(bundles["good1"], str(device))
    shown = cli("monitor", device)
    assert shown.returncode == 0, shown.stderr
    assert "no server is running" in shown.stdout and "1.0.0.jsonl (empty or absent)" in shown.stdout
    missing = cli("monitor", device.parent / "nothing-here")
    assert missing.returncode == 1 and missing.stderr.startswith("error: device store") and len(missing.stderr.splitlines()) == 1
