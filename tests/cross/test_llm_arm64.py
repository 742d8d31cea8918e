"""Language-model bundles for arm64 and rpi5: cross-compiled, and their native `edgepack-run generate` under
qemu-aarch64 makes the same greedy tokens as PyTorch on this x86_64 machine (with the bundle's weights)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgepack.bundle.verify import emulator_command, run_native_loader
from edgepack.runtime.bundle_format import elf_arch

pytestmark = [pytest.mark.cross, pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                                                    reason="needs g++-aarch64-linux-gnu and qemu-user (scripts/setup.sh installs them)")]

MAX_SEQ_LEN = 32
PROMPT = [5, 9, 17, 33]
NEW_TOKENS = MAX_SEQ_LEN - len(PROMPT)


def pytorch_greedy(model_dir, quantize: str | None, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens of the transformers model, recomputing the whole sequence each step (no cache to share bugs with)."""
    import torch

    from edgepack.llm.config import read_config
    from edgepack.llm.golden import load_reference
    from edgepack.llm.weights import QuantScheme

    scheme = {None: None, "int4": QuantScheme(4), "int8": QuantScheme(8)}[quantize]
    model = load_reference(model_dir, read_config(model_dir), scheme)
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            sequence.append(int(np.argmax(model(torch.tensor([sequence])).logits[0, -1].numpy())))
    return sequence[len(prompt):]


@pytest.mark.parametrize("target,quantize", [("arm64", None), ("rpi5", "int4")])
def test_greedy_tokens_under_qemu_equal_pytorch_on_x86(tmp_path, target, quantize):
    from edgepack.examples.tiny_llm import make_tiny_llm
    from edgepack.llm.build import plan_llm_build, run_llm_build

    model_dir = make_tiny_llm(tmp_path / "model", "llama", vocab_size=280, hidden=32 if quantize else 64)
    bundle, _ = run_llm_build(plan_llm_build(model_dir, target, tmp_path / "dist", max_seq_len=MAX_SEQ_LEN, quantize=quantize))
    manifest = bundle.manifest
    assert manifest["requires"]["arch"] == "aarch64" and elf_arch(bundle.path / "model.so") == "aarch64"
    assert elf_arch(bundle.path / "runtime" / "edgepack-run") == "aarch64"
    report = manifest["verification"]
    assert report["native_loader"]["ran"] and report["native_loader"]["emulator"] == "qemu-aarch64"
    assert report["python_loader"]["ran"] is False  # aarch64 code cannot load in this x86_64 process
    generation = report["generation"]
    assert generation["passed"] and generation["native_loader"] == generation["expected"] and generation["expected"]

    # beyond the build's own 8-token check: another prompt, every position of the cache, one run under qemu
    result = run_native_loader(bundle.path, manifest["files"], "generate", "--prompt-ids", ",".join(map(str, PROMPT)),
                               "--max-new-tokens", str(NEW_TOKENS), prefix=emulator_command(manifest["target"]))
    assert result.returncode == 0, result.stderr
    emulated = [int(t) for t in result.stdout.split()]
    expected = pytorch_greedy(model_dir, quantize, PROMPT, NEW_TOKENS)
    eos = set(manifest["generator"]["eos_token_ids"])
    cut = next((i + 1 for i, t in enumerate(expected) if t in eos), len(expected))  # the loader stops after an EOS
    assert emulated == expected[:cut]
    assert len(set(emulated)) > 1  # a model stuck on one token would hide most mistakes
