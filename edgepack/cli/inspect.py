"""`edgepack inspect BUNDLE`: manifest, I/O signature, verification and sizes, without loading code."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from edgepack.cli.console import out
from edgepack.cli.verify import verification_lines


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def print_summary(path: Path, manifest: dict) -> None:
    """The human-readable view of a bundle: identity, signature, verification, files."""
    target = manifest["target"]
    out.print(f"[bold]{manifest['name']} {manifest['version']}[/] for [bold]{target['name']}[/] ({target['arch']})  {path}")
    out.print(f"schema {manifest['schema_version']}, created {manifest['created']}, "
              f"tools: " + ", ".join(f"{k} {v}" for k, v in manifest["tools"].items() if v), highlight=False)
    signature = Table("", "name", "dtype", "shape", title="I/O signature", title_justify="left")
    for kind in ("inputs", "outputs"):
        for spec in manifest[kind]:
            sizes = [name or size for name, size in zip(spec.get("dims") or [None] * len(spec["shape"]), spec["shape"])]
            signature.add_row(kind[:-1], spec["name"], spec["dtype"], "×".join(map(str, sizes)) or "scalar")
    out.print(signature)
    if manifest.get("dim_ranges"):
        out.print("dynamic: " + ", ".join(f"{name} = {low}..{high}" for name, (low, high) in manifest["dim_ranges"].items()),
                  highlight=False)
    if manifest.get("verification"):
        for line in verification_lines(manifest["verification"]):
            out.print(line, highlight=False)
    if manifest.get("quality"):
        quality = manifest["quality"]
        before = quality["before"].get(quality["metric"], 1.0)
        out.print(f"quality on {quality['after']['samples']} samples: {quality['metric']} {before:.4f} → "
                  f"{quality['after'][quality['metric']]:.4f} (drop {quality['drop'] * 100:.2f} points)", highlight=False)
    for stage in manifest["provenance"]["stages"]:
        if stage["stage"] == "preflight":
            rewrites = [f"{what}: " + ", ".join(f"{op} ×{n}" for op, n in stage["report"][key].items())
                        for key, what in (("expanded", "expanded into their ONNX functions"),
                                          ("lowered", "rewritten into ops TVM imports"), ("legalized", "rewritten for TVM"))
                        if stage["report"].get(key)]
            if rewrites:
                out.print("pre-flight: " + "; ".join(rewrites), highlight=False, soft_wrap=True)
        if stage["stage"] == "quantize":
            from edgepack.compression.quantize import summary_line

            params_file = manifest.get("params", {}).get("file", "params.bin")
            params = manifest["files"].get(params_file, {}).get("size")
            out.print(f"quantization: {summary_line(stage['report'])}" + (f"; {params_file} {_size(params)}" if params else ""),
                      highlight=False, soft_wrap=True)
    golden_entry = manifest.get("golden", {})
    origin = golden_entry.get("origin", "random")
    out.print(f"golden vectors: {len(golden_entry.get('cases', []))} case(s), "
              + (f"inputs from the user's data ({golden_entry.get('data') or 'given'})" if origin == "user" else f"{origin} inputs (not real data: pass --golden-inputs)")
              + f", references from {golden_entry.get('reference', 'onnxruntime')}", highlight=False)
    stages = " → ".join(stage["stage"] for stage in manifest["provenance"]["stages"])
    out.print(f"source: {manifest['provenance']['source']['kind']} {manifest['provenance']['source']['path']}; stages: {stages}", highlight=False)
    files = Table("file", "size", "sha256", title="files", title_justify="left")
    for rel, entry in manifest["files"].items():
        if not rel.startswith("golden/"):
            files.add_row(rel, _size(entry["size"]), entry["sha256"][:16])
    golden = [entry["size"] for rel, entry in manifest["files"].items() if rel.startswith("golden/")]
    files.add_row(f"golden/ ({len(golden)} files)", _size(sum(golden)), "")
    files.add_row("[bold]total[/]", _size(sum(e["size"] for e in manifest["files"].values())), "")
    out.print(files)


def inspect_command(
    bundle: Path = typer.Argument(..., help="bundle directory, or its .tar.gz (unpacked safely into a temporary directory)"),
    as_json: bool = typer.Option(False, "--json", help="print the raw manifest"),
) -> None:
    """Show a bundle's manifest, I/O signature, verification report and file sizes."""
    from edgepack.bundle.archive import unpacked
    from edgepack.runtime.bundle_format import IntegrityError, MANIFEST, check_manifest_fields, first_line, read_manifest

    with unpacked(bundle) as directory:
        manifest = read_manifest(directory)
    if as_json:
        print(json.dumps(manifest, indent=2))
        return
    check_manifest_fields(manifest, Path(bundle) / MANIFEST)
    try:
        print_summary(bundle, manifest)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # descriptive fields (tools, provenance, ...) of the wrong shape
        raise IntegrityError(f"{Path(bundle) / MANIFEST} has a missing or mistyped field ({type(exc).__name__}: {first_line(exc)})",
                             "rebuild the bundle with `edgepack build`, or read it raw with --json") from None


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)
