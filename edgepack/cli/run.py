"""`edgepack run BUNDLE --input x.npy -o y.npy`: run a bundle on .npy inputs."""

from __future__ import annotations

import json
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
    as_json: bool = typer.Option(False, "--json", help="print the written outputs (path, shape, dtype) as JSON"),
) -> None:
    """Run the bundle on .npy inputs and write its outputs as .npy files."""
    from edgepack.runtime.bundle_format import load_npy
    from edgepack.runtime.loader import load, write_outputs

    arrays = [load_npy(path) for path in inputs]
    outputs = load(bundle, keyring).run(arrays)
    written = write_outputs(outputs, output, output_dir)
    if as_json:
        print(json.dumps({"outputs": [{"path": str(path), "shape": list(array.shape), "dtype": str(array.dtype)}
                                      for path, array in zip(written, outputs)]}, indent=2))
        return
    err.print("wrote " + ", ".join(str(path) for path in written), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
