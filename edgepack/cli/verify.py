"""`edgepack verify BUNDLE`: check every file digest, then run the golden vectors."""

from __future__ import annotations

from pathlib import Path

import typer

from edgepack.cli.console import out


def verify_command(bundle: Path = typer.Argument(..., help="bundle directory")) -> None:
    """Check digests and run the golden vectors with the Python and (where it runs here) native loaders."""
    from edgepack.runtime.loader import read_manifest
    from edgepack.verify import verify_bundle

    report = verify_bundle(bundle, read_manifest(bundle)["target"]["arch"])
    native = report["native"]
    native_text = "native loader passed" if native["ran"] else f"native loader not run: {native['reason']}"
    out.print(f"verified: {len(report['cases'])} golden case(s) within atol {report['atol']}, rtol {report['rtol']} "
              f"(max abs err {report['max_abs_err']:.3g}); files match their digests; {native_text}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_command)
