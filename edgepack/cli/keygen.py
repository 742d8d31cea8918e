"""`edgepack keygen NAME`: make an ed25519 key pair for signing bundles (NAME.key, NAME.pub)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgepack.cli.console import out


def keygen_command(
    name: Path = typer.Argument(..., help="path stem: writes NAME.key (private, 0600) and NAME.pub (public)"),
    force: bool = typer.Option(False, "--force", help="replace an existing key pair"),
) -> None:
    """Make a signing key pair; NAME.pub goes into each device's keyring, NAME.key stays with the builder."""
    from edgepack.bundle.signing import generate_keypair

    pair = generate_keypair(name, force=force)
    out.print(f"wrote {pair.private} (private: keep it secret, off devices) and {pair.public} "
              f"(public: put it in the device keyring); key id {pair.keyid}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("keygen")(keygen_command)
