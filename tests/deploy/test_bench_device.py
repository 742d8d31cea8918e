"""`edgepack bench --device`: the native loader's bench on a local store and over a real sshd;
`--rpc-tracker/--rpc-key`: TVM's own tracker and an x86 rpc_server on loopback, started here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from edgepack.deploy import deploy
from edgepack.deploy.bench_device import DeviceBenchConfig, bench_on_device
from edgepack.errors import EdgepackError
from edgepack.deploy.rpc_bench import RpcBenchConfig, bench_rpc
from deploy_helpers import leftovers, model_dir

pytestmark = pytest.mark.tvm


def _check_numbers(report: dict, runs: int) -> None:
    results, protocol = report["results"], report["protocol"]
    assert 0 < results["min_ms"] <= results["median_ms"] <= results["p99_ms"]
    assert protocol["runs"] == runs and protocol["warmup"] == 2 and protocol["copies_timed"] is False
    assert protocol["where"] == "on the device" and protocol["inputs_from"] == "golden"


def test_bench_on_a_local_device_copies_or_uses_the_installed_version(bundles, device):
    fresh = bench_on_device(bundles["good1"], str(device), DeviceBenchConfig(warmup=2, runs=7, threads=1))
    _check_numbers(fresh, 7)
    assert fresh["copy"] == "temporary copy, removed after" and "/tiny/.staging-" in fresh["benchmarked"]
    assert fresh["protocol"]["threads"] == 1 and fresh["protocol"]["threads_source"] == "TVM_NUM_THREADS"
    assert leftovers(device) == [] and not list((model_dir(device) / "versions").iterdir())

    deploy(bundles["good1"], str(device))
    before = (model_dir(device) / "state.json").read_text()
    installed = bench_on_device(bundles["good1"], str(device), DeviceBenchConfig(warmup=2, runs=5))
    _check_numbers(installed, 5)
    assert installed["copy"] == "installed version" and installed["benchmarked"].endswith("/tiny/versions/1.0.0")
    assert installed["protocol"]["threads"] >= 1 and (model_dir(device) / "state.json").read_text() == before


def test_bench_over_ssh(bundles, device, remote):
    report = bench_on_device(bundles["good1"], remote, DeviceBenchConfig(warmup=2, runs=6, threads=2))
    _check_numbers(report, 6)
    assert report["device"] == remote and report["machine"] == "x86_64" and report["protocol"]["threads"] == 2
    assert leftovers(device) == []


@pytest.mark.cli
def test_cli_bench_device(bundles, device, cli):
    shown = cli("bench", bundles["good1"], "--device", device, "--runs", "5", "--warmup", "2", "--json")
    assert shown.returncode == 0, shown.stderr
    _check_numbers(json.loads(shown.stdout), 5)
    table = cli("bench", bundles["good1"], "--device", device, "--runs", "5", "--threads", "1")
    assert table.returncode == 0 and "measured on the device: 10 warm-up, 5 runs, threads 1 (TVM_NUM_THREADS)" in table.stdout
    for args, words in [(["--compare", "onnxruntime"], "--compare times engines on this machine"),
                        (["--rpc-key", "k"], "pick two different ways"), (["--input", __file__], "--input is not sent")]:
        refused = cli("bench", bundles["good1"], "--device", device, *args)
        assert refused.returncode == 1 and refused.stderr.startswith("error: ") and words in refused.stderr
        assert len(refused.stderr.splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rpc_tracker(tmp_path_factory):
    """TVM's tracker and an x86 rpc_server registered under key `x86-loopback`, both on 127.0.0.1."""
    from tvm import rpc

    logs = tmp_path_factory.mktemp("rpc")
    tracker_port, server_port = _free_port(), _free_port()
    processes = [
        subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(tracker_port),
                          "--port-end", str(tracker_port + 1)], stdout=open(logs / "tracker.log", "w"), stderr=subprocess.STDOUT,
                         start_new_session=True),
        subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{tracker_port}", "--key", "x86-loopback",
                          "--host", "127.0.0.1", "--port", str(server_port), "--port-end", str(server_port + 50)],
                         stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True),
    ]
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with socket.create_connection(("127.0.0.1", tracker_port), timeout=2):
                    pass
                if "x86-loopback" in rpc.connect_tracker("127.0.0.1", tracker_port).summary()["queue_info"]:
                    break
            except (OSError, RuntimeError):
                pass
            assert time.monotonic() < deadline, (logs / "tracker.log").read_text() + (logs / "server.log").read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{tracker_port}"
    finally:
        for process in processes:  # the server forks workers: end its whole process group
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.mark.cli
def test_bench_through_tvm_rpc(bundles, rpc_tracker, cli):
    shown = cli("bench", bundles["good1"], "--rpc-tracker", rpc_tracker, "--rpc-key", "x86-loopback", "--runs", "20", "--repeat", "4",
                "--warmup", "3", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    protocol = report["protocol"]
    assert (protocol["number"], protocol["repeat"], protocol["runs"], protocol["warmup"]) == (5, 4, 20, 3)
    assert protocol["where"] == "on the TVM RPC server" and protocol["copies_timed"] is False
    assert len(report["results"]["repeat_means_ms"]) == 4 and report["results"]["median_ms"] > 0
    assert report["golden_check"]["passed"] is True and report["device"] == f"rpc://{rpc_tracker}/x86-loopback"

    with pytest.raises(EdgepackError, match=r"no RPC server is registered under key 'arm' .*\(keys: x86-loopback\)"):
        bench_rpc(bundles["good1"], RpcBenchConfig(rpc_tracker, "arm"))
    with pytest.raises(EdgepackError, match="cannot reach the RPC tracker"):
        bench_rpc(bundles["good1"], RpcBenchConfig(f"127.0.0.1:{_free_port()}", "x86-loopback", connect_timeout_s=2))
    with pytest.raises(EdgepackError, match="is not HOST:PORT"):
        bench_rpc(bundles["good1"], RpcBenchConfig("nohost", "x86-loopback"))
