"""`edgepack verify BUNDLE [--emulate]`: check every file digest, then run the golden vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from edgepack.cli.console import out


def _engine_line(name: str, engine: dict) -> str:
    if not engine["ran"]:
        return f"{name}: not run ({engine['reason']})"
    where = f" under {engine['emulator']}" if engine.get("emulator") else ""
    error = f", max abs err {engine['max_abs_err']:.3g}" if engine.get("max_abs_err") is not None else ""
    return f"{name}{where}: {'passed' if engine['passed'] else 'FAILED'}{error}"


def verification_lines(report: dict) -> list[str]:
    """One line per loader plus the tolerance, as `verify` and `inspect` print them."""
    state = {True: "passed", False: "FAILED", None: "not verified on this machine"}[report["passed"]]
    return [
        f"verification: {state}; {report['cases']} golden case(s), atol {report['atol']}, rtol {report['rtol']}",
        "  " + _engine_line("python loader", report["python_loader"]),
        "  " + _engine_line("native loader", report["native_loader"]),
    ] + ([_generation_line(report["generation"])] if report.get("generation") else [])


def _generation_line(generation: dict) -> str:
    """Language models: the greedy continuation of the golden prompt against PyTorch's, per loader."""
    loaders = [name.replace("_", " ") for name in ("python_loader", "native_loader") if name in generation]
    return (f"  greedy tokens: {len(generation['expected'])} of PyTorch's continuation "
            f"{'matched' if generation['passed'] else 'NOT matched'} by the {' and '.join(loaders)}")


def verify_command(
    bundle: Path = typer.Argument(..., help="bundle directory, or its .tar.gz (unpacked safely into a temporary directory)"),
    emulate: bool = typer.Option(False, "--emulate", help="run a foreign-arch bundle's native loader under qemu-user"),
    keyring: Optional[Path] = typer.Option(None, "--keyring", envvar="EDGEPACK_KEYRING",
                                           help="trusted public keys (.pub file or directory): refuse unsigned or wrongly signed bundles"),
    as_json: bool = typer.Option(False, "--json", help="print the verification report as JSON (a failure still exits non-zero)"),
) -> None:
    """Check the signature (with --keyring) and digests, then run the golden vectors with every loader that can run here."""
    from edgepack.bundle.archive import unpacked
    from edgepack.bundle.verify import require_verified, verify_bundle

    with unpacked(bundle) as directory:
        report = verify_bundle(directory, emulate=emulate, keyring=keyring)
    if as_json:
        print(json.dumps(report, indent=2))
    require_verified(report, emulate)
    if as_json:
        return
    for line in verification_lines(report):
        out.print(line, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_command)
