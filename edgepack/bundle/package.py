"""Stage: assemble a bundle directory in a staging area and move it into place atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from edgepack.artifacts import Bundle, CompiledModule, StageRecord
from edgepack.errors import EdgepackError
from edgepack.bundle.golden import GoldenVectors, write_golden
from edgepack.bundle.manifest import file_entries, new_manifest, tool_versions, write_manifest
from edgepack.runtime.bundle_format import dim_ranges_of
from edgepack.bundle.sparse_params import manifest_fields as sparse_fields
from edgepack.compiler.runtime_files import (
    FORMAT_MODULE, NATIVE_LOADER, PYTHON_LOADER, SERVE_MODULE, device_requirements, format_module, native_loader,
    python_loader, runtime_libraries, serve_module,
)

REFERENCE_MODEL = "reference/model.onnx"


@dataclass(frozen=True)
class PackageConfig:
    """Name and version of the bundle, where it goes, and how to treat an existing one."""

    name: str
    version: str
    out_dir: Path
    force: bool = False
    archive: bool = False
    reference: bool = True  # ship the compiled ONNX model as reference/model.onnx (for --compare)
    sign_key: Path | None = None  # `--sign KEY`: sign the final manifest (manifest.sig.json) before moving into place
    extra_files: tuple[tuple[str, Path], ...] = ()  # (path in the bundle, source file): shipped and digested (e.g. rules.txt)

    @property
    def bundle_name(self) -> str:
        return f"{self.name}-{self.version}"


def bundle_path(config: PackageConfig, target_name: str) -> Path:
    """Where the bundle directory for this config and target lands."""
    return config.out_dir / f"{config.bundle_name}-{target_name}"


def check_destination(config: PackageConfig, target_name: str) -> None:
    """Refuse before any work when a bundle (or archive) is already there and --force is not given."""
    destination = bundle_path(config, target_name)
    for path in (destination, destination.with_name(destination.name + ".tar.gz")):
        if path.exists() and not config.force:
            raise EdgepackError(f"'{path}' already exists", "pass --force to replace it, or choose another -o/--version")


def copy_runtime(target, staging: Path) -> None:
    """runtime/: the TVM runtime libraries of `target`, both loaders, the format module and the server."""
    runtime_dir = staging / "runtime"
    runtime_dir.mkdir()
    for library in runtime_libraries(target):
        shutil.copy2(library, runtime_dir / library.name)
    loader = runtime_dir / NATIVE_LOADER
    shutil.copy2(native_loader(target), loader)
    loader.chmod(loader.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    shutil.copy2(python_loader(), runtime_dir / PYTHON_LOADER)
    shutil.copy2(format_module(), runtime_dir / FORMAT_MODULE)
    shutil.copy2(serve_module(), runtime_dir / SERVE_MODULE)


def replace_atomically(staging: Path, destination: Path) -> None:
    """Swap staging into place; an existing bundle is moved aside first and removed only after."""
    backup = None
    if destination.exists():
        backup = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        os.replace(destination, backup)
    try:
        os.replace(staging, destination)
    except OSError:
        if backup is not None:
            os.replace(backup, destination)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _archive(directory: Path) -> Path:
    archive = directory.with_name(directory.name + ".tar.gz")
    handle, temporary = tempfile.mkstemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tar.gz")
    os.close(handle)
    with tarfile.open(temporary, "w:gz") as tar:
        tar.add(directory, arcname=directory.name)
    os.replace(temporary, archive)
    return archive


@contextlib.contextmanager
def staged(config: PackageConfig, target_name: str) -> Iterator[tuple[Path, Path]]:
    """A fresh staging directory beside the bundle's destination, and that destination (checked first).

    On any failure the staging directory, and an output directory this call created, are removed."""
    destination = bundle_path(config, target_name)
    check_destination(config, target_name)
    created_out_dir = not config.out_dir.exists()  # removed again if the build fails (an empty -o stays absent)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=config.out_dir, prefix=f".{destination.name}.staging-"))
    try:
        yield staging, destination
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_out_dir:
            shutil.rmtree(config.out_dir, ignore_errors=True)
        raise


def seal(staging: Path, destination: Path, manifest: dict, sign_key: Path | None) -> None:
    """Write the final manifest, sign it when a key is given, and swap the staged bundle into place."""
    write_manifest(staging, manifest)
    if sign_key is not None:
        from edgepack.bundle.signing import sign_bundle

        sign_bundle(staging, sign_key)
    replace_atomically(staging, destination)


def write_bundle(compiled: CompiledModule, golden: GoldenVectors, config: PackageConfig,
                 provenance: dict, verify, assess=None) -> tuple[Bundle, StageRecord]:
    """Write the bundle into a staging directory, `verify(staging, manifest)` it, then move it into place.

    `verify` returns the verification report (or raises); `assess(staging)`, when given, returns the
    quality report stored as the manifest's `quality` (or raises). Nothing is left behind when anything fails.
    """
    with staged(config, compiled.target.name) as (staging, destination):
        shutil.copy2(compiled.library, staging / compiled.library.name)
        shutil.copy2(compiled.params, staging / compiled.params.name)
        golden_entry = write_golden(golden, staging)
        if config.reference:
            (staging / "reference").mkdir()
            shutil.copy2(compiled.source.path, staging / REFERENCE_MODEL)
        copy_runtime(compiled.target, staging)
        for rel, source_file in config.extra_files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source_file, staging / rel)
        manifest = new_manifest(
            name=config.name,
            version=config.version,
            tools=tool_versions(used_torch=provenance["source"]["kind"] != "onnx"),
            target=compiled.target.to_json(),
            requires=device_requirements(compiled.target, [staging / compiled.library.name, staging / "runtime" / NATIVE_LOADER,
                                                           *sorted((staging / "runtime").glob("lib*.so*"))]),
            inputs=[spec.to_json() for spec in compiled.source.inputs],
            outputs=[spec.to_json() for spec in compiled.source.outputs],
            **({"dim_ranges": ranges} if (ranges := dim_ranges_of(compiled.source.inputs)) else {}),
            library=compiled.library.name,
            params={"file": compiled.params.name, "names": list(compiled.param_names), **sparse_fields(compiled.params)},
            golden=golden_entry,
            files=file_entries(staging),
            provenance=provenance,
        )
        write_manifest(staging, manifest)
        manifest["verification"] = verify(staging, manifest)
        if assess is not None:
            manifest["quality"] = assess(staging)
        seal(staging, destination, manifest, config.sign_key)
    archive = _archive(destination) if config.archive else None
    sizes = {rel: entry["size"] for rel, entry in manifest["files"].items()}
    report = {"path": str(destination), "archive": str(archive) if archive else None,
              "total_bytes": sum(sizes.values()), "file_bytes": sizes}
    return Bundle(destination, manifest), StageRecord("package", {"archive": config.archive}, report)
