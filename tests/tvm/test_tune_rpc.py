"""Tuning through a TVM RPC tracker: a real tracker and server on loopback measure the candidates."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.tvm.test_tune import EDGEPACK, _tiny_onnx

pytestmark = pytest.mark.tvm

KEY = "edgepack-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(port: int, key: str, timeout: float = 300) -> None:
    from tvm import rpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            summary = rpc.connect_tracker("127.0.0.1", port).summary()
            if any(key in str(info.get("key", "")) for info in summary["server_info"]):
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise TimeoutError("the RPC server did not register with the tracker")


@pytest.fixture
def rpc_tracker():
    """A tracker and one x86 RPC server (this machine as the 'device'), both on 127.0.0.1."""
    port = _free_port()
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                                "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    server_port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(server_port),
                               "--port-end", str(server_port + 1),
                               "--tracker", f"127.0.0.1:{port}", "--key", KEY], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_server(port, KEY)
        yield f"127.0.0.1:{port}"
    finally:
        for process in (server, tracker):  # the whole group: the server forks a worker per session
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def test_tune_through_rpc_tracker(tmp_path, rpc_tracker):
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    env = {**os.environ, "EDGEPACK_TUNING_DIR": str(tmp_path / "tuning")}
    tuned = subprocess.run([str(EDGEPACK), "tune", str(model), "--trials", "2", "--json",
                            "--rpc-tracker", rpc_tracker, "--rpc-key", KEY], env=env,
                           capture_output=True, text=True, timeout=600)
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    result = json.loads(tuned.stdout[tuned.stdout.index("{"):])
    assert result["config"]["measured_on"].startswith("rpc 127.0.0.1")
    report = result["report"]
    assert report["trials"] >= 1 and report["failed_trials"] == 0 and report["heuristic_records"] >= 1
    assert (tmp_path / "tuning" / "x86_64" / "database_tuning_record.json").stat().st_size > 0


def test_unreachable_tracker_is_one_line(tmp_path):
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    result = subprocess.run([str(EDGEPACK), "tune", str(model), "--trials", "2", "--rpc-tracker",
                             f"127.0.0.1:{_free_port()}", "--rpc-key", KEY], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "RPC tracker" in result.stderr
