"""Model-changing stages that plug into the build: the interfaces quantize, prune and distill implement.

A pass is a frozen config dataclass with a `stage` name and a `run` method from an artifact to an
artifact plus a StageRecord of what it measured. Torch passes run before export (pruning needs
gradients and modules); ONNX passes run after pre-flight (quantization works on the graph). The
build runs them in the order given and pre-flights every ONNX pass's result again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

from edgepack.artifacts import OnnxModel, StageRecord
from edgepack.targets import TargetSpec

if TYPE_CHECKING:
    from edgepack.bundle.golden import GoldenConfig


@dataclass(frozen=True)
class PassContext:
    """What a pass may use: a private work directory, the target, and a progress callback."""

    workdir: Path
    target: TargetSpec
    progress: Callable[[str], None] = lambda line: None


@runtime_checkable
class TorchPass(Protocol):
    """Changes a PyTorch model before it is exported (e.g. pruning); returns the new model."""

    stage: str

    def run(self, model, context: PassContext) -> tuple[object, StageRecord]:  # TorchModel → TorchModel
        ...


@runtime_checkable
class OnnxPass(Protocol):
    """Changes a pre-flighted ONNX model (e.g. quantization); writes the result under context.workdir."""

    stage: str

    def run(self, model: OnnxModel, context: PassContext) -> tuple[OnnxModel, StageRecord]:
        ...

    def golden_config(self, model: OnnxModel, golden: GoldenConfig) -> GoldenConfig:
        """The golden-check tolerance for the pass's result `model` (quantized graphs: in quantization steps)."""
        ...
