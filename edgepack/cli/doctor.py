"""`edgepack doctor`: which targets this machine can build and verify, and why not."""

from __future__ import annotations

import typer
from rich.table import Table

from edgepack.cli.console import out


def doctor_command() -> None:
    """Report, per target, whether the compiler, runtime libraries and emulator are here."""
    from edgepack.compiler.doctor import check_all

    table = Table("target", "arch", "build", "verify here", "runtime libraries", "to do")
    for row in check_all():
        table.add_row(row.target.name, row.target.arch, "yes" if row.can_build else "no",
                      "yes" if row.can_verify else "no", row.runtime, "; ".join(row.todo) or "—")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)
