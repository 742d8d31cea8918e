"""HTTP server for an edgepack bundle: POST /v1/infer, GET /healthz, GET /metrics, JSON-lines logs.

An island like the Python loader it builds on: it imports the standard library, numpy and the
loader only, and is copied into every bundle as `runtime/edgepack_serve.py`:

    python3 runtime/edgepack_serve.py [--host 127.0.0.1] [--port 8080] [--log FILE|-] [--verify]

Requests (docs/deployment.md, "Serving and monitoring"):

    POST /v1/infer  {"inputs": {"x": [[0.1, 0.2]]}}            nested lists, by input name
                    {"inputs": [[[0.1, 0.2]]]}                   or a list in signature order
                    {"inputs": {"x": {"npy": "<base64 .npy>"}}}  or base64 .npy bytes (exact dtype)
                    optional "output_format": "list" (default) or "npy"
    GET  /healthz   {"status": "ok", "model": ..., "version": ...}
    GET  /v1/model  name, version, target and I/O signature
    POST /v1/generate  language-model bundles: tokens as server-sent events (edgepack_generate.py)
    GET  /metrics   Prometheus text format: requests, errors, latency histogram, input drift

Every /v1/infer request is logged as one JSON line (time, model, version, status, code,
latency_ms). A bundle that sits in a device store (`<model>/versions/<version>/`) logs to
`<model>/logs/<version>.jsonl` and writes `<model>/logs/serve.json` (address, pid) by default.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Sequence

import numpy as np

try:
    from . import loader
except ImportError:  # inside a bundle: runtime/edgepack_loader.py sits beside this file
    sys.dont_write_bytecode = True  # no runtime/__pycache__/: a bundle holds exactly the files its manifest lists
    import edgepack_loader as loader  # type: ignore[no-redef]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STATUS_FILE = "serve.json"


class RequestError(Exception):
    """A request the server refuses: an HTTP status code and `problem; fix`."""

    def __init__(self, code: int, problem: str, fix: str):
        super().__init__(f"{problem}; {fix}")
        self.code, self.problem, self.fix = code, problem, fix


def utc_now() -> str:
    """ISO-8601 UTC time with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RunningStats:
    """Count, mean and standard deviation of every finite element seen (batches merged exactly)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2, self.nonfinite = 0, 0.0, 0.0, 0

    def add(self, array: np.ndarray) -> None:
        values = np.asarray(array, dtype=np.float64).ravel()
        finite = values[np.isfinite(values)]
        self.nonfinite += int(values.size - finite.size)
        if not finite.size:
            return
        n, mean = finite.size, float(finite.mean())
        m2 = float(((finite - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else math.nan


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value) if isinstance(value, float) else str(value)


class Metrics:
    """Request counts, errors, a latency histogram and per-input drift, rendered as Prometheus text."""

    def __init__(self, model: str, version: str, target: str, golden: dict[str, RunningStats], inputs: list[str]):
        self.labels = {"model": model, "version": version}
        self.target = target
        self.lock = threading.Lock()
        self.codes: dict[int, int] = {200: 0}
        self.buckets = [0] * len(LATENCY_BUCKETS_S)
        self.latency_sum, self.latency_count = 0.0, 0
        self.golden = golden
        self.inputs = {name: RunningStats() for name in inputs}
        self.started = time.time()

    def observe(self, code: int, seconds: float, arrays: Sequence[np.ndarray] | None = None) -> None:
        with self.lock:
            self.codes[code] = self.codes.get(code, 0) + 1
            self.latency_sum += seconds
            self.latency_count += 1
            for index, bound in enumerate(LATENCY_BUCKETS_S):
                if seconds <= bound:
                    self.buckets[index] += 1
            if arrays is not None:
                for stats, array in zip(self.inputs.values(), arrays):
                    stats.add(array)

    def _line(self, name: str, value: float, **extra: str) -> str:
        labels = ",".join(f'{key}="{_label(val)}"' for key, val in {**self.labels, **extra}.items())
        return f"{name}{{{labels}}} {_number(value)}"

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples])

        with self.lock:
            family("edgepack_model_info", "gauge", "The model this server runs (always 1).",
                   [self._line("edgepack_model_info", 1, target=self.target)])
            family("edgepack_start_time_seconds", "gauge", "Unix time the server started.",
                   [self._line("edgepack_start_time_seconds", float(self.started))])
            family("edgepack_requests_total", "counter", "POST /v1/infer requests answered, by HTTP status code.",
                   [self._line("edgepack_requests_total", count, code=str(code)) for code, count in sorted(self.codes.items())])
            errors = sum(count for code, count in self.codes.items() if code >= 400)
            family("edgepack_request_errors_total", "counter", "POST /v1/infer requests answered with an error (4xx or 5xx).",
                   [self._line("edgepack_request_errors_total", errors)])
            name = "edgepack_request_latency_seconds"
            samples = [self._line(f"{name}_bucket", count, le=_number(bound)) for bound, count in zip(LATENCY_BUCKETS_S, self.buckets)]
            samples += [self._line(f"{name}_bucket", self.latency_count, le="+Inf"),
                        self._line(f"{name}_sum", float(self.latency_sum)), self._line(f"{name}_count", self.latency_count)]
            family(name, "histogram", "Time to answer one POST /v1/infer request (decode, model call, encode).", samples)
            drift = {
                "edgepack_input_mean": ("Running mean of every finite element of an input since start.", lambda s, g: s.mean if s.count else math.nan),
                "edgepack_input_std": ("Running standard deviation of an input since start.", lambda s, g: s.std),
                "edgepack_input_golden_mean": ("Mean of the bundle's golden inputs.", lambda s, g: g.mean if g.count else math.nan),
                "edgepack_input_golden_std": ("Standard deviation of the bundle's golden inputs.", lambda s, g: g.std),
                "edgepack_input_drift": ("|running mean - golden mean| / golden std (input drift).", _drift),
            }
            for metric, (help_text, value) in drift.items():
                family(metric, "gauge", help_text,
                       [self._line(metric, float(value(stats, self.golden[input_name])), input=input_name)
                        for input_name, stats in self.inputs.items()])
            family("edgepack_input_values_total", "counter", "Finite input elements seen since start.",
                   [self._line("edgepack_input_values_total", stats.count, input=n) for n, stats in self.inputs.items()])
            family("edgepack_input_nonfinite_total", "counter", "NaN or infinite input elements seen since start.",
                   [self._line("edgepack_input_nonfinite_total", stats.nonfinite, input=n) for n, stats in self.inputs.items()])
        return "\n".join(lines) + "\n"


def _drift(stats: RunningStats, golden: RunningStats) -> float:
    if not stats.count or not golden.count:
        return math.nan
    scale = golden.std if golden.std > 0 else 1.0
    return abs(stats.mean - golden.mean) / scale


class JsonLog:
    """One JSON object per line, appended and flushed, to a file or stderr."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8", buffering=1) if path is not None else sys.stderr
        self._lock = threading.Lock()

    def write(self, **record) -> None:
        line = json.dumps({"time": utc_now(), **record}, sort_keys=False)
        with self._lock:
            self._handle.write(line + "\n")
            self._handle.flush()

    def close(self) -> None:
        if self.path is not None:
            self._handle.close()


def _decode_array(value, spec) -> np.ndarray:
    """One input from JSON: nested lists of numbers (cast to the input's dtype) or {"npy": base64}."""
    if isinstance(value, dict):
        if set(value) != {"npy"} or not isinstance(value["npy"], str):
            raise RequestError(400, f"input '{spec.name}' object must be {{\"npy\": \"<base64 .npy>\"}}", "send nested lists or base64 .npy bytes")
        try:
            return np.load(io.BytesIO(base64.b64decode(value["npy"], validate=True)), allow_pickle=False)
        except (binascii.Error, ValueError, OSError, EOFError) as exc:
            raise RequestError(400, f"input '{spec.name}' is not base64 .npy data ({loader.first_line(exc)})",
                               "send base64.b64encode of the bytes numpy.save writes") from None
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nesting
        raise RequestError(400, f"input '{spec.name}' is a ragged list", f"send a full array of shape {list(spec.shape)}") from None
    if array.dtype.kind not in "biuf":
        raise RequestError(400, f"input '{spec.name}' is not a nested list of numbers", f"send numbers of shape {list(spec.shape)}")
    target = np.dtype(spec.dtype)
    if not np.can_cast(array.dtype, target, casting="same_kind"):
        raise RequestError(400, f"input '{spec.name}' holds {array.dtype} values, the model takes {spec.dtype}",
                           f"send {spec.dtype} values")
    if target.kind in "iu" and array.size and array.dtype.kind in "iu":
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise RequestError(400, f"input '{spec.name}' has values outside the {spec.dtype} range", f"send values in [{info.min}, {info.max}]")
    return array.astype(target)


def decode_inputs(payload, specs) -> list[np.ndarray]:
    """The model's inputs, in signature order, from a parsed /v1/infer request body."""
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestError(400, "the request has no \"inputs\"", "send {\"inputs\": {\"<name>\": [[...]]}}")
    inputs, names = payload["inputs"], [spec.name for spec in specs]
    if isinstance(inputs, dict):
        unknown = sorted(set(inputs) - set(names))
        missing = [name for name in names if name not in inputs]
        if unknown or missing:
            raise RequestError(400, f"inputs must be exactly {', '.join(names)} (unknown: {', '.join(unknown) or 'none'}; "
                                    f"missing: {', '.join(missing) or 'none'})", "name every model input once")
        values = [inputs[name] for name in names]
    elif isinstance(inputs, list):
        if len(inputs) != len(specs):
            raise RequestError(400, f"expected {len(specs)} input(s) ({', '.join(names)}), got {len(inputs)}", "send one array per input, in signature order")
        values = inputs
    else:
        raise RequestError(400, "\"inputs\" must be an object or a list", "send {\"inputs\": {\"<name>\": [[...]]}}")
    return [_decode_array(value, spec) for value, spec in zip(values, specs)]


def encode_outputs(outputs: list[np.ndarray], specs, output_format: str) -> dict:
    if output_format == "list":
        return {spec.name: array.tolist() for spec, array in zip(specs, outputs)}
    buffers = {}
    for spec, array in zip(specs, outputs):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        buffers[spec.name] = {"npy": base64.b64encode(buffer.getvalue()).decode("ascii")}
    return buffers


class ServeApp:
    """The loaded bundle, its metrics and log; `infer` answers one request body."""

    def __init__(self, bundle, log: JsonLog, max_body_bytes: int = 64 << 20):
        self.bundle = bundle
        self.model, self.version = str(bundle.manifest["name"]), str(bundle.manifest["version"])
        self.log = log
        self.max_body_bytes = max_body_bytes
        self.model_lock = threading.Lock()  # one model call at a time: the VM is not shared between threads
        golden = {spec.name: RunningStats() for spec in bundle.inputs}
        for inputs, _ in bundle.golden_cases():
            for spec, array in zip(bundle.inputs, inputs):
                golden[spec.name].add(array)
        target = bundle.manifest.get("target", {}).get("name", "unknown")
        self.metrics = Metrics(self.model, self.version, target, golden, [spec.name for spec in bundle.inputs])

    def describe(self) -> dict:
        return {"model": self.model, "version": self.version, "target": self.bundle.manifest.get("target", {}).get("name"),
                **self.bundle.signature()}

    def infer(self, body: bytes) -> tuple[dict, float | None, list[np.ndarray]]:
        """Decode, run and encode one request; returns (response, model milliseconds, inputs)."""
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"the request body is not JSON ({exc})", "send a JSON object with \"inputs\"") from None
        output_format = payload.get("output_format", "list") if isinstance(payload, dict) else "list"
        if output_format not in ("list", "npy"):
            raise RequestError(400, f"unknown output_format '{output_format}'", "use list or npy")
        arrays = decode_inputs(payload, self.bundle.inputs)
        try:
            loader.check_inputs(self.bundle.inputs, arrays)
        except loader.BundleError as exc:
            raise RequestError(400, exc.problem, exc.fix) from None
        with self.model_lock:
            start = time.perf_counter()
            outputs = self.bundle.run(arrays)
            model_ms = (time.perf_counter() - start) * 1000.0
        response = {"model": self.model, "version": self.version, "model_ms": round(model_ms, 4),
                    "outputs": encode_outputs(outputs, self.bundle.outputs, output_format)}
        return response, model_ms, arrays


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgepack-serve"
    protocol_version = "HTTP/1.1"

    @property
    def app(self) -> ServeApp:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:  # the JSON log replaces http.server's lines
        pass

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, value: dict) -> None:
        self._send(code, json.dumps(value).encode("utf-8"), "application/json")

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self._path()
        if path == "/healthz":
            self._json(200, {"status": "ok", "model": self.app.model, "version": self.app.version})
        elif path == "/metrics":
            self._send(200, self.app.metrics.render().encode("utf-8"), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/v1/model":
            self._json(200, self.app.describe())
        elif path == "/v1/infer":
            self._json(405, {"error": "use POST for /v1/infer"})
        else:
            self._json(404, {"error": f"no such path '{path}'; use POST /v1/infer, GET /healthz, /metrics or /v1/model"})

    def do_POST(self) -> None:  # noqa: N802
        if self._path() == "/v1/generate" and "generator" in self.app.bundle.manifest:  # language models: SSE
            self._generate()
            return
        if self._path() != "/v1/infer":
            self._json(404, {"error": f"no such path '{self._path()}'; use POST /v1/infer"})
            return
        start = time.perf_counter()
        model_ms, arrays = None, None
        try:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                raise RequestError(411, "the request has no Content-Length", "send the body with a Content-Length header")
            if int(length) > self.app.max_body_bytes:
                self.close_connection = True
                raise RequestError(413, f"the request body has {length} bytes, more than {self.app.max_body_bytes}",
                                   "send fewer inputs per request, or start the server with a larger --max-body-mb")
            response, model_ms, arrays = self.app.infer(self.rfile.read(int(length)))
            code, error = 200, None
        except RequestError as exc:
            code, error, response = exc.code, f"{exc.problem}; {exc.fix}", None
        except Exception as exc:  # the model call failed: a server-side problem, one line
            code, error, response = 500, f"inference failed ({type(exc).__name__}: {loader.first_line(exc)})", None
        seconds = time.perf_counter() - start
        self.app.metrics.observe(code, seconds, arrays if code == 200 else None)
        record = {"model": self.app.model, "version": self.app.version, "status": "ok" if code == 200 else "error",
                  "code": code, "latency_ms": round(seconds * 1000.0, 4)}
        if model_ms is not None:
            record["model_ms"] = round(model_ms, 4)
        if error is not None:
            record["error"] = error
        self.app.log.write(**record)
        if response is not None:
            response["latency_ms"] = round(seconds * 1000.0, 4)
            self._json(200, response)
        else:
            self._json(code, {"error": error})


    def _generate(self) -> None:
        """POST /v1/generate: token streaming for language-model bundles (edgepack_generate.serve_generation)."""
        try:
            from . import generate
        except ImportError:  # inside a bundle: runtime/edgepack_generate.py beside this file
            import edgepack_generate as generate  # type: ignore[no-redef]
        generate.serve_generation(self, self.app.bundle, self.app.model_lock, self.app.max_body_bytes)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: ServeApp):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def store_files(bundle: Path, version: str) -> tuple[Path, Path] | None:
    """(log file, status file) when the bundle is a version in a device store, else None."""
    resolved = Path(bundle).resolve()
    model_dir = resolved.parent.parent
    if resolved.parent.name == "versions" and (model_dir / "state.json").is_file():
        return model_dir / "logs" / f"{version}.jsonl", model_dir / "logs" / STATUS_FILE
    return None


def _write_status(path: Path, status: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(json.dumps(status, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, path)


def _remove_status(path: Path) -> None:
    """Remove the status file if it still describes this process."""
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgepack_serve", description="Serve an edgepack bundle over HTTP.")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the one holding this file)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--log", default=None, help="JSON-lines log file, or - for stderr (default: <model>/logs/<version>.jsonl "
                                                    "in a device store, else stderr)")
    parser.add_argument("--status-file", type=Path, default=None, help="where to write the address and pid (default: "
                                                                       "<model>/logs/serve.json in a device store)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body accepted (MiB)")
    parser.add_argument("--verify", action="store_true", help="run the golden vectors before serving; refuse to start if they fail")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: load, bind, print `serving <model> <version> at <url>`, serve until SIGTERM/SIGINT."""
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    args = _parser().parse_args(argv)
    bundle_dir = args.bundle or Path(__file__).resolve().parent.parent
    try:
        bundle = loader.load(bundle_dir)
        if args.verify and not bundle.verify()["passed"]:
            raise loader.VerificationError("outputs differ from the golden vectors beyond tolerance", "do not serve this bundle; rebuild it")
        defaults = store_files(bundle_dir, str(bundle.manifest["version"]))
        log_path = None if args.log == "-" else Path(args.log) if args.log else (defaults[0] if defaults else None)
        status_path = args.status_file or (defaults[1] if defaults else None)
        app = ServeApp(bundle, JsonLog(log_path), int(args.max_body_mb * (1 << 20)))
        try:
            server = Server((args.host, args.port), app)
        except OSError as exc:
            raise loader.BundleError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})", "pass another --port or --host") from None
    except loader.BundleError as exc:
        print(f"error: {exc.problem}; {exc.fix}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"error: cannot open the log ({exc.strerror}: {exc.filename}); pass --log FILE or --log -", file=sys.stderr)
        return loader.EXIT_USER

    def stop(signum, frame) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    status = {"url": server.url, "pid": os.getpid(), "model": app.model, "version": app.version,
              "bundle": str(Path(bundle_dir).resolve()), "log": str(log_path) if log_path else None, "started": utc_now()}
    if status_path is not None:
        _write_status(status_path, status)
    app.log.write(model=app.model, version=app.version, status="started", url=server.url)
    print(f"serving {app.model} {app.version} at {server.url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.log.write(model=app.model, version=app.version, status="stopped")
        app.log.close()
        if status_path is not None:
            _remove_status(status_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
