"""Both servers (runtime/edgepack_serve.py and `edgepack-run serve`) as an attacker or a full disk would
try them, and as real clients (curl, tritonclient) speak to them: keyring, log failures, limits,
strict JSON out, the Open Inference Protocol v2 routes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgepack.bundle.signing import generate_keypair

pytestmark = pytest.mark.tvm

PLANTED = """
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
  FILE* marker = fopen("%s", "w");
  if (marker) { fputs("planted code ran\\n", marker); fclose(marker); }
}
"""
SERVERS = ["python", "native"]


def _command(kind: str, bundle: Path, *args: str) -> list[str]:
    if kind == "python":
        return [sys.executable, str(bundle / "runtime" / "edgepack_serve.py"), "--port", "0", *args]
    return [str(bundle / "runtime" / "edgepack-run"), "serve", "--port", "0", *args]


class Served:
    """A server process started on port 0, its url; stopped by `stop()`."""

    def __init__(self, kind: str, bundle: Path, *args: str, env: dict | None = None):
        self.process = subprocess.Popen(_command(kind, bundle, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env={"PATH": "/usr/bin:/bin", "TVM_NUM_THREADS": "1", **(env or {})})
        line = self.process.stdout.readline()
        assert line.startswith("serving tiny 1.0.0 at http://127.0.0.1:"), (line, self.process.stderr.read() if not line else "")
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=30)


@pytest.fixture()
def serve(bundles):
    started: list[Served] = []

    def start(kind: str, *args: str, bundle: Path | None = None, env: dict | None = None) -> Served:
        server = Served(kind, bundle or bundles["good1"], *args, env=env)
        started.append(server)
        return server
    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=10)


def _request(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def _strict(body: bytes):
    def refuse(name):
        raise AssertionError(f"{name} is not JSON")
    return json.loads(body, parse_constant=refuse)


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _golden(bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    case = manifest["golden"]["cases"][0]
    return np.load(bundle / case["inputs"][0]), np.load(bundle / case["outputs"][0])


@pytest.mark.parametrize("kind", SERVERS)
def test_keyring_refuses_an_unsigned_bundle_before_its_library_runs(kind, bundles, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles["good1"], bundle, symlinks=True)
    marker = tmp_path / "marker"
    (tmp_path / "planted.c").write_text(PLANTED % marker)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(bundle / "model.so"), str(tmp_path / "planted.c")], check=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / "model.so").read_bytes()
    manifest["files"]["model.so"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    keys = generate_keypair(tmp_path / "trusted")
    env = {"PATH": "/usr/bin:/bin"}
    for args, extra in ((["--keyring", str(keys.public)], {}), ([], {"EDGEPACK_KEYRING": str(keys.public)})):
        result = subprocess.run(_command(kind, bundle, *args), capture_output=True, text=True, env={**env, **extra}, timeout=120)
        assert result.returncode == 3 and not result.stdout, (result.returncode, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "is not signed" in lines[0], result.stderr
        assert not marker.exists()
    # control: without a keyring the rewritten manifest is trusted and the planted constructor runs
    subprocess.run(_command(kind, bundle), capture_output=True, text=True, env=env, timeout=120)
    assert marker.exists()


@pytest.mark.parametrize("kind", SERVERS)
def test_answers_never_depend_on_the_log(kind, serve, bundles):
    x, y = _golden(bundles["good1"])
    server = serve(kind, "--log", "/dev/full")
    for _ in range(40):
        code, body, _ = _request(f"{server.url}/v1/infer", json.dumps({"inputs": {"x": x.tolist()}}).encode())
        assert code == 200
        np.testing.assert_allclose(np.array(_strict(body)["outputs"]["y"], dtype=np.float32), y, atol=1e-4, rtol=1e-3)
    code, body, _ = _request(f"{server.url}/metrics")
    failures = [line for line in body.decode().splitlines() if line.startswith("edgepack_log_write_failures_total")]
    assert len(failures) == 1 and float(failures[0].split()[-1]) >= 40
    assert [line for line in body.decode().splitlines() if line.startswith('edgepack_requests_total{') and 'code="200"' in line][0].endswith(" 40")
    code, body, _ = _request(f"{server.url}/healthz")
    health = _strict(body)
    assert code == 200 and health["status"] == "degraded" and "log write" in health["problems"][0]
    assert server.stop() == 0


@pytest.mark.parametrize("kind", SERVERS)
def test_limits_and_strict_json(kind, serve, bundles):
    x, _ = _golden(bundles["good1"])
    server = serve(kind, "--max-body-mb", "0.01", "--max-connections", "4", "--timeout", "3")
    url = f"{server.url}/v1/infer"
    big = json.dumps({"inputs": {"x": [[0.0] * 4] * 1000}}).encode()
    assert _request(url, big)[0] == 413
    assert b" 411 " in _raw(server.port, b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").split(b"\r\n")[0] + b" "
    for body, words in ((b"[" * 5000 + b"]" * 5000, "nested deeper"),
                        (b'{"inputs": {"x": [[' + b"9" * 5000 + b', 1, 2, 3]]}}', "digits"),
                        (b'{"inputs": {"x": [[NaN, 1, 2, 3]]}}', "not JSON"),
                        (b'{"inputs": {"x": [[0, 1, 2, 3]]}, "note": "ascii run \xff"}', "not JSON"),
                        (b'{"inputs": {"x": [[0, 1, 2, 3]]}, "note": "ascii run \xed\xa0\x80"}', "not JSON")):
        code, answer, _ = _request(url, body)
        assert code == 400 and words in _strict(answer)["error"], (code, answer[:200])
    nan = np.array([[np.nan, 1, 2, 3]], dtype=np.float32)
    code, answer, _ = _request(f"{server.url}/v2/models/tiny/infer", json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 1, 2, 3]}], "id": "näive ☃ 𝄞"},
        ensure_ascii=False).encode())
    assert code == 200 and _strict(answer)["id"] == "näive ☃ 𝄞"  # UTF-8 after runs of ASCII is read whole
    code, answer, _ = _request(f"{server.url}/v2/models/tiny/infer", json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1e39, 1, 2, 3]}]}).encode())
    assert code == 200 and set(_strict(answer)["outputs"][0]["data"]) <= {"Infinity", "-Infinity", "NaN"}, answer
    del nan

    # half-sent requests hold at most --max-connections; the next is told to retry; the timeout frees them
    time.sleep(1.0)  # the connections above have closed and given back their slots
    holders = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        holders.append(sock)
    time.sleep(0.3)
    refused = _raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in refused.lower(), refused
    time.sleep(4)
    for sock in holders:
        sock.settimeout(5)
        assert not sock.recv(65536).startswith(b"HTTP/1.1 503")  # held a slot: answered 408 or closed by the read timeout
        sock.close()
    assert _request(url, json.dumps({"inputs": {"x": x.tolist()}}).encode())[0] == 200
    assert server.stop() == 0


@pytest.mark.parametrize("kind", SERVERS)
def test_open_inference_protocol_v2_with_curl_and_tritonclient(kind, serve, bundles):
    import tritonclient.http as triton

    x, y = _golden(bundles["good1"])
    server = serve(kind)
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (scripts/test.sh installs it)")
    curl = subprocess.run(["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
                           json.dumps({"id": "r1", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}),
                           "-w", "\n%{http_code}", f"{server.url}/v2/models/tiny/infer"], capture_output=True, text=True, timeout=60)
    body, code = curl.stdout.rsplit("\n", 1)
    answer = _strict(body.encode())
    assert code == "200" and answer["model_name"] == "tiny" and answer["id"] == "r1"
    assert answer["outputs"][0]["name"] == "y" and answer["outputs"][0]["shape"] == [1, 3] and answer["outputs"][0]["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(1, 3), y, atol=1e-4, rtol=1e-3)
    curl = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{server.url}/v2/models/other/ready"],
                          capture_output=True, text=True, timeout=60)
    assert curl.stdout == "404"

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_server_live() and client.is_model_ready("tiny")
    metadata = client.get_model_metadata("tiny")
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 4]}] and metadata["versions"] == ["1.0.0"]
    for binary in (False, True):
        tensor = triton.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x.astype(np.float32), binary_data=binary)
        result = client.infer("tiny", [tensor], request_id=f"b{int(binary)}")
        np.testing.assert_allclose(result.as_numpy("y"), y, atol=1e-4, rtol=1e-3)
    wrong = triton.InferInput("x", [1, 4], "FP64")
    wrong.set_data_from_numpy(x.astype(np.float64), binary_data=False)
    with pytest.raises(triton.InferenceServerException, match="FP32"):
        client.infer("tiny", [wrong])
    client.close()
    assert server.stop() == 0


def test_the_containerfile_entrypoint_serves_the_bundle_it_is_built_from(bundles, tmp_path):
    """scripts/containers/serve.Containerfile's ENTRYPOINT, with /model pointing at a bundle and a free
    port, answers the v2 readiness and inference routes (no container engine is run here)."""
    text = (Path(__file__).resolve().parents[2] / "scripts" / "containers" / "serve.Containerfile").read_text()
    entrypoint = json.loads(next(line for line in text.splitlines() if line.startswith("ENTRYPOINT "))[len("ENTRYPOINT "):])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    command = [part.replace("/model", str(bundles["good1"])) if part.startswith("/model") else part for part in entrypoint]
    command[command.index("8080")] = port
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"})
    try:
        assert process.stdout.readline().startswith(f"serving tiny 1.0.0 at http://0.0.0.0:{port}")
        assert _request(f"http://127.0.0.1:{port}/v2/health/ready")[0] == 200
        assert _request(f"http://127.0.0.1:{port}/v2/models/tiny/ready")[0] == 200
        x, y = _golden(bundles["good1"])
        body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        status, answer, _ = _request(f"http://127.0.0.1:{port}/v2/models/tiny/infer", json.dumps(body).encode())
        assert status == 200
        assert np.allclose(np.array(_strict(answer)["outputs"][0]["data"], dtype=np.float32).reshape(y.shape), y, atol=1e-5)
    finally:
        process.terminate()
        process.wait(timeout=30)
