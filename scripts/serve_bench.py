"""How fast `edgepack-run serve` answers Open Inference Protocol v2 requests on the digits bundle.

    .venv/bin/python scripts/serve_bench.py [--out docs/serve_bench.json] [--requests 2000] [--clients 16]

Builds the digits example for x86_64, then measures, on this machine:
  1. `edgepack-run bench` (the model call alone): median ms;
  2. HTTP overhead: p50 of GET /v2/health/ready on the native server (one keep-alive client);
  3. v2 inference p50 with one keep-alive client, compared with (1) + (2) (target: within 1.2x);
     also the p50 of POSTing the same body to a path that does not exist (answered 404): the HTTP
     cost of a request with that body (http.client sends its headers and its body in two writes);
     (2) and (3) are measured with two clients: Python's http.client, and a one-write client that sends
     each request's headers and body in one `send`, as curl does for small bodies (`--client`);
  4. 16 concurrent keep-alive clients sending --requests v2 requests in all: errors, p50/p99, throughput;
  5. resident memory (VmRSS) of the native server and of the Python server after the same load.
Writes the numbers as JSON. Ratios only: the machine may be shared.

    .venv/bin/python scripts/serve_bench.py --batching [--requests 2000] [--clients 16]

instead builds a dynamic-batch MLP (x[N,512], N = 1..64) and measures the Python server's throughput under
--clients concurrent clients with request batching off (--batch-window-ms 0) and on (2 ms), alternated twice,
every answer checked against the same request run alone; writes docs/serve_batch_bench.json.
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


class OneWriteConnection(http.client.HTTPConnection):
    """http.client, but a request's headers and body leave in one write (Python's sends them in two)."""

    def _send_output(self, message_body=None, encode_chunked=False):
        if not isinstance(message_body, bytes):
            return super()._send_output(message_body, encode_chunked)
        self._buffer.extend((b"", b""))
        message = b"\r\n".join(self._buffer) + message_body
        del self._buffer[:]
        self.send(message)


CLIENTS = {"http.client": http.client.HTTPConnection, "one-write": OneWriteConnection}


def timed(host: str, port: int, method: str, path: str, body: bytes | None, count: int, check=None,
          client: str = "http.client") -> tuple[list[float], int]:
    """Latencies (ms) of `count` requests on one keep-alive connection, and the errors (not 200, or `check(answer)` false)."""
    connection = CLIENTS[client](host, port, timeout=60)
    times, errors = [], 0
    headers = {"Content-Type": "application/json"} if body else {}
    for _ in range(count):
        start = time.perf_counter()
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
        times.append((time.perf_counter() - start) * 1000.0)
        errors += response.status != (404 if path == "/none" else 200) or (check is not None and not check(answer))
    connection.close()
    return times, errors


def concurrent(host: str, port: int, path: str, body: bytes | list[bytes], clients: int, requests: int, checks=None) -> dict:
    """`clients` keep-alive clients sending `requests` in all; client i sends body[i] (a list) checked by checks[i]."""
    results: list[tuple[list[float], int]] = []
    lock = threading.Lock()

    def client(index: int, count: int) -> None:
        mine = body[index % len(body)] if isinstance(body, list) else body
        check = checks[index % len(checks)] if checks else None
        try:
            outcome = timed(host, port, "POST", path, mine, count, check)
        except OSError:
            outcome = ([], count)
        with lock:
            results.append(outcome)

    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    threads = [threading.Thread(target=client, args=(i, share)) for i, share in enumerate(shares)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    times = sorted(t for outcome in results for t in outcome[0])
    return {"clients": clients, "requests": requests, "answered": len(times), "errors": sum(o[1] for o in results),
            "p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * (len(times) - 1))], "throughput_per_s": len(times) / seconds}


def dynamic_mlp(path: Path, sizes: tuple[int, ...] = (512, 2048, 2048, 10)) -> Path:
    """An ONNX MLP x[N,512] -> 2048 -> 2048 -> y[N,10] (ReLU between) whose batch axis N is dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, last = [], [], "x"
    for k, (m, n) in enumerate(zip(sizes, sizes[1:])):
        weights += [numpy_helper.from_array((rng.standard_normal((m, n)) / np.sqrt(m)).astype(np.float32), f"w{k}"),
                    numpy_helper.from_array(rng.standard_normal(n).astype(np.float32) * 0.1, f"b{k}")]
        nodes += [helper.make_node("MatMul", [last, f"w{k}"], [f"m{k}"]), helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"])]
        last = f"a{k}"
        if k < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [last], [f"r{k}"]))
            last = f"r{k}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def batch_metrics(host: str, port: int) -> tuple[float, float]:
    """(rows, model calls) of the Python server's batcher from its /metrics (0, 0 when batching is off)."""
    connection = http.client.HTTPConnection(host, port, timeout=60)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    found = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("edgepack_batch_rows_")}
    return found.get("edgepack_batch_rows_sum", 0.0), found.get("edgepack_batch_rows_count", 0.0)


def batching(args) -> dict:
    """The Python server on a dynamic-batch MLP, `--clients` clients (one row per request each): batching off
    (--batch-window-ms 0) against on (--batch-window-ms 2), alternated twice, every answer checked."""
    from edgepack.build import build
    from edgepack.runtime import loader

    work = Path(tempfile.mkdtemp(prefix="serve-batch-bench-"))
    bundle = build(str(dynamic_mlp(work / "mlp.onnx")), "x86_64", work / "dist").bundle.path
    manifest = json.loads((bundle / "manifest.json").read_text())
    name = manifest["name"]
    single = loader.load(bundle)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1, 512)).astype(np.float32) for _ in range(args.clients)]
    refs = [single.run([x])[0] for x in xs]
    bodies = [json.dumps({"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
              for x in xs]

    def checker(ref: np.ndarray):
        def check(answer: bytes) -> bool:
            out = json.loads(answer)["outputs"][0]
            return np.allclose(np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]), ref, rtol=1e-4, atol=1e-4)
        return check

    checks = [checker(ref) for ref in refs]
    bench = single.bench(warmup=20, runs=200, arrays=[np.concatenate(xs)])
    report: dict = {"bundle": f"MLP 512-2048-2048-10, x[N,512], N = 1..64 ({name})", "threads": 1, "clients": args.clients,
                    "requests_per_run": args.requests, "model_median_ms_at_16_rows_in_process_default_threads": bench["median_ms"],
                    "model_median_ms_at_1_row_in_process_default_threads": single.bench(warmup=20, runs=200, arrays=[xs[0]])["median_ms"],
                    "machine": f"{os.cpu_count()} cores, shared with other jobs (load average {os.getloadavg()[0]:.1f} at start)",
                    "runs": []}
    path = f"/v2/models/{name}/infer"
    for round_ in range(2):
        for window in ("0", "2"):
            process, host, port = start([sys.executable, str(bundle / "runtime" / "edgepack_serve.py"), "--port", "0", "--log", "-",
                                         "--batch-window-ms", window])
            try:
                timed(host, port, "POST", path, bodies[0], 20, checks[0])  # warm up
                before = batch_metrics(host, port)
                load = concurrent(host, port, path, bodies, args.clients, args.requests, checks)
                after = batch_metrics(host, port)
                calls = after[1] - before[1]
                load.update({"batch_window_ms": float(window), "round": round_, "load_average": os.getloadavg()[0],
                             "rows_per_call": (after[0] - before[0]) / calls if calls else 1.0})
                report["runs"].append(load)
            finally:
                process.terminate()
                process.wait(timeout=30)
    best = {window: max(r["throughput_per_s"] for r in report["runs"] if r["batch_window_ms"] == window) for window in (0.0, 2.0)}
    report["best_throughput_per_s"] = {"off": best[0.0], "on_2ms": best[2.0]}
    report["on_over_off"] = best[2.0] / best[0.0]
    report["errors"] = sum(r["errors"] for r in report["runs"])
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default docs/serve_bench.json (--batching: docs/serve_batch_bench.json)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--single", type=int, default=2000, help="sequential requests for the p50s")
    parser.add_argument("--batching", action="store_true", help="instead: the Python server's request batching off vs on")
    args = parser.parse_args()
    if args.batching:
        report = batching(args)
        (args.out or ROOT / "docs" / "serve_batch_bench.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return 0
    args.out = args.out or ROOT / "docs" / "serve_bench.json"

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
            entry = {}
            for client in CLIENTS:
                ready, post, single, errors = [], [], [], 0
                for _ in range(10):  # interleaved blocks, so a change in the machine's load hits them alike
                    ready += timed(host, port, "GET", "/v2/health/ready", None, args.single // 10, client=client)[0]
                    post += timed(host, port, "POST", "/none", body, args.single // 10, client=client)[0]
                    times, failed = timed(host, port, "POST", path, body, args.single // 10, client=client)
                    single, errors = single + times, errors + failed
                entry[client] = {"http_overhead_p50_ms": statistics.median(ready), "post_same_body_404_p50_ms": statistics.median(post),
                                 "v2_infer_p50_ms": statistics.median(single), "single_client_errors": errors}
                entry[client]["v2_p50_over_bench_plus_http"] = entry[client]["v2_infer_p50_ms"] / (model_ms + entry[client]["http_overhead_p50_ms"])
                entry[client]["v2_p50_over_bench_plus_post"] = (entry[client]["v2_infer_p50_ms"]
                                                                / (model_ms + entry[client]["post_same_body_404_p50_ms"]))
            entry["concurrent"] = concurrent(host, port, path, body, args.clients, args.requests)
            entry["rss_kb_after_load"] = rss_kb(process.pid)
            report[kind] = entry
        finally:
            process.terminate()
            process.wait(timeout=30)
    report["load_average_end"] = round(os.getloadavg()[0], 1)
    report["target_within_1_2x"] = {client: report["native"][client]["v2_p50_over_bench_plus_http"] <= 1.2 for client in CLIENTS}
    report["rss_native_over_python"] = report["native"]["rss_kb_after_load"] / report["python"]["rss_kb_after_load"]
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
