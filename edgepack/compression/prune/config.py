"""The pruning passes: one frozen config class per mode, each a TorchPass or OnnxPass (edgepack.compression.passes).

- ChannelPrune: structured, removes whole conv filters / linear neurons (the graph gets smaller);
- WeightPrune: unstructured, zeroes single weights (the bundle gets smaller through params.sparse);
- OnnxWeightPrune: unstructured magnitude pruning of an ONNX model's initializers.

The threshold τ: `sparsity` (the share of weights or channels removed, per layer or over the whole
model) or `threshold` directly (a weight's score; for channels, the channel's score over its layer's mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgepack.errors import EdgepackError
from edgepack.compression.prune.criteria import Magnitude, Taylor
from edgepack.compression.prune.finetune import FineTune

SCOPES = ("layer", "global")


def _check(config) -> None:
    if (config.sparsity is None) == (config.threshold is None):
        raise EdgepackError("pruning needs exactly one of a sparsity or a threshold", "pass --sparsity 50% or --threshold X")
    if config.sparsity is not None and not 0 < config.sparsity < 1:
        raise EdgepackError(f"sparsity {config.sparsity} is outside (0, 1)", "pass e.g. --sparsity 50% or 0.5")
    if config.threshold is not None and config.threshold < 0:
        raise EdgepackError(f"threshold {config.threshold} is negative", "scores are non-negative: pass a threshold >= 0")
    if config.scope not in SCOPES:
        raise EdgepackError(f"unknown pruning scope '{config.scope}'", f"use one of {', '.join(SCOPES)}")


def parse_sparsity(text: str) -> float:
    """`50%` or `0.5` → 0.5."""
    from edgepack.measure.evaluation import parse_percent

    return parse_percent(text, "--sparsity", "50% or 0.5", allow_zero=False)


@dataclass(frozen=True)
class _TorchPrune:
    sparsity: float | None = 0.5
    threshold: float | None = None
    scope: str = "layer"  # "layer": each layer loses `sparsity`; "global": ranked over the whole model
    criterion: Magnitude | Taylor = field(default_factory=Magnitude)
    finetune: FineTune | None = None
    eval: Path | None = None  # labelled .npz: accuracy before/after (unlabelled: agreement with the model before)
    max_drop: float | None = None  # fail when accuracy (or top-1 agreement) drops more
    bench: bool = False  # compile both models for the target and time them (slower)

    stage = "prune"

    def __post_init__(self):
        _check(self)

    def to_json(self) -> dict:
        return {"granularity": self.granularity, "sparsity": self.sparsity, "threshold": self.threshold, "scope": self.scope,
                **self.criterion.describe(), "finetune": None if self.finetune is None else vars(self.finetune),
                "eval": None if self.eval is None else str(self.eval), "max_drop": self.max_drop, "bench": self.bench}

    def run(self, model, context):
        from edgepack.compression.prune.torch_prune import prune_torch

        return prune_torch(model, self, context)


@dataclass(frozen=True)
class ChannelPrune(_TorchPrune):
    """Structured: remove the lowest-scoring output channels of conv/linear layers and rewire consumers."""

    granularity = "channels"


@dataclass(frozen=True)
class WeightPrune(_TorchPrune):
    """Unstructured: zero the lowest-scoring single weights (torch.nn.utils.prune, made permanent)."""

    granularity = "weights"


@dataclass(frozen=True)
class OnnxWeightPrune:
    """Unstructured magnitude pruning of an ONNX model's weight initializers (no gradients in ONNX)."""

    sparsity: float | None = 0.5
    threshold: float | None = None
    scope: str = "layer"
    eval: Path | None = None
    max_drop: float | None = None
    min_elements: int = 16  # smaller initializers (shapes, scales, biases) are left alone

    stage = "prune"
    granularity = "weights"

    def __post_init__(self):
        _check(self)

    def to_json(self) -> dict:
        return {"granularity": "weights", "criterion": "magnitude", "sparsity": self.sparsity, "threshold": self.threshold,
                "scope": self.scope, "eval": None if self.eval is None else str(self.eval), "max_drop": self.max_drop,
                "min_elements": self.min_elements}

    def run(self, model, context):
        from edgepack.compression.prune.onnx_magnitude import prune_onnx

        return prune_onnx(model, self, context)

    def golden_config(self, model, golden):
        """Zeroed weights leave float arithmetic as it was: the build's tolerance holds."""
        return golden
