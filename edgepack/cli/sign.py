"""`edgepack sign BUNDLE KEY`: sign a built bundle's manifest (writes manifest.sig.json)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgepack.cli.console import out


def sign_command(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    key: Path = typer.Argument(..., help="private key (.key) made by `edgepack keygen`"),
) -> None:
    """Check every file of BUNDLE against its manifest, then sign the manifest with KEY."""
    from edgepack.runtime.bundle_format import SIGNATURE
    from edgepack.bundle.signing import sign_bundle

    keyid = sign_bundle(bundle, key)
    out.print(f"signed {bundle} with key {keyid} ({bundle / SIGNATURE})", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("sign")(sign_command)
