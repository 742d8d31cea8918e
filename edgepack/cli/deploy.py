"""`edgepack deploy|status|versions|rollback|remove`: manage bundles on a device store (docs/deployment.md)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table
from rich.text import Text

from edgepack.cli.console import out
from edgepack.deploy.oci import local_bundle

_MODEL = typer.Option(None, "--model", help="model name; needed when the device holds several models")
_TIMEOUT = typer.Option(120.0, "--health-timeout", help="seconds the health check's loader may run")
_KEYRING = typer.Option(None, "--keyring", help="trusted .pub key(s) ON THE DEVICE: its loader refuses bundles not signed by one")


def _print(line: str) -> None:
    out.print(line, highlight=False, markup=False)


def deploy_command(
    bundle: str = typer.Argument(..., help="bundle directory, or oci://HOST/REPO:TAG|@sha256:... (pulled and checked first)"),
    devices: Optional[List[str]] = typer.Argument(None, help="device store(s): a directory, file:///path or ssh://[user@]host[:port]/path"),
    device_file: Optional[Path] = typer.Option(None, "--devices", help="file with one device per line (# comments allowed)"),
    jobs: int = typer.Option(4, "--jobs", "-j", help="devices deployed to at once (fleet deploys)"),
    latency_budget_ms: Optional[float] = typer.Option(None, "--latency-budget-ms", help="fail the health check above this median latency"),
    force: bool = typer.Option(False, "--force", help="replace an installed (inactive) version of the same number, or install an older version"),
    keyring: Optional[str] = _KEYRING,
    timeout: float = _TIMEOUT,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object per device instead of the table"),
) -> None:
    """Install a bundle on one or more devices; each keeps it only if its health check passes (exit 5: rolled back)."""
    from edgepack.deploy import HealthConfig
    from edgepack.deploy.fleet import read_device_file

    health = HealthConfig(timeout, latency_budget_ms, keyring=keyring)
    targets = list(devices or []) + (read_device_file(device_file) if device_file else [])
    with local_bundle(bundle) as path:
        _deploy(path, targets, device_file, jobs, force, health, as_json)


def _deploy(bundle: Path, targets: list[str], device_file: Optional[Path], jobs: int, force: bool, health, as_json: bool) -> None:
    from edgepack.deploy import deploy
    from edgepack.deploy.fleet import FleetConfig, deploy_fleet, fleet_error

    if len(targets) == 1 and device_file is None and not as_json:
        result = deploy(bundle, targets[0], force=force, health=health)
        _print(f"{result.model} {result.version} is active (health check passed: {result.health.detail}); "
               f"previous: {result.previous or 'none'}")
        return
    results = deploy_fleet(bundle, targets, FleetConfig(jobs=jobs, force=force, health=health))
    if as_json:
        print(json.dumps([dataclasses.asdict(row) for row in results], indent=2))
        error = fleet_error(results)
        if error is not None:
            raise error
        return
    table = Table("device", "result", "previous", "seconds", "detail", title=f"{bundle}  ({len(results)} devices, {jobs} at a time)",
                  title_justify="left")
    styles = {"deployed": "green", "rolled back": "yellow", "failed": "red"}
    for row in results:
        table.add_row(row.device, f"[{styles[row.outcome]}]{row.outcome}[/]", row.previous or "-", f"{row.seconds:.1f}",
                      Text(row.detail))
    out.print(table)
    error = fleet_error(results)
    if error is not None:
        raise error


def status_command(device: str = typer.Argument(..., help="device store"), model: Optional[str] = _MODEL) -> None:
    """Active and previous version, the active one's health and last check."""
    from edgepack.deploy import status

    info = status(device, model)
    _print(f"model:      {info['model']} on {info['device']}")
    _print(f"active:     {info['active'] or 'none'}")
    _print(f"previous:   {info['previous'] or 'none'}")
    _print(f"health:     {info['health'] or '-'} ({info['detail'] or 'no check'})")
    _print(f"last check: {info['last_check'] or '-'}")


def versions_command(device: str = typer.Argument(..., help="device store"), model: Optional[str] = _MODEL) -> None:
    """Every installed version with its health and times."""
    from edgepack.deploy import versions

    for row in versions(device, model):
        mark = "*" if row["active"] else ("<" if row["previous"] else " ")
        _print(f"{mark} {row['version']:<12} {row['target']:<14} {row['health']:<9} installed {row['installed']}  "
               f"checked {row['last_check'] or '-'}")


def rollback_command(
    device: str = typer.Argument(..., help="device store"),
    to: Optional[str] = typer.Option(None, "--to", help="version to activate (default: the previous one)"),
    model: Optional[str] = _MODEL,
    timeout: float = _TIMEOUT,
    keyring: Optional[str] = _KEYRING,
) -> None:
    """Activate the previous version (or --to VERSION), gated by its health check."""
    from edgepack.deploy import HealthConfig, rollback

    result = rollback(device, to, model, HealthConfig(timeout, keyring=keyring))
    _print(f"{result.model} {result.version} is active (rolled back from {result.previous or 'none'}; "
           f"health check passed: {result.health.detail})")


def remove_command(
    device: str = typer.Argument(..., help="device store"),
    version: str = typer.Argument(..., help="version to delete (never the active one)"),
    model: Optional[str] = _MODEL,
) -> None:
    """Delete an installed version that is not active."""
    from edgepack.deploy import remove

    remove(device, version, model)
    _print(f"removed {version}")


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy_command)
    app.command("status")(status_command)
    app.command("versions")(versions_command)
    app.command("rollback")(rollback_command)
    app.command("remove")(remove_command)
