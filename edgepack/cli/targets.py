"""`edgepack targets`: the shipped targets and whether this machine can build for them."""

from __future__ import annotations

import json
import shutil

import typer
from rich.table import Table

from edgepack.cli.console import out


def targets_command(as_json: bool = typer.Option(False, "--json", help="print the targets as JSON")) -> None:
    """List the targets shipped in targets/*.toml."""
    from edgepack.targets import load_target, target_names

    specs = [load_target(name) for name in target_names()]
    if as_json:
        print(json.dumps([{"name": spec.name, "arch": spec.arch, "device": spec.device, "description": spec.description,
                           "compiler": spec.toolchain.cxx, "compiler_here": shutil.which(spec.toolchain.cxx) is not None}
                          for spec in specs], indent=2))
        return
    table = Table("name", "arch", "description", "compiler here")
    for spec in specs:
        table.add_row(spec.name, spec.arch, spec.description,
                      "yes" if shutil.which(spec.toolchain.cxx) else f"no ({spec.toolchain.cxx})")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("targets")(targets_command)
