"""Stage: assemble a language-model bundle (library, compressed weights, golden vectors, generator, loaders)
in a staging directory, verify it through both loaders, and move it into place atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgepack.artifacts import Bundle, StageRecord
from edgepack.bundle.golden import GoldenVectors, write_golden
from edgepack.bundle.manifest import file_entries, new_manifest, tool_versions, write_manifest
from edgepack.bundle.package import PackageConfig, copy_runtime, seal, staged
from edgepack.compiler.runtime_files import GENERATE_MODULE, NATIVE_LOADER, device_requirements, generate_module
from edgepack.llm.golden import LlmGolden
from edgepack.runtime.bundle_format import TensorSpec
from edgepack.targets import TargetSpec

TOKENIZER = "tokenizer.json"


def write_llm_bundle(library: Path, params: Path, param_names: list[str], target: TargetSpec, golden: LlmGolden,
                     generator: dict, config: PackageConfig, provenance: dict, tokenizer: Path | None,
                     atol: float, rtol: float, verify) -> tuple[Bundle, StageRecord]:
    """Write, `verify(staging)` (returns the report or raises), then move into place; nothing is left on failure."""
    with staged(config, target.name) as (staging, destination):
        shutil.copy2(library, staging / library.name)
        shutil.copy2(params, staging / params.name)
        vectors = GoldenVectors(((golden.prompt_ids,),), ((golden.logits,),), atol, rtol, "transformers (PyTorch)")
        golden_entry = write_golden(vectors, staging)
        copy_runtime(target, staging)
        shutil.copy2(generate_module(), staging / "runtime" / GENERATE_MODULE)
        if tokenizer is not None:
            shutil.copy2(tokenizer, staging / TOKENIZER)
        n = len(golden.prompt_ids)
        generator = {**generator, "tokenizer": TOKENIZER if tokenizer is not None else None,
                     "golden": {"prompt_ids": [int(t) for t in golden.prompt_ids], "tokens": list(golden.tokens)}}
        manifest = new_manifest(
            name=config.name,
            version=config.version,
            tools=tool_versions(used_torch=True),
            target=target.to_json(),
            requires=device_requirements(target, [staging / library.name, staging / "runtime" / NATIVE_LOADER,
                                                  *sorted((staging / "runtime").glob("lib*.so*"))]),
            inputs=[TensorSpec("input_ids", "int32", (n,)).to_json()],
            outputs=[TensorSpec("logits", "float32", (n, generator["vocab_size"])).to_json()],
            library=library.name,
            params={"file": params.name, "names": list(param_names)},
            golden=golden_entry,
            generator=generator,
            files=file_entries(staging),
            provenance=provenance,
        )
        write_manifest(staging, manifest)
        manifest["verification"] = verify(staging)
        seal(staging, destination, manifest, config.sign_key)
    sizes = {rel: entry["size"] for rel, entry in manifest["files"].items()}
    report = {"path": str(destination), "total_bytes": sum(sizes.values()), "file_bytes": sizes}
    return Bundle(destination, manifest), StageRecord("package", {"archive": False}, report)
