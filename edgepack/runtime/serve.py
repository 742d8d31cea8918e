"""HTTP server for an edgepack bundle: /v1/infer, Open Inference Protocol v2, /healthz, /metrics, JSON-lines logs.

An island like the Python loader it builds on: it imports the standard library, numpy and the
loader only, and is copied into every bundle as `runtime/edgepack_serve.py`:

    python3 runtime/edgepack_serve.py [--host 127.0.0.1] [--port 8080] [--log FILE|-] [--verify] [--keyring PUB]
                                      [--batch-window-ms 2]

Requests (docs/deployment.md, "Serving and monitoring"):

    POST /v1/infer  {"inputs": {"x": [[0.1, 0.2]]}}            nested lists, by input name
                    {"inputs": [[[0.1, 0.2]]]}                   or a list in signature order
                    {"inputs": {"x": {"npy": "<base64 .npy>"}}}  or base64 .npy bytes (exact dtype)
                    optional "output_format": "list" (default) or "npy"
    GET  /healthz   {"status": "ok", "model": ..., "version": ...}
    GET  /v1/model  name, version, target and I/O signature
    POST /v1/generate  language-model bundles: tokens as server-sent events (edgepack_generate.py)
    GET  /metrics   Prometheus text format: requests, errors, latency histogram, input drift, log failures
    POST /v2/models/<name>/infer, GET /v2/models/<name>, /v2/models/<name>/ready, /v2/health/ready|live:
                    the Open Inference Protocol v2 (KServe, Triton clients), JSON tensors or Triton's binary
                    tensor extension for inputs

Outputs are strict JSON: a NaN or infinite output element is sent as the string "NaN", "Infinity" or
"-Infinity". Limits: --max-body-mb (413), Content-Length required (411), --max-connections (503 with
Retry-After), --timeout seconds to read a request or wait on an idle connection, JSON nested deeper than
64 levels or with integers longer than 40 digits (400). With --keyring or $EDGEPACK_KEYRING an unsigned
or untrusted bundle is refused before its library is loaded, as by both loaders.

Bundles whose inputs and outputs all lead with one dynamic axis (a batch) have concurrent requests gathered
into one model call (`Batcher`): at most --batch-window-ms after the oldest waiting one, or until the axis's
upper bound in rows waits; each request is checked (400) before it joins a batch.

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
import re
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote

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
MAX_JSON_DEPTH = 64
DEFAULT_DRIFT_THRESHOLD = 0.25
MIN_DRIFT_SAMPLES = 20
MAX_FEATURES = 256
MAX_INT_DIGITS = 40
V2_DATATYPES = {"FP16": "float16", "FP32": "float32", "FP64": "float64", "INT8": "int8", "INT16": "int16",
                "INT32": "int32", "INT64": "int64", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
                "UINT64": "uint64", "BOOL": "bool"}
NUMPY_TO_V2 = {dtype: name for name, dtype in V2_DATATYPES.items()}
DEFAULT_BATCH_WINDOW_MS = 2.0


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


class FeatureDrift:
    """Population stability index (PSI) per feature of one input against the bundle's golden inputs.

    Computed exactly as `edgepack-run serve` does (edgepack/native/serve_drift.h): features are the
    elements of one sample (every axis after the first), or the channels of axis 1 when a sample has
    more than 256 elements; up to 10 bins cut at the baseline's deciles; PSI = sum (a - e) ln(a / e)
    with proportions floored at 1e-4, reported once a feature has seen 20 values. Without a baseline
    (golden inputs that are random, not real data) every PSI is NaN: "no baseline".
    """

    def __init__(self, shape: Sequence[int], golden: list[np.ndarray], baseline: bool):
        dims = [max(int(d), 1) for d in (shape[1:] if len(shape) >= 2 else shape)]
        self.per_sample = int(np.prod(dims)) if dims else 1
        self.features, self.inner = self.per_sample, 1
        if self.features > MAX_FEATURES and len(shape) >= 2:
            self.features = max(int(shape[1]), 1)
            self.inner = self.per_sample // self.features
        self.baseline = baseline
        values = [[] for _ in range(self.features)]
        for array in golden:
            flat = np.asarray(array, dtype=np.float64).ravel()
            features = self.feature_of(flat.size)
            for f in range(self.features):
                chosen = flat[features == f]
                values[f].append(chosen[np.isfinite(chosen)])
        self.edges, self.expected = [], []
        for f in range(self.features):
            v = np.sort(np.concatenate(values[f])) if values[f] else np.zeros(0)
            edges: list[float] = []
            for k in range(1, 10):
                if v.size:
                    edge = float(v[k * v.size // 10])
                    if edge > v[0] and (not edges or edge > edges[-1]):
                        edges.append(edge)
            self.edges.append(np.array(edges))
            bins = np.bincount(np.searchsorted(self.edges[f], v, side="right"), minlength=len(edges) + 1)
            self.expected.append(bins / v.size if v.size else bins.astype(np.float64))
        width = max(len(edges) for edges in self.edges)
        self.padded_edges = np.full((self.features, max(width, 1)), np.inf)
        for f, edges in enumerate(self.edges):
            self.padded_edges[f, :len(edges)] = edges
        self.bin_counts = np.zeros((self.features, max(width, 1) + 1), dtype=np.int64)

    def feature_of(self, size: int) -> np.ndarray:
        return (np.arange(size) % self.per_sample) // self.inner % self.features

    def add(self, array: np.ndarray) -> None:
        flat = np.asarray(array, dtype=np.float64).ravel()
        finite = np.isfinite(flat)
        features = self.feature_of(flat.size)[finite]
        values = flat[finite]
        bins = (values[:, None] >= self.padded_edges[features]).sum(axis=1)  # searchsorted "right", every feature at once
        np.add.at(self.bin_counts, (features, bins), 1)

    def psi(self, feature: int) -> float:
        counts = self.bin_counts[feature, :len(self.edges[feature]) + 1]
        total = int(counts.sum())
        if not self.baseline or total < MIN_DRIFT_SAMPLES or counts.size < 2:
            return math.nan
        actual = np.maximum(counts / total, 1e-4)
        expected = np.maximum(self.expected[feature], 1e-4)
        return float(((actual - expected) * np.log(actual / expected)).sum())


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


class Metrics:
    """Request counts, errors, a latency histogram and per-input drift, rendered as Prometheus text."""

    def __init__(self, model: str, version: str, target: str, golden: dict[str, RunningStats], inputs: list[str],
                 features: dict[str, FeatureDrift] | None = None, drift_threshold: float = DEFAULT_DRIFT_THRESHOLD):
        self.labels = {"model": model, "version": version}
        self.target = target
        self.lock = threading.Lock()
        self.codes: dict[int, int] = {200: 0}
        self.buckets = [0] * len(LATENCY_BUCKETS_S)
        self.latency_sum, self.latency_count = 0.0, 0
        self.golden = golden
        self.inputs = {name: RunningStats() for name in inputs}
        self.started = time.time()
        self.features = features or {}
        self.drift_threshold = drift_threshold
        self.log_failures = lambda: 0  # set by ServeApp to its log's failure count
        self.refused_connections = 0
        self.batching: tuple[str, int, float] | None = None  # (axis name, largest rows, window seconds) when on
        self.batch_calls, self.batch_requests, self.batch_rows_sum = 0, 0, 0
        self.batch_buckets: dict[int, int] = {}

    def observe_batch(self, requests: int, rows: int) -> None:
        """Count one model call of the batcher that answered `requests` requests with `rows` rows in all."""
        with self.lock:
            self.batch_calls += 1
            self.batch_requests += requests
            self.batch_rows_sum += rows
            self.batch_buckets[rows] = self.batch_buckets.get(rows, 0) + 1

    def observe(self, code: int, seconds: float, arrays: Sequence[np.ndarray] | None = None) -> None:
        with self.lock:
            self.codes[code] = self.codes.get(code, 0) + 1
            self.latency_sum += seconds
            self.latency_count += 1
            for index, bound in enumerate(LATENCY_BUCKETS_S):
                if seconds <= bound:
                    self.buckets[index] += 1
            if arrays is not None:
                for (name, stats), array in zip(self.inputs.items(), arrays):
                    stats.add(array)
                    if name in self.features:
                        self.features[name].add(array)

    def drifting(self) -> dict[str, list[int]]:
        """{input: [feature, ...]} whose PSI is above the threshold."""
        with self.lock:
            found = {name: [f for f in range(d.features) if d.psi(f) > self.drift_threshold] for name, d in self.features.items()}
        return {name: features for name, features in found.items() if features}

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
            family("edgepack_requests_total", "counter", "Inference requests (/v1 and /v2) answered, by HTTP status code.",
                   [self._line("edgepack_requests_total", count, code=str(code)) for code, count in sorted(self.codes.items())])
            errors = sum(count for code, count in self.codes.items() if code >= 400)
            family("edgepack_request_errors_total", "counter", "Inference requests answered with an error (4xx or 5xx).",
                   [self._line("edgepack_request_errors_total", errors)])
            family("edgepack_log_write_failures_total", "counter", "Log records that could not be written (the answer was sent).",
                   [self._line("edgepack_log_write_failures_total", self.log_failures())])
            family("edgepack_connections_refused_total", "counter", "Connections answered 503 because --max-connections were busy.",
                   [self._line("edgepack_connections_refused_total", self.refused_connections)])
            name = "edgepack_request_latency_seconds"
            samples = [self._line(f"{name}_bucket", count, le=_number(bound)) for bound, count in zip(LATENCY_BUCKETS_S, self.buckets)]
            samples += [self._line(f"{name}_bucket", self.latency_count, le="+Inf"),
                        self._line(f"{name}_sum", float(self.latency_sum)), self._line(f"{name}_count", self.latency_count)]
            family(name, "histogram", "Time to answer one inference request (decode, model call, encode).", samples)
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
            family("edgepack_input_drift_baseline", "gauge", "1 when the bundle's golden inputs are real data (golden.origin user) "
                   "and serve as the PSI baseline; 0: no baseline.",
                   [self._line("edgepack_input_drift_baseline", int(d.baseline), input=n) for n, d in self.features.items()])
            family("edgepack_input_psi", "gauge", "Population stability index of a feature against the golden inputs "
                   "(NaN: no baseline or too few values).",
                   [self._line("edgepack_input_psi", d.psi(f), input=n, feature=str(f)) for n, d in self.features.items() for f in range(d.features)])
            family("edgepack_drift_threshold", "gauge", "PSI above which a feature is reported as drifting.",
                   [self._line("edgepack_drift_threshold", float(self.drift_threshold))])
            if self.batching is not None:
                self._render_batching(family)
        return "\n".join(lines) + "\n"


    def _render_batching(self, family) -> None:
        axis, largest, window = self.batching
        family("edgepack_batch_window_seconds", "gauge", f"Longest wait to gather requests into one call along axis {axis}.",
               [self._line("edgepack_batch_window_seconds", float(window), axis=axis)])
        family("edgepack_batch_requests_total", "counter", "Inference requests answered by the batcher's model calls.",
               [self._line("edgepack_batch_requests_total", self.batch_requests)])
        name = "edgepack_batch_rows"
        bounds = sorted({min(1 << k, largest) for k in range(largest.bit_length() + 1)})
        samples = [self._line(f"{name}_bucket", sum(c for rows, c in self.batch_buckets.items() if rows <= bound), le=str(bound))
                   for bound in bounds]
        samples += [self._line(f"{name}_bucket", self.batch_calls, le="+Inf"), self._line(f"{name}_sum", self.batch_rows_sum),
                    self._line(f"{name}_count", self.batch_calls)]
        family(name, "histogram", "Rows (along the batch axis) per model call of the batcher; _count is the calls.", samples)


def _drift(stats: RunningStats, golden: RunningStats) -> float:
    if not stats.count or not golden.count:
        return math.nan
    scale = golden.std if golden.std > 0 else 1.0
    return abs(stats.mean - golden.mean) / scale


class JsonLog:
    """One JSON object per line, appended with one write(2) each, to a file or stderr.

    A failed write (a full disk, an I/O error) never raises: it is counted in `failures` (shown in
    /metrics and /healthz) and the answer is sent all the same.
    """

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        else:
            self._fd = sys.stderr.fileno()
        self._lock = threading.Lock()
        self.failures, self.last_error = 0, None

    def write(self, **record) -> bool:
        """Append one record; False (and counted) when it could not be written whole."""
        line = (json.dumps({"time": utc_now(), **record}, default=str) + "\n").encode("utf-8")
        with self._lock:
            try:
                if os.write(self._fd, line) == len(line):
                    return True
                self.last_error = "short write"
            except OSError as exc:
                self.last_error = exc.strerror or str(exc)
            self.failures += 1
            return False

    def close(self) -> None:
        if self.path is not None:
            os.close(self._fd)


def _json_depth(body: bytes) -> int:
    """Deepest nesting of [ and { outside strings (C-speed scans, no recursion)."""
    bare = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", body)
    codes = np.frombuffer(bare, dtype=np.uint8)
    steps = np.zeros(codes.shape, dtype=np.int32)
    steps[(codes == ord("[")) | (codes == ord("{"))] = 1
    steps[(codes == ord("]")) | (codes == ord("}"))] = -1
    return int(np.cumsum(steps).max()) if steps.size else 0


def _refuse_constant(name: str):
    raise RequestError(400, f"the request holds {name}, which is not JSON", "send finite numbers (non-finite inputs as base64 .npy)")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise RequestError(400, f"the request holds an integer of {len(text)} digits", f"send integers of at most {MAX_INT_DIGITS} digits")
    return int(text)


def parse_json(body: bytes):
    """A request body as strict JSON: 400 for non-JSON, NaN/Infinity literals, deep nesting or huge integers."""
    if _json_depth(body) > MAX_JSON_DEPTH:
        raise RequestError(400, f"the request JSON is nested deeper than {MAX_JSON_DEPTH} levels", "send tensors as nested lists of their rank")
    try:
        # decoded strictly, as edgepack-run reads it: json.loads(bytes) would pass encoded surrogates and UTF-16/32
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant, parse_int=_bounded_int)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestError(400, f"the request body is not JSON ({loader.first_line(exc)})", "send a JSON object with \"inputs\"") from None


def strict_list(array: np.ndarray):
    """`array.tolist()` with NaN and infinities as the strings "NaN", "Infinity", "-Infinity" (strict JSON)."""
    if array.dtype.kind not in "fc" or np.isfinite(array).all():
        return array.tolist()
    values = array.astype(object)
    values[np.isnan(array)] = "NaN"
    values[np.isposinf(array)] = "Infinity"
    values[np.isneginf(array)] = "-Infinity"
    return values.tolist()


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
        return {spec.name: strict_list(array) for spec, array in zip(specs, outputs)}
    buffers = {}
    for spec, array in zip(specs, outputs):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        buffers[spec.name] = {"npy": base64.b64encode(buffer.getvalue()).decode("ascii")}
    return buffers


def batch_axis(inputs, outputs) -> tuple[str, int] | None:
    """(name, largest size) of a dynamic batch axis: the leading axis of every input and output, one name with
    a range, found nowhere else; None when the bundle has none (static bundles: no batching)."""
    specs = [*inputs, *outputs]
    if not inputs or not outputs or not all(spec.dims and spec.dims[0] is not None for spec in specs):
        return None
    name = specs[0].dims[0]
    if any(spec.dims[0] != name or name in spec.dims[1:] for spec in specs):
        return None
    return name, int(inputs[0].bounds[0][1])


class _Pending:
    """One request's checked inputs waiting in the batcher, and what its model call gave back."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays
        self.rows = int(arrays[0].shape[0])
        self.key = tuple(array.shape[1:] for array in arrays)  # requests batch only with equal trailing shapes
        self.arrived = time.perf_counter()
        self.done = threading.Event()
        self.outputs: list[np.ndarray] | None = None
        self.error: BaseException | None = None
        self.model_ms, self.batch_rows = 0.0, 0


class Batcher:
    """One worker that gathers concurrent requests into one model call along the batch axis.

    It takes the oldest waiting request, waits until `window_s` after its arrival or until `max_rows` rows
    (of requests with the same trailing shapes) wait, concatenates their inputs, runs once and splits the
    outputs back by each request's rows. A request that waited while the previous call ran goes at once.
    """

    def __init__(self, run, max_rows: int, window_s: float, metrics: "Metrics"):
        self.run, self.max_rows, self.window_s, self.metrics = run, max_rows, window_s, metrics
        self.cond = threading.Condition()
        self.queue: list[_Pending] = []
        threading.Thread(target=self._work, name="edgepack-batcher", daemon=True).start()

    def submit(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], float, int]:
        """Run checked inputs in the next batch; returns (outputs, milliseconds of the call, rows in the call)."""
        item = _Pending(arrays)
        with self.cond:
            self.queue.append(item)
            self.cond.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.outputs, item.model_ms, item.batch_rows

    def _take(self) -> list[_Pending]:
        with self.cond:
            while not self.queue:
                self.cond.wait()
            first = self.queue[0]
            deadline = first.arrived + self.window_s
            while True:
                waiting = sum(item.rows for item in self.queue if item.key == first.key)
                left = deadline - time.perf_counter()
                if waiting >= self.max_rows or left <= 0:
                    break
                self.cond.wait(left)
            batch, rows, rest = [], 0, []
            for item in self.queue:
                if item.key == first.key and rows + item.rows <= self.max_rows:
                    batch.append(item)
                    rows += item.rows
                else:
                    rest.append(item)
            self.queue = rest
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            rows = sum(item.rows for item in batch)
            try:
                if len(batch) == 1:
                    joined = batch[0].arrays
                else:
                    joined = [np.concatenate(parts, axis=0) for parts in zip(*(item.arrays for item in batch))]
                outputs, model_ms = self.run(joined)
                cuts = np.cumsum([item.rows for item in batch])[:-1]
                pieces = [np.split(output, cuts, axis=0) for output in outputs]
                for index, item in enumerate(batch):
                    item.outputs = [np.ascontiguousarray(parts[index]) for parts in pieces]
                    item.model_ms, item.batch_rows = model_ms, rows
            except BaseException as exc:  # the model call failed: every request of the batch gets the error
                for item in batch:
                    item.error = exc
            self.metrics.observe_batch(len(batch), rows)
            for item in batch:
                item.done.set()


class ServeApp:
    """The loaded bundle, its metrics and log; `infer` answers one request body."""

    def __init__(self, bundle, log: JsonLog, max_body_bytes: int = 64 << 20, drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
                 batch_window_ms: float = 0.0):
        self.bundle = bundle
        self.model, self.version = str(bundle.manifest["name"]), str(bundle.manifest["version"])
        self.log = log
        self.max_body_bytes = max_body_bytes
        self.model_lock = threading.Lock()  # one model call at a time: the VM is not shared between threads
        golden = {spec.name: RunningStats() for spec in bundle.inputs}
        cases = [inputs for inputs, _ in bundle.golden_cases()]
        for inputs in cases:
            for spec, array in zip(bundle.inputs, inputs):
                golden[spec.name].add(array)
        real_data = bundle.manifest.get("golden", {}).get("origin") == "user"  # random golden inputs are no baseline
        features = {spec.name: FeatureDrift(spec.shape, [inputs[i] for inputs in cases if i < len(inputs)], real_data)
                    for i, spec in enumerate(bundle.inputs)}
        target = bundle.manifest.get("target", {}).get("name", "unknown")
        self.metrics = Metrics(self.model, self.version, target, golden, [spec.name for spec in bundle.inputs], features, drift_threshold)
        self.metrics.log_failures = lambda: self.log.failures
        axis = batch_axis(bundle.inputs, bundle.outputs) if batch_window_ms > 0 and "generator" not in bundle.manifest else None
        self.batcher = Batcher(self._call, axis[1], batch_window_ms / 1000.0, self.metrics) if axis else None
        if self.batcher is not None:
            self.metrics.batching = (axis[0], axis[1], batch_window_ms / 1000.0)

    def health(self) -> dict:
        """/healthz: "ok", or "degraded" with the problems (log writes failing)."""
        problems = []
        if self.log.failures:
            problems.append(f"{self.log.failures} log write(s) failed ({self.log.last_error})")
        drifting = self.metrics.drifting()
        if drifting:
            problems.append("drifting: " + ", ".join(f"{name}[{f}] (psi {self.metrics.features[name].psi(f):.3g})"
                                                     for name, features in drifting.items() for f in features))
        status = "ok" if not problems else "degraded" if self.log.failures or not drifting else "drifting"
        health = {"status": status, "model": self.model, "version": self.version}
        if drifting:
            health["drifting"] = drifting
        if problems:
            health["problems"] = problems
        return health

    def v2_metadata(self) -> dict:
        """Open Inference Protocol v2 model metadata."""
        def tensors(specs):
            return [{"name": spec.name, "datatype": NUMPY_TO_V2.get(spec.dtype, spec.dtype.upper()), "shape": list(spec.shape)} for spec in specs]
        return {"name": self.model, "versions": [self.version], "platform": "edgepack",
                "inputs": tensors(self.bundle.inputs), "outputs": tensors(self.bundle.outputs)}

    def _call(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """One model call on checked inputs: (outputs, milliseconds)."""
        with self.model_lock:
            start = time.perf_counter()
            outputs = self.bundle.run(arrays)
            return outputs, (time.perf_counter() - start) * 1000.0

    def _run(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], float, int | None]:
        """Check one request's inputs (400 for this request alone), then run them, in a batch when batching is on:
        (outputs, model milliseconds, rows of the call that ran them or None without batching)."""
        try:
            loader.check_inputs(self.bundle.inputs, arrays)
        except loader.BundleError as exc:
            raise RequestError(400, exc.problem, exc.fix) from None
        if self.batcher is not None:
            return self.batcher.submit(arrays)
        return (*self._call(arrays), None)

    def infer_v2(self, body: bytes, json_length: str | None) -> tuple[dict, float, list[np.ndarray], int | None]:
        """One Open Inference Protocol v2 request (JSON tensors, or Triton's binary tensor extension)."""
        binary = b""
        if json_length is not None:
            if not json_length.isdigit() or int(json_length) > len(body):
                raise RequestError(400, f"Inference-Header-Content-Length {json_length!r} does not fit the body", "send the JSON header's byte length")
            body, binary = body[:int(json_length)], body[int(json_length):]
        payload = parse_json(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
            raise RequestError(400, "the request has no \"inputs\" list", "send {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}")
        by_name, offset = {}, 0
        for tensor in payload["inputs"]:
            if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
                raise RequestError(400, "an input has no \"name\"", "send one object per input with name, shape, datatype, data")
            by_name[tensor["name"]] = tensor
        names = [spec.name for spec in self.bundle.inputs]
        unknown, missing = sorted(set(by_name) - set(names)), [n for n in names if n not in by_name]
        if unknown or missing or len(by_name) != len(payload["inputs"]):
            raise RequestError(400, f"inputs must be exactly {', '.join(names)} (unknown: {', '.join(unknown) or 'none'}; "
                                    f"missing: {', '.join(missing) or 'none'})", "name every model input once")
        arrays = []
        for spec in self.bundle.inputs:
            tensor = by_name[spec.name]
            shape, datatype = tensor.get("shape"), tensor.get("datatype")
            if not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d < 1 << 31 for d in shape):
                raise RequestError(400, f"input '{spec.name}' has no valid \"shape\"", f"send \"shape\": {list(spec.shape)}")
            expected = NUMPY_TO_V2.get(spec.dtype, spec.dtype.upper())
            if datatype != expected:
                raise RequestError(400, f"input '{spec.name}' datatype is {datatype!r}, the model takes {expected}", f"send \"datatype\": \"{expected}\"")
            size = (tensor.get("parameters") or {}).get("binary_data_size") if isinstance(tensor.get("parameters"), dict) else None
            if size is not None:
                if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                    raise RequestError(400, f"input '{spec.name}' binary_data_size {size!r} runs past the body", "send the tensor bytes after the JSON header")
                raw, offset = binary[offset:offset + size], offset + size
                if size != int(np.prod(shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize:
                    raise RequestError(400, f"input '{spec.name}' has {size} bytes, shape {shape} needs "
                                            f"{int(np.prod(shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize}", "send the whole tensor")
                array = np.frombuffer(raw, dtype=np.dtype(spec.dtype).newbyteorder("<")).astype(spec.dtype).reshape(shape)
            else:
                if not isinstance(tensor.get("data"), list):
                    raise RequestError(400, f"input '{spec.name}' has no \"data\" list", "send the elements, flat in row-major order or nested")
                array = _decode_array(tensor["data"], spec)
                if array.size != int(np.prod(shape, dtype=np.int64)):
                    raise RequestError(400, f"input '{spec.name}' has {array.size} elements, shape {shape} needs "
                                            f"{int(np.prod(shape, dtype=np.int64))}", "send one element per position of the shape")
                array = array.reshape(shape)
            arrays.append(array)
        if offset != len(binary):
            raise RequestError(400, f"{len(binary) - offset} bytes follow the last binary input", "send exactly the binary_data_size bytes")
        requested = payload.get("outputs")
        out_names = [spec.name for spec in self.bundle.outputs]
        if requested is not None:
            if not isinstance(requested, list) or not all(isinstance(o, dict) and o.get("name") in out_names for o in requested):
                raise RequestError(400, "\"outputs\" names an unknown output", f"ask for some of: {', '.join(out_names)}")
            wanted = [o["name"] for o in requested]
        else:
            wanted = out_names
        outputs, model_ms, batch_rows = self._run(arrays)
        response = {"model_name": self.model, "model_version": self.version, "outputs": [
            {"name": spec.name, "datatype": NUMPY_TO_V2.get(str(array.dtype), str(array.dtype).upper()), "shape": list(array.shape),
             "data": strict_list(array.ravel())}
            for spec, array in zip(self.bundle.outputs, outputs) if spec.name in wanted]}
        if isinstance(payload.get("id"), str):
            response["id"] = payload["id"]
        return response, model_ms, arrays, batch_rows

    def describe(self) -> dict:
        return {"model": self.model, "version": self.version, "target": self.bundle.manifest.get("target", {}).get("name"),
                **self.bundle.signature()}

    def infer(self, body: bytes) -> tuple[dict, float | None, list[np.ndarray], int | None]:
        """Decode, run and encode one /v1/infer request body; returns (response, model milliseconds, inputs,
        rows of the batched call or None)."""
        payload = parse_json(body)
        output_format = payload.get("output_format", "list") if isinstance(payload, dict) else "list"
        if output_format not in ("list", "npy"):
            raise RequestError(400, f"unknown output_format '{output_format}'", "use list or npy")
        arrays = decode_inputs(payload, self.bundle.inputs)
        outputs, model_ms, batch_rows = self._run(arrays)
        response = {"model": self.model, "version": self.version, "model_ms": round(model_ms, 4),
                    "outputs": encode_outputs(outputs, self.bundle.outputs, output_format)}
        return response, model_ms, arrays, batch_rows


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgepack-serve"
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # headers and body leave in one write (flushed per request), not two small segments
    disable_nagle_algorithm = True

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
        self._send(code, json.dumps(value, allow_nan=False).encode("utf-8"), "application/json")

    def _path(self) -> str:
        return unquote(self.path.split("?", 1)[0])

    def _v2_route(self, path: str) -> tuple[str, str] | None:
        """(model name, action) for /v2/models/<name>[/versions/<v>][/infer|/ready]; action "" is metadata."""
        parts = path.split("/")[3:]
        if not parts or not parts[0]:
            return None
        name, rest = parts[0], parts[1:]
        if len(rest) >= 2 and rest[0] == "versions":
            if rest[1] != self.app.version:
                return name, "unknown-version"
            rest = rest[2:]
        if rest in ([], ["infer"], ["ready"]):
            return name, rest[0] if rest else ""
        return None

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self._path()
        route = self._v2_route(path) if path.startswith("/v2/models/") else None
        if path == "/healthz":
            self._json(200, self.app.health())
        elif path == "/metrics":
            self._send(200, self.app.metrics.render().encode("utf-8"), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/v1/model":
            self._json(200, self.app.describe())
        elif path in ("/v2/health/ready", "/v2/health/live"):
            self._json(200, {path.rsplit("/", 1)[1]: True})
        elif path == "/v2":
            self._json(200, {"name": "edgepack", "version": self.app.version, "extensions": ["binary_tensor_data"]})
        elif route is not None and route[0] != self.app.model:
            self._json(404, {"error": f"unknown model '{route[0]}'; this server runs '{self.app.model}'"})
        elif route is not None and route[1] == "unknown-version":
            self._json(404, {"error": f"unknown version; this server runs {self.app.model} {self.app.version}"})
        elif route is not None and route[1] == "ready":
            self._json(200, {"name": self.app.model, "ready": True})
        elif route is not None and route[1] == "":
            self._json(200, self.app.v2_metadata())
        elif path == "/v1/infer" or (route is not None and route[1] == "infer"):
            self._json(405, {"error": f"use POST for {path}"})
        else:
            self._json(404, {"error": f"no such path '{path}'; use POST /v1/infer or /v2/models/{self.app.model}/infer, "
                                      f"GET /healthz, /metrics, /v1/model or /v2/models/{self.app.model}"})

    def do_POST(self) -> None:  # noqa: N802
        if self._path() == "/v1/generate" and "generator" in self.app.bundle.manifest:  # language models: SSE
            self._generate()
            return
        path = self._path()
        route = self._v2_route(path) if path.startswith("/v2/models/") else None
        if path != "/v1/infer" and (route is None or route[1] != "infer"):
            self._json(404, {"error": f"no such path '{path}'; use POST /v1/infer or /v2/models/{self.app.model}/infer"})
            return
        if route is not None and route[0] != self.app.model:
            self._json(404, {"error": f"unknown model '{route[0]}'; this server runs '{self.app.model}'"})
            return
        start = time.perf_counter()
        model_ms, arrays, batch_rows = None, None, None
        try:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                raise RequestError(411, "the request has no Content-Length", "send the body with a Content-Length header")
            if int(length) > self.app.max_body_bytes:
                self.close_connection = True
                raise RequestError(413, f"the request body has {length} bytes, more than {self.app.max_body_bytes}",
                                   "send fewer inputs per request, or start the server with a larger --max-body-mb")
            try:
                body = self.rfile.read(int(length))
            except TimeoutError:
                self.close_connection = True
                raise RequestError(408, "the request body did not arrive in time", "send the whole body without pausing") from None
            if len(body) != int(length):
                self.close_connection = True
                raise RequestError(400, f"the request body ended after {len(body)} of {length} bytes", "send the whole body")
            if route is None:
                response, model_ms, arrays, batch_rows = self.app.infer(body)
            else:
                response, model_ms, arrays, batch_rows = self.app.infer_v2(body, self.headers.get("Inference-Header-Content-Length"))
            code, error = 200, None
        except RequestError as exc:
            code, error, response = exc.code, f"{exc.problem}; {exc.fix}", None
        except Exception as exc:  # the model call failed: a server-side problem, one line
            code, error, response = 500, f"inference failed ({type(exc).__name__}: {loader.first_line(exc)})", None
        seconds = time.perf_counter() - start
        self.app.metrics.observe(code, seconds, arrays if code == 200 else None)
        try:  # the answer goes out first: it never depends on the log
            if response is not None:
                if route is None:
                    response["latency_ms"] = round(seconds * 1000.0, 4)
                self._json(200, response)
            else:
                self._json(code, {"error": error})
        finally:
            record = {"model": self.app.model, "version": self.app.version, "status": "ok" if code == 200 else "error",
                      "code": code, "latency_ms": round(seconds * 1000.0, 4), "route": "v1" if route is None else "v2"}
            if model_ms is not None:
                record["model_ms"] = round(model_ms, 4)
            if batch_rows is not None:
                record["batch_rows"] = batch_rows
            if error is not None:
                record["error"] = error
            self.app.log.write(**record)


    def _generate(self) -> None:
        """POST /v1/generate: token streaming for language-model bundles (edgepack_generate.serve_generation)."""
        try:
            from . import generate
        except ImportError:  # inside a bundle: runtime/edgepack_generate.py beside this file
            import edgepack_generate as generate  # type: ignore[no-redef]
        generate.serve_generation(self, self.app.bundle, self.app.model_lock, self.app.max_body_bytes)


class Server(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once (more get 503 with Retry-After); a
    connection waits at most `timeout` seconds for each read of a request, or while idle."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: ServeApp, max_connections: int = 64, timeout: float = 10.0):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, type("Handler", (_Handler,), {"timeout": timeout}))

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _refuse(self, request: socket.socket) -> None:
        with self.app.metrics.lock:
            self.app.metrics.refused_connections += 1
        body = json.dumps({"error": "the server is busy; retry after 1 s"}).encode()
        try:
            request.settimeout(0.2)
            try:
                request.recv(65536)  # what the client already sent, so closing does not reset the answer away
            except OSError:
                pass
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        except OSError:
            pass
        self.shutdown_request(request)

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
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body accepted (MiB; larger: 413)")
    parser.add_argument("--max-connections", type=int, default=64, help="connections served at once (more: 503 with Retry-After)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each read of a request, or on an idle connection")
    parser.add_argument("--drift-threshold", type=float, default=DEFAULT_DRIFT_THRESHOLD,
                        help="PSI above which a feature is reported as drifting in /healthz (default 0.25)")
    parser.add_argument("--keyring", type=Path, default=None,
                        help=f"trusted public keys (.pub file or directory); refuse unsigned bundles (default: ${loader.KEYRING_ENV})")
    parser.add_argument("--batch-window-ms", type=float, default=DEFAULT_BATCH_WINDOW_MS,
                        help="bundles with a dynamic batch axis: gather concurrent requests for at most this long into one "
                             f"model call (default {DEFAULT_BATCH_WINDOW_MS:g}; 0: one call per request)")
    parser.add_argument("--verify", action="store_true", help="run the golden vectors before serving; refuse to start if they fail")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: load, bind, print `serving <model> <version> at <url>`, serve until SIGTERM/SIGINT."""
    args = _parser().parse_args(argv)
    bundle_dir = args.bundle or Path(__file__).resolve().parent.parent
    try:
        if args.max_connections < 1 or not args.timeout > 0 or not args.max_body_mb > 0 or not args.drift_threshold > 0:
            raise loader.BundleError("--max-connections, --timeout, --max-body-mb and --drift-threshold must be positive", "pass positive limits")
        if not 0 <= args.batch_window_ms <= 1000:
            raise loader.BundleError(f"--batch-window-ms {args.batch_window_ms:g} is outside 0..1000", "pass a few milliseconds, or 0 to turn batching off")
        bundle = loader.load(bundle_dir, args.keyring or os.environ.get(loader.KEYRING_ENV) or None)
        if unserved := bundle.ml_dtypes_tensors():  # as the native server
            raise loader.BundleError(f"the server does not carry {', '.join(dict.fromkeys(s.dtype for s in unserved))} tensors yet "
                                     f"({', '.join(s.name for s in unserved)})",
                                     "run the bundle with `run`, or cast them to float32 in the model")
        if args.verify and not bundle.verify()["passed"]:
            raise loader.VerificationError("outputs differ from the golden vectors beyond tolerance", "do not serve this bundle; rebuild it")
        defaults = store_files(bundle_dir, str(bundle.manifest["version"]))
        log_path = None if args.log == "-" else Path(args.log) if args.log else (defaults[0] if defaults else None)
        status_path = args.status_file or (defaults[1] if defaults else None)
        app = ServeApp(bundle, JsonLog(log_path), int(args.max_body_mb * (1 << 20)), args.drift_threshold, args.batch_window_ms)
        try:
            server = Server((args.host, args.port), app, args.max_connections, args.timeout)
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
    # only TVM's runtime library on the device; set here, not in main(), so that a host process calling
    # main() keeps the compiler for its own later work and children
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    sys.exit(main())
