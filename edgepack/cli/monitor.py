"""`edgepack monitor DEVICE`: the device's bundle server: status, metrics and the tail of its log."""

from __future__ import annotations

import json
import time
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from edgepack.cli.console import out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print(line: str) -> None:
    out.print(line, highlight=False, markup=False)


def monitor_command(
    device: str = typer.Argument(..., help="device store: a directory, file:///path or ssh://[user@]host[:port]/path"),
    model: Optional[str] = typer.Option(None, "--model", help="model name; needed when the device holds several models"),
    lines: int = typer.Option(20, "--lines", "-n", help="log lines to show"),
    scrape: bool = typer.Option(True, "--scrape/--no-scrape", help="read the server's /metrics (on the device)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    follow: bool = typer.Option(False, "--follow", "-f", help="refresh every --interval seconds until Ctrl-C"),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="seconds between refreshes with --follow"),
    times: int = typer.Option(0, "--times", min=0, help="with --follow: stop after this many reports (0: never)"),
) -> None:
    """Show the serving version, request counts, errors, latency, input drift and the last log lines."""
    from edgepack.deploy.monitor import MonitorConfig, monitor

    shown = 0
    try:
        while True:
            report = monitor(device, model, MonitorConfig(lines=lines, scrape=scrape))
            if follow and out.is_terminal:
                out.clear()
            if as_json:
                print(json.dumps(report, indent=2), flush=True)
            else:
                _show(report, scrape)
            shown += 1
            if not follow or (times and shown >= times):
                return
            if not out.is_terminal:
                _print("")
            time.sleep(interval)
    except KeyboardInterrupt:
        return


def _show(report: dict, scrape: bool) -> None:
    _print(f"model:    {report['model']} on {report['device']} (active {report['active'] or 'none'}, {report['health'] or '-'})")
    serve = report["serve"]
    if serve:
        state = "up" if report["metrics"] is not None else f"not answering: {report['metrics_error']}" if scrape else "not scraped"
        _print(f"serve:    {serve.get('url')} pid {serve.get('pid')}, version {serve.get('version')}, since {serve.get('started')} ({state})")
        if serve.get("version") != report["active"]:
            _print(f"note:     the server runs {serve.get('version')} but {report['active']} is active; restart it to serve the active version")
    else:
        _print(f"serve:    {report['metrics_error']}")
    metrics = report["metrics"]
    if metrics:
        ok = metrics["requests"].get("200", 0)
        codes = ", ".join(f"{code}: {count}" for code, count in sorted(metrics["requests"].items()) if code != "200" and count)
        _print(f"requests: {ok} ok, errors: {metrics['errors']}{f' ({codes})' if codes else ''}")
        latency = metrics["latency"] or {}
        _print(f"latency:  mean {_ms(latency.get('mean_ms'))} ms, p50 <= {_ms(latency.get('p50_le_ms'))} ms, "
               f"p99 <= {_ms(latency.get('p99_le_ms'))} ms (histogram bounds)")
        if metrics.get("log_write_failures"):
            _print(f"log:      {metrics['log_write_failures']} log write(s) failed (answers were sent; check the log disk)")
        for name, entry in metrics["inputs"].items():
            values = {key: ("-" if entry.get(key) is None else f"{entry[key]:.4g}") for key in ("mean", "std", "golden_mean", "golden_std", "drift")}
            _print(f"drift:    {name}: mean {values['mean']} (golden {values['golden_mean']}), std {values['std']} "
                   f"(golden {values['golden_std']}), |mean - golden| / golden std = {values['drift']}")
            psi = entry.get("psi") or {}
            if entry.get("baseline") is False:
                _print(f"          {name}: no baseline (the bundle's golden inputs are random, not real data): no PSI")
            elif name in metrics["drifting"]:
                worst = ", ".join(f"{f} (psi {psi[f]:.3g})" for f in metrics["drifting"][name])
                _print(f"          {name}: drifting in feature(s) {worst} (threshold {metrics['drift_threshold']:.3g})")
            elif psi:
                known = [v for v in psi.values() if v is not None]
                _print(f"          {name}: not drifting (max psi {max(known):.3g})" if known else f"          {name}: too few values for PSI yet")
    if report["log_file"] is None:
        return
    if not report["log"]:
        _print(f"log:      {report['log_file']} (empty or absent)")
        return
    table = Table("time", "version", "status", "code", "latency ms", "detail", title=f"last {len(report['log'])} lines of {report['log_file']}",
                  title_justify="left")
    for record in report["log"]:
        table.add_row(str(record.get("time", "")), str(record.get("version", "")), str(record.get("status", "")),
                      str(record.get("code", "")), _ms(record.get("latency_ms")), Text(str(record.get("error") or record.get("url") or "")))
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("monitor")(monitor_command)
