"""Pruning criteria: a score per weight element, g(p); elements (or channels) with the lowest scores go.

Magnitude: |w| (channels: the L1 norm of their weights). Taylor: the first-order Taylor estimate of the
loss change when a weight is removed, |w · ∂L/∂w|, accumulated over calibration batches with the
model's loss (cross-entropy against the labels, or against the model's own predictions without them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import EdgepackError


@dataclass(frozen=True)
class Magnitude:
    """Score each weight by |w|."""

    name = "magnitude"

    def describe(self) -> dict:
        return {"criterion": self.name}


@dataclass(frozen=True)
class Taylor:
    """Score each weight by Σ_batches |w · ∂L/∂w| on calibration data (default: the --train data)."""

    calib: Path | None = None  # .npz with one array per input and optional 'labels'
    batch_size: int = 32
    max_batches: int = 16

    name = "taylor"

    def describe(self) -> dict:
        return {"criterion": self.name, "calib": None if self.calib is None else str(self.calib),
                "batch_size": self.batch_size, "max_batches": self.max_batches}


def prunable_layers(module) -> dict[str, object]:
    """Conv and Linear layers by qualified name: the layers pruning scores and changes."""
    from torch import nn

    return {name: layer for name, layer in module.named_modules() if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}


def scored_modules(module) -> dict[str, object]:
    """Layers whose weights get a score: Conv, Linear and BatchNorm (channel ranking uses BN scales too)."""
    from torch import nn

    layers = prunable_layers(module)
    layers.update({name: layer for name, layer in module.named_modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine})
    return layers


def element_scores(criterion, module, batches, labelled: bool) -> dict[object, object]:
    """`{layer: score tensor shaped like layer.weight}` for every scored layer."""
    import torch

    layers = list(scored_modules(module).values())
    if isinstance(criterion, Magnitude):
        return {layer: layer.weight.detach().abs().clone() for layer in layers}
    if not batches:
        raise EdgepackError("the taylor criterion needs data to take gradients on", "pass --calib data.npz (or --train file.py:function)")
    scores = {layer: torch.zeros_like(layer.weight) for layer in layers}
    was_training = module.training
    module.eval()  # BatchNorm with its running statistics, as deployed
    for inputs, labels in batches:
        module.zero_grad(set_to_none=True)
        logits = module(*[torch.from_numpy(array) for array in inputs])
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        logits = logits.reshape(len(logits), -1)
        target = torch.from_numpy(labels.reshape(-1)).long() if labelled and labels is not None else logits.argmax(1).detach()
        torch.nn.functional.cross_entropy(logits, target).backward()
        with torch.no_grad():
            for layer, score in scores.items():
                if layer.weight.grad is not None:
                    score += (layer.weight * layer.weight.grad).abs()
    module.zero_grad(set_to_none=True)
    module.train(was_training)
    return scores
