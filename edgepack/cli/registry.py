"""`edgepack push`, `edgepack agent` and `edgepack fleet rollout|status`: bundles through an OCI registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from edgepack.cli.console import out
from edgepack.deploy.agent import AgentConfig, read_report, run_agent
from edgepack.deploy.device import parse_device
from edgepack.deploy.fleet import read_device_file
from edgepack.deploy.health import HealthConfig
from edgepack.deploy.oci import move_tag, parse_reference, push
from edgepack.deploy.rollout import RolloutConfig, parse_waves, rollout

fleet_app = typer.Typer(help="Staged rollouts of a release channel to agents that pull from a registry.", no_args_is_help=True)


def _print(line: str) -> None:
    out.print(line, highlight=False, markup=False)


def _devices(devices: Optional[List[str]], device_file: Optional[Path]) -> list[str]:
    return list(devices or []) + (read_device_file(device_file) if device_file else [])


def push_command(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    reference: str = typer.Argument(..., help="oci://HOST[:PORT]/REPO:TAG"),
    tag: Optional[List[str]] = typer.Option(None, "--tag", help="also point this tag at the pushed bundle (repeatable)"),
) -> None:
    """Upload a bundle to an OCI registry as one artifact; prints the digest to pin."""
    ref = parse_reference(reference, need_tag=True)
    digest = push(bundle, ref)
    for extra in tag or []:
        move_tag(ref.with_digest(digest), parse_reference(f"oci://{ref.host}/{ref.repo}:{extra}", need_tag=True).tag)
    _print(f"pushed {bundle} to {ref} ({digest}); pin it as {ref.with_digest(digest)}")


def agent_command(
    device: str = typer.Argument(..., help="the device store this agent manages (a directory, file:///path or ssh://...)"),
    source: str = typer.Option(..., "--from", help="repository to follow: oci://HOST[:PORT]/REPO"),
    channel: str = typer.Option("stable", "--channel", help="release channel (a tag written by edgepack fleet rollout)"),
    device_id: Optional[str] = typer.Option(None, "--device-id", help="this device's id in rollouts (default: DEVICE as given)"),
    interval: float = typer.Option(30.0, "--interval", help="seconds between polls"),
    polls: Optional[int] = typer.Option(None, "--polls", help="stop after this many polls (default: run until stopped)"),
    keyring: Optional[str] = typer.Option(None, "--keyring", help="trusted .pub key(s) on the device: unsigned bundles fail"),
    timeout: float = typer.Option(120.0, "--health-timeout", help="seconds the health check's loader may run"),
) -> None:
    """Follow a channel: install each bundle it carries for this device through the health-gated deploy."""
    config = AgentConfig(parse_reference(source), channel, device_id, interval, HealthConfig(timeout, keyring=keyring))
    run_agent(device, config, polls, on_report=lambda report: _print(json.dumps(report, sort_keys=True)))


@fleet_app.command("rollout")
def rollout_command(
    reference: str = typer.Argument(..., help="the bundle to roll out: oci://HOST/REPO:TAG or @sha256:..."),
    channel: str = typer.Option("stable", "--channel", help="the channel to move"),
    devices: Optional[List[str]] = typer.Option(None, "--device", help="a device of the fleet (repeatable)"),
    device_file: Optional[Path] = typer.Option(None, "--devices", help="file with one device per line"),
    waves: str = typer.Option("1%,10%,100%", "--wave", help="shares of the fleet admitted in turn"),
    max_failures: int = typer.Option(0, "--max-failures", help="failing devices tolerated per wave before halting"),
    wave_timeout: float = typer.Option(600.0, "--wave-timeout", help="seconds to wait for a wave's agents"),
) -> None:
    """Move a channel to a bundle in waves; halt (exit 5) and move it back when a wave fails."""
    config = RolloutConfig(parse_waves(waves), max_failures, wave_timeout)

    def show(wave) -> None:
        _print(f"wave {wave.percent:g}%: {len(wave.devices)} devices, {len(wave.failures)} failing"
               + (f" ({', '.join(f'{d}: {wave.outcomes[d]}' for d in wave.failures[:5])})" if wave.failures else ""))

    done = rollout(parse_reference(reference), channel, _devices(devices, device_file), config, on_wave=show)
    _print(f"channel '{channel}' now carries {reference} for all {len(done[-1].devices)} devices")


@fleet_app.command("status")
def status_command(
    channel: str = typer.Option("stable", "--channel", help="the channel the agents follow"),
    devices: Optional[List[str]] = typer.Option(None, "--device", help="a device of the fleet (repeatable)"),
    device_file: Optional[Path] = typer.Option(None, "--devices", help="file with one device per line"),
    as_json: bool = typer.Option(False, "--json", help="print the agents' reports as JSON"),
) -> None:
    """The last report of each device's agent."""
    rows = []
    for device in _devices(devices, device_file):
        fs, root = parse_device(device)
        rows.append({"device": device, **(read_report(fs, root, channel) or {"outcome": "no report"})})
    if as_json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return
    table = Table("device", "outcome", "version", "time", "detail")
    for row in rows:
        table.add_row(row["device"], row.get("outcome", "-"), row.get("version", "-"), row.get("time", "-"), row.get("detail", ""))
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("push")(push_command)
    app.command("agent")(agent_command)
    app.add_typer(fleet_app, name="fleet")
