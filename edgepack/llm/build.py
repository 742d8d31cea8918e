"""`edgepack build MODEL_DIR`: a decoder-only language model (transformers config.json + model.safetensors)
into a bundle that generates tokens. Plan first (everything checked), then read → quantize → compile →
golden (PyTorch) → package → verify (both loaders: prefill logits and the greedy continuation)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgepack.artifacts import StageRecord
from edgepack.bundle.package import PackageConfig, bundle_path, check_destination
from edgepack.compiler.compile import check_toolchain
from edgepack.compiler.int8_dot import dot_feature
from edgepack.errors import EdgepackError
from edgepack.llm.compile import compile_llm
from edgepack.llm.config import LlmConfig, read_config
from edgepack.llm.golden import make_llm_golden
from edgepack.llm.package import write_llm_bundle
from edgepack.llm.relax_model import ModelPlan
from edgepack.llm.weights import WEIGHTS_FILE, QuantScheme, canonical_weights, quantize_weights, read_safetensors
from edgepack.targets import TargetSpec, load_target

DEFAULT_MAX_SEQ_LEN = 256
ATOL, RTOL = 1e-3, 1e-3  # logits of fp32 kernels against PyTorch with the same (dequantized) weights


def is_llm_dir(model: str) -> bool:
    """Whether `edgepack build MODEL` names a transformers model directory (config.json inside)."""
    return Path(model).is_dir() and (Path(model) / "config.json").is_file()


@dataclass(frozen=True)
class LlmBuildPlan:
    """A checked language-model build."""

    model_dir: Path
    config: LlmConfig
    target: TargetSpec
    package: PackageConfig
    max_seq_len: int
    scheme: QuantScheme | None
    int8_activations: bool = True  # quantized weights on AVX512-VNNI: decode quantizes its input rows (dot_kernels)

    def describe(self) -> list[str]:
        """Lines for `--dry-run`."""
        c = self.config
        return [f"model:   {self.model_dir} ({c.family}, {c.num_layers} layers, hidden {c.hidden_size}, vocab {c.vocab_size})",
                f"target:  {self.target.name} ({self.target.description})",
                f"bundle:  {bundle_path(self.package, self.target.name)}",
                f"weights: {self.scheme.name + f' group {self.scheme.group}' if self.scheme else 'fp32'}",
                f"decode:  {self.decode_arithmetic()}",
                f"cache:   {self.max_seq_len} positions (contiguous, {self.cache_bytes()} bytes)",
                "stages:  read → quantize → compile → golden → package → verify"]

    def decode_arithmetic(self) -> str:
        """How decode's quantized matmuls compute, as `--dry-run` says it."""
        if self.scheme is None:
            return "fp32"
        if self.int8_activations and dot_feature(self.target) == "avx512_vnni":
            return f"int8 activations x {self.scheme.name} weights, integer dot products (vpdpbusd)"
        return f"fp32 activations x {self.scheme.name} weights unpacked to fp32"

    def cache_bytes(self) -> int:
        c = self.config
        return 4 * c.num_layers * 2 * self.max_seq_len * c.num_kv_heads * c.head_dim


def plan_llm_build(model_dir: str | Path, target: str, out_dir: Path, *, name: str | None = None, version: str | None = None,
                   max_seq_len: int = DEFAULT_MAX_SEQ_LEN, quantize: str | None = None, group_size: int = 32,
                   force: bool = False, sign: Path | None = None, int8_activations: bool = True) -> LlmBuildPlan:
    """Read config.json, check the weights file, target, toolchain, cache bound and destination before any work."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise EdgepackError(f"'{model_dir}' has no {WEIGHTS_FILE}", "save the model with save_pretrained(safe_serialization=True)")
    spec = load_target(target)
    check_toolchain(spec)
    if spec.device != "cpu":
        raise EdgepackError(f"language models are built for CPU targets only, not '{spec.name}'", "pick a CPU target (see `edgepack targets`)")
    if not 2 <= max_seq_len <= config.max_position:
        raise EdgepackError(f"--max-seq-len {max_seq_len} is outside 2..{config.max_position} (the model's max_position_embeddings)",
                            f"pass a value up to {config.max_position}")
    schemes = {None: None, "int8": QuantScheme(8, group_size), "int4": QuantScheme(4, group_size)}
    if quantize not in schemes:
        raise EdgepackError(f"--quantize {quantize} does not apply to language models", "use int8 or int4 (or none: fp32)")
    if group_size < 2 or group_size % 2:
        raise EdgepackError(f"--group-size {group_size} must be an even number >= 2", "use 32 (the default), 64 or 128")
    package = PackageConfig(name or model_dir.resolve().name, version or "0.1.0", Path(out_dir), force, False, False,
                            Path(sign) if sign else None)
    if sign is not None:
        from edgepack.bundle.signing import load_private_key

        load_private_key(sign)
    check_destination(package, spec.name)
    return LlmBuildPlan(model_dir, config, spec, package, max_seq_len, schemes[quantize], int8_activations)


def run_llm_build(plan: LlmBuildPlan, progress: Callable[[str], None] = lambda stage: None):
    """Run a checked plan; returns (Bundle, stage records). The bundle appears only when verification passed."""
    from edgepack.bundle.verify import verify_bundle

    c, records = plan.config, []
    progress("read")
    weights = canonical_weights(read_safetensors(plan.model_dir), c)
    if plan.scheme is not None:
        progress("quantize")
        fp32_bytes = sum(array.nbytes for array in weights.values())
        weights = quantize_weights(weights, c, plan.scheme)
        records.append(StageRecord("quantize", {"mode": plan.scheme.name, "group": plan.scheme.group}, {
            "mode": f"{plan.scheme.name} group-wise ({plan.scheme.group})", "weights_bytes_fp32": fp32_bytes,
            "weights_bytes": sum(array.nbytes for array in weights.values()),
            "matrices": "embedding, attention, MLP and output head; norms and biases stay fp32"}))
    with tempfile.TemporaryDirectory(prefix="edgepack-llm-") as workdir:
        progress("compile")
        model_plan = ModelPlan(c, plan.max_seq_len, plan.scheme, integer_dot=plan.int8_activations)
        library, params, names, report = compile_llm(model_plan, weights, plan.target, Path(workdir))
        records.append(StageRecord("compile", {"max_seq_len": plan.max_seq_len, "tvm_target": dict(plan.target.tvm)}, report))
        progress("golden")
        golden = make_llm_golden(plan.model_dir, c, plan.scheme, plan.max_seq_len)
        generator = {"kind": "decoder-only", "family": c.family, "architecture": c.to_json(), "vocab_size": c.vocab_size,
                     "max_seq_len": plan.max_seq_len, "cache": {"layout": "contiguous", "shape": list(model_plan.cache_shape),
                                                                 "dtype": "float32", "bytes": plan.cache_bytes()},
                     "weights": plan.scheme.name if plan.scheme else "float32",
                     "group_size": plan.scheme.group if plan.scheme else None,
                     "decode_activations": "int8" if report["integer_dot"]["used"] else "float32",
                     "eos_token_ids": list(c.eos_token_ids), "bos_token_id": c.bos_token_id,
                     "functions": {"prefill": "prefill", "decode": "decode", "create_cache": "create_cache", "logits": "main"}}
        tokenizer = plan.model_dir / "tokenizer.json"
        provenance = {"source": {"kind": "transformers", "path": str(plan.model_dir), "family": c.family},
                      "stages": [r.to_json() for r in records]}
        progress("package")
        bundle, record = write_llm_bundle(library, params, names, plan.target, golden, generator, plan.package, provenance,
                                          tokenizer if tokenizer.is_file() else None, ATOL, RTOL,
                                          verify=lambda staging: verify_bundle(staging))
    return bundle, [*records, record]
