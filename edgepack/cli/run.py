"""`edgepack run BUNDLE --input x.npy -o y.npy`: run a bundle on .npy inputs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgepack.cli.console import err


def run_command(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    inputs: List[Path] = typer.Option(..., "--input", "-i", help=".npy file per model input, in signature order"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="output .npy (single-output models)"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="directory for output_<i>.npy"),
    keyring: Optional[Path] = typer.Option(None, "--keyring", envvar="EDGEPACK_KEYRING",
                                           help="trusted public keys: refuse unsigned or wrongly signed bundles"),
) -> None:
    """Run the bundle on .npy inputs and write its outputs as .npy files."""
    from edgepack.runtime.bundle_format import load_npy
    from edgepack.runtime.loader import load, write_outputs

    arrays = [load_npy(path) for path in inputs]
    written = write_outputs(load(bundle, keyring).run(arrays), output, output_dir)
    err.print("wrote " + ", ".join(str(path) for path in written), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
