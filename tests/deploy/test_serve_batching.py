"""Request batching in the Python server (runtime/edgepack_serve.py), over real HTTP: a bundle whose inputs and
outputs lead with a dynamic axis (x[N,4] -> y[N,3], N = 1..64) gathers concurrent /v1 and /v2 requests into one
model call; each answer equals the same request run alone; a bad request is refused alone; a static bundle and
`--batch-window-ms 0` keep one call per request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from deploy_helpers import tiny_onnx
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory) -> Path:
    from edgepack.build import build

    work = tmp_path_factory.mktemp("batching")
    bundle = build(str(tiny_onnx(work / "tiny.onnx", batch="N")), "x86_64", work / "dist", name="tiny", version="1.0.0").bundle.path
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["inputs"][0]["dims"] == ["N", None] and manifest["dim_ranges"] == {"N": [1, 64]}
    return bundle


class Served:
    """The bundle's own runtime/edgepack_serve.py on port 0, logging to a file."""

    def __init__(self, bundle: Path, log: Path, *args: str):
        self.log = log
        self.process = subprocess.Popen([sys.executable, str(bundle / "runtime" / "edgepack_serve.py"), "--port", "0",
                                         "--log", str(log), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={"PATH": "/usr/bin:/bin", "TVM_NUM_THREADS": "1"})
        line = self.process.stdout.readline()
        assert line.startswith("serving tiny 1.0.0 at "), (line, self.process.stderr.read() if not line else "")
        self.url = line.split()[-1]

    def post(self, path: str, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def metrics(self) -> dict:
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as response:
            text = response.read().decode()
        return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("model", "version")))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def records(self) -> list[dict]:
        return [r for r in map(json.loads, self.log.read_text().splitlines()) if "code" in r]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _requests(count: int) -> list[tuple[str, np.ndarray]]:
    """(route, x) pairs: /v1 and /v2, 1 to 3 rows each."""
    rng = np.random.default_rng(7)
    return [("v1" if i % 2 else "v2", rng.standard_normal((1 + i % 3, 4)).astype(np.float32)) for i in range(count)]


def _send(server: Served, route: str, x: np.ndarray) -> tuple[int, np.ndarray | str]:
    if route == "v1":
        code, answer = server.post("/v1/infer", {"inputs": {"x": x.tolist()}})
        return code, np.asarray(answer["outputs"]["y"], dtype=np.float32) if code == 200 else answer["error"]
    code, answer = server.post("/v2/models/tiny/infer", {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                                                     "data": x.ravel().tolist()}]})
    if code != 200:
        return code, answer["error"]
    out = answer["outputs"][0]
    return code, np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def _concurrently(server: Served, work: list[tuple[str, np.ndarray]], clients: int = 16) -> list:
    """Send every request from `clients` threads at once; answers in the order of `work`."""
    answers: list = [None] * len(work)
    start = threading.Barrier(clients)

    def client(k: int) -> None:
        start.wait()
        for index in range(k, len(work), clients):
            answers[index] = _send(server, *work[index])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_concurrent_requests_are_batched_and_each_answer_equals_its_single_run(dynamic_bundle, tmp_path):
    from edgepack.runtime import loader

    single = loader.load(dynamic_bundle)
    work = _requests(96)
    wrong = ("v1", np.zeros((2, 5), dtype=np.float32))  # 5 columns: this request alone is refused
    too_many = ("v2", np.zeros((65, 4), dtype=np.float32))  # beyond N's range 1..64
    work[10], work[50] = wrong, too_many
    server = Served(dynamic_bundle, tmp_path / "serve.jsonl", "--batch-window-ms", "20")
    try:
        answers = _concurrently(server, work)
        metrics = server.metrics()
    finally:
        server.stop()
    for index, ((route, x), (code, got)) in enumerate(zip(work, answers)):
        if index in (10, 50):
            assert code == 400, (index, got)
            assert "dim 1: expected 4, got 5" in got if index == 10 else "outside the bundle's range 1..64" in got
            continue
        assert code == 200, (index, got)
        np.testing.assert_allclose(got, single.run([x])[0], rtol=1e-6, atol=1e-6)  # the same request, run alone
    good = len(work) - 2
    assert metrics[("edgepack_requests_total", (("code", "200"),))] == good
    assert metrics[("edgepack_requests_total", (("code", "400"),))] == 2
    assert metrics[("edgepack_batch_requests_total", ())] == good  # refused requests never reach the batcher
    rows, calls = metrics[("edgepack_batch_rows_sum", ())], metrics[("edgepack_batch_rows_count", ())]
    assert rows == sum(x.shape[0] for i, (_, x) in enumerate(work) if i not in (10, 50))
    assert calls < good and rows / calls > 1.0, (rows, calls)  # batches were formed: more than one row per call
    assert metrics[("edgepack_batch_rows_bucket", (("le", "64"),))] == calls
    records = server.records()
    assert len(records) == len(work) and sum(r["code"] == 400 for r in records) == 2
    ok = [r for r in records if r["code"] == 200]
    assert all(r["batch_rows"] >= 1 and "model_ms" in r for r in ok) and max(r["batch_rows"] for r in ok) > 3


def test_window_zero_and_static_bundles_keep_one_call_per_request(dynamic_bundle, bundles, tmp_path):
    for bundle, args in ((dynamic_bundle, ("--batch-window-ms", "0")), (bundles["good1"], ())):
        server = Served(bundle, tmp_path / f"{bundle.parent.name}.jsonl", *args)
        try:
            shape = (1, 4) if bundle == bundles["good1"] else (2, 4)
            work = [("v1", np.full(shape, i, dtype=np.float32)) for i in range(32)]
            answers = _concurrently(server, work, clients=8)
            metrics = server.metrics()
        finally:
            server.stop()
        assert all(code == 200 and got.shape == (shape[0], 3) for code, got in answers), answers
        assert metrics[("edgepack_requests_total", (("code", "200"),))] == 32
        assert not [key for key in metrics if key[0].startswith("edgepack_batch")]
        assert not [r for r in server.records() if "batch_rows" in r]


def test_a_batch_window_out_of_range_is_refused_in_one_line(dynamic_bundle):
    ran = subprocess.run([sys.executable, str(dynamic_bundle / "runtime" / "edgepack_serve.py"), "--port", "0", "--batch-window-ms", "-1"],
                         capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert ran.returncode == 1 and ran.stderr.startswith("error: --batch-window-ms -1 is outside 0..1000;"), ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1
