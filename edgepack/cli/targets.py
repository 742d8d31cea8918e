"""`edgepack targets`: the shipped targets and whether this machine can build for them."""

from __future__ import annotations

import shutil

import typer
from rich.table import Table

from edgepack.cli.console import out


def targets_command() -> None:
    """List the targets shipped in targets/*.toml."""
    from edgepack.targets import load_target, target_names

    table = Table("name", "arch", "description", "compiler here")
    for name in target_names():
        spec = load_target(name)
        table.add_row(name, spec.arch, spec.description, "yes" if shutil.which(spec.toolchain.cxx) else f"no ({spec.toolchain.cxx})")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("targets")(targets_command)
