"""How fast `edgepack-run serve` answers Open Inference Protocol v2 requests on the digits bundle.

    .venv/bin/python scripts/serve_bench.py [--out docs/serve_bench.json] [--requests 2000] [--clients 16]

Builds the digits example for x86_64, then measures, on this machine:
  1. `edgepack-run bench` (the model call alone): median ms;
  2. HTTP overhead: p50 of GET /v2/health/ready on the native server (one keep-alive client);
  3. v2 inference p50 with one keep-alive client, compared with (1) + (2) (target: within 1.2x);
     also the p50 of POSTing the same body to a path that does not exist (answered 404): the HTTP
     cost of a request with that body (http.client sends its headers and its body in two writes);
  4. 16 concurrent keep-alive clients sending --requests v2 requests in all: errors, p50/p99, throughput;
  5. resident memory (VmRSS) of the native server and of the Python server after the same load.
Writes the numbers as JSON. Ratios only: the machine may be shared.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def start(command: list[str]) -> tuple[subprocess.Popen, str, int]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={"PATH": "/usr/bin:/bin", "TVM_NUM_THREADS": "1"})
    url = process.stdout.readline().split()[-1]
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return process, host, int(port)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def timed(host: str, port: int, method: str, path: str, body: bytes | None, count: int) -> tuple[list[float], int]:
    connection = http.client.HTTPConnection(host, port, timeout=60)
    times, errors = [], 0
    headers = {"Content-Type": "application/json"} if body else {}
    for _ in range(count):
        start = time.perf_counter()
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        times.append((time.perf_counter() - start) * 1000.0)
        errors += response.status != (404 if path == "/none" else 200)
    connection.close()
    return times, errors


def concurrent(host: str, port: int, path: str, body: bytes, clients: int, requests: int) -> dict:
    results: list[tuple[list[float], int]] = []
    lock = threading.Lock()

    def client(count: int) -> None:
        try:
            outcome = timed(host, port, "POST", path, body, count)
        except OSError:
            outcome = ([], count)
        with lock:
            results.append(outcome)

    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    times = sorted(t for outcome in results for t in outcome[0])
    return {"clients": clients, "requests": requests, "answered": len(times), "errors": sum(o[1] for o in results),
            "p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * (len(times) - 1))], "throughput_per_s": len(times) / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "serve_bench.json")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--single", type=int, default=2000, help="sequential requests for the p50s")
    args = parser.parse_args()

    from edgepack.build import build

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    bundle = build(f"{ROOT / 'edgepack' / 'examples' / 'digits.py'}:digits_cnn", "x86_64", work).bundle.path
    manifest = json.loads((bundle / "manifest.json").read_text())
    case = manifest["golden"]["cases"][0]
    x = np.load(bundle / case["inputs"][0])
    name, spec = manifest["name"], manifest["inputs"][0]
    body = json.dumps({"inputs": [{"name": spec["name"], "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    path = f"/v2/models/{name}/infer"

    bench = subprocess.run([str(bundle / "runtime" / "edgepack-run"), "bench", "--runs", str(args.single), "--warmup", "50"],
                           capture_output=True, text=True, check=True, env={"TVM_NUM_THREADS": "1"})
    model_ms = json.loads(bench.stdout)["median_ms"]

    report: dict = {"bundle": f"digits x86_64 ({name})", "threads": 1, "model_median_ms": model_ms,
                    "load_average_end": None,
                    "machine": f"{os.cpu_count()} cores, shared with other jobs (load average {os.getloadavg()[0]:.1f} at start)"}
    for kind, command in (("native", [str(bundle / "runtime" / "edgepack-run"), "serve", "--port", "0"]),
                          ("python", [sys.executable, str(bundle / "runtime" / "edgepack_serve.py"), "--port", "0", "--log", "-"])):
        process, host, port = start(command)
        try:
            timed(host, port, "POST", path, body, 50)  # warm up
            ready, post, single, errors = [], [], [], 0
            for _ in range(10):  # interleaved blocks, so a change in the machine's load hits them alike
                ready += timed(host, port, "GET", "/v2/health/ready", None, args.single // 10)[0]
                post += timed(host, port, "POST", "/none", body, args.single // 10)[0]
                times, failed = timed(host, port, "POST", path, body, args.single // 10)
                single, errors = single + times, errors + failed
            load = concurrent(host, port, path, body, args.clients, args.requests)
            entry = {"http_overhead_p50_ms": statistics.median(ready), "post_same_body_404_p50_ms": statistics.median(post),
                     "v2_infer_p50_ms": statistics.median(single),
                     "single_client_errors": errors, "concurrent": load, "rss_kb_after_load": rss_kb(process.pid)}
            entry["v2_p50_over_bench_plus_http"] = entry["v2_infer_p50_ms"] / (model_ms + entry["http_overhead_p50_ms"])
            entry["v2_p50_over_bench_plus_post"] = entry["v2_infer_p50_ms"] / (model_ms + entry["post_same_body_404_p50_ms"])
            report[kind] = entry
        finally:
            process.terminate()
            process.wait(timeout=30)
    report["load_average_end"] = round(os.getloadavg()[0], 1)
    report["target_within_1_2x"] = report["native"]["v2_p50_over_bench_plus_http"] <= 1.2
    report["rss_native_over_python"] = report["native"]["rss_kb_after_load"] / report["python"]["rss_kb_after_load"]
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
