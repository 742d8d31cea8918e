"""`edgepack monitor DEVICE`: what a device's bundle server reports, read without disturbing it.

Reads the store's state, the server's status file (`<model>/logs/serve.json`), scrapes its
`/metrics` on the device (so a server bound to the device's loopback answers) and tails the JSON-lines
log of the version it serves. Takes no lock: it never waits for, or blocks, a deploy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from edgepack.deploy.device import existing_root, pick_model
from edgepack.deploy.layout import ModelStore
from edgepack.deploy.state import read_state
from edgepack.errors import EdgepackError


@dataclass(frozen=True)
class MonitorConfig:
    """How many log lines to show, and whether (and how long) to scrape the server's /metrics."""

    lines: int = 20
    scrape: bool = True
    timeout_s: float = 5.0


def _labels_without(sample, *names: str) -> dict:
    return {key: value for key, value in sample.labels.items() if key not in names}


def summarize_metrics(text: str) -> dict:
    """Requests by code, errors, latency (mean and histogram quantile bounds) and per-input drift from /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        families = {family.name: family for family in text_string_to_metric_families(text)}
    except ValueError as exc:
        raise EdgepackError(f"the server's /metrics is not Prometheus text ({exc})", "check that the URL is an edgepack server") from None
    summary: dict = {"requests": {}, "errors": 0, "latency": None, "inputs": {}, "drifting": {}, "drift_threshold": None,
                     "log_write_failures": 0}
    if "edgepack_requests" in families:
        for sample in families["edgepack_requests"].samples:
            if sample.name.endswith("_total"):
                summary["requests"][sample.labels.get("code", "?")] = int(sample.value)
    if "edgepack_request_errors" in families:
        summary["errors"] = int(sum(s.value for s in families["edgepack_request_errors"].samples if s.name.endswith("_total")))
    histogram = families.get("edgepack_request_latency_seconds")
    if histogram is not None:
        buckets = sorted((float(s.labels["le"]), s.value) for s in histogram.samples if s.name.endswith("_bucket"))
        total = next((s.value for s in histogram.samples if s.name.endswith("_count")), 0)
        seconds = next((s.value for s in histogram.samples if s.name.endswith("_sum")), 0.0)

        def bound(q: float) -> float | None:
            for upper, count in buckets:
                if total and count >= q * total:
                    return upper * 1000.0
            return None

        summary["latency"] = {"count": int(total), "mean_ms": seconds / total * 1000.0 if total else None,
                              "p50_le_ms": bound(0.5), "p99_le_ms": bound(0.99)}
    for metric in ("edgepack_input_mean", "edgepack_input_std", "edgepack_input_golden_mean", "edgepack_input_golden_std",
                   "edgepack_input_drift"):
        family = families.get(metric)
        for sample in family.samples if family is not None else []:
            entry = summary["inputs"].setdefault(sample.labels.get("input", "?"), {})
            entry[metric.removeprefix("edgepack_input_")] = None if math.isnan(sample.value) else sample.value
    threshold = families.get("edgepack_drift_threshold")
    if threshold is not None and threshold.samples:
        summary["drift_threshold"] = threshold.samples[0].value
    baseline = families.get("edgepack_input_drift_baseline")
    for sample in baseline.samples if baseline is not None else []:
        summary["inputs"].setdefault(sample.labels.get("input", "?"), {})["baseline"] = bool(sample.value)
    psi = families.get("edgepack_input_psi")
    for sample in psi.samples if psi is not None else []:
        name, feature = sample.labels.get("input", "?"), int(sample.labels.get("feature", "0"))
        value = None if math.isnan(sample.value) else sample.value
        summary["inputs"].setdefault(name, {}).setdefault("psi", {})[feature] = value
        if value is not None and summary["drift_threshold"] is not None and value > summary["drift_threshold"]:
            summary["drifting"].setdefault(name, []).append(feature)
    failures = families.get("edgepack_log_write_failures")
    if failures is not None:
        summary["log_write_failures"] = int(sum(s.value for s in failures.samples if s.name.endswith("_total")))
    info = families.get("edgepack_model_info")
    if info is not None and info.samples:
        summary["labels"] = _labels_without(info.samples[0])
    return summary


def _log_records(lines: list[str]) -> list[dict]:
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short mid-write
        if isinstance(record, dict):
            records.append(record)
    return records


def monitor(device: str, model: str | None = None, config: MonitorConfig = MonitorConfig()) -> dict:
    """The model's active version, its server's status and metrics, and the tail of the served version's log."""
    fs, root = existing_root(device)
    store = ModelStore(fs, root, pick_model(fs, root, model))
    state = read_state(store)
    report: dict = {"device": store.where, "model": store.model, "active": state["active"],
                    "health": (state["versions"].get(state["active"]) or {}).get("health") if state["active"] else None,
                    "serve": None, "metrics": None, "metrics_error": None}
    status_text = fs.read_text(store.serve_status)
    if status_text is not None:
        try:
            report["serve"] = json.loads(status_text)
        except json.JSONDecodeError:
            report["metrics_error"] = f"{fs.describe(store.serve_status)} is not valid JSON"
    served = (report["serve"] or {}).get("version") or state["active"]
    if report["serve"] and config.scrape:
        url = str(report["serve"].get("url", "")).rstrip("/") + "/metrics"
        try:
            report["metrics"] = summarize_metrics(fs.fetch(url, config.timeout_s))
        except EdgepackError as exc:
            report["metrics_error"] = exc.problem
    elif report["serve"] is None:
        report["metrics_error"] = "no server is running (no logs/serve.json)"
    report["log_file"] = fs.describe(store.serve_log(served)) if served else None
    lines = fs.tail(store.serve_log(served), config.lines) if served else None
    report["log"] = _log_records(lines or [])
    return report
