"""`edgepack-run serve --batch-window-ms`: on a bundle with a dynamic batch axis, concurrent v1 and v2
requests from real HTTP clients (threads with their own keep-alive connections) are stacked into
fewer model calls of at most the range's largest size, and every answer equals the one the request
gets alone; a lone client's requests are not stacked; a static bundle and --batch-window-ms 0 do not batch.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from models import mlp_with_dynamic_batch

pytestmark = pytest.mark.tvm
MAX_ROWS = 8


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory, edgepack_cli) -> Path:
    work = tmp_path_factory.mktemp("batch")
    built = edgepack_cli("build", mlp_with_dynamic_batch(work / "mlp.onnx"), "-o", work / "out", "--input", "x:Bx30:float32",
                         "--dim", f"B=1..{MAX_ROWS}")
    assert built.returncode == 0, built.stderr
    return next((work / "out").glob("*/manifest.json")).parent


class Server:
    """`edgepack-run serve` on port 0; `connect()` opens a keep-alive connection."""

    def __init__(self, bundle: Path, *args: str):
        self.log = bundle.parent / f"serve-{time.monotonic_ns()}.jsonl"
        self.process = subprocess.Popen([str(bundle / "runtime" / "edgepack-run"), "serve", "--bundle", str(bundle), "--port", "0",
                                         "--log", str(self.log), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env={"PATH": "/usr/bin:/bin", "TVM_NUM_THREADS": "1"})
        line = self.process.stdout.readline()
        assert line.startswith("serving "), (line, self.process.stderr.read() if not line else "")
        self.host, port = line.split()[-1].removeprefix("http://").rsplit(":", 1)
        self.port = int(port)

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def metrics(self) -> str:
        connection = self.connect()
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        return text

    def rows_per_call(self) -> tuple[float, float, dict[str, float]]:
        """edgepack_batch_rows: model calls, rows, and the cumulative bucket counts by `le`."""
        text = self.metrics()
        samples = [line for line in text.splitlines() if line.startswith("edgepack_batch_rows")]
        value = {line.split("{")[0]: float(line.split()[-1]) for line in samples if "_bucket" not in line}
        buckets = {line.split('le="')[1].split('"')[0]: float(line.split()[-1]) for line in samples if "_bucket" in line}
        return value["edgepack_batch_rows_count"], value["edgepack_batch_rows_sum"], buckets

    def stop(self) -> None:
        self.process.terminate()
        assert self.process.wait(timeout=30) == 0


def ask(connection: http.client.HTTPConnection, name: str, x: np.ndarray, v1: bool) -> np.ndarray:
    """One inference request (v1 nested lists or v2 flat data); the answer as float32 of x's rows."""
    if v1:
        body = {"inputs": {"x": x.tolist()}}
        path = "/v1/infer"
    else:
        body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        path = f"/v2/models/{name}/infer"
    connection.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200, answer
    if v1:
        return np.array(answer["outputs"]["y"], dtype=np.float32)
    output = answer["outputs"][0]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def concurrently(server: Server, name: str, inputs: list[np.ndarray], clients: int = 12) -> list[np.ndarray]:
    answers: list[np.ndarray | None] = [None] * len(inputs)
    failures: list[BaseException] = []

    def client(first: int) -> None:
        connection = server.connect()
        try:
            for i in range(first, len(inputs), clients):
                answers[i] = ask(connection, name, inputs[i], v1=i % 2 == 1)
        except BaseException as error:  # noqa: BLE001 (reported by the test)
            failures.append(error)
        connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    return answers


def test_concurrent_requests_share_model_calls_and_get_their_own_rows(dynamic_bundle):
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((int(rng.integers(1, 4)), 30)).astype(np.float32) for _ in range(240)]
    server = Server(dynamic_bundle)
    try:
        alone = server.connect()
        single = [ask(alone, "mlp", x, v1=i % 2 == 1) for i, x in enumerate(inputs)]
        alone.close()
        calls_alone, rows_alone, _ = server.rows_per_call()
        assert (calls_alone, rows_alone) == (len(inputs), sum(len(x) for x in inputs))  # one client: one call each
        answers = concurrently(server, "mlp", inputs)
        calls, rows, buckets = server.rows_per_call()
    finally:
        server.stop()
    for x, one, batched in zip(inputs, single, answers):
        assert batched.shape == (len(x), 5)
        np.testing.assert_array_equal(batched, one)  # each row is computed alone in the stacked call too
    batched_calls, batched_rows = calls - calls_alone, rows - rows_alone
    assert batched_rows == sum(len(x) for x in inputs)
    assert batched_calls < 0.8 * len(inputs), (batched_calls, len(inputs))  # batches formed
    assert buckets[str(MAX_ROWS)] == buckets["+Inf"] == calls  # never more rows than the range allows
    assert buckets["1"] + buckets["2"] < buckets["+Inf"]  # some calls stacked 3 or more rows (requests hold 1..3)
    records = [json.loads(line) for line in server.log.read_text().splitlines()]
    assert (records[0]["batch_axis"], records[0]["batch_max_rows"], records[0]["batch_window_ms"]) == ("B", MAX_ROWS, 2)
    stacked = [r["batch_rows"] for r in records if r.get("route")][len(inputs):]  # the concurrent requests' lines
    assert len(stacked) == len(inputs) and max(stacked) <= MAX_ROWS and sum(rows > 3 for rows in stacked) > len(inputs) // 4


def test_window_zero_and_static_bundles_make_one_call_per_request(dynamic_bundle, bundles):
    rng = np.random.default_rng(8)
    inputs = [rng.standard_normal((2, 30)).astype(np.float32) for _ in range(60)]
    server = Server(dynamic_bundle, "--batch-window-ms", "0")
    try:
        concurrently(server, "mlp", inputs)
        assert "edgepack_batch_rows" not in server.metrics()
    finally:
        server.stop()
    assert "batch_" not in server.log.read_text()

    manifest = json.loads((bundles["good1"] / "manifest.json").read_text())  # static x[1,4]
    x = np.load(bundles["good1"] / manifest["golden"]["cases"][0]["inputs"][0])
    static = Server(bundles["good1"], "--batch-window-ms", "5")
    try:
        answers = concurrently(static, "tiny", [x] * 40, clients=8)
        assert "edgepack_batch_rows" not in static.metrics()
    finally:
        static.stop()
    assert all(np.array_equal(a, answers[0]) for a in answers) and "batch_" not in static.log.read_text()


def test_batch_window_must_be_a_number(dynamic_bundle):
    for value in ("-1", "soon", "inf"):
        result = subprocess.run([str(dynamic_bundle / "runtime" / "edgepack-run"), "serve", "--bundle", str(dynamic_bundle),
                                 "--batch-window-ms", value], capture_output=True, text=True, timeout=60)
        lines = result.stderr.splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --batch-window-ms takes a number >= 0")
