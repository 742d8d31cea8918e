"""`edgepack doctor`: which targets this machine can build and verify, and why not."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from edgepack.cli.console import out


def doctor_command(as_json: bool = typer.Option(False, "--json", help="print the readiness of every target as JSON")) -> None:
    """Report, per target, whether the compiler, runtime libraries and emulator are here."""
    from edgepack.compiler.doctor import check_all, fullest_native_target

    rows = check_all()
    if as_json:
        print(json.dumps([{"target": row.target.name, "arch": row.target.arch, "can_build": row.can_build,
                           "can_verify": row.can_verify, "runtime": row.runtime, "todo": list(row.todo)} for row in rows], indent=2))
        return
    table = Table("target", "arch", "build", "verify here", "runtime libraries", "to do")
    for row in rows:
        table.add_row(row.target.name, row.target.arch, "yes" if row.can_build else "no",
                      "yes" if row.can_verify else "no", row.runtime, "; ".join(row.todo) or "—")
    out.print(table)
    fullest = fullest_native_target([row.target for row in rows])
    if fullest is not None:
        out.print(f"For bundles that run on this machine's CPU: --target {fullest.name} ({fullest.description}). "
                  "Pick the device's target for other machines.")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)
